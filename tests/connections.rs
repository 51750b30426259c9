//! Front-end connections: one front-end per socket at a time, the next
//! one served when it leaves (docs/running-cenallocd.md); and process
//! hygiene across them: nothing the daemon holds (descriptors, threads,
//! memory mappings) grows with the number of connections it served.

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

#[test]
fn a_second_front_end_is_served_when_the_first_leaves() {
    let socket = spawn_daemon(cenalloc::device::DeviceConfig::default_layout());
    let mut first = Harness::connect(&socket, WANTED_FEATURES);
    first.run(Cmd::create(4096, 0)).ok();

    // The second connects (the socket accepts it) and waits for answers.
    let (connected, answered) = std::sync::mpsc::channel();
    let waiting = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let harness = Harness::connect(&socket, WANTED_FEATURES);
            let _ = connected.send((harness, std::time::Instant::now()));
        })
    };
    // Meanwhile the first is served as before, its device intact.
    for _ in 0..50 {
        let info: InfoResp = first.run(Cmd::get_info()).ok().get();
        assert_eq!(info.num_buffers, 1);
    }
    assert!(
        !waiting.is_finished(),
        "the second front-end was served beside the first"
    );
    let left = std::time::Instant::now();
    drop(first);

    let (mut second, served) = answered
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the second front-end was never served");
    assert!(
        served > left,
        "the second front-end was served beside the first"
    );
    // With a device of its own.
    let info: InfoResp = second.run(Cmd::get_info()).ok().get();
    assert_eq!(info.num_buffers, 0);
    waiting.join().unwrap();
}
