//! The device a front-end talks to, run a second time in the test's own
//! process without any crash (tests/supervise.rs, tests/fdstore.rs): every
//! answer of the daemon under kills must be the twin's, byte for byte.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use cenalloc::protocol::*;
use vm_memory::ByteValued;

use crate::common::*;

/// A small deterministic generator (xorshift64*), so that a failing run
/// can be repeated from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The device the front-end talks to, and the same device run in this
/// process without any crash: every answer must be the same.
pub struct Twin {
    pub reference: cenalloc::device::Device,
    pub mem: vm_memory::GuestMemoryMmap,
    /// Live buffers: (id, attachment id).
    pub buffers: Vec<(u32, u32)>,
    pub batches: u64,
    pub slowest: Duration,
    /// Driver ids of leased maps handed out so far, and those mapped.
    pub driver_ids: u32,
    pub leased_maps: u32,
    /// Ranges given to the pool at run time (POOL_ADD), and those taken.
    pub pool_adds: u32,
    pub pool_adds_taken: u32,
}

impl Twin {
    pub fn new(args: &[&str]) -> Twin {
        use clap::Parser;
        let mut argv = vec!["cenallocd", "--socket-path", "vm1=/nonexistent/vm1.sock"];
        argv.extend_from_slice(args);
        let config = cenalloc::config::Config::build(
            cenalloc::config::Args::try_parse_from(argv).unwrap(),
            &[],
        )
        .unwrap();
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[
            (vm_memory::GuestAddress(0), LOW_RAM as usize),
            (vm_memory::GuestAddress(HIGH_BASE), HIGH_RAM as usize),
        ])
        .unwrap();
        Twin {
            reference: cenalloc::device::Device::new(config.vms[0].device.clone()).unwrap(),
            mem,
            buffers: Vec::new(),
            batches: 0,
            slowest: Duration::ZERO,
            driver_ids: 0,
            leased_maps: 0,
            pool_adds: 0,
            pool_adds_taken: 0,
        }
    }

    /// The twin of the holder's device of `harness`, both given the
    /// harness's pool donations.
    pub fn donated(harness: &mut Harness) -> Twin {
        let mut twin = Twin::new(&["--pool", "system:4M"]);
        for (pool, ranges) in harness.donate_all().iter().enumerate() {
            let cmd = Cmd::pool_add(pool as u32, ranges);
            let request = encode_batch(std::slice::from_ref(&cmd));
            twin.reference
                .execute_batch(&twin.mem, &request, response_len(&[cmd]) as usize);
        }
        twin
    }

    /// Runs `cmds` on both; their answers must be byte for byte the same,
    /// and every chain posted must have exactly one used entry.
    pub fn batch(&mut self, harness: &mut Harness, cmds: &[Cmd]) -> BatchAnswer {
        let request = encode_batch(cmds);
        let writable = response_len(cmds);
        let expected = self
            .reference
            .execute_batch(&self.mem, &request, writable as usize);
        let start = Instant::now();
        let used = harness
            .submit(&[Chain::simple(request, writable)])
            .remove(0);
        self.slowest = self.slowest.max(start.elapsed());
        assert_eq!(
            &used.written[..used.len as usize],
            &expected[..],
            "batch {}: {cmds:?}",
            self.batches
        );
        assert_eq!(harness.control_used_idx(), harness.control_avail_idx());
        self.batches += 1;
        decode_batch(cmds, &used)
    }

    /// One random step of a VM's life.
    pub fn step(&mut self, harness: &mut Harness, rng: &mut Rng) {
        match rng.below(13) {
            // The pool grows at run time, as an elastic pool does: a fresh
            // 64 KiB of low RAM (never given before) each time.
            12 if self.pool_adds < 256 => {
                let start = (64 << 20) + u64::from(self.pool_adds) * 0x10000;
                self.pool_adds += 1;
                let answer = self.batch(harness, &[Cmd::pool_add(0, &[(start, 0x10000)])]);
                if answer.status == 0 {
                    self.pool_adds_taken += 1;
                }
            }
            // A leased map, as the guest driver makes them: LEASE one
            // extent, then LEASED_MAP a buffer with the driver's ids on it.
            10 | 11 => {
                let lease = LeaseReq {
                    allocator_id: 0,
                    count: 1,
                    size: 0x4000,
                };
                let answer = self.batch(
                    harness,
                    &[Cmd::new(CENALLOC_CMD_LEASE, lease.as_slice(), 32)],
                );
                let resp: LeaseResp = answer.answers[0].get();
                if answer.status != 0 || resp.num_extents == 0 {
                    return;
                }
                let range: Range = answer.answers[0].get_at(8);
                self.driver_ids += 1;
                let id = CENALLOC_DRIVER_ID_FIRST + self.driver_ids;
                let mut types = [0; CENALLOC_MAX_MAP_TYPES];
                types[0] = CENALLOC_MAP_SG;
                let mut map = LeasedMapReq {
                    buffer_id: id,
                    initial_mask: 0,
                    size: range.len,
                    extent: range.addr,
                    map_index: 0,
                    direction: 0,
                    num_attachments: 1,
                    reserved: 0,
                }
                .as_slice()
                .to_vec();
                map.extend_from_slice(
                    LeasedAttach {
                        attach_id: id,
                        mask: CENALLOC_KIND_SYSTEM,
                        map_type: CENALLOC_MAP_SG,
                        num_types: 1,
                        types,
                    }
                    .as_slice(),
                );
                let answer = self.batch(harness, &[Cmd::new(CENALLOC_CMD_LEASED_MAP, &map, 64)]);
                if answer.status == 0 {
                    self.buffers.push((id, id));
                    self.leased_maps += 1;
                }
            }
            0..=3 => {
                let size = 4096 * (1 + rng.below(16));
                let answer = self.batch(
                    harness,
                    &[
                        Cmd::create(size, 0),
                        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
                        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_TO_DEVICE, 16),
                        Cmd::fill(CENALLOC_BATCH_REF, rng.next()),
                    ],
                );
                if answer.status == 0 {
                    let created: CreateResp = answer.answers[0].get();
                    let attached: AttachResp = answer.answers[1].get();
                    self.buffers.push((created.buffer_id, attached.attach_id));
                }
            }
            4..=6 if !self.buffers.is_empty() => {
                let (buffer, _) = self.buffers[rng.below(self.buffers.len() as u64) as usize];
                self.batch(harness, &[Cmd::checksum(buffer)]);
            }
            7..=8 if !self.buffers.is_empty() => {
                let (buffer, attach) = self
                    .buffers
                    .swap_remove(rng.below(self.buffers.len() as u64) as usize);
                self.batch(
                    harness,
                    &[
                        Cmd::unmap(attach, CENALLOC_DIR_TO_DEVICE),
                        Cmd::detach(attach),
                        Cmd::free(buffer),
                    ],
                );
            }
            _ => {
                self.batch(harness, &[Cmd::get_info()]);
            }
        }
    }
}
