//! Replays the committed fuzz corpus through the fuzz harness (the same
//! code the fuzz targets run, `tests/fuzz_harness/mod.rs`): every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`. No fuzz engine
//! is needed. Each input runs on its own thread with a deadline, so a hang
//! (a spinning backend) is a test failure, not a stuck CI.

mod fuzz_harness;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Per-input bound. An input takes milliseconds; the bound is generous
/// for a debug build on a loaded machine, and far below CI's patience.
const DEADLINE: Duration = Duration::from_secs(20);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The inputs of `dirs`; each directory must exist and hold some (a
/// corpus or regression set that went missing is a failure, not a skip).
fn inputs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in dirs {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("fuzz inputs {}: {e}", dir.display()));
        let before = files.len();
        for entry in entries {
            let path = entry.expect("corpus directory entry").path();
            if path.is_file() && !path.file_name().is_some_and(|n| n == "README.md") {
                files.push(path);
            }
        }
        assert!(files.len() > before, "no inputs in {}", dir.display());
    }
    files.sort();
    files
}

/// Runs `run` on every input, each on a thread with [`DEADLINE`]; returns
/// the failures (panics and overruns) as text, and what each input that
/// finished reached, with its file name.
fn replay<R: Send + 'static>(
    files: &[PathBuf],
    run: fn(&[u8]) -> R,
) -> (Vec<String>, Vec<(String, R)>) {
    let mut failures = Vec::new();
    let mut reached = Vec::new();
    let mut slowest = (Duration::ZERO, None);
    for path in files {
        let data = std::fs::read(path).expect("read a corpus input");
        let (done, finished) = mpsc::channel();
        let start = Instant::now();
        let worker = thread::Builder::new()
            .name(format!("fuzz-replay {}", path.display()))
            .spawn(move || {
                let _ = done.send(run(&data));
            })
            .expect("spawn a replay thread");
        match finished.recv_timeout(DEADLINE) {
            Ok(reach) => {
                let _ = worker.join();
                let name = path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                reached.push((name, reach));
                if start.elapsed() > slowest.0 {
                    slowest = (start.elapsed(), Some(path));
                }
            }
            // The sender went away without sending: the input panicked.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let message = match worker.join() {
                    Err(panic) => panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".to_string()),
                    Ok(()) => "finished without reporting".to_string(),
                };
                failures.push(format!("{}: panicked: {message}", path.display()));
            }
            // Still running: the thread is left behind (it cannot be
            // stopped), the test fails.
            Err(mpsc::RecvTimeoutError::Timeout) => failures.push(format!(
                "{}: still running after {:?} (hang)",
                path.display(),
                start.elapsed()
            )),
        }
    }
    if let (elapsed, Some(path)) = slowest {
        eprintln!(
            "{} inputs, slowest {elapsed:?}: {}",
            files.len(),
            path.display()
        );
    }
    (failures, reached)
}

fn replay_target<R: Send + 'static>(target: &str, run: fn(&[u8]) -> R) -> Vec<(String, R)> {
    let dirs = [
        fuzz_dir().join("corpus").join(target),
        fuzz_dir().join("regressions").join(target),
    ];
    let files = inputs(&dirs);
    assert!(
        !files.is_empty(),
        "no corpus for fuzz target {target} under {}",
        fuzz_dir().display()
    );
    let (failures, reached) = replay(&files, run);
    assert!(
        failures.is_empty(),
        "{} of {} inputs of {target} failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    reached
}

/// The inputs whose reach passes `test`, by name.
fn reaching<R>(reached: &[(String, R)], test: impl Fn(&R) -> bool) -> Vec<&str> {
    reached
        .iter()
        .filter(|(_, r)| test(r))
        .map(|(name, _)| name.as_str())
        .collect()
}

#[test]
fn ring_corpus_replays_without_panic_or_hang() {
    let reached = replay_target("ring", fuzz_harness::run_ring);
    let total = reached
        .iter()
        .fold(fuzz_harness::RingReach::default(), |a, (_, r)| {
            fuzz_harness::RingReach {
                allocations: a.allocations + r.allocations,
                maps: a.maps + r.maps,
                migrations: a.migrations + r.migrations,
                pool_bytes_written: a.pool_bytes_written + r.pool_bytes_written,
                used_entries: a.used_entries + r.used_entries,
            }
        });
    eprintln!("ring corpus reach: {total:?}");
    // The oracles must have something to judge: chains answered through
    // the rings, buffers mapped, filled and migrated there.
    assert!(total.used_entries > 0, "{total:?}");
    let mapped_and_filled = reaching(&reached, |r| r.maps > 0 && r.pool_bytes_written > 0);
    let migrated = reaching(&reached, |r| r.migrations > 0);
    eprintln!("mapped and filled: {mapped_and_filled:?}; migrated: {migrated:?}");
    assert!(
        !mapped_and_filled.is_empty() && !migrated.is_empty(),
        "no ring input maps, fills and migrates a buffer: {total:?}"
    );
}

#[test]
fn batch_corpus_replays_without_panic_or_hang() {
    let reached = replay_target("batch", fuzz_harness::run_batch);
    let total = reached
        .iter()
        .fold(fuzz_harness::BatchReach::default(), |a, (_, r)| {
            fuzz_harness::BatchReach {
                allocations: a.allocations + r.allocations,
                migrations: a.migrations + r.migrations,
                leased_maps: a.leased_maps + r.leased_maps,
                unchanged_checked: a.unchanged_checked + r.unchanged_checked,
                share_commands: a.share_commands + r.share_commands,
                linked: fuzz_harness::ShareReach {
                    shared: a.linked.shared + r.linked.shared,
                    imported: a.linked.imported + r.linked.imported,
                    windows: a.linked.windows + r.linked.windows,
                },
            }
        });
    eprintln!("batch corpus reach: {total:?}");
    let migrated = reaching(&reached, |r| r.migrations > 0);
    eprintln!("migrated: {migrated:?}");
    assert!(
        !migrated.is_empty(),
        "no batch input migrates a buffer: {total:?}"
    );
    assert!(total.allocations > 0 && total.leased_maps > 0, "{total:?}");
    assert!(total.unchanged_checked > 0, "{total:?}");
    // Every share opcode with its sized payload (refused as unknown until
    // the device serves them: the did-nothing oracle judges them).
    assert!(total.share_commands >= 5, "{total:?}");
    // On the device that may share: an input shares, imports, and maps
    // windows both ways.
    let sharing = reaching(&reached, |r| {
        r.linked.shared > 0 && r.linked.imported > 0 && r.linked.windows >= 2
    });
    eprintln!("shares, imports and maps windows: {sharing:?}");
    assert!(!sharing.is_empty(), "{total:?}");
}

/// The committed seed inputs are what the harness builds (so they mean
/// what their names say), and the encoder that writes them is exact: each
/// decodes to the case it was built from. `CENALLOC_WRITE_SEEDS=1` writes
/// them (after a change of the harness's input types).
#[test]
fn the_seed_inputs_are_committed_and_decode_as_built() {
    let seeds = fuzz_harness::seeds();
    assert!(seeds.len() >= 3);
    let write = std::env::var_os("CENALLOC_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds {
        let path = fuzz_dir().join("corpus").join(target).join(name);
        if write {
            std::fs::write(&path, &bytes).expect("write a seed input");
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (CENALLOC_WRITE_SEEDS=1 writes it)", path.display())
        });
        assert!(
            committed == bytes,
            "{} differs from the seed the harness builds (CENALLOC_WRITE_SEEDS=1 rewrites it)",
            path.display()
        );
    }
    assert!(fuzz_harness::encoder_round_trips() > 500);
}
