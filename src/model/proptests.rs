//! Property tests: random operation sequences against simple reference
//! models (a page bitmap for the allocators, a shadow of ids, masks and map
//! counts for the pool), with the pool's invariants checked after each step.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::config::Strategy as Carving;
use super::{
    kinds, Allocator, AttachmentId, BufferId, ContiguousAllocator, Direction, Error, Limits,
    MappingType, Pool, PoolConfig, ScatterAllocator, Segment, Snapshot, ID_BATCH_REF_BIT,
    PAGE_SIZE,
};

const PAGE: u64 = PAGE_SIZE;

// ---------------------------------------------------------------- allocators

#[derive(Clone, Debug)]
enum AllocOp {
    Alloc { pages: u64, single: bool },
    Free { pick: usize },
}

fn alloc_op() -> impl Strategy<Value = AllocOp> {
    prop_oneof![
        3 => (1u64..24, any::<bool>()).prop_map(|(pages, single)| AllocOp::Alloc { pages, single }),
        2 => any::<usize>().prop_map(|pick| AllocOp::Free { pick }),
    ]
}

/// Page-granular reference: `true` = free. Covers `[0, pages * PAGE)`.
struct Bitmap {
    free: Vec<bool>,
}

impl Bitmap {
    /// Maximal free runs (start page, pages), address order.
    fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.free.len() {
            if self.free[i] {
                let start = i;
                while i < self.free.len() && self.free[i] {
                    i += 1;
                }
                runs.push((start as u64, (i - start) as u64));
            } else {
                i += 1;
            }
        }
        runs
    }

    fn set(&mut self, seg: Segment, free: bool) {
        for page in seg.addr / PAGE..seg.end() / PAGE {
            assert_ne!(
                self.free[page as usize], free,
                "page {page} already in that state"
            );
            self.free[page as usize] = free;
        }
    }
}

/// Runs `ops` on an allocator with three regions (with gaps) inside the
/// first 256 pages, checking it against the bitmap after every step.
fn check_allocator(mut alloc: Box<dyn Allocator>, align_pages: u64, ops: &[AllocOp]) {
    let mut bitmap = Bitmap {
        free: vec![false; 256],
    };
    for (start, pages) in [(8u64, 40u64), (64, 100), (180, 60)] {
        alloc.add_region(start * PAGE, pages * PAGE).unwrap();
        bitmap.set(
            Segment {
                addr: start * PAGE,
                len: pages * PAGE,
            },
            true,
        );
    }
    let contiguous = alloc.strategy() == Carving::Contiguous;
    let mut live: Vec<Vec<Segment>> = Vec::new();
    for op in ops {
        match *op {
            AllocOp::Alloc { pages, single } => {
                let size = pages * PAGE;
                let runs = bitmap.runs();
                let free_pages: u64 = runs.iter().map(|r| r.1).sum();
                match alloc.alloc(size, single) {
                    Some(segs) => {
                        assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), size);
                        for pair in segs.windows(2) {
                            assert_ne!(pair[0].end(), pair[1].addr, "not coalesced");
                        }
                        if contiguous || single {
                            assert_eq!(segs.len(), 1);
                        }
                        if contiguous {
                            assert_eq!(segs[0].addr % (align_pages * PAGE), 0);
                        } else {
                            // Fewest segments: k = how many of the largest
                            // runs it takes to hold `pages`.
                            let mut lens: Vec<u64> = runs.iter().map(|r| r.1).collect();
                            lens.sort_unstable_by(|a, b| b.cmp(a));
                            let mut sum = 0;
                            let k = lens
                                .iter()
                                .take_while(|&&l| {
                                    let before = sum;
                                    sum += l;
                                    before < pages
                                })
                                .count();
                            assert_eq!(segs.len(), k, "not the fewest segments");
                        }
                        for seg in &segs {
                            assert_eq!(seg.addr % PAGE, 0);
                            bitmap.set(*seg, false); // panics on overlap
                        }
                        live.push(segs);
                    }
                    None => {
                        let largest = runs.iter().map(|r| r.1).max().unwrap_or(0);
                        if !contiguous && !single {
                            assert!(free_pages < pages, "scatter refused with room");
                        } else if align_pages == 1 {
                            assert!(largest < pages, "refused with a fitting extent");
                        } else {
                            // Aligned: no free run holds an aligned fit of
                            // size + align - 1 pages (the guaranteed one).
                            assert!(largest < pages + align_pages - 1);
                        }
                    }
                }
            }
            AllocOp::Free { pick } => {
                if !live.is_empty() {
                    let segs = live.swap_remove(pick % live.len());
                    alloc.free(&segs);
                    for seg in &segs {
                        bitmap.set(*seg, true);
                    }
                }
            }
        }
        let runs = bitmap.runs();
        let free_pages: u64 = runs.iter().map(|r| r.1).sum();
        assert_eq!(
            alloc.free_bytes(),
            free_pages * PAGE,
            "free space not conserved"
        );
        assert_eq!(alloc.capacity(), 200 * PAGE);
        assert_eq!(
            alloc.largest_free(),
            runs.iter().map(|r| r.1).max().unwrap_or(0) * PAGE
        );
        assert_eq!(
            alloc.free_extents(),
            runs.len(),
            "free extents not coalesced"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn scatter_allocator_matches_a_page_bitmap(ops in prop::collection::vec(alloc_op(), 1..80)) {
        check_allocator(Box::new(ScatterAllocator::new(u64::MAX, PAGE)), 1, &ops);
    }

    #[test]
    fn contiguous_allocator_matches_a_page_bitmap(ops in prop::collection::vec(alloc_op(), 1..80)) {
        check_allocator(Box::new(ContiguousAllocator::new(u64::MAX, PAGE, PAGE)), 1, &ops);
    }

    #[test]
    fn aligned_contiguous_allocator_matches_a_page_bitmap(ops in prop::collection::vec(alloc_op(), 1..80)) {
        check_allocator(Box::new(ContiguousAllocator::new(u64::MAX, PAGE, 4 * PAGE)), 4, &ops);
    }
}

// ---------------------------------------------------------------- pool

const MASKS: [u32; 10] = [
    kinds::SYSTEM,
    kinds::CONTIG,
    kinds::DMA32,
    kinds::CONTIG_DMA32,
    kinds::SYSTEM | kinds::DMA32,
    kinds::CONTIG | kinds::CONTIG_DMA32,
    kinds::ANY,
    kinds::DMA32 | kinds::CONTIG_DMA32,
    1 << 9,
    0,
];

fn importer_types(choice: usize) -> Vec<MappingType> {
    let private = MappingType::Private(0x8000);
    match choice % 6 {
        0 => vec![MappingType::ScatterGather],
        1 => vec![MappingType::Contiguous],
        2 => vec![MappingType::Contiguous, MappingType::ScatterGather],
        3 => vec![private],
        4 => vec![MappingType::ScatterGather, private],
        _ => vec![],
    }
}

#[derive(Clone, Debug)]
enum PoolOp {
    AddRegion {
        allocator: usize,
        high: bool,
        slot: u64,
        pages: u64,
    },
    Create {
        pages: u64,
        initial: usize,
    },
    Attach {
        pick: usize,
        mask: usize,
        types: usize,
    },
    Detach {
        pick: usize,
    },
    Map {
        pick: usize,
        dir: usize,
    },
    Unmap {
        pick: usize,
        dir: usize,
    },
    Free {
        pick: usize,
    },
    /// The driver's RESET: everything goes, ids keep counting.
    Clear,
    /// A late attach that forces a migration: an attached buffer is
    /// backed (mapped if it was not), every map of it ends, an attachment
    /// with a mask its allocator does not serve (when there is one) is
    /// added and mapped.
    Restrict {
        pick: usize,
        mask: usize,
        types: usize,
    },
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        1 => (0usize..5, any::<bool>(), 0u64..8, 1u64..24)
            .prop_map(|(allocator, high, slot, pages)| PoolOp::AddRegion { allocator, high, slot, pages }),
        3 => (prop_oneof![8 => 1u64..5, 1 => 0u64..12], 0usize..10).prop_map(|(pages, initial)| PoolOp::Create { pages, initial }),
        6 => (any::<usize>(), 0usize..10, 0usize..6)
            .prop_map(|(pick, mask, types)| PoolOp::Attach { pick, mask, types }),
        2 => any::<usize>().prop_map(|pick| PoolOp::Detach { pick }),
        4 => (any::<usize>(), 0usize..3).prop_map(|(pick, dir)| PoolOp::Map { pick, dir }),
        3 => (any::<usize>(), 0usize..3).prop_map(|(pick, dir)| PoolOp::Unmap { pick, dir }),
        1 => any::<usize>().prop_map(|pick| PoolOp::Free { pick }),
        1 => Just(PoolOp::Clear),
        3 => (any::<usize>(), any::<usize>(), 0usize..5)
            .prop_map(|(pick, mask, types)| PoolOp::Restrict { pick, mask, types }),
    ]
}

/// Shadow of what the pool must remember, independent of allocation.
#[derive(Default)]
struct Shadow {
    buffers: BTreeMap<BufferId, ShadowBuffer>,
    attachments: BTreeMap<AttachmentId, ShadowAttachment>,
}

struct ShadowBuffer {
    size: u64,
    initial: u32,
    released: bool,
    attachments: Vec<AttachmentId>,
    backing: Option<(usize, Vec<Segment>)>,
}

struct ShadowAttachment {
    buffer: BufferId,
    mask: u32,
    map_type: MappingType,
    maps: [u32; 3],
}

impl Shadow {
    fn access_mask(&self, id: BufferId) -> u32 {
        let b = &self.buffers[&id];
        let base = if b.initial == 0 {
            kinds::ANY
        } else {
            b.initial
        };
        b.attachments
            .iter()
            .fold(base, |m, a| m & self.attachments[a].mask)
    }
}

/// Mostly a live id; sometimes any id ever handed out (maybe dead), or
/// one never handed out.
fn pick<V>(live: &BTreeMap<u32, V>, ever: &[u32], pick: usize) -> u32 {
    let (choice, index) = (pick % 20, pick / 20);
    if choice < 16 && !live.is_empty() {
        *live.keys().nth(index % live.len()).unwrap_or(&0)
    } else if choice < 19 && !ever.is_empty() {
        ever[index % ever.len()]
    } else {
        0x7fff_0000
    }
}

fn check_invariants(pool: &Pool, shadow: &Shadow) {
    let snap = pool.snapshot();
    let allocator_kinds: Vec<u32> = snap.allocators.iter().map(|a| a.kinds).collect();
    // Every backing inside a region of its allocator; no two overlap.
    let mut all: Vec<(Segment, BufferId)> = Vec::new();
    let mut used = vec![0u64; snap.allocators.len()];
    let mut count = vec![0u32; snap.allocators.len()];
    for b in &snap.buffers {
        let sb = &shadow.buffers[&b.id];
        assert_eq!(b.size, sb.size);
        assert_eq!(b.released, sb.released);
        assert_eq!(b.attachments, sb.attachments);
        assert_eq!(b.access_mask, shadow.access_mask(b.id), "access mask");
        assert_eq!(b.allocator, sb.backing.as_ref().map(|k| k.0));
        if let Some(allocator) = b.allocator {
            assert_eq!(Some(&b.backing), sb.backing.as_ref().map(|k| &k.1));
            assert_eq!(b.backing.iter().map(|s| s.len).sum::<u64>(), b.size);
            for pair in b.backing.windows(2) {
                assert_ne!(pair[0].end(), pair[1].addr, "backing not coalesced");
            }
            // Masks respected: the backing satisfies the access mask unless
            // a migration is pending.
            if !b.migrate_pending {
                assert_ne!(
                    allocator_kinds[allocator] & b.access_mask,
                    0,
                    "mask violated"
                );
            }
            for seg in &b.backing {
                assert!(
                    snap.regions.iter().any(|r| r.allocator == allocator
                        && r.addr <= seg.addr
                        && seg.end() <= r.addr + r.len),
                    "segment {seg:?} outside the regions of allocator {allocator}"
                );
                all.push((*seg, b.id));
            }
            used[allocator] += b.size;
            count[allocator] += 1;
            let contiguous_attachment = b
                .attachments
                .iter()
                .any(|a| shadow.attachments[a].map_type == MappingType::Contiguous);
            if contiguous_attachment && !b.migrate_pending {
                assert_eq!(
                    b.backing.len(),
                    1,
                    "contiguous attachment, scattered backing"
                );
            }
        } else {
            assert!(!b.migrate_pending);
        }
    }
    assert_eq!(snap.buffers.len(), shadow.buffers.len());
    all.sort();
    for pair in all.windows(2) {
        assert!(
            pair[0].0.end() <= pair[1].0.addr,
            "backings overlap: {pair:?}"
        );
    }
    // Free space conserved.
    for (i, a) in snap.allocators.iter().enumerate() {
        let donated: u64 = snap
            .regions
            .iter()
            .filter(|r| r.allocator == i)
            .map(|r| r.len)
            .sum();
        assert_eq!(a.capacity, donated);
        assert_eq!(
            a.capacity - a.free,
            used[i],
            "allocator {i} leaks or double-counts"
        );
        assert_eq!(a.num_buffers, count[i]);
        assert!(a.largest_free <= a.free);
    }
    assert_eq!(snap.counters.backing_bytes, used.iter().sum::<u64>());
    assert_eq!(
        snap.counters.total_bytes,
        shadow.buffers.values().map(|b| b.size).sum::<u64>()
    );
    // Attachments.
    assert_eq!(snap.attachments.len(), shadow.attachments.len());
    for a in &snap.attachments {
        let sa = &shadow.attachments[&a.id];
        assert_eq!(
            (a.buffer, a.mask, a.map_type, a.maps),
            (sa.buffer, sa.mask, sa.map_type, sa.maps)
        );
    }
    // Regions never overlap.
    for pair in snap.regions.windows(2) {
        assert!(pair[0].addr + pair[0].len <= pair[1].addr);
    }
}

fn small_pool() -> Pool {
    let mut config = PoolConfig::default_layout();
    config.limits = Limits {
        max_buffers: 12,
        max_attachments_per_buffer: 3,
        max_buffer_size: 8 * PAGE,
        max_total_bytes: 48 * PAGE,
        ..Limits::default()
    };
    config.exporter_types = vec![
        MappingType::Contiguous,
        MappingType::Private(0x8000),
        MappingType::ScatterGather,
    ];
    let mut pool = Pool::new(config).expect("valid config");
    donate_start(&mut pool);
    pool
}

/// Memory to start with (the driver's donation at probe, and again after
/// a RESET): enough that maps mostly find room and late attaches can
/// migrate between allocators; the rest comes from AddRegion.
fn donate_start(pool: &mut Pool) {
    pool.add_region(0, 8 << 30, 8 * PAGE).unwrap();
    pool.add_region(1, 3 << 30, 8 * PAGE).unwrap();
    pool.add_region(3, 2 << 30, 8 * PAGE).unwrap();
}

/// The allocator rule, computed from a snapshot without `Pool::choose`:
/// the first allocator, in priority order, that serves a kind of `mask`
/// and has room for `size` bytes. Its free space is its regions minus the
/// backings it holds (the small pool leases nothing); room is enough free
/// bytes for a scattered allocation, a free run of `size` bytes for one
/// segment (every allocator of the layout aligns to a page).
fn reference_allocator(snap: &Snapshot, size: u64, mask: u32, single: bool) -> Option<usize> {
    snap.allocators.iter().position(|a| {
        if a.kinds & mask == 0 {
            return false;
        }
        assert_eq!(a.leased, 0, "the small pool leases nothing");
        assert_eq!(a.alloc_align, PAGE);
        let runs = free_runs(snap, a.id);
        let free: u64 = runs.iter().map(|r| r.len).sum();
        assert_eq!(a.free, free, "allocator {} free bytes", a.id);
        if a.strategy == Carving::Scatter && !single {
            free >= size
        } else {
            runs.iter().any(|r| r.len >= size)
        }
    })
}

/// Free runs of `allocator`: its regions minus its backings, coalesced.
fn free_runs(snap: &Snapshot, allocator: usize) -> Vec<Segment> {
    let mut used: Vec<Segment> = snap
        .buffers
        .iter()
        .filter(|b| b.allocator == Some(allocator))
        .flat_map(|b| b.backing.iter().copied())
        .collect();
    used.sort();
    let mut runs: Vec<Segment> = Vec::new();
    let mut push = |addr: u64, end: u64| {
        if addr >= end {
            return;
        }
        match runs.last_mut() {
            Some(last) if last.end() == addr => last.len += end - addr,
            _ => runs.push(Segment {
                addr,
                len: end - addr,
            }),
        }
    };
    for r in snap.regions.iter().filter(|r| r.allocator == allocator) {
        let mut at = r.addr;
        for u in used
            .iter()
            .filter(|u| u.addr >= r.addr && u.end() <= r.addr + r.len)
        {
            push(at, u.addr);
            at = u.end();
        }
        push(at, r.addr + r.len);
    }
    runs
}

/// What a run of [`run_pool_ops`] reached (guards the generator).
#[derive(Debug, Default)]
struct PoolReach {
    allocations: u64,
    migrations: u64,
    out_of_memory: u64,
    busy_mapped: u64,
    unsupported: u64,
}

struct PoolRun {
    pool: Pool,
    shadow: Shadow,
    buffer_ids: Vec<BufferId>,
    attachment_ids: Vec<AttachmentId>,
    limits: Limits,
    exporter_types: Vec<MappingType>,
    reach: PoolReach,
}

impl PoolRun {
    /// Whether a map of attachment `id` of `buffer` keeps one segment.
    fn single(&self, buffer: BufferId) -> bool {
        self.shadow.buffers[&buffer]
            .attachments
            .iter()
            .any(|a| self.shadow.attachments[a].map_type == MappingType::Contiguous)
    }

    fn attach(&mut self, id: BufferId, mask: u32, types: &[MappingType]) -> Result<(), Error> {
        let before = self.pool.snapshot();
        let r = self.pool.attach(id, mask, types);
        let limits = &self.limits;
        let mut expect_migrate = None;
        match self.shadow.buffers.get(&id) {
            None => assert_eq!(r.as_ref().err(), Some(&Error::UnknownBuffer(id))),
            Some(b) if b.released => {
                assert_eq!(r.as_ref().err(), Some(&Error::BufferReleased(id)))
            }
            Some(_) if types.is_empty() => {
                assert_eq!(r.as_ref().err(), Some(&Error::NoImporterTypes))
            }
            Some(b) if b.attachments.len() >= limits.max_attachments_per_buffer as usize => {
                assert_eq!(r.as_ref().unwrap_err().errno(), libc::ENOSPC)
            }
            Some(b) => {
                let new_mask = self.shadow.access_mask(id) & mask;
                if new_mask == 0 {
                    assert_eq!(r.as_ref().unwrap_err().errno(), libc::EINVAL);
                } else {
                    // The reference: migrate when the backing's allocator
                    // does not serve the new mask; EBUSY only if a map pins
                    // the backing (or no allocator serves the mask at all).
                    let info = before.buffers.iter().find(|x| x.id == id).unwrap();
                    let serves = |i: usize| before.allocators[i].kinds & new_mask != 0;
                    let mapped = b
                        .attachments
                        .iter()
                        .any(|a| self.shadow.attachments[a].maps.iter().any(|&n| n > 0));
                    let mut migrate = info.migrate_pending;
                    let mut refusal = None;
                    if let Some(allocator) = info.allocator {
                        if !serves(allocator) {
                            if mapped {
                                refusal = Some(Error::MigrationWhileMapped {
                                    buffer: id,
                                    mask: new_mask,
                                });
                            } else if !(0..before.allocators.len()).any(serves) {
                                refusal = Some(Error::NoAllocatorForMask {
                                    buffer: id,
                                    mask: new_mask,
                                });
                            } else {
                                migrate = true;
                            }
                        }
                    }
                    // Contiguous only for a backing of one segment that
                    // stays, or one that can only become one segment.
                    let contiguous_ok = match info.allocator {
                        Some(_) if !migrate => info.backing.len() == 1,
                        _ => {
                            let serving: Vec<_> = before
                                .allocators
                                .iter()
                                .filter(|a| a.kinds & new_mask != 0)
                                .collect();
                            !serving.is_empty()
                                && serving.iter().all(|a| a.strategy == Carving::Contiguous)
                        }
                    };
                    let map_type = self.exporter_types.iter().copied().find(|t| {
                        types.contains(t) && (*t != MappingType::Contiguous || contiguous_ok)
                    });
                    match (&r, refusal, map_type) {
                        (Err(e), Some(expected), _) => {
                            assert_eq!(e, &expected);
                            self.reach.busy_mapped += u64::from(mapped);
                        }
                        (Err(e), None, None) => {
                            assert_eq!(e, &Error::NoMutualMappingType);
                            self.reach.unsupported += 1;
                        }
                        (Ok(a), None, Some(t)) => {
                            assert_eq!(a.map_type, t, "negotiated type");
                            assert_eq!(a.migrate_pending, migrate, "migration decision");
                            expect_migrate = Some(migrate);
                        }
                        (r, refusal, map_type) => panic!(
                            "attach of buffer {id} with {new_mask:#x} {types:?}: {r:?}, \
                             expected refusal {refusal:?} or type {map_type:?}"
                        ),
                    }
                }
            }
        }
        let r = r.map(|a| {
            assert_eq!(a.access_mask, self.shadow.access_mask(id) & mask);
            assert!(
                !self.attachment_ids.contains(&a.id),
                "attachment id {} reused",
                a.id
            );
            self.attachment_ids.push(a.id);
            assert!(types.contains(&a.map_type));
            self.shadow.attachments.insert(
                a.id,
                ShadowAttachment {
                    buffer: id,
                    mask,
                    map_type: a.map_type,
                    maps: [0; 3],
                },
            );
            self.shadow
                .buffers
                .get_mut(&id)
                .unwrap()
                .attachments
                .push(a.id);
        });
        if let Some(migrate) = expect_migrate {
            let info = self.pool.snapshot();
            let info = info.buffers.iter().find(|x| x.id == id).unwrap();
            assert_eq!(info.migrate_pending, migrate);
        }
        self.finish(before, r)
    }

    fn map(&mut self, id: AttachmentId, dir: Direction) -> Result<(), Error> {
        let before = self.pool.snapshot();
        let r = self.pool.map(id, dir);
        let Some(a) = self.shadow.attachments.get(&id) else {
            assert_eq!(r.as_ref().err(), Some(&Error::UnknownAttachment(id)));
            return self.finish(before, r.map(|_| ()));
        };
        let info = before.buffers.iter().find(|x| x.id == a.buffer).unwrap();
        let needs_backing = info.allocator.is_none() || info.migrate_pending;
        // The allocator the rule must pick (outer None: keeps its backing).
        let expected = needs_backing.then(|| {
            reference_allocator(&before, info.size, info.access_mask, self.single(a.buffer))
        });
        match (&r, expected) {
            (Ok(m), Some(Some(allocator))) => {
                assert_eq!(m.allocator, allocator, "not the first allocator with room");
                assert_eq!(m.migrated_from.is_some(), info.allocator.is_some());
                self.reach.allocations += 1;
                self.reach.migrations += u64::from(m.migrated_from.is_some());
            }
            (Ok(m), None) => {
                assert_eq!(Some(m.allocator), info.allocator, "backing moved");
                assert!(!m.newly_allocated && m.migrated_from.is_none());
            }
            (Err(Error::OutOfMemory { size, mask }), Some(None)) => {
                assert_eq!((*size, *mask), (info.size, info.access_mask));
                self.reach.out_of_memory += 1;
            }
            (r, expected) => panic!(
                "map of attachment {id} (buffer {}, {:#x} bytes, mask {:#x}): {r:?}, \
                 expected allocator {expected:?}",
                info.id, info.size, info.access_mask
            ),
        }
        let r = r.map(|m| {
            let a = self.shadow.attachments.get_mut(&id).unwrap();
            a.maps[dir.code() as usize] += 1;
            assert_eq!(m.map_type, a.map_type);
            if m.map_type == MappingType::Contiguous {
                assert_eq!(m.segments.len(), 1);
            }
            let b = self.shadow.buffers.get_mut(&a.buffer).unwrap();
            assert_eq!(m.size, b.size);
            let old = b.backing.replace((m.allocator, m.segments.clone()));
            assert_eq!(m.newly_allocated, old.is_none());
            match (&old, &m.migrated_from) {
                (Some((_, old_segs)), Some(from)) => assert_eq!(old_segs, from),
                (Some((_, old_segs)), None) => assert_eq!(old_segs, &m.segments),
                (None, from) => assert!(from.is_none()),
            }
            assert_ne!(before.allocators[m.allocator].kinds & info.access_mask, 0);
        });
        self.finish(before, r)
    }

    fn unmap(&mut self, id: AttachmentId, dir: Direction) -> Result<(), Error> {
        let before = self.pool.snapshot();
        let r = self.pool.unmap(id, dir);
        match self.shadow.attachments.get_mut(&id) {
            None => assert_eq!(r, Err(Error::UnknownAttachment(id))),
            Some(a) if a.maps[dir.code() as usize] == 0 => {
                assert_eq!(
                    r,
                    Err(Error::NotMapped {
                        attachment: id,
                        direction: dir
                    })
                )
            }
            Some(a) => {
                assert_eq!(r, Ok(()));
                a.maps[dir.code() as usize] -= 1;
            }
        }
        self.finish(before, r)
    }

    /// A failed operation changed nothing; the invariants hold.
    fn finish(&self, before: Snapshot, r: Result<(), Error>) -> Result<(), Error> {
        if r.is_err() {
            assert_eq!(
                self.pool.snapshot(),
                before,
                "a failed operation changed the pool"
            );
        }
        check_invariants(&self.pool, &self.shadow);
        r
    }

    fn step(&mut self, op: &PoolOp) {
        let before = self.pool.snapshot();
        let result: Result<(), Error> = match *op {
            PoolOp::AddRegion {
                allocator,
                high,
                slot,
                pages,
            } => {
                let base = if high { 8u64 << 30 } else { 1u64 << 30 };
                self.pool
                    .add_region(allocator, base + slot * 16 * PAGE, pages * PAGE)
            }
            PoolOp::Create { pages, initial } => {
                let size = pages * PAGE;
                let initial = MASKS[initial];
                let r = self.pool.create(size, 0, initial);
                let limits = &self.limits;
                let expect_ok = size > 0
                    && size <= limits.max_buffer_size
                    && self.shadow.buffers.len() < limits.max_buffers as usize
                    && self.shadow.buffers.values().map(|b| b.size).sum::<u64>() + size
                        <= limits.max_total_bytes;
                assert_eq!(r.is_ok(), expect_ok, "create {r:?}");
                r.map(|c| {
                    assert!(c.id != 0 && c.id & ID_BATCH_REF_BIT == 0);
                    assert!(!self.shadow.buffers.contains_key(&c.id));
                    assert!(
                        !self.buffer_ids.contains(&c.id),
                        "buffer id {} reused",
                        c.id
                    );
                    self.buffer_ids.push(c.id);
                    self.shadow.buffers.insert(
                        c.id,
                        ShadowBuffer {
                            size,
                            initial,
                            released: false,
                            attachments: Vec::new(),
                            backing: None,
                        },
                    );
                })
            }
            PoolOp::Attach {
                pick: p,
                mask,
                types,
            } => {
                let id = pick(&self.shadow.buffers, &self.buffer_ids, p);
                {
                    let _ = self.attach(id, MASKS[mask], &importer_types(types));
                    return;
                }
            }
            PoolOp::Detach { pick: p } => {
                let shadow = &mut self.shadow;
                let id = pick(&shadow.attachments, &self.attachment_ids, p);
                let r = self.pool.detach(id);
                match shadow.attachments.get(&id) {
                    None => assert_eq!(r, Err(Error::UnknownAttachment(id))),
                    Some(a) if a.maps.iter().any(|&n| n > 0) => {
                        assert_eq!(r, Err(Error::AttachmentMapped(id)))
                    }
                    Some(_) => assert_eq!(r, Ok(())),
                }
                r.map(|()| {
                    let a = shadow.attachments.remove(&id).unwrap();
                    let b = shadow.buffers.get_mut(&a.buffer).unwrap();
                    b.attachments.retain(|&x| x != id);
                    if b.released && b.attachments.is_empty() {
                        shadow.buffers.remove(&a.buffer);
                    }
                })
            }
            PoolOp::Map { pick: p, dir } => {
                let id = pick(&self.shadow.attachments, &self.attachment_ids, p);
                {
                    let _ = self.map(id, Direction::ALL[dir]);
                    return;
                }
            }
            PoolOp::Unmap { pick: p, dir } => {
                let id = pick(&self.shadow.attachments, &self.attachment_ids, p);
                {
                    let _ = self.unmap(id, Direction::ALL[dir]);
                    return;
                }
            }
            PoolOp::Free { pick: p } => {
                let id = pick(&self.shadow.buffers, &self.buffer_ids, p);
                let r = self.pool.free(id);
                match self.shadow.buffers.get_mut(&id) {
                    None => assert_eq!(r, Err(Error::UnknownBuffer(id))),
                    Some(b) if b.released => assert_eq!(r, Err(Error::BufferReleased(id))),
                    Some(b) => {
                        assert_eq!(r, Ok(()));
                        b.released = true;
                        if b.attachments.is_empty() {
                            self.shadow.buffers.remove(&id);
                        }
                    }
                }
                r
            }
            PoolOp::Clear => {
                let r = self.pool.clear();
                assert_eq!(r, Ok(()));
                self.shadow = Shadow::default();
                let snap = self.pool.snapshot();
                assert!(snap.regions.is_empty() && snap.buffers.is_empty());
                assert_eq!(snap.next_buffer_id, before.next_buffer_id);
                donate_start(&mut self.pool);
                r
            }
            PoolOp::Restrict {
                pick: p,
                mask,
                types,
            } => {
                self.restrict(p, mask, types);
                return;
            }
        };
        self.finish(before, result).ok();
    }

    /// [`PoolOp::Restrict`]: back an attached buffer (map it if it has no
    /// backing yet), unmap everything of it, attach a mask its allocator
    /// does not serve (if one of [`MASKS`] is such a mask), map that
    /// attachment.
    fn restrict(&mut self, p: usize, mask: usize, types: usize) {
        let attached: Vec<BufferId> = self
            .shadow
            .buffers
            .iter()
            .filter(|(_, b)| !b.released && !b.attachments.is_empty())
            .map(|(&id, _)| id)
            .collect();
        if attached.is_empty() {
            return;
        }
        let id = attached[p % attached.len()];
        if self.shadow.buffers[&id].backing.is_none() {
            // Back it first (the map may find no room: then no migration).
            let first = self.shadow.buffers[&id].attachments[0];
            let _ = self.map(first, Direction::Bidirectional);
        }
        let Some((allocator, _)) = self.shadow.buffers[&id].backing else {
            return;
        };
        let allocators = self.pool.snapshot().allocators;
        let kinds = allocators[allocator].kinds;
        let access = self.shadow.access_mask(id);
        // Masks that move the backing to another allocator.
        let stricter: Vec<u32> = MASKS
            .iter()
            .copied()
            .filter(|m| {
                let new = access & m;
                kinds & new == 0 && allocators.iter().any(|a| a.kinds & new != 0)
            })
            .collect();
        let mask = if stricter.is_empty() {
            MASKS[mask % MASKS.len()]
        } else {
            stricter[mask % stricter.len()]
        };
        let attachments = self.shadow.buffers[&id].attachments.clone();
        for a in attachments {
            for dir in Direction::ALL {
                for _ in 0..self.shadow.attachments[&a].maps[dir.code() as usize] {
                    assert_eq!(self.unmap(a, dir), Ok(()));
                }
            }
        }
        if self.attach(id, mask, &importer_types(types)).is_ok() {
            let new = *self.shadow.buffers[&id].attachments.last().unwrap();
            self.map(new, Direction::Bidirectional).ok();
        }
    }
}

fn run_pool_ops(ops: &[PoolOp]) -> PoolReach {
    let pool = small_pool();
    let limits = pool.config().limits.clone();
    let exporter_types = pool.config().exporter_types.clone();
    let mut run = PoolRun {
        pool,
        shadow: Shadow::default(),
        buffer_ids: Vec::new(),
        attachment_ids: Vec::new(),
        limits,
        exporter_types,
        reach: PoolReach::default(),
    };
    for op in ops {
        run.step(op);
    }
    run.reach
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pool_random_operations_keep_invariants(ops in prop::collection::vec(pool_op(), 1..100)) {
        run_pool_ops(&ops);
    }
}

/// Guards the generator: the sequences the property test draws (here from
/// a fixed seed, as many as a default run) allocate, migrate, run out of
/// memory and are refused for a pinned backing.
#[test]
fn the_pool_property_reaches_migrations_and_refusals() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(pool_op(), 1..100);
    let mut total = PoolReach::default();
    for _ in 0..256 {
        let ops = proptest::strategy::ValueTree::current(&strategy.new_tree(&mut runner).unwrap());
        let reach = run_pool_ops(&ops);
        total.allocations += reach.allocations;
        total.migrations += reach.migrations;
        total.out_of_memory += reach.out_of_memory;
        total.busy_mapped += reach.busy_mapped;
        total.unsupported += reach.unsupported;
    }
    eprintln!("{total:?}");
    assert!(total.migrations >= 20, "{total:?}");
    assert!(total.allocations > total.out_of_memory, "{total:?}");
    assert!(total.out_of_memory > 0, "{total:?}");
    assert!(total.busy_mapped > 0, "{total:?}");
    assert!(total.unsupported > 0, "{total:?}");
}
