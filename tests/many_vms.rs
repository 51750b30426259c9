//! One daemon, several VMs: front-ends served in parallel with independent
//! state, a hostile front-end next to a well-behaved one, and the
//! daemon-wide limits.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cenalloc::config::device_config;
use cenalloc::control::client::Client;
use cenalloc::control::protocol::VmState;
use cenalloc::control::server::ControlPolicy;
use cenalloc::device::DeviceConfig;
use cenalloc::protocol::*;
use cenalloc::registry::DaemonLimits;
use common::*;
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;

fn pools(flags: &[&str]) -> DeviceConfig {
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    device_config(None, &flags).unwrap()
}

/// A guest's run: buffers of several sizes, each filled by the device and
/// checked against guest RAM; returns the harness and its live buffer ids.
fn guest_run(socket: std::path::PathBuf, seed: u64, count: u64) -> (Harness, Vec<u32>) {
    let mut harness = Harness::connect(&socket, WANTED_FEATURES);
    harness.donate_all();
    let mut ids = Vec::new();
    for i in 0..count {
        let (buffer, attachment, segments) = harness.mapped_buffer(
            16384 * (i % 4 + 1),
            CENALLOC_KIND_SYSTEM,
            &[CENALLOC_MAP_SG],
        );
        harness.run(Cmd::fill(buffer, seed + i)).ok();
        let expected = fnv1a(&read_buffer(&harness.ram, &segments));
        assert_eq!(harness.device_checksum(buffer), expected);
        if i % 3 == 2 {
            harness.release_buffer(buffer, attachment);
        } else {
            ids.push(buffer);
        }
    }
    (harness, ids)
}

#[test]
fn two_front_ends_in_parallel_keep_independent_state() {
    let daemon = spawn_vms(
        &[
            ("left", pools(&["system:4M", "contig:1M"])),
            ("right", pools(&["system:2M"])),
        ],
        DaemonLimits::default(),
        ControlPolicy::default(),
    );
    let left_socket = daemon.sockets[0].clone();
    let right_socket = daemon.sockets[1].clone();
    let left = std::thread::spawn(move || guest_run(left_socket, 100, 30));
    let right = std::thread::spawn(move || guest_run(right_socket, 200, 12));
    let (mut left, left_ids) = left.join().unwrap();
    let (mut right, right_ids) = right.join().unwrap();

    // Each VM has its own configuration, id space and pools.
    assert_eq!(left.config.num_pools, 2);
    assert_eq!(right.config.num_pools, 1);
    assert_eq!(left_ids[0], 1);
    assert_eq!(right_ids[0], 1);
    let left_info: InfoResp = left.run(Cmd::get_info()).get();
    let right_info: InfoResp = right.run(Cmd::get_info()).get();
    assert_eq!(left_info.num_buffers as usize, left_ids.len());
    assert_eq!(right_info.num_buffers as usize, right_ids.len());

    let mut client = Client::connect(&daemon.control).unwrap();
    let listed: Vec<u32> = client
        .buffers(Some("left"))
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(listed, left_ids);
    let listed: Vec<u32> = client
        .buffers(Some("right"))
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(listed, right_ids);

    // Emptying one VM leaves the other as it was.
    let before: Vec<u64> = right_ids
        .iter()
        .map(|&b| right.device_checksum(b))
        .collect();
    left.run(Cmd::reset(CENALLOC_RESET_F_ALL, 0)).ok();
    let left_info: InfoResp = left.run(Cmd::get_info()).get();
    assert_eq!(left_info.num_buffers, 0);
    let after: Vec<u64> = right_ids
        .iter()
        .map(|&b| right.device_checksum(b))
        .collect();
    assert_eq!(before, after);
    drop(left);
    let mut vms = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        vms = client.vms().unwrap();
        if vms[0].state == VmState::Waiting {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(vms[0].state, VmState::Waiting);
    assert_eq!(vms[1].state, VmState::Connected);
    assert_eq!(vms[1].buffers as usize, right_ids.len());
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Round trips of the well-behaved guest: a CHECKSUM of its buffer each;
/// every answer must be `expected`.
fn measure(harness: &mut Harness, buffer: u32, expected: u64, rounds: usize) -> Vec<Duration> {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let checksum = harness.device_checksum(buffer);
            let elapsed = start.elapsed();
            assert_eq!(checksum, expected, "the well-behaved VM's result changed");
            elapsed
        })
        .collect()
}

/// What a hostile guest does until `stop`: heavy legal work (hashing 512
/// MiB per chain), malformed chains, garbage batches, kick storms; at the
/// end it breaks its ring and vanishes. Returns the slowest heavy chain.
/// The hostile VM: heavy chains back to back (`busy` while one is in
/// flight, `chains` counts those done), malformed chains, needless kicks.
fn hostile(
    socket: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    chains: Arc<AtomicU64>,
    busy: Arc<AtomicBool>,
) -> Duration {
    let mut harness = Harness::connect(&socket, WANTED_FEATURES);
    harness.donate_all();
    let (big, _, _) = harness.mapped_buffer(32 << 20, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    let heavy: Vec<Cmd> = (0..16).map(|_| Cmd::checksum(big)).collect();
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::Acquire) {
        let start = Instant::now();
        busy.store(true, Ordering::Release);
        let answer = harness.batch(&heavy);
        busy.store(false, Ordering::Release);
        slowest = slowest.max(start.elapsed());
        assert_eq!(answer.status, 0);
        chains.fetch_add(1, Ordering::Relaxed);
        // Malformed: outside guest RAM, readable after writable, garbage.
        let used = harness.submit(&[
            Chain::new(vec![
                Desc::Raw {
                    addr: 1 << 40,
                    len: 64,
                    write: false,
                },
                Desc::Writable(64),
            ]),
            Chain::new(vec![Desc::Writable(64), Desc::Readable(vec![0; 24])]),
            Chain::simple(vec![0xff; 40], 64),
            Chain::simple(encode_batch(&[Cmd::new(0x7777, &[1; 8], 8)]), 64),
        ]);
        assert_eq!(used.len(), 4);
        for _ in 0..100 {
            harness.kick(0);
        }
    }
    // A ring the device must give up on, then gone without a goodbye.
    harness.write_avail_idx(0, 40000);
    drop(harness);
    slowest
}

#[test]
fn a_hostile_front_end_leaves_a_well_behaved_one_alone() {
    let daemon = spawn_vms(
        &[
            ("good", pools(&["system:4M"])),
            ("bad", pools(&["system:64M"])),
        ],
        DaemonLimits::default(),
        ControlPolicy::default(),
    );
    let mut good = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    good.donate_all();
    let (buffer, _, _) = good.mapped_buffer(64 << 10, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    good.run(Cmd::fill(buffer, 42)).ok();
    let expected = good.device_checksum(buffer);
    let rounds = 200;
    let mut alone = measure(&mut good, buffer, expected, rounds);

    let stop = Arc::new(AtomicBool::new(false));
    let chains = Arc::new(AtomicU64::new(0));
    let bad_socket = daemon.sockets[1].clone();
    let busy = Arc::new(AtomicBool::new(false));
    let neighbour = {
        let (stop, chains, busy) = (stop.clone(), chains.clone(), busy.clone());
        std::thread::spawn(move || hostile(bad_socket, stop, chains, busy))
    };
    // Measure once the neighbour has finished its first heavy chain and
    // has its second in flight: the rounds start inside a heavy chain (and
    // overlap the later ones).
    let deadline = Instant::now() + Duration::from_secs(20);
    while chains.load(Ordering::Acquire) == 0 || !busy.load(Ordering::Acquire) {
        assert!(
            Instant::now() < deadline,
            "the hostile VM never ran a chain"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let chains_before = chains.load(Ordering::Acquire);
    let mut beside = measure(&mut good, buffer, expected, rounds);
    let chains_during = chains.load(Ordering::Acquire) - chains_before;
    stop.store(true, Ordering::Release);
    let slowest_hostile_chain = neighbour.join().unwrap();

    let (alone, beside) = (median(&mut alone), median(&mut beside));
    eprintln!(
        "well-behaved VM: CHECKSUM round trip median {alone:?} alone, {beside:?} beside a hostile VM \
         (its heavy chains took up to {slowest_hostile_chain:?}, {} ran, {chains_during} of them \
         during the measurement)",
        chains.load(Ordering::Relaxed)
    );

    // Had the two VMs shared a lock or a thread, the good VM's round trips
    // would wait for the neighbour's chains, each far longer than this.
    assert!(
        beside < Duration::from_millis(25).max(alone * 20),
        "median {beside:?} beside the hostile VM, {alone:?} alone"
    );
    assert!(slowest_hostile_chain > beside * 10);

    // The hostile VM is gone, the good one goes on.
    let mut client = Client::connect(&daemon.control).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.vms().unwrap()[0].state != VmState::Waiting {
        assert!(Instant::now() < deadline, "the hostile VM never left");
        std::thread::sleep(Duration::from_millis(10));
    }
    measure(&mut good, buffer, expected, 10);
    let (buffer2, _, _) = good.mapped_buffer(8192, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    good.run(Cmd::fill(buffer2, 1)).ok();
}

#[test]
fn daemon_limits_refuse_a_vm_that_does_not_fit() {
    let mut small = pools(&["system:1M"]);
    small.pool.limits.max_buffers = 10;
    let daemon = spawn_vms(
        &[("a", small.clone()), ("b", small.clone()), ("c", small)],
        DaemonLimits {
            max_vms: 2,
            max_buffers: 1000,
            max_total_bytes: u64::MAX,
        },
        ControlPolicy::default(),
    );
    let mut a = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    let b = Harness::connect(&daemon.sockets[1], WANTED_FEATURES);
    // The third is closed at once: its first request gets no answer.
    let c = Frontend::connect(&daemon.sockets[2], CENALLOC_NUM_VQS as u64).unwrap();
    let refused = c.set_owner().and_then(|()| c.get_features());
    assert!(refused.is_err(), "{refused:?}");
    let mut client = Client::connect(&daemon.control).unwrap();
    let vms = client.vms().unwrap();
    assert_eq!(vms[2].state, VmState::Waiting);
    assert_eq!(vms[2].refused, 1);
    assert_eq!(client.stats(None).unwrap().daemon.connected, 2);
    // The admitted VMs work; one leaving makes room.
    a.run(Cmd::create(4096, 0)).ok();
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client.stats(None).unwrap().daemon.connected == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "b never left");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = Harness::connect(&daemon.sockets[2], WANTED_FEATURES);
    c.run(Cmd::create(4096, 0)).ok();
}

/// A front-end the daemon limits refuse is closed before any of its
/// requests is served: were the connection served first and refused after,
/// a front-end that is quick enough would get answers (and could change
/// device state) from a VM that was never admitted.
#[test]
fn a_refused_front_end_is_never_answered() {
    let mut small = pools(&["system:1M"]);
    small.pool.limits.max_buffers = 10;
    let daemon = spawn_vms(
        &[("a", small.clone()), ("b", small)],
        DaemonLimits {
            max_vms: 1,
            max_buffers: 1000,
            max_total_bytes: u64::MAX,
        },
        ControlPolicy::default(),
    );
    let _a = Harness::connect(&daemon.sockets[0], WANTED_FEATURES);
    let mut answered = 0;
    const TRIES: u32 = 1000;
    for _ in 0..TRIES {
        let b = Frontend::connect(&daemon.sockets[1], CENALLOC_NUM_VQS as u64).unwrap();
        if b.set_owner().and_then(|()| b.get_features()).is_ok() {
            answered += 1;
        }
    }
    let mut client = Client::connect(&daemon.control).unwrap();
    let vms = client.vms().unwrap();
    assert_eq!(vms[1].refused, u64::from(TRIES));
    assert_eq!(
        answered, 0,
        "{answered} of {TRIES} refused front-ends got GET_FEATURES answered"
    );
}
