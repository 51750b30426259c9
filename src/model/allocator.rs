//! Allocators: carve the guest-physical regions donated to them.
//!
//! Both allocators keep their free space in [`FreeExtents`]; allocation and
//! free are O(log n) in the number of free extents (scatter: O(k log n) for
//! k segments). Region validation that only depends on one allocator
//! (alignment, placement) happens here; overlap across allocators is checked
//! by the pool.

use std::collections::BTreeMap;

use super::extents::FreeExtents;
use super::{Error, Segment, Strategy, PAGE_SIZE};

/// How many best-fit candidates a contiguous allocator inspects for an
/// aligned fit before taking the smallest extent that fits whatever its
/// alignment. Bounds the work per allocation.
const ALIGNED_FIT_CANDIDATES: usize = 8;

/// One allocator of the pool.
pub trait Allocator: Send {
    fn strategy(&self) -> Strategy;

    /// Checks that `[addr, addr + len)` may be donated: non-empty, page
    /// multiple, start aligned to the region alignment, below the limit.
    fn check_region(&self, addr: u64, len: u64) -> Result<(), Error>;

    /// Adds a region (call [`Allocator::check_region`] first). A contiguous
    /// allocator treats it as one extent.
    fn add_region(&mut self, addr: u64, len: u64) -> Result<(), Error>;

    /// Allocates `size` bytes (a page multiple). Returns the segments in
    /// buffer order, coalesced, or `None` (and changes nothing) when there
    /// is no room. `single_segment` asks for exactly one segment.
    fn alloc(&mut self, size: u64, single_segment: bool) -> Option<Vec<Segment>>;

    /// Whether [`Allocator::alloc`] of `size` would succeed now (changes
    /// nothing).
    fn fits(&self, size: u64, single_segment: bool) -> bool;

    /// Returns segments obtained from [`Allocator::alloc`].
    fn free(&mut self, segments: &[Segment]);

    /// Whether `[addr, addr + len)` lies inside one free extent.
    fn is_free(&self, addr: u64, len: u64) -> bool;

    /// Takes the free range `[addr, addr + len)` out of the allocator for
    /// good (the memory goes back to the guest): the capacity shrinks.
    /// Returns false, changing nothing, if the range is not free.
    fn remove_free(&mut self, addr: u64, len: u64) -> bool;

    /// Whether [`Allocator::fits`] would hold if the ranges of `freed`
    /// (start -> length, disjoint from the free extents: leased extents)
    /// were free again. Copies nothing: O(k log n) for k ranges.
    fn fits_if_freed(&self, size: u64, single_segment: bool, freed: &BTreeMap<u64, u64>) -> bool;

    /// A copy of this allocator.
    fn clone_box(&self) -> Box<dyn Allocator>;

    /// Adds `[addr, addr + len)` free, without the region checks (a pool
    /// being rebuilt from its image: the region was checked when donated).
    fn restore_region(&mut self, addr: u64, len: u64);

    /// Takes the free range `[addr, addr + len)` as allocated (a pool being
    /// rebuilt: a backing or leased extent); false, changing nothing, if
    /// it is not free.
    fn claim(&mut self, addr: u64, len: u64) -> bool;

    /// The free extents, in address order.
    fn free_list(&self) -> Vec<Segment>;

    /// Bytes donated.
    fn capacity(&self) -> u64;
    /// Bytes free.
    fn free_bytes(&self) -> u64;
    /// Largest free extent, bytes.
    fn largest_free(&self) -> u64;
    /// Number of free extents.
    fn free_extents(&self) -> usize;

    /// Per mille: `1000 * (1 - largest_free / free)`, 0 when nothing is free.
    fn fragmentation_permille(&self) -> u32 {
        fragmentation_permille(self.free_bytes(), self.largest_free())
    }
}

/// `1000 * (1 - largest / free)` rounded down, 0 when `free == 0`.
pub fn fragmentation_permille(free: u64, largest: u64) -> u32 {
    if free == 0 {
        return 0;
    }
    let scattered = u128::from(free.saturating_sub(largest));
    // scattered < free, so the quotient is below 1000.
    (scattered * 1000 / u128::from(free)) as u32
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// What both allocators share: the free extents, the capacity and the
/// region rules.
#[derive(Clone, Debug)]
struct Regions {
    extents: FreeExtents,
    capacity: u64,
    /// Exclusive end limit of every region.
    limit: u64,
    region_align: u64,
}

impl Regions {
    fn new(limit: u64, region_align: u64) -> Self {
        Regions {
            extents: FreeExtents::new(),
            capacity: 0,
            limit,
            region_align: region_align.max(PAGE_SIZE),
        }
    }

    fn check(&self, addr: u64, len: u64) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::EmptyRegion { addr });
        }
        if addr % self.region_align != 0 || len % PAGE_SIZE != 0 {
            return Err(Error::MisalignedRegion {
                addr,
                len,
                align: self.region_align,
            });
        }
        let end = addr
            .checked_add(len)
            .ok_or(Error::RegionOverflow { addr, len })?;
        if end > self.limit {
            return Err(Error::RegionOutOfPlacement {
                addr,
                len,
                limit: self.limit,
            });
        }
        Ok(())
    }

    fn add(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        self.check(addr, len)?;
        if self.extents.overlaps(addr, len) {
            // The pool checks overlap across all regions first; this guards
            // direct users of the allocator.
            return Err(Error::RegionOverlap {
                addr,
                len,
                allocator: usize::MAX,
            });
        }
        self.extents.insert(addr, len);
        self.capacity += len;
        Ok(())
    }

    fn free(&mut self, segments: &[Segment]) {
        for seg in segments {
            self.extents.insert(seg.addr, seg.len);
        }
    }

    fn remove_free(&mut self, addr: u64, len: u64) -> bool {
        let Some(extent) = self.extents.containing(addr, len) else {
            return false;
        };
        self.extents.take(extent, addr, len);
        self.capacity -= len;
        true
    }

    /// Best fit of `size` bytes with the start aligned to `align`.
    fn alloc_aligned(&mut self, size: u64, align: u64) -> Option<Segment> {
        let (extent, start) = self.find_aligned(size, align)?;
        self.extents.take(extent, start, size);
        Some(Segment {
            addr: start,
            len: size,
        })
    }

    /// Where [`Regions::alloc_aligned`] would place `size` bytes: the free
    /// extent and the start inside it.
    fn find_aligned(&self, size: u64, align: u64) -> Option<(Segment, u64)> {
        find_aligned(|len| self.extents.fits(len), size, align)
    }
}

/// Where an aligned best fit of `size` bytes goes among the extents
/// `fits(len)` lists (those of at least `len` bytes, smallest first): the
/// extent and the start inside it. One rule for the free extents and for
/// a view of them with leased extents freed again.
fn find_aligned<I: Iterator<Item = Segment>>(
    fits: impl Fn(u64) -> I,
    size: u64,
    align: u64,
) -> Option<(Segment, u64)> {
    let mut found = None;
    for extent in fits(size).take(ALIGNED_FIT_CANDIDATES) {
        if let Some(start) = align_up(extent.addr, align) {
            if start.checked_add(size).is_some_and(|e| e <= extent.end()) {
                found = Some((extent, start));
                break;
            }
        }
    }
    if found.is_none() && align > PAGE_SIZE {
        // Extents start on a page, so one of at least
        // size + align - PAGE_SIZE bytes always holds an aligned fit.
        let need = size.checked_add(align - PAGE_SIZE)?;
        let extent = fits(need).next()?;
        found = Some((extent, align_up(extent.addr, align)?));
    }
    found
}

/// The [`Allocator`] methods both allocators answer from their [`Regions`].
macro_rules! delegate_to_regions {
    () => {
        fn check_region(&self, addr: u64, len: u64) -> Result<(), Error> {
            self.regions.check(addr, len)
        }

        fn add_region(&mut self, addr: u64, len: u64) -> Result<(), Error> {
            self.regions.add(addr, len)
        }

        fn free(&mut self, segments: &[Segment]) {
            self.regions.free(segments)
        }

        fn is_free(&self, addr: u64, len: u64) -> bool {
            self.regions.extents.containing(addr, len).is_some()
        }

        fn remove_free(&mut self, addr: u64, len: u64) -> bool {
            self.regions.remove_free(addr, len)
        }

        fn clone_box(&self) -> Box<dyn Allocator> {
            Box::new(self.clone())
        }

        fn restore_region(&mut self, addr: u64, len: u64) {
            self.regions.extents.insert(addr, len);
            self.regions.capacity += len;
        }

        fn claim(&mut self, addr: u64, len: u64) -> bool {
            match self.regions.extents.containing(addr, len) {
                Some(extent) => {
                    self.regions.extents.take(extent, addr, len);
                    true
                }
                None => false,
            }
        }

        fn free_list(&self) -> Vec<Segment> {
            self.regions.extents.iter().collect()
        }

        fn capacity(&self) -> u64 {
            self.regions.capacity
        }

        fn free_bytes(&self) -> u64 {
            self.regions.extents.free_bytes()
        }

        fn largest_free(&self) -> u64 {
            self.regions.extents.largest().map_or(0, |s| s.len)
        }

        fn free_extents(&self) -> usize {
            self.regions.extents.len()
        }
    };
}

/// Best fit over free extents, one extent per allocation, each start
/// aligned to `align` (up to 2 MiB). Coalesces on free.
#[derive(Clone, Debug)]
pub struct ContiguousAllocator {
    regions: Regions,
    align: u64,
}

impl ContiguousAllocator {
    /// `limit`: exclusive end of every region (e.g. 4 GiB for below-4G);
    /// `region_align`: alignment of each region's start; `align`: alignment
    /// of each allocation's start (a power of two, at least a page).
    pub fn new(limit: u64, region_align: u64, align: u64) -> Self {
        ContiguousAllocator {
            regions: Regions::new(limit, region_align),
            align: align.max(PAGE_SIZE),
        }
    }
}

impl Allocator for ContiguousAllocator {
    fn strategy(&self) -> Strategy {
        Strategy::Contiguous
    }

    delegate_to_regions!();

    fn alloc(&mut self, size: u64, _single_segment: bool) -> Option<Vec<Segment>> {
        if size == 0 || size > self.regions.extents.free_bytes() {
            return None;
        }
        self.regions
            .alloc_aligned(size, self.align)
            .map(|s| vec![s])
    }

    fn fits(&self, size: u64, _single_segment: bool) -> bool {
        size != 0
            && size <= self.regions.extents.free_bytes()
            && self.regions.find_aligned(size, self.align).is_some()
    }

    fn fits_if_freed(&self, size: u64, _single: bool, freed: &BTreeMap<u64, u64>) -> bool {
        let view = self.regions.extents.with_extra(freed);
        size != 0
            && size <= view.free_bytes()
            && find_aligned(|len| view.fits(len), size, self.align).is_some()
    }
}

/// Pages from anywhere, fewest segments first: when one free extent can
/// hold the rest of the request, the best fit does; otherwise the largest
/// free extent is taken whole and the loop goes on.
#[derive(Clone, Debug)]
pub struct ScatterAllocator {
    regions: Regions,
}

impl ScatterAllocator {
    /// `limit`: exclusive end of every region; `region_align`: alignment of
    /// each region's start.
    pub fn new(limit: u64, region_align: u64) -> Self {
        ScatterAllocator {
            regions: Regions::new(limit, region_align),
        }
    }
}

impl Allocator for ScatterAllocator {
    fn strategy(&self) -> Strategy {
        Strategy::Scatter
    }

    delegate_to_regions!();

    fn fits(&self, size: u64, single_segment: bool) -> bool {
        let extents = &self.regions.extents;
        if size == 0 || size > extents.free_bytes() {
            return false;
        }
        !single_segment || extents.best_fit(size).is_some()
    }

    fn fits_if_freed(&self, size: u64, single_segment: bool, freed: &BTreeMap<u64, u64>) -> bool {
        let view = self.regions.extents.with_extra(freed);
        if size == 0 || size > view.free_bytes() {
            return false;
        }
        !single_segment || view.fits(size).next().is_some()
    }

    fn alloc(&mut self, size: u64, single_segment: bool) -> Option<Vec<Segment>> {
        let extents = &mut self.regions.extents;
        if size == 0 || size > extents.free_bytes() {
            return None;
        }
        if single_segment {
            let extent = extents.best_fit(size)?;
            extents.take(extent, extent.addr, size);
            return Some(vec![Segment {
                addr: extent.addr,
                len: size,
            }]);
        }
        let mut segments: Vec<Segment> = Vec::with_capacity(1);
        let mut remaining = size;
        // Terminates: free_bytes >= size, and every round either finishes
        // or takes a whole extent smaller than `remaining`.
        while remaining > 0 {
            let extent = match extents.best_fit(remaining).or_else(|| extents.largest()) {
                Some(extent) => extent,
                None => {
                    // Unreachable given the check above; undo, change nothing.
                    for seg in &segments {
                        extents.insert(seg.addr, seg.len);
                    }
                    return None;
                }
            };
            let len = extent.len.min(remaining);
            extents.take(extent, extent.addr, len);
            segments.push(Segment {
                addr: extent.addr,
                len,
            });
            remaining -= len;
        }
        super::coalesce(&mut segments);
        Some(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: u64 = 0x4000_0000;

    /// An allocator carved by `allocs` and `frees`, and the segments still
    /// allocated.
    fn carved(
        contiguous: Option<u64>,
        pages: u64,
        allocs: &[(u64, bool)],
        frees: &[usize],
    ) -> (Box<dyn Allocator>, Vec<Segment>) {
        let mut allocator: Box<dyn Allocator> = match contiguous {
            Some(align) => Box::new(ContiguousAllocator::new(u64::MAX, PAGE_SIZE, align)),
            None => Box::new(ScatterAllocator::new(u64::MAX, PAGE_SIZE)),
        };
        allocator.add_region(BASE, pages * PAGE_SIZE).unwrap();
        let mut held = Vec::new();
        for &(pages, single) in allocs {
            if let Some(segments) = allocator.alloc(pages * PAGE_SIZE, single) {
                held.extend(segments);
            }
        }
        for &pick in frees {
            if !held.is_empty() {
                let segment = held.swap_remove(pick % held.len());
                allocator.free(&[segment]);
            }
        }
        (allocator, held)
    }

    proptest! {
        /// `fits_if_freed` answers as a copy of the allocator with the
        /// ranges freed would (the copy it replaces).
        #[test]
        fn fits_if_freed_answers_as_a_freed_copy(
            contiguous in prop_oneof![
                Just(None),
                Just(Some(PAGE_SIZE)),
                Just(Some(16 * PAGE_SIZE)),
                Just(Some(512 * PAGE_SIZE)),
            ],
            pages in 16u64..1200,
            allocs in prop::collection::vec((1u64..64, any::<bool>()), 0..40),
            frees in prop::collection::vec(any::<usize>(), 0..20),
            stock_picks in prop::collection::vec(any::<bool>(), 40..80),
            sizes in prop::collection::vec((1u64..600, any::<bool>()), 1..12),
        ) {
            let (allocator, held) = carved(contiguous, pages, &allocs, &frees);
            let stock: BTreeMap<u64, u64> = held
                .iter()
                .zip(stock_picks.iter().cycle())
                .filter(|(_, &pick)| pick)
                .map(|(s, _)| (s.addr, s.len))
                .collect();
            let mut copy = allocator.clone_box();
            for (&addr, &len) in &stock {
                copy.free(&[Segment { addr, len }]);
            }
            for (pages, single) in sizes {
                let size = pages * PAGE_SIZE;
                prop_assert_eq!(
                    allocator.fits_if_freed(size, single, &stock),
                    copy.fits(size, single),
                    "size {:#x} single {} stock {:x?} free {:x?}",
                    size,
                    single,
                    stock,
                    allocator.free_list()
                );
            }
        }
    }
}
