//! Random lives of shared buffers: guest attachments and maps, shares,
//! remote attachments and their mask changes, holds and unholds, frees,
//! RESETs and donations, interleaved. After every operation:
//! - a failed operation changed nothing (snapshot and image);
//! - every allocator's capacity is its free, leased, backing and
//!   quarantined bytes, and no two of those overlap;
//! - a shared buffer's backing (no migration pending) is one extent of a
//!   share allocator, on whole share pages; an unshared buffer's first
//!   backing never comes from a share allocator;
//! - a quarantined extent has holds, is counted, and is never allocated;
//! - the image builds the same pool.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::Strategy as Placing;
use super::*;
use proptest::strategy::Strategy;

const PAGE: u64 = PAGE_SIZE;
const LOW: u32 = 1 << 9;
const MASKS: [u32; 6] = [
    kinds::ANY,
    kinds::SYSTEM,
    kinds::CONTIG,
    LOW,
    kinds::CONTIG | LOW,
    kinds::SYSTEM | kinds::CONTIG,
];
const PAGES: [u64; 3] = [PAGE, 4 * PAGE, 16 * PAGE];

#[derive(Clone, Debug)]
enum Op {
    AddRegion {
        allocator: usize,
        slot: u64,
    },
    Create {
        pages: u64,
        initial: usize,
    },
    Attach {
        pick: usize,
        mask: usize,
    },
    Map {
        pick: usize,
    },
    Unmap {
        pick: usize,
    },
    /// Every map of every guest attachment of one buffer ends (a device
    /// done with it): what lets a late share or remote mask move it.
    UnmapAll {
        pick: usize,
    },
    Detach {
        pick: usize,
    },
    Free {
        pick: usize,
    },
    Share {
        pick: usize,
        page: usize,
    },
    AttachRemote {
        pick: usize,
        mask: usize,
    },
    SetRemoteMask {
        pick: usize,
        mask: usize,
    },
    DetachOwned {
        pick: usize,
    },
    Hold {
        pick: usize,
    },
    Unhold {
        pick: usize,
    },
    /// Another VM's buffer imported, mapped through the window, released.
    Import {
        pages: u64,
    },
    MapImport {
        pick: usize,
    },
    ReleaseImport {
        pick: usize,
    },
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0usize..4, 0u64..6).prop_map(|(allocator, slot)| Op::AddRegion { allocator, slot }),
        5 => (1u64..6, 0usize..7).prop_map(|(pages, initial)| Op::Create { pages, initial }),
        3 => (any::<usize>(), 0usize..6).prop_map(|(pick, mask)| Op::Attach { pick, mask }),
        4 => any::<usize>().prop_map(|pick| Op::Map { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Unmap { pick }),
        3 => any::<usize>().prop_map(|pick| Op::UnmapAll { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Detach { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        3 => (any::<usize>(), 0usize..3).prop_map(|(pick, page)| Op::Share { pick, page }),
        2 => (any::<usize>(), 0usize..6).prop_map(|(pick, mask)| Op::AttachRemote { pick, mask }),
        3 => (any::<usize>(), 0usize..6).prop_map(|(pick, mask)| Op::SetRemoteMask { pick, mask }),
        2 => any::<usize>().prop_map(|pick| Op::DetachOwned { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Hold { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Unhold { pick }),
        1 => (1u64..6).prop_map(|pages| Op::Import { pages }),
        2 => any::<usize>().prop_map(|pick| Op::MapImport { pick }),
        1 => any::<usize>().prop_map(|pick| Op::ReleaseImport { pick }),
        1 => Just(Op::Clear),
    ]
}

fn config() -> PoolConfig {
    let mut config = PoolConfig::default_layout();
    config.custom_kinds = vec![KindSpec {
        bit: 9,
        name: "low".into(),
        contiguous: true,
        max_address: u64::MAX,
        align: PAGE,
    }];
    let spec = |name: &str, strategy, kinds, align, share| AllocatorSpec {
        name: String::from(name),
        strategy,
        kinds,
        placement: Placement {
            contiguous: strategy == Placing::Contiguous,
            below_4g: false,
            align,
        },
        share,
    };
    let well_known = kinds::SYSTEM | kinds::CONTIG;
    config.allocators = vec![
        spec("system", Placing::Scatter, kinds::SYSTEM, PAGE, false),
        spec("contig", Placing::Contiguous, well_known | LOW, PAGE, false),
        spec("share", Placing::Contiguous, well_known, 4 * PAGE, true),
        spec("share-low", Placing::Contiguous, LOW, 16 * PAGE, true),
    ];
    config.limits.max_buffers = 10;
    config.limits.max_attachments_per_buffer = 3;
    config.limits.max_buffer_size = 8 * PAGE;
    config.limits.max_total_bytes = 40 * PAGE;
    config
}

/// Region `slot` of `allocator`: 32 pages, each allocator in its own
/// 16 GiB window, aligned for every share page size.
fn region(allocator: usize, slot: u64) -> Segment {
    Segment {
        addr: ((allocator as u64 + 1) << 34) + slot * 64 * PAGE,
        len: 32 * PAGE,
    }
}

fn pick(ids: &[u32], pick: usize) -> u32 {
    if ids.is_empty() || pick % 10 == 9 {
        0x3fff_0000 // never handed out
    } else {
        ids[pick % ids.len()]
    }
}

struct Life {
    pool: Pool,
    /// Serials the test holds, with the number of holds.
    held: BTreeMap<u64, u32>,
    /// Backing serials first allocated while their buffer was unshared.
    unshared_serials: Vec<u64>,
}

impl Life {
    fn attachments(&self, owner: impl Fn(Owner) -> bool) -> Vec<u32> {
        let snap = self.pool.snapshot();
        snap.attachments
            .iter()
            .filter(|a| owner(a.owner))
            .map(|a| a.id)
            .collect()
    }

    fn buffers(&self) -> Vec<u32> {
        self.pool.snapshot().buffers.iter().map(|b| b.id).collect()
    }

    /// Mostly a shared buffer (what the device holds and imports), else
    /// any buffer.
    fn shared(&self, p: usize) -> u32 {
        let snap = self.pool.snapshot();
        let shared: Vec<u32> = snap
            .attachments
            .iter()
            .filter(|a| matches!(a.owner, Owner::Share { .. }))
            .map(|a| a.buffer)
            .collect();
        if p % 4 == 0 || shared.is_empty() {
            pick(&self.buffers(), p / 4)
        } else {
            pick(&shared, p / 4)
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), Error> {
        let guest = |o: Owner| o == Owner::Guest;
        let remote = |o: Owner| matches!(o, Owner::Remote { .. });
        let owned = |o: Owner| o != Owner::Guest;
        let pool = &mut self.pool;
        match *op {
            Op::AddRegion { allocator, slot } => {
                let r = region(allocator, slot);
                pool.add_region(allocator, r.addr, r.len)
            }
            Op::Create { pages, initial } => {
                // A buffer and its first device (whose mask, the initial
                // one or ANY, always leaves a non-empty access mask).
                let mask = MASKS.get(initial).copied().unwrap_or(0);
                let id = pool.create(pages * PAGE, 0, mask)?.id;
                let types = [MappingType::Contiguous, MappingType::ScatterGather];
                pool.attach(id, MASKS[initial % MASKS.len()], &types)
                    .map(drop)
            }
            Op::Attach { pick: p, mask } => {
                let b = pick(&self.buffers(), p);
                let types = [MappingType::Contiguous, MappingType::ScatterGather];
                self.pool.attach(b, MASKS[mask], &types).map(drop)
            }
            Op::Map { pick: p } => {
                let a = pick(&self.attachments(guest), p);
                let shared = self
                    .pool
                    .attachment_buffer(a)
                    .and_then(|b| self.pool.is_shared(b))
                    .unwrap_or(false);
                let mapped = self.pool.map(a, Direction::Bidirectional)?;
                if mapped.newly_allocated || mapped.migrated_from.is_some() {
                    let b = self.pool.attachment_buffer(a)?;
                    let serial = self.pool.backing_serial(b)?;
                    if !shared {
                        self.unshared_serials.push(serial);
                    }
                }
                Ok(())
            }
            Op::Unmap { pick: p } => {
                let a = pick(&self.attachments(guest), p);
                self.pool.unmap(a, Direction::Bidirectional)
            }
            Op::UnmapAll { pick: p } => {
                let b = pick(&self.buffers(), p);
                let snap = self.pool.snapshot();
                for a in snap.attachments.iter().filter(|a| a.buffer == b) {
                    for _ in 0..a.maps[0] {
                        self.pool.unmap(a.id, Direction::Bidirectional)?;
                    }
                }
                Ok(())
            }
            Op::Detach { pick: p } => {
                let a = pick(&self.attachments(guest), p);
                self.pool.detach(a)
            }
            Op::Free { pick: p } => {
                let b = pick(&self.buffers(), p);
                self.pool.free(b)
            }
            Op::Share { pick: p, page } => {
                let b = pick(&self.buffers(), p);
                self.pool.share(b, PAGES[page]).map(drop)
            }
            Op::AttachRemote { pick: p, mask } => {
                let b = self.shared(p);
                self.pool.attach_remote(b, MASKS[mask], p as u64).map(drop)
            }
            Op::SetRemoteMask { pick: p, mask } => {
                let a = pick(&self.attachments(remote), p);
                self.pool.set_remote_mask(a, MASKS[mask]).map(drop)
            }
            Op::DetachOwned { pick: p } => {
                let a = pick(&self.attachments(owned), p);
                self.pool.detach_owned(a)
            }
            Op::Hold { pick: p } => {
                let b = self.shared(p);
                let held = self.pool.hold(b)?;
                *self.held.entry(held.serial).or_default() += 1;
                Ok(())
            }
            Op::Unhold { pick: p } => {
                let serials: Vec<u64> = self.held.keys().copied().collect();
                let serial = if serials.is_empty() || p % 10 == 9 {
                    u64::MAX
                } else {
                    serials[p % serials.len()]
                };
                let freed = self.pool.unhold(serial)?;
                let holds = self.held.get_mut(&serial).expect("held");
                *holds -= 1;
                let last = *holds == 0;
                if last {
                    self.held.remove(&serial);
                }
                let quarantined = !self.pool.quarantined().iter().all(|q| q.serial != serial);
                assert!(
                    !freed || (last && !quarantined),
                    "freed only at the last hold"
                );
                Ok(())
            }
            Op::Import { pages } => {
                // An import and the importer's first device, in one step.
                let id = self.pool.import(pages * PAGE, 0)?.id;
                let types = [MappingType::Contiguous, MappingType::ScatterGather];
                self.pool.attach(id, kinds::ANY, &types).map(drop)
            }
            Op::MapImport { pick: p } => {
                let a = pick(&self.attachments(guest), p);
                self.pool.map_import(a, Direction::Bidirectional).map(drop)
            }
            Op::ReleaseImport { pick: p } => {
                let b = pick(&self.buffers(), p);
                self.pool.release_import(b)
            }
            Op::Clear => self.pool.clear(),
        }
    }
}

fn check(life: &Life) {
    let pool = &life.pool;
    let snap = pool.snapshot();
    let quarantine = pool.quarantined();
    let pages: BTreeMap<u32, u64> = snap
        .attachments
        .iter()
        .filter_map(|a| match a.owner {
            Owner::Share { page_size } => Some((a.buffer, page_size)),
            _ => None,
        })
        .collect();
    let mut used = vec![0u64; snap.allocators.len()];
    let mut extents: Vec<Segment> = Vec::new();
    let own: u64 = snap
        .buffers
        .iter()
        .filter(|b| !b.imported)
        .map(|b| b.size)
        .sum();
    assert_eq!(snap.counters.total_bytes, own, "imports take no memory");
    for b in &snap.buffers {
        let Some(allocator) = b.allocator else {
            continue;
        };
        assert!(!b.imported, "an imported buffer with backing");
        used[allocator] += b.backing.iter().map(|s| s.len).sum::<u64>();
        extents.extend(&b.backing);
        let serial = pool.backing_serial(b.id).expect("backed");
        if let (Some(&page), false) = (pages.get(&b.id), b.migrate_pending) {
            let stats = &snap.allocators[allocator];
            assert!(
                stats.share,
                "shared buffer {} outside share allocators",
                b.id
            );
            let [one] = b.backing[..] else {
                panic!("shared buffer {} in {} extents", b.id, b.backing.len())
            };
            assert_eq!((one.addr % page, one.len % page), (0, 0), "share pages");
        }
        if life.unshared_serials.contains(&serial) {
            assert!(
                !snap.allocators[allocator].share,
                "unshared in a share allocator"
            );
        }
    }
    let mut quarantined = 0;
    for q in &quarantine {
        assert!(q.holds > 0);
        assert_eq!(
            life.held.get(&q.serial),
            Some(&q.holds),
            "holds of {}",
            q.serial
        );
        let len: u64 = q.segments.iter().map(|s| s.len).sum();
        quarantined += len;
        if let Some(allocator) = q.allocator {
            used[allocator] += len;
            extents.extend(&q.segments);
        }
    }
    assert_eq!(snap.counters.quarantined_bytes, quarantined);
    for (i, stats) in snap.allocators.iter().enumerate() {
        assert_eq!(
            stats.capacity,
            stats.free + stats.leased + used[i],
            "allocator {i}: capacity = free + leased + backing + quarantined"
        );
        extents.extend(pool.free_extents(i));
    }
    extents.sort();
    for pair in extents.windows(2) {
        assert!(pair[0].end() <= pair[1].addr, "overlap: {pair:?}");
    }
    let image = pool.image();
    let rebuilt = Pool::from_image(config(), &image).expect("the image builds a pool");
    assert_eq!(rebuilt.image(), image);
    assert_eq!(rebuilt.snapshot(), snap);
}

fn run(ops: &[Op]) -> (usize, usize, usize) {
    let mut pool = Pool::new(config()).unwrap();
    for allocator in 0..4 {
        let r = region(allocator, 0);
        pool.add_region(allocator, r.addr, r.len).unwrap();
    }
    let mut life = Life {
        pool,
        held: BTreeMap::new(),
        unshared_serials: Vec::new(),
    };
    let (mut quarantines, mut migrations, mut imports) = (0, 0, 0);
    let start = (0..3).map(|i| Op::Create {
        pages: 1 + i,
        initial: 6,
    });
    for op in start.chain(ops.iter().cloned()) {
        let op = &op;
        let (snap, image) = (life.pool.snapshot(), life.pool.image());
        let migrated = life.pool.counters().migrations;
        let r = life.step(op);
        if let Err(err) = r {
            assert_eq!(
                life.pool.snapshot(),
                snap,
                "{op:?} failed ({err}) and changed the pool"
            );
            assert_eq!(
                life.pool.image(),
                image,
                "{op:?} failed ({err}) and changed the image"
            );
        }
        if !life.pool.quarantined().is_empty() {
            quarantines += 1;
        }
        if life.pool.counters().migrations > migrated {
            migrations += 1;
        }
        let snap = life.pool.snapshot();
        let mapped_import = snap.attachments.iter().any(|a| {
            a.maps != [0; 3] && snap.buffers.iter().any(|b| b.id == a.buffer && b.imported)
        });
        if mapped_import {
            imports += 1;
        }
        check(&life);
    }
    (quarantines, migrations, imports)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn shared_buffers_keep_the_share_rules(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops);
    }
}

/// Guards the generator: the sequences the property draws (here from a
/// fixed seed, as many as a default run) quarantine extents, move shared
/// buffers and map imported ones.
#[test]
fn the_share_property_reaches_quarantine_and_migrations() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(op(), 1..80);
    let (mut quarantines, mut migrations, mut imports) = (0, 0, 0);
    for _ in 0..256 {
        let ops = strategy.new_tree(&mut runner).expect("a case").current();
        let (q, m, i) = run(&ops);
        quarantines += q;
        migrations += m;
        imports += i;
    }
    eprintln!(
        "steps with quarantine {quarantines}, migrations {migrations}, steps with a mapped import {imports}"
    );
    assert!(imports >= 20, "{imports} steps with a mapped import");
    assert!(quarantines >= 20, "{quarantines} steps with quarantine");
    assert!(migrations >= 5, "{migrations} migrations");
}
