//! Process hygiene of `cenallocd` across front-end connections: nothing
//! the daemon holds grows with the number of connections it served.

mod common;

use std::time::{Duration, Instant};

use cenalloc::protocol::*;
use common::*;

/// Waits until the daemon holds at most `limit` descriptors; returns the
/// last count seen.
fn settle_fds(daemon: &DaemonProcess, limit: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = daemon.fd_count();
        if count <= limit || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One whole front-end session: connect, set up the rings, run a command,
/// disconnect.
fn session(daemon: &DaemonProcess) {
    let mut harness = Harness::connect(&daemon.socket, WANTED_FEATURES);
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    assert_eq!(info.version, CENALLOC_PROTOCOL_VERSION);
}

#[test]
fn a_hundred_connections_leak_no_file_descriptor() {
    let daemon = DaemonProcess::spawn(&["--pool", "system:4M"]);
    // The first session sets up what lives as long as the process.
    session(&daemon);
    session(&daemon);
    let baseline = settle_fds(&daemon, 0);
    for _ in 0..100 {
        session(&daemon);
    }
    // The daemon may still be tearing down the last connection.
    let after = settle_fds(&daemon, baseline);
    eprintln!("cenallocd open fds: {baseline} after 2 connections, {after} after 102");
    assert!(
        after <= baseline,
        "{} descriptors more after 100 connections ({baseline} -> {after})",
        after - baseline
    );
}
