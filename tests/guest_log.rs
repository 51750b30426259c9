//! What a guest can make the daemon log: the log all VMs share gets at most
//! a bounded number of lines per VM however many refusals a guest provokes,
//! every refusal is counted in STATS, and the lines left out are counted
//! in the log.

mod common;

use std::time::{Duration, Instant};

use cenalloc::device::{GUEST_LOG_BURST, GUEST_LOG_PER_SEC};
use cenalloc::protocol::*;
use common::*;
use vm_memory::ByteValued;

fn lease_return(allocator_id: u32, addr: u64, len: u64) -> Cmd {
    let head = LeaseReturnReq {
        allocator_id,
        num_ranges: 1,
    };
    let mut payload = head.as_slice().to_vec();
    payload.extend_from_slice(Range { addr, len }.as_slice());
    Cmd::new(CENALLOC_CMD_LEASE_RETURN, &payload, 0)
}

/// A LEASED_MAP of one attachment (SG, bidirectional) on `extent`.
fn leased_map(id: u32, extent: u64) -> Cmd {
    let req = LeasedMapReq {
        buffer_id: id,
        initial_mask: 0,
        size: 4096,
        extent,
        map_index: 0,
        direction: CENALLOC_DIR_BIDIRECTIONAL,
        num_attachments: 1,
        reserved: 0,
    };
    let mut record = LeasedAttach {
        attach_id: id,
        mask: CENALLOC_KIND_SYSTEM,
        map_type: CENALLOC_MAP_SG,
        num_types: 1,
        ..Default::default()
    };
    record.types[0] = CENALLOC_MAP_SG;
    let mut payload = req.as_slice().to_vec();
    payload.extend_from_slice(record.as_slice());
    Cmd::new(CENALLOC_CMD_LEASED_MAP, &payload, 0)
}

/// Lines of `log` about a refused lease report.
fn refusal_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            (l.contains("LEASE_RETURN") || l.contains("LEASED_MAP")) && l.contains("refused")
        })
        .collect()
}

/// Refusals of each kind the guest provokes.
const EACH: usize = 1000;

#[test]
fn refused_lease_reports_are_logged_at_a_bounded_rate_per_vm_and_all_counted() {
    let daemon = DaemonProcess::spawn(&[]);
    let vm = daemon
        .socket
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let start = Instant::now();
    let mut harness = Harness::connect(&daemon.socket, WANTED_FEATURES);
    let donated = harness.donate_all();
    // A page of the pool that was never leased.
    let (not_leased, _) = donated[0][0];
    let id = CENALLOC_DRIVER_ID_FIRST;
    // One command a chain (a batch stops at its first failure), 128 chains
    // a round.
    let mut provoked = 0;
    while provoked < 2 * EACH {
        let cmds: Vec<Cmd> = (0..128)
            .map(|i| {
                if (provoked + i) % 2 == 0 {
                    lease_return(0, not_leased, 4096)
                } else {
                    leased_map(id, not_leased)
                }
            })
            .collect();
        let chains: Vec<Chain> = cmds
            .iter()
            .map(|cmd| {
                Chain::simple(
                    encode_batch(std::slice::from_ref(cmd)),
                    response_len(std::slice::from_ref(cmd)),
                )
            })
            .collect();
        for (cmd, used) in cmds.iter().zip(harness.submit(&chains)) {
            let answer = decode_batch(std::slice::from_ref(cmd), &used);
            assert_eq!(answer.status, -libc::EPERM, "{answer:?}");
        }
        provoked += 128;
    }
    let provoked_each = provoked / 2;
    let elapsed = start.elapsed();

    let stats = harness.run(Cmd::stats(1 << 20));
    let json: serde_json::Value = serde_json::from_slice(&stats.ok().payload).unwrap();
    let log = daemon.log_text();
    let lines = refusal_lines(&log);
    let bound = GUEST_LOG_BURST as u64 + GUEST_LOG_PER_SEC as u64 * (elapsed.as_secs() + 1);
    assert!(
        lines.len() as u64 <= bound,
        "{} refusal lines in {elapsed:?} for {} refusals, at most {bound} allowed",
        lines.len(),
        2 * provoked_each
    );
    assert!(!lines.is_empty(), "no refusal was logged at all");
    for line in &lines {
        assert!(line.contains(&format!("VM {vm}:")), "no VM name: {line}");
    }
    assert_eq!(json["device"]["lease_returns_refused"], provoked_each);
    assert_eq!(json["device"]["leased_maps_refused"], provoked_each);

    // What was left out is said, once the VM goes (or the next line is
    // allowed): every refusal is either a line or counted as suppressed.
    drop(harness);
    let total = 2 * provoked_each as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = daemon.log_text();
        let lines = refusal_lines(&log).len() as u64;
        let suppressed: u64 = log
            .lines()
            .filter(|l| l.contains(&format!("VM {vm}:")))
            .filter_map(|l| l.split_once("[suppressed: "))
            .map(|(_, rest)| {
                let (count, _) = rest.split_once(']').unwrap();
                count.parse::<u64>().unwrap()
            })
            .sum();
        if lines + suppressed == total {
            eprintln!("{lines} refusal lines, {suppressed} suppressed, in {elapsed:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{lines} lines + {suppressed} suppressed, {total} refusals:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of `log` about a stopped control queue.
fn broken_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("control queue stopped"))
        .count()
}

#[test]
fn a_guest_that_breaks_its_ring_after_every_restart_is_logged_at_a_bounded_rate() {
    let daemon = DaemonProcess::spawn(&[]);
    let vm = daemon
        .socket
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let start = Instant::now();
    let mut harness = Harness::connect(&daemon.socket, WANTED_FEATURES);
    harness.donate_all();
    // Break the ring (an avail index past the queue size), let the device
    // see it, have the front-end restart the ring (as after a device
    // reset), again and again.
    let cycles = 40;
    for _ in 0..cycles {
        let used = harness.control_used_idx();
        harness.write_avail_idx(0, used.wrapping_add(QUEUE_SIZE + 7));
        std::thread::sleep(Duration::from_millis(50));
        let bases = harness.stop_queues();
        harness.resync_control(bases[0]);
        harness.start_queues(&bases);
    }
    let elapsed = start.elapsed();
    // Still served after all that.
    harness.run(Cmd::create(4096, 0)).ok();
    let log = daemon.log_text();
    let lines = broken_lines(&log);
    let bound = GUEST_LOG_BURST as u64 + GUEST_LOG_PER_SEC as u64 * (elapsed.as_secs() + 1);
    assert!(
        lines as u64 <= bound,
        "{lines} 'queue stopped' lines in {elapsed:?} for {cycles} breaks, at most {bound} allowed"
    );
    assert!(lines > 0, "no break was logged:\n{log}");
    for line in log.lines().filter(|l| l.contains("control queue stopped")) {
        assert!(line.contains(&format!("VM {vm}:")), "no VM name: {line}");
    }
    // Lines were left out and counted: with the next line let through
    // after a refill, or when the VM goes.
    drop(harness);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = daemon.log_text();
        let suppressed: usize = log
            .lines()
            .filter(|l| l.contains(&format!("VM {vm}:")))
            .filter_map(|l| l.split_once("[suppressed: "))
            .map(|(_, rest)| rest.split_once(']').unwrap().0.parse::<usize>().unwrap())
            .sum();
        if suppressed > 0 {
            eprintln!("{lines} 'queue stopped' lines, {suppressed} suppressed, in {elapsed:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no suppressed count:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
