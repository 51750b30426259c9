//! The sandbox: a forbidden syscall kills a sandboxed process, Landlock
//! denies files, and the real daemon, sandboxed (seccomp kill, Landlock,
//! and `--user nobody` when the test runs as root), serves several VMs,
//! the control socket and exports, and exits cleanly on SIGTERM.
//!
//! `CENALLOC_TEST_DAEMON_WRAPPER="strace -f -o /tmp/trace"` runs the daemon
//! under a wrapper (with `CENALLOC_TEST_SECCOMP=none`: how the allowlist
//! in src/sandbox.rs was derived).

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cenalloc::control::client::Client;
use cenalloc::protocol::*;
use cenalloc::sandbox::{self, LandlockMode, SandboxConfig, SeccompMode};
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_cenallocd");
const CTL: &str = env!("CARGO_BIN_EXE_cenallocctl");
const CHILD: &str = "CENALLOC_SANDBOX_CHILD";

/// Runs this test binary again, only test `name`, with `CHILD=mode`.
fn run_child(name: &str, mode: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The child's part: enter the sandbox, show that ordinary work goes on,
/// then make a syscall the daemon never needs.
fn sandboxed_child(mode: &str) -> ! {
    let config = SandboxConfig {
        seccomp: match mode {
            "kill" => SeccompMode::Kill,
            "trap" => SeccompMode::Trap,
            _ => SeccompMode::None,
        },
        landlock: LandlockMode::On,
        user: None,
        removable_dirs: Vec::new(),
        readable_dirs: Vec::new(),
    };
    let applied = sandbox::enter(&config).unwrap();
    println!("sandboxed: {applied}");
    // What the daemon does all day still works.
    std::thread::spawn(|| println!("thread: alive"))
        .join()
        .unwrap();
    let page = cenalloc::registry::StatusPage::new().unwrap();
    page.set(cenalloc::registry::Revocation::Freed);
    println!("memfd status page: {}", page.get());
    match std::fs::read("/etc/hostname") {
        Ok(_) => println!("landlock: /etc/hostname readable"),
        Err(e) => println!("landlock: /etc/hostname denied ({e})"),
    }
    std::io::stdout().flush().unwrap();
    // SAFETY: a plain socket(2) call; the descriptor is closed if it exists.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    println!("socket(AF_INET): {fd}");
    std::io::stdout().flush().unwrap();
    std::process::exit(0);
}

#[test]
fn a_forbidden_syscall_kills_a_sandboxed_process() {
    if let Ok(mode) = std::env::var(CHILD) {
        sandboxed_child(&mode);
    }
    let name = "a_forbidden_syscall_kills_a_sandboxed_process";
    let killed = run_child(name, "kill");
    let stdout = String::from_utf8_lossy(&killed.stdout);
    assert!(stdout.contains("thread: alive"), "{stdout}");
    assert!(stdout.contains("memfd status page: 1"), "{stdout}");
    assert!(!stdout.contains("socket(AF_INET)"), "{stdout}");
    assert_eq!(
        killed.status.signal(),
        Some(libc::SIGSYS),
        "{:?}",
        killed.status
    );
    if stdout.contains("landlock fully enforced") {
        assert!(stdout.contains("/etc/hostname denied"), "{stdout}");
    }

    let trapped = run_child(name, "trap");
    assert_eq!(trapped.status.signal(), Some(libc::SIGSYS));

    // Without the seccomp filter the same call goes through.
    let free = run_child(name, "none");
    let stdout = String::from_utf8_lossy(&free.stdout);
    assert!(free.status.success(), "{stdout}");
    assert!(stdout.contains("socket(AF_INET)"), "{stdout}");
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

#[test]
fn the_sandboxed_daemon_serves_several_vms_exports_and_stops_cleanly() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
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
    drop(harness);

    // The daemon's own pid (not a wrapper's).
    let pid = client.hello().unwrap().pid;
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
    assert!(log_text.contains("sandbox: "), "{log_text}");
    if root && nobody.is_some() {
        assert!(log_text.contains("user nobody"), "{log_text}");
    }
    for name in ["vm1.sock", "vm2.sock", "vm3.sock", "control.sock"] {
        assert!(!dir.join(name).exists(), "{name} left behind\n{log_text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
