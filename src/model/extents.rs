//! A set of free extents indexed both by address (for coalescing) and by
//! (length, address) (for best fit and largest first). Every operation is
//! O(log n) in the number of free extents.

use std::collections::{BTreeMap, BTreeSet};

use super::Segment;

/// Free extents: disjoint, never adjacent (adjacent ones are merged).
#[derive(Clone, Debug, Default)]
pub struct FreeExtents {
    /// addr -> len
    by_addr: BTreeMap<u64, u64>,
    /// (len, addr)
    by_len: BTreeSet<(u64, u64)>,
    free: u64,
}

impl FreeExtents {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.free
    }

    /// Number of free extents.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// The largest free extent (lowest address among equals).
    pub fn largest(&self) -> Option<Segment> {
        let &(max_len, _) = self.by_len.last()?;
        self.best_fit(max_len)
    }

    /// The smallest extent of at least `len` bytes (lowest address among
    /// equals).
    pub fn best_fit(&self, len: u64) -> Option<Segment> {
        self.by_len
            .range((len, 0)..)
            .next()
            .map(|&(len, addr)| Segment { addr, len })
    }

    /// Extents of at least `len` bytes, smallest first.
    pub fn fits(&self, len: u64) -> impl Iterator<Item = Segment> + '_ {
        self.by_len
            .range((len, 0)..)
            .map(|&(len, addr)| Segment { addr, len })
    }

    /// Extents in address order.
    pub fn iter(&self) -> impl Iterator<Item = Segment> + '_ {
        self.by_addr
            .iter()
            .map(|(&addr, &len)| Segment { addr, len })
    }

    /// Returns `[addr, addr + len)` to the free set, merging it with the
    /// free extents right before and after it. The range must not overlap a
    /// free extent (the allocators only free what they handed out).
    pub fn insert(&mut self, addr: u64, len: u64) {
        debug_assert!(len > 0);
        debug_assert!(
            !self.overlaps(addr, len),
            "double free of {addr:#x}+{len:#x}"
        );
        let mut start = addr;
        let mut end = addr + len;
        // One descent finds both neighbours: the extent starting at `end`
        // (if any) and the last one starting before `addr`.
        let mut before_end = self.by_addr.range(..=end);
        let (next, prev) = match before_end.next_back() {
            Some((&a, &l)) if a == end => (Some(l), before_end.next_back()),
            other => (None, other),
        };
        let prev = prev.map(|(&a, &l)| (a, l));
        if let Some((prev_addr, prev_len)) = prev {
            if prev_addr + prev_len == addr {
                self.remove_raw(prev_addr, prev_len);
                start = prev_addr;
            }
        }
        if let Some(next_len) = next {
            self.remove_raw(end, next_len);
            end += next_len;
        }
        self.insert_raw(start, end - start);
    }

    /// Takes `[start, start + len)` out of the free extent `extent`, which
    /// must contain it; the pieces before and after stay free.
    pub fn take(&mut self, extent: Segment, start: u64, len: u64) {
        debug_assert!(extent.addr <= start && start + len <= extent.end());
        self.remove_raw(extent.addr, extent.len);
        if start > extent.addr {
            self.insert_raw(extent.addr, start - extent.addr);
        }
        if start + len < extent.end() {
            self.insert_raw(start + len, extent.end() - (start + len));
        }
    }

    /// The free extent that contains all of `[addr, addr + len)`, if any.
    pub fn containing(&self, addr: u64, len: u64) -> Option<Segment> {
        let end = addr.checked_add(len)?;
        let (&a, &l) = self.by_addr.range(..=addr).next_back()?;
        (a + l >= end).then_some(Segment { addr: a, len: l })
    }

    /// Whether `[addr, addr + len)` overlaps a free extent.
    pub fn overlaps(&self, addr: u64, len: u64) -> bool {
        let end = addr + len;
        if let Some((&a, &l)) = self.by_addr.range(..end).next_back() {
            return a + l > addr;
        }
        false
    }

    /// The free extent that ends exactly at `addr`, if any.
    fn ending_at(&self, addr: u64) -> Option<Segment> {
        let (&a, &l) = self.by_addr.range(..addr).next_back()?;
        (a + l == addr).then_some(Segment { addr: a, len: l })
    }

    /// What this set would be with the disjoint ranges `extra` (address
    /// order, none overlapping a free extent) inserted, without copying
    /// the set: O(k log n) for k ranges.
    pub fn with_extra(&self, extra: &BTreeMap<u64, u64>) -> WithExtra<'_> {
        let mut absorbed = Vec::new();
        let mut runs = Vec::new();
        let mut extra_bytes = 0u64;
        let mut ranges = extra.iter().peekable();
        while let Some((&addr, &len)) = ranges.next() {
            extra_bytes += len;
            let mut start = addr;
            let mut end = addr + len;
            if let Some(before) = self.ending_at(start) {
                absorbed.push(before.addr);
                start = before.addr;
            }
            loop {
                if let Some((&next, &next_len)) = ranges.peek() {
                    if next == end {
                        extra_bytes += next_len;
                        end += next_len;
                        ranges.next();
                        continue;
                    }
                }
                if let Some(&after) = self.by_addr.get(&end) {
                    absorbed.push(end);
                    end += after;
                    continue;
                }
                break;
            }
            runs.push(Segment {
                addr: start,
                len: end - start,
            });
        }
        absorbed.sort_unstable();
        runs.sort_unstable_by_key(|run| (run.len, run.addr));
        WithExtra {
            base: self,
            absorbed,
            runs,
            free: self.free + extra_bytes,
        }
    }

    fn insert_raw(&mut self, addr: u64, len: u64) {
        self.by_addr.insert(addr, len);
        self.by_len.insert((len, addr));
        self.free += len;
    }

    fn remove_raw(&mut self, addr: u64, len: u64) {
        self.by_addr.remove(&addr);
        self.by_len.remove(&(len, addr));
        self.free -= len;
    }
}

/// A [`FreeExtents`] seen with more ranges inserted
/// ([`FreeExtents::with_extra`]): the extents of the set that no inserted
/// range touches, and the merged runs of those that do.
pub struct WithExtra<'a> {
    base: &'a FreeExtents,
    /// Start of every extent of `base` merged into a run.
    absorbed: Vec<u64>,
    /// The merged runs, by (length, address).
    runs: Vec<Segment>,
    free: u64,
}

impl WithExtra<'_> {
    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.free
    }

    /// Extents of at least `len` bytes, smallest first (lowest address
    /// among equals), as [`FreeExtents::fits`] on the merged set.
    pub fn fits(&self, len: u64) -> impl Iterator<Item = Segment> + '_ {
        let mut base = self
            .base
            .fits(len)
            .filter(|s| self.absorbed.binary_search(&s.addr).is_err())
            .peekable();
        let first_run = self.runs.partition_point(|run| run.len < len);
        let mut runs = self.runs[first_run..].iter().copied().peekable();
        std::iter::from_fn(move || match (base.peek(), runs.peek()) {
            (Some(b), Some(r)) if (b.len, b.addr) <= (r.len, r.addr) => base.next(),
            (Some(_), Some(_)) | (None, Some(_)) => runs.next(),
            (Some(_), None) => base.next(),
            (None, None) => None,
        })
    }
}
