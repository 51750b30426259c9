//! The safety rule under arbitrary sequences (issue 17): while a
//! window of B can reach an extent of A (a map request was answered and
//! no unmap is proven), that extent is the shared buffer's backing or in
//! A's quarantine, and no other buffer of A is ever given it. And nothing
//! is left behind: once every import is released and every unmap proven,
//! A's quarantine is empty and the table forgets everything; a parked
//! command always answers once the bounds pass.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use vm_memory::ByteValued;

use super::frame::read_struct;
use super::share_tests::*;
use super::*;
use crate::model::PAGE_SIZE;
use crate::share::{Action, Desk};

#[derive(Clone, Debug)]
enum Op {
    /// A creates a buffer of `pages` pages, maps it or not, shares it.
    AShare {
        pages: u8,
        map: bool,
    },
    /// A creates and maps a buffer it does not share (memory pressure).
    APlain {
        pages: u8,
    },
    AMap(usize),
    AUnmapDetach(usize),
    AFree(usize),
    AUnshare(usize),
    AReset,
    BImport(usize),
    BAttachMap(usize),
    BUnmap(usize),
    BRelease(usize),
    /// B acknowledges every SHARE_REVOKE it has.
    BAck,
    BReset,
    /// B's QEMU refuses the next map request.
    RefuseNextMap,
    ProveUnmaps,
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..4, any::<bool>()).prop_map(|(pages, map)| Op::AShare { pages, map }),
        1 => (1u8..8).prop_map(|pages| Op::APlain { pages }),
        2 => (0usize..4).prop_map(Op::AMap),
        2 => (0usize..4).prop_map(Op::AUnmapDetach),
        2 => (0usize..4).prop_map(Op::AFree),
        2 => (0usize..4).prop_map(Op::AUnshare),
        1 => Just(Op::AReset),
        4 => (0usize..4).prop_map(Op::BImport),
        3 => (0usize..4).prop_map(Op::BAttachMap),
        1 => (0usize..4).prop_map(Op::BUnmap),
        1 => (0usize..4).prop_map(Op::BRelease),
        2 => Just(Op::BAck),
        1 => Just(Op::BReset),
        1 => Just(Op::RefuseNextMap),
        2 => Just(Op::ProveUnmaps),
        2 => (0u16..3500).prop_map(Op::Advance),
    ]
}

/// A window QEMU-B holds: A's extent, and which buffer of A (id, serial)
/// it was at map time.
#[derive(Clone, Copy, Debug)]
struct Window {
    addr: u64,
    len: u64,
    buffer: u32,
    serial: u64,
}

struct World {
    two: Two,
    /// A's buffers (shared or not), B's imports (id, attachments).
    a_buffers: Vec<u32>,
    tokens: Vec<u64>,
    b_imports: Vec<(u32, Vec<u32>)>,
    parked: Option<Batch>,
    refuse_next: bool,
    windows: BTreeMap<u32, Window>,
    unmaps: Vec<u32>,
    reach: Reach,
}

/// What a run went through (the generator's guard).
#[derive(Clone, Copy, Debug, Default)]
struct Reach {
    windows: usize,
    parked: usize,
    quarantined: usize,
    b_maps: usize,
}

impl World {
    fn new() -> World {
        World {
            two: Two::with_desk(desk_with(16)),
            a_buffers: Vec::new(),
            tokens: Vec::new(),
            b_imports: Vec::new(),
            parked: None,
            refuse_next: false,
            windows: BTreeMap::new(),
            unmaps: Vec::new(),
            reach: Reach::default(),
        }
    }

    /// One of the last four of `list` (the live ones, mostly).
    fn pick<T: Copy>(list: &[T], i: usize) -> Option<T> {
        let n = list.len();
        (n > 0).then(|| list[n - 1 - i % n.min(4)])
    }

    /// The serving process: as `Two::route`, with refusals and the
    /// windows QEMU-B holds.
    fn route(&mut self) {
        loop {
            let carried = self.two.desk.take_carried();
            if carried.is_empty() {
                return;
            }
            for (_, action) in carried {
                match action {
                    Action::Place { .. } | Action::Unhold { .. } => self.two.alpha.receive(action),
                    Action::Revoke { .. } | Action::Ready { .. } => self.two.beta.receive(action),
                    Action::Map {
                        ref vm,
                        import,
                        addr,
                        len,
                        ..
                    } => {
                        let ok = !std::mem::take(&mut self.refuse_next);
                        if ok {
                            let snapshot = self.two.alpha.pool.snapshot();
                            let owner = snapshot
                                .buffers
                                .iter()
                                .find(|b| b.backing.iter().any(|s| s.addr == addr))
                                .expect("a map request names no buffer's backing");
                            let serial = self.two.alpha.pool.buffer_serial(owner.id).unwrap();
                            self.reach.windows += 1;
                            self.windows.insert(
                                import,
                                Window {
                                    addr,
                                    len,
                                    buffer: owner.id,
                                    serial,
                                },
                            );
                        }
                        let answered = self.two.desk.table().map_answered(vm, import, ok);
                        self.two.desk.carry("qemu-beta", answered);
                    }
                    Action::Unmap { import, .. } => self.unmaps.push(import),
                }
            }
        }
    }

    fn a_run(&mut self, opcode: u16, payload: &[u8], resp_len: u32) -> Option<(i32, Vec<u8>)> {
        if self.parked.is_some() {
            // A's later chains wait behind the parked one.
            return None;
        }
        let mut batch = begin(&mut self.two.alpha, opcode, payload, resp_len);
        let done = step(&mut self.two.alpha, &mut batch);
        if done.is_none() {
            self.reach.parked += 1;
            self.parked = Some(batch);
        }
        self.route();
        done.map(|(status, out, _)| (status, out))
    }

    fn step_parked(&mut self) {
        if let Some(mut batch) = self.parked.take() {
            if step(&mut self.two.alpha, &mut batch).is_none() {
                self.parked = Some(batch);
            }
            self.route();
        }
    }

    fn a_attach_map(&mut self, buffer: u32) {
        let mut req = AttachReq {
            buffer_id: buffer,
            mask: CENALLOC_KIND_SYSTEM,
            num_types: 2,
            ..Default::default()
        };
        req.types[0] = CENALLOC_MAP_CONTIG;
        req.types[1] = CENALLOC_MAP_SG;
        let Some((0, out)) = self.a_run(CENALLOC_CMD_ATTACH, req.as_slice(), 16) else {
            return;
        };
        let attach = read_struct::<AttachResp>(&out, 0).unwrap().attach_id;
        let map = MapReq {
            attach_id: attach,
            direction: 0,
        };
        self.a_run(CENALLOC_CMD_MAP, map.as_slice(), 4096);
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::AShare { pages, map } => {
                let req = CreateReq {
                    size: u64::from(pages) * PAGE_SIZE,
                    flags: 0,
                    initial_mask: CENALLOC_KIND_SYSTEM,
                };
                let Some((0, out)) = self.a_run(CENALLOC_CMD_CREATE, req.as_slice(), 16) else {
                    return;
                };
                let buffer = read_struct::<CreateResp>(&out, 0).unwrap().buffer_id;
                self.a_buffers.push(buffer);
                let share = ShareReq {
                    buffer_id: buffer,
                    flags: CENALLOC_SHARE_F_WRITABLE,
                    group: [0; CENALLOC_NAME_LEN],
                    reserved: 0,
                };
                if let Some((0, out)) = self.a_run(CENALLOC_CMD_SHARE, share.as_slice(), 24) {
                    self.tokens
                        .push(read_struct::<ShareResp>(&out, 0).unwrap().token);
                }
                // Mapped after the share: placed in the share pool.
                if map {
                    self.a_attach_map(buffer);
                }
            }
            Op::APlain { pages } => {
                let req = CreateReq {
                    size: u64::from(pages) * PAGE_SIZE,
                    flags: 0,
                    initial_mask: CENALLOC_KIND_SYSTEM,
                };
                if let Some((0, out)) = self.a_run(CENALLOC_CMD_CREATE, req.as_slice(), 16) {
                    let buffer = read_struct::<CreateResp>(&out, 0).unwrap().buffer_id;
                    self.a_buffers.push(buffer);
                    self.a_attach_map(buffer);
                }
            }
            Op::AMap(i) => {
                if let Some(buffer) = Self::pick(&self.a_buffers, i) {
                    self.a_attach_map(buffer);
                }
            }
            Op::AUnmapDetach(i) => {
                let Some(buffer) = Self::pick(&self.a_buffers, i) else {
                    return;
                };
                let Ok(owned) = self.two.alpha.pool.attachments_of(buffer) else {
                    return;
                };
                for (attachment, owner) in owned {
                    if owner != model::Owner::Guest {
                        continue;
                    }
                    let unmap = UnmapReq {
                        attach_id: attachment,
                        direction: 0,
                    };
                    while let Some((0, _)) = self.a_run(CENALLOC_CMD_UNMAP, unmap.as_slice(), 0) {}
                    let detach = DetachReq {
                        attach_id: attachment,
                        reserved: 0,
                    };
                    self.a_run(CENALLOC_CMD_DETACH, detach.as_slice(), 0);
                }
            }
            Op::AFree(i) => {
                if let Some(buffer) = Self::pick(&self.a_buffers, i) {
                    let req = FreeReq {
                        buffer_id: buffer,
                        reserved: 0,
                    };
                    self.a_run(CENALLOC_CMD_FREE, req.as_slice(), 0);
                }
            }
            Op::AUnshare(i) => {
                let (Some(buffer), Some(token)) =
                    (Self::pick(&self.a_buffers, i), Self::pick(&self.tokens, i))
                else {
                    return;
                };
                let req = UnshareReq {
                    buffer_id: buffer,
                    flags: 0,
                    token,
                };
                self.a_run(CENALLOC_CMD_UNSHARE, req.as_slice(), 8);
            }
            Op::AReset => {
                if let Some(batch) = self.parked.take() {
                    self.two.alpha.abandon_batch(batch);
                }
                self.two.alpha.reset().unwrap();
                self.two
                    .alpha
                    .pool
                    .add_region(0, 0x40_0000, 0x40_0000)
                    .unwrap();
                // Refused while extents of the old share region are in
                // quarantine (no region over them): A shares no more then.
                let _ = self
                    .two
                    .alpha
                    .pool
                    .add_region(SHARE_POOL, 0x80_0000, 0x20_0000);
                self.a_buffers.clear();
                self.route();
            }
            Op::BImport(i) => {
                if let Some(token) = Self::pick(&self.tokens, i) {
                    // Not `Two::import`: its routing would answer the map
                    // without this world seeing the window.
                    let req = ImportReq {
                        token,
                        flags: 0,
                        initial_mask: 0,
                    };
                    let (status, out, _) =
                        run(&mut self.two.beta, CENALLOC_CMD_IMPORT, req.as_slice(), 32);
                    if status == 0 {
                        let resp: ImportResp = read_struct(&out, 0).unwrap();
                        self.b_imports.push((resp.buffer_id, Vec::new()));
                    }
                    self.route();
                }
            }
            Op::BAttachMap(i) => {
                if self.b_imports.is_empty() {
                    return;
                }
                let k = i % self.b_imports.len();
                let id = self.b_imports[k].0;
                if self.two.beta.pool.is_imported(id) != Ok(true) {
                    return;
                }
                let attachment = self.two.beta_attach(id);
                self.b_imports[k].1.push(attachment);
                if self.two.beta_map(attachment).0 == 0 {
                    self.reach.b_maps += 1;
                }
            }
            Op::BUnmap(i) => {
                if let Some((_, attachments)) = self.b_imports.get(i % self.b_imports.len().max(1))
                {
                    for &attachment in attachments {
                        let unmap = UnmapReq {
                            attach_id: attachment,
                            direction: 0,
                        };
                        while run(&mut self.two.beta, CENALLOC_CMD_UNMAP, unmap.as_slice(), 0).0
                            == 0
                        {}
                    }
                }
            }
            Op::BRelease(i) => {
                if let Some(&(id, _)) = self.b_imports.get(i % self.b_imports.len().max(1)) {
                    let req = ReleaseReq {
                        buffer_id: id,
                        reserved: 0,
                    };
                    run(&mut self.two.beta, CENALLOC_CMD_RELEASE, req.as_slice(), 0);
                    self.route();
                }
            }
            Op::BAck => {
                for (event_type, id, data) in self.two.beta_events() {
                    if event_type == CENALLOC_EVENT_SHARE_REVOKE {
                        let req = RevokeAckReq {
                            buffer_id: id,
                            reserved: 0,
                            serial: data & CENALLOC_REVOKE_SERIAL_MASK,
                        };
                        run(
                            &mut self.two.beta,
                            CENALLOC_CMD_REVOKE_ACK,
                            req.as_slice(),
                            0,
                        );
                    }
                }
                self.route();
            }
            Op::BReset => {
                self.two.beta.reset().unwrap();
                self.two
                    .beta
                    .pool
                    .add_region(0, 0x40_0000, 0x40_0000)
                    .unwrap();
                self.b_imports.clear();
                self.route();
            }
            Op::RefuseNextMap => self.refuse_next = true,
            Op::ProveUnmaps => self.prove_unmaps(),
            Op::Advance(ms) => {
                self.two.desk.advance(Duration::from_millis(ms.into()));
            }
        }
        self.step_parked();
    }

    fn prove_unmaps(&mut self) {
        for import in std::mem::take(&mut self.unmaps) {
            self.windows.remove(&import);
            let proven = self.two.desk.table().unmapped("beta", import);
            self.two.desk.carry("qemu-beta", proven);
        }
        self.route();
    }

    /// The safety rule, checked after every step.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let quarantined = self.two.alpha.pool.quarantined();
        if !quarantined.is_empty() && !self.windows.is_empty() {
            self.reach.quarantined += 1;
        }
        let pool = &self.two.alpha.pool;
        let snapshot = pool.snapshot();
        for (import, w) in &self.windows {
            let inside = |s: &Segment| s.addr <= w.addr && w.addr + w.len <= s.addr + s.len;
            let own = pool.buffer_serial(w.buffer) == Ok(w.serial)
                && pool.backing(w.buffer).is_ok_and(|b| b.iter().any(inside));
            let held = quarantined.iter().any(|q| q.segments.iter().any(inside));
            prop_assert!(
                own || held,
                "window of import {import} at {:#x}+{:#x}: neither buffer {}'s backing nor quarantined",
                w.addr,
                w.len,
                w.buffer
            );
            for b in &snapshot.buffers {
                if own && b.id == w.buffer {
                    continue;
                }
                let overlaps = b
                    .backing
                    .iter()
                    .any(|s| s.addr < w.addr + w.len && w.addr < s.addr + s.len);
                prop_assert!(
                    !overlaps,
                    "buffer {} of A was given {:#x}+{:#x}, which import {import}'s window still reaches",
                    b.id,
                    w.addr,
                    w.len
                );
            }
        }
        Ok(())
    }

    /// Every import released, every unmap proven, A's shares ended: the
    /// parked command answers within the bounds, and nothing stays.
    fn wind_down(&mut self) -> Result<(), TestCaseError> {
        self.apply(&Op::BReset);
        for _ in 0..8 {
            self.prove_unmaps();
            self.two.desk.advance(Duration::from_millis(3500));
            self.step_parked();
        }
        prop_assert!(self.parked.is_none(), "a parked command never answered");
        self.apply(&Op::AReset);
        self.prove_unmaps();
        self.check()?;
        prop_assert!(self.windows.is_empty());
        prop_assert_eq!(self.two.desk.table().imports().count(), 0);
        prop_assert_eq!(self.two.desk.table().shares().count(), 0);
        prop_assert!(
            self.two.alpha.pool.quarantined().is_empty(),
            "{:?}",
            self.two.alpha.pool.quarantined()
        );
        Ok(())
    }
}

fn live(ops: &[Op]) -> Result<Reach, TestCaseError> {
    let mut world = World::new();
    for op in ops {
        world.apply(op);
        world.check()?;
    }
    world.wind_down()?;
    Ok(world.reach)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn no_extent_a_window_reaches_is_reused(ops in prop::collection::vec(op(), 1..60)) {
        live(&ops)?;
    }
}

/// Guards the generator: the same draws, from a fixed seed, map windows,
/// park A's commands, quarantine extents a window still reaches, and let
/// B map its imports.
#[test]
fn the_share_property_reaches_windows_parking_and_quarantine() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(op(), 1..60);
    let mut total = Reach::default();
    for _ in 0..256 {
        let ops = proptest::strategy::ValueTree::current(&strategy.new_tree(&mut runner).unwrap());
        let reach = live(&ops).unwrap();
        total.windows += reach.windows;
        total.parked += reach.parked;
        total.quarantined += reach.quarantined;
        total.b_maps += reach.b_maps;
    }
    eprintln!("{total:?}");
    assert!(total.windows > 50, "{total:?}");
    assert!(total.parked > 10, "{total:?}");
    assert!(total.quarantined > 20, "{total:?}");
    assert!(total.b_maps > 20, "{total:?}");
}
