//! Bounds of the control socket that no guest and no other control client
//! can break: answers come within [`ANSWER_BOUND`] while a guest keeps its
//! control ring full, silent connections never lock anyone out, a
//! connection idle for the idle timeout is closed, and a client that stalls
//! mid-request is dropped (its exports released).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cenalloc::config::device_config;
use cenalloc::control::client::Client;
use cenalloc::control::server::{ControlPolicy, ANSWER_BOUND};
use cenalloc::device::DeviceConfig;
use cenalloc::protocol::*;
use cenalloc::registry::DaemonLimits;
use common::*;

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
