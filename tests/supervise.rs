//! `cenallocd --supervise` (issue 16): the holder keeps the front-end's
//! connection while the serving process is killed and restarted, replays
//! the vhost-user session into the new one and re-sends the request that
//! was not answered; the new process takes the device (buffers, ring
//! positions) over from its journal. Driven against the real binary as a
//! vhost-user front-end, answers compared with a crash-free twin
//! (tests/common/twin.rs); the serving process is found as the holder's
//! child in /proc. The holder's own death under systemd: tests/fdstore.rs.

mod common;
#[path = "common/relayed.rs"]
mod relayed;
#[path = "common/twin.rs"]
mod twin;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cenalloc::holder::frame::{Frame, FLAG_REPLY};
use cenalloc::holder::frame::{FRAME_TIMEOUT, HEADER_LEN};
use cenalloc::holder::request::{GET_CONFIG, GET_VRING_BASE, SET_MEM_TABLE, SET_VRING_KICK};
use cenalloc::protocol::*;
use common::*;
use relayed::*;
use twin::{Rng, Twin};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A holder process, its log in a file; SIGTERM then SIGKILL when dropped.
struct Holder {
    child: Child,
    socket: PathBuf,
    control: PathBuf,
    log: PathBuf,
}

impl Holder {
    fn start(args: &[&str]) -> Holder {
        Self::start_from(Path::new(env!("CARGO_BIN_EXE_cenallocd")), args)
    }

    /// A holder started from the binary at `binary`.
    fn start_from(binary: &Path, args: &[&str]) -> Holder {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("cenallocd-sup-{}-{n}", std::process::id()));
        let socket = base.with_extension("sock");
        let control = base.with_extension("control.sock");
        let log = base.with_extension("log");
        let mut command = Command::new(binary);
        command
            .arg("--supervise")
            .arg("--socket-path")
            .arg(format!("vm1={}", socket.display()))
            .arg("--control-socket")
            .arg(&control)
            .args(["--pool", "system:4M"])
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(File::create(&log).unwrap());
        // A binary this test just copied (the upgrade test) is busy while
        // a child forked meanwhile by another test still has the copy's
        // descriptor, until its exec: ETXTBSY, for a moment.
        let mut tries = 0;
        let child = loop {
            match command.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                spawned => break spawned.unwrap(),
            }
        };
        let holder = Holder {
            child,
            socket,
            control,
            log,
        };
        // The socket file exists from its bind, before its listen (and its
        // mode): the holder logs its start once every socket listens.
        holder.wait_for(
            || holder.socket.exists() && holder.log_text().contains(" VMs, private sockets in "),
            "the holder never started listening",
        );
        holder
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, mut done: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !done() {
            assert!(Instant::now() < deadline, "{what}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The holder's living child (not a zombie), if any.
    fn serving_pid(&self) -> Option<i32> {
        living_children(self.pid()).into_iter().next()
    }

    /// Waits for a serving process other than `old`.
    fn serving_pid_after(&self, old: Option<i32>) -> i32 {
        let mut found = None;
        self.wait_for(
            || {
                found = self.serving_pid().filter(|pid| Some(*pid) != old);
                found.is_some()
            },
            "no (new) serving process",
        );
        found.unwrap()
    }

    /// Waits for a serving process other than `old` that runs its own
    /// program (exec'd: before it, the holder's fork runs the holder's).
    fn exec_serving_pid_after(&self, old: Option<i32>) -> i32 {
        let mut found = None;
        self.wait_for(
            || {
                found = self.serving_pid().filter(|pid| {
                    Some(*pid) != old
                        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                            cmdline.split(|b| *b == 0).any(|a| a == b"--restarted")
                        })
                });
                found.is_some()
            },
            "no (new) serving process that runs its program",
        );
        found.unwrap()
    }

    /// Waits until the VM's relay thread sleeps (in poll: whatever the
    /// front-end sent before has been relayed; a frame arriving makes it
    /// runnable at once, in the sender's write).
    fn wait_relay_idle(&self) {
        let tasks = format!("/proc/{}/task", self.pid());
        self.wait_for(
            || {
                std::fs::read_dir(&tasks).unwrap().flatten().any(|task| {
                    let comm =
                        std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                    let stat =
                        std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                    comm.trim() == "relay-vm1"
                        && stat
                            .rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
                })
            },
            "the relay thread never went back to sleep",
        );
    }

    /// Open descriptors of the holder.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// The holder's private directory, from its log.
    fn private_dir(&self) -> PathBuf {
        let log = self.log_text();
        let line = log
            .lines()
            .find_map(|line| line.split_once("private sockets in ").map(|(_, dir)| dir))
            .unwrap_or_else(|| panic!("no private directory logged:\n{log}"));
        PathBuf::from(line.trim())
    }

    /// SIGTERM; waits for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the holder did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("holder log:\n{}", self.log_text());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// What the holder's descriptors are.
fn fd_targets(holder: &Holder) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(format!("/proc/{}/fd", holder.pid()))
        .unwrap()
        .flatten()
        .map(|fd| {
            (
                fd.file_name().to_string_lossy().into_owned(),
                std::fs::read_link(fd.path()).unwrap_or_default(),
            )
        })
        .collect()
}

/// Kills the serving process with SIGKILL; returns the next one's pid.
fn kill_serving(holder: &Holder) -> i32 {
    let pid = holder.serving_pid_after(None);
    signal(pid, libc::SIGKILL);
    holder.serving_pid_after(Some(pid))
}

/// What the device answers the session queries with.
fn answers(harness: &mut Harness) -> (u64, u64, Vec<u8>) {
    let size = std::mem::size_of::<Config>() as u32;
    let features = harness.frontend.get_features().unwrap();
    let protocol = harness.frontend.get_protocol_features().unwrap().bits();
    let (_, config) = harness
        .frontend
        .get_config(
            0,
            size,
            VhostUserConfigFlags::WRITABLE,
            &vec![0u8; size as usize],
        )
        .unwrap();
    (features, protocol, config)
}

#[test]
fn a_kill_between_messages_is_not_seen_by_the_front_end() {
    let holder = Holder::start(&[]);
    let (mut harness, raw) = front_end(&holder.socket);
    let before = answers(&mut harness);
    let first = holder.serving_pid_after(None);
    let second = kill_serving(&holder);
    assert_ne!(first, second);
    assert_eq!(answers(&mut harness), before);
    // The memory table, rings, kick and call fds reached the new process:
    // a command on the control ring is answered.
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    assert_eq!(info.version, CENALLOC_PROTOCOL_VERSION);
    assert_open_and_drained(&raw);
    let log = holder.log_text();
    assert!(
        log.contains("session replayed into serving process"),
        "{log}"
    );
    assert!(log.contains("(1 died before it)"), "{log}");
}

/// A supervised daemon whose VM vm1 imports in a share group (its
/// exporter is the daemon's vm2): `-c` a configuration file with the group,
/// a share pool and a 64 MiB window, and vm2's socket. The holder and the
/// file's path, for the test to remove.
fn importer_holder(test: &str) -> (Holder, PathBuf) {
    let base = std::env::temp_dir().join(format!("cenallocd-sup-{test}-{}", std::process::id()));
    let config = base.with_extension("toml");
    let vm2 = base.with_extension("vm2.sock");
    std::fs::write(
        &config,
        r#"
[limits.share]
window = "64M"
[[pool]]
kind = "contig"
size = "4M"
share = true
[[share_group]]
name = "camera"
exporters = ["vm2"]
importers = ["vm1"]
"#,
    )
    .unwrap();
    let holder = Holder::start(&[
        "--socket-path",
        &format!("vm2={}", vm2.display()),
        "-c",
        config.to_str().unwrap(),
    ]);
    (holder, config)
}

/// How many times the log says vm1's back-end request channel was set (a
/// serving process took SET_BACKEND_REQ_FD).
fn channels_set(holder: &Holder) -> usize {
    holder
        .log_text()
        .matches("vm1: back-end request channel set")
        .count()
}

/// A supervised importer (a VM with a window, issue 17) is set up through
/// the holder as QEMU sets it up: SHMEM, BACKEND_REQ, REPLY_ACK and
/// CONFIGURE_MEM_SLOTS, GET_MAX_MEM_SLOTS, the back-end request channel,
/// GET_SHMEM_CONFIG. Its serving process killed, the front-end sees
/// nothing; the next one answers GET_SHMEM_CONFIG the same, and got the
/// channel again from the replay (the holder keeps its end: QEMU's end
/// stays open), and serves the control queue.
#[test]
fn a_supervised_importer_keeps_its_window_and_channel_across_a_kill() {
    use cenalloc::protocol::CENALLOC_SHM_WINDOW;
    use common::shmem::{window_features, Event, QemuShmem};
    use vhost::vhost_user::message::VhostUserProtocolFeatures as Proto;
    const WINDOW: u64 = 64 << 20;

    let (holder, config) = importer_holder("importer");
    let shmem = QemuShmem::new();
    let (mut harness, setup, raw) = front_end_with_window(&holder.socket, &shmem);
    assert_eq!(
        window_features(setup.acked),
        Proto::SHMEM | Proto::BACKEND_REQ | Proto::REPLY_ACK | Proto::CONFIGURE_MEM_SLOTS,
        "{:?}",
        setup.acked
    );
    assert_eq!(setup.regions, vec![(CENALLOC_SHM_WINDOW, WINDOW)]);
    assert!(setup.max_mem_slots.is_some_and(|slots| slots >= 8));
    let channel = setup.channel.expect("the back-end request channel");
    let shmem_config = |harness: &mut Harness| {
        let config = harness.frontend.get_shmem_config().unwrap();
        (
            config.nregions,
            config.memory_sizes[..usize::from(CENALLOC_SHM_WINDOW) + 2].to_vec(),
        )
    };
    let before = shmem_config(&mut harness);
    assert_eq!(
        before.1[usize::from(CENALLOC_SHM_WINDOW)],
        WINDOW,
        "{before:?}"
    );
    let answered = answers(&mut harness);
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    assert_eq!(info.version, CENALLOC_PROTOCOL_VERSION);
    assert_eq!(channels_set(&holder), 1, "{}", holder.log_text());

    let first = holder.serving_pid_after(None);
    let second = kill_serving(&holder);
    assert_ne!(first, second);
    // Queries through the holder: answered by the new serving process once
    // the session is replayed into it.
    assert_eq!(shmem_config(&mut harness), before);
    assert_eq!(answers(&mut harness), answered);
    let log = holder.log_text();
    assert!(
        log.contains("vm1: session replayed into serving process"),
        "{log}"
    );
    // QEMU's end of the channel saw no close (the holder keeps a copy of
    // the back-end's end): none within a while either.
    assert!(
        !shmem.wait_log(Duration::from_millis(300), |log| log
            .iter()
            .any(|event| matches!(event, Event::Closed { .. }))),
        "{:?}",
        shmem.log()
    );
    assert!(!channel.is_closed());
    // The replay handed the new process the channel's back-end end again.
    assert_eq!(channels_set(&holder), 2, "{log}");
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    assert_eq!(info.version, CENALLOC_PROTOCOL_VERSION);
    let created: CreateResp = harness.run(Cmd::create(8192, 0)).ok().get();
    harness.run(Cmd::free(created.buffer_id)).ok();
    assert!(!channel.is_closed());
    assert!(shmem.mappings(CENALLOC_SHM_WINDOW).is_empty());
    assert_open_and_drained(&raw);
    let _ = std::fs::remove_file(config);
}

/// A sealed memfd of `len` bytes, as QEMU's memory backends give.
fn sealed_memfd(len: u64) -> File {
    use std::os::fd::FromRawFd;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a NUL-terminated name; checked, then owned
    // by the File.
    let fd = unsafe { libc::memfd_create(c"supervise-region".as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor owned here.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    assert_eq!(rc, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
    file
}

/// With CONFIGURE_MEM_SLOTS an importer's memory changes one region at a
/// time, ADD_MEM_REG and REM_MEM_REG with NEED_REPLY under REPLY_ACK, as
/// QEMU sends them (a window's commit among them, at the window's guest
/// address). A region added through the holder is in the table of the
/// serving process that replaces a killed one: its REM_MEM_REG, which
/// vhost-user-backend refuses for a region it does not have, is acked 0.
#[test]
fn a_supervised_importers_added_region_is_replayed_into_the_next_process() {
    use cenalloc::protocol::CENALLOC_SHM_WINDOW;
    use common::shmem::QemuShmem;
    use vhost::vhost_user::message::VhostUserHeaderFlag;
    use vhost::VhostUserMemoryRegionInfo;

    let (holder, config) = importer_holder("region");
    let shmem = QemuShmem::new();
    let (mut harness, setup, raw) = front_end_with_window(&holder.socket, &shmem);
    let channel = setup.channel.expect("the back-end request channel");
    let window = shmem.window(CENALLOC_SHM_WINDOW).expect("the window");
    let file = sealed_memfd(2 << 20);
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: shmem.region_gpa(CENALLOC_SHM_WINDOW).unwrap(),
        memory_size: 2 << 20,
        userspace_addr: window.host_addr(),
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    };
    // QEMU's NEED_REPLY: each is acked, 0 for done.
    harness
        .frontend
        .set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    harness.frontend.add_mem_region(&region).unwrap();
    harness.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
    let answered = answers(&mut harness);
    let info: InfoResp = harness.run(Cmd::get_info()).ok().get();
    assert_eq!(info.version, CENALLOC_PROTOCOL_VERSION);

    kill_serving(&holder);
    assert_eq!(answers(&mut harness), answered);
    let log = holder.log_text();
    assert!(
        log.contains("vm1: session replayed into serving process"),
        "{log}"
    );
    harness
        .frontend
        .set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    harness.frontend.remove_mem_region(&region).unwrap();
    harness.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
    // The guest RAM is still there: the control queue is served.
    let created: CreateResp = harness.run(Cmd::create(8192, 0)).ok().get();
    harness.run(Cmd::free(created.buffer_id)).ok();
    assert!(!channel.is_closed());
    assert_open_and_drained(&raw);
    let _ = std::fs::remove_file(config);
}

/// QEMU sends the memory table again while the rings run (a memory
/// hot-plug: cenallocd does not offer CONFIGURE_MEM_SLOTS). A restart
/// after it must replay the table before the rings' SET_VRING_ADDR, which
/// the back-end translates through the table it has then.
#[test]
fn a_memory_table_sent_again_while_the_rings_run_survives_a_restart() {
    let holder = Holder::start(&[]);
    let (mut harness, raw) = front_end(&holder.socket);
    let before = answers(&mut harness);
    harness.donate_all();
    let created: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    harness.resend_memory_table();
    kill_serving(&holder);
    assert_eq!(answers(&mut harness), before);
    let next: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    assert_eq!(next.buffer_id, created.buffer_id + 1);
    assert_open_and_drained(&raw);
}

#[test]
fn a_request_in_flight_is_answered_once_by_the_next_process() {
    let holder = Holder::start(&[]);
    let (mut harness, raw) = front_end(&holder.socket);
    let (_, _, config) = answers(&mut harness);
    let pid = holder.serving_pid_after(None);
    // Stopped, the serving process cannot answer what the holder relays
    // (every thread of it: kill returns before they all stopped).
    signal(pid, libc::SIGSTOP);
    holder.wait_for(
        || all_threads_stopped(pid),
        "the serving process never stopped",
    );
    Frame {
        request: GET_CONFIG,
        flags: 1,
        payload: get_config_payload(config.len()),
        fds: Vec::new(),
    }
    .write(&raw)
    .unwrap();
    holder.wait_relay_idle();
    signal(pid, libc::SIGKILL);
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let reply = Frame::read(&raw).unwrap();
    raw.set_read_timeout(None).unwrap();
    assert_eq!(reply.request, GET_CONFIG);
    assert_ne!(reply.flags & FLAG_REPLY, 0);
    assert_eq!(&reply.payload[12..], &config[..]);
    assert_ne!(holder.serving_pid_after(Some(pid)), pid);
    // Exactly one reply: the next request gets its own (vhost checks the
    // reply's request code), and nothing else waits.
    harness.frontend.get_features().unwrap();
    assert_open_and_drained(&raw);
    let log = holder.log_text();
    assert!(
        log.contains(&format!("then request {GET_CONFIG} again")),
        "{log}"
    );
}

#[test]
fn twenty_restarts_leak_no_descriptor_in_the_holder() {
    let holder = Holder::start(&["--max-restarts", "100", "--restart-window", "1"]);
    let (mut harness, raw) = front_end(&holder.socket);
    let before = answers(&mut harness);
    let mut baseline = 0;
    for cycle in 0..20 {
        kill_serving(&holder);
        // A reply passes only after the replay.
        assert_eq!(answers(&mut harness), before, "cycle {cycle}");
        // A pause and resume between two kills: the record stays compact.
        harness.pause_resume();
        // A request with a reply: everything before it (the rings' kick
        // and call, which have none) has passed the holder.
        harness.frontend.get_features().unwrap();
        if cycle == 1 {
            baseline = holder.fds();
        }
    }
    let after = holder.fds();
    eprintln!("holder fds: {baseline} after 2 restarts, {after} after 20");
    assert!(
        after <= baseline,
        "{baseline} -> {after} descriptors: {:?}",
        fd_targets(&holder)
    );
    assert_open_and_drained(&raw);
}

#[test]
fn sigterm_removes_the_sockets_and_the_serving_process() {
    let mut holder = Holder::start(&[]);
    let (mut harness, _raw) = front_end(&holder.socket);
    answers(&mut harness);
    let serving = holder.serving_pid_after(None);
    let private = holder.private_dir();
    assert!(private.is_dir());
    assert!(holder.control.exists());
    let status = holder.terminate();
    assert!(status.success(), "{status}:\n{}", holder.log_text());
    assert!(!holder.socket.exists(), "VM socket left");
    assert!(!holder.control.exists(), "control socket left");
    assert!(!private.exists(), "private directory left");
    holder.wait_for(
        || {
            std::fs::read_to_string(format!("/proc/{serving}/stat"))
                .map_or(true, |stat| stat.contains(") Z "))
        },
        "the serving process outlived the holder",
    );
}

#[test]
fn too_many_deaths_close_the_front_end_and_stop_the_holder() {
    let mut holder = Holder::start(&["--max-restarts", "2"]);
    let (mut harness, raw) = front_end(&holder.socket);
    answers(&mut harness);
    kill_serving(&holder);
    kill_serving(&holder);
    let last = holder.serving_pid_after(None);
    signal(last, libc::SIGKILL);
    let status = holder.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", holder.log_text());
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!((&raw).read(&mut byte).unwrap(), 0, "connection not closed");
    let log = holder.log_text();
    assert!(log.contains("giving up"), "{log}");
    assert!(!holder.socket.exists());
}

#[test]
fn a_connection_the_server_closes_is_closed_for_the_front_end() {
    let holder = Holder::start(&[]);
    let pid = holder.serving_pid_after(None);
    let raw = UnixStream::connect(&holder.socket).unwrap();
    // No such request: the back-end ends the connection.
    Frame {
        request: 999,
        flags: 1,
        payload: Vec::new(),
        fds: Vec::new(),
    }
    .write(&raw)
    .unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!((&raw).read(&mut byte).unwrap(), 0, "connection not closed");
    // Not a death: the same serving process serves the next front-end.
    let (mut harness, _raw) = front_end(&holder.socket);
    answers(&mut harness);
    assert_eq!(holder.serving_pid(), Some(pid));
}

/// A vhost-user header: `request`, flags 1 (version 1), `size` bytes of
/// payload.
fn header(request: u32, size: usize) -> [u8; HEADER_LEN] {
    let mut bytes = [0u8; HEADER_LEN];
    bytes[0..4].copy_from_slice(&request.to_le_bytes());
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    bytes[8..12].copy_from_slice(&(size as u32).to_le_bytes());
    bytes
}

/// Sends the header of a message for `size` bytes of payload and `fds` in
/// one sendmsg, as QEMU sends a message's fds with its first bytes; the
/// payload is left for later.
fn send_header(raw: &UnixStream, request: u32, size: usize, fds: &[RawFd]) {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let bytes = header(request, size);
    let sent = raw.send_with_fds(&[&bytes[..]], fds).unwrap();
    assert_eq!(sent, HEADER_LEN);
}

/// SET_MEM_TABLE's payload for the harness's guest RAM, and its fds (one
/// per region, owned by the harness's memory).
fn mem_table(harness: &Harness) -> (Vec<u8>, Vec<RawFd>) {
    let regions = harness.ram.regions();
    let mut payload = Vec::new();
    payload.extend_from_slice(&(regions.len() as u32).to_le_bytes());
    payload.extend_from_slice(&0u32.to_le_bytes());
    for region in &regions {
        for word in [
            region.guest_phys_addr,
            region.memory_size,
            region.userspace_addr,
            region.mmap_offset,
        ] {
            payload.extend_from_slice(&word.to_le_bytes());
        }
    }
    (payload, regions.iter().map(|r| r.mmap_handle).collect())
}

/// A front-end that sends a message's header with its fds and then
/// nothing (QEMU sends a message whole: this one is stuck or hostile): the
/// holder does not wait for the body for ever. It closes that connection
/// [`FRAME_TIMEOUT`] after the header, logging why; meanwhile it serves
/// the other VM, through a restart too; it keeps none of the fds (its
/// descriptors are back to what they were before that front-end came);
/// and it serves the VM's next front-end. One that closes after a header
/// leaves nothing either.
#[test]
fn a_front_end_that_stops_inside_a_message_is_closed_in_bounded_time() {
    let vm2 = std::env::temp_dir().join(format!("cenallocd-sup-{}-vm2.sock", std::process::id()));
    let holder = Holder::start(&[
        "--socket-path",
        &format!("vm2={}", vm2.display()),
        "--max-restarts",
        "100",
    ]);
    let (mut other, _other_raw) = front_end(&vm2);
    other.donate_all();
    let first: CreateResp = other.run(Cmd::create(4096, 0)).ok().get();
    // vm1 has no front-end: its relay thread waits in accept.
    let baseline = holder.fds();

    let (mut stuck, raw) = front_end(&holder.socket);
    answers(&mut stuck);
    holder.wait_relay_idle();
    let connected = holder.fds();
    let (payload, fds) = mem_table(&stuck);
    send_header(&raw, SET_MEM_TABLE, payload.len(), &fds);
    let sent = Instant::now();
    holder.wait_for(
        || holder.fds() == connected + fds.len(),
        "the holder never took the header's fds",
    );
    // The other VM is served meanwhile, before and after a restart.
    let next: CreateResp = other.run(Cmd::create(4096, 0)).ok().get();
    assert_eq!(next.buffer_id, first.buffer_id + 1);
    kill_serving(&holder);
    let next: CreateResp = other.run(Cmd::create(4096, 0)).ok().get();
    assert_eq!(next.buffer_id, first.buffer_id + 2);
    assert!(
        sent.elapsed() < FRAME_TIMEOUT,
        "too slow to test the bound: {:?}",
        sent.elapsed()
    );
    // The stuck front-end's connection is closed at the bound.
    raw.set_read_timeout(Some(FRAME_TIMEOUT + Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    let got = (&raw).read(&mut byte);
    let waited = sent.elapsed();
    assert!(
        matches!(got, Ok(0)),
        "the holder still waits for the body after {waited:?} ({got:?}):\n{}",
        holder.log_text()
    );
    assert!(waited >= FRAME_TIMEOUT, "closed after {waited:?}");
    let log = holder.log_text();
    let expected = format!(
        "vm1: front-end: the peer stopped inside a frame (12 of {} bytes",
        HEADER_LEN + payload.len()
    );
    assert!(log.contains(&expected), "{log}");
    holder.wait_for(
        || holder.fds() == baseline,
        "the holder kept descriptors of the closed connection",
    );
    drop((stuck, raw));

    // The next front-end is served; one that closes after a header (with
    // fds) leaves nothing behind.
    let (mut again, raw) = front_end(&holder.socket);
    answers(&mut again);
    let (payload, fds) = mem_table(&again);
    send_header(&raw, SET_MEM_TABLE, payload.len(), &fds);
    drop((again, raw));
    holder.wait_for(
        || holder.fds() == baseline,
        "the holder kept descriptors of a front-end that closed inside a message",
    );
    let (mut last, raw) = front_end(&holder.socket);
    answers(&mut last);
    let next: CreateResp = other.run(Cmd::create(4096, 0)).ok().get();
    assert_eq!(next.buffer_id, first.buffer_id + 3);
    assert_open_and_drained(&raw);
}

/// How long a reply to a request cut by a SIGKILL may take: the restart
/// back-off (100 ms per death in the window, at most 1 s), the start of
/// the next serving process, the replay and the take-over, with room for
/// a loaded machine.
const REPLY_BOUND: Duration = Duration::from_secs(10);

/// When the front-end sends the body of a message cut after its header,
/// relative to the SIGKILL of the serving process.
#[derive(Clone, Copy, Debug)]
enum Body {
    /// At once: the relay end may not even have closed yet.
    AtOnce,
    /// Once the next serving process has started, and 300 ms more: the
    /// holder waited on the partial frame through the death and the
    /// restart.
    AfterTheRestart,
}

/// Sends a message cut after its header, as QEMU could have it cut (its
/// fds with the header), with a SIGKILL of the serving process in the
/// cut: the header and `fds` in one sendmsg; once the holder has them
/// (it took the fds, its relay thread sleeps waiting for the body) the
/// SIGKILL; then `payload`, at once or after the restart (`body`).
fn split_with_kill(
    holder: &Holder,
    raw: &UnixStream,
    request: u32,
    payload: &[u8],
    fds: &[RawFd],
    body: Body,
) {
    let pid = holder.serving_pid_after(None);
    let before = holder.fds();
    send_header(raw, request, payload.len(), fds);
    holder.wait_for(
        || holder.fds() >= before + fds.len(),
        "the holder never took the header's fds",
    );
    holder.wait_relay_idle();
    signal(pid, libc::SIGKILL);
    if let Body::AfterTheRestart = body {
        let next = holder.serving_pid_after(Some(pid));
        holder.wait_for(
            || {
                holder
                    .log_text()
                    .contains(&format!("serving process {next} started"))
            },
            "the next serving process never started",
        );
        std::thread::sleep(Duration::from_millis(300));
        // Still waiting for the body: nothing came back, nothing closed.
        assert_open_and_drained(raw);
    }
    (&*raw).write_all(payload).unwrap();
    holder.serving_pid_after(Some(pid));
}

/// The next frame from the holder: the reply to `request`, within
/// [`REPLY_BOUND`] of `since`.
fn reply_to(holder: &Holder, raw: &UnixStream, request: u32, since: Instant) -> Frame {
    raw.set_read_timeout(Some(REPLY_BOUND)).unwrap();
    let reply = Frame::read(raw).unwrap_or_else(|e| {
        panic!(
            "no reply to request {request} within {REPLY_BOUND:?}: {e}\n{}",
            holder.log_text()
        )
    });
    raw.set_read_timeout(None).unwrap();
    let took = since.elapsed();
    assert!(took < REPLY_BOUND, "request {request} answered in {took:?}");
    assert_eq!(reply.request, request, "the reply to another request");
    assert_ne!(reply.flags & FLAG_REPLY, 0, "not a reply");
    reply
}

/// A `vhost_vring_state` payload.
fn vring_state(index: u32, num: u32) -> Vec<u8> {
    [index.to_le_bytes(), num.to_le_bytes()].concat()
}

/// The issue's kill "between the header and the body of a vhost-user
/// message": the front-end sends a message's 12-byte header (its fds
/// with it, as QEMU sends them), the serving process is SIGKILLed, and
/// the body follows at once, or once the next process runs (the holder
/// waited on the partial frame through the restart). For messages that
/// matter: GET_VRING_BASE at a pause, GET_CONFIG (replies), SET_MEM_TABLE
/// and SET_VRING_KICK at a resume (fds and a body, no reply). Each reply
/// comes once, is the right one (the ring's real base, the config) and
/// comes within [`REPLY_BOUND`]; the fds reach the next process (the
/// control ring serves on the kick fd sent so and the memory table);
/// after each, commands on the control ring are answered as the same
/// device run without crashes answers them (buffers, ids, contents); the
/// holder's descriptors come back to their count before.
#[test]
fn a_kill_between_the_header_and_the_body_of_a_message_is_not_seen() {
    let holder = Holder::start(&["--max-restarts", "100", "--restart-window", "1"]);
    let (mut harness, raw) = front_end(&holder.socket);
    let (_, _, config) = answers(&mut harness);
    let mut twin = Twin::donated(&mut harness);
    let mut rng = Rng(0x5717_0000);
    for _ in 0..20 {
        twin.step(&mut harness, &mut rng);
    }
    // The holder's descriptors in a steady session, after a restart and
    // a pause/resume as in the loop.
    kill_serving(&holder);
    harness.pause_resume();
    harness.frontend.get_features().unwrap();
    holder.wait_relay_idle();
    let baseline = holder.fds();
    let resent = |request: u32| {
        holder
            .log_text()
            .matches(&format!("then request {request} again"))
            .count()
    };
    for body in [Body::AtOnce, Body::AfterTheRestart] {
        for request in [GET_VRING_BASE, GET_CONFIG, SET_MEM_TABLE, SET_VRING_KICK] {
            let (resent_before, start) = (resent(request), Instant::now());
            match request {
                GET_VRING_BASE => {
                    // A pause: the control ring stops where the device
                    // took it (every chain the harness posted).
                    let payload = vring_state(0, 0);
                    split_with_kill(&holder, &raw, request, &payload, &[], body);
                    let reply = reply_to(&holder, &raw, request, start);
                    let base = harness.control_avail_idx();
                    assert_eq!(reply.payload, vring_state(0, base.into()), "{body:?}");
                    let event = harness.frontend.get_vring_base(1).unwrap();
                    harness.start_queues(&[base, u16::try_from(event).unwrap()]);
                }
                GET_CONFIG => {
                    let payload = get_config_payload(config.len());
                    split_with_kill(&holder, &raw, request, &payload, &[], body);
                    let reply = reply_to(&holder, &raw, request, start);
                    assert_eq!(&reply.payload[12..], &config[..], "{body:?}");
                }
                SET_MEM_TABLE => {
                    // What QEMU sends after a memory hot-plug; no reply
                    // (no REPLY_ACK): the next request's is the next frame.
                    let (payload, fds) = mem_table(&harness);
                    split_with_kill(&holder, &raw, request, &payload, &fds, body);
                    harness.frontend.get_features().unwrap();
                }
                SET_VRING_KICK => {
                    // A resume, the control ring's kick fd cut from its
                    // body: the ring serves on it afterwards only if it
                    // reached the next process.
                    let bases = harness.stop_queues();
                    harness.start_queue_with_kick(0, bases[0], |kick| {
                        let payload = 0u64.to_le_bytes();
                        split_with_kill(&holder, &raw, request, &payload, &[kick.as_raw_fd()], body)
                    });
                    harness.start_queue(1, bases[1]);
                    harness.frontend.get_features().unwrap();
                }
                _ => unreachable!(),
            }
            if cenalloc::holder::request::has_reply(request) {
                assert_eq!(resent(request), resent_before + 1, "{request} {body:?}");
            }
            // Exactly one reply: nothing else waits.
            assert_open_and_drained(&raw);
            for _ in 0..5 {
                twin.step(&mut harness, &mut rng);
            }
        }
    }
    for (buffer, _) in twin.buffers.clone() {
        twin.batch(&mut harness, &[Cmd::checksum(buffer)]);
    }
    twin.batch(&mut harness, &[Cmd::get_info()]);
    assert_open_and_drained(&raw);
    holder.wait_relay_idle();
    holder.wait_for(
        || holder.fds() <= baseline,
        &format!(
            "more descriptors than the {baseline} before: {:?}",
            fd_targets(&holder)
        ),
    );
    let log = holder.log_text();
    for line in log.lines().filter(|l| l.contains("died (Ok(ExitStatus")) {
        assert!(line.contains("unix_wait_status(9)"), "{line}");
    }
    assert!(log.contains("(9 died before it)"), "not 9 restarts:\n{log}");
    eprintln!(
        "{} batches, {} live buffers, slowest batch {:?}, holder fds {baseline} -> {}",
        twin.batches,
        twin.buffers.len(),
        twin.slowest,
        holder.fds()
    );
}

/// What the random test's front-end and killer share about messages cut
/// between their header and their body.
#[derive(Default)]
struct Cuts {
    /// The front-end has sent a header and not its body.
    open: AtomicBool,
    /// The killer waits for a cut to kill in: the front-end holds the
    /// cut open until that kill is done (or its bound).
    aiming: AtomicBool,
    /// Kills begun (counted before the kill(2)) and done (after it), and
    /// serving processes started since (the killer saw the next one).
    kills_begun: AtomicU64,
    kills_done: AtomicU64,
    restarted: AtomicU64,
}

/// The front-end's count of its vhost-user messages in the random load.
#[derive(Default, Debug)]
struct CutStats {
    messages: u64,
    cut: u64,
    /// Kills whose kill(2) surely fell between a header and its body:
    /// begun after the header was sent, done before the body was.
    kills_inside: u64,
    /// Cuts held open until the next serving process had started.
    held_through_a_restart: u64,
}

/// The longest a cut stays open: well inside [`FRAME_TIMEOUT`], after
/// which the holder would close the connection.
const CUT_BOUND: Duration = Duration::from_secs(3);

/// Sends a message whole (its fds with it, one sendmsg), or half the time
/// cut after its header: the header and the fds, a pause, the body. The
/// pause is short (up to 5 ms) unless the killer aims at a cut (then until
/// its kill is done); a kill inside is, half the time, followed by a wait
/// until the next serving process has started (the holder polls on the
/// partial frame through the restart). Never longer than [`CUT_BOUND`].
fn send_maybe_cut(
    raw: &UnixStream,
    request: u32,
    payload: &[u8],
    fds: &[RawFd],
    rng: &mut Rng,
    cuts: &Cuts,
    stats: &mut CutStats,
) {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    stats.messages += 1;
    if rng.below(2) == 0 {
        let head = header(request, payload.len());
        let sent = raw.send_with_fds(&[&head[..], payload], fds).unwrap();
        assert_eq!(sent, HEADER_LEN + payload.len());
        return;
    }
    send_header(raw, request, payload.len(), fds);
    let (cut_at, begun) = (Instant::now(), cuts.kills_begun.load(Ordering::SeqCst));
    cuts.open.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_micros(rng.below(5_000)));
    while cuts.aiming.load(Ordering::SeqCst) && cut_at.elapsed() < CUT_BOUND {
        std::thread::sleep(Duration::from_micros(50));
    }
    let done = cuts.kills_done.load(Ordering::SeqCst);
    if done > begun && rng.below(2) == 0 {
        stats.held_through_a_restart += 1;
        while cuts.restarted.load(Ordering::SeqCst) < done && cut_at.elapsed() < CUT_BOUND {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(
            Duration::from_micros(rng.below(50_000))
                .min(CUT_BOUND.saturating_sub(cut_at.elapsed())),
        );
    }
    let done = cuts.kills_done.load(Ordering::SeqCst);
    cuts.open.store(false, Ordering::SeqCst);
    stats.cut += 1;
    stats.kills_inside += done.saturating_sub(begun);
    (&*raw).write_all(payload).unwrap();
}

/// One vhost-user message step of the random load, each message sent
/// whole or cut ([`send_maybe_cut`]): GET_CONFIG (the config comes back),
/// a pause and resume (the control ring's GET_VRING_BASE returns how far
/// the device took it, its SET_VRING_KICK at the resume, the event ring's
/// as usual), or the memory table again. The device state is left as it
/// was: the twin does not see these.
fn message_step(
    holder: &Holder,
    harness: &mut Harness,
    raw: &UnixStream,
    config: &[u8],
    rng: &mut Rng,
    cuts: &Cuts,
    stats: &mut CutStats,
) {
    match rng.below(3) {
        0 => {
            let payload = get_config_payload(config.len());
            let start = Instant::now();
            send_maybe_cut(raw, GET_CONFIG, &payload, &[], rng, cuts, stats);
            let reply = reply_to(holder, raw, GET_CONFIG, start);
            assert_eq!(&reply.payload[12..], config);
        }
        1 => {
            let start = Instant::now();
            let payload = vring_state(0, 0);
            send_maybe_cut(raw, GET_VRING_BASE, &payload, &[], rng, cuts, stats);
            let reply = reply_to(holder, raw, GET_VRING_BASE, start);
            let base = harness.control_avail_idx();
            assert_eq!(reply.payload, vring_state(0, base.into()));
            let event = harness.frontend.get_vring_base(1).unwrap();
            harness.start_queue_with_kick(0, base, |kick| {
                let payload = 0u64.to_le_bytes();
                let fds = [kick.as_raw_fd()];
                send_maybe_cut(raw, SET_VRING_KICK, &payload, &fds, rng, cuts, stats)
            });
            harness.start_queue(1, u16::try_from(event).unwrap());
        }
        _ => {
            let (payload, fds) = mem_table(harness);
            send_maybe_cut(raw, SET_MEM_TABLE, &payload, &fds, rng, cuts, stats);
            // No reply: the next request's is the fence.
            harness.frontend.get_features().unwrap();
        }
    }
}

/// The issue's test: SIGKILLs of the serving process at random instants
/// under a random command load. After each restart the device answers
/// exactly as the same device run without crashes (same ids, backings,
/// contents, pool state: nothing lost, nothing run twice), every chain
/// gets one used entry, and no batch waits longer than the bound.
/// `CENALLOC_KILLS` sets the number of kills (100 by default).
///
/// One step in eight is a vhost-user message ([`message_step`]), half of
/// them cut between header and body; one kill in eight waits for a cut
/// and lands in it, others land in one by chance. Every reply is the
/// right one, once; the kills that fell inside a cut are counted.
#[test]
fn the_device_survives_sigkills_at_random_instants_under_load() {
    let kills: u32 = std::env::var("CENALLOC_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let seed = 0x5eed_0000 + u64::from(kills);
    let holder = Holder::start(&["--max-restarts", "1000000", "--restart-window", "1"]);
    let (mut harness, raw) = front_end(&holder.socket);
    let mut twin = Twin::donated(&mut harness);
    let (_, _, config) = answers(&mut harness);
    let done = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let cuts = Cuts::default();
    let mut stats = CutStats::default();
    let mut aimed = 0u64;
    let mut rng = Rng(seed);
    let mut killer_rng = Rng(seed ^ 0xdead);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            let mut pid = holder.serving_pid_after(None);
            for _ in 0..kills {
                // Mostly once the new process serves (a step answered
                // since the last kill), else while it starts or takes
                // over: kills faster than any recovery would leave
                // nothing to test. One in eight inside a message cut
                // between its header and its body.
                match killer_rng.below(8) {
                    0 => {
                        aimed += 1;
                        cuts.aiming.store(true, Ordering::SeqCst);
                        holder.wait_for(
                            || cuts.open.load(Ordering::SeqCst),
                            "no message cut to kill in",
                        );
                    }
                    1 | 2 => {}
                    _ => {
                        let before = answered.load(Ordering::Acquire);
                        holder.wait_for(
                            || answered.load(Ordering::Acquire) > before,
                            "no step answered since the last restart",
                        );
                        std::thread::sleep(Duration::from_micros(killer_rng.below(30_000)));
                    }
                }
                cuts.kills_begun.fetch_add(1, Ordering::SeqCst);
                // SAFETY: kill(2) with integers, on the holder's child. It
                // may have died by itself (the log check below tells).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                cuts.kills_done.fetch_add(1, Ordering::SeqCst);
                cuts.aiming.store(false, Ordering::SeqCst);
                pid = holder.serving_pid_after(Some(pid));
                cuts.restarted.fetch_add(1, Ordering::SeqCst);
            }
            done.store(true, Ordering::Release);
        });
        while !done.load(Ordering::Acquire) {
            if rng.below(8) == 0 {
                message_step(
                    &holder,
                    &mut harness,
                    &raw,
                    &config,
                    &mut rng,
                    &cuts,
                    &mut stats,
                );
            } else {
                twin.step(&mut harness, &mut rng);
            }
            answered.fetch_add(1, Ordering::AcqRel);
        }
        killer.join().unwrap();
    });
    let took = started.elapsed();
    // After the last restart: every live buffer as the reference has it.
    for (buffer, _) in twin.buffers.clone() {
        twin.batch(&mut harness, &[Cmd::checksum(buffer)]);
    }
    twin.batch(&mut harness, &[Cmd::get_info()]);
    assert_open_and_drained(&raw);
    eprintln!(
        "{kills} kills, {} batches, {} live buffers, slowest batch {:?}, {took:?}",
        twin.batches,
        twin.buffers.len(),
        twin.slowest
    );
    eprintln!(
        "{} vhost-user messages, {} cut between header and body, {} kills inside a cut \
         ({aimed} aimed at one), {} cuts held through a restart",
        stats.messages, stats.cut, stats.kills_inside, stats.held_through_a_restart
    );
    // The kills aimed at a cut land in it, but for the one that comes
    // as the front-end closes the cut.
    assert!(
        stats.kills_inside * 2 >= aimed && stats.kills_inside > 0,
        "{stats:?}, {aimed} aimed"
    );
    assert!(stats.held_through_a_restart > 0, "{stats:?}");
    assert!(
        twin.batches > u64::from(kills),
        "too little load between the kills"
    );
    eprintln!("{} leased maps", twin.leased_maps);
    assert!(twin.leased_maps > 10, "{} leased maps", twin.leased_maps);
    eprintln!(
        "{} POOL_ADDs at run time, {} taken",
        twin.pool_adds, twin.pool_adds_taken
    );
    assert!(
        twin.pool_adds_taken > 5,
        "{} POOL_ADDs taken",
        twin.pool_adds_taken
    );
    let log = holder.log_text();
    // Every serving process died of the test's SIGKILL, none of its own
    // (a seccomp SIGSYS, a panic).
    for line in log.lines().filter(|l| l.contains("died (Ok(ExitStatus")) {
        assert!(line.contains("unix_wait_status(9)"), "{line}");
    }
    let take_overs = log.matches("device taken over").count();
    eprintln!("{take_overs} take-overs (a process killed before it took over has none)");
    assert!(
        log.contains(&format!("({kills} serving processes died before this one)")),
        "the last serving process is not the {kills}th restart"
    );
    assert!(take_overs > kills as usize / 2, "{take_overs} take-overs");
    assert!(twin.slowest < Duration::from_secs(10), "{:?}", twin.slowest);
}

/// A buffer export's status word is written by the serving process that
/// made it (the page is sealed against every other writer); under the
/// holder it also keeps the page, and when that process dies (or is
/// upgraded) the export is revoked with `daemon_restarted`, before the
/// next process serves the guest.
#[test]
fn an_export_is_revoked_when_its_serving_process_dies() {
    use cenalloc::control::client::{Client, Status};
    use cenalloc::registry::Revocation;
    let holder = Holder::start(&["--max-restarts", "100", "--restart-window", "1"]);
    let (mut harness, _raw) = front_end(&holder.socket);
    harness.donate_all();
    let exported = |harness: &mut Harness| {
        let answer = harness.batch(&[
            Cmd::create(4096, 0),
            Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
            Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_TO_DEVICE, 4),
        ]);
        assert_eq!(answer.status, 0, "{answer:?}");
        let created: CreateResp = answer.answers[0].get();
        let mut client = Client::connect(&holder.control).unwrap();
        let export = client.export("vm1", created.buffer_id, false).unwrap();
        assert_eq!(export.status(), Status::Valid);
        // The connection stays open (closing it releases the export).
        (client, export)
    };
    // A death.
    let (_client, export) = exported(&mut harness);
    kill_serving(&holder);
    holder.wait_for(
        || export.status() != Status::Valid,
        "the export stayed valid after its serving process died",
    );
    assert_eq!(
        export.status(),
        Status::Revoked(Revocation::DaemonRestarted)
    );
    // An upgrade.
    let (_client, export) = exported(&mut harness);
    signal(holder.pid(), libc::SIGHUP);
    holder.wait_for(
        || export.status() != Status::Valid,
        "the export stayed valid after an upgrade",
    );
    assert_eq!(
        export.status(),
        Status::Revoked(Revocation::DaemonRestarted)
    );
    // The device is the same: the next CREATE gets the next id.
    let next: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    assert_eq!(next.buffer_id, 3);
}

/// Percentiles of `samples` (sorted here): p50, p99, max.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}

/// Live upgrade: SIGHUP makes the holder replace its serving process with
/// one started from the binary now at the holder's path (here a new file
/// put in place of the old one), which takes every VM over. Under a
/// random load, 20 upgrades: every answer equals the crash-free twin's,
/// nothing is counted as a death, and the stall of the round trips that
/// spanned an upgrade is reported (p50/p99/max).
#[test]
fn sighup_upgrades_the_serving_process_under_load() {
    let dir = std::env::temp_dir().join(format!("cenallocd-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("cenallocd");
    std::fs::copy(env!("CARGO_BIN_EXE_cenallocd"), &binary).unwrap();
    let holder = Holder::start_from(&binary, &[]);
    let (mut harness, raw) = front_end(&holder.socket);
    let mut twin = Twin::donated(&mut harness);
    let upgrades = 20u64;
    let done = std::sync::atomic::AtomicBool::new(false);
    let generation = std::sync::atomic::AtomicU64::new(0);
    let answered = std::sync::atomic::AtomicU64::new(0);
    let (mut all, mut spanning) = (Vec::new(), Vec::new());
    let mut rng = Rng(0x0069_7261_6465);
    let mut last_inode = 0;
    std::thread::scope(|scope| {
        let upgrader = scope.spawn(|| {
            let mut pid = holder.serving_pid_after(None);
            let mut inode = 0;
            for _ in 0..upgrades {
                let before = answered.load(Ordering::Acquire);
                holder.wait_for(
                    || answered.load(Ordering::Acquire) > before + 20,
                    "no load between two upgrades",
                );
                // A new file at the binary's path (a package upgrade).
                let next = dir.join("cenallocd.new");
                std::fs::copy(env!("CARGO_BIN_EXE_cenallocd"), &next).unwrap();
                std::fs::rename(&next, &binary).unwrap();
                inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&binary).unwrap());
                signal(holder.pid(), libc::SIGHUP);
                pid = holder.serving_pid_after(Some(pid));
                generation.fetch_add(1, Ordering::AcqRel);
            }
            done.store(true, Ordering::Release);
            (pid, inode)
        });
        while !done.load(Ordering::Acquire) {
            let (at, start) = (generation.load(Ordering::Acquire), Instant::now());
            twin.step(&mut harness, &mut rng);
            let took = start.elapsed();
            all.push(took);
            if generation.load(Ordering::Acquire) != at {
                spanning.push(took);
            }
            answered.fetch_add(1, Ordering::AcqRel);
        }
        let (pid, inode) = upgrader.join().unwrap();
        // The last serving process runs the file now at the path.
        let exe = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&exe), inode);
        last_inode = inode;
    });
    for (buffer, _) in twin.buffers.clone() {
        twin.batch(&mut harness, &[Cmd::checksum(buffer)]);
    }
    assert_open_and_drained(&raw);
    let log = holder.log_text();
    assert_eq!(
        log.matches("upgrade: serving process").count() as u64,
        2 * upgrades,
        "{log}"
    );
    assert!(
        !log.contains("starting another in"),
        "an upgrade counted as a death:\n{log}"
    );
    let (p50, p99, max) = percentiles(&mut all);
    let (s50, s99, smax) = percentiles(&mut spanning);
    eprintln!(
        "{upgrades} upgrades, {} round trips: all p50 {p50:?} p99 {p99:?} max {max:?}; \
         the {} that spanned an upgrade: p50 {s50:?} p99 {s99:?} max {smax:?} (binary inode {last_inode})",
        all.len(),
        spanning.len()
    );
    assert!(smax < Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cenallocctl upgrade` (the control socket's `upgrade`) does what SIGHUP
/// does: the serving process is replaced by one from the binary at the
/// holder's path, and the device is the same. A daemon without a holder
/// refuses it.
#[test]
fn cenallocctl_upgrade_replaces_the_serving_process() {
    let holder = Holder::start(&[]);
    let (mut harness, raw) = front_end(&holder.socket);
    harness.donate_all();
    let created: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    let before = holder.serving_pid_after(None);
    let out = Command::new(env!("CARGO_BIN_EXE_cenallocctl"))
        .arg("--socket")
        .arg(&holder.control)
        .arg("upgrade")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = holder.serving_pid_after(Some(before));
    assert_ne!(after, before);
    // The same device, through the new process.
    let next: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    assert_eq!(next.buffer_id, created.buffer_id + 1);
    assert_open_and_drained(&raw);
    let log = holder.log_text();
    assert!(log.contains("upgrade: serving process"), "{log}");
    assert!(!log.contains("starting another in"), "{log}");

    // Without a holder there is nothing to upgrade.
    let socket = std::env::temp_dir().join(format!("cenallocd-plain-{}.sock", std::process::id()));
    let control = socket.with_extension("control");
    let mut plain = Command::new(env!("CARGO_BIN_EXE_cenallocd"))
        .arg("--socket-path")
        .arg(format!("vm1={}", socket.display()))
        .arg("--control-socket")
        .arg(&control)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its control socket file exists from its bind, before its listen.
    let mut client = None;
    holder.wait_for(
        || {
            client = cenalloc::control::client::Client::connect(&control).ok();
            client.is_some()
        },
        "the plain daemon never listened on its control socket",
    );
    let mut client = client.unwrap();
    match client.upgrade(None) {
        Err(cenalloc::control::client::Error::Daemon(body)) => assert_eq!(
            body.code,
            cenalloc::control::protocol::ErrorCode::Forbidden,
            "{body:?}"
        ),
        other => panic!("upgrade without a holder: {:?}", other.map(|_| ())),
    }
    signal(plain.id() as i32, libc::SIGTERM);
    plain.wait().unwrap();
}

/// Runs cenallocctl against the holder's control socket.
fn ctl(holder: &Holder, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cenallocctl"))
        .arg("--socket")
        .arg(&holder.control)
        .args(args)
        .output()
        .unwrap()
}

/// The file process `pid` runs.
fn exe(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// A temporary directory of this test's, with a copy of cenallocd in it
/// at `name` (mode 0755).
fn binary_copy(test: &str, name: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("cenallocd-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(name);
    std::fs::copy(env!("CARGO_BIN_EXE_cenallocd"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, copy)
}

/// `cenallocctl upgrade --binary PATH`: the next serving process runs from
/// PATH (its /proc/PID/exe), and so do those restarted after a crash; the
/// device is the same throughout; a plain upgrade then goes back to the
/// holder's own path.
#[test]
fn cenallocctl_upgrade_binary_starts_the_serving_process_from_it() {
    let (dir, second) = binary_copy("second", "cenallocd-second");
    let own = std::fs::canonicalize(env!("CARGO_BIN_EXE_cenallocd")).unwrap();
    let holder = Holder::start(&["--upgrade-dir", dir.to_str().unwrap()]);
    let (mut harness, raw) = front_end(&holder.socket);
    harness.donate_all();
    let mut expected: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    let mut same_device = |harness: &mut Harness| {
        let next: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
        assert_eq!(
            next.buffer_id,
            expected.buffer_id + 1,
            "not the same device"
        );
        expected = next;
    };
    let first = holder.exec_serving_pid_after(None);
    assert_eq!(exe(first), own);

    let out = ctl(
        &holder,
        &["upgrade".as_ref(), "--binary".as_ref(), second.as_ref()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upgraded = holder.exec_serving_pid_after(Some(first));
    assert_eq!(exe(upgraded), second);
    same_device(&mut harness);

    // A crash restart starts from the same binary.
    let dying = holder.exec_serving_pid_after(None);
    signal(dying, libc::SIGKILL);
    let restarted = holder.exec_serving_pid_after(Some(dying));
    assert_eq!(exe(restarted), second);
    same_device(&mut harness);

    // A plain upgrade: the holder's own path again.
    let out = ctl(&holder, &["upgrade".as_ref()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = holder.exec_serving_pid_after(Some(restarted));
    assert_eq!(exe(back), own);
    same_device(&mut harness);
    assert_open_and_drained(&raw);
    let log = holder.log_text();
    assert!(
        log.contains(&format!("replaced by one from {}", second.display())),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A binary that is not an absolute path to an executable regular file
/// that only its owner (root or the holder's user) may write is refused
/// with why (cenallocctl exits 1), and nothing changes: the serving
/// process stays, and the next plain upgrade starts from the holder's own
/// path, not from a refused binary.
#[test]
fn cenallocctl_upgrade_refuses_a_bad_binary_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, copy) = binary_copy("refused", "cenallocd-copy");
    let own = std::fs::canonicalize(env!("CARGO_BIN_EXE_cenallocd")).unwrap();
    let plain = dir.join("plain");
    std::fs::write(&plain, b"not a program").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shared = dir.join("shared");
    std::fs::copy(&copy, &shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o775)).unwrap();
    let holder = Holder::start(&["--upgrade-dir", dir.to_str().unwrap()]);
    let (mut harness, raw) = front_end(&holder.socket);
    harness.donate_all();
    let created: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    let pid = holder.exec_serving_pid_after(None);
    // A fine binary outside the --upgrade-dir directories: the holder
    // would run it unsandboxed for any control client that asks.
    let outside = std::env::temp_dir().join(format!("cenallocd-outside-{}", std::process::id()));
    std::fs::copy(&copy, &outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut cases: Vec<(PathBuf, String)> = vec![
        (
            PathBuf::from("relative/cenallocd"),
            "must be absolute".into(),
        ),
        (dir.join("missing"), "No such file".into()),
        (dir.clone(), "not a regular file".into()),
        (plain.clone(), "not executable".into()),
        (shared.clone(), "writable by its group or by others".into()),
        (
            outside.clone(),
            "nor in a directory of --upgrade-dir".into(),
        ),
    ];
    // What only the holder checks: the owner (a file of another user can
    // be made only by root).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let foreign = dir.join("foreign");
        std::fs::copy(&copy, &foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        cases.push((foreign, "the holder refused it: ".to_string()));
    } else {
        eprintln!(
            "not root: the holder's owner check is tested by holder::status's unit test only"
        );
    }
    for (path, why) in &cases {
        let out = ctl(
            &holder,
            &["upgrade".as_ref(), "--binary".as_ref(), path.as_ref()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
        assert!(
            stderr.contains(why.as_str()),
            "{}: {stderr}",
            path.display()
        );
    }
    // An upgrade asked by mistake would have replaced it within this time.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(holder.serving_pid(), Some(pid));
    let log = holder.log_text();
    assert!(!log.contains("upgrade: serving process"), "{log}");
    let next: CreateResp = harness.run(Cmd::create(4096, 0)).ok().get();
    assert_eq!(next.buffer_id, created.buffer_id + 1);

    let out = ctl(&holder, &["upgrade".as_ref()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(exe(holder.exec_serving_pid_after(Some(pid))), own);
    assert_open_and_drained(&raw);
    let _ = std::fs::remove_file(&outside);
    let _ = std::fs::remove_dir_all(&dir);
}
