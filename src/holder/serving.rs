//! The serving processes of the holder, one at a time: started from
//! `/proc/self/exe` with the holder's arguments (without `--supervise`),
//! plus `--holder-fd NAME=FD` for every socket it serves and
//! `--restarted N`. Each one is a *generation*: for every VM it gets a
//! fresh private listening socket, bound in the holder's mode-0700
//! directory (nobody but the holder's user can connect), which the holder
//! connects to as that VM's relay end; the holder closes its copy of the
//! listener once the child has it, so the listener dies with the child.
//! The control socket's listener is handed down as it is, to every
//! generation.
//!
//! When the serving process dies, the next generation is started, after
//! a back-off that grows with the deaths within the restart window
//! (100 ms per death, at most 1 s); more deaths than `--max-restarts`
//! within the window and the holder gives up.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::binary::Binary;
use super::status::AskedBinary;
use crate::listen::{self, SocketPermissions};

/// Back-off per death within the window, and its ceiling.
const BACKOFF_STEP: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a serving process has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("private socket: {0}")]
    Listen(#[from] listen::Error),
    #[error("starting the serving process: {0}")]
    Spawn(std::io::Error),
    #[error("pidfd_open: {0}")]
    Pidfd(std::io::Error),
}

/// The serving processes are gone for good (the holder gave up or
/// stops): no relay end will come.
#[derive(Debug, thiserror::Error)]
#[error("no serving process any more ({0})")]
pub struct Gone(pub &'static str);

/// What the holder starts its serving processes with.
pub struct Plan {
    /// The holder's arguments, `--supervise` left out.
    pub args: Vec<OsString>,
    /// The VM names, in the order of the relay threads.
    pub vms: Vec<String>,
    /// The control socket's listener, handed down to every generation.
    pub control: Option<RawFd>,
    /// The holder's private directory (mode 0700).
    pub dir: PathBuf,
    pub max_restarts: u32,
    pub window: Duration,
    /// What `cenallocctl upgrade --binary` may start.
    pub allowed: Arc<super::binary::Allowed>,
    /// The holder's binary path: what an upgrade starts.
    pub exe: PathBuf,
    /// An eventfd every generation gets (`--upgrade-fd`): its control
    /// socket's `upgrade` writes it, the holder then upgrades.
    pub upgrade: OwnedFd,
    /// Per VM, its device journal: a memfd that every generation gets
    /// (`--journal-fd`), so that it outlives each of them.
    pub journals: Vec<OwnedFd>,
    /// Per VM, whether a front-end's session is relayed now: a generation
    /// started while it is takes that VM's device over from its journal
    /// (`--adopt`) instead of starting it empty.
    pub live: Vec<std::sync::atomic::AtomicBool>,
}

/// One serving process.
pub struct Generation {
    /// Serving processes that died before this one.
    pub number: u32,
    pub pid: i32,
    pidfd: OwnedFd,
    /// Its private socket, per VM.
    sockets: Vec<PathBuf>,
}

impl Generation {
    /// Whether the process exits within `grace` (true at once if it has).
    pub fn died_within(&self, grace: Duration) -> bool {
        let mut pollfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = Instant::now() + grace;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // SAFETY: one valid pollfd that lives across the call.
            let ret = unsafe { libc::poll(&mut pollfd, 1, left.as_millis() as libc::c_int) };
            if ret > 0 {
                return true;
            }
            if ret == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                return false;
            }
        }
    }

    fn remove_sockets(&self) {
        for path in &self.sockets {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum State {
    Running(Arc<Generation>),
    Restarting,
    GaveUp,
    Stopped,
}

/// A new memfd for a VM's device journal (the holder never reads it).
pub fn journal_file() -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name; checked below.
    let fd = unsafe { libc::memfd_create(c"cenalloc-journal".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a serving process is started from.
#[derive(Clone, Debug)]
enum Program {
    /// The file at a path as it is at each start.
    Path(PathBuf),
    /// A binary an upgrade asked for, held open since it was checked.
    Asked(Arc<Binary>),
}

impl Program {
    fn path(&self) -> &Path {
        match self {
            Program::Path(path) => path,
            Program::Asked(binary) => binary.path(),
        }
    }
}

/// Starts, watches and restarts the serving processes.
pub struct Supervisor {
    plan: Plan,
    state: Mutex<(State, bool)>,
    changed: Condvar,
    /// The binary serving processes are started from: the holder's own
    /// (`/proc/self/exe`, even once its file was replaced), until an
    /// upgrade switches to the file at the holder's path as it is then,
    /// or to the binary it was given.
    binary: Mutex<Program>,
    /// What ran before the upgrade under way: back to it if the new
    /// binary cannot be started.
    previous: Mutex<Option<Program>>,
    /// An upgrade asked the serving process to exit: the next start is
    /// not a death (no back-off, not counted) and uses the new binary.
    upgrading: std::sync::atomic::AtomicBool,
    /// The binary the upgrade asked through the control socket starts
    /// (the serving process sends it on its status channel first).
    asked: AskedBinary,
}

/// `pidfd_open(2)`.
fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers; a valid result is a new fd
    // owned by nobody else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned here only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl Supervisor {
    /// Starts the first serving process.
    pub fn start(plan: Plan) -> Result<(Arc<Self>, std::process::Child), ServingError> {
        let supervisor = Arc::new(Supervisor {
            plan,
            state: Mutex::new((State::Restarting, false)),
            changed: Condvar::new(),
            binary: Mutex::new(Program::Path(PathBuf::from("/proc/self/exe"))),
            previous: Mutex::new(None),
            upgrading: std::sync::atomic::AtomicBool::new(false),
            asked: AskedBinary::default(),
        });
        let (generation, child) = supervisor.spawn(0)?;
        supervisor.set(State::Running(generation));
        Ok((supervisor, child))
    }

    /// Says whether VM `vm` has a front-end's session relayed now.
    pub fn set_live(&self, vm: usize, live: bool) {
        if let Some(flag) = self.plan.live.get(vm) {
            flag.store(live, std::sync::atomic::Ordering::Release);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, state: State) {
        self.lock().0 = state;
        self.changed.notify_all();
    }

    /// Starts generation `number`.
    fn spawn(&self, number: u32) -> Result<(Arc<Generation>, std::process::Child), ServingError> {
        let mut listeners = Vec::new();
        let mut sockets = Vec::new();
        let binary = self
            .binary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut command = match &binary {
            Program::Path(path) => std::process::Command::new(path),
            // Its descriptor is open in the child until the exec.
            Program::Asked(asked) => {
                let mut command = std::process::Command::new(asked.program());
                command.arg0(asked.path());
                command
            }
        };
        command.args(&self.plan.args);
        let mut handed = Vec::new();
        for (index, name) in self.plan.vms.iter().enumerate() {
            let path = self.plan.dir.join(format!("g{number}-{index}.sock"));
            let (listener, _) =
                listen::bind(&path, SocketPermissions::default()).inspect_err(|_| {
                    for path in &sockets {
                        let _ = std::fs::remove_file(path);
                    }
                })?;
            command
                .arg("--holder-fd")
                .arg(format!("{name}={}", listener.as_raw_fd()));
            handed.push(listener.as_raw_fd());
            listeners.push(listener);
            sockets.push(path);
        }
        for (name, (journal, live)) in self
            .plan
            .vms
            .iter()
            .zip(self.plan.journals.iter().zip(&self.plan.live))
        {
            command
                .arg("--journal-fd")
                .arg(format!("{name}={}", journal.as_raw_fd()));
            handed.push(journal.as_raw_fd());
            if live.load(std::sync::atomic::Ordering::Acquire) {
                command.arg("--adopt").arg(name);
            }
        }
        if let Some(fd) = self.plan.control {
            command
                .arg("--holder-fd")
                .arg(format!("{}={fd}", crate::config::CONTROL_FD_NAME));
            handed.push(fd);
        }
        command
            .arg("--upgrade-fd")
            .arg(self.plan.upgrade.as_raw_fd().to_string());
        handed.push(self.plan.upgrade.as_raw_fd());
        // Its export status pages come to this holder, which revokes them
        // when it is gone (super::status).
        let (keeper, theirs) = super::status::channel().map_err(ServingError::Spawn)?;
        command
            .arg("--status-fd")
            .arg(theirs.as_raw_fd().to_string());
        handed.push(theirs.as_raw_fd());
        command.arg("--restarted").arg(number.to_string());
        // SAFETY: holder pid read before the fork; the closure below runs
        // in the child between fork and exec and only makes
        // async-signal-safe system calls on integers.
        let holder = unsafe { libc::getpid() };
        let pre_exec = move || -> std::io::Result<()> {
            // SAFETY: plain system calls on integers, async-signal-safe:
            // every descriptor from 3 up is closed at exec (the holder's
            // front-end connections and record fds are nothing of the
            // child's business) except the handed-down listeners; the
            // child dies with the holder's supervising thread.
            unsafe {
                if libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for &fd in &handed {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::getppid() != holder
                {
                    return Err(std::io::Error::other("the holder is gone"));
                }
            }
            Ok(())
        };
        // SAFETY: `pre_exec` only makes async-signal-safe calls and
        // allocates nothing (it captures a Vec built before the fork).
        unsafe { command.pre_exec(pre_exec) };
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                for path in &sockets {
                    let _ = std::fs::remove_file(path);
                }
                return Err(ServingError::Spawn(e));
            }
        };
        // The child has the listeners now: they die with it.
        drop(listeners);
        drop(theirs);
        let pid = child.id() as i32;
        let asked = self.asked.clone();
        let kept = std::thread::Builder::new()
            .name(format!("status-{number}").chars().take(15).collect())
            .spawn({
                let allowed = self.plan.allowed.clone();
                move || super::status::keep_pages(keeper, pid, asked, allowed)
            });
        if let Err(e) = kept {
            error!("serving process {pid}: no thread to keep its export status pages: {e}");
        }
        let pidfd = pidfd_open(pid).map_err(ServingError::Pidfd)?;
        info!("serving process {pid} started ({number} died before it)");
        Ok((
            Arc::new(Generation {
                number,
                pid,
                pidfd,
                sockets,
            }),
            child,
        ))
    }

    /// A new relay end for VM `vm`, to the first serving process after
    /// generation `after` (any, if `None`); waits while one is started.
    pub fn connect(
        &self,
        vm: usize,
        mut after: Option<u32>,
    ) -> Result<(UnixStream, Arc<Generation>), Gone> {
        loop {
            let generation = {
                let mut state = self.lock();
                loop {
                    match &state.0 {
                        State::Running(g) if after.map_or(true, |n| g.number > n) => {
                            break g.clone()
                        }
                        State::GaveUp => return Err(Gone("the holder gave up")),
                        State::Stopped => return Err(Gone("the holder stops")),
                        _ => state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
                    }
                }
            };
            let Some(path) = generation.sockets.get(vm) else {
                return Err(Gone("no such VM"));
            };
            match UnixStream::connect(path) {
                Ok(stream) => return Ok((stream, generation)),
                // It died meanwhile: its listener is gone.
                Err(e) => {
                    warn!(
                        "serving process {}: cannot connect to it: {e}",
                        generation.pid
                    );
                    after = Some(generation.number);
                    generation.died_within(Duration::from_secs(1));
                }
            }
        }
    }

    /// Watches the serving process, restarting it when it dies, until the
    /// holder gives up (returns true) or stops (returns false).
    pub fn run(&self, mut child: std::process::Child) -> bool {
        let mut deaths: VecDeque<Instant> = VecDeque::new();
        let mut number = 0u32;
        loop {
            let status = child.wait();
            let pid = child.id();
            let generation = match std::mem::replace(&mut self.lock().0, State::Restarting) {
                State::Running(g) => Some(g),
                _ => None,
            };
            self.changed.notify_all();
            if let Some(g) = &generation {
                g.remove_sockets();
            }
            if self.lock().1 {
                info!("serving process {pid} stopped: {status:?}");
                self.set(State::Stopped);
                return false;
            }
            if self
                .upgrading
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                info!("upgrade: serving process {pid} exited ({status:?})");
                number += 1;
                let previous = self
                    .previous
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                match self.spawn(number) {
                    Ok((generation, next)) => {
                        child = next;
                        self.set(State::Running(generation));
                        continue;
                    }
                    // Started as after a death, below, from what ran
                    // before.
                    Err(e) => {
                        error!("upgrade: {e}");
                        if let Some(previous) = previous {
                            warn!(
                                "upgrade: back to {} for the next serving process",
                                previous.path().display()
                            );
                            *self.binary.lock().unwrap_or_else(|e| e.into_inner()) = previous;
                        }
                    }
                }
            }
            // Dead, or never started.
            loop {
                let now = Instant::now();
                deaths.push_back(now);
                while deaths
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.plan.window)
                {
                    deaths.pop_front();
                }
                if deaths.len() > self.plan.max_restarts as usize {
                    error!(
                        "serving process {pid} died ({status:?}): {} deaths within {} s, more than --max-restarts {}; giving up: every front-end connection is closed",
                        deaths.len(),
                        self.plan.window.as_secs(),
                        self.plan.max_restarts
                    );
                    self.set(State::GaveUp);
                    return true;
                }
                let backoff = (BACKOFF_STEP * (deaths.len() as u32 - 1)).min(BACKOFF_MAX);
                warn!(
                    "serving process {pid} died ({status:?}); starting another in {} ms",
                    backoff.as_millis()
                );
                std::thread::sleep(backoff);
                if self.lock().1 {
                    self.set(State::Stopped);
                    return false;
                }
                number += 1;
                match self.spawn(number) {
                    Ok((generation, next)) => {
                        child = next;
                        let pid = generation.pid;
                        self.set(State::Running(generation));
                        if self.lock().1 {
                            // `stop` came while it started: it goes too.
                            // SAFETY: kill(2) on our own child, not reaped.
                            unsafe { libc::kill(pid, libc::SIGTERM) };
                        }
                        break;
                    }
                    Err(e) => error!("{e}"),
                }
            }
        }
    }

    /// Waits for upgrade requests on the eventfd every serving process
    /// has (its control socket's `upgrade`) and upgrades, to the binary
    /// the running serving process asked for on its status channel if it
    /// did (else the holder's path); returns when it cannot read the
    /// eventfd any more.
    pub fn serve_upgrade_requests(&self) {
        loop {
            let mut count = [0u8; 8];
            // SAFETY: read(2) of 8 bytes into a local buffer from the
            // eventfd the plan owns (blocking).
            let read = unsafe {
                libc::read(
                    self.plan.upgrade.as_raw_fd(),
                    count.as_mut_ptr().cast(),
                    count.len(),
                )
            };
            if read == 8 {
                let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner()).take();
                let running = match &self.lock().0 {
                    State::Running(g) => Some(g.pid),
                    _ => None,
                };
                match asked {
                    Some(asked) if Some(asked.pid) == running => match asked.binary {
                        Some(binary) => self.upgrade_to(Program::Asked(Arc::new(binary))),
                        None => self.upgrade(),
                    },
                    Some(asked) => {
                        warn!(
                            "upgrade: the binary asked by serving process {} is left, it is gone",
                            asked.pid
                        );
                        self.upgrade();
                    }
                    None => self.upgrade(),
                }
            } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                error!("upgrade requests: {}", std::io::Error::last_os_error());
                return;
            }
        }
    }

    /// Live upgrade (SIGHUP): the serving process is asked to exit
    /// (SIGTERM: whatever it was doing, its journal has every answer the
    /// guest saw) and the next one is started at once from `plan.exe`,
    /// the holder's binary path as the file is now, and takes every VM
    /// over.
    pub fn upgrade(&self) {
        self.upgrade_to(Program::Path(self.plan.exe.clone()));
    }

    /// Live upgrade to `program`: as [`Self::upgrade`]. Crash restarts
    /// start from it too, until the next upgrade.
    fn upgrade_to(&self, program: Program) {
        let running = match &self.lock().0 {
            State::Running(g) => Some(g.clone()),
            _ => None,
        };
        let Some(g) = running else {
            warn!(
                "upgrade asked while no serving process runs: the next one starts from {}",
                program.path().display()
            );
            *self.binary.lock().unwrap_or_else(|e| e.into_inner()) = program;
            return;
        };
        info!(
            "upgrade: serving process {} replaced by one from {}",
            g.pid,
            program.path().display()
        );
        let previous = std::mem::replace(
            &mut *self.binary.lock().unwrap_or_else(|e| e.into_inner()),
            program,
        );
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(previous);
        self.upgrading
            .store(true, std::sync::atomic::Ordering::Release);
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe { libc::kill(g.pid, libc::SIGTERM) };
    }

    /// Stops for good: the serving process gets SIGTERM (SIGKILL after a
    /// grace period) and no other is started. Returns once it is gone.
    pub fn stop(&self) {
        let running = {
            let mut state = self.lock();
            state.1 = true;
            match &state.0 {
                State::Running(g) => Some(g.clone()),
                _ => None,
            }
        };
        if let Some(g) = running {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped
            // (reaping needs `stop` to be seen first, or it is a restart).
            unsafe { libc::kill(g.pid, libc::SIGTERM) };
            if !g.died_within(STOP_GRACE) {
                warn!("serving process {}: no exit after SIGTERM: SIGKILL", g.pid);
                // SAFETY: as above.
                unsafe { libc::kill(g.pid, libc::SIGKILL) };
            }
        }
        let state = self.lock();
        let _ = self.changed.wait_timeout_while(state, STOP_GRACE, |s| {
            !matches!(s.0, State::Stopped | State::GaveUp)
        });
    }
}

/// Creates the holder's private directory (mode 0700) under `parent`.
pub fn private_dir(parent: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let template = parent.join(format!("cenallocd-holder-{}-XXXXXX", std::process::id()));
    let mut bytes = template.as_os_str().as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: `bytes` is a NUL-terminated, writable template that mkdtemp
    // fills in place.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
}

/// Removes the private directory and what is left in it.
pub fn remove_private_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        warn!("{}: cannot remove: {e}", dir.display());
    }
}
