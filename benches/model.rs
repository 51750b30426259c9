//! Benchmarks of the buffer model.
//!
//! - `lifecycle`: create → attach ×2 → map → unmap → detach ×2 → free of a
//!   4 KiB buffer on the default layout (target: ≥ 1,000,000 cycles/s).
//! - `alloc_free/<allocator>/<live>`: one free of a random live buffer plus
//!   one allocation of a random size (1..=16 pages), with 1k, 10k and 100k
//!   buffers live in a fragmented allocator (target: cost per op within 2×
//!   across the range).
//!
//! Times are the benchmark thread's CPU time, not wall time: the build
//! machine is shared, and preemption by other processes would otherwise
//! dominate the figures.

use std::hint::black_box;

use cenalloc::model::{
    kinds, Allocator, ContiguousAllocator, Direction, MappingType, Pool, PoolConfig,
    ScatterAllocator, Segment, PAGE_SIZE,
};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Times by the CPU time of the benchmark thread
/// (`CLOCK_THREAD_CPUTIME_ID`), in nanoseconds, so that other processes on
/// a shared machine do not count; reported like wall time.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call; CLOCK_THREAD_CPUTIME_ID is supported by Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL_TIME: WallTime = WallTime;
        WALL_TIME.formatter()
    }
}

const GIB: u64 = 1 << 30;

fn lifecycle(c: &mut Criterion<ThreadCpuTime>) {
    let mut pool = Pool::new(PoolConfig::default_layout()).expect("default layout");
    pool.add_region(0, 8 * GIB, GIB).expect("system region");
    pool.add_region(1, GIB, 256 << 20).expect("dma32 region");
    pool.add_region(2, 16 * GIB, GIB).expect("contig region");
    pool.add_region(3, 2 * GIB, 256 << 20)
        .expect("contig32 region");
    // Some live buffers so the maps are not empty.
    for _ in 0..1000 {
        let b = pool.create(PAGE_SIZE, 0, 0).expect("create");
        let a = pool
            .attach(b.id, kinds::SYSTEM, &[MappingType::ScatterGather])
            .expect("attach");
        pool.map(a.id, Direction::Bidirectional).expect("map");
    }
    let types = [MappingType::Contiguous, MappingType::ScatterGather];
    let mut group = c.benchmark_group("lifecycle");
    group.throughput(Throughput::Elements(1));
    group.bench_function("4k_buffer", |bench| {
        bench.iter(|| {
            let b = pool.create(PAGE_SIZE, 0, 0).expect("create").id;
            let a1 = pool
                .attach(b, kinds::SYSTEM | kinds::DMA32, &types)
                .expect("attach");
            let a2 = pool.attach(b, kinds::ANY, &types).expect("attach");
            let mapped = pool.map(a1.id, Direction::ToDevice).expect("map");
            black_box(&mapped);
            pool.unmap(a1.id, Direction::ToDevice).expect("unmap");
            pool.detach(a2.id).expect("detach");
            pool.detach(a1.id).expect("detach");
            pool.free(b).expect("free");
        })
    });
    group.finish();
}

/// xorshift64*: deterministic sizes and picks without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pages(&mut self) -> u64 {
        (self.next() % 16 + 1) * PAGE_SIZE
    }
}

/// An allocator with `live` buffers of random sizes and about as many free
/// holes between them: 2 × `live` buffers fill the region, every other one
/// is freed, then a churn of random frees and allocations mixes the rest.
fn fragmented(
    mut allocator: Box<dyn Allocator>,
    live: usize,
    rng: &mut Rng,
) -> (Box<dyn Allocator>, Vec<Vec<Segment>>) {
    let sizes: Vec<u64> = (0..2 * live).map(|_| rng.pages()).collect();
    let region = (sizes.iter().sum::<u64>() + 64 * PAGE_SIZE).next_multiple_of(2 << 20);
    allocator.add_region(1 << 40, region).expect("region");
    let mut all: Vec<Vec<Segment>> = sizes
        .iter()
        .map(|&size| allocator.alloc(size, false).expect("room"))
        .collect();
    let mut buffers = Vec::with_capacity(live);
    for (i, segments) in all.drain(..).enumerate() {
        if i % 2 == 0 {
            allocator.free(&segments);
        } else {
            buffers.push(segments);
        }
    }
    for _ in 0..live {
        churn(allocator.as_mut(), &mut buffers, rng);
    }
    (allocator, buffers)
}

/// Frees a random live buffer and allocates a random size in its place
/// (keeps the old one if nothing fits, which the fragmentation makes rare).
fn churn(allocator: &mut dyn Allocator, buffers: &mut [Vec<Segment>], rng: &mut Rng) {
    let i = (rng.next() % buffers.len() as u64) as usize;
    allocator.free(&buffers[i]);
    let size = rng.pages();
    match allocator.alloc(size, false) {
        Some(segments) => buffers[i] = segments,
        None => {
            let again = allocator.alloc(buffers[i].iter().map(|s| s.len).sum(), false);
            buffers[i] = again.expect("its own space is free again");
        }
    }
}

fn alloc_free(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("alloc_free");
    // One iteration = one free + one alloc.
    group.throughput(Throughput::Elements(2));
    for live in [1_000usize, 10_000, 100_000] {
        for name in ["contiguous", "scatter"] {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ live as u64);
            let allocator: Box<dyn Allocator> = match name {
                "contiguous" => Box::new(ContiguousAllocator::new(u64::MAX, PAGE_SIZE, PAGE_SIZE)),
                _ => Box::new(ScatterAllocator::new(u64::MAX, PAGE_SIZE)),
            };
            let (mut allocator, mut buffers) = fragmented(allocator, live, &mut rng);
            eprintln!(
                "{name} {live} live: {} free extents, fragmentation {}‰",
                allocator.free_extents(),
                allocator.fragmentation_permille()
            );
            group.bench_function(BenchmarkId::new(name, live), |bench| {
                bench.iter(|| churn(allocator.as_mut(), &mut buffers, &mut rng))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = lifecycle, alloc_free
}
criterion_main!(benches);
