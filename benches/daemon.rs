//! cenallocd benchmark, through the same test VMM as the integration tests
//! (memfd RAM, vhost-user front-end, split rings, eventfd kick/call).
//!
//! - Round-trip latency of one single-command chain (median, p99), against
//!   a floor measured in the same run: a trivial backend built from the
//!   same crates that returns every chain without doing any work.
//! - Throughput: many chains per kick, many commands per chain.
//!
//! Targets: single-command median ≤ 1.2 × the floor's median; ≥ 100k
//! commands/s with batching. `cargo bench --bench daemon`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io;
use std::time::{Duration, Instant};

use cenalloc::device::DeviceConfig;
use cenalloc::protocol::*;
use common::*;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// The floor: same queues, features and event loop, no work per chain.
struct FloorBackend {
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    event_idx: bool,
}

impl FloorBackend {
    fn drain(&self, vring: &VringRwLock) {
        let Some(atomic) = &self.mem else { return };
        let mem = atomic.memory();
        let heads: Vec<u16> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(iter) => iter.map(|chain| chain.head_index()).collect(),
            Err(_) => return,
        };
        for head in heads {
            let _ = vring.add_used(head, 0);
        }
        if vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }
}

impl VhostUserBackendMut for FloorBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        CENALLOC_NUM_VQS
    }
    fn max_queue_size(&self) -> usize {
        1024
    }
    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }
    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }
    fn get_config(&self, _offset: u32, size: u32) -> Vec<u8> {
        vec![0; size as usize]
    }
    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }
    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if device_event != CENALLOC_VQ_CONTROL {
            return Ok(());
        }
        let vring = &vrings[0];
        if self.event_idx {
            loop {
                let _ = vring.disable_notification();
                self.drain(vring);
                if !vring.enable_notification().unwrap_or(false) {
                    break;
                }
            }
        } else {
            self.drain(vring);
        }
        Ok(())
    }
}

fn spawn_floor() -> std::path::PathBuf {
    let socket = std::env::temp_dir().join(format!("cenalloc-floor-{}.sock", std::process::id()));
    let mut listener = Listener::new(&socket, true).unwrap();
    std::thread::spawn(move || loop {
        let backend = std::sync::Arc::new(std::sync::RwLock::new(FloorBackend {
            mem: None,
            event_idx: false,
        }));
        let mut daemon = VhostUserDaemon::new(
            "floor".to_string(),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .unwrap();
        if daemon.start(&mut listener).is_err() {
            return;
        }
        let _ = daemon.wait();
    });
    socket
}

struct Latency {
    median: Duration,
    p99: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Latency {
            median: samples[samples.len() / 2],
            p99: samples[samples.len() * 99 / 100],
        }
    }
}

fn round_trip(harness: &mut Harness, chain: &Chain) -> Duration {
    let start = Instant::now();
    harness.submit(std::slice::from_ref(chain));
    start.elapsed()
}

/// Round trips of `chain` on `a` and `b`, alternating sample by sample so
/// both see the same machine noise.
fn latency_pair(
    a: &mut Harness,
    b: &mut Harness,
    chain: &Chain,
    iterations: usize,
) -> (Latency, Latency) {
    for _ in 0..iterations / 2 {
        round_trip(a, chain);
        round_trip(b, chain);
    }
    let mut sa = Vec::with_capacity(iterations);
    let mut sb = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        sa.push(round_trip(a, chain));
        sb.push(round_trip(b, chain));
    }
    (Latency::of(sa), Latency::of(sb))
}

/// Commands per second: `rounds` kicks of `chains` chains of `cmds`.
fn throughput(
    harness: &mut Harness,
    chains: &[Chain],
    cmds_per_chain: usize,
    rounds: usize,
) -> f64 {
    harness.submit(chains);
    let start = Instant::now();
    for _ in 0..rounds {
        let used = harness.submit(chains);
        assert_eq!(used.len(), chains.len());
    }
    let elapsed = start.elapsed().as_secs_f64();
    (rounds * chains.len() * cmds_per_chain) as f64 / elapsed
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful: run a short version then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let iterations = if quick { 200 } else { 20_000 };
    let rounds = if quick { 5 } else { 200 };

    let mut floor = Harness::connect(&spawn_floor(), WANTED_FEATURES);
    let mut daemon = Harness::start_with(DeviceConfig::default_layout());
    daemon.donate_all();
    let setup = daemon.batch(&[
        Cmd::create(64 << 10, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_MASK_ANY, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 16),
    ]);
    assert_eq!(setup.status, 0);
    let buffer: CreateResp = setup.answers[0].get();

    let single = |cmd: Cmd| {
        let cmds = [cmd];
        Chain::simple(encode_batch(&cmds), response_len(&cmds))
    };
    let sync_chain = single(Cmd::sync(
        buffer.buffer_id,
        CENALLOC_SYNC_BEGIN | CENALLOC_SYNC_READ,
    ));
    let info_chain = single(Cmd::get_info());

    let (floor_sync, daemon_sync) = latency_pair(&mut floor, &mut daemon, &sync_chain, iterations);
    let (floor_info, daemon_info) = latency_pair(&mut floor, &mut daemon, &info_chain, iterations);

    // Throughput: 128 chains per kick × 1 command; 32 chains × 64 commands.
    let one_per_chain: Vec<Chain> = (0..128).map(|_| sync_chain.clone()).collect();
    let sync_batch: Vec<Cmd> = (0..64)
        .map(|_| Cmd::sync(buffer.buffer_id, CENALLOC_SYNC_END | CENALLOC_SYNC_WRITE))
        .collect();
    let batched: Vec<Chain> = (0..32)
        .map(|_| Chain::simple(encode_batch(&sync_batch), response_len(&sync_batch)))
        .collect();
    // A full life cycle per 6 commands (4 KiB zeroed at MAP), 10 per chain.
    let mut lifecycle = Vec::new();
    for i in 0..10u32 {
        let base = CENALLOC_BATCH_REF | (6 * i);
        lifecycle.extend([
            Cmd::create(4096, 0),
            Cmd::attach(base, CENALLOC_MASK_ANY, &[CENALLOC_MAP_SG]),
            Cmd::map(base | 1, CENALLOC_DIR_BIDIRECTIONAL, 1),
            Cmd::unmap(base | 1, CENALLOC_DIR_BIDIRECTIONAL),
            Cmd::detach(base | 1),
            Cmd::free(base),
        ]);
    }
    let lifecycle_chains: Vec<Chain> = (0..16)
        .map(|_| Chain::simple(encode_batch(&lifecycle), response_len(&lifecycle)))
        .collect();
    let check = daemon.submit(&lifecycle_chains[..1]).remove(0);
    assert_eq!(
        decode_batch(&lifecycle, &check).status,
        0,
        "life-cycle batch fails"
    );

    let floor_chains = throughput(&mut floor, &one_per_chain, 1, rounds);
    let chains_rate = throughput(&mut daemon, &one_per_chain, 1, rounds);
    let batched_rate = throughput(&mut daemon, &batched, 64, rounds);
    let lifecycle_rate = throughput(&mut daemon, &lifecycle_chains, 60, rounds);

    let ratio = us(daemon_sync.median) / us(floor_sync.median);
    println!(
        "cenallocd benchmark ({} iterations per latency, {} kicks per rate)",
        iterations, rounds
    );
    println!(
        "round trip, floor (no work)      median {:7.2} us  p99 {:7.2} us",
        us(floor_sync.median),
        us(floor_sync.p99)
    );
    println!(
        "round trip, 1 x SYNC             median {:7.2} us  p99 {:7.2} us  ({ratio:.2} x floor, target <= 1.20: {})",
        us(daemon_sync.median),
        us(daemon_sync.p99),
        if ratio <= 1.2 { "met" } else { "MISSED" }
    );
    println!(
        "round trip, 1 x GET_INFO         median {:7.2} us  p99 {:7.2} us  ({:.2} x floor {:.2} us)",
        us(daemon_info.median),
        us(daemon_info.p99),
        us(daemon_info.median) / us(floor_info.median),
        us(floor_info.median)
    );
    println!("throughput, floor, 128 chains/kick           {floor_chains:10.0} chains/s");
    println!("throughput, 128 chains/kick x 1 SYNC         {chains_rate:10.0} commands/s");
    println!(
        "throughput, 32 chains/kick x 64 SYNC         {batched_rate:10.0} commands/s (target >= 100000: {})",
        if batched_rate >= 100_000.0 { "met" } else { "MISSED" }
    );
    println!("throughput, 16 chains/kick x 60 life-cycle   {lifecycle_rate:10.0} commands/s (create/attach/map+zero 4K/unmap/detach/free)");
}
