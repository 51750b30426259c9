//! The `cenallocd` binary: QEMU's backend conventions, usage errors, a real
//! front-end served by the process, clean exit on SIGTERM/SIGINT.

mod common;

use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cenalloc::protocol::*;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_cenallocd");

#[test]
fn prints_config_size_and_capabilities() {
    let out = Command::new(BIN)
        .arg("--print-config-size")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        size_of::<Config>().to_string()
    );

    let out = Command::new(BIN)
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["type"], "cenalloc");
    assert_eq!(json["virtio-id"], 37);
}

/// The hostile-host options exist in test builds only (cargo feature
/// fault-injection); a normal build refuses them as unknown.
#[test]
fn fault_options_exist_only_in_fault_injection_builds() {
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let out = run(&["--print-config-size", "--fault", "map-type"]);
    if cfg!(feature = "fault-injection") {
        assert!(out.status.success(), "{out:?}");
        let bad = run(&["--print-config-size", "--fault", "sideways"]);
        assert_eq!(bad.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown fault"));
    } else {
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--fault"));
        let out = run(&["--print-config-size", "--fault-file", "/tmp/x"]);
        assert_eq!(out.status.code(), Some(2));
    }
}

#[test]
fn bad_arguments_exit_with_status_2_and_a_message() {
    for args in [
        &[][..],
        &["--socket-path"][..],
        &["--bogus"][..],
        &["-s", "/tmp/x.sock", "--pool", "nosuchkind:1M"][..],
        &["-s", "/tmp/x.sock", "--pool", "contig:12Q"][..],
        &["-s", "/tmp/x.sock", "--fd", "3"][..],
        &["--fd", "-1"][..],
        &[
            "-s",
            "/tmp/x.sock",
            "--config",
            "/nonexistent/cenalloc.toml",
        ][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_front_ends_in_turn_and_exits_cleanly_on_sigterm() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let socket = std::env::temp_dir().join(format!(
            "cenallocd-cli-{}-{signal}.sock",
            std::process::id()
        ));
        let mut child = Command::new(BIN)
            .args([
                "--socket-path",
                socket.to_str().unwrap(),
                "--pool",
                "system:16M",
                "--pool",
                "contig32:8M",
            ])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&socket);
        for round in 0..2 {
            let mut harness = Harness::connect(&socket, WANTED_FEATURES);
            assert_eq!(harness.config.num_pools, 2);
            let info: InfoResp = harness.run(Cmd::get_info()).get();
            assert_eq!(info.num_buffers, 0, "round {round}: state leaked");
            harness.donate_all();
            let answer = harness.batch(&[
                Cmd::create(8192, 0),
                Cmd::attach(
                    CENALLOC_BATCH_REF,
                    CENALLOC_KIND_CONTIG_DMA32,
                    &[CENALLOC_MAP_CONTIG],
                ),
                Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 1),
            ]);
            assert_eq!(answer.status, 0, "{answer:?}");
        }
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "daemon ignored signal {signal}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
        assert!(!socket.exists(), "socket left behind");
    }
}

/// cenallocd with `args`, inheriting `fd` at the same number (the test
/// process keeps its copy close-on-exec for every other child).
fn command_with_fd(fd: RawFd, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env("RUST_LOG", "warn");
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls fcntl, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_front_ends_on_an_inherited_listening_fd() {
    let socket = std::env::temp_dir().join(format!("cenallocd-cli-fd-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap();
    // Non-blocking on purpose: the daemon must make accept() wait.
    listener.set_nonblocking(true).unwrap();
    let fd = listener.as_raw_fd();
    let fd_text = fd.to_string();
    let mut child = command_with_fd(fd, &["--fd", &fd_text, "--pool", "system:16M"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for round in 0..2 {
        let mut harness = Harness::connect(&socket, WANTED_FEATURES);
        assert_eq!(harness.config.num_pools, 1);
        let info: InfoResp = harness.run(Cmd::get_info()).get();
        assert_eq!(info.num_buffers, 0, "round {round}: state leaked");
        harness.donate_all();
        let answer = harness.batch(&[
            Cmd::create(8192, 0),
            Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
            Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_BIDIRECTIONAL, 2),
        ]);
        assert_eq!(answer.status, 0, "round {round}: {answer:?}");
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, "SIGTERM");
    assert!(status.success(), "{status:?}");
    // The socket file is the caller's: the daemon leaves it alone.
    assert!(socket.exists(), "daemon removed the caller's socket");
    drop(listener);
    std::fs::remove_file(&socket).unwrap();
}

#[test]
fn an_fd_that_is_not_a_listening_unix_socket_is_a_usage_error() {
    let file = std::fs::File::open(BIN).unwrap();
    let (connected, _peer) = UnixStream::pair().unwrap();
    let datagram = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for (fd, expected) in [
        (file.as_raw_fd(), "not a socket"),
        (connected.as_raw_fd(), "not listening"),
        (datagram.as_raw_fd(), "not a unix stream socket"),
    ] {
        let fd_text = fd.to_string();
        let out = command_with_fd(fd, &["--fd", &fd_text]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // A number that is not open at all in the daemon.
    let out = Command::new(BIN).args(["--fd", "987"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--fd 987"), "{stderr}");
}
