//! The holder of `cenallocd --supervise` (issue 16; the design is
//! docs/design/surviving-daemon.md): QEMU cannot reconnect a vhost-user
//! device, so QEMU's end of a VM's socket must never see a hang-up when
//! the process that serves the device dies. The holder is the process
//! QEMU talks to; it serves nothing itself.
//!
//! - It binds (or takes: `--fd`, socket activation) every VM socket and
//!   the control socket as `cenallocd` does ([`crate::listen`]), and
//!   accepts the front-ends itself ([`relay`]).
//! - It starts the serving process, the same binary with the same
//!   arguments, which takes every socket from the holder
//!   (`--holder-fd NAME=FD`): per VM a private listening socket that the
//!   holder connects to as the relay end, which the child serves with the
//!   unmodified `serve_vm` / vhost-user-backend path; the control
//!   socket's listener as it is ([`serving`]).
//! - It relays whole vhost-user frames, fds included, between each
//!   front-end and its relay end ([`frame`]), keeps the session record of
//!   each connection ([`record`]) and the request not answered yet, and
//!   when the serving process dies (SIGKILL included) starts another
//!   (`--restarted N` tells it that it is one), replays the record into
//!   it and re-sends the unanswered request. More than `--max-restarts`
//!   deaths within `--restart-window` seconds and it gives up: it closes
//!   every front-end connection (it exits, status 1), logging why.
//! - SIGTERM or SIGINT: the serving process gets SIGTERM, the holder
//!   removes the sockets it created and its private directory, and exits
//!   with status 0.
//!
//! The vhost-user session survives a restart through the record; the
//! device state (buffers, pools, leases, ring positions) through the
//! device journal the holder keeps per VM, from which the next serving
//! process takes the device over ([`crate::adoption`]). Exports are
//! revoked ([`status`]). Control connections die with the serving process
//! (the listener survives). Under systemd the holder keeps all of it in
//! the service manager's fd store too, and a holder started again goes on
//! with every session ([`store`], [`persist`]).
//!
//! The holder contains no device logic and never maps guest memory. It
//! does not enter the daemon's sandbox: the seccomp allowlist forbids
//! `execve`, `socket`, `bind` and `connect`, which the holder needs to
//! start serving processes and make their private sockets, and Landlock
//! would have to allow executing the binary and creating sockets in the
//! private directory. What it does with peer data is framing within fixed
//! bounds; the serving process, which parses requests and touches guest
//! memory, enters the sandbox exactly as an unsupervised cenallocd does.
//! `--user` applies to the serving process; the holder keeps the user it
//! was started as (run it as the unprivileged user).

pub mod binary;
pub mod frame;
pub mod persist;
pub mod record;
pub mod relay;
pub mod request;
pub mod serving;
pub mod status;
pub mod store;

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use log::{error, info, warn};

use crate::config::Config;
use crate::listen;

use relay::VmRelay;
use serving::{Plan, Supervisor};

/// Restart bounds of `--max-restarts` and `--restart-window`.
#[derive(Clone, Copy, Debug)]
pub struct RestartLimit {
    pub max_restarts: u32,
    pub window: Duration,
}

/// The arguments the serving process gets: the holder's, without
/// `--supervise`.
pub fn child_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .filter(|arg| arg != "--supervise")
        .collect()
}

/// Where the private directory goes: systemd's `RUNTIME_DIRECTORY`, the
/// user's `XDG_RUNTIME_DIR`, or the temporary directory.
fn private_parent() -> PathBuf {
    ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .find(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// Blocks SIGINT, SIGTERM and SIGHUP (an upgrade) in this thread and the
/// threads it starts.
fn block_termination_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    // SAFETY: `set` is initialised; the old mask is not needed (null).
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// Runs the holder for `config` until SIGTERM (exits 0) or until it gives
/// up (returns failure). `args` are the serving process's arguments
/// ([`child_args`]).
pub fn run(
    config: &Config,
    args: Vec<OsString>,
    limit: RestartLimit,
    mut passed: store::Stored,
    upgrade_dirs: &[PathBuf],
) -> ExitCode {
    // A holder holds a record's fds per VM besides its connections.
    let _ = crate::fd_budget::raise_limit();
    // Under systemd: the fd store keeps what the holder's death must not
    // take (store.rs). Serving processes do not talk to systemd.
    let fd_store = match store::FdStore::from_env() {
        Ok(fd_store) => fd_store.map(std::sync::Arc::new),
        Err(e) => {
            warn!("{e}: no fd store, the VMs will not outlive the holder");
            None
        }
    };
    std::env::remove_var("NOTIFY_SOCKET");
    if fd_store.is_none() && !passed.is_empty() {
        warn!(
            "fds from an fd store ({}) but no NOTIFY_SOCKET: closed",
            passed.names().join(", ")
        );
        passed = store::Stored::default();
    }
    let signals = match block_termination_signals() {
        Ok(set) => set,
        Err(e) => {
            error!("cannot set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut owned = Vec::new();
    let mut listeners = Vec::new();
    for vm in &config.vms {
        match vm.listen.open(config.socket_permissions, &mut owned) {
            Ok(listener) => listeners.push(listener),
            Err((e, status)) => {
                eprintln!("cenallocd: VM {}: {e}", vm.name);
                listen::remove_owned(&owned);
                return ExitCode::from(status);
            }
        }
    }
    let control = match &config.control {
        Some(control) => match control.listen.open(control.permissions, &mut owned) {
            Ok(listener) => Some(listener),
            Err((e, status)) => {
                eprintln!("cenallocd: control socket: {e}");
                listen::remove_owned(&owned);
                return ExitCode::from(status);
            }
        },
        None => None,
    };
    let dir = match serving::private_dir(&private_parent()) {
        Ok(dir) => dir,
        Err(e) => {
            error!("cannot create the holder's private directory: {e}");
            listen::remove_owned(&owned);
            return ExitCode::FAILURE;
        }
    };
    let cleanup = {
        let (owned, dir) = (owned.clone(), dir.clone());
        move || {
            listen::remove_owned(&owned);
            serving::remove_private_dir(&dir);
        }
    };
    let journals = match config
        .vms
        .iter()
        .map(|vm| kept_journal(fd_store.as_deref(), &mut passed, &vm.name))
        .collect::<std::io::Result<Vec<_>>>()
    {
        Ok(journals) => journals,
        Err(e) => {
            error!("cannot create the device journals: {e}");
            cleanup();
            return ExitCode::FAILURE;
        }
    };
    let upgrade = match vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC) {
        // SAFETY: the EventFd's descriptor, taken over by the OwnedFd
        // (into_raw_fd gives up the EventFd's ownership).
        Ok(event) => unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(
                std::os::fd::IntoRawFd::into_raw_fd(event),
            )
        },
        Err(e) => {
            error!("cannot create the upgrade event: {e}");
            cleanup();
            return ExitCode::FAILURE;
        }
    };
    let mut sessions = Vec::new();
    for vm in &config.vms {
        sessions.push(match &fd_store {
            Some(fd_store) => kept_session(fd_store, &mut passed, &vm.name),
            None => (None, None),
        });
    }
    if let Some(fd_store) = &fd_store {
        for name in passed.names() {
            info!("fd store: {name} belongs to no VM of this configuration: removed");
            if let Err(e) = fd_store.remove(&name) {
                warn!("fd store: {e}");
            }
        }
        drop(passed);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let plan = Plan {
        allowed: std::sync::Arc::new(binary::Allowed::new(&exe, upgrade_dirs)),
        args,
        vms: config.vms.iter().map(|vm| vm.name.clone()).collect(),
        control: control.as_ref().map(|c| c.as_raw_fd()),
        dir: dir.clone(),
        max_restarts: limit.max_restarts,
        window: limit.window,
        exe,
        upgrade,
        live: sessions
            .iter()
            .map(|(_, adopted)| std::sync::atomic::AtomicBool::new(adopted.is_some()))
            .collect(),
        journals,
    };
    let (supervisor, child) = match Supervisor::start(plan) {
        Ok(started) => started,
        Err(e) => {
            error!("{e}");
            cleanup();
            return ExitCode::FAILURE;
        }
    };
    info!(
        "holder: {} VMs, private sockets in {}",
        config.vms.len(),
        dir.display()
    );

    let stopping = {
        let (supervisor, cleanup) = (supervisor.clone(), cleanup.clone());
        std::thread::Builder::new()
            .name("signals".to_string())
            .spawn(move || {
                loop {
                    let mut signal: libc::c_int = 0;
                    // SAFETY: `signals` is initialised; `signal` is a valid
                    // out pointer.
                    if unsafe { libc::sigwait(&signals, &mut signal) } != 0 {
                        break;
                    }
                    if signal == libc::SIGHUP {
                        supervisor.upgrade();
                        continue;
                    }
                    info!("signal {signal}: stopping the serving process and exiting");
                    break;
                }
                supervisor.stop();
                cleanup();
                std::process::exit(0);
            })
    };
    let upgrades = {
        let supervisor = supervisor.clone();
        std::thread::Builder::new()
            .name("upgrades".to_string())
            .spawn(move || supervisor.serve_upgrade_requests())
    };
    if let Err(e) = upgrades {
        error!("cannot start the upgrade thread: {e}");
    }
    if let Err(e) = stopping {
        error!("cannot start the signal thread: {e}");
        supervisor.stop();
        cleanup();
        return ExitCode::FAILURE;
    }
    for (((index, vm), listener), (persist, adopted)) in
        config.vms.iter().enumerate().zip(listeners).zip(sessions)
    {
        let relay = VmRelay {
            name: vm.name.clone(),
            index,
            listener,
            supervisor: supervisor.clone(),
            persist: std::cell::RefCell::new(persist),
            adopted,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("relay-{}", vm.name).chars().take(15).collect())
            .spawn(move || relay.serve());
        if let Err(e) = spawned {
            error!("VM {}: cannot start its relay thread: {e}", vm.name);
            supervisor.stop();
            cleanup();
            return ExitCode::FAILURE;
        }
    }
    if let Some(fd_store) = &fd_store {
        if let Err(e) = fd_store.ready("holding the VMs' devices") {
            warn!("{e}");
        }
    }
    if !supervisor.run(child) {
        // Stopped: the signal thread exits (status 0) once it cleaned up.
        loop {
            std::thread::park();
        }
    }
    // Keep the control listener until here: every generation gets it.
    drop(control);
    cleanup();
    ExitCode::FAILURE
}

/// VM `vm`'s device journal: the one the fd store kept, or a new one
/// (stored, under a store).
fn kept_journal(
    fd_store: Option<&store::FdStore>,
    passed: &mut store::Stored,
    vm: &str,
) -> std::io::Result<std::os::fd::OwnedFd> {
    let name = store::vm_name(vm, "journal");
    if let Some(journal) = passed.take(&name) {
        info!("VM {vm}: device journal from the fd store");
        return Ok(journal);
    }
    let journal = serving::journal_file()?;
    if let Some(fd_store) = fd_store {
        use std::os::fd::AsFd;
        if let Err(e) = fd_store.put(&name, journal.as_fd()) {
            warn!("VM {vm}: {e}");
        }
    }
    Ok(journal)
}

/// VM `vm`'s persister, and the session a dead holder left in the store
/// if there is one to go on with (its front-end's connection and state).
fn kept_session(
    fd_store: &std::sync::Arc<store::FdStore>,
    passed: &mut store::Stored,
    vm: &str,
) -> (
    Option<persist::Persister>,
    Option<(std::os::unix::net::UnixStream, persist::Restored)>,
) {
    let conn = passed.take(&store::vm_name(vm, "conn"));
    let (persister, restored) = match persist::Persister::open(fd_store.clone(), vm, passed) {
        Ok(opened) => opened,
        Err(e) => {
            warn!("VM {vm}: fd store: {e}; this VM will not outlive the holder");
            return (None, None);
        }
    };
    match (conn, restored) {
        (Some(conn), Ok(Some(restored))) => {
            info!(
                "VM {vm}: a session from the fd store ({} messages): going on with it",
                restored.record.len()
            );
            (
                Some(persister),
                Some((std::os::unix::net::UnixStream::from(conn), restored)),
            )
        }
        (Some(_), restored) => {
            let why = match restored {
                Err(e) => e.to_string(),
                _ => "no session image".to_string(),
            };
            warn!("VM {vm}: a front-end connection in the fd store, but its session cannot go on ({why}): closed");
            if let Err(e) = persister.remove_connection() {
                warn!("VM {vm}: fd store: {e}");
            }
            (Some(persister), None)
        }
        (None, _) => (Some(persister), None),
    }
}
