//! `cenallocd`: the cenalloc vhost-user device backend, for any number of
//! VMs.
//!
//! ```text
//! cenallocd --socket-path vm1=/run/cenalloc/vm1.sock --socket-path vm2=/run/cenalloc/vm2.sock \
//!           [--control-socket /run/cenalloc/control.sock] [--pool KIND:SIZE[:OPTS]]... [--config FILE]
//! cenallocd --fd [NAME=]FD ...   # a listening unix socket inherited from the caller
//! LISTEN_FDS=... cenallocd ...   # systemd socket activation
//! cenallocd --supervise ...       # a holder keeps the connections, restarts the server
//! cenallocd --print-config ...    # print the configuration as built (TOML) and exit
//! ```
//! With `--supervise` this process is the holder (src/holder/mod.rs): it
//! binds the sockets and keeps every front-end connection, and serves them
//! from a child process it restarts when it dies.
//! Each socket is one VM; each front-end gets its own device state and
//! threads. Never daemonizes; logs to stderr (level from `RUST_LOG`,
//! default info). Start-up: bind every socket, drop privileges (`--user`),
//! enter the sandbox (Landlock, seccomp), serve. SIGTERM or SIGINT removes
//! the sockets it created (only if they still are the files it created)
//! and exits with status 0. Bad arguments, an unusable `--fd` included,
//! exit with status 2; a socket that cannot be bound (in use, not a
//! socket) or a sandbox that cannot be set up, with status 1.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use log::{error, info, warn};
use vhost::vhost_user::Listener;

use cenalloc::config::{Args, Config};
use cenalloc::control::server::{self, ControlPolicy};
use cenalloc::fd_budget;
use cenalloc::holder;
use cenalloc::listen::{self, OwnedPath};
use cenalloc::protocol;
use cenalloc::registry::Registry;
use cenalloc::sandbox;
use cenalloc::vhu_cenalloc::{serve_vm_journaled, VmJournal};

/// Blocks SIGINT and SIGTERM in this thread and every thread spawned
/// after, so that they stay pending until [`wait_for_termination`] takes
/// them.
fn block_termination_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: `set` is initialised; the old mask is not needed (null).
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// The holder's channel for export status pages (`--status-fd`): an open
/// unix socket, handed down for this use only.
fn status_keeper(fd: i32) -> Result<(), String> {
    use std::os::fd::FromRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|e| e.to_string())?;
    if !link.to_string_lossy().starts_with("socket:") {
        return Err(format!("not a socket ({})", link.display()));
    }
    // SAFETY: the holder handed this descriptor down for this use only,
    // checked open above; nothing else in this process owns it.
    let channel = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    cenalloc::registry::exports::keeper::set(channel).map_err(|e| e.to_string())
}

/// The holder's upgrade eventfd (`--upgrade-fd`), checked to be an open
/// eventfd; it stays open for the process's life.
fn upgrade_eventfd(fd: i32) -> Result<i32, String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("--upgrade-fd {fd}: {e}"))?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(format!(
            "--upgrade-fd {fd} is not an eventfd ({})",
            link.display()
        ));
    }
    Ok(fd)
}

/// The device journals the holder handed down (`--journal-fd NAME=FD`,
/// `--adopt NAME`), by VM name. Each descriptor must be a regular file (a
/// memfd), named once.
fn vm_journals(
    fds: &[cenalloc::config::NamedFd],
    adopt: &[String],
) -> Result<std::collections::HashMap<String, VmJournal>, String> {
    use std::os::fd::FromRawFd;
    let mut journals = std::collections::HashMap::new();
    for named in fds {
        let Some(name) = &named.name else {
            return Err(format!("--journal-fd {}: no VM name", named.fd));
        };
        if journals.contains_key(name)
            || fds.iter().filter(|other| other.fd == named.fd).count() > 1
        {
            return Err(format!("--journal-fd {name}={}: given twice", named.fd));
        }
        // SAFETY: stat is plain data; zeroes are a valid value.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on an integer; `stat` is a valid out pointer.
        if unsafe { libc::fstat(named.fd, &mut stat) } != 0
            || stat.st_mode & libc::S_IFMT != libc::S_IFREG
        {
            return Err(format!(
                "--journal-fd {name}={}: not an open regular file",
                named.fd
            ));
        }
        // SAFETY: the holder handed this descriptor down for this use
        // only; it is checked open above and named once, so nothing else
        // in this process owns it.
        let file = unsafe { std::os::fd::OwnedFd::from_raw_fd(named.fd) };
        journals.insert(
            name.clone(),
            VmJournal {
                file,
                adopt: adopt.contains(name),
            },
        );
    }
    Ok(journals)
}

/// Waits for SIGINT/SIGTERM on a thread of its own, then removes the
/// sockets and exits.
fn wait_for_termination(set: libc::sigset_t, owned: Arc<Vec<OwnedPath>>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is initialised and `signal` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&set, &mut signal) };
            if rc == 0 {
                info!("signal {signal}: exiting");
            }
            listen::remove_owned(&owned);
            std::process::exit(0);
        })?;
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();

    if args.print_capabilities {
        println!("{{\n  \"type\": \"cenalloc\",\n  \"virtio-id\": {},\n  \"num-queues\": {},\n  \"config-size\": {}\n}}",
            protocol::VIRTIO_ID_DMABUF,
            protocol::CENALLOC_NUM_VQS,
            std::mem::size_of::<protocol::Config>());
        return ExitCode::SUCCESS;
    }
    if args.print_config_size {
        println!("{}", std::mem::size_of::<protocol::Config>());
        return ExitCode::SUCCESS;
    }

    let activated = match listen::take_activated_sockets() {
        Ok(sockets) => sockets,
        Err(e) => {
            eprintln!("cenallocd: {e}");
            return ExitCode::from(2);
        }
    };
    // What systemd's fd store passed back is the holder's (src/holder/store.rs).
    let (stored, activated) = holder::store::Stored::split(activated);
    let supervise = args.supervise.then(|| holder::RestartLimit {
        max_restarts: args.max_restarts,
        window: std::time::Duration::from_secs(args.restart_window),
    });
    let restarted = args.restarted;
    let upgrade_dirs = args.upgrade_dirs.clone();
    if let Some(fd) = args.status_fd {
        if let Err(e) = status_keeper(fd) {
            eprintln!("cenallocd: --status-fd {fd}: {e}");
            return ExitCode::from(2);
        }
    }
    let upgrade_fd = match args.upgrade_fd.map(upgrade_eventfd).transpose() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("cenallocd: {e}");
            return ExitCode::from(2);
        }
    };
    let mut journals = match vm_journals(&args.journal_fds, &args.adopt) {
        Ok(journals) => journals,
        Err(e) => {
            eprintln!("cenallocd: {e}");
            return ExitCode::from(2);
        }
    };
    let print_config = args.print_config;
    let config = match Config::build(args, &activated) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cenallocd: {e}");
            return ExitCode::from(2);
        }
    };
    if print_config {
        print!("{}", config.describe());
        return ExitCode::SUCCESS;
    }

    if let Some(limit) = supervise {
        let args = holder::child_args(std::env::args_os().skip(1));
        return holder::run(&config, args, limit, stored, &upgrade_dirs);
    }
    if restarted > 0 {
        info!(
            "started again by the holder ({restarted} serving processes died before this one): \
             the vhost-user sessions are replayed, the devices taken over from their journals"
        );
    }

    // Before the sandbox (no setrlimit there): the control policy below is
    // sized from this limit.
    let descriptors = fd_budget::raise_limit();

    let signals = match block_termination_signals() {
        Ok(set) => set,
        Err(e) => {
            error!("cannot set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };

    // Every socket first: a VM that cannot listen stops the start-up.
    let registry = Registry::new(config.daemon.clone());
    if !config.share.groups.is_empty() {
        let members = config
            .vms
            .iter()
            .filter_map(|vm| Some((vm.name.clone(), vm.share.clone()?)))
            .collect();
        let Some(key) = cenalloc::registry::sharing::draw_key() else {
            eprintln!("cenallocd: no random key for share tokens (getrandom failed)");
            return ExitCode::FAILURE;
        };
        registry.enable_sharing(cenalloc::registry::Sharing::new(
            config.share.clone(),
            members,
            key,
        ));
    }
    let mut owned = Vec::new();
    let mut vm_listeners = Vec::new();
    for vm in &config.vms {
        match vm.listen.open(config.socket_permissions, &mut owned) {
            Ok(listener) => vm_listeners.push(listener),
            Err((e, status)) => {
                eprintln!("cenallocd: VM {}: {e}", vm.name);
                listen::remove_owned(&owned);
                return ExitCode::from(status);
            }
        }
        if let Err(e) = registry.add_socket(&vm.name, &vm.listen.to_string()) {
            eprintln!("cenallocd: {e}");
            listen::remove_owned(&owned);
            return ExitCode::from(2);
        }
    }
    let control_listener = match &config.control {
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
    let owned = Arc::new(owned);

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && config.sandbox.user.is_none() {
        warn!("running as root: give --user to drop privileges");
    }
    // The signal thread starts inside the sandbox, after Landlock and
    // before the privilege drop and seccomp (see `sandbox::enter`): it is
    // the daemon's first thread.
    let signal_thread = || wait_for_termination(signals, owned.clone());
    match sandbox::enter(&config.sandbox, signal_thread) {
        Ok(applied) => info!("sandbox: {applied}"),
        Err(e) => {
            error!("cannot enter the sandbox: {e}");
            listen::remove_owned(&owned);
            return ExitCode::FAILURE;
        }
    }

    if let (Some(listener), Some(control)) = (control_listener, &config.control) {
        let wanted = ControlPolicy {
            allow_writable_export: control.allow_writable_export,
            max_exports_per_client: control.max_exports_per_client,
            idle_timeout: control.idle_timeout,
            request_timeout: control.request_timeout,
            upgrade_fd,
            ..ControlPolicy::default()
        };
        let Some(policy) = fd_budget::size_policy(descriptors, config.vms.len(), wanted.clone())
        else {
            error!(
                "{descriptors} descriptors leave none for control clients beside {} VMs: raise the limit (LimitNOFILE=)",
                config.vms.len()
            );
            listen::remove_owned(&owned);
            return ExitCode::FAILURE;
        };
        if policy != wanted {
            warn!(
                "{descriptors} descriptors: control clients limited to {} with {} exports each (configured: {} with {}); raise the limit (LimitNOFILE=) for more",
                policy.max_clients,
                policy.max_exports_per_client,
                wanted.max_clients,
                wanted.max_exports_per_client
            );
        }
        if let Err(e) = server::spawn(listener, registry.clone(), policy) {
            error!("cannot start the control socket: {e}");
            listen::remove_owned(&owned);
            return ExitCode::FAILURE;
        }
        info!("control socket on {}", control.listen);
    }

    // A VM thread only ends when its device configuration is unusable (or
    // panics): then the daemon stops.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(String, String)>();
    for (vm, listener) in config.vms.iter().zip(vm_listeners) {
        info!(
            "VM {} on {} ({} pools, config space {} bytes)",
            vm.name,
            vm.listen,
            vm.device.pool.allocators.len(),
            std::mem::size_of::<protocol::Config>()
        );
        let mut listener = Listener::from(listener);
        let (name, device, registry) = (vm.name.clone(), vm.device.clone(), registry.clone());
        let journal = journals.remove(&vm.name);
        let hooks = config.hooks.clone();
        let done = done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("serve-{}", vm.name).chars().take(15).collect())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    serve_vm_journaled(&mut listener, &name, &device, &hooks, &registry, journal)
                }));
                let why = match outcome {
                    Ok(Ok(())) => "stopped".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "its thread panicked".to_string(),
                };
                let _ = done.send((name, why));
            });
        if let Err(e) = spawned {
            error!("VM {}: cannot start its thread: {e}", vm.name);
            listen::remove_owned(&owned);
            return ExitCode::FAILURE;
        }
    }
    drop(done_tx);
    if let Ok((name, why)) = done_rx.recv() {
        error!("VM {name}: {why}");
    }
    listen::remove_owned(&owned);
    ExitCode::FAILURE
}
