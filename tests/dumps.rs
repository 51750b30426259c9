//! Guest memory stays out of what the daemon's crash or its uid exposes:
//! every mapping of guest RAM is excluded from core dumps (`dd` in
//! /proc/PID/smaps), and after `--user` the process stays non-dumpable,
//! so another process of that uid cannot open the guest memory files
//! through /proc/PID/fd. Run against the real `cenallocd` process.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;

use cenalloc::protocol::*;
use common::*;

/// The daemon's mappings of the test's guest memory file, each with its
/// VmFlags line.
fn guest_mappings(pid: u32) -> Vec<(String, String)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(header) = current.take() {
                found.push((header, flags.trim().to_string()));
            }
        } else if line.contains("memfd:cenalloc-guest") {
            current = Some(line.to_string());
        }
    }
    found
}

/// A connected guest with a buffer the device filled (so the daemon has
/// touched its memory).
fn busy_guest(socket: &std::path::Path) -> Harness {
    let mut harness = Harness::connect(socket, WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, _) = harness.mapped_buffer(65536, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    harness.run(Cmd::fill(buffer, 3)).ok();
    harness
}

#[test]
fn every_mapping_of_guest_memory_is_left_out_of_core_dumps() {
    let daemon = DaemonProcess::spawn(&[]);
    let mut guest = busy_guest(&daemon.socket);
    // A second memory table (what QEMU sends after memory hotplug) is
    // marked as well.
    guest.resend_memory_table();
    guest.run(Cmd::get_info()).ok();

    let mappings = guest_mappings(daemon.child.id());
    // The harness maps two regions of its memfd.
    assert!(
        mappings.len() >= 2,
        "no guest memory mapping found in the daemon: {mappings:?}"
    );
    let dumped: Vec<_> = mappings
        .iter()
        .filter(|(_, flags)| !flags.split_whitespace().any(|flag| flag == "dd"))
        .collect();
    assert!(
        dumped.is_empty(),
        "guest memory a core dump would contain: {dumped:#?}"
    );
}

#[test]
fn after_user_another_process_of_that_uid_cannot_open_guest_memory() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: --user cannot be tested here (CI runs as root)");
        return;
    }
    let nobody = cenalloc::sandbox::lookup_user("nobody").expect("user nobody");
    let daemon = DaemonProcess::spawn(&["--user", "nobody"]);
    let _guest = busy_guest(&daemon.socket);
    let pid = daemon.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|uid| uid == nobody.uid.to_string()),
        "{uid_line}"
    );

    // The guest memory file among the daemon's descriptors.
    let fd_dir = format!("/proc/{pid}/fd");
    let guest_fd = std::fs::read_dir(&fd_dir)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .find(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().contains("memfd:cenalloc-guest"))
        })
        .expect("the daemon holds the guest memory file")
        .path();

    // What any process running as nobody would try.
    let output = std::process::Command::new("head")
        .args(["-c", "16"])
        .arg(&guest_fd)
        .uid(nobody.uid)
        .gid(nobody.gid)
        .output()
        .unwrap();
    assert!(
        !output.status.success() && output.stdout.is_empty(),
        "uid {} read {} bytes of guest memory through {}",
        nobody.uid,
        output.stdout.len(),
        guest_fd.display()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // Non-dumpable: its /proc entries belong to root, not to nobody.
    let owner = std::fs::metadata(&fd_dir).unwrap().uid();
    assert_eq!(
        owner, 0,
        "{fd_dir} belongs to uid {owner}: the daemon is dumpable"
    );
}
