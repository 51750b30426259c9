//! The daemon's sandbox, entered once every socket is bound and before the
//! first front-end is served (as virtiofsd and the rust-vmm VMMs do), in
//! this order ([`enter`]):
//!
//! 1. **Landlock** (where the kernel has it; best effort): no file system
//!    access at all, except removing its own socket files at exit (the
//!    directories in [`SandboxConfig::removable_dirs`]); no TCP; no
//!    connection to abstract unix sockets and no signals to processes
//!    outside the sandbox (ABI 6). It binds the calling thread and the
//!    threads it starts later only, so it comes while the daemon has no
//!    other thread, and the daemon's first thread (its signal thread)
//!    starts right after.
//! 2. **Privileges**: started as root with `--user USER`, the daemon drops
//!    to that user's uid and gid with no supplementary groups (every
//!    capability goes with uid 0).
//! 3. **seccomp** ([`seccompiler`]), on every thread: an allowlist
//!    ([`allowed_syscalls`], 46 syscalls) derived by tracing the daemon
//!    through the integration tests (several VMs, every control request,
//!    exports, reconnects, SIGTERM). A syscall outside it kills the daemon (`--seccomp kill`,
//!    the default), raises SIGSYS (`trap`), is only logged by the kernel
//!    (`log`), or nothing is filtered (`none`). Arguments are checked where
//!    it matters: `clone` only for threads (`CLONE_THREAD`; `clone3`, whose
//!    flags seccomp cannot see, answers `ENOSYS` so the C library falls
//!    back to `clone`), `mmap`/`mprotect` never `PROT_EXEC`, `openat` only
//!    read-only without `O_CREAT`, `fcntl`, `prctl` and `setsockopt` only
//!    the commands used, `getsockopt` only `SO_DOMAIN` and `SO_TYPE` (the
//!    check vhost makes of a window's back-end request channel). No `socket`, `connect`, `bind`, `execve`, no
//!    `ptrace`, no privilege changes.
//!
//! Guest memory files arrive after the sandbox is up (SET_MEM_TABLE): the
//! daemon maps them, and re-opens them read-only through `/proc/self/fd`
//! for an export; Landlock does not restrict memfds, which live on an
//! internal mount (the integration tests export under the sandbox). After a
//! privilege drop the process is non-dumpable (whatever fs.suid_dumpable):
//! its `/proc/PID` entries belong to root, so no other process of its new
//! uid can ptrace it or open guest memory through `/proc/PID/fd`, while the
//! daemon itself still may (the kernel lets a process into its own fd
//! directory whatever its dumpability; `tests/dumps.rs`).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use nix::unistd;
use serde::Deserialize;

/// What seccomp does with a syscall outside the allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// The kernel kills the daemon (SIGSYS, no core).
    #[default]
    Kill,
    /// SIGSYS is raised in the thread (a debugger shows where).
    Trap,
    /// The kernel logs the syscall (audit) and lets it run.
    Log,
    /// No seccomp filter.
    None,
}

/// Whether to restrict the daemon with Landlock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LandlockMode {
    /// As far as the running kernel supports it (nothing if it has none).
    #[default]
    On,
    Off,
}

/// A user to run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The sandbox of the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SandboxConfig {
    pub seccomp: SeccompMode,
    pub landlock: LandlockMode,
    /// Drop to this user (the daemon must be started as root).
    pub user: Option<User>,
    /// Directories in which the daemon may remove files (its own sockets,
    /// at exit).
    pub removable_dirs: Vec<PathBuf>,
    /// Directories whose files the daemon may read after start-up (test
    /// builds: the fault file).
    pub readable_dirs: Vec<PathBuf>,
}

/// Everything that can go wrong setting up the sandbox.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("no user {0:?}")]
    UnknownUser(String),
    #[error("no group {0:?}")]
    UnknownGroup(String),
    #[error("looking up {0:?}: {1}")]
    Lookup(String, io::Error),
    #[error("--user {user}: the daemon runs as uid {uid}; only root can change user")]
    NotRoot { user: String, uid: u32 },
    #[error("dropping privileges to {user}: {what}: {source}")]
    Drop {
        user: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("landlock: {0}")]
    Landlock(String),
    #[error(
        "landlock: {0} threads are running; Landlock restricts only the thread that enters \
         it and the threads it starts later, so the sandbox must be entered before any other"
    )]
    ThreadsRunning(usize),
    #[error("starting the daemon's first threads: {0}")]
    StartThreads(io::Error),
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// Looks up a user by name or number.
pub fn lookup_user(name: &str) -> Result<User, Error> {
    let lookup = match name.parse::<u32>() {
        Ok(uid) => unistd::User::from_uid(unistd::Uid::from_raw(uid)),
        Err(_) => unistd::User::from_name(name),
    };
    let found = lookup
        .map_err(|errno| Error::Lookup(name.to_string(), errno.into()))?
        .ok_or_else(|| Error::UnknownUser(name.to_string()))?;
    Ok(User {
        name: name.to_string(),
        uid: found.uid.as_raw(),
        gid: found.gid.as_raw(),
    })
}

/// Looks up a group by name or number.
pub fn lookup_group(name: &str) -> Result<u32, Error> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let found = unistd::Group::from_name(name)
        .map_err(|errno| Error::Lookup(name.to_string(), errno.into()))?
        .ok_or_else(|| Error::UnknownGroup(name.to_string()))?;
    Ok(found.gid.as_raw())
}

/// What [`enter`] put in place, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub user: Option<String>,
    /// Landlock ABI the kernel enforced (`None`: not applied or not
    /// available).
    pub landlock: Option<String>,
    pub seccomp: Option<SeccompMode>,
    pub syscalls: usize,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(user) => write!(f, "user {user}")?,
            None => write!(f, "same user")?,
        }
        match &self.landlock {
            Some(status) => write!(f, ", landlock {status}")?,
            None => write!(f, ", no landlock")?,
        }
        match self.seccomp {
            Some(mode) => write!(f, ", seccomp {mode:?} ({} syscalls allowed)", self.syscalls),
            None => write!(f, ", no seccomp"),
        }
    }
}

fn drop_privileges(user: &User) -> Result<(), Error> {
    let euid = unistd::geteuid().as_raw();
    if euid == user.uid {
        return Ok(());
    }
    if euid != 0 {
        return Err(Error::NotRoot {
            user: user.name.clone(),
            uid: euid,
        });
    }
    let fail = |what: &'static str| {
        move |errno: nix::errno::Errno| Error::Drop {
            user: user.name.clone(),
            what,
            source: errno.into(),
        }
    };
    let (uid, gid) = (
        unistd::Uid::from_raw(user.uid),
        unistd::Gid::from_raw(user.gid),
    );
    unistd::setgroups(&[]).map_err(fail("setgroups"))?;
    // glibc applies id changes to every thread.
    unistd::setresgid(gid, gid, gid).map_err(fail("setresgid"))?;
    unistd::setresuid(uid, uid, uid).map_err(fail("setresuid"))?;
    // The id change left the process dumpable only if fs.suid_dumpable
    // says so (1): non-dumpable whatever it says, so that no other process
    // of this uid reaches guest memory through /proc/PID/fd or ptrace.
    nix::sys::prctl::set_dumpable(false).map_err(fail("prctl(PR_SET_DUMPABLE)"))?;
    if unistd::setuid(unistd::Uid::from_raw(0)).is_ok() {
        return Err(Error::Drop {
            user: user.name.clone(),
            what: "regaining root still works",
            source: io::Error::other("privileges were not dropped"),
        });
    }
    Ok(())
}

/// Builds the Landlock ruleset (opening the directories it names while
/// the daemon still has its privileges); enforced by [`restrict`].
fn landlock_ruleset(config: &SandboxConfig) -> Result<landlock::RulesetCreated, Error> {
    use landlock::{
        Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
        Scope, ABI,
    };
    let abi = ABI::V6;
    let err = |e: &dyn std::fmt::Display| Error::Landlock(e.to_string());
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| err(&e))?
        .handle_access(AccessNet::from_all(abi))
        .map_err(|e| err(&e))?
        .scope(Scope::from_all(abi))
        .map_err(|e| err(&e))?
        .create()
        .map_err(|e| err(&e))?;
    for dir in &config.removable_dirs {
        let fd = PathFd::new(dir).map_err(|e| err(&e))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::RemoveFile))
            .map_err(|e| err(&e))?;
    }
    for dir in &config.readable_dirs {
        let fd = PathFd::new(dir).map_err(|e| err(&e))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::ReadFile))
            .map_err(|e| err(&e))?;
    }
    Ok(ruleset)
}

fn restrict(ruleset: landlock::RulesetCreated) -> Result<Option<String>, Error> {
    use landlock::RulesetStatus;
    let status = ruleset
        .restrict_self()
        .map_err(|e| Error::Landlock(e.to_string()))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Some("fully enforced".to_string()),
        RulesetStatus::PartiallyEnforced => Some("partially enforced (older kernel)".to_string()),
        RulesetStatus::NotEnforced => None,
    })
}

/// What a syscall's arguments must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arguments {
    Any,
    /// Argument `n` (a protection) without `PROT_EXEC`.
    NoExec(u8),
    /// `clone` creating a thread (`CLONE_THREAD` set).
    Thread,
    /// Argument `n` is one of these.
    OneOf(u8, &'static [u64]),
    /// `openat` for reading only, never creating or truncating.
    ReadOnlyOpen,
    /// `getsockopt` at level `SOL_SOCKET` of one of these options.
    SocketOption(&'static [u64]),
}

/// The syscalls the daemon may make once sandboxed, with their argument
/// rules. Derived from `strace -f` of the daemon through
/// `tests/sandbox.rs` (several VMs, every control request, exports,
/// reconnects, SIGTERM): every syscall seen after `landlock_restrict_self`,
/// plus the few marked "rare" (paths the trace did not take).
pub fn allowed_syscalls() -> &'static [(&'static str, i64, Arguments)] {
    use Arguments::*;
    const FCNTL: &[u64] = &[
        libc::F_GETFD as u64,
        libc::F_SETFD as u64,
        libc::F_GETFL as u64,
        libc::F_SETFL as u64,
        libc::F_DUPFD_CLOEXEC as u64,
        libc::F_ADD_SEALS as u64,
        libc::F_GET_SEALS as u64,
    ];
    &[
        // vhost-user messages (the fds of SET_MEM_TABLE and the vrings),
        // control requests, export answers (SCM_RIGHTS).
        ("recvmsg", libc::SYS_recvmsg, Any),
        ("sendmsg", libc::SYS_sendmsg, Any),
        ("recvfrom", libc::SYS_recvfrom, Any),
        ("sendto", libc::SYS_sendto, Any),
        ("read", libc::SYS_read, Any),
        ("write", libc::SYS_write, Any),
        ("accept4", libc::SYS_accept4, Any),
        // A VM's listener: a front-end waits in the backlog until the
        // daemon limits admit it (vhu_cenalloc::serve_one).
        ("poll", libc::SYS_poll, Any),
        ("shutdown", libc::SYS_shutdown, Any),
        // The back-end request channel of a VM with a window (issue 17):
        // vhost checks the socket it is handed is a Unix stream socket.
        (
            "getsockopt",
            libc::SYS_getsockopt,
            SocketOption(&[libc::SO_DOMAIN as u64, libc::SO_TYPE as u64]),
        ),
        // Control clients' write timeouts.
        (
            "setsockopt",
            libc::SYS_setsockopt,
            OneOf(1, &[libc::SOL_SOCKET as u64]),
        ),
        ("close", libc::SYS_close, Any),
        ("fcntl", libc::SYS_fcntl, OneOf(1, FCNTL)),
        // Queue workers: epoll, eventfd kicks, calls and exit events.
        ("epoll_create1", libc::SYS_epoll_create1, Any),
        ("epoll_ctl", libc::SYS_epoll_ctl, Any),
        ("epoll_wait", libc::SYS_epoll_wait, Any),
        ("eventfd2", libc::SYS_eventfd2, Any),
        // Guest memory (SET_MEM_TABLE), export status pages, the heap.
        ("mmap", libc::SYS_mmap, NoExec(2)),
        ("mprotect", libc::SYS_mprotect, NoExec(2)),
        ("munmap", libc::SYS_munmap, Any),
        ("madvise", libc::SYS_madvise, Any),
        ("brk", libc::SYS_brk, Any),       // rare: main-arena heap growth
        ("mremap", libc::SYS_mremap, Any), // rare: realloc of large blocks
        ("memfd_create", libc::SYS_memfd_create, Any),
        ("ftruncate", libc::SYS_ftruncate, Any),
        // The device journal (supervised mode): records written at an
        // offset, read back when a VM is taken over.
        ("pwrite64", libc::SYS_pwrite64, Any),
        ("pread64", libc::SYS_pread64, Any),
        // ... and its old records' memory given back at a compaction.
        ("fallocate", libc::SYS_fallocate, Any),
        // Exports: re-open guest memory read-only through /proc/self/fd.
        ("openat", libc::SYS_openat, ReadOnlyOpen),
        // Removing the daemon's own sockets at exit (after a stat).
        ("statx", libc::SYS_statx, Any),
        ("unlink", libc::SYS_unlink, Any),
        // Threads: one per VM connection and per control client.
        ("clone", libc::SYS_clone, Thread), // what glibc falls back to
        ("clone3", libc::SYS_clone3, Any),  // answered ENOSYS, see below
        ("set_robust_list", libc::SYS_set_robust_list, Any),
        ("rseq", libc::SYS_rseq, Any),
        (
            "prctl",
            libc::SYS_prctl,
            OneOf(0, &[libc::PR_SET_NAME as u64]),
        ),
        ("sched_getaffinity", libc::SYS_sched_getaffinity, Any),
        ("futex", libc::SYS_futex, Any),
        ("sched_yield", libc::SYS_sched_yield, Any), // rare: contended locks
        ("clock_nanosleep", libc::SYS_clock_nanosleep, Any), // rare: accept back-off
        // Instant::now() (busy time, the control queue's polling window) is
        // a vDSO call, but a host whose clocksource has no vDSO read makes
        // it a real system call.
        ("clock_gettime", libc::SYS_clock_gettime, Any),
        ("gettid", libc::SYS_gettid, Any),
        ("getpid", libc::SYS_getpid, Any),
        ("getrandom", libc::SYS_getrandom, Any),
        // Signals: the SIGTERM/SIGINT thread, thread start and exit.
        ("rt_sigprocmask", libc::SYS_rt_sigprocmask, Any),
        ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait, Any),
        // The return of any signal handler, e.g. glibc's own SIGSETXID:
        // a thread may still be returning from a privilege drop's.
        ("rt_sigreturn", libc::SYS_rt_sigreturn, Any),
        ("sigaltstack", libc::SYS_sigaltstack, Any),
        ("exit", libc::SYS_exit, Any),
        ("exit_group", libc::SYS_exit_group, Any),
    ]
}

fn seccomp_filters(mode: SeccompMode) -> Result<Vec<seccompiler::BpfProgram>, Error> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let err = |e: &dyn std::fmt::Display| Error::Seccomp(e.to_string());
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| err(&e))?;
    let mismatch = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Trap => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::None => return Ok(Vec::new()),
    };
    let rule = |arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, len, op, value)
            .and_then(|condition| SeccompRule::new(vec![condition]))
            .map_err(|e| err(&e))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(_, number, arguments) in allowed_syscalls() {
        let syscall_rules = match arguments {
            Arguments::Any => Vec::new(),
            Arguments::NoExec(arg) => vec![rule(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
                0,
            )?],
            Arguments::Thread => vec![rule(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )?],
            Arguments::OneOf(arg, values) => values
                .iter()
                .map(|&value| rule(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value))
                .collect::<Result<_, _>>()?,
            Arguments::SocketOption(options) => options
                .iter()
                .map(|&option| {
                    let condition = |arg: u8, value: u64| {
                        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                    };
                    condition(1, libc::SOL_SOCKET as u64)
                        .and_then(|level| SeccompRule::new(vec![level, condition(2, option)?]))
                        .map_err(|e| err(&e))
                })
                .collect::<Result<_, _>>()?,
            Arguments::ReadOnlyOpen => {
                let forbidden = libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_TMPFILE;
                vec![rule(
                    2,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(forbidden as u64),
                    libc::O_RDONLY as u64,
                )?]
            }
        };
        rules.insert(number, syscall_rules);
    }
    let allowlist =
        SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(|e| err(&e))?;
    // clone3 passes its flags in memory, out of seccomp's sight: answer
    // ENOSYS so the C library uses clone, whose flags are checked above.
    // Stacked filters: the stricter action (ERRNO over ALLOW) wins.
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| err(&e))?;
    // The clone3 filter first: installing the allowlist ends the use of
    // seccomp(2) itself.
    Ok(vec![
        clone3.try_into().map_err(|e| err(&e))?,
        allowlist.try_into().map_err(|e| err(&e))?,
    ])
}

/// Threads of this process (from `/proc/self/task`).
fn threads() -> Result<usize, Error> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| dir.count())
        .map_err(|e| Error::Landlock(format!("/proc/self/task: {e}")))
}

/// Enters the sandbox. Call once every socket is bound, while the calling
/// thread is the process's only one:
///
/// 1. Landlock, first: `landlock_restrict_self` restricts the calling
///    thread and the threads it starts later, never a thread already
///    running; with Landlock on, other threads make it fail
///    ([`Error::ThreadsRunning`]).
/// 2. `start_threads`: the daemon's first threads (its signal thread), so
///    they inherit Landlock. glibc installs its own signal handlers when
///    the first thread starts (`rt_sigaction` is not in the allowlist) and
///    needs them for the privilege drop (SIGSETXID).
/// 3. Privileges, on every thread (glibc's setxid).
/// 4. seccomp, on every thread (TSYNC).
pub fn enter(
    config: &SandboxConfig,
    start_threads: impl FnOnce() -> io::Result<()>,
) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    if let LandlockMode::On = config.landlock {
        let ruleset = landlock_ruleset(config)?;
        let running = threads()?;
        if running != 1 {
            return Err(Error::ThreadsRunning(running));
        }
        applied.landlock = restrict(ruleset)?;
    }
    start_threads().map_err(Error::StartThreads)?;
    if let Some(user) = &config.user {
        drop_privileges(user)?;
        applied.user = Some(format!(
            "{} (uid {}, gid {})",
            user.name, user.uid, user.gid
        ));
    }
    let filters = seccomp_filters(config.seccomp)?;
    if !filters.is_empty() {
        for filter in &filters {
            seccompiler::apply_filter_all_threads(filter)
                .map_err(|e| Error::Seccomp(e.to_string()))?;
        }
        applied.seccomp = Some(config.seccomp);
        applied.syscalls = allowed_syscalls().len();
    }
    Ok(applied)
}
