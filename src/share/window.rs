//! An importer's window: which ranges of its shared memory region are
//! reserved for imports. First fit, in whole pages of the exporter's
//! memory; a range goes back only when its unmap is proven (the caller's
//! business: [`Window::free`] is called then).

use std::collections::BTreeMap;

/// One importer's window of `len` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    len: u64,
    /// Reserved ranges: offset -> length.
    used: BTreeMap<u64, u64>,
}

impl Window {
    pub fn new(len: u64) -> Window {
        Window {
            len,
            used: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// Reserves the first hole of `len` bytes starting on `align` (a power
    /// of two); `None` when no hole fits.
    pub fn reserve(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let mut at = 0u64;
        for (&offset, &used) in &self.used {
            if offset >= at && offset - at >= len {
                break;
            }
            at = offset.checked_add(used)?.checked_next_multiple_of(align)?;
        }
        let end = at.checked_add(len)?;
        if end > self.len {
            return None;
        }
        self.used.insert(at, len);
        Some(at)
    }

    /// Gives a reserved range back; false when `offset` reserves nothing
    /// of that length.
    pub fn free(&mut self, offset: u64, len: u64) -> bool {
        if self.used.get(&offset) != Some(&len) {
            return false;
        }
        self.used.remove(&offset);
        true
    }

    /// The reserved ranges, in offset order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.used.iter().map(|(&o, &l)| (o, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    #[test]
    fn first_fit_on_the_alignment_and_holes_are_reused() {
        let mut w = Window::new(64 * PAGE);
        assert_eq!(w.reserve(3 * PAGE, PAGE), Some(0));
        assert_eq!(w.reserve(PAGE, 4 * PAGE), Some(4 * PAGE));
        assert_eq!(w.reserve(2 * PAGE, PAGE), Some(5 * PAGE));
        assert!(w.free(0, 3 * PAGE));
        assert!(!w.free(0, 3 * PAGE), "twice");
        assert!(!w.free(4 * PAGE, 2 * PAGE), "another length");
        assert_eq!(w.reserve(4 * PAGE, PAGE), Some(0));
        assert_eq!(w.reserve(PAGE, PAGE), Some(7 * PAGE));
    }

    #[test]
    fn a_range_past_the_window_or_empty_is_refused() {
        let mut w = Window::new(8 * PAGE);
        assert_eq!(w.reserve(9 * PAGE, PAGE), None);
        assert_eq!(w.reserve(0, PAGE), None);
        assert_eq!(
            w.reserve(PAGE, 3 * PAGE),
            None,
            "alignment not a power of two"
        );
        assert_eq!(w.reserve(8 * PAGE, PAGE), Some(0));
        assert_eq!(w.reserve(PAGE, PAGE), None);
        assert_eq!(w.reserve(u64::MAX, PAGE), None);
    }

    #[test]
    fn reserved_ranges_never_overlap() {
        let mut w = Window::new(256 * PAGE);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for i in 0..200u64 {
            let len = (i * 7 % 5 + 1) * PAGE;
            if i % 3 == 2 && !live.is_empty() {
                let (o, l) = live.remove((i as usize * 13) % live.len());
                assert!(w.free(o, l));
            } else if let Some(o) = w.reserve(len, if i % 2 == 0 { PAGE } else { 4 * PAGE }) {
                live.push((o, len));
            }
            let mut sorted = live.clone();
            sorted.sort();
            for pair in sorted.windows(2) {
                assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:?}");
            }
            assert!(sorted.iter().all(|&(o, l)| o + l <= w.len()));
            assert_eq!(w.ranges().collect::<Vec<_>>(), sorted);
        }
    }
}
