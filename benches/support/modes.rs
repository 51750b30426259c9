//! The bimodality test of the daemon bench (`benches/daemon.rs`): whether
//! round-trip latencies fall into two separate groups (the daemon's thread
//! woken from sleep for some round trips and not for others). Its own
//! module so that `cargo test` checks it (`tests/bench_modes.rs` includes
//! this file): the bench itself runs only under `cargo bench`.

use std::time::Duration;

/// Two modes of a bimodal distribution.
pub struct Modes {
    pub low: Duration,
    pub high: Duration,
    /// Fraction of the samples in the high mode.
    pub high_share: f64,
}

/// Bimodality test on sorted samples: a histogram with bins a quarter of
/// an octave wide (between the 1st and the 99th percentile), its highest
/// bin, and the highest bin at least twice as fast or twice as slow. When
/// the emptiest bin between those two holds less than half of the smaller
/// one and each side of it at least 5 % of the samples, the distribution
/// has two modes; each side's median and the slow side's share are
/// reported.
pub fn modes(sorted: &[Duration]) -> Option<Modes> {
    const BINS_PER_OCTAVE: f64 = 4.0;
    let n = sorted.len();
    if n < 100 {
        return None;
    }
    let lo = sorted[n / 100].as_secs_f64().max(1e-9);
    let hi = sorted[n * 99 / 100].as_secs_f64().max(lo);
    let bin_of = |d: Duration| -> usize {
        let x = d.as_secs_f64().clamp(lo, hi);
        ((x / lo).log2() * BINS_PER_OCTAVE) as usize
    };
    let mut hist = vec![0usize; bin_of(sorted[n * 99 / 100]) + 1];
    for &d in sorted {
        hist[bin_of(d)] += 1;
    }
    let peak = (0..hist.len()).max_by_key(|&i| hist[i])?;
    let octave = BINS_PER_OCTAVE as usize;
    let other = (0..hist.len())
        .filter(|&i| i + octave <= peak || i >= peak + octave)
        .max_by_key(|&i| hist[i])?;
    let (a, b) = (peak.min(other), peak.max(other));
    let valley = (a + 1..b).min_by_key(|&i| hist[i])?;
    if hist[valley] * 2 >= hist[a].min(hist[b]) {
        return None;
    }
    let split = sorted.partition_point(|&d| bin_of(d) <= valley);
    if split < n / 20 || n - split < n / 20 {
        return None;
    }
    let (low, high) = sorted.split_at(split);
    Some(Modes {
        low: low[low.len() / 2],
        high: high[high.len() / 2],
        high_share: high.len() as f64 / n as f64,
    })
}
