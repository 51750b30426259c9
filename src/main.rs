//! `cenallocd`: the cenalloc vhost-user device backend.
//!
//! ```text
//! cenallocd --socket-path /tmp/cenalloc.sock [--pool KIND:SIZE[:OPTS]]... [--config FILE]
//! ```
//! Never daemonizes; logs to stderr (level from `RUST_LOG`, default info);
//! SIGTERM or SIGINT removes the socket and exits with status 0.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{error, info};
use vhost::vhost_user::Listener;

use cenalloc::config::{Args, Config};
use cenalloc::protocol;
use cenalloc::vhu_cenalloc::serve_forever;

/// Blocks SIGINT and SIGTERM in this thread (and every thread spawned
/// after), then waits for them on a dedicated thread that removes the
/// socket and exits.
fn handle_termination_signals(socket_path: PathBuf) -> std::io::Result<()> {
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
                info!(
                    "signal {signal}: removing {} and exiting",
                    socket_path.display()
                );
            }
            let _ = std::fs::remove_file(&socket_path);
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

    if let Err(e) = handle_termination_signals(config.socket_path.clone()) {
        error!("cannot set up signal handling: {e}");
        return ExitCode::FAILURE;
    }
    let mut listener = match Listener::new(&config.socket_path, true) {
        Ok(listener) => listener,
        Err(e) => {
            error!("cannot listen on {}: {e}", config.socket_path.display());
            return ExitCode::FAILURE;
        }
    };
    info!(
        "listening on {} ({} pools, config space {} bytes)",
        config.socket_path.display(),
        config.device.pool.allocators.len(),
        std::mem::size_of::<protocol::Config>()
    );
    if let Err(e) = serve_forever(&mut listener, &config.device) {
        error!("{e}");
        let _ = std::fs::remove_file(&config.socket_path);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
