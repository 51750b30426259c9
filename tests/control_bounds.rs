//! Bounds of the control socket that no guest and no other control client
//! can break: answers come within [`ANSWER_BOUND`] while a guest keeps its
//! control ring full, silent connections never lock anyone out, a
//! connection idle for the idle timeout is closed, and a client that stalls
//! mid-request is dropped (its exports released).

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cenalloc::config::device_config;
use cenalloc::control::client::{Client, Status};
use cenalloc::control::protocol::*;
use cenalloc::control::server::{ControlPolicy, ANSWER_BOUND};
use cenalloc::device::DeviceConfig;
use cenalloc::protocol::*;
use cenalloc::registry::DaemonLimits;
use common::*;

/// The tests of this file measure time: they run one at a time, so that
/// none of them slows another down on a small host.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pools(flags: &[&str]) -> DeviceConfig {
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    device_config(None, &flags).unwrap()
}

/// Chains the flooding guest keeps in flight.
const SLOTS: u16 = 64;
/// Where the flooding guest puts its requests and answers (inside the
/// harness's scratch area, above what the set-up rounds used).
const FLOOD_BASE: u64 = 8 << 20;

/// A guest that never lets its control ring drain: [`SLOTS`] chains of one
/// CHECKSUM each are always available; whenever the device answers one, it
/// is made available again. Stops (and returns the chains answered) when
/// dropped or [`Flood::stop`]ped.
struct Flood {
    stop: Arc<AtomicBool>,
    answered: Option<JoinHandle<u64>>,
}

impl Flood {
    fn start(mut harness: Harness, buffer: u32) -> Self {
        let cmd = [Cmd::checksum(buffer)];
        let request = encode_batch(&cmd);
        let answer_len = response_len(&cmd);
        for slot in 0..SLOTS {
            let request_at = FLOOD_BASE + u64::from(slot) * 8192;
            let answer_at = request_at + 4096;
            harness.ram.write(request_at, &request);
            harness.write_control_desc(2 * slot, request_at, request.len() as u32, 1, 2 * slot + 1);
            harness.write_control_desc(2 * slot + 1, answer_at, answer_len, 2, 0);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let answered = std::thread::spawn(move || {
            let first = harness.control_used_idx();
            let mut published: u16 = 0;
            let mut answered: u64 = 0;
            let mut seen = first;
            while !stopped.load(Ordering::Acquire) {
                let used = harness.control_used_idx();
                answered += u64::from(used.wrapping_sub(seen));
                seen = used;
                let done = used.wrapping_sub(first);
                // The ring never holds fewer than SLOTS - 1 chains.
                while published.wrapping_sub(done) < SLOTS {
                    harness.publish_control_head(2 * (published % SLOTS));
                    published = published.wrapping_add(1);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            answered
        });
        Flood {
            stop,
            answered: Some(answered),
        }
    }

    /// Chains the device answered so far... once the guest stops.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.answered.take().unwrap().join().unwrap()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[test]
fn control_requests_are_answered_within_the_bound_while_a_guest_keeps_its_ring_full() {
    let _serial = one_at_a_time();
    let daemon = spawn_vms(
        &[
            ("flood", pools(&["system:8M"])),
            ("calm", pools(&["system:1M"])),
        ],
        DaemonLimits::default(),
        ControlPolicy::default(),
    );
    let mut calm = Harness::connect(&daemon.sockets[1], WANTED_FEATURES);
    calm.donate_all();
    calm.mapped_buffer(4096, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let mut guest = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    guest.donate_all();
    let (buffer, _, _) = guest.mapped_buffer(1 << 20, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let flood = Flood::start(guest, buffer);
    // The flood is under way: its ring holds chains from now on.
    std::thread::sleep(Duration::from_millis(200));

    let (tx, rx) = mpsc::channel::<(&'static str, Duration)>();
    let control = daemon.control.clone();
    let asker = std::thread::spawn(move || {
        let mut client = Client::connect(&control).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            let asked = Instant::now();
            assert_eq!(client.vms().unwrap().len(), 2);
            if tx.send(("vms", asked.elapsed())).is_err() {
                return;
            }
            let asked = Instant::now();
            assert_eq!(client.buffers(None).unwrap().len(), 2);
            if tx.send(("buffers", asked.elapsed())).is_err() {
                return;
            }
            let asked = Instant::now();
            assert_eq!(client.stats(None).unwrap().vms.len(), 2);
            if tx.send(("stats", asked.elapsed())).is_err() {
                return;
            }
            let asked = Instant::now();
            let export = client.export("flood", buffer, false).unwrap();
            if tx.send(("export", asked.elapsed())).is_err() {
                return;
            }
            assert!(export.is_valid());
            client.release(export.info.export).unwrap();
        }
    });
    let mut answers = 0;
    let mut slowest = Duration::ZERO;
    loop {
        match rx.recv_timeout(ANSWER_BOUND) {
            Ok((request, took)) => {
                assert!(
                    took <= ANSWER_BOUND,
                    "{request} answered after {took:?}, bound {ANSWER_BOUND:?}"
                );
                slowest = slowest.max(took);
                answers += 1;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "a control request got no answer within {ANSWER_BOUND:?} \
                 ({answers} answered before) while a guest kept its ring full"
            ),
        }
    }
    asker.join().expect("the control client failed");
    let answered = flood.stop();
    eprintln!("{answers} control answers, slowest {slowest:?}; {answered} guest chains answered meanwhile");
    assert!(answers >= 8, "only {answers} control answers in 3 s");
    // The guest was served all along, too.
    assert!(answered >= 64, "only {answered} guest chains answered");
}

fn policy(idle: Duration, request: Duration) -> ControlPolicy {
    ControlPolicy {
        idle_timeout: idle,
        request_timeout: request,
        ..ControlPolicy::default()
    }
}

/// Waits until `stream` reads end of file; returns how long that took.
fn closed_after(stream: &mut UnixStream, limit: Duration) -> Duration {
    stream.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut byte = [0u8; 64];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) => panic!(
                "the connection was not closed within {limit:?} ({e}, after {:?})",
                start.elapsed()
            ),
        }
    }
}

#[test]
fn the_maximum_number_of_silent_connections_locks_out_nobody() {
    let _serial = one_at_a_time();
    let policy = ControlPolicy::default();
    let daemon = spawn_vms(
        &[("vm", pools(&["system:1M"]))],
        DaemonLimits::default(),
        policy.clone(),
    );
    let silent: Vec<UnixStream> = (0..policy.max_clients)
        .map(|_| UnixStream::connect(&daemon.control).unwrap())
        .collect();
    // Every one of them is a client of the daemon by now.
    let start = Instant::now();
    let mut client = Client::connect(&daemon.control).unwrap();
    let hello = client.hello();
    let took = start.elapsed();
    let hello = hello.expect("a real client was refused while silent connections held the slots");
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert!(took <= ANSWER_BOUND, "answered after {took:?}");
    // It keeps working, and the daemon still serves at most max_clients.
    assert_eq!(client.vms().unwrap().len(), 1);
    let stats = client.stats(None).unwrap();
    assert!(
        stats.daemon.control_clients <= u64::from(policy.max_clients),
        "{} clients",
        stats.daemon.control_clients
    );
    drop(silent);
}

#[test]
fn an_idle_connection_is_closed_but_one_holding_exports_is_kept() {
    let _serial = one_at_a_time();
    let idle = Duration::from_secs(1);
    let daemon = spawn_vms(
        &[("vm", pools(&["system:1M"]))],
        DaemonLimits::default(),
        policy(idle, Duration::from_secs(10)),
    );
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, _) = harness.mapped_buffer(8192, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);

    let mut holder = Client::connect(&daemon.control).unwrap();
    let export = holder.export("vm", buffer, false).unwrap();
    let mut silent = UnixStream::connect(&daemon.control).unwrap();
    let mut asked_once = UnixStream::connect(&daemon.control).unwrap();
    asked_once
        .write_all(b"{\"v\":1,\"cmd\":\"hello\"}\n")
        .unwrap();
    let took = closed_after(&mut silent, 5 * idle);
    assert!(
        took >= idle / 2,
        "closed after {took:?}, idle timeout {idle:?}"
    );
    // An answer, then the idle timeout again.
    let mut answer = Vec::new();
    asked_once.set_read_timeout(Some(5 * idle)).unwrap();
    let read = asked_once.read_to_end(&mut answer);
    assert!(read.is_ok(), "{read:?}");
    assert!(answer.starts_with(b"{\"v\":1,\"ok\""), "{answer:?}");
    // The holder stayed: its export is valid and it is still served.
    std::thread::sleep(idle);
    assert!(export.is_valid(), "{:?}", export.status());
    assert_eq!(holder.vms().unwrap()[0].exports, 1);
}

#[test]
fn a_client_that_stalls_mid_request_is_dropped_and_its_exports_released() {
    let _serial = one_at_a_time();
    let request = Duration::from_secs(1);
    let daemon = spawn_vms(
        &[("vm", pools(&["system:1M"]))],
        DaemonLimits::default(),
        policy(Duration::from_secs(60), request),
    );
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, _) = harness.mapped_buffer(8192, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);

    let mut staller = Client::connect(&daemon.control).unwrap();
    let export = staller.export("vm", buffer, false).unwrap();
    let mut raw = UnixStream::from(staller.as_fd().try_clone_to_owned().unwrap());
    // Half a request on the connection that holds the export, then nothing.
    raw.write_all(b"{\"v\":1,\"cmd\":\"exp").unwrap();
    let took = closed_after(&mut raw, 5 * request);
    assert!(took >= request / 2, "closed after {took:?}");
    assert_eq!(export.status(), Status::Revoked(Revocation::Released));
    let mut watcher = Client::connect(&daemon.control).unwrap();
    assert_eq!(watcher.vms().unwrap()[0].exports, 0);
    // The guest never noticed.
    harness.run(Cmd::fill(buffer, 3)).ok();
}

#[test]
fn a_client_that_does_not_take_its_answers_is_dropped() {
    let _serial = one_at_a_time();
    let request = Duration::from_secs(1);
    let daemon = spawn_vms(
        &[("vm", pools(&["system:1M"]))],
        DaemonLimits::default(),
        policy(Duration::from_secs(60), request),
    );
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    // Far more answer bytes than a socket buffer holds, asked at once.
    let asked = 2000;
    let mut reader = UnixStream::connect(&daemon.control).unwrap();
    let line = b"{\"v\":1,\"cmd\":\"stats\"}\n";
    reader.write_all(&line.repeat(asked)).unwrap();
    // It reads nothing for a while: the daemon gives up on it.
    std::thread::sleep(3 * request);
    let mut watcher = Client::connect(&daemon.control).unwrap();
    assert_eq!(watcher.stats(None).unwrap().daemon.control_clients, 1);
    let mut answers = Vec::new();
    reader.set_read_timeout(Some(5 * request)).unwrap();
    let read = reader.read_to_end(&mut answers);
    // Closed with requests it never read: a reset, or an end of file.
    let closed = match &read {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the connection was not closed: {read:?}");
    let answered = answers.iter().filter(|&&b| b == b'\n').count();
    assert!(answered < asked, "all {answered} answers were taken");
}

#[test]
fn connections_that_hold_exports_are_never_displaced() {
    let _serial = one_at_a_time();
    let daemon = spawn_vms(
        &[("vm", pools(&["system:1M"]))],
        DaemonLimits::default(),
        ControlPolicy {
            max_clients: 2,
            ..ControlPolicy::default()
        },
    );
    let mut harness = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    harness.donate_all();
    let (buffer, _, _) = harness.mapped_buffer(8192, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let mut first = Client::connect(&daemon.control).unwrap();
    let first_export = first.export("vm", buffer, false).unwrap();
    let mut second = Client::connect(&daemon.control).unwrap();
    let second_export = second.export("vm", buffer, false).unwrap();

    // Both hold exports: a third client is refused, and both stay.
    let refused = Client::connect(&daemon.control).unwrap().hello();
    let error = refused.expect_err("a third client displaced one that holds exports");
    assert!(error.to_string().contains("holding exports"), "{error}");
    assert!(first_export.is_valid() && second_export.is_valid());
    assert_eq!(first.vms().unwrap()[0].exports, 2);

    // Once the first holds none, it is the one that makes room.
    first.release(first_export.info.export).unwrap();
    let mut third = Client::connect(&daemon.control).unwrap();
    assert_eq!(third.hello().unwrap().protocol, PROTOCOL_VERSION);
    assert!(first.vms().is_err(), "the quiet connection was not closed");
    assert!(second_export.is_valid());
    assert_eq!(second.vms().unwrap()[0].exports, 1);
}
