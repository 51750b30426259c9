//! Checks of the daemon bench's bimodality test
//! (`benches/support/modes.rs`), here so that `cargo test` runs them (the
//! bench has no test harness and CI does not run benches).

#[path = "../benches/support/modes.rs"]
mod modes;

use std::time::Duration;

use modes::modes;

/// `count` samples near each `us` microseconds (a little spread).
fn us_samples(values: &[(u64, usize)]) -> Vec<Duration> {
    let mut out = Vec::new();
    for &(us, count) in values {
        for i in 0..count {
            out.push(Duration::from_nanos(us * 1000 + (i as u64 % 7) * 100));
        }
    }
    out.sort();
    out
}

#[test]
fn two_separate_groups_are_bimodal() {
    let m = modes(&us_samples(&[(15, 600), (100, 400)])).expect("bimodal");
    assert!((m.high_share - 0.4).abs() < 0.01);
    assert!(m.low < Duration::from_micros(20) && m.high > Duration::from_micros(90));
}

#[test]
fn one_group_with_a_tail_is_not() {
    assert!(modes(&us_samples(&[(10, 900), (12, 80), (40, 20)])).is_none());
    assert!(modes(&us_samples(&[(10, 500), (14, 500)])).is_none());
}

#[test]
fn too_few_samples_are_not_judged() {
    assert!(modes(&us_samples(&[(15, 60), (100, 39)])).is_none());
}
