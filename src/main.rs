//! `cenallocd`: the cenalloc vhost-user device backend.
//!
//! ```text
//! cenallocd --socket-path /tmp/cenalloc.sock [--pool KIND:SIZE[:OPTS]]... [--config FILE]
//! cenallocd --fd FD ...     # FD: a listening unix socket inherited from the caller
//! ```
//! Never daemonizes; logs to stderr (level from `RUST_LOG`, default info);
//! SIGTERM or SIGINT removes the socket it bound (none with `--fd`) and exits
//! with status 0. Bad arguments, an `--fd` included, exit with status 2.

use std::os::unix::io::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{error, info};
use vhost::vhost_user::Listener;

use cenalloc::config::{Args, Config, ListenOn};
use cenalloc::protocol;
use cenalloc::vhu_cenalloc::serve_forever;

/// Why an inherited `--fd` cannot be served.
#[derive(thiserror::Error, Debug)]
enum FdError {
    #[error("--fd {0}: {1}")]
    Unusable(RawFd, std::io::Error),
    #[error("--fd {0} is not a socket")]
    NotSocket(RawFd),
    #[error("--fd {0} is not a unix stream socket")]
    NotUnixStream(RawFd),
    #[error("--fd {0} is not listening (cenallocd accepts front-ends on a listening socket only)")]
    NotListening(RawFd),
}

/// An integer socket option of `fd`.
fn socket_option(fd: RawFd, name: libc::c_int) -> Result<libc::c_int, FdError> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out pointers of the sizes given;
    // getsockopt only reads the descriptor number.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(FdError::Unusable(fd, std::io::Error::last_os_error()));
    }
    Ok(value)
}

/// Takes over the listening unix socket `fd` handed down by the caller.
fn listener_from_fd(fd: RawFd) -> Result<Listener, FdError> {
    // SAFETY: libc::stat is plain data; fstat fills it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid out pointer; fstat only reads the number.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(FdError::Unusable(fd, std::io::Error::last_os_error()));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(FdError::NotSocket(fd));
    }
    if socket_option(fd, libc::SO_DOMAIN)? != libc::AF_UNIX
        || socket_option(fd, libc::SO_TYPE)? != libc::SOCK_STREAM
    {
        return Err(FdError::NotUnixStream(fd));
    }
    if socket_option(fd, libc::SO_ACCEPTCONN)? == 0 {
        return Err(FdError::NotListening(fd));
    }
    // SAFETY: fcntl on a descriptor checked open above; no pointers.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(FdError::Unusable(fd, std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is an open listening unix stream socket that the caller
    // gave to this process for this purpose; nothing else here owns or
    // closes it, so the UnixListener may take ownership.
    let listener = Listener::from(unsafe { UnixListener::from_raw_fd(fd) });
    // The caller may have left it non-blocking; accept() must wait.
    listener
        .set_nonblocking(false)
        .map_err(|e| FdError::Unusable(fd, std::io::Error::other(e)))?;
    Ok(listener)
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread spawned
/// after), then waits for them on a dedicated thread that removes the
/// socket it bound, if any, and exits.
fn handle_termination_signals(socket_path: Option<PathBuf>) -> std::io::Result<()> {
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
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is initialised and `signal` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&set, &mut signal) };
            if rc == 0 {
                info!("signal {signal}: exiting");
            }
            if let Some(path) = &socket_path {
                let _ = std::fs::remove_file(path);
            }
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

    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cenallocd: {e}");
            return ExitCode::from(2);
        }
    };

    let bound_path = match &config.listen {
        ListenOn::Path(path) => Some(path.clone()),
        ListenOn::Fd(_) => None,
    };
    if let Err(e) = handle_termination_signals(bound_path.clone()) {
        error!("cannot set up signal handling: {e}");
        return ExitCode::FAILURE;
    }
    let (mut listener, description) = match &config.listen {
        ListenOn::Path(path) => match Listener::new(path, true) {
            Ok(listener) => (listener, path.display().to_string()),
            Err(e) => {
                error!("cannot listen on {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        ListenOn::Fd(fd) => match listener_from_fd(*fd) {
            Ok(listener) => (listener, format!("inherited fd {fd}")),
            Err(e) => {
                eprintln!("cenallocd: {e}");
                return ExitCode::from(2);
            }
        },
    };
    info!(
        "listening on {description} ({} pools, config space {} bytes)",
        config.device.pool.allocators.len(),
        std::mem::size_of::<protocol::Config>()
    );
    if let Err(e) = serve_forever(&mut listener, &config.device, &config.hooks) {
        error!("{e}");
        if let Some(path) = &bound_path {
            let _ = std::fs::remove_file(path);
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
