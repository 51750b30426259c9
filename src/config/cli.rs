//! The command line of `cenallocd` (clap derive) and the small parsers
//! its arguments share with the configuration file.

use std::os::unix::io::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

use crate::sandbox::{LandlockMode, SeccompMode};

/// `[NAME=]PATH` of `--socket-path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPath {
    pub name: Option<String>,
    pub path: PathBuf,
}

impl FromStr for NamedPath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some((name, path)) = text.split_once('=') {
            if valid_name(name) {
                if path.is_empty() {
                    return Err(format!("{text:?}: empty path"));
                }
                return Ok(NamedPath {
                    name: Some(name.to_string()),
                    path: path.into(),
                });
            }
        }
        if text.is_empty() {
            return Err("empty path".into());
        }
        Ok(NamedPath {
            name: None,
            path: text.into(),
        })
    }
}

/// `[NAME=]FD` of `--fd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFd {
    pub name: Option<String>,
    pub fd: RawFd,
}

impl FromStr for NamedFd {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, number) = match text.split_once('=') {
            Some((name, number)) if valid_name(name) => (Some(name.to_string()), number),
            Some(_) => return Err(format!("{text:?}: bad VM name")),
            None => (None, text),
        };
        let fd = number
            .parse::<RawFd>()
            .ok()
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| format!("{number:?} is not a file descriptor number"))?;
        Ok(NamedFd { name, fd })
    }
}

/// A VM name: 1-64 of `A-Z a-z 0-9 _ . -`, not starting with `.` or `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses an octal permission mode (`600`, `0660`, `0o660`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o777 && !digits.is_empty())
        .ok_or_else(|| format!("{text:?} is not an octal mode 0..=0777"))
}

/// Command line of `cenallocd`.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "cenallocd",
    version,
    about = "vhost-user backend of the cenalloc device (virtio device ID 37), for any number of VMs"
)]
pub struct Args {
    /// Unix socket a front-end (QEMU) connects to, one per VM: NAME=PATH,
    /// or PATH (the VM is named after the file). Repeatable.
    #[arg(short, long = "socket-path", value_name = "[NAME=]PATH")]
    pub socket_paths: Vec<NamedPath>,

    /// A listening unix socket inherited from the caller, one per VM:
    /// NAME=FD, or FD (VM name fdN). Repeatable.
    #[arg(long = "fd", value_name = "[NAME=]FD")]
    pub fds: Vec<NamedFd>,

    /// A pool the guest is asked to donate: KIND:SIZE[:OPTS], repeatable
    /// (e.g. `contig:64M:below4g,align=2M`).
    #[arg(long = "pool", value_name = "KIND:SIZE[:OPTS]")]
    pub pools: Vec<String>,

    /// TOML configuration file: VMs, limits, pools, custom kinds, exporter
    /// types, the control socket, the sandbox.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Control socket for cenallocctl (mode 0600; read-only requests and
    /// exports).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Group allowed to use the control socket (mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub control_socket_group: Option<String>,

    /// Permission bits of the VM sockets (octal; default 0600, 0660 with
    /// --socket-group).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// Group of the VM sockets (name or number).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Let control clients ask for writable exports.
    #[arg(long)]
    pub allow_writable_export: bool,

    /// Run as this user once the sockets are bound (started as root).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// What a syscall outside the daemon's allowlist does (default kill).
    #[arg(long, value_enum, value_name = "MODE")]
    pub seccomp: Option<SeccompMode>,

    /// Restrict file system and network access with Landlock where the
    /// kernel has it (default on).
    #[arg(long, value_enum, value_name = "MODE")]
    pub landlock: Option<LandlockMode>,

    /// After answering, poll the control queue for the next request for
    /// up to US microseconds (adaptive below it) before sleeping; 0 never
    /// polls. Overrides the configuration file's poll_us.
    #[arg(long, value_name = "US")]
    pub poll_us: Option<u32>,

    /// Run as a holder (see src/holder/mod.rs): keep the sockets, every
    /// front-end connection and each VM's device journal in this process,
    /// serve them from a child process started from the same binary, and
    /// when it dies start a new child, which gets the vhost-user sessions
    /// replayed and takes every device over from its journal. SIGHUP
    /// replaces the child with one started from the binary now at this
    /// path (a live upgrade). Exports the child made are revoked
    /// (daemon_restarted) when it is gone.
    #[arg(long)]
    pub supervise: bool,

    /// With --supervise: give up (close the front-end connections and
    /// exit) when more than N serving processes died within
    /// --restart-window. Ignored without --supervise.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_restarts: u32,

    /// With --supervise: a directory whose executables `cenallocctl upgrade
    /// --binary PATH` may start (besides the holder's own binary, always
    /// allowed). Repeatable. Without it, --binary can name only the
    /// holder's own binary. Ignored without --supervise.
    #[arg(long = "upgrade-dir", value_name = "DIR")]
    pub upgrade_dirs: Vec<std::path::PathBuf>,

    /// With --supervise: the window of --max-restarts, in seconds.
    /// Ignored without --supervise.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub restart_window: u64,

    /// Internal (set by the holder of --supervise for its child): a
    /// listening socket handed down by the holder, NAME=FD, the control
    /// socket named `control`. Replaces every socket of the command line,
    /// the configuration file and socket activation.
    #[arg(
        long = "holder-fd",
        value_name = "NAME=FD",
        hide = true,
        conflicts_with = "supervise"
    )]
    pub holder_fds: Vec<NamedFd>,

    /// Internal (set by the holder of --supervise for its child): the
    /// device journal of VM NAME, a memfd the holder keeps: NAME=FD.
    #[arg(
        long = "journal-fd",
        value_name = "NAME=FD",
        hide = true,
        requires = "holder_fds"
    )]
    pub journal_fds: Vec<NamedFd>,

    /// Internal (set by the holder of --supervise for its child): VM NAME's
    /// front-end session outlived the serving process before this one:
    /// its device is taken over from its journal.
    #[arg(
        long = "adopt",
        value_name = "NAME",
        hide = true,
        requires = "journal_fds"
    )]
    pub adopt: Vec<String>,

    /// Internal (set by the holder of --supervise for its child): an
    /// eventfd the control socket's `upgrade` writes to ask the holder for
    /// a live upgrade.
    #[arg(
        long = "upgrade-fd",
        value_name = "FD",
        hide = true,
        requires = "holder_fds"
    )]
    pub upgrade_fd: Option<i32>,

    /// Internal (set by the holder of --supervise for its child): the
    /// channel on which every export's status page goes to the holder,
    /// which revokes them when this process is gone.
    #[arg(
        long = "status-fd",
        value_name = "FD",
        hide = true,
        requires = "holder_fds"
    )]
    pub status_fd: Option<i32>,

    /// Internal (set by the holder of --supervise for its child): how many
    /// serving processes died before this one (0 at the first start).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        hide = true,
        requires = "holder_fds"
    )]
    pub restarted: u32,

    /// Print the backend capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Print the size of the config space (QEMU's `config_size=`) and exit.
    #[arg(long)]
    pub print_config_size: bool,

    /// Build the configuration (command line, file, activated sockets),
    /// print it as TOML (each VM's socket and pools, what it may share)
    /// and exit; binds nothing. Exits 2 if the configuration is refused.
    #[arg(long)]
    pub print_config: bool,

    /// TEST BUILDS ONLY: answer the guest wrongly on purpose (see
    /// src/fault/mod.rs for the specs, e.g. `split-segment`, `no-answer:map`).
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "SPEC", conflicts_with = "fault_file")]
    pub fault: Option<crate::fault::Fault>,

    /// TEST BUILDS ONLY: the fault spec is the contents of FILE, re-read
    /// whenever it changes (missing or empty: an honest device).
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "FILE")]
    pub fault_file: Option<PathBuf>,
}
