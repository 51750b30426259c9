//! The `batch` target's second run (issue 17): the same batches on a
//! device that may share, "alpha", an exporter and an importer of group
//! "camera", with a peer, "beta", that shares a buffer of its own and
//! imports every buffer alpha shares. The harness plays the serving
//! process between them after each batch: events and holds to the
//! devices, every map request answered (QEMU-B mapped it), every unmap
//! proven, beta acknowledging every revocation. The token
//! [`PEER_TOKEN_ALIAS`] in an IMPORT names beta's share (tokens are
//! unguessable; the fuzzer finds this one).
//!
//! Oracles, on top of the unlinked run's: a batch that did nothing
//! changed neither the pool nor the share table; and an extent a window
//! still reaches is the shared buffer's own backing or in its exporter's
//! quarantine, never another buffer's.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use cenalloc::config::{ShareAccess, ShareConfig, ShareGroup, ShareLimits, ShareTimeouts, VmShare};
use cenalloc::model::{kinds, AllocatorSpec, Placement, Strategy};
use cenalloc::share::{Action, Desk, ShareLink, ShareTable};

use super::*;

/// The token an IMPORT names to import beta's share.
pub const PEER_TOKEN_ALIAS: u64 = 0x5eed;
const KEY: [u8; 16] = *b"cenalloc-fuzzing";

struct FuzzDesk {
    table: Mutex<ShareTable>,
    now: Mutex<Duration>,
    carried: Mutex<Vec<Action>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Desk for FuzzDesk {
    fn table(&self) -> MutexGuard<'_, ShareTable> {
        locked(&self.table)
    }
    /// Time passes at each look (50 ms), so a parked command ends by the
    /// table's bounds even when nobody answers while it waits.
    fn now(&self) -> Duration {
        let mut now = locked(&self.now);
        *now += Duration::from_millis(50);
        *now
    }
    fn carry(&self, _from: &str, actions: Vec<Action>) {
        locked(&self.carried).extend(actions);
    }
}

fn desk() -> Arc<FuzzDesk> {
    let config = ShareConfig {
        timeouts: ShareTimeouts {
            revoke: Duration::from_millis(500),
            unmap: Duration::from_millis(500),
            grace: Duration::from_millis(20),
        },
        groups: vec![ShareGroup {
            name: "camera".into(),
            exporters: vec!["alpha".into(), "beta".into()],
            importers: vec!["alpha".into(), "beta".into()],
            access: ShareAccess::ReadWrite,
            max_importers: 2,
            kind_map: Vec::new(),
        }],
    };
    let member = VmShare {
        exporter_groups: vec!["camera".into()],
        importer_groups: vec!["camera".into()],
        window: Some(1 << 20),
        limits: ShareLimits {
            max_shares: 4,
            max_mappings: 4,
            ..ShareLimits::default()
        },
    };
    let mut table = ShareTable::new(config, KEY);
    table.join("alpha", member.clone());
    table.join("beta", member);
    Arc::new(FuzzDesk {
        table: Mutex::new(table),
        now: Mutex::new(Duration::from_secs(1)),
        carried: Mutex::new(Vec::new()),
    })
}

/// The fuzz layout plus a share allocator (index 4).
fn config() -> DeviceConfig {
    let mut config = fuzz_config();
    config.pool.allocators.push(AllocatorSpec {
        name: "share".into(),
        strategy: Strategy::Contiguous,
        kinds: kinds::SYSTEM | kinds::CONTIG,
        placement: Placement {
            contiguous: true,
            below_4g: false,
            align: CENALLOC_PAGE_SIZE,
        },
        share: true,
    });
    config.pool_sizes.push(64 << 10);
    config.pool_max_sizes.push(0);
    config
}

/// As the unlinked donation, with region 2 split: its first half to
/// `system`, its second to `share`.
fn donate_linked(device: &mut Device, mem: &Mem) {
    let (r1, _) = REGIONS[1];
    let (r2, r2_len) = REGIONS[2];
    donate(
        device,
        mem,
        &[
            (0, r2, r2_len / 2),
            (1, r1, 64 << 10),
            (2, r1 + (64 << 10), 64 << 10),
            (3, r1 + (128 << 10), 128 << 10),
            (4, r2 + r2_len / 2, r2_len / 2),
        ],
    );
}

/// Replaces the alias in every IMPORT of a well-framed request.
fn alias_tokens(request: &mut [u8], token: u64) {
    let mut offset = size_of::<BatchHdr>();
    while offset + size_of::<CmdHdr>() <= request.len() {
        // struct cenalloc_cmd_hdr: opcode (le16), flags (le16), len (le32).
        let opcode = u16::from_le_bytes([request[offset], request[offset + 1]]);
        let len = read_u32(request, offset + 4) as usize;
        let payload = offset + size_of::<CmdHdr>();
        if opcode == CENALLOC_CMD_IMPORT && len >= 8 {
            if let Some(field) = request.get_mut(payload..payload + 8) {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(field);
                if u64::from_le_bytes(bytes) == PEER_TOKEN_ALIAS {
                    field.copy_from_slice(&token.to_le_bytes());
                }
            }
        }
        offset = payload.saturating_add(len);
    }
}

/// A window a map request made: whose extent, and which buffer it was.
#[derive(Clone, Copy, Debug)]
struct Window {
    exporter_is_alpha: bool,
    addr: u64,
    len: u64,
    buffer: u32,
    serial: u64,
}

struct Linked {
    desk: Arc<FuzzDesk>,
    alpha: Device,
    beta: Device,
    alpha_mem: Mem,
    beta_mem: Mem,
    windows: BTreeMap<(String, u32), Window>,
    /// alpha's shares beta imported.
    imported: Vec<u64>,
}

impl Linked {
    fn new() -> Linked {
        let desk = desk();
        let link = |vm: &str| ShareLink::new(vm, desk.clone() as Arc<dyn Desk>);
        let new = |vm: &str| match Device::new(config()) {
            Ok(device) => device.with_share(link(vm)),
            Err(e) => panic!("the share fuzz config is refused: {e}"),
        };
        let (mut alpha, mut beta) = (new("alpha"), new("beta"));
        let (alpha_mem, beta_mem) = (guest_memory(), guest_memory());
        donate_linked(&mut alpha, &alpha_mem);
        donate_linked(&mut beta, &beta_mem);
        let mut linked = Linked {
            desk,
            alpha,
            beta,
            alpha_mem,
            beta_mem,
            windows: BTreeMap::new(),
            imported: Vec::new(),
        };
        linked.beta_shares_a_buffer();
        linked
    }

    /// beta: CREATE one page, SHARE it, ATTACH and MAP (placed in its
    /// share pool).
    fn beta_shares_a_buffer(&mut self) {
        let create = CreateReq {
            size: CENALLOC_PAGE_SIZE,
            flags: 0,
            initial_mask: CENALLOC_KIND_SYSTEM,
        };
        let out = one_command(
            &mut self.beta,
            &self.beta_mem,
            CENALLOC_CMD_CREATE,
            create.as_slice(),
            16,
        );
        assert_eq!(read_u32(&out, 0), 0, "beta's CREATE");
        let buffer = read_u32(&out, 24);
        let share = ShareReq {
            buffer_id: buffer,
            flags: CENALLOC_SHARE_F_WRITABLE,
            group: encode_name("camera"),
            reserved: 0,
        };
        let out = one_command(
            &mut self.beta,
            &self.beta_mem,
            CENALLOC_CMD_SHARE,
            share.as_slice(),
            24,
        );
        assert_eq!(read_u32(&out, 0), 0, "beta's SHARE");
        let mut attach = AttachReq {
            buffer_id: buffer,
            mask: CENALLOC_KIND_SYSTEM,
            num_types: 1,
            ..Default::default()
        };
        attach.types[0] = CENALLOC_MAP_CONTIG;
        let out = one_command(
            &mut self.beta,
            &self.beta_mem,
            CENALLOC_CMD_ATTACH,
            attach.as_slice(),
            16,
        );
        assert_eq!(read_u32(&out, 0), 0, "beta's ATTACH");
        let map = MapReq {
            attach_id: read_u32(&out, 24),
            direction: 0,
        };
        let out = one_command(
            &mut self.beta,
            &self.beta_mem,
            CENALLOC_CMD_MAP,
            map.as_slice(),
            64,
        );
        assert_eq!(read_u32(&out, 0), 0, "beta's MAP");
    }

    fn peer_token(&self) -> u64 {
        self.desk
            .table()
            .shares()
            .find(|s| s.exporter == "beta")
            .map_or(0, |s| s.token)
    }

    fn exporter(&mut self, name: &str) -> &mut Device {
        if name == "alpha" {
            &mut self.alpha
        } else {
            &mut self.beta
        }
    }

    /// The serving process, until nothing is left to carry.
    fn route(&mut self) {
        for _ in 0..64 {
            let carried = std::mem::take(&mut *locked(&self.desk.carried));
            if carried.is_empty() {
                return;
            }
            for action in carried {
                match action {
                    Action::Place { ref exporter, .. } | Action::Unhold { ref exporter, .. } => {
                        let exporter = exporter.clone();
                        self.exporter(&exporter).receive(action);
                    }
                    Action::Ready { ref vm, .. } => {
                        let vm = vm.clone();
                        self.exporter(&vm).receive(action);
                    }
                    Action::Revoke {
                        ref vm,
                        import,
                        data,
                    } => {
                        if vm == "beta" {
                            let now = self.desk.now();
                            let serial = data & CENALLOC_REVOKE_SERIAL_MASK;
                            let acked = self.desk.table().revoke_ack("beta", import, serial, now);
                            self.desk.carry("beta", acked.unwrap_or_default());
                        } else {
                            self.alpha.receive(action);
                        }
                    }
                    Action::Map {
                        ref vm,
                        import,
                        ref exporter,
                        addr,
                        len,
                        ..
                    } => {
                        let (vm, exporter) = (vm.clone(), exporter.clone());
                        // The buffer whose backing it is; none when the
                        // exporter freed it or reset since the request
                        // left (later in the same batch): then the extent
                        // must be held in quarantine (`check_windows`).
                        let pool = self.exporter(&exporter).pool();
                        let (buffer, serial) = pool
                            .snapshot()
                            .buffers
                            .iter()
                            .find(|b| b.backing.iter().any(|s| s.addr == addr))
                            .map_or((u32::MAX, u64::MAX), |owner| {
                                (owner.id, pool.buffer_serial(owner.id).unwrap_or(u64::MAX))
                            });
                        self.windows.insert(
                            (vm.clone(), import),
                            Window {
                                exporter_is_alpha: exporter == "alpha",
                                addr,
                                len,
                                buffer,
                                serial,
                            },
                        );
                        let answered = self.desk.table().map_answered(&vm, import, true);
                        self.desk.carry("qemu", answered);
                    }
                    Action::Unmap { ref vm, import, .. } => {
                        self.windows.remove(&(vm.clone(), import));
                        let proven = self.desk.table().unmapped(vm, import);
                        self.desk.carry("qemu", proven);
                    }
                }
            }
        }
        panic!("the serving process never ran out of actions");
    }

    /// beta imports every share of alpha it has not imported yet.
    fn beta_imports(&mut self) {
        let tokens: Vec<u64> = self
            .desk
            .table()
            .shares()
            .filter(|s| s.exporter == "alpha" && !s.ending)
            .map(|s| s.token)
            .collect();
        for token in tokens {
            if self.imported.contains(&token) {
                continue;
            }
            self.imported.push(token);
            let req = ImportReq {
                token,
                flags: 0,
                initial_mask: 0,
            };
            one_command(
                &mut self.beta,
                &self.beta_mem,
                CENALLOC_CMD_IMPORT,
                req.as_slice(),
                32,
            );
            self.route();
        }
    }

    fn table_counts(&self) -> (usize, usize) {
        let table = self.desk.table();
        (table.shares().count(), table.imports().count())
    }

    /// No extent a window reaches is another buffer's.
    fn check_windows(&self) {
        for ((vm, import), w) in &self.windows {
            let device = if w.exporter_is_alpha {
                &self.alpha
            } else {
                &self.beta
            };
            let pool = device.pool();
            let inside =
                |s: &cenalloc::model::Segment| s.addr <= w.addr && w.addr + w.len <= s.addr + s.len;
            let own = pool.buffer_serial(w.buffer).ok() == Some(w.serial)
                && pool.backing(w.buffer).is_ok_and(|b| b.iter().any(inside));
            let held = pool
                .quarantined()
                .iter()
                .any(|q| q.segments.iter().any(inside));
            assert!(
                own || held,
                "{vm}'s window {import} reaches {:#x}+{:#x}: not its buffer's, not quarantined",
                w.addr,
                w.len
            );
            for b in &pool.snapshot().buffers {
                if own && b.id == w.buffer {
                    continue;
                }
                assert!(
                    !b.backing
                        .iter()
                        .any(|s| s.addr < w.addr + w.len && w.addr < s.addr + s.len),
                    "buffer {} was given {:#x}+{:#x}, which {vm}'s window {import} reaches",
                    b.id,
                    w.addr,
                    w.len
                );
            }
        }
    }
}

/// What the linked run reached.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShareReach {
    /// Batches after which alpha shared a buffer, or imported beta's.
    pub shared: u64,
    pub imported: u64,
    /// Windows mapped into either VM.
    pub windows: u64,
}

/// Runs `case`'s batches on alpha; panics (an oracle failed) on a bug.
pub fn run_linked(case: &BatchCase) -> ShareReach {
    let mut reach = ShareReach::default();
    let mut linked = Linked::new();
    let peer = linked.peer_token();
    assert_ne!(peer, 0, "beta shares nothing");
    LEASED.with(|l| l.borrow_mut().clear());
    for (spec, writable) in case.batches.iter().take(MAX_BATCHES) {
        let (mut request, need) = spec.encode();
        alias_tokens(&mut request, peer);
        let writable_len = writable.resolve(need);
        let before = (linked.alpha.pool().snapshot(), linked.table_counts());
        let answer = linked
            .alpha
            .execute_batch(&linked.alpha_mem, &request, writable_len);
        note_leases(&request, &answer);
        check_answer(&answer, writable_len, spec, &request);
        let did_nothing = answer.len() >= 8 && read_u32(&answer, 4) == 0;
        if did_nothing && !spec.cmds.first().is_some_and(is_map) {
            let after = (linked.alpha.pool().snapshot(), linked.table_counts());
            assert_eq!(
                before, after,
                "a batch that did nothing changed the pool or the table"
            );
        }
        linked.route();
        linked.beta_imports();
        check_pool(&linked.alpha);
        check_pool(&linked.beta);
        linked.check_windows();
        let table = linked.desk.table();
        if table.shares().any(|s| s.exporter == "alpha") {
            reach.shared += 1;
        }
        if table.imports().any(|i| i.importer == "alpha") {
            reach.imported += 1;
        }
        drop(table);
        reach.windows = reach.windows.max(linked.windows.len() as u64);
    }
    reach
}
