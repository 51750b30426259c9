//! Process hygiene of `cenallocd` across front-end connections: nothing
//! the daemon holds (descriptors, threads, memory mappings) grows with the
//! number of connections it served.

mod common;

use cenalloc::protocol::*;
use common::*;
use vhost::VhostBackend;

/// One whole front-end session: connect, set up the rings, run a command,
/// disconnect. Returns what the daemon held while it was connected: by
/// then the previous connection is gone entirely (the daemon serves a
/// socket's front-ends one after the other, and takes the next only once
/// the last one's state is dropped), so the counts of two sessions compare
/// without waiting for a teardown.
fn session(daemon: &mut DaemonProcess) -> Held {
    let mut harness = Harness::connect(&daemon.socket, WANTED_FEATURES);
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    assert_eq!(info.version, CENALLOC_PROTOCOL_VERSION);
    // The set-up messages get no reply: one that has a reply comes after
    // the daemon handled them all (the event queue's call and kick fds).
    harness.frontend.get_features().unwrap();
    let held = daemon.held();
    drop(harness);
    held
}

#[test]
fn a_hundred_connections_leak_nothing() {
    let mut daemon = DaemonProcess::spawn(&["--pool", "system:4M"]);
    // The first sessions set up what lives as long as the process.
    session(&mut daemon);
    session(&mut daemon);
    let baseline = session(&mut daemon);
    for _ in 0..100 {
        session(&mut daemon);
    }
    let after = session(&mut daemon);
    eprintln!(
        "cenallocd while connected: {baseline:?} at the 3rd connection, {after:?} at the 104th"
    );
    assert!(
        after.fds <= baseline.fds
            && after.threads <= baseline.threads
            && after.maps <= baseline.maps,
        "more held after 100 connections: {baseline:?} -> {after:?}"
    );
    // It outlived the last one's teardown: it serves the next front-end.
    session(&mut daemon);
}
