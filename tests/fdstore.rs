//! `cenallocd --supervise` under systemd, with systemd's file descriptor
//! store emulated (issue 16): the holder stores each VM's front-end
//! connection, device journal, session image and session fds
//! (`sd_notify` `FDSTORE=1` / `FDSTOREREMOVE=1` on `NOTIFY_SOCKET`), and
//! when the holder itself dies, the emulated service manager starts it
//! again with the stored fds in `LISTEN_FDS` / `LISTEN_FDNAMES`, as
//! systemd does for `Restart=` with `FileDescriptorStoreMax=`. The
//! emulation keeps one copy of a file description however often it is
//! stored (systemd drops duplicates), passes the fds from 3 up, sets
//! `LISTEN_PID` to the new process, and, like systemd's
//! `KillMode=control-group`, starts the new holder only once the old
//! serving process is gone. Like systemd, which handles the notification
//! socket before SIGCHLD, it takes every notification a dead holder sent
//! before it starts the next one.
//!
//! A test that reads the store waits first for the holder to be quiet
//! with its front-end ([`Systemd::quiet_names`]): the store then says
//! all the holder stored, and a holder killed then owes nothing.

mod common;
#[path = "common/relayed.rs"]
mod relayed;
#[path = "common/twin.rs"]
mod twin;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cenalloc::holder::frame::{Frame, FLAG_REPLY};
use cenalloc::holder::persist::{same_description, view_session};
use cenalloc::holder::request::GET_CONFIG;
use cenalloc::protocol::*;
use common::*;
use relayed::*;
use twin::{Rng, Twin};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The service manager's side: the notification socket and the store.
#[derive(Default)]
struct Store {
    fds: Vec<(String, OwnedFd)>,
    ready: u32,
    /// Messages that were not FDSTORE / FDSTOREREMOVE / READY.
    other: Vec<String>,
}

impl Store {
    fn take(&mut self, message: &str, fds: Vec<OwnedFd>) {
        let fields: Vec<(&str, &str)> = message
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let field = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        if field("FDSTORE") == Some("1") {
            let name = field("FDNAME").unwrap_or("stored").to_string();
            for fd in fds {
                // systemd keeps one copy of a description.
                if !self
                    .fds
                    .iter()
                    .any(|(_, kept)| same_description(kept.as_fd(), fd.as_fd()))
                {
                    self.fds.push((name.clone(), fd));
                }
            }
        } else if field("FDSTOREREMOVE") == Some("1") {
            let name = field("FDNAME").unwrap_or_default();
            self.fds.retain(|(kept, _)| kept != name);
        } else if field("READY") == Some("1") {
            self.ready += 1;
        } else {
            self.other.push(message.to_string());
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.fds.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    /// Whether the holder is between two exchanges with VM `vm`'s
    /// front-end as far as the store shows: the session image stored for
    /// the VM is settled and the store holds exactly the fds it names.
    fn settled(&self, vm: &str) -> bool {
        let session = format!("cenalloc.{vm}.session");
        let Some((_, file)) = self.fds.iter().find(|(name, _)| *name == session) else {
            return false;
        };
        // An image being written reads as damaged: not settled yet.
        let Ok(view) = view_session(file.as_fd()) else {
            return false;
        };
        let prefix = format!("cenalloc.{vm}.fd.");
        let stored: Option<BTreeSet<u64>> = self
            .fds
            .iter()
            .filter_map(|(name, _)| name.strip_prefix(&prefix))
            .map(|key| key.parse().ok())
            .collect();
        view.settled() && stored == Some(view.fd_keys)
    }
}

/// Whether a datagram waits on `socket`.
fn readable(socket: &UnixDatagram, timeout_ms: libc::c_int) -> bool {
    let mut pollfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call.
    let ret = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
    ret > 0 && pollfd.revents & libc::POLLIN != 0
}

/// Bytes the front-end sent on `front_end` that its peer (the holder)
/// has not read yet (SIOCOUTQ).
fn unread_by_peer(front_end: &UnixStream) -> libc::c_int {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    assert_eq!(
        unsafe { libc::ioctl(front_end.as_raw_fd(), libc::TIOCOUTQ, &mut queued) },
        0
    );
    queued
}

/// An emulated systemd running one `cenallocd --supervise` service.
struct Systemd {
    store: Arc<Mutex<Store>>,
    stop: Arc<AtomicBool>,
    /// The notification socket (the thread reads a clone of it).
    notifications: UnixDatagram,
    notify: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    main: Mutex<Child>,
    starts: AtomicUsize,
}

impl Systemd {
    fn start(args: &[&str]) -> Systemd {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("cenallocd-fds-{}-{n}", std::process::id()));
        let notify = base.with_extension("notify");
        let _ = std::fs::remove_file(&notify);
        let notifications = UnixDatagram::bind(&notify).unwrap();
        notifications.set_nonblocking(true).unwrap();
        let datagram = notifications.try_clone().unwrap();
        let store = Arc::new(Mutex::new(Store::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if !readable(&datagram, 50) {
                        continue;
                    }
                    // A datagram leaves the socket and enters the store
                    // under the store's lock: with the lock held, an empty
                    // socket means every notification sent is in the
                    // store (Systemd::drained).
                    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                    let mut buf = [0u8; 4096];
                    let mut raw: [RawFd; 64] = [-1; 64];
                    let mut iov = [libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: buf.len(),
                    }];
                    // SAFETY: the iovec points into `buf` and `raw` has
                    // room for 64 fds; both outlive the call.
                    let Ok((len, nfds)) = (unsafe { datagram.recv_with_fds(&mut iov, &mut raw) })
                    else {
                        continue;
                    };
                    let fds: Vec<OwnedFd> = raw[..nfds]
                        .iter()
                        .map(|&fd| {
                            // SAFETY: received just now, owned by nobody.
                            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
                            // SAFETY: as above.
                            unsafe { OwnedFd::from_raw_fd(fd) }
                        })
                        .collect();
                    let message = String::from_utf8_lossy(&buf[..len]).into_owned();
                    store.take(&message, fds);
                }
            });
        }
        let socket = base.with_extension("sock");
        let control = base.with_extension("control.sock");
        let mut all: Vec<String> = vec![
            "--supervise".into(),
            "--socket-path".into(),
            format!("vm1={}", socket.display()),
            "--control-socket".into(),
            control.display().to_string(),
            "--pool".into(),
            "system:4M".into(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let log = base.with_extension("log");
        File::create(&log).unwrap();
        let main = Self::spawn(&store.lock().unwrap(), &notify, &log, &all);
        let systemd = Systemd {
            store,
            stop,
            notifications,
            notify,
            socket,
            log,
            args: all,
            main: Mutex::new(main),
            starts: AtomicUsize::new(1),
        };
        systemd.wait_ready(1);
        systemd
    }

    /// Starts the service's main process with the stored fds, as systemd
    /// does: from fd 3 up, named in LISTEN_FDNAMES, LISTEN_PID its own.
    fn spawn(store: &Store, notify: &Path, log: &Path, args: &[String]) -> Child {
        let raw: Vec<RawFd> = store.fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let names: Vec<String> = store.fds.iter().map(|(n, _)| n.clone()).collect();
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_cenallocd"))
            .args(args)
            .env("NOTIFY_SOCKET", notify)
            .env("RUST_LOG", "info")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .stderr(std::fs::OpenOptions::new().append(true).open(log).unwrap());
        if !raw.is_empty() {
            command
                .env("LISTEN_FDS", raw.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        let mut high = vec![-1; raw.len()];
        // SAFETY: between fork and exec only fcntl/dup2 on integers, into
        // vectors allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                for (i, &fd) in raw.iter().enumerate() {
                    high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 1000 + i as RawFd);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, &fd) in high.iter().enumerate() {
                    if libc::dup2(fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Nothing else of this test reaches the service.
                if libc::syscall(
                    libc::SYS_close_range,
                    3 + high.len() as u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        command.spawn().unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, mut done: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !done() {
            assert!(Instant::now() < deadline, "{what}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The store, if every notification sent so far is in it (the
    /// thread takes a datagram off the socket only under the store's
    /// lock).
    fn drained(&self) -> Option<MutexGuard<'_, Store>> {
        let store = self.store.lock().unwrap();
        (!readable(&self.notifications, 0)).then_some(store)
    }

    fn drained_store(&self) -> MutexGuard<'_, Store> {
        let mut store = None;
        self.wait_for(
            || {
                store = self.drained();
                store.is_some()
            },
            "notifications keep coming",
        );
        store.unwrap()
    }

    /// The store's names once the holder is quiet with vm1's front-end
    /// (`front_end`, the front-end's end): it has read all the front-end
    /// sent, its session image is settled, the store holds exactly the
    /// fds the image names and every notification sent so far is in the
    /// store. A holder killed then loses nothing and owes the front-end
    /// nothing; the front-end must not send meanwhile.
    fn quiet_names(&self, front_end: &UnixStream) -> Vec<String> {
        let mut names = Vec::new();
        self.wait_for(
            || {
                if unread_by_peer(front_end) != 0 {
                    return false;
                }
                match self.drained() {
                    Some(store) if store.settled("vm1") => {
                        names = store.names();
                        true
                    }
                    _ => false,
                }
            },
            "the holder never went quiet",
        );
        names
    }

    fn wait_ready(&self, count: u32) {
        self.wait_for(
            || self.store.lock().unwrap().ready >= count,
            "the holder never said READY=1",
        );
    }

    fn main_pid(&self) -> i32 {
        self.main.lock().unwrap().id() as i32
    }

    /// The holder's living child (not a zombie), if any.
    fn serving_pid(&self) -> Option<i32> {
        living_children(self.main_pid()).into_iter().next()
    }

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

    /// `signal` to the main process; once it exited, waits for the rest
    /// of the service (the serving process) to be gone and starts the
    /// service again (`Restart=`, or `systemctl restart` with
    /// `FileDescriptorStorePreserve=yes`). Returns the exit status.
    fn kill_main_and_restart(&self, signal: libc::c_int) -> std::process::ExitStatus {
        let mut main = self.main.lock().unwrap();
        let serving = living_children(main.id() as i32);
        // SAFETY: kill(2) with integers, on our own child.
        unsafe { libc::kill(main.id() as i32, signal) };
        let status = main.wait().unwrap();
        self.wait_for(
            || serving.iter().all(|pid| gone(*pid)),
            "the serving process outlived its holder",
        );
        let starts = self.starts.fetch_add(1, Ordering::AcqRel) as u32 + 1;
        // What the dead holder sent, systemd has taken before it handles
        // the death (its notification socket comes before SIGCHLD).
        let store = self.drained_store();
        *main = Self::spawn(&store, &self.notify, &self.log, &self.args);
        drop(store);
        drop(main);
        self.wait_ready(starts);
        status
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.main_pid()))
            .unwrap()
            .count()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let mut main = self.main.lock().unwrap_or_else(|e| e.into_inner());
        let _ = main.kill();
        let _ = main.wait();
        let _ = std::fs::remove_file(&self.notify);
        if std::thread::panicking() {
            eprintln!("holder log:\n{}", self.log_text());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Whether every thread of process `pid` has exited (and closed its
/// fds), as systemd's cgroup is empty: the thread group's leader turns
/// zombie as soon as it exits itself, while the other threads may still
/// be on their way out, holding the process's fds (the control socket's
/// listener among them). A thread leaves /proc/<pid>/task only once it
/// has released them.
fn gone(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                Some(state == "Z" || state == "X")
            })
            .unwrap_or(true)
    })
}

fn config_of(harness: &mut Harness) -> Vec<u8> {
    let size = std::mem::size_of::<Config>() as u32;
    harness
        .frontend
        .get_config(
            0,
            size,
            VhostUserConfigFlags::WRITABLE,
            &vec![0u8; size as usize],
        )
        .unwrap()
        .1
}

fn stop_all_threads(pid: i32, what: &Systemd) {
    signal(pid, libc::SIGSTOP);
    what.wait_for(
        || all_threads_stopped(pid),
        "the serving process never stopped",
    );
}

/// The holder's own death (SIGKILL) is not seen by the front-end: systemd
/// starts it again with the stored fds, the new holder goes on with the
/// session and the next serving process takes the device over.
#[test]
fn the_holder_killed_under_systemd_is_not_seen_by_the_front_end() {
    let systemd = Systemd::start(&[]);
    let (mut harness, raw) = front_end(&systemd.socket);
    let config = config_of(&mut harness);
    let created: CreateResp = harness.run(Cmd::create(8192, 0)).ok().get();
    let names = systemd.quiet_names(&raw);
    for name in [
        "cenalloc.vm1.conn",
        "cenalloc.vm1.journal",
        "cenalloc.vm1.session",
    ] {
        assert!(names.contains(&name.to_string()), "{names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("cenalloc.vm1.fd.")),
        "{names:?}"
    );
    let status = systemd.kill_main_and_restart(libc::SIGKILL);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Same session (a query answered the same), same device (the buffer
    // is known), the connection never closed.
    assert_eq!(config_of(&mut harness), config);
    // (FREE of an unknown id would fail.)
    harness.run(Cmd::free(created.buffer_id)).ok();
    assert_open_and_drained(&raw);
    // The store holds what it held (nothing leaked, nothing lost).
    let after = systemd.quiet_names(&raw);
    assert_eq!(
        after, names,
        "the store after the holder's restart (left) and before its kill (right)"
    );
    let log = systemd.log_text();
    assert!(log.contains("session adopted from the fd store"), "{log}");
    assert!(log.contains("device taken over"), "{log}");
}

/// A vhost-user request the dead holder had relayed but not answered is
/// answered once, by the next holder's serving process.
#[test]
fn a_request_in_flight_when_the_holder_dies_is_answered_once() {
    let systemd = Systemd::start(&[]);
    let (mut harness, raw) = front_end(&systemd.socket);
    let config = config_of(&mut harness);
    let pid = systemd.serving_pid_after(None);
    stop_all_threads(pid, &systemd);
    Frame {
        request: GET_CONFIG,
        flags: 1,
        payload: get_config_payload(config.len()),
        fds: Vec::new(),
    }
    .write(&raw)
    .unwrap();
    // The holder has taken it off the socket (saved as pending) once the
    // socket is empty.
    systemd.wait_for(
        || {
            let mut queued: libc::c_int = 0;
            // SAFETY: SIOCOUTQ writes one int.
            unsafe { libc::ioctl(raw.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
            queued == 0
        },
        "the holder never read the request",
    );
    std::thread::sleep(Duration::from_millis(100));
    systemd.kill_main_and_restart(libc::SIGKILL);
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let reply = Frame::read(&raw).unwrap();
    raw.set_read_timeout(None).unwrap();
    assert_eq!(reply.request, GET_CONFIG);
    assert_ne!(reply.flags & FLAG_REPLY, 0);
    assert_eq!(&reply.payload[12..], &config[..]);
    harness.frontend.get_features().unwrap();
    assert_open_and_drained(&raw);
    let log = systemd.log_text();
    assert!(
        log.contains(&format!("then request {GET_CONFIG} again")),
        "{log}"
    );
}

/// `systemctl restart` (SIGTERM, then a new start) with the store kept
/// (`FileDescriptorStorePreserve=yes`): the VM's device goes on.
#[test]
fn a_restart_of_the_service_keeps_the_device() {
    let systemd = Systemd::start(&[]);
    let (mut harness, raw) = front_end(&systemd.socket);
    harness.donate_all();
    let answer = harness.batch(&[
        Cmd::create(4096, 0),
        Cmd::attach(CENALLOC_BATCH_REF, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]),
        Cmd::map(CENALLOC_BATCH_REF | 1, CENALLOC_DIR_TO_DEVICE, 16),
        Cmd::fill(CENALLOC_BATCH_REF, 0x1234),
        Cmd::checksum(CENALLOC_BATCH_REF),
    ]);
    assert_eq!(answer.status, 0);
    let created: CreateResp = answer.answers[0].get();
    let sum: ChecksumResp = answer.answers[4].get();
    let status = systemd.kill_main_and_restart(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let again: ChecksumResp = harness.run(Cmd::checksum(created.buffer_id)).ok().get();
    assert_eq!(again.checksum, sum.checksum);
    assert_open_and_drained(&raw);
}

/// The test with systemd's store: SIGKILLs at random instants
/// under a random command load, of the serving process (the holder starts
/// the next) and of the holder itself (the service manager starts the
/// next, with the stored fds). Every answer equals the crash-free twin's,
/// every chain gets one used entry, no batch waits past the bound, and
/// the store and the holder hold as many fds at the end as before the
/// kills. `CENALLOC_KILLS` sets the number of kills (60 by default).
#[test]
fn the_device_survives_holder_and_serving_kills_under_systemd() {
    let kills: u32 = std::env::var("CENALLOC_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    let seed = 0x5d_0000 + u64::from(kills);
    let systemd = Systemd::start(&["--max-restarts", "1000000", "--restart-window", "1"]);
    let (mut harness, raw) = front_end(&systemd.socket);
    let mut twin = Twin::donated(&mut harness);
    let stored_before = systemd.quiet_names(&raw);
    let fds_before = systemd.fds();
    let done = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let holder_kills = AtomicUsize::new(0);
    let mut rng = Rng(seed);
    let mut killer_rng = Rng(seed ^ 0xdead);
    std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            for _ in 0..kills {
                if killer_rng.below(4) != 0 {
                    let before = answered.load(Ordering::Acquire);
                    systemd.wait_for(
                        || answered.load(Ordering::Acquire) > before,
                        "no batch answered since the last restart",
                    );
                }
                std::thread::sleep(Duration::from_micros(killer_rng.below(30_000)));
                if killer_rng.below(3) == 0 {
                    systemd.kill_main_and_restart(libc::SIGKILL);
                    holder_kills.fetch_add(1, Ordering::AcqRel);
                } else {
                    let pid = systemd.serving_pid_after(None);
                    // SAFETY: kill(2) with integers, on the holder's child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    systemd.serving_pid_after(Some(pid));
                }
            }
            done.store(true, Ordering::Release);
        });
        while !done.load(Ordering::Acquire) {
            twin.step(&mut harness, &mut rng);
            answered.fetch_add(1, Ordering::AcqRel);
        }
        killer.join().unwrap();
    });
    for (buffer, _) in twin.buffers.clone() {
        twin.batch(&mut harness, &[Cmd::checksum(buffer)]);
    }
    twin.batch(&mut harness, &[Cmd::get_info()]);
    assert_open_and_drained(&raw);
    let holder_kills = holder_kills.load(Ordering::Acquire);
    eprintln!(
        "{kills} kills ({holder_kills} of the holder), {} batches, {} live buffers, {} leased maps, slowest batch {:?}",
        twin.batches,
        twin.buffers.len(),
        twin.leased_maps,
        twin.slowest
    );
    assert!(holder_kills > 0 && holder_kills < kills as usize);
    eprintln!(
        "{} POOL_ADDs at run time, {} taken",
        twin.pool_adds, twin.pool_adds_taken
    );
    assert!(
        twin.pool_adds_taken > 5,
        "{} POOL_ADDs taken",
        twin.pool_adds_taken
    );
    assert!(twin.batches > u64::from(kills));
    assert!(twin.slowest < Duration::from_secs(10), "{:?}", twin.slowest);
    assert_eq!(systemd.quiet_names(&raw), stored_before);
    assert_eq!(systemd.fds(), fds_before, "descriptors of the holder");
    let log = systemd.log_text();
    for line in log.lines().filter(|l| l.contains("died (Ok(ExitStatus")) {
        assert!(line.contains("unix_wait_status(9)"), "{line}");
    }
    // A holder killed before its relay replayed the session has no line.
    let adopted = log.matches("session adopted from the fd store").count();
    eprintln!("{adopted} sessions adopted by a new holder");
    assert!(adopted <= holder_kills && adopted > holder_kills / 2);
    assert!(!log.contains("closing the front-end's connection"), "{log}");
    assert!(!log.contains("cannot go on"), "{log}");
    assert!(systemd.store.lock().unwrap().other.is_empty());
}
