//! The share table's rules, one test or more each.

use std::time::Duration;

use super::*;
use crate::config::{ShareGroup, ShareLimits, ShareTimeouts};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const KEY: [u8; 16] = *b"0123456789abcdef";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn group(name: &str, exporters: &[&str], importers: &[&str], rw: bool) -> ShareGroup {
    ShareGroup {
        name: name.into(),
        exporters: exporters.iter().map(|s| s.to_string()).collect(),
        importers: importers.iter().map(|s| s.to_string()).collect(),
        access: if rw {
            ShareAccess::ReadWrite
        } else {
            ShareAccess::ReadOnly
        },
        max_importers: 2,
        kind_map: Vec::new(),
    }
}

fn member(exports: &[&str], imports: &[&str], window: Option<u64>) -> VmShare {
    VmShare {
        exporter_groups: exports.iter().map(|s| s.to_string()).collect(),
        importer_groups: imports.iter().map(|s| s.to_string()).collect(),
        window,
        limits: ShareLimits::default(),
    }
}

/// alpha exports to beta and gamma in "camera" (read-write), and to gamma
/// in "other" (read-only); delta is in no group.
fn table() -> ShareTable {
    let config = ShareConfig {
        timeouts: ShareTimeouts {
            revoke: ms(1000),
            unmap: ms(2000),
            grace: ms(20),
        },
        groups: vec![
            group("camera", &["alpha"], &["beta", "gamma"], true),
            group("other", &["alpha"], &["gamma"], false),
        ],
    };
    let mut t = ShareTable::new(config, KEY);
    t.join("alpha", member(&["camera", "other"], &[], None));
    t.join("beta", member(&[], &["camera"], Some(64 * MIB)));
    t.join("gamma", member(&[], &["camera", "other"], Some(64 * MIB)));
    t
}

/// alpha shares its buffer 1 (serial 10, 3 pages) in "camera"; beta
/// imports it as its buffer 100.
fn shared_and_imported(t: &mut ShareTable) -> u64 {
    let shared = t.share("alpha", 1, 10, 3 * PAGE, PAGE, None, true).unwrap();
    let imported = t.import("beta", shared.token, 100, true).unwrap();
    assert_eq!((imported.offset, imported.len), (0, 3 * PAGE));
    shared.token
}

/// The import is mapped in beta's window.
fn mapped(t: &mut ShareTable, token: u64) {
    assert_eq!(t.backing_ready(token), vec![("beta".to_string(), 100)]);
    let ready = t.map_answered("beta", 100, true);
    assert_eq!(
        ready,
        vec![Action::Ready {
            vm: "beta".into(),
            import: 100
        }]
    );
}

fn revoke_serial(actions: &[Action]) -> u64 {
    match actions {
        [Action::Revoke { data, .. }] => data & crate::protocol::CENALLOC_REVOKE_SERIAL_MASK,
        other => panic!("one revocation expected: {other:?}"),
    }
}

#[test]
fn tokens_are_keyed_deterministic_and_never_zero() {
    let t = table();
    assert_eq!(t.token("alpha", 7), t.token("alpha", 7));
    assert_ne!(t.token("alpha", 7), t.token("alpha", 8));
    assert_ne!(t.token("alpha", 7), t.token("beta", 7));
    let other = ShareTable::new(ShareConfig::default(), [9; 16]);
    assert_ne!(t.token("alpha", 7), other.token("alpha", 7));
    for serial in 0..1000 {
        assert_ne!(t.token("alpha", serial), 0);
    }
}

#[test]
fn only_group_members_share_and_import_and_refusals_say_nothing_of_tokens() {
    let mut t = table();
    let err = |e: ShareError| e.errno();
    assert_eq!(
        err(t.share("delta", 1, 1, PAGE, PAGE, None, false).unwrap_err()),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        err(t.share("beta", 1, 1, PAGE, PAGE, None, false).unwrap_err()),
        libc::EOPNOTSUPP,
        "beta exports in no group"
    );
    assert_eq!(
        err(t
            .share("alpha", 1, 1, PAGE, PAGE, Some("zzz"), false)
            .unwrap_err()),
        libc::ENOENT
    );
    let other = t
        .share("alpha", 2, 20, PAGE, PAGE, Some("other"), true)
        .unwrap();
    assert!(!other.writable, "read-only group");
    // beta is not in "other": the same answer as a token that never was.
    let refused = t.import("beta", other.token, 1, false).unwrap_err();
    assert_eq!(refused, ShareError::UnknownToken(other.token));
    assert_eq!(
        t.import("beta", 12345, 1, false).unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        t.import("delta", other.token, 1, false)
            .unwrap_err()
            .errno(),
        libc::EOPNOTSUPP
    );
    // gamma is; a writable import of a read-only share is refused.
    assert_eq!(
        t.import("gamma", other.token, 1, true).unwrap_err().errno(),
        libc::EPERM
    );
    t.import("gamma", other.token, 1, false).unwrap();
    assert_eq!(t.window("gamma").unwrap().ranges().count(), 1);
    assert!(
        t.window("beta").unwrap().is_empty(),
        "refusals reserve nothing"
    );
}

#[test]
fn a_buffer_is_shared_once_and_imported_once_per_vm() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    let again = t.share("alpha", 1, 10, 3 * PAGE, PAGE, None, true);
    assert_eq!(again.unwrap_err().errno(), libc::EEXIST);
    assert_eq!(
        t.import("beta", token, 101, false).unwrap_err().errno(),
        libc::EEXIST
    );
    // The exporter never imports its own share.
    t.join("alpha", member(&["camera"], &["camera"], Some(64 * MIB)));
    assert_eq!(
        t.import("alpha", token, 5, false).unwrap_err().errno(),
        libc::ENOENT
    );
}

#[test]
fn limits_answer_enospc_and_reserve_nothing() {
    let mut t = table();
    let mut small = member(&[], &["camera"], Some(4 * PAGE));
    small.limits.max_mappings = 1;
    t.join("beta", small);
    let a = t.share("alpha", 1, 1, 2 * PAGE, PAGE, None, false).unwrap();
    let b = t.share("alpha", 2, 2, 3 * PAGE, PAGE, None, false).unwrap();
    t.import("beta", a.token, 1, false).unwrap();
    let err = t.import("beta", b.token, 2, false).unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(err.to_string().contains("max_mappings"), "{err}");
    assert_eq!(t.mappings("beta"), 1);
    // The window: 4 pages, 2 used, 3 asked.
    t.leave("beta", ms(0));
    assert!(t.window("beta").is_none());
    t.join("beta", member(&[], &["camera"], Some(4 * PAGE)));
    t.import("beta", a.token, 1, false).unwrap();
    assert_eq!(
        t.import("beta", b.token, 2, false).unwrap_err(),
        ShareError::WindowFull(3 * PAGE)
    );
    // Exporter limits.
    let mut exporter = member(&["camera"], &[], None);
    exporter.limits.max_shares = 1;
    t.join("alpha", exporter);
    t.share("alpha", 3, 3, PAGE, PAGE, None, false).unwrap();
    let err = t.share("alpha", 4, 4, PAGE, PAGE, None, false).unwrap_err();
    assert!(err.to_string().contains("max_shares"), "{err}");
    // max_importers of the group (2).
    let mut t = table();
    t.join("eps", member(&[], &["camera"], Some(MIB)));
    let s = t.share("alpha", 1, 1, PAGE, PAGE, None, false).unwrap();
    t.import("beta", s.token, 1, false).unwrap();
    t.import("gamma", s.token, 1, false).unwrap();
    let err = t.import("eps", s.token, 1, false).unwrap_err();
    assert!(err.to_string().contains("max_importers"), "{err}");
}

/// The order: event, acknowledgement, unmap, proof, then the
/// exporter's answer; never an unmap before the event.
#[test]
fn unshare_revokes_in_order_and_settles_only_with_the_proof() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    mapped(&mut t, token);
    let actions = t.unshare("alpha", token, ms(0)).unwrap();
    let serial = revoke_serial(&actions);
    assert!(!t.settled(token));
    assert_eq!(t.poll(ms(999)), vec![], "no unmap before the deadline");
    let unmap = t.revoke_ack("beta", 100, serial, ms(5)).unwrap();
    assert_eq!(
        unmap,
        vec![Action::Unmap {
            vm: "beta".into(),
            import: 100,
            offset: 0,
            len: 3 * PAGE
        }]
    );
    assert!(
        t.revoke_ack("beta", 100, serial, ms(6)).unwrap().is_empty(),
        "repeated"
    );
    assert_eq!(
        t.revoke_ack("beta", 100, serial + 1, ms(6))
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    assert!(!t.settled(token), "unmap sent, not proven");
    let proof = t.unmapped("beta", 100);
    assert_eq!(
        proof,
        vec![Action::Unhold {
            exporter: "alpha".into(),
            token
        }]
    );
    assert!(t.settled(token));
    assert_eq!(t.import_of("beta", 100).unwrap().mapping, Mapping::Revoked);
    assert!(t.window("beta").unwrap().is_empty());
    assert_eq!(t.mappings("beta"), 0);
    // The import stays (MAP answers -ENOLINK) until released.
    t.release("beta", 100, ms(7)).unwrap();
    assert!(t.import_of("beta", 100).is_none());
    assert!(t.share_of(token).is_none(), "an ended share is forgotten");
}

#[test]
fn an_importer_that_never_acknowledges_is_unmapped_at_the_deadline() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    mapped(&mut t, token);
    t.unshare("alpha", token, ms(100)).unwrap();
    assert_eq!(t.poll(ms(1099)), vec![]);
    let unmap = t.poll(ms(1100));
    assert!(
        matches!(unmap[..], [Action::Unmap { import: 100, .. }]),
        "{unmap:?}"
    );
    assert!(t.poll(ms(1101)).is_empty(), "sent once");
    t.unmapped("beta", 100);
    assert!(t.settled(token));
}

/// A QEMU that never lets the proof come: the exporter's answer goes at
/// the unmap deadline (forced), but the range, the slot and the hold stay
/// until the proof or the importer's departure.
#[test]
fn a_window_never_proven_gone_is_forced_and_keeps_its_resources() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    mapped(&mut t, token);
    let serial = revoke_serial(&t.unshare("alpha", token, ms(0)).unwrap());
    t.revoke_ack("beta", 100, serial, ms(10)).unwrap();
    assert!(t.poll(ms(2009)).is_empty());
    assert!(!t.settled(token));
    assert!(t.poll(ms(2010)).is_empty());
    assert!(t.settled(token), "the exporter's answer may go");
    assert_eq!(t.forced(token), 1);
    assert_eq!(t.mappings("beta"), 1, "the slot is still spent");
    assert!(!t.window("beta").unwrap().is_empty());
    // beta leaves: its QEMU's windows are gone; the hold is dropped.
    let left = t.leave("beta", ms(3000));
    assert_eq!(
        left,
        vec![Action::Unhold {
            exporter: "alpha".into(),
            token
        }]
    );
    assert!(t.share_of(token).is_none());
}

#[test]
fn a_late_proof_of_a_forced_window_frees_it() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    mapped(&mut t, token);
    let serial = revoke_serial(&t.unshare("alpha", token, ms(0)).unwrap());
    t.revoke_ack("beta", 100, serial, ms(0)).unwrap();
    t.poll(ms(5000));
    assert_eq!(t.forced(token), 1);
    assert_eq!(t.unmapped("beta", 100).len(), 1);
    assert_eq!(t.forced(token), 0);
    assert_eq!(t.mappings("beta"), 0);
}

#[test]
fn a_moving_revocation_maps_the_window_again() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    mapped(&mut t, token);
    let actions = t.suspend(token, ms(0));
    let serial = revoke_serial(&actions);
    assert!(matches!(actions[0], Action::Revoke { data, .. }
        if data >> crate::protocol::CENALLOC_REVOKE_REASON_SHIFT == crate::protocol::CENALLOC_REVOKE_MOVING));
    t.revoke_ack("beta", 100, serial, ms(1)).unwrap();
    t.unmapped("beta", 100);
    assert_eq!(t.import_of("beta", 100).unwrap().mapping, Mapping::Reserved);
    assert_eq!(
        t.mappings("beta"),
        1,
        "the slot stays reserved for the remap"
    );
    mapped(&mut t, token);
}

#[test]
fn an_import_before_the_first_map_is_settled_at_once_by_unshare() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    assert!(t.unshare("alpha", token, ms(0)).unwrap().is_empty());
    assert!(t.settled(token));
    assert_eq!(t.import_of("beta", 100).unwrap().mapping, Mapping::Revoked);
    assert_eq!(t.mappings("beta"), 0);
    assert_eq!(
        t.unshare("alpha", token, ms(0)).unwrap_err().errno(),
        libc::ENOENT
    );
}

#[test]
fn a_failed_map_drops_the_hold_and_keeps_the_reservation() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    t.backing_ready(token);
    let failed = t.map_answered("beta", 100, false);
    assert_eq!(
        failed,
        vec![Action::Unhold {
            exporter: "alpha".into(),
            token
        }]
    );
    assert_eq!(t.import_of("beta", 100).unwrap().mapping, Mapping::Reserved);
    assert!(
        t.map_answered("beta", 100, true).is_empty(),
        "no map in flight"
    );
}

#[test]
fn release_unmaps_without_an_event_and_frees_with_the_proof() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    mapped(&mut t, token);
    let actions = t.release("beta", 100, ms(0)).unwrap();
    assert!(
        matches!(actions[..], [Action::Unmap { import: 100, .. }]),
        "{actions:?}"
    );
    assert_eq!(
        t.release("beta", 100, ms(0)).unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(t.mappings("beta"), 1);
    t.unmapped("beta", 100);
    assert!(t.import_of("beta", 100).is_none());
    assert_eq!(t.mappings("beta"), 0);
    // The share lives on: beta may import it again.
    t.import("beta", token, 101, false).unwrap();
}

#[test]
fn an_exporter_that_leaves_revokes_its_importers_for_good() {
    let mut t = table();
    let token = shared_and_imported(&mut t);
    mapped(&mut t, token);
    let actions = t.leave("alpha", ms(0));
    revoke_serial(&actions);
    assert!(
        t.share("alpha", 5, 5, PAGE, PAGE, None, false).is_err(),
        "gone"
    );
}
