//! The exporter's share commands in a device (issue 17, design step 5),
//! with a fake desk: a share table, a clock the test moves, and a record
//! of what the device asked of other VMs. The importer "beta" is played by
//! the test on the table directly (its device side is not built yet).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use super::frame::read_struct;
use super::*;
use crate::config::{ShareAccess, ShareConfig, ShareGroup, ShareLimits, ShareTimeouts, VmShare};
use crate::model::{kinds, AllocatorSpec, Placement, Strategy, PAGE_SIZE};
use crate::share::{Action, Desk, ShareLink, ShareTable};

const MIB: u64 = 1 << 20;
const KEY: [u8; 16] = *b"share-tests-key!";
/// The share allocator's index in `exporter()`'s pool.
pub(super) const SHARE_POOL: usize = 4;

pub(super) struct FakeDesk {
    table: Mutex<ShareTable>,
    now: Mutex<Duration>,
    carried: Mutex<Vec<(String, Action)>>,
}

impl Desk for FakeDesk {
    fn table(&self) -> MutexGuard<'_, ShareTable> {
        self.table.lock().unwrap()
    }
    fn now(&self) -> Duration {
        *self.now.lock().unwrap()
    }
    fn carry(&self, from: &str, actions: Vec<Action>) {
        let mut carried = self.carried.lock().unwrap();
        carried.extend(actions.into_iter().map(|a| (from.to_string(), a)));
    }
}

impl FakeDesk {
    pub(super) fn advance(&self, by: Duration) {
        *self.now.lock().unwrap() += by;
    }
    pub(super) fn take_carried(&self) -> Vec<(String, Action)> {
        std::mem::take(&mut *self.carried.lock().unwrap())
    }
}

fn member(exports: &[&str], imports: &[&str], window: Option<u64>, max_shares: u32) -> VmShare {
    VmShare {
        exporter_groups: exports.iter().map(|s| s.to_string()).collect(),
        importer_groups: imports.iter().map(|s| s.to_string()).collect(),
        window,
        limits: ShareLimits {
            max_shares,
            ..ShareLimits::default()
        },
    }
}

/// "alpha" exports in "camera" (read-write) and "stills" (read-only) to
/// "beta"; "delta" is a member that exports nothing.
pub(super) fn desk() -> Arc<FakeDesk> {
    desk_with(2)
}

/// As [`desk`], each VM sharing at most `max_shares` buffers.
pub(super) fn desk_with(max_shares: u32) -> Arc<FakeDesk> {
    let group = |name: &str, access| ShareGroup {
        name: name.into(),
        exporters: vec!["alpha".into()],
        importers: vec!["beta".into()],
        access,
        max_importers: 2,
        kind_map: Vec::new(),
    };
    let config = ShareConfig {
        timeouts: ShareTimeouts {
            revoke: Duration::from_millis(1000),
            unmap: Duration::from_millis(2000),
            grace: Duration::from_millis(20),
        },
        groups: vec![
            group("camera", ShareAccess::ReadWrite),
            group("stills", ShareAccess::ReadOnly),
        ],
    };
    let mut table = ShareTable::new(config, KEY);
    table.join(
        "alpha",
        member(&["camera", "stills"], &[], None, max_shares),
    );
    table.join(
        "beta",
        member(&[], &["camera", "stills"], Some(64 * MIB), max_shares),
    );
    table.join("delta", member(&[], &[], None, max_shares));
    Arc::new(FakeDesk {
        table: Mutex::new(table),
        now: Mutex::new(Duration::from_secs(1)),
        carried: Mutex::new(Vec::new()),
    })
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// The default layout plus a share allocator (index `SHARE_POOL`) with
/// 2 MiB donated; system has 4 MiB.
pub(super) fn device(vm: &str, desk: &Arc<FakeDesk>) -> Device {
    let mut config = DeviceConfig::default_layout();
    config.pool.allocators.push(AllocatorSpec {
        name: "share".into(),
        strategy: Strategy::Contiguous,
        kinds: kinds::SYSTEM | kinds::CONTIG,
        placement: Placement {
            contiguous: true,
            below_4g: false,
            align: PAGE_SIZE,
        },
        share: true,
    });
    config.pool_sizes.push(2 * MIB);
    config.pool_max_sizes.push(0);
    let link = ShareLink::new(vm, desk.clone() as Arc<dyn Desk>);
    let mut device = Device::new(config).unwrap().with_share(link);
    device.pool.add_region(0, 0x40_0000, 0x40_0000).unwrap();
    device
        .pool
        .add_region(SHARE_POOL, 0x80_0000, 0x20_0000)
        .unwrap();
    device
}

/// One command in its own batch, run to its end (a parked command is run
/// again until it answers): (status, answer slot, needed).
pub(super) fn run(
    device: &mut Device,
    opcode: u16,
    payload: &[u8],
    resp_len: u32,
) -> (i32, Vec<u8>, u32) {
    let mut batch = begin(device, opcode, payload, resp_len);
    loop {
        if let Some(done) = step(device, &mut batch) {
            return done;
        }
    }
}

pub(super) fn begin(device: &mut Device, opcode: u16, payload: &[u8], resp_len: u32) -> Batch {
    let mut request = BatchHdr {
        num_cmds: 1,
        reserved: 0,
    }
    .as_slice()
    .to_vec();
    let hdr = CmdHdr {
        opcode,
        flags: 0,
        len: payload.len() as u32,
        resp_len,
        reserved: 0,
    };
    request.extend_from_slice(hdr.as_slice());
    request.extend_from_slice(payload);
    device
        .begin_batch(request, 8 + 16 + resp_len as usize)
        .unwrap()
}

/// Runs the batch once: `None` while its command is parked.
pub(super) fn step(device: &mut Device, batch: &mut Batch) -> Option<(i32, Vec<u8>, u32)> {
    let mem = memory();
    match device.run_batch(&mem, batch, &mut || false) {
        Progress::Yielded => None,
        Progress::Done(out) => {
            device.commit_batch(batch, out.len() as u32);
            let hdr: RespHdr = read_struct(&out, 8).unwrap();
            Some((hdr.status as i32, out[24..].to_vec(), hdr.needed))
        }
    }
}

pub(super) fn create(device: &mut Device, size: u64, mask: u32) -> u32 {
    let req = CreateReq {
        size,
        flags: 0,
        initial_mask: mask,
    };
    let (status, out, _) = run(device, CENALLOC_CMD_CREATE, req.as_slice(), 16);
    assert_eq!(status, 0);
    read_struct::<CreateResp>(&out, 0).unwrap().buffer_id
}

pub(super) fn attach_and_map(device: &mut Device, buffer: u32, mask: u32) -> u32 {
    let mut req = AttachReq {
        buffer_id: buffer,
        mask,
        num_types: 2,
        ..Default::default()
    };
    req.types[0] = CENALLOC_MAP_CONTIG;
    req.types[1] = CENALLOC_MAP_SG;
    let (status, out, _) = run(
        device,
        CENALLOC_CMD_ATTACH,
        req.as_slice(),
        size_of::<AttachResp>() as u32,
    );
    assert_eq!(status, 0);
    let attach = read_struct::<AttachResp>(&out, 0).unwrap().attach_id;
    let map = MapReq {
        attach_id: attach,
        direction: 0,
    };
    let (status, _, _) = run(device, CENALLOC_CMD_MAP, map.as_slice(), 4096);
    assert_eq!(status, 0, "MAP");
    attach
}

fn share_req(buffer: u32, flags: u32, group: &str) -> Vec<u8> {
    ShareReq {
        buffer_id: buffer,
        flags,
        group: encode_name(group),
        reserved: 0,
    }
    .as_slice()
    .to_vec()
}

pub(super) fn share(device: &mut Device, buffer: u32, flags: u32, group: &str) -> (i32, ShareResp) {
    let (status, out, _) = run(
        device,
        CENALLOC_CMD_SHARE,
        &share_req(buffer, flags, group),
        24,
    );
    (status, read_struct(&out, 0).unwrap())
}

fn unshare(device: &mut Device, buffer: u32, token: u64) -> (i32, UnshareResp) {
    let req = UnshareReq {
        buffer_id: buffer,
        flags: 0,
        token,
    };
    let (status, out, _) = run(device, CENALLOC_CMD_UNSHARE, req.as_slice(), 8);
    (status, read_struct(&out, 0).unwrap())
}

pub(super) fn free_req(buffer: u32) -> Vec<u8> {
    FreeReq {
        buffer_id: buffer,
        reserved: 0,
    }
    .as_slice()
    .to_vec()
}

fn share_owners(device: &Device, buffer: u32) -> Vec<model::Owner> {
    device
        .pool
        .attachments_of(buffer)
        .unwrap()
        .into_iter()
        .map(|(_, owner)| owner)
        .filter(|owner| !matches!(owner, model::Owner::Guest))
        .collect()
}

/// beta imports `token` as its buffer 100 and the window is mapped: the
/// exporter's hold taken, the map answered.
fn imported_and_mapped(desk: &FakeDesk, alpha: &mut Device, token: u64) -> Segment {
    desk.table().import("beta", token, 100, false).unwrap();
    assert_eq!(
        desk.table().backing_ready(token),
        vec![("beta".to_string(), 100)]
    );
    let extent = alpha.hold_share(token).unwrap();
    let ready = desk.table().map_answered("beta", 100, true);
    assert_eq!(
        ready,
        vec![Action::Ready {
            vm: "beta".into(),
            import: 100
        }]
    );
    extent
}

#[test]
fn share_answers_the_tables_token_and_unshare_takes_it_back() {
    let desk = desk();
    let mut alpha = device("alpha", &desk);
    let buffer = create(&mut alpha, 3 * PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let serial = alpha.pool.buffer_serial(buffer).unwrap();

    let (status, resp) = share(&mut alpha, buffer, CENALLOC_SHARE_F_WRITABLE, "");
    assert_eq!(status, 0);
    assert_eq!(resp.token, desk.table().token("alpha", serial));
    assert_ne!(resp.token, 0);
    assert_eq!(resp.size, 3 * PAGE_SIZE);
    // Not backed yet: nothing to move; "camera" (the first group) is
    // read-write.
    assert_eq!(resp.flags, CENALLOC_SHARE_F_WRITABLE);
    let shared = desk.table().share_of(resp.token).cloned().unwrap();
    assert_eq!((shared.buffer, shared.group.as_str()), (buffer, "camera"));
    assert_eq!(
        share_owners(&alpha, buffer),
        vec![model::Owner::Share {
            page_size: PAGE_SIZE
        }]
    );

    // The first map places it in the share allocator.
    attach_and_map(&mut alpha, buffer, CENALLOC_KIND_SYSTEM);
    let backing = alpha.pool.backing(buffer).unwrap();
    assert_eq!(backing.len(), 1);
    assert!((0x80_0000..0xa0_0000).contains(&backing[0].addr));

    let (status, resp) = unshare(&mut alpha, buffer, resp.token);
    assert_eq!(status, 0);
    assert_eq!((resp.revoked, resp.forced), (0, 0));
    assert!(share_owners(&alpha, buffer).is_empty());
    assert_eq!(desk.table().shares().count(), 0);
    assert!(desk.take_carried().is_empty());
}

#[test]
fn a_read_only_group_grants_no_write_and_a_mapped_buffer_elsewhere_is_refused() {
    let desk = desk();
    let mut alpha = device("alpha", &desk);
    let buffer = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (status, resp) = share(&mut alpha, buffer, CENALLOC_SHARE_F_WRITABLE, "stills");
    assert_eq!(status, 0);
    assert_eq!(resp.flags, 0);

    // Backed in the system allocator and mapped: it cannot move (EBUSY),
    // and the table is as before.
    let other = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    attach_and_map(&mut alpha, other, CENALLOC_KIND_SYSTEM);
    let before = (alpha.pool.snapshot(), desk.table().shares().count());
    let (status, _) = share(&mut alpha, other, 0, "camera");
    assert_eq!(status, -libc::EBUSY);
    assert_eq!(
        (alpha.pool.snapshot(), desk.table().shares().count()),
        before
    );
}

#[test]
fn a_backed_unmapped_buffer_is_shared_to_move_at_its_next_map() {
    let desk = desk();
    let mut alpha = device("alpha", &desk);
    let buffer = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let attach = attach_and_map(&mut alpha, buffer, CENALLOC_KIND_SYSTEM);
    let unmap = UnmapReq {
        attach_id: attach,
        direction: 0,
    };
    assert_eq!(
        run(&mut alpha, CENALLOC_CMD_UNMAP, unmap.as_slice(), 0).0,
        0
    );
    let (status, resp) = share(&mut alpha, buffer, 0, "camera");
    assert_eq!(status, 0);
    assert_eq!(resp.flags, CENALLOC_SHARE_F_MIGRATE);
}

#[test]
fn every_bad_share_request_gets_its_errno_and_changes_nothing() {
    let desk = desk();
    let mut alpha = device("alpha", &desk);
    let buffer = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let mut long_zero = share_req(buffer, 0, "camera");
    long_zero.extend_from_slice(&[0; 8]);
    let mut long_tail = share_req(buffer, 0, "camera");
    long_tail.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0]);
    let mut reserved = ShareReq {
        buffer_id: buffer,
        group: encode_name("camera"),
        ..Default::default()
    };
    reserved.reserved = 1;
    let mut no_nul = ShareReq {
        buffer_id: buffer,
        ..Default::default()
    };
    no_nul.group = [b'c'; CENALLOC_NAME_LEN];
    let mut after_nul = ShareReq {
        buffer_id: buffer,
        group: encode_name("camera"),
        ..Default::default()
    };
    after_nul.group[10] = b'x';
    let mut not_utf8 = ShareReq {
        buffer_id: buffer,
        ..Default::default()
    };
    not_utf8.group[0] = 0xff;
    let cases: Vec<(&str, Vec<u8>, u32, i32)> = vec![
        (
            "short",
            share_req(buffer, 0, "camera")[..24].to_vec(),
            24,
            -libc::EINVAL,
        ),
        ("non-zero tail", long_tail, 24, -libc::E2BIG),
        (
            "unknown flag",
            share_req(buffer, 1 << 5, "camera"),
            24,
            -libc::EINVAL,
        ),
        (
            "answer-only flag",
            share_req(buffer, CENALLOC_SHARE_F_MIGRATE, "camera"),
            24,
            -libc::EINVAL,
        ),
        ("reserved", reserved.as_slice().to_vec(), 24, -libc::EINVAL),
        (
            "name without NUL",
            no_nul.as_slice().to_vec(),
            24,
            -libc::EINVAL,
        ),
        (
            "byte after NUL",
            after_nul.as_slice().to_vec(),
            24,
            -libc::EINVAL,
        ),
        ("not UTF-8", not_utf8.as_slice().to_vec(), 24, -libc::EINVAL),
        (
            "a group alpha is not in",
            share_req(buffer, 0, "nowhere"),
            24,
            -libc::ENOENT,
        ),
        (
            "small slot",
            share_req(buffer, 0, "camera"),
            16,
            -libc::ENOSPC,
        ),
        ("no buffer", share_req(77, 0, "camera"), 24, -libc::ENOENT),
    ];
    for (what, payload, resp_len, errno) in cases {
        let before = (alpha.pool.snapshot(), desk.table().shares().count());
        let (status, out, needed) = run(&mut alpha, CENALLOC_CMD_SHARE, &payload, resp_len);
        assert_eq!(status, errno, "{what}");
        assert!(out.iter().all(|&b| b == 0), "{what}: answer bytes");
        assert_eq!(needed, if what == "small slot" { 24 } else { 0 }, "{what}");
        assert_eq!(
            (alpha.pool.snapshot(), desk.table().shares().count()),
            before,
            "{what}"
        );
    }
    // A longer request, zero past the known part, is a request.
    let (status, _, _) = run(&mut alpha, CENALLOC_CMD_SHARE, &long_zero, 24);
    assert_eq!(status, 0);
    // Once at a time; the table is unchanged by the second.
    let before = (alpha.pool.snapshot(), desk.table().shares().count());
    assert_eq!(share(&mut alpha, buffer, 0, "").0, -libc::EEXIST);
    assert_eq!(
        (alpha.pool.snapshot(), desk.table().shares().count()),
        before
    );
    // max_shares is 2 in these tests.
    let second = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    assert_eq!(share(&mut alpha, second, 0, "").0, 0);
    let third = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let before = alpha.pool.snapshot();
    assert_eq!(share(&mut alpha, third, 0, "").0, -libc::ENOSPC);
    assert_eq!(alpha.pool.snapshot(), before);
    assert!(share_owners(&alpha, third).is_empty());
}

#[test]
fn a_vm_that_exports_nothing_or_a_device_without_a_link_is_refused() {
    let desk = desk();
    let mut delta = device("delta", &desk);
    let buffer = create(&mut delta, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (status, _) = share(&mut delta, buffer, 0, "");
    assert_eq!(status, -libc::EOPNOTSUPP);
    assert_eq!(share(&mut delta, buffer, 0, "camera").0, -libc::ENOENT);
    let mut outsider = device("outsider", &desk);
    let buffer = create(&mut outsider, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    assert_eq!(
        share(&mut outsider, buffer, 0, "camera").0,
        -libc::EOPNOTSUPP
    );
    assert!(share_owners(&outsider, buffer).is_empty());
    assert_eq!(desk.table().shares().count(), 0);
}

#[test]
fn unshare_of_another_token_or_buffer_is_enoent() {
    let desk = desk();
    let mut alpha = device("alpha", &desk);
    let buffer = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let other = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, resp) = share(&mut alpha, buffer, 0, "");
    assert_eq!(unshare(&mut alpha, buffer, resp.token ^ 1).0, -libc::ENOENT);
    assert_eq!(unshare(&mut alpha, other, resp.token).0, -libc::ENOENT);
    let bad_flags = UnshareReq {
        buffer_id: buffer,
        flags: 1,
        token: resp.token,
    };
    let (status, _, _) = run(&mut alpha, CENALLOC_CMD_UNSHARE, bad_flags.as_slice(), 8);
    assert_eq!(status, -libc::EINVAL);
    assert_eq!(desk.table().shares().count(), 1);
    assert_eq!(share_owners(&alpha, buffer).len(), 1);
    assert_eq!(unshare(&mut alpha, buffer, resp.token).0, 0);
    assert_eq!(unshare(&mut alpha, buffer, resp.token).0, -libc::ENOENT);
}

/// The revocation order: A's FREE of a buffer B's window maps is
/// not answered before B's unmap is sent and proven; the extent stays out
/// of A's allocator until the window's hold is dropped.
#[test]
fn free_of_a_mapped_share_answers_only_after_the_importers_unmap() {
    let desk = desk();
    let mut alpha = device("alpha", &desk);
    let buffer = create(&mut alpha, 2 * PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, resp) = share(&mut alpha, buffer, 0, "");
    attach_and_map(&mut alpha, buffer, CENALLOC_KIND_SYSTEM);
    let extent = imported_and_mapped(&desk, &mut alpha, resp.token);
    assert_eq!(extent, alpha.pool.backing(buffer).unwrap()[0]);

    // The guest's own attachment is unmapped and detached first (its
    // driver's order); then FREE.
    let attachments = alpha.pool.attachments_of(buffer).unwrap();
    for (attachment, owner) in attachments {
        if owner == model::Owner::Guest {
            let unmap = UnmapReq {
                attach_id: attachment,
                direction: 0,
            };
            assert_eq!(
                run(&mut alpha, CENALLOC_CMD_UNMAP, unmap.as_slice(), 0).0,
                0
            );
            let detach = DetachReq {
                attach_id: attachment,
                reserved: 0,
            };
            assert_eq!(
                run(&mut alpha, CENALLOC_CMD_DETACH, detach.as_slice(), 0).0,
                0
            );
        }
    }
    let mut batch = begin(&mut alpha, CENALLOC_CMD_FREE, &free_req(buffer), 0);
    assert_eq!(step(&mut alpha, &mut batch), None, "answered before B knew");
    // The buffer is gone from A's model; its extent is quarantined.
    assert!(alpha.pool.buffer_size(buffer).is_err());
    assert_eq!(alpha.pool.quarantined().len(), 1);
    assert_eq!(alpha.pool.quarantined()[0].segments, vec![extent]);
    let carried = desk.take_carried();
    let serial = match carried.as_slice() {
        [(from, Action::Revoke { vm, import, data })] => {
            assert_eq!(
                (from.as_str(), vm.as_str(), *import),
                ("alpha", "beta", 100)
            );
            assert_eq!(data >> CENALLOC_REVOKE_REASON_SHIFT, CENALLOC_REVOKE_FINAL);
            data & CENALLOC_REVOKE_SERIAL_MASK
        }
        other => panic!("carried {other:?}"),
    };
    // Parked however often it runs, while B has not acknowledged.
    desk.advance(Duration::from_millis(500));
    assert_eq!(step(&mut alpha, &mut batch), None);
    // B acknowledges: the unmap goes; still parked until it is proven.
    let now = desk.now();
    let unmap = desk.table().revoke_ack("beta", 100, serial, now).unwrap();
    assert!(matches!(unmap.as_slice(), [Action::Unmap { vm, import: 100, .. }] if vm == "beta"));
    assert_eq!(
        step(&mut alpha, &mut batch),
        None,
        "answered before the proof"
    );
    // The proof: the hold is dropped (in A, by A's worker) and A answers.
    let proven = desk.table().unmapped("beta", 100);
    assert_eq!(
        proven,
        vec![Action::Unhold {
            exporter: "alpha".into(),
            token: resp.token
        }]
    );
    assert_eq!(alpha.pool.quarantined().len(), 1, "reused before the proof");
    for action in proven {
        alpha.receive(action);
    }
    assert!(alpha.pool.quarantined().is_empty());
    assert_eq!(step(&mut alpha, &mut batch), Some((0, vec![], 0)));
    assert_eq!(desk.table().shares().count(), 0);
}

/// A B that never acknowledges is unmapped after the revoke bound, and one
/// whose unmap is never proven no longer holds A's answer after the unmap
/// bound: UNSHARE says it was forced.
#[test]
fn an_importer_that_never_answers_is_unmapped_and_then_forced() {
    let desk = desk();
    let mut alpha = device("alpha", &desk);
    let buffer = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, resp) = share(&mut alpha, buffer, 0, "");
    attach_and_map(&mut alpha, buffer, CENALLOC_KIND_SYSTEM);
    imported_and_mapped(&desk, &mut alpha, resp.token);

    let req = UnshareReq {
        buffer_id: buffer,
        flags: 0,
        token: resp.token,
    };
    let mut batch = begin(&mut alpha, CENALLOC_CMD_UNSHARE, req.as_slice(), 8);
    assert_eq!(step(&mut alpha, &mut batch), None);
    assert!(matches!(
        desk.take_carried().as_slice(),
        [(_, Action::Revoke { .. })]
    ));
    desk.advance(Duration::from_millis(999));
    assert_eq!(step(&mut alpha, &mut batch), None);
    assert!(desk.take_carried().is_empty(), "unmapped before the bound");
    // Past the revoke bound: the device's own check sends the unmap.
    desk.advance(Duration::from_millis(2));
    assert_eq!(step(&mut alpha, &mut batch), None);
    assert!(matches!(
        desk.take_carried().as_slice(),
        [(_, Action::Unmap { vm, import: 100, .. })] if vm == "beta"
    ));
    // Past the unmap bound: answered, forced.
    desk.advance(Duration::from_millis(2001));
    let (status, out, _) = step(&mut alpha, &mut batch).unwrap();
    assert_eq!(status, 0);
    let answer: UnshareResp = read_struct(&out, 0).unwrap();
    assert_eq!((answer.revoked, answer.forced), (1, 1));
    // The buffer lives on in A (UNSHARE, not FREE), its hold too.
    assert!(alpha.pool.buffer_size(buffer).is_ok());
    assert!(share_owners(&alpha, buffer).is_empty());
}

#[test]
fn a_reset_ends_every_share_of_the_vm() {
    let desk = desk();
    let mut alpha = device("alpha", &desk);
    let buffer = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, resp) = share(&mut alpha, buffer, 0, "");
    attach_and_map(&mut alpha, buffer, CENALLOC_KIND_SYSTEM);
    let extent = imported_and_mapped(&desk, &mut alpha, resp.token);
    alpha.reset().unwrap();
    // B is told; the extent stays out of use until its window is gone.
    assert!(matches!(
        desk.take_carried().as_slice(),
        [(_, Action::Revoke { vm, .. })] if vm == "beta"
    ));
    assert!(desk.table().share_of(resp.token).is_some_and(|s| s.ending));
    assert_eq!(alpha.pool.quarantined().len(), 1);
    assert_eq!(alpha.pool.quarantined()[0].segments, vec![extent]);
}

#[test]
fn a_hold_names_only_a_live_share_of_this_vm() {
    let desk = desk();
    let mut alpha = device("alpha", &desk);
    let buffer = create(&mut alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, resp) = share(&mut alpha, buffer, 0, "");
    // Not backed yet.
    assert_eq!(
        alpha.hold_share(resp.token).unwrap_err().errno(),
        libc::ENODATA
    );
    assert_eq!(
        alpha.hold_share(resp.token ^ 1).unwrap_err().errno(),
        libc::ENOENT
    );
    let mut beta = device("beta", &desk);
    assert_eq!(
        beta.hold_share(resp.token).unwrap_err().errno(),
        libc::ENOENT
    );
}

/// alpha and beta, and the serving process between them played by the
/// test: events and holds go to the devices, beta's QEMU answers each map
/// request at once (recorded), unmaps are recorded for the test to prove.
pub(super) struct Two {
    pub(super) desk: Arc<FakeDesk>,
    pub(super) alpha: Device,
    pub(super) beta: Device,
    pub(super) maps: Vec<Action>,
    pub(super) unmaps: Vec<Action>,
}

impl Two {
    pub(super) fn new() -> Two {
        Two::with_desk(desk())
    }

    pub(super) fn with_desk(desk: Arc<FakeDesk>) -> Two {
        let alpha = device("alpha", &desk);
        let beta = device("beta", &desk);
        Two {
            desk,
            alpha,
            beta,
            maps: Vec::new(),
            unmaps: Vec::new(),
        }
    }

    pub(super) fn route(&mut self) {
        loop {
            let carried = self.desk.take_carried();
            if carried.is_empty() {
                return;
            }
            for (_, action) in carried {
                match &action {
                    Action::Place { .. } | Action::Unhold { .. } => self.alpha.receive(action),
                    Action::Revoke { vm, .. } | Action::Ready { vm, .. } => {
                        assert_eq!(vm, "beta");
                        self.beta.receive(action)
                    }
                    Action::Map { vm, import, .. } => {
                        let answered = self.desk.table().map_answered(vm, *import, true);
                        self.desk.carry("qemu-beta", answered);
                        self.maps.push(action);
                    }
                    Action::Unmap { .. } => self.unmaps.push(action),
                }
            }
        }
    }

    pub(super) fn import(&mut self, token: u64, flags: u32, mask: u32) -> (i32, ImportResp) {
        let req = ImportReq {
            token,
            flags,
            initial_mask: mask,
        };
        let (status, out, _) = run(&mut self.beta, CENALLOC_CMD_IMPORT, req.as_slice(), 32);
        self.route();
        (status, read_struct(&out, 0).unwrap())
    }

    /// beta attaches to its import; returns the attachment.
    pub(super) fn beta_attach(&mut self, import: u32) -> u32 {
        let mut req = AttachReq {
            buffer_id: import,
            mask: CENALLOC_KIND_SYSTEM | CENALLOC_KIND_CONTIG,
            num_types: 1,
            ..Default::default()
        };
        req.types[0] = CENALLOC_MAP_CONTIG;
        let (status, out, _) = run(&mut self.beta, CENALLOC_CMD_ATTACH, req.as_slice(), 16);
        assert_eq!(status, 0);
        read_struct::<AttachResp>(&out, 0).unwrap().attach_id
    }

    pub(super) fn beta_map(&mut self, attachment: u32) -> (i32, Vec<u8>) {
        let req = MapReq {
            attach_id: attachment,
            direction: 0,
        };
        let (status, out, _) = run(&mut self.beta, CENALLOC_CMD_MAP, req.as_slice(), 40);
        (status, out)
    }

    pub(super) fn beta_events(&mut self) -> Vec<(u32, u32, u64)> {
        let mut events = Vec::new();
        while let Some(e) = self.beta.next_event() {
            events.push((e.event_type, e.buffer_id, e.data));
            self.beta.pop_event();
        }
        events
    }
}

/// The window's range in a MAP answer of an import.
fn window_answer(out: &[u8]) -> (MapResp, Range) {
    (
        read_struct(out, 0).unwrap(),
        read_struct(out, size_of::<MapResp>()).unwrap(),
    )
}

/// Shared before its first map: B's import waits (-EAGAIN), A's first
/// map places the buffer in the share pool and maps B's window at A's
/// extent, SHARE_READY reaches B, and B's MAP answers the window range.
#[test]
fn an_import_before_the_first_map_is_mapped_by_it() {
    let mut two = Two::new();
    let buffer = create(&mut two.alpha, 2 * PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, shared) = share(&mut two.alpha, buffer, CENALLOC_SHARE_F_WRITABLE, "");
    let (status, imported) = two.import(shared.token, CENALLOC_IMPORT_F_WRITABLE, 0);
    assert_eq!(status, 0);
    assert_eq!(imported.flags, CENALLOC_IMPORT_F_WRITABLE);
    assert_eq!(imported.size, 2 * PAGE_SIZE);
    assert_eq!(
        (imported.window_offset, imported.window_len),
        (0, 2 * PAGE_SIZE)
    );
    assert!(two.beta.pool.is_imported(imported.buffer_id).unwrap());
    assert!(two.maps.is_empty(), "mapped before A placed the buffer");
    let attachment = two.beta_attach(imported.buffer_id);
    assert_eq!(two.beta_map(attachment).0, -libc::EAGAIN);

    attach_and_map(&mut two.alpha, buffer, CENALLOC_KIND_SYSTEM);
    two.route();
    let extent = two.alpha.pool.backing(buffer).unwrap()[0];
    assert_eq!(
        two.maps,
        vec![Action::Map {
            vm: "beta".into(),
            import: imported.buffer_id,
            exporter: "alpha".into(),
            addr: extent.addr,
            offset: 0,
            len: 2 * PAGE_SIZE,
            writable: true,
        }]
    );
    assert_eq!(
        two.beta_events(),
        vec![(CENALLOC_EVENT_SHARE_READY, imported.buffer_id, 0)]
    );
    let (status, out) = two.beta_map(attachment);
    assert_eq!(status, 0);
    let (resp, range) = window_answer(&out);
    assert_eq!(
        (resp.num_segments, resp.allocator_id, resp.flags, resp.size),
        (
            1,
            CENALLOC_ALLOCATOR_WINDOW,
            CENALLOC_MAP_F_WINDOW,
            2 * PAGE_SIZE
        )
    );
    assert_eq!((range.addr, range.len), (0, 2 * PAGE_SIZE));
}

#[test]
fn an_import_after_the_first_map_is_mapped_at_once() {
    let mut two = Two::new();
    let buffer = create(&mut two.alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    share(&mut two.alpha, buffer, 0, "stills");
    attach_and_map(&mut two.alpha, buffer, CENALLOC_KIND_SYSTEM);
    two.route();
    assert!(two.maps.is_empty());
    let token = two.desk.table().shares().next().unwrap().token;
    let (status, imported) = two.import(token, 0, CENALLOC_KIND_CONTIG);
    assert_eq!(status, 0);
    assert!(
        matches!(
            two.maps.as_slice(),
            [Action::Map {
                writable: false,
                ..
            }]
        ),
        "{:?}",
        two.maps
    );
    let attachment = two.beta_attach(imported.buffer_id);
    assert_eq!(two.beta_map(attachment).0, 0);
}

/// The order seen from both sides: A's FREE parks; B gets
/// SHARE_REVOKE (FINAL) and its MAPs answer -ENOLINK; B's REVOKE_ACK sends
/// the unmap; the proof drops A's hold and answers A; B releases.
#[test]
fn free_in_a_revokes_b_and_b_releases() {
    let mut two = Two::new();
    let buffer = create(&mut two.alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, shared) = share(&mut two.alpha, buffer, 0, "");
    let (_, imported) = two.import(shared.token, 0, 0);
    let b = imported.buffer_id;
    let alpha_attach = attach_and_map(&mut two.alpha, buffer, CENALLOC_KIND_SYSTEM);
    two.route();
    two.beta_events();
    let attachment = two.beta_attach(b);
    assert_eq!(two.beta_map(attachment).0, 0);

    let unmap = UnmapReq {
        attach_id: alpha_attach,
        direction: 0,
    };
    assert_eq!(
        run(&mut two.alpha, CENALLOC_CMD_UNMAP, unmap.as_slice(), 0).0,
        0
    );
    let detach = DetachReq {
        attach_id: alpha_attach,
        reserved: 0,
    };
    assert_eq!(
        run(&mut two.alpha, CENALLOC_CMD_DETACH, detach.as_slice(), 0).0,
        0
    );
    let mut free = begin(&mut two.alpha, CENALLOC_CMD_FREE, &free_req(buffer), 0);
    assert_eq!(step(&mut two.alpha, &mut free), None);
    two.route();
    let events = two.beta_events();
    let serial = match events.as_slice() {
        [(CENALLOC_EVENT_SHARE_REVOKE, id, data)] if *id == b => {
            assert_eq!(data >> CENALLOC_REVOKE_REASON_SHIFT, CENALLOC_REVOKE_FINAL);
            data & CENALLOC_REVOKE_SERIAL_MASK
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(two.beta_map(attachment).0, -libc::ENOLINK);
    // A stale serial is refused and sends nothing.
    let stale = RevokeAckReq {
        buffer_id: b,
        reserved: 0,
        serial: serial + 1,
    };
    let (status, _, _) = run(&mut two.beta, CENALLOC_CMD_REVOKE_ACK, stale.as_slice(), 0);
    assert_eq!(status, -libc::ENOENT);
    two.route();
    assert!(two.unmaps.is_empty());
    let ack = RevokeAckReq {
        buffer_id: b,
        reserved: 0,
        serial,
    };
    let (status, _, _) = run(&mut two.beta, CENALLOC_CMD_REVOKE_ACK, ack.as_slice(), 0);
    assert_eq!(status, 0);
    two.route();
    assert!(matches!(two.unmaps.as_slice(), [Action::Unmap { import, .. }] if *import == b));
    assert_eq!(
        step(&mut two.alpha, &mut free),
        None,
        "answered before the proof"
    );
    assert_eq!(two.alpha.pool.quarantined().len(), 1);
    let proven = two.desk.table().unmapped("beta", b);
    two.desk.carry("qemu-beta", proven);
    two.route();
    assert!(two.alpha.pool.quarantined().is_empty());
    assert_eq!(step(&mut two.alpha, &mut free), Some((0, vec![], 0)));

    // B's RELEASE: refused while its attachment maps the import.
    let release = ReleaseReq {
        buffer_id: b,
        reserved: 0,
    };
    let (status, _, _) = run(&mut two.beta, CENALLOC_CMD_RELEASE, release.as_slice(), 0);
    assert_eq!(status, -libc::EBUSY);
    let unmap = UnmapReq {
        attach_id: attachment,
        direction: 0,
    };
    assert_eq!(
        run(&mut two.beta, CENALLOC_CMD_UNMAP, unmap.as_slice(), 0).0,
        0
    );
    let (status, _, _) = run(&mut two.beta, CENALLOC_CMD_RELEASE, release.as_slice(), 0);
    assert_eq!(status, 0);
    assert!(two.beta.pool.buffer_size(b).is_err());
    assert_eq!(two.desk.table().imports().count(), 0);
    assert_eq!(two.desk.table().shares().count(), 0);
}

/// B's RELEASE of a mapped window unmaps it without an event; its proof
/// drops A's hold.
#[test]
fn release_in_b_unmaps_its_window() {
    let mut two = Two::new();
    let buffer = create(&mut two.alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, shared) = share(&mut two.alpha, buffer, 0, "");
    attach_and_map(&mut two.alpha, buffer, CENALLOC_KIND_SYSTEM);
    let (_, imported) = two.import(shared.token, 0, 0);
    two.beta_events();
    let release = ReleaseReq {
        buffer_id: imported.buffer_id,
        reserved: 0,
    };
    let (status, _, _) = run(&mut two.beta, CENALLOC_CMD_RELEASE, release.as_slice(), 0);
    assert_eq!(status, 0);
    two.route();
    assert!(two.beta_events().is_empty());
    assert_eq!(two.unmaps.len(), 1);
    let proven = two.desk.table().unmapped("beta", imported.buffer_id);
    assert_eq!(
        proven,
        vec![Action::Unhold {
            exporter: "alpha".into(),
            token: shared.token
        }]
    );
    two.desk.carry("qemu-beta", proven);
    two.route();
    // A's buffer lives on, its hold gone: FREE answers at once.
    let (status, _, _) = run(&mut two.alpha, CENALLOC_CMD_FREE, &free_req(buffer), 0);
    assert_eq!(status, 0);
}

#[test]
fn every_bad_import_gets_its_errno_and_changes_nothing() {
    let mut two = Two::new();
    let buffer = create(&mut two.alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, shared) = share(&mut two.alpha, buffer, 0, "stills");
    let token = shared.token;
    let cases: Vec<(&str, u64, u32, u32, i32)> = vec![
        ("wrong token", token ^ 1, 0, 0, -libc::ENOENT),
        (
            "write to a read-only group",
            token,
            CENALLOC_IMPORT_F_WRITABLE,
            0,
            -libc::EPERM,
        ),
        ("unknown flag", token, 1 << 4, 0, -libc::EINVAL),
        ("custom kind", token, 0, 1 << 9, -libc::EOPNOTSUPP),
    ];
    for (what, token, flags, mask, errno) in cases {
        let before = (two.beta.pool.snapshot(), two.desk.table().imports().count());
        let (status, resp) = two.import(token, flags, mask);
        assert_eq!(status, errno, "{what}");
        assert_eq!(resp.buffer_id, 0, "{what}");
        assert_eq!(
            (two.beta.pool.snapshot(), two.desk.table().imports().count()),
            before,
            "{what}"
        );
    }
    // A member that imports in no group of the share: as a wrong token.
    let mut delta = device("delta", &two.desk);
    let req = ImportReq {
        token,
        flags: 0,
        initial_mask: 0,
    };
    let (status, _, _) = run(&mut delta, CENALLOC_CMD_IMPORT, req.as_slice(), 32);
    assert_eq!(status, -libc::ENOENT);
    // A VM in no group at all.
    let mut outsider = device("outsider", &two.desk);
    let (status, _, _) = run(&mut outsider, CENALLOC_CMD_IMPORT, req.as_slice(), 32);
    assert_eq!(status, -libc::EOPNOTSUPP);
    // The exporter itself.
    let (status, _, _) = run(&mut two.alpha, CENALLOC_CMD_IMPORT, req.as_slice(), 32);
    assert_eq!(status, -libc::ENOENT);
    // One import per VM and share.
    let (status, imported) = two.import(token, 0, 0);
    assert_eq!(status, 0);
    assert_eq!(two.import(token, 0, 0).0, -libc::EEXIST);
    // An import is never shared again, freed, or released twice.
    let id = imported.buffer_id;
    let (status, _) = share(&mut two.beta, id, 0, "");
    assert_eq!(status, -libc::EINVAL, "an import shared again");
    let (status, _, _) = run(&mut two.beta, CENALLOC_CMD_FREE, &free_req(id), 0);
    assert_eq!(status, -libc::EINVAL);
    let release = ReleaseReq {
        buffer_id: id,
        reserved: 0,
    };
    assert_eq!(
        run(&mut two.beta, CENALLOC_CMD_RELEASE, release.as_slice(), 0).0,
        0
    );
    assert_eq!(
        run(&mut two.beta, CENALLOC_CMD_RELEASE, release.as_slice(), 0).0,
        -libc::ENOENT
    );
    // RELEASE and REVOKE_ACK of a buffer of B's own: no import (the
    // spec's -ENOENT for an unknown import).
    let own = create(&mut two.beta, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let release = ReleaseReq {
        buffer_id: own,
        reserved: 0,
    };
    assert_eq!(
        run(&mut two.beta, CENALLOC_CMD_RELEASE, release.as_slice(), 0).0,
        -libc::ENOENT
    );
    let ack = RevokeAckReq {
        buffer_id: own,
        reserved: 0,
        serial: 1,
    };
    assert_eq!(
        run(&mut two.beta, CENALLOC_CMD_REVOKE_ACK, ack.as_slice(), 0).0,
        -libc::ENOENT
    );
    assert!(two.beta.pool.buffer_size(own).is_ok());
}

/// B's RESET drops its imported buffers from its model: the table must
/// not keep them (their windows are unmapped, no event, A's hold dropped
/// with the proof), or a later import would find the share "imported".
#[test]
fn a_reset_in_b_releases_its_imports() {
    let mut two = Two::new();
    let buffer = create(&mut two.alpha, PAGE_SIZE, CENALLOC_KIND_SYSTEM);
    let (_, shared) = share(&mut two.alpha, buffer, 0, "");
    attach_and_map(&mut two.alpha, buffer, CENALLOC_KIND_SYSTEM);
    let (_, imported) = two.import(shared.token, 0, 0);
    assert_eq!(two.maps.len(), 1);
    two.beta_events();
    two.beta.reset().unwrap();
    two.route();
    assert!(two.beta_events().is_empty());
    assert!(
        matches!(two.unmaps.as_slice(), [Action::Unmap { import, .. }] if *import == imported.buffer_id)
    );
    let proven = two.desk.table().unmapped("beta", imported.buffer_id);
    two.desk.carry("qemu-beta", proven);
    two.route();
    assert_eq!(two.desk.table().imports().count(), 0);
    // Imported again after the reset, under a new id of B's.
    let (status, again) = two.import(shared.token, 0, 0);
    assert_eq!(status, 0);
    assert_eq!(two.maps.len(), 2);
    assert!(two.beta.pool.is_imported(again.buffer_id).unwrap());
}
