//! Command line and configuration file → the daemon's validated
//! configuration.
//!
//! # VMs
//! Every socket the daemon listens on is one VM, named by the operator:
//! - `--socket-path NAME=PATH` (repeatable) binds PATH for VM NAME;
//!   `--socket-path PATH` names the VM after the file (`/run/vm1.sock`:
//!   `vm1`);
//! - `--fd [NAME=]FD` (repeatable) serves a listening unix socket the caller
//!   passes down (QEMU's back-end program conventions; default name `fdN`);
//! - systemd socket activation (`LISTEN_FDS`, names from
//!   `FileDescriptorName=`; the one named `control` is the control socket);
//! - `[[vm]]` tables of the configuration file (`name`, `socket`, and
//!   optionally their own `[vm.limits]`, `max_batch` and `[[vm.pool]]`);
//!   an activated socket of the same name replaces `socket`.
//!
//! At least one is required. Sockets the daemon binds get mode 0600
//! (0660 with a group) unless `--socket-mode`/`--socket-group` say
//! otherwise; see [`crate::listen`].
//!
//! # Pools and limits
//! Pools come from the configuration file (`[[pool]]` tables) followed by
//! the repeated `--pool KIND:SIZE[:OPTS]` flags; with neither, the default
//! layout ([`DeviceConfig::default_layout`]) is used. A `[[vm]]` with its
//! own `[[vm.pool]]` tables uses only those. `[limits]` are per VM (a VM's
//! `[vm.limits]` overrides single keys); `[daemon]` holds the daemon-wide
//! limits (see [`crate::registry`]), the control socket and the sandbox.
//!
//! `--pool` KIND is one of the well-known allocators (`system`, `dma32`,
//! `contig`, `contig32`) or a custom kind of the configuration file. SIZE
//! is what the guest donates at probe; the pool grows on demand up to
//! `max=SIZE` (default: no limit of its own). OPTS is a comma-separated
//! list of `below4g`, `align=SIZE`, `name=NAME`, `kinds=MASK`, `max=SIZE`.
//! SIZE accepts the suffixes K, M, G (powers of 1024). All pools together
//! stay below `max_pool_percent` of guest RAM (default 50).
//!
//! Configuration file (TOML):
//! ```toml
//! max_batch = 64
//! max_pool_percent = 50                  # all pools together, of guest RAM
//! poll_us = 50                           # poll for the next request (0: never)
//! exporter_types = ["contig", "sg"]     # or numbers (0x8000.. private)
//! [limits]                               # per VM
//! max_buffers = 1024
//! max_attachments_per_buffer = 16
//! max_buffer_size = "64M"
//! max_total_bytes = "256M"
//! [daemon]
//! max_vms = 16
//! max_buffers = 65536                    # sum over the connected VMs
//! max_total_bytes = "64G"                # sum over the connected VMs
//! control_socket = "/run/cenalloc/control.sock"
//! control_socket_group = "video"         # mode 0660 instead of 0600
//! allow_writable_export = false
//! max_exports_per_client = 64            # lowered if the descriptor limit is short (fd_budget)
//! control_idle_timeout_secs = 60         # a connection with nothing to do
//! control_request_timeout_secs = 10      # a request to arrive, an answer to go
//! socket_mode = "0660"
//! socket_group = "kvm"
//! user = "cenalloc"
//! seccomp = "kill"                       # kill, trap, log, none
//! landlock = "on"                        # on, off
//! max_lease_bytes = "2M"                 # per allocator; 0: no leases
//! max_regions = 16384                    # donated ranges held (heap bound)
//! [[kind]]                               # custom memory kinds
//! bit = 8
//! name = "carveout"
//! contiguous = true
//! max_address = "4G"
//! align = "2M"
//! [[pool]]
//! name = "carveout"
//! kind = "carveout"                      # or strategy + kinds
//! size = "32M"                           # donated at probe
//! max_size = "128M"                      # grows on demand up to this
//! below_4g = true
//! align = "2M"
//! [[vm]]
//! name = "vm1"
//! socket = "/run/cenalloc/vm1.sock"
//! [vm.limits]
//! max_buffers = 256
//! ```
//!
//! # Sharing between VMs (issue 17)
//! Being built: these keys are parsed and checked (`share.rs`), the device
//! does not share yet. Only VMs named together in a `[[share_group]]`
//! share; a VM in no group gets no share configuration
//! ([`VmConfig::share`] is `None`). docs/design/cross-vm-sharing.md.
//! ```toml
//! [share]                                # daemon-wide
//! revoke_timeout_ms = 1000               # 1..=60000
//! unmap_timeout_ms = 2000                # 1..=60000
//! grace_ms = 20                          # 0..=1000
//! [[share_group]]
//! name = "camera"                        # 1..=15 bytes of a-z 0-9 _ -
//! exporters = ["alpha"]                  # VM names; each needs a share pool
//! importers = ["beta"]                   # each needs a window
//! access = "read-only"                   # or "read-write"
//! max_importers = 4
//! [share_group.kind_map]                 # importer's custom kind -> exporter's
//! scanout = ["carveout"]
//! [[pool]]                               # or [[vm.pool]]
//! kind = "contig"
//! size = "32M"
//! share = true                           # contiguous; align 2M by default
//! [limits.share]                         # every VM; [vm.share] overrides
//! window = "64M"                         # importers: power of two, 2M..=1G
//! max_imports = 16
//! max_import_bytes = "256M"
//! max_mappings = 8                       # 1..=64
//! max_shares = 16
//! max_shared_bytes = "256M"
//! max_quarantine_bytes = "64M"
//! ```

//! # Layout
//! `cli.rs` is the command line, `file.rs` the file's TOML schema, `pools.rs`
//! turns kinds, pools and limits into a [`DeviceConfig`], `share.rs` the
//! sharing tables into a [`ShareConfig`] and each VM's [`VmShare`], and
//! this module joins them with the sockets into the daemon's [`Config`];
//! `print.rs` prints it back (`--print-config`, [`Config::describe`]).

mod cli;
mod file;
mod pools;
mod print;
mod share;
#[cfg(test)]
mod tests;

pub use cli::{parse_mode, valid_name, Args, NamedFd, NamedPath};
pub use pools::{device_config, parse_size};
pub use share::{
    valid_group_name, KindMapping, ShareAccess, ShareConfig, ShareGroup, ShareLimits,
    ShareTimeouts, VmShare,
};

use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control::server::{DEFAULT_IDLE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
use crate::device::DeviceConfig;
use crate::listen::{ActivatedSocket, SocketPermissions, DEFAULT_GROUP_MODE, DEFAULT_MODE};
use crate::model::kinds;
use crate::protocol::{CENALLOC_MAX_BATCH, CENALLOC_MAX_MAP_TYPES, CENALLOC_MAX_POOLS};
use crate::registry::DaemonLimits;
use crate::sandbox::{self, SandboxConfig};

use file::{read_config_file, ConfigFile};
use pools::build_device;

/// Name of the activated socket that is the control socket.
pub const CONTROL_FD_NAME: &str = "control";
/// Default number of exports one control connection may hold.
pub const DEFAULT_MAX_EXPORTS_PER_CLIENT: u32 = 64;

/// Longest control socket timeout the configuration accepts, seconds.
const MAX_CONTROL_TIMEOUT_SECS: u32 = 86_400;

/// A control socket timeout of `[daemon]`: 1 s to a day, or `default`.
fn control_timeout(key: &str, secs: Option<u32>, default: Duration) -> Result<Duration, Error> {
    match secs {
        None => Ok(default),
        Some(secs @ 1..=MAX_CONTROL_TIMEOUT_SECS) => Ok(Duration::from_secs(u64::from(secs))),
        Some(secs) => Err(Error::Daemon(format!(
            "{key} = {secs}: must be 1..={MAX_CONTROL_TIMEOUT_SECS}"
        ))),
    }
}

/// Where front-ends (or control clients) connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenOn {
    /// A socket the daemon binds (and removes when it exits).
    Path(PathBuf),
    /// An inherited listening socket, owned by the caller's file system
    /// entry (if any): the daemon neither binds nor removes anything.
    Fd(RawFd),
}

impl ListenOn {
    /// The listener: bound now (its path joins `owned`, to be removed at
    /// exit), or inherited. On error, the exit status it calls for: 1 for
    /// a socket that cannot be bound, 2 for an unusable `--fd`.
    pub fn open(
        &self,
        permissions: crate::listen::SocketPermissions,
        owned: &mut Vec<crate::listen::OwnedPath>,
    ) -> Result<std::os::unix::net::UnixListener, (crate::listen::Error, u8)> {
        match self {
            ListenOn::Path(path) => {
                let (listener, path) =
                    crate::listen::bind(path, permissions).map_err(|e| (e, 1))?;
                owned.push(path);
                Ok(listener)
            }
            ListenOn::Fd(fd) => crate::listen::listener_from_fd(*fd).map_err(|e| (e, 2)),
        }
    }
}

impl std::fmt::Display for ListenOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenOn::Path(path) => write!(f, "{}", path.display()),
            ListenOn::Fd(fd) => write!(f, "fd {fd}"),
        }
    }
}

/// Test hooks of the queue glue; empty in normal builds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Where the fault to inject comes from (`--fault`, `--fault-file`).
    #[cfg(feature = "fault-injection")]
    pub fault: Option<crate::fault::Source>,
}

/// One VM: its name, socket and device configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    pub name: String,
    pub listen: ListenOn,
    pub device: DeviceConfig,
    /// What it may share (issue 17); `None` for a VM in no
    /// `[[share_group]]`, served exactly as before sharing existed.
    pub share: Option<VmShare>,
}

impl VmConfig {
    /// The size of its window (the shared memory region), if it imports.
    pub fn window(&self) -> Option<u64> {
        self.share.as_ref().and_then(|share| share.window)
    }
}

/// The control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub listen: ListenOn,
    pub permissions: SocketPermissions,
    pub allow_writable_export: bool,
    pub max_exports_per_client: u32,
    /// See [`crate::control::server::ControlPolicy`].
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

/// The validated configuration of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vms: Vec<VmConfig>,
    pub control: Option<ControlConfig>,
    /// Permissions of the VM sockets the daemon binds.
    pub socket_permissions: SocketPermissions,
    pub daemon: DaemonLimits,
    pub sandbox: SandboxConfig,
    /// Test hooks of the queue glue (none in normal builds), every VM's.
    pub hooks: Hooks,
    /// Cross-VM sharing (issue 17): timeouts and groups; no group, no
    /// sharing. Each member's own view is [`VmConfig::share`].
    pub share: ShareConfig,
}

/// Everything wrong a configuration can be.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error(
        "no VM socket: give --socket-path, --fd, [[vm]] in the configuration or socket activation"
    )]
    NoSocket,
    #[error("cannot read {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    ParseConfig {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("--pool {spec:?}: {reason}")]
    PoolSpec { spec: String, reason: String },
    #[error("invalid size {0:?} (a number with an optional K, M or G suffix)")]
    Size(String),
    #[error("size {0:?} does not fit in 64 bits")]
    SizeTooLarge(String),
    #[error("kind {name:?}: bit {bit} must be {first}..=31", first = kinds::FIRST_CUSTOM_BIT)]
    KindBit { name: String, bit: u8 },
    #[error("unknown memory kind {0:?}")]
    UnknownKind(String),
    #[error("unknown mapping type {0:?} (sg, contig or a number 0x8000..=0xffff)")]
    UnknownMappingType(String),
    #[error("{0} pools, the protocol carries at most {max}", max = CENALLOC_MAX_POOLS)]
    TooManyPools(usize),
    #[error("{0} exporter types, the protocol carries at most {max}", max = CENALLOC_MAX_MAP_TYPES)]
    TooManyExporterTypes(usize),
    #[error("max_batch {0} must be 1..={max}", max = CENALLOC_MAX_BATCH)]
    MaxBatch(u32),
    #[error("pool {name:?}: size must be a non-zero multiple of its alignment {align:#x}")]
    PoolSize { name: String, align: u64 },
    #[error("pool {name:?}: max_size must be at least its size and a multiple of 1 MiB")]
    PoolMaxSize { name: String },
    #[error("max_pool_percent {0} must be 1..=90")]
    PoolPercent(u32),
    #[error("poll_us {0} must be at most {max}", max = crate::poll::MAX_POLL_US)]
    PollUs(u32),
    #[error("pool configuration rejected by the model: {0}")]
    Model(#[from] crate::model::Error),
    #[error("VM name {0:?}: use 1-64 of A-Z a-z 0-9 _ . - (not starting with . or -)")]
    BadName(String),
    #[error("cannot name a VM after {0}: give NAME=PATH")]
    Unnamed(PathBuf),
    #[error("VM name {0:?} is used twice")]
    DuplicateName(String),
    #[error("socket {0} is used twice")]
    DuplicateSocket(String),
    #[error("two control sockets (--control-socket and socket activation)")]
    TwoControlSockets,
    #[error("VM {vm:?}: its limit {what} = {value} exceeds the daemon's {limit}")]
    VmOverDaemon {
        vm: String,
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("[daemon] {0}")]
    Daemon(String),
    #[error("VM {0:?}: the holder (--supervise) handed down no socket for it")]
    NotHandedDown(String),
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
    /// Cross-VM sharing (issue 17): `key` names the table and key at
    /// fault, e.g. `[[share_group]] "camera" importers`.
    #[error("{key}: {reason}")]
    Share { key: String, reason: String },
}

/// The VM name of an unnamed socket path: the file name without its
/// extension (`/run/vm1.sock` → `vm1`).
fn name_of_path(path: &Path) -> Result<String, Error> {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|stem| valid_name(stem))
        .map(str::to_string)
        .ok_or_else(|| Error::Unnamed(path.to_path_buf()))
}

fn checked_name(name: &str) -> Result<String, Error> {
    if valid_name(name) {
        Ok(name.to_string())
    } else {
        Err(Error::BadName(name.to_string()))
    }
}

impl Config {
    /// Builds and validates the configuration from the command line, the
    /// configuration file it names and the sockets passed by socket
    /// activation.
    ///
    /// The child of a holder (`--holder-fd`, see `crate::holder`) takes
    /// every socket from the holder: the `--holder-fd` sockets stand for
    /// socket activation, and the command line's and the file's socket
    /// paths and `--fd`s (the holder's) are not used.
    pub fn build(args: Args, activated: &[ActivatedSocket]) -> Result<Config, Error> {
        let handed_down: Vec<ActivatedSocket>;
        let no_paths: Vec<NamedPath> = Vec::new();
        let no_fds: Vec<NamedFd> = Vec::new();
        let from_holder = !args.holder_fds.is_empty();
        let (activated, socket_paths, fds) = if from_holder {
            handed_down = args
                .holder_fds
                .iter()
                .map(|named| ActivatedSocket {
                    fd: named.fd,
                    name: named
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("fd{}", named.fd)),
                })
                .collect();
            (&handed_down[..], &no_paths, &no_fds)
        } else {
            (activated, &args.socket_paths, &args.fds)
        };
        let file = match &args.config {
            Some(path) => read_config_file(path)?,
            None => ConfigFile::default(),
        };
        let base = build_device(
            &file,
            &file.limits,
            file.max_batch,
            &file.pools,
            &args.pools,
        )?;
        let daemon_file = &file.daemon;

        let mut vms: Vec<VmConfig> = Vec::new();
        let mut control_fd = None;
        for socket in activated {
            if socket.name == CONTROL_FD_NAME {
                control_fd = Some(socket.fd);
                continue;
            }
            // A [[vm]] of the same name takes the socket (and keeps its
            // own limits and pools); see below.
            if file.vms.iter().any(|vm| vm.name == socket.name) {
                continue;
            }
            vms.push(VmConfig {
                name: checked_name(&socket.name)?,
                listen: ListenOn::Fd(socket.fd),
                device: base.clone(),
                share: None,
            });
        }
        for named in socket_paths {
            let name = match &named.name {
                Some(name) => checked_name(name)?,
                None => name_of_path(&named.path)?,
            };
            vms.push(VmConfig {
                name,
                listen: ListenOn::Path(named.path.clone()),
                device: base.clone(),
                share: None,
            });
        }
        for named in fds {
            let name = match &named.name {
                Some(name) => checked_name(name)?,
                None => format!("fd{}", named.fd),
            };
            vms.push(VmConfig {
                name,
                listen: ListenOn::Fd(named.fd),
                device: base.clone(),
                share: None,
            });
        }
        for vm in &file.vms {
            let device = if vm.pools.is_empty() {
                build_device(
                    &file,
                    &file.limits.overridden_by(&vm.limits),
                    vm.max_batch.or(file.max_batch),
                    &file.pools,
                    &args.pools,
                )?
            } else {
                build_device(
                    &file,
                    &file.limits.overridden_by(&vm.limits),
                    vm.max_batch.or(file.max_batch),
                    &vm.pools,
                    &[],
                )?
            };
            // Socket activation passes the socket of a [[vm]] by its name;
            // the daemon then binds nothing for it.
            let listen = match activated.iter().find(|s| s.name == vm.name) {
                Some(socket) => ListenOn::Fd(socket.fd),
                None if from_holder => return Err(Error::NotHandedDown(vm.name.clone())),
                None => ListenOn::Path(vm.socket.clone()),
            };
            vms.push(VmConfig {
                name: checked_name(&vm.name)?,
                listen,
                device,
                share: None,
            });
        }
        if vms.is_empty() {
            return Err(Error::NoSocket);
        }
        for vm in &mut vms {
            if let Some(us) = args.poll_us {
                vm.device.poll_us = us;
            }
            if vm.device.poll_us > crate::poll::MAX_POLL_US {
                return Err(Error::PollUs(vm.device.poll_us));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let mut sockets = std::collections::BTreeSet::new();
        for vm in &vms {
            if !names.insert(vm.name.clone()) {
                return Err(Error::DuplicateName(vm.name.clone()));
            }
            if !sockets.insert(vm.listen.to_string()) {
                return Err(Error::DuplicateSocket(vm.listen.to_string()));
            }
        }
        let share = share::build(&file, &mut vms, &base.pool.custom_kinds)?;
        for vm in &mut vms {
            vm.device.window = vm.window();
        }

        let defaults = DaemonLimits::default();
        let daemon = DaemonLimits {
            max_vms: daemon_file.max_vms.unwrap_or(defaults.max_vms),
            max_buffers: daemon_file.max_buffers.unwrap_or(defaults.max_buffers),
            max_total_bytes: match &daemon_file.max_total_bytes {
                Some(size) => size.bytes()?,
                None => defaults.max_total_bytes,
            },
        };
        if daemon.max_vms == 0 {
            return Err(Error::Daemon("max_vms must be at least 1".into()));
        }
        for vm in &vms {
            let limits = &vm.device.pool.limits;
            let over = |what, value: u64, limit: u64| Error::VmOverDaemon {
                vm: vm.name.clone(),
                what,
                value,
                limit,
            };
            if u64::from(limits.max_buffers) > daemon.max_buffers {
                return Err(over(
                    "max_buffers",
                    u64::from(limits.max_buffers),
                    daemon.max_buffers,
                ));
            }
            if limits.max_total_bytes > daemon.max_total_bytes {
                return Err(over(
                    "max_total_bytes",
                    limits.max_total_bytes,
                    daemon.max_total_bytes,
                ));
            }
        }

        let group = |name: Option<&String>| -> Result<Option<u32>, Error> {
            name.map(|n| sandbox::lookup_group(n))
                .transpose()
                .map_err(Error::from)
        };
        let socket_group = group(
            args.socket_group
                .as_ref()
                .or(daemon_file.socket_group.as_ref()),
        )?;
        let socket_mode = match (args.socket_mode, &daemon_file.socket_mode) {
            (Some(mode), _) => mode,
            (None, Some(mode)) => mode.mode()?,
            (None, None) if socket_group.is_some() => DEFAULT_GROUP_MODE,
            (None, None) => DEFAULT_MODE,
        };
        let control_group = group(
            args.control_socket_group
                .as_ref()
                .or(daemon_file.control_socket_group.as_ref()),
        )?;
        let control_path = if from_holder {
            None
        } else {
            args.control_socket
                .clone()
                .or_else(|| daemon_file.control_socket.clone())
        };
        let control_listen = match (control_path, control_fd) {
            (Some(_), Some(_)) => return Err(Error::TwoControlSockets),
            (Some(path), None) => Some(ListenOn::Path(path)),
            (None, Some(fd)) => Some(ListenOn::Fd(fd)),
            (None, None) => None,
        };
        if let Some(listen) = &control_listen {
            if sockets.contains(&listen.to_string()) {
                return Err(Error::DuplicateSocket(listen.to_string()));
            }
        }
        let idle_timeout = control_timeout(
            "control_idle_timeout_secs",
            daemon_file.control_idle_timeout_secs,
            DEFAULT_IDLE_TIMEOUT,
        )?;
        let request_timeout = control_timeout(
            "control_request_timeout_secs",
            daemon_file.control_request_timeout_secs,
            DEFAULT_REQUEST_TIMEOUT,
        )?;
        let control = control_listen.map(|listen| ControlConfig {
            listen,
            permissions: SocketPermissions {
                mode: if control_group.is_some() {
                    DEFAULT_GROUP_MODE
                } else {
                    DEFAULT_MODE
                },
                group: control_group,
            },
            allow_writable_export: args.allow_writable_export
                || daemon_file.allow_writable_export.unwrap_or(false),
            max_exports_per_client: daemon_file
                .max_exports_per_client
                .unwrap_or(DEFAULT_MAX_EXPORTS_PER_CLIENT),
            idle_timeout,
            request_timeout,
        });

        let user = args
            .user
            .as_ref()
            .or(daemon_file.user.as_ref())
            .map(|name| sandbox::lookup_user(name))
            .transpose()?;
        let removable_dirs = vms
            .iter()
            .map(|vm| &vm.listen)
            .chain(control.as_ref().map(|c| &c.listen))
            .filter_map(|listen| match listen {
                ListenOn::Path(path) => Some(
                    path.parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."))
                        .to_path_buf(),
                ),
                ListenOn::Fd(_) => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        #[cfg(feature = "fault-injection")]
        let hooks = Hooks {
            fault: match (&args.fault, &args.fault_file) {
                (Some(fault), _) => Some(crate::fault::Source::Fixed(*fault)),
                (None, Some(path)) => Some(crate::fault::Source::File(path.clone())),
                (None, None) => None,
            },
        };
        #[cfg(not(feature = "fault-injection"))]
        let hooks = Hooks::default();
        // The fault file is read after start-up: Landlock lets the daemon
        // read in its directory (it is replaced by a rename).
        #[cfg(feature = "fault-injection")]
        let readable_dirs = match &args.fault_file {
            Some(path) => vec![path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()],
            None => Vec::new(),
        };
        #[cfg(not(feature = "fault-injection"))]
        let readable_dirs = Vec::new();
        let sandbox = SandboxConfig {
            seccomp: args.seccomp.or(daemon_file.seccomp).unwrap_or_default(),
            landlock: args.landlock.or(daemon_file.landlock).unwrap_or_default(),
            user,
            removable_dirs,
            readable_dirs,
        };
        Ok(Config {
            vms,
            control,
            socket_permissions: SocketPermissions {
                mode: socket_mode,
                group: socket_group,
            },
            daemon,
            sandbox,
            hooks,
            share,
        })
    }

    /// VM `vm`'s sharing view: `None` for a VM in no group (or unknown).
    pub fn vm_share(&self, vm: &str) -> Option<&VmShare> {
        self.vms
            .iter()
            .find(|config| config.name == vm)
            .and_then(|config| config.share.as_ref())
    }

    /// VM `vm` is a member of some `[[share_group]]`.
    pub fn is_share_member(&self, vm: &str) -> bool {
        self.share.is_member(vm)
    }

    /// The size of VM `vm`'s window, if it imports.
    pub fn window(&self, vm: &str) -> Option<u64> {
        self.vm_share(vm).and_then(|share| share.window)
    }
}

impl TryFrom<Args> for Config {
    type Error = Error;

    fn try_from(args: Args) -> Result<Self, Error> {
        Config::build(args, &[])
    }
}
