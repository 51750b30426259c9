//! The sandbox, checked where the kernel enforces it:
//!
//! - In child processes of this test binary (a sandbox cannot be left):
//!   a forbidden syscall kills the process from any thread (the main one,
//!   one started before the sandbox, one started by it like the daemon's
//!   signal thread, one started after: seccomp TSYNC); the argument rules
//!   end in SIGSYS (`fork`, `mmap`/`mprotect` with `PROT_EXEC`, a
//!   read-write open of `/proc/self/fd/N`) and `clone3` in ENOSYS; a file
//!   outside the allowed set cannot be opened from any thread (Landlock);
//!   Landlock is refused while another thread runs. Each probe also runs
//!   without seccomp, to show the call itself works.
//! - The real daemon, sandboxed (seccomp kill, Landlock, and `--user
//!   nobody` as root), serves several VMs, the control socket and exports,
//!   and exits cleanly on SIGTERM; `/proc/PID/task/*/status` of every one
//!   of its threads shows seccomp filtering, no new privileges and, as
//!   root, uid and gid nobody, no groups, no capabilities.
//!
//! The children must start single-threaded (Landlock restricts only the
//! thread entering it): this file has its own `main` instead of libtest's,
//! which runs each test on a thread of its own. Name filters (substrings)
//! work as with libtest.
//!
//! `CENALLOC_TEST_DAEMON_WRAPPER="strace -f -o /tmp/trace"` runs the daemon
//! under a wrapper (with `CENALLOC_TEST_SECCOMP=none`: how the allowlist
//! in src/sandbox.rs was derived; the daemon test then fails, as it
//! should, on its seccomp checks).

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cenalloc::control::client::Client;
use cenalloc::protocol::*;
use cenalloc::sandbox::{self, LandlockMode, SandboxConfig, SeccompMode};
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_cenallocd");
const CTL: &str = env!("CARGO_BIN_EXE_cenallocctl");
/// `SECCOMP:THREAD:PROBE` for a child (see [`child`]).
const CHILD: &str = "CENALLOC_SANDBOX_CHILD";
/// A file the child must not be able to open once sandboxed.
const FORBIDDEN: &str = "CENALLOC_SANDBOX_FORBIDDEN";
/// The descriptor of the child's socket for the getsockopt probes.
const PROBE_SOCKET: i32 = 100;

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
    }
    let tests: &[(&str, fn())] = &[
        (
            "a_forbidden_syscall_kills_a_sandboxed_process_from_any_thread",
            a_forbidden_syscall_kills_a_sandboxed_process_from_any_thread,
        ),
        (
            "the_argument_rules_end_in_sigsys_and_clone3_in_enosys",
            the_argument_rules_end_in_sigsys_and_clone3_in_enosys,
        ),
        (
            "no_thread_can_open_a_file_outside_the_allowed_set",
            no_thread_can_open_a_file_outside_the_allowed_set,
        ),
        (
            "landlock_is_refused_while_another_thread_runs",
            landlock_is_refused_while_another_thread_runs,
        ),
        (
            "the_sandboxed_daemon_serves_several_vms_exports_and_stops_cleanly",
            the_sandboxed_daemon_serves_several_vms_exports_and_stops_cleanly,
        ),
    ];
    run_tests(tests)
}

/// libtest's essentials: name filters (`--exact` for whole names,
/// `--skip NAME`), `--list`, `--ignored` (there are no ignored tests), one
/// line per test, a failing status if any test failed. Other options are
/// accepted and ignored.
fn run_tests(tests: &[(&str, fn())]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    let mut filters: Vec<&String> = Vec::new();
    let mut skips: Vec<&String> = Vec::new();
    let mut words = args.iter();
    while let Some(arg) = words.next() {
        if arg == "--skip" {
            skips.extend(words.next());
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let only_ignored = args.iter().any(|a| a == "--ignored");
    let matches = |name: &str, f: &String| {
        if exact {
            name == f.as_str()
        } else {
            name.contains(f.as_str())
        }
    };
    let selected = |name: &str| {
        !only_ignored
            && (filters.is_empty() || filters.iter().any(|f| matches(name, f)))
            && !skips.iter().any(|f| matches(name, f))
    };
    let (mut passed, mut failed) = (0, Vec::new());
    for &(name, test) in tests.iter().filter(|(name, _)| selected(name)) {
        let ok = std::panic::catch_unwind(test).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if ok {
            passed += 1;
        } else {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:\n    {}", failed.join("\n    "));
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The Landlock ABI the running kernel supports (`None`: none, or disabled).
fn kernel_landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query takes no ruleset (null, size 0).
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (abi > 0).then_some(abi)
}

/// Prints a line of the child's report at once (a killed child flushes
/// nothing later).
macro_rules! report {
    ($($arg:tt)*) => {{
        println!($($arg)*);
        std::io::stdout().flush().unwrap();
    }};
}

/// One probe, in the thread it was asked in. Fatal probes print their
/// name first and `survived PROBE` after the call.
fn probe(name: &str) {
    match name {
        // Not in the allowlist at all.
        "socket" => {
            report!("probe socket");
            // SAFETY: a plain socket(2) call.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            report!("survived socket: {fd}");
        }
        // clone without CLONE_THREAD.
        "fork" => {
            report!("probe fork");
            // SAFETY: the child only calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: leaving the forked child at once.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child, status into a local.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            report!("survived fork: {pid}");
        }
        "mmap-exec" => {
            report!("probe mmap-exec");
            // SAFETY: an anonymous private mapping, never used.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            report!("survived mmap-exec: {}", addr != libc::MAP_FAILED);
        }
        "mprotect-exec" => {
            // SAFETY: an anonymous private mapping of one page.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(addr, libc::MAP_FAILED);
            report!("probe mprotect-exec");
            // SAFETY: `addr` is the page mapped above.
            let rc = unsafe { libc::mprotect(addr, 4096, libc::PROT_READ | libc::PROT_EXEC) };
            report!("survived mprotect-exec: {rc}");
        }
        // What an export does, but writable.
        "open-rdwr" => {
            // SAFETY: memfd_create with a NUL-terminated name; the
            // descriptor is leaked (the child exits).
            let memfd = unsafe { libc::memfd_create(c"probe".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(memfd >= 0);
            let path = format!("/proc/self/fd/{memfd}");
            let path = std::ffi::CString::new(path).unwrap();
            report!("probe open-rdwr");
            // SAFETY: a NUL-terminated path; the descriptor is leaked.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            report!("survived open-rdwr: {fd}");
        }
        // getsockopt is allowed at SOL_SOCKET for SO_DOMAIN and SO_TYPE
        // only (vhost's check of a window's channel), on the socket the
        // child made before its sandbox.
        "getsockopt-rcvbuf" | "getsockopt-type" => {
            let option = if name == "getsockopt-type" {
                libc::SO_TYPE
            } else {
                libc::SO_RCVBUF
            };
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            report!("probe {name}");
            // SAFETY: `value` and `len` are locals that outlive the call.
            let rc = unsafe {
                libc::getsockopt(
                    PROBE_SOCKET,
                    libc::SOL_SOCKET,
                    option,
                    std::ptr::addr_of_mut!(value).cast(),
                    &mut len,
                )
            };
            report!("survived {name}: {rc}");
        }
        "clone3" => {
            // SAFETY: clone3 with no arguments creates nothing: ENOSYS
            // under the sandbox, EINVAL outside.
            let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            report!("clone3: {rc} errno {errno}");
        }
        "files" => {
            let path = std::env::var(FORBIDDEN).unwrap();
            match std::fs::read(&path) {
                Ok(_) => report!("files: readable"),
                Err(e) => report!("files: denied ({e})"),
            }
        }
        other => panic!("unknown probe {other}"),
    }
}

/// A child's part: `SECCOMP:THREAD:PROBE`. SECCOMP is kill, trap or
/// none. THREAD is where the probe runs: `main`; `early`, a thread the
/// sandbox starts (the daemon's signal thread); `before`, a thread
/// started before the sandbox (Landlock off, which refuses it); `after`,
/// a thread started after. Ordinary work is shown to go on first.
fn child(spec: &str) -> ! {
    let parts: Vec<&str> = spec.split(':').collect();
    let [seccomp, thread, probe_name] = parts[..] else {
        panic!("bad child spec {spec}");
    };
    let config = SandboxConfig {
        seccomp: match seccomp {
            "kill" => SeccompMode::Kill,
            "trap" => SeccompMode::Trap,
            "none" => SeccompMode::None,
            other => panic!("bad seccomp mode {other}"),
        },
        landlock: if thread == "before" {
            LandlockMode::Off
        } else {
            LandlockMode::On
        },
        user: None,
        removable_dirs: Vec::new(),
        readable_dirs: Vec::new(),
    };
    // A socket for the getsockopt probes (the sandbox forbids making one).
    let (socket, peer) = std::os::unix::net::UnixStream::pair().unwrap();
    // SAFETY: dup2 of a descriptor we own onto a number nothing uses.
    assert_eq!(
        unsafe { libc::dup2(socket.as_raw_fd(), PROBE_SOCKET) },
        PROBE_SOCKET
    );
    std::mem::forget((socket, peer));
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let probe_name = probe_name.to_string();
    let probing = {
        let probe_name = probe_name.clone();
        move || {
            wait.recv().unwrap();
            probe(&probe_name);
        }
    };
    let mut prober = None;
    let mut probing = Some(probing);
    if thread == "before" || thread == "landlock-with-a-thread-running" {
        prober = Some(std::thread::spawn(probing.take().unwrap()));
    }
    if thread == "landlock-with-a-thread-running" {
        let config = SandboxConfig {
            landlock: LandlockMode::On,
            ..config.clone()
        };
        match sandbox::enter(&config, || Ok(())) {
            Ok(applied) => report!("sandboxed: {applied}"),
            Err(e) => report!("refused: {e}"),
        }
        std::process::exit(0);
    }
    let mut early_thread = None;
    let applied = {
        let started = &mut early_thread;
        let probing = probing.take();
        // Where the daemon starts its signal thread: the process's first
        // thread must start there (glibc's set-up at the first thread
        // calls rt_sigaction, which seccomp forbids).
        sandbox::enter(&config, move || {
            *started = Some(match (thread, probing) {
                ("early", Some(probing)) => std::thread::spawn(probing),
                _ => std::thread::spawn(|| ()),
            });
            Ok(())
        })
        .unwrap()
    };
    report!("sandboxed: {applied}");
    if thread == "early" {
        prober = early_thread;
    }
    // What the daemon does all day still works.
    std::thread::spawn(|| report!("thread: alive"))
        .join()
        .unwrap();
    let page = cenalloc::registry::StatusPage::new().unwrap();
    page.set(cenalloc::registry::Revocation::Freed);
    report!("memfd status page: {}", page.get());
    match thread {
        "main" => probe(&probe_name),
        "after" => {
            let name = probe_name.clone();
            std::thread::spawn(move || probe(&name)).join().unwrap();
        }
        "early" | "before" => {
            go.send(()).unwrap();
            prober.take().unwrap().join().unwrap();
        }
        other => panic!("bad thread {other}"),
    }
    std::process::exit(0);
}

/// Runs this test binary as a child with `CHILD=spec`; returns its status
/// and stdout.
fn run_child(spec: &str, forbidden: &Path) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, spec)
        .env(FORBIDDEN, forbidden)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status, format!("{stdout}{stderr}"))
}

/// A readable file of the test's, outside anything the sandbox allows.
fn forbidden_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("cenalloc-forbidden-{}", std::process::id()));
    std::fs::write(&path, b"not for the sandbox").unwrap();
    path
}

/// The child was killed by seccomp during the probe (it printed the probe
/// line and nothing after the call).
fn assert_killed(spec: &str, status: std::process::ExitStatus, out: &str) {
    let probe_name = spec.rsplit(':').next().unwrap();
    assert!(out.contains("memfd status page: 1"), "{spec}: {out}");
    assert!(
        out.contains(&format!("probe {probe_name}")),
        "{spec}: {out}"
    );
    assert!(!out.contains("survived"), "{spec}: {out}");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{spec}: {status:?}\n{out}"
    );
}

fn a_forbidden_syscall_kills_a_sandboxed_process_from_any_thread() {
    let forbidden = forbidden_file();
    for thread in ["main", "early", "before", "after"] {
        let spec = format!("kill:{thread}:socket");
        let (status, out) = run_child(&spec, &forbidden);
        assert_killed(&spec, status, &out);
        assert!(out.contains("thread: alive"), "{spec}: {out}");
    }
    let (status, out) = run_child("trap:main:socket", &forbidden);
    assert_killed("trap:main:socket", status, &out);
    // Without the seccomp filter the same call goes through.
    let (status, out) = run_child("none:main:socket", &forbidden);
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("survived socket"), "{out}");
    let _ = std::fs::remove_file(forbidden);
}

fn the_argument_rules_end_in_sigsys_and_clone3_in_enosys() {
    let forbidden = forbidden_file();
    for probe_name in [
        "fork",
        "mmap-exec",
        "mprotect-exec",
        "open-rdwr",
        "getsockopt-rcvbuf",
    ] {
        let spec = format!("kill:main:{probe_name}");
        let (status, out) = run_child(&spec, &forbidden);
        assert_killed(&spec, status, &out);
        // The call itself works outside the filter.
        let spec = format!("none:main:{probe_name}");
        let (status, out) = run_child(&spec, &forbidden);
        assert!(status.success(), "{spec}: {status:?}\n{out}");
        assert!(
            out.contains(&format!("survived {probe_name}")),
            "{spec}: {out}"
        );
        assert!(
            !out.contains(&format!("survived {probe_name}: -1")),
            "{spec}: {out}"
        );
        assert!(
            !out.contains(&format!("survived {probe_name}: false")),
            "{spec}: {out}"
        );
    }
    // The options vhost asks are allowed.
    let (status, out) = run_child("kill:main:getsockopt-type", &forbidden);
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("survived getsockopt-type: 0"), "{out}");
    let (status, out) = run_child("kill:main:clone3", &forbidden);
    assert!(status.success(), "{status:?}\n{out}");
    assert!(
        out.contains(&format!("clone3: -1 errno {}", libc::ENOSYS)),
        "{out}"
    );
    let (status, out) = run_child("none:main:clone3", &forbidden);
    assert!(status.success(), "{status:?}\n{out}");
    assert!(
        out.contains(&format!("clone3: -1 errno {}", libc::EINVAL)),
        "{out}"
    );
    let _ = std::fs::remove_file(forbidden);
}

fn no_thread_can_open_a_file_outside_the_allowed_set() {
    let forbidden = forbidden_file();
    let Some(abi) = kernel_landlock_abi() else {
        // Nothing to enforce with: the sandbox must say so, not claim it.
        let (status, out) = run_child("kill:main:files", &forbidden);
        assert!(status.success(), "{status:?}\n{out}");
        assert!(out.contains("no landlock"), "{out}");
        eprintln!("this kernel has no Landlock: file access checked for honesty only");
        let _ = std::fs::remove_file(forbidden);
        return;
    };
    for thread in ["main", "early", "after"] {
        let spec = format!("kill:{thread}:files");
        let (status, out) = run_child(&spec, &forbidden);
        assert!(status.success(), "{spec}: {status:?}\n{out}");
        assert!(
            !out.contains("no landlock"),
            "{spec}: the kernel has Landlock ABI {abi}: {out}"
        );
        assert!(out.contains("files: denied"), "{spec}: {out}");
    }
    // The file itself is readable: the denial is the sandbox's.
    let (status, out) = run_child("none:before:files", &forbidden);
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("files: readable"), "{out}");
    let _ = std::fs::remove_file(forbidden);
}

fn landlock_is_refused_while_another_thread_runs() {
    let forbidden = forbidden_file();
    let (status, out) = run_child("kill:landlock-with-a-thread-running:files", &forbidden);
    assert!(status.success(), "{status:?}\n{out}");
    assert!(
        out.contains("refused: landlock: 2 threads are running"),
        "{out}"
    );
    let _ = std::fs::remove_file(forbidden);
}

/// cenallocd with the test's wrapper and seccomp mode, if any.
fn daemon_command(args: &[String]) -> Command {
    let wrapper: Vec<String> = std::env::var("CENALLOC_TEST_DAEMON_WRAPPER")
        .map(|w| w.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(BIN);
            command
        }
        None => Command::new(BIN),
    };
    if let Ok(mode) = std::env::var("CENALLOC_TEST_SECCOMP") {
        command.args(["--seccomp", &mode]);
    }
    command.args(args).env("RUST_LOG", "info");
    command
}

/// Kills the daemon if the test fails before it stops it.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("daemon exited early: {status:?}");
        }
        assert!(Instant::now() < deadline, "socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ctl(control: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(CTL)
        .arg("--socket")
        .arg(control)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// One VM's guest work: buffers of every kind, FILL, CHECKSUM, a frame
/// the host reads back.
fn guest_work(socket: &Path, seed: u64) -> (Harness, u32, Vec<(u64, u64)>) {
    let mut harness = Harness::connect(socket, WANTED_FEATURES);
    harness.donate_all();
    for round in 0..20u64 {
        let (buffer, attachment, _) =
            harness.mapped_buffer(64 << 10, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
        harness.run(Cmd::fill(buffer, seed + round)).ok();
        harness.device_checksum(buffer);
        harness.release_buffer(buffer, attachment);
    }
    let (frame, _, segments) =
        harness.mapped_buffer(64 * 48 * 3, CENALLOC_KIND_CONTIG, &[CENALLOC_MAP_CONTIG]);
    let pixels: Vec<u8> = (0..64 * 48 * 3)
        .map(|i| (i as u64 * seed % 251) as u8)
        .collect();
    harness.ram.write(segments[0].0, &pixels);
    (harness, frame, segments)
}

/// One `Key:\tvalue` line of a /proc status file.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in\n{status}"))
        .trim()
}

/// What the kernel enforces on every thread of the daemon `pid`: seccomp
/// filtering with both filters (the allowlist and clone3's), no new
/// privileges, and after `--user`: that uid and gid, no supplementary
/// groups, no capabilities. Returns the threads' names.
fn check_every_thread(pid: u32, user: Option<&sandbox::User>) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue; // a thread that ended meanwhile
        };
        let name = status_field(&status, "Name").to_string();
        let what = format!("daemon thread {} ({name})", task.display());
        assert_eq!(status_field(&status, "Seccomp"), "2", "{what}\n{status}");
        let filters: u32 = status_field(&status, "Seccomp_filters").parse().unwrap();
        assert!(filters >= 2, "{what}\n{status}");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{what}\n{status}");
        if let Some(user) = user {
            let uid = format!("{0}\t{0}\t{0}\t{0}", user.uid);
            let gid = format!("{0}\t{0}\t{0}\t{0}", user.gid);
            assert_eq!(status_field(&status, "Uid"), uid, "{what}\n{status}");
            assert_eq!(status_field(&status, "Gid"), gid, "{what}\n{status}");
            assert_eq!(status_field(&status, "Groups"), "", "{what}\n{status}");
            for caps in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
                assert_eq!(
                    status_field(&status, caps),
                    "0000000000000000",
                    "{what}: {caps}\n{status}"
                );
            }
        }
        names.push(name);
    }
    names
}

fn the_sandboxed_daemon_serves_several_vms_exports_and_stops_cleanly() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("cenalloc-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> = Vec::new();
    for name in ["vm1", "vm2", "vm3"] {
        args.push("--socket-path".into());
        args.push(format!(
            "{name}={}",
            dir.join(format!("{name}.sock")).display()
        ));
    }
    let control = dir.join("control.sock");
    args.extend([
        "--control-socket".into(),
        control.display().to_string(),
        "--pool".into(),
        "system:4M".into(),
        "--pool".into(),
        "contig32:1M".into(),
    ]);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let nobody = sandbox::lookup_user("nobody").ok();
    assert!(
        !root || nobody.is_some(),
        "running as root without a user nobody"
    );
    if let (true, Some(user)) = (root, &nobody) {
        // The daemon removes its sockets as that user at exit.
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        args.extend(["--user".into(), "nobody".into()]);
    }
    let log = dir.join("daemon.log");
    let mut reaper = Reaper(
        daemon_command(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let child = &mut reaper.0;
    wait_for(&control, child);

    // Two guests at once, a third VM waiting.
    let workers: Vec<_> = [("vm1", 3u64), ("vm2", 5)]
        .into_iter()
        .map(|(name, seed)| {
            let socket = dir.join(format!("{name}.sock"));
            std::thread::spawn(move || guest_work(&socket, seed))
        })
        .collect();
    let guests: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    let (status, out) = ctl(&control, &["vms"]);
    assert_eq!(status, 0, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("connected")).count(),
        2,
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("vm3") && l.contains("waiting")),
        "{out}"
    );
    for command in [
        &["buffers"][..],
        &["allocators"],
        &["stats"],
        &["--json", "stats", "vm2"],
    ] {
        let (status, out) = ctl(&control, command);
        assert_eq!(status, 0, "{command:?}: {out}");
    }

    // Exports under the sandbox: bytes equal guest RAM, PNG from a frame.
    let mut client = Client::connect(&control).unwrap();
    for (index, (harness, frame, segments)) in guests.iter().enumerate() {
        let name = format!("vm{}", index + 1);
        let export = client.export(&name, *frame, false).unwrap();
        let exported = export.read().unwrap();
        let guest = read_buffer(&harness.ram, segments);
        let first_difference = exported.iter().zip(&guest).position(|(a, b)| a != b);
        assert_eq!(
            (exported.len(), first_difference),
            (guest.len(), None),
            "{name}: {:?} {segments:x?}",
            export.info
        );
        let png = dir.join(format!("{name}.png"));
        let (status, out) = ctl(
            &control,
            &[
                "snapshot",
                &name,
                &frame.to_string(),
                "--format",
                "rgb24",
                "--width",
                "64",
                "--height",
                "48",
                "-o",
                png.to_str().unwrap(),
            ],
        );
        assert_eq!(status, 0, "{out}");
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0u8; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        assert_eq!(pixels, guest[..64 * 48 * 3]);
    }

    // A guest leaves and comes back; the daemon is still there.
    drop(guests);
    let (harness, _, _) = guest_work(&dir.join("vm1.sock"), 7);

    // Every thread of the daemon's own pid (not a wrapper's), while a VM
    // is served (its vring worker runs) and a control client is
    // connected.
    let pid = client.hello().unwrap().pid;
    let user = if root { nobody.as_ref() } else { None };
    let threads = check_every_thread(pid, user);
    eprintln!("daemon threads checked: {threads:?}");
    assert!(
        threads.iter().any(|name| name == "signals"),
        "the signal thread was not among {threads:?}"
    );
    assert!(threads.len() >= 5, "{threads:?}");
    drop(harness);
    drop(client);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status:?}\n{log_text}");
    let sandbox_line = log_text
        .lines()
        .find(|line| line.contains("sandbox: "))
        .unwrap_or_else(|| panic!("no sandbox line in\n{log_text}"));
    if root {
        assert!(sandbox_line.contains("user nobody"), "{log_text}");
    }
    if let Some(abi) = kernel_landlock_abi() {
        assert!(
            sandbox_line.contains("landlock fully enforced")
                || sandbox_line.contains("landlock partially enforced"),
            "the kernel has Landlock ABI {abi}, the daemon: {sandbox_line}"
        );
    }
    for name in ["vm1.sock", "vm2.sock", "vm3.sock", "control.sock"] {
        assert!(!dir.join(name).exists(), "{name} left behind\n{log_text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
