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

/// `--print-config` builds the configuration, prints it with its share
/// section and binds nothing; a refused configuration exits 2.
#[test]
fn print_config_shows_the_configuration_with_its_share_section() {
    let dir = temp_dir("print-config");
    let file = dir.join("c.toml");
    let config = |group: &str| {
        format!(
            "[[vm]]\nname = \"alpha\"\nsocket = \"{}\"\n[[vm.pool]]\nkind = \"contig\"\nsize = \"32M\"\nshare = true\n\
             [[share_group]]\nname = \"{group}\"\nexporters = [\"alpha\"]\nimporters = [\"beta\"]\n\
             [limits.share]\nwindow = \"64M\"\n",
            dir.join("alpha.sock").display()
        )
    };
    std::fs::write(&file, config("camera")).unwrap();
    let beta = format!("beta={}", dir.join("beta.sock").display());
    let out = Command::new(BIN)
        .args(["--print-config", "-s", &beta, "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let printed: toml::Value = toml::from_str(&stdout).unwrap();
    let vms = printed["vm"].as_array().unwrap();
    assert_eq!(vms[0]["name"].as_str(), Some("beta"));
    assert_eq!(vms[0]["share"]["window"].as_str(), Some("64M"));
    assert_eq!(
        vms[1]["share"]["exporter_groups"][0].as_str(),
        Some("camera")
    );
    assert_eq!(printed["share_group"][0]["name"].as_str(), Some("camera"));
    assert_eq!(
        printed["share"]["unmap_timeout_ms"].as_integer(),
        Some(2000)
    );
    assert!(!dir.join("alpha.sock").exists() && !dir.join("beta.sock").exists());

    std::fs::write(&file, config("Camera")).unwrap();
    let out = Command::new(BIN)
        .args(["--print-config", "-s", &beta, "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[[share_group]] name"), "{stderr}");
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(&dir).ok();
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
        &["-s", "/tmp/x.sock", "--socket-mode", "888"][..],
        &["-s", "/tmp/x.sock", "--seccomp", "sometimes"][..],
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
    // Two VMs of one name, a path and an inherited socket: refused by the
    // name check, before any socket is touched (fd 987 is not even open, so
    // only the message tells the two refusals apart).
    let out = Command::new(BIN)
        .args(["-s", "dup=/tmp/x.sock", "--fd", "dup=987"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("VM name \"dup\" is used twice"), "{stderr}");
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

/// A daemon child that is killed if the test fails before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Daemon {
    fn stop(mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, signal) };
        wait_exit(&mut self.0, "stop")
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cenallocd-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn gid_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().gid()
}

/// A group other than our effective one that we may give files to:
/// nogroup as root (the CI runs as root), else a supplementary group.
fn other_group() -> Option<u32> {
    // SAFETY: getegid and geteuid have no preconditions.
    let (egid, euid) = unsafe { (libc::getegid(), libc::geteuid()) };
    if euid == 0 {
        return Some(65534);
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: `groups` has room for 256 entries.
    let n = unsafe { libc::getgroups(256, groups.as_mut_ptr()) };
    groups.truncate(n.max(0) as usize);
    groups.into_iter().find(|&gid| gid != egid)
}

/// cenallocd on `socket` with extra arguments, under umask `umask`.
fn start_on(socket: &std::path::Path, extra: &[&str], umask: libc::mode_t) -> Daemon {
    let mut command = Command::new(BIN);
    command
        .arg("--socket-path")
        .arg(socket)
        .args(["--pool", "system:1M"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null());
    // SAFETY: umask is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited early");
        assert!(Instant::now() < deadline, "socket never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon(child)
}

#[test]
fn sockets_are_owner_only_even_under_umask_000_unless_told_otherwise() {
    let dir = temp_dir("mode");
    let socket = dir.join("vm.sock");
    let daemon = start_on(&socket, &[], 0);
    assert_eq!(mode_of(&socket), 0o600);
    assert!(daemon.stop(libc::SIGTERM).success());

    // The control socket of a running daemon: owner-only by default too.
    let control = dir.join("control.sock");
    let control_arg = control.to_str().unwrap();
    let daemon = start_on(&socket, &["--control-socket", control_arg], 0);
    assert_eq!(mode_of(&control), 0o600);
    // SAFETY: getegid has no preconditions.
    assert_eq!(gid_of(&control), unsafe { libc::getegid() });
    assert!(daemon.stop(libc::SIGTERM).success());

    // With a group: 0660 and that group, for the VM and the control
    // socket each. The group is one the files would not get anyway.
    if let Some(gid) = other_group() {
        let group = gid.to_string();
        let daemon = start_on(
            &socket,
            &[
                "--socket-group",
                &group,
                "--control-socket",
                control_arg,
                "--control-socket-group",
                &group,
            ],
            0,
        );
        assert_eq!((mode_of(&socket), gid_of(&socket)), (0o660, gid));
        assert_eq!((mode_of(&control), gid_of(&control)), (0o660, gid));
        assert!(daemon.stop(libc::SIGTERM).success());
    } else {
        eprintln!("not root and in no second group: --socket-group cannot be shown");
    }

    let daemon = start_on(&socket, &["--socket-mode", "0640"], 0o077);
    assert_eq!(mode_of(&socket), 0o640);
    let mut harness = Harness::connect(&socket, WANTED_FEATURES);
    harness.run(Cmd::get_info()).ok();
    drop(harness);
    assert!(daemon.stop(libc::SIGTERM).success());
    assert!(!socket.exists());
}

#[test]
fn a_regular_file_or_a_live_socket_is_refused_and_a_stale_socket_replaced() {
    let dir = temp_dir("refuse");
    let socket = dir.join("vm.sock");
    std::fs::write(&socket, b"not a socket").unwrap();
    let out = Command::new(BIN).arg("-s").arg(&socket).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
    std::fs::remove_file(&socket).unwrap();

    let first = start_on(&socket, &[], 0o022);
    let out = Command::new(BIN).arg("-s").arg(&socket).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    // The first daemon still serves its socket.
    let mut harness = Harness::connect(&socket, WANTED_FEATURES);
    harness.run(Cmd::get_info()).ok();
    drop(harness);
    // SIGKILL: the socket file stays behind, stale.
    assert!(!first.stop(libc::SIGKILL).success());
    assert!(socket.exists());
    let second = start_on(&socket, &[], 0o022);
    let mut harness = Harness::connect(&socket, WANTED_FEATURES);
    harness.run(Cmd::get_info()).ok();
    drop(harness);
    assert!(second.stop(libc::SIGTERM).success());
}

#[test]
fn sigterm_removes_only_the_socket_the_daemon_created() {
    let dir = temp_dir("own");
    let socket = dir.join("vm.sock");
    let old = start_on(&socket, &[], 0o022);
    // Someone removes the old daemon's socket and a new daemon takes the
    // path (ext4 may even give the new file the old inode number).
    std::fs::remove_file(&socket).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let new = start_on(&socket, &[], 0o022);
    assert!(old.stop(libc::SIGTERM).success());
    assert!(
        socket.exists(),
        "the old daemon removed the new one's socket"
    );
    let mut harness = Harness::connect(&socket, WANTED_FEATURES);
    harness.run(Cmd::get_info()).ok();
    drop(harness);
    assert!(new.stop(libc::SIGTERM).success());
    assert!(!socket.exists());
}

#[test]
fn socket_activation_names_the_vms_and_the_control_socket() {
    let dir = temp_dir("activation");
    let vm_path = dir.join("guest.sock");
    let control_path = dir.join("control.sock");
    let _ = std::fs::remove_file(&vm_path);
    let _ = std::fs::remove_file(&control_path);
    let vm = UnixListener::bind(&vm_path).unwrap();
    let control = UnixListener::bind(&control_path).unwrap();
    let (vm_fd, control_fd) = (vm.as_raw_fd(), control.as_raw_fd());
    // What systemd does: the sockets at 3 and 4, LISTEN_PID the daemon's
    // own pid (the shell execs the daemon, keeping its pid).
    let mut command = Command::new("/bin/sh");
    command
        .args([
            "-c",
            "LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=guest:control exec \"$0\" --pool system:1M",
            BIN,
        ])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null());
    // SAFETY: fcntl and dup2 are async-signal-safe; the source descriptors
    // are open. Copies out of the way first (the listeners may already sit
    // at 3 or 4), then into place without close-on-exec (dup2 onto the
    // same number would keep the flag).
    unsafe {
        command.pre_exec(move || {
            let vm = libc::fcntl(vm_fd, libc::F_DUPFD, 100);
            let control = libc::fcntl(control_fd, libc::F_DUPFD, 100);
            if vm < 0
                || control < 0
                || libc::dup2(vm, 3) < 0
                || libc::dup2(control, 4) < 0
                || libc::fcntl(3, libc::F_SETFD, 0) < 0
                || libc::fcntl(4, libc::F_SETFD, 0) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(vm);
            libc::close(control);
            Ok(())
        });
    }
    let daemon = Daemon(command.spawn().unwrap());
    let mut harness = Harness::connect(&vm_path, WANTED_FEATURES);
    harness.run(Cmd::create(4096, 0)).ok();
    let out = Command::new(env!("CARGO_BIN_EXE_cenallocctl"))
        .arg("--socket")
        .arg(&control_path)
        .args(["--json", "vms"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(vms[0]["name"], "guest");
    assert_eq!(vms[0]["state"], "connected");
    assert_eq!(vms[0]["buffers"], 1);
    assert_eq!(vms[0]["socket"], "fd 3");
    drop(harness);
    assert!(daemon.stop(libc::SIGTERM).success());
    // The caller's socket files stay.
    assert!(vm_path.exists() && control_path.exists());
}
