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
/// the failures (panics and overruns) as text.
fn replay(files: &[PathBuf], run: fn(&[u8])) -> Vec<String> {
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, None);
    for path in files {
        let data = std::fs::read(path).expect("read a corpus input");
        let (done, finished) = mpsc::channel();
        let start = Instant::now();
        let worker = thread::Builder::new()
            .name(format!("fuzz-replay {}", path.display()))
            .spawn(move || {
                run(&data);
                let _ = done.send(());
            })
            .expect("spawn a replay thread");
        match finished.recv_timeout(DEADLINE) {
            Ok(()) => {
                let _ = worker.join();
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
    failures
}

fn replay_target(target: &str, run: fn(&[u8])) {
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
    let failures = replay(&files, run);
    assert!(
        failures.is_empty(),
        "{} of {} inputs of {target} failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn run_ring(data: &[u8]) {
    fuzz_harness::run_ring(data);
}

fn run_batch(data: &[u8]) {
    fuzz_harness::run_batch(data);
}

#[test]
fn ring_corpus_replays_without_panic_or_hang() {
    replay_target("ring", run_ring);
}

#[test]
fn batch_corpus_replays_without_panic_or_hang() {
    replay_target("batch", run_batch);
}
