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

use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::control::server::{DEFAULT_IDLE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
use crate::device::DeviceConfig;
use crate::listen::{ActivatedSocket, SocketPermissions, DEFAULT_GROUP_MODE, DEFAULT_MODE};
use crate::model::{
    kinds, AllocatorSpec, KindSpec, Limits, MappingType, Placement, Pool, Strategy,
};
use crate::protocol::{
    CENALLOC_MAX_BATCH, CENALLOC_MAX_MAP_TYPES, CENALLOC_MAX_POOLS, CENALLOC_PAGE_SIZE,
};
use crate::registry::DaemonLimits;
use crate::sandbox::{self, LandlockMode, SandboxConfig, SeccompMode};

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

    /// Print the backend capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Print the size of the config space (QEMU's `config_size=`) and exit.
    #[arg(long)]
    pub print_config_size: bool,

    /// TEST BUILDS ONLY: answer the guest wrongly on purpose (see
    /// src/fault.rs for the specs, e.g. `split-segment`, `no-answer:map`).
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "SPEC", conflicts_with = "fault_file")]
    pub fault: Option<crate::fault::Fault>,

    /// TEST BUILDS ONLY: the fault spec is the contents of FILE, re-read
    /// whenever it changes (missing or empty: an honest device).
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "FILE")]
    pub fault_file: Option<PathBuf>,
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
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
}

/// A size: an integer, or a string with an optional K/M/G suffix.
#[derive(Deserialize, Debug, Clone)]
#[serde(
    untagged,
    expecting = "a size: a non-negative integer or a string such as \"64M\""
)]
enum SizeValue {
    Number(u64),
    Text(String),
}

impl SizeValue {
    fn bytes(&self) -> Result<u64, Error> {
        match self {
            SizeValue::Number(n) => Ok(*n),
            SizeValue::Text(text) => parse_size(text),
        }
    }
}

/// A kind mask: a number, or a list of kind names.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged, expecting = "kinds: a 32-bit mask or a list of kind names")]
enum KindsValue {
    Mask(u32),
    Names(Vec<String>),
}

/// A mapping type: a number or `sg` / `contig`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged, expecting = "a mapping type: \"sg\", \"contig\" or a number")]
enum MapTypeValue {
    Code(u32),
    Name(String),
}

/// A permission mode: an integer (`0o660`) or an octal string (`"0660"`).
#[derive(Deserialize, Debug, Clone)]
#[serde(
    untagged,
    expecting = "a mode: an integer such as 0o660 or a string such as \"0660\""
)]
enum ModeValue {
    Number(u32),
    Text(String),
}

impl ModeValue {
    fn mode(&self) -> Result<u32, Error> {
        match self {
            ModeValue::Number(mode) if *mode <= 0o777 => Ok(*mode),
            ModeValue::Number(mode) => Err(Error::Daemon(format!(
                "socket_mode {mode:#o} is not a mode 0..=0o777"
            ))),
            ModeValue::Text(text) => parse_mode(text).map_err(Error::Daemon),
        }
    }
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_buffers: Option<u32>,
    max_attachments_per_buffer: Option<u32>,
    max_buffer_size: Option<SizeValue>,
    max_total_bytes: Option<SizeValue>,
    max_lease_bytes: Option<SizeValue>,
    max_regions: Option<u32>,
}

impl FileLimits {
    /// These limits with `over`'s keys replacing theirs.
    fn overridden_by(&self, over: &FileLimits) -> FileLimits {
        FileLimits {
            max_buffers: over.max_buffers.or(self.max_buffers),
            max_attachments_per_buffer: over
                .max_attachments_per_buffer
                .or(self.max_attachments_per_buffer),
            max_buffer_size: over
                .max_buffer_size
                .clone()
                .or_else(|| self.max_buffer_size.clone()),
            max_total_bytes: over
                .max_total_bytes
                .clone()
                .or_else(|| self.max_total_bytes.clone()),
            max_lease_bytes: over
                .max_lease_bytes
                .clone()
                .or_else(|| self.max_lease_bytes.clone()),
            max_regions: over.max_regions.or(self.max_regions),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileKind {
    bit: u8,
    name: String,
    #[serde(default)]
    contiguous: bool,
    max_address: Option<SizeValue>,
    align: Option<SizeValue>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FilePool {
    name: Option<String>,
    /// A well-known allocator or custom kind name; gives the defaults.
    kind: Option<String>,
    strategy: Option<String>,
    kinds: Option<KindsValue>,
    size: SizeValue,
    max_size: Option<SizeValue>,
    below_4g: Option<bool>,
    align: Option<SizeValue>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileDaemon {
    max_vms: Option<u32>,
    max_buffers: Option<u64>,
    max_total_bytes: Option<SizeValue>,
    control_socket: Option<PathBuf>,
    control_socket_group: Option<String>,
    allow_writable_export: Option<bool>,
    max_exports_per_client: Option<u32>,
    control_idle_timeout_secs: Option<u32>,
    control_request_timeout_secs: Option<u32>,
    socket_mode: Option<ModeValue>,
    socket_group: Option<String>,
    user: Option<String>,
    seccomp: Option<SeccompMode>,
    landlock: Option<LandlockMode>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileVm {
    name: String,
    socket: PathBuf,
    max_batch: Option<u32>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default, rename = "pool")]
    pools: Vec<FilePool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    max_batch: Option<u32>,
    max_pool_percent: Option<u32>,
    poll_us: Option<u32>,
    exporter_types: Option<Vec<MapTypeValue>>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    daemon: FileDaemon,
    #[serde(default, rename = "kind")]
    kinds: Vec<FileKind>,
    #[serde(default, rename = "pool")]
    pools: Vec<FilePool>,
    #[serde(default, rename = "vm")]
    vms: Vec<FileVm>,
}

/// Size suffixes (after lowercasing) and their shifts; longest first.
const SIZE_SUFFIXES: [(&str, u32); 9] = [
    ("kib", 10),
    ("mib", 20),
    ("gib", 30),
    ("kb", 10),
    ("mb", 20),
    ("gb", 30),
    ("k", 10),
    ("m", 20),
    ("g", 30),
];

/// Parses `4096`, `64K`, `2M`, `1G` (also `KiB`/`MiB`/`GiB`/`KB`,
/// case-insensitive), `0x1000`, `0x10M`. A lone `B` suffix means bytes for a
/// decimal number; in a hexadecimal one it is a digit (`0x1b` is 27).
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let lower = text.trim().to_ascii_lowercase();
    let hex = lower.strip_prefix("0x");
    let (digits, shift) = SIZE_SUFFIXES
        .iter()
        .find_map(|(suffix, shift)| Some((lower.strip_suffix(suffix)?, *shift)))
        .or_else(|| match hex {
            Some(_) => None,
            None => Some((lower.strip_suffix('b')?, 0)),
        })
        .unwrap_or((&lower, 0));
    let invalid = || Error::Size(text.to_string());
    // from_str_radix would also take a sign: only digits are a size.
    let value = match digits.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16)
        }
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse::<u64>()
        }
        _ => return Err(invalid()),
    }
    .map_err(|_| Error::SizeTooLarge(text.to_string()))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| Error::SizeTooLarge(text.to_string()))
}

fn parse_mask(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Well-known allocator templates: (name, strategy, kinds, below 4 GiB).
fn well_known(kind: &str) -> Option<(Strategy, u32, bool)> {
    Some(match kind {
        "system" => (Strategy::Scatter, kinds::SYSTEM, false),
        "dma32" => (Strategy::Scatter, kinds::DMA32 | kinds::SYSTEM, true),
        "contig" => (Strategy::Contiguous, kinds::CONTIG | kinds::SYSTEM, false),
        "contig32" | "contig-dma32" | "contig_dma32" => (
            Strategy::Contiguous,
            kinds::CONTIG_DMA32 | kinds::CONTIG | kinds::DMA32 | kinds::SYSTEM,
            true,
        ),
        _ => return None,
    })
}

fn kind_bit(name: &str, custom: &[KindSpec]) -> Option<u32> {
    match name {
        "system" => Some(kinds::SYSTEM),
        "contig" => Some(kinds::CONTIG),
        "dma32" => Some(kinds::DMA32),
        "contig32" | "contig-dma32" | "contig_dma32" => Some(kinds::CONTIG_DMA32),
        _ => custom
            .iter()
            .find(|k| k.name == name)
            .and_then(|k| 1u32.checked_shl(u32::from(k.bit))),
    }
}

/// The allocator template of a kind name: well-known or custom.
fn template(kind: &str, custom: &[KindSpec]) -> Result<(Strategy, u32, bool, u64), Error> {
    if let Some((strategy, mask, below_4g)) = well_known(kind) {
        return Ok((strategy, mask, below_4g, CENALLOC_PAGE_SIZE));
    }
    let spec = custom
        .iter()
        .find(|k| k.name == kind)
        .ok_or_else(|| Error::UnknownKind(kind.to_string()))?;
    let strategy = if spec.contiguous {
        Strategy::Contiguous
    } else {
        Strategy::Scatter
    };
    let mask = 1u32
        .checked_shl(u32::from(spec.bit))
        .ok_or_else(|| Error::UnknownKind(kind.to_string()))?;
    Ok((
        strategy,
        mask,
        spec.max_address <= crate::model::FOUR_GIB,
        spec.align.max(CENALLOC_PAGE_SIZE),
    ))
}

/// A pool's allocator, its size at probe and its largest size (0: none).
type PoolEntry = (AllocatorSpec, u64, u64);

/// Parses one `--pool KIND:SIZE[:OPTS]`.
fn parse_pool_flag(spec: &str, custom: &[KindSpec]) -> Result<PoolEntry, Error> {
    let bad = |reason: String| Error::PoolSpec {
        spec: spec.to_string(),
        reason,
    };
    let mut parts = spec.splitn(3, ':');
    let kind = parts.next().unwrap_or_default();
    let size_text = parts
        .next()
        .ok_or_else(|| bad("expected KIND:SIZE[:OPTS]".into()))?;
    let size = parse_size(size_text).map_err(|e| bad(e.to_string()))?;
    let (strategy, mut mask, mut below_4g, mut align) =
        template(kind, custom).map_err(|e| bad(e.to_string()))?;
    let mut name = kind.to_string();
    let mut max_size = 0;
    if let Some(opts) = parts.next() {
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                None if opt == "below4g" => below_4g = true,
                Some(("align", value)) => {
                    align = parse_size(value).map_err(|e| bad(e.to_string()))?
                }
                Some(("name", value)) => name = value.to_string(),
                Some(("max", value)) => {
                    max_size = parse_size(value).map_err(|e| bad(e.to_string()))?
                }
                Some(("kinds", value)) => {
                    mask =
                        parse_mask(value).ok_or_else(|| bad(format!("bad kind mask {value:?}")))?
                }
                _ => return Err(bad(format!("unknown option {opt:?}"))),
            }
        }
    }
    let allocator = AllocatorSpec {
        name,
        strategy,
        kinds: mask,
        placement: Placement {
            contiguous: strategy == Strategy::Contiguous,
            below_4g,
            align,
        },
    };
    Ok((allocator, size, max_size))
}

fn parse_map_type(value: &MapTypeValue) -> Result<MappingType, Error> {
    let code = match value {
        MapTypeValue::Code(code) => *code,
        MapTypeValue::Name(name) => match name.as_str() {
            "sg" | "scatter-gather" | "scatter_gather" => return Ok(MappingType::ScatterGather),
            "contig" | "contiguous" => return Ok(MappingType::Contiguous),
            other => {
                parse_mask(other).ok_or_else(|| Error::UnknownMappingType(other.to_string()))?
            }
        },
    };
    MappingType::from_code(code).ok_or_else(|| Error::UnknownMappingType(code.to_string()))
}

fn read_config_file(path: &Path) -> Result<ConfigFile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| Error::ParseConfig {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Builds and validates the device configuration from the optional file
/// and the `--pool` flags.
pub fn device_config(file: Option<&Path>, pool_flags: &[String]) -> Result<DeviceConfig, Error> {
    let file = match file {
        Some(path) => read_config_file(path)?,
        None => ConfigFile::default(),
    };
    build_device(&file, &file.limits, file.max_batch, &file.pools, pool_flags)
}

/// The device configuration of one VM: `limits`, `max_batch` and `pools`
/// are the file's or the VM's own; the `--pool` flags follow the pools of
/// the file's top level only (a VM with its own pools gets no flags).
fn build_device(
    file: &ConfigFile,
    limits: &FileLimits,
    max_batch: Option<u32>,
    file_pools: &[FilePool],
    pool_flags: &[String],
) -> Result<DeviceConfig, Error> {
    let mut config = DeviceConfig::default_layout();
    let defaults = Limits::default();
    config.pool.limits = Limits {
        max_buffers: limits.max_buffers.unwrap_or(defaults.max_buffers),
        max_attachments_per_buffer: limits
            .max_attachments_per_buffer
            .unwrap_or(defaults.max_attachments_per_buffer),
        max_buffer_size: match &limits.max_buffer_size {
            Some(size) => size.bytes()?,
            None => defaults.max_buffer_size,
        },
        max_total_bytes: match &limits.max_total_bytes {
            Some(size) => size.bytes()?,
            None => defaults.max_total_bytes,
        },
        max_lease_bytes: match &limits.max_lease_bytes {
            Some(size) => size.bytes()?,
            None => defaults.max_lease_bytes,
        },
        max_regions: limits.max_regions.unwrap_or(defaults.max_regions),
    };
    if let Some(us) = file.poll_us {
        config.poll_us = us;
    }
    if let Some(percent) = file.max_pool_percent {
        if percent == 0 || percent > 90 {
            return Err(Error::PoolPercent(percent));
        }
        config.max_pool_percent = percent;
    }
    if let Some(max_batch) = max_batch {
        if max_batch == 0 || max_batch > CENALLOC_MAX_BATCH {
            return Err(Error::MaxBatch(max_batch));
        }
        config.max_batch = max_batch;
    }
    if let Some(types) = &file.exporter_types {
        if types.len() > CENALLOC_MAX_MAP_TYPES {
            return Err(Error::TooManyExporterTypes(types.len()));
        }
        config.pool.exporter_types = types.iter().map(parse_map_type).collect::<Result<_, _>>()?;
    }
    config.pool.custom_kinds = file
        .kinds
        .iter()
        .map(|k| {
            // Checked here, before a pool names the kind, so that the message
            // is about the bit rather than "unknown memory kind".
            if !(kinds::FIRST_CUSTOM_BIT..32).contains(&k.bit) {
                return Err(Error::KindBit {
                    name: k.name.clone(),
                    bit: k.bit,
                });
            }
            Ok(KindSpec {
                bit: k.bit,
                name: k.name.clone(),
                contiguous: k.contiguous,
                max_address: match &k.max_address {
                    Some(size) => size.bytes()?,
                    None => u64::MAX,
                },
                align: match &k.align {
                    Some(size) => size.bytes()?,
                    None => CENALLOC_PAGE_SIZE,
                },
            })
        })
        .collect::<Result<_, Error>>()?;

    let custom = config.pool.custom_kinds.clone();
    let mut pools: Vec<PoolEntry> = Vec::new();
    for pool in file_pools {
        let base = pool.kind.as_deref().unwrap_or("system");
        let (mut strategy, mut mask, mut below_4g, mut align) = template(base, &custom)?;
        if let Some(text) = &pool.strategy {
            strategy = match text.as_str() {
                "contiguous" | "contig" => Strategy::Contiguous,
                "scatter" | "sg" => Strategy::Scatter,
                other => return Err(Error::UnknownKind(format!("strategy {other}"))),
            };
        }
        if let Some(value) = &pool.kinds {
            mask = match value {
                KindsValue::Mask(mask) => *mask,
                KindsValue::Names(names) => names.iter().try_fold(0u32, |acc, name| {
                    kind_bit(name, &custom)
                        .map(|bit| acc | bit)
                        .ok_or_else(|| Error::UnknownKind(name.clone()))
                })?,
            };
        }
        if let Some(value) = pool.below_4g {
            below_4g = value;
        }
        if let Some(value) = &pool.align {
            align = value.bytes()?;
        }
        let spec = AllocatorSpec {
            name: pool.name.clone().unwrap_or_else(|| base.to_string()),
            strategy,
            kinds: mask,
            placement: Placement {
                contiguous: strategy == Strategy::Contiguous,
                below_4g,
                align,
            },
        };
        let max_size = match &pool.max_size {
            Some(size) => size.bytes()?,
            None => 0,
        };
        pools.push((spec, pool.size.bytes()?, max_size));
    }
    for flag in pool_flags {
        pools.push(parse_pool_flag(flag, &custom)?);
    }
    if !pools.is_empty() {
        if pools.len() > CENALLOC_MAX_POOLS {
            return Err(Error::TooManyPools(pools.len()));
        }
        config.pool.allocators = pools.iter().map(|(spec, ..)| spec.clone()).collect();
        config.pool_sizes = pools.iter().map(|(_, size, _)| *size).collect();
        config.pool_max_sizes = pools.iter().map(|(.., max)| *max).collect();
    }
    for ((spec, size), max) in config
        .pool
        .allocators
        .iter()
        .zip(&config.pool_sizes)
        .zip(&config.pool_max_sizes)
    {
        let align = spec.placement.align.max(CENALLOC_PAGE_SIZE);
        if *size == 0 || size % align != 0 {
            return Err(Error::PoolSize {
                name: spec.name.clone(),
                align,
            });
        }
        // Config space carries the maximum in MiB.
        if *max != 0 && (max < size || max % (1 << 20) != 0 || max >> 20 > u64::from(u32::MAX)) {
            return Err(Error::PoolMaxSize {
                name: spec.name.clone(),
            });
        }
    }
    // The model is the judge of the rest (names, kinds, placements).
    Pool::new(config.pool.clone())?;
    Ok(config)
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
    pub fn build(args: Args, activated: &[ActivatedSocket]) -> Result<Config, Error> {
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
            });
        }
        for named in &args.socket_paths {
            let name = match &named.name {
                Some(name) => checked_name(name)?,
                None => name_of_path(&named.path)?,
            };
            vms.push(VmConfig {
                name,
                listen: ListenOn::Path(named.path.clone()),
                device: base.clone(),
            });
        }
        for named in &args.fds {
            let name = match &named.name {
                Some(name) => checked_name(name)?,
                None => format!("fd{}", named.fd),
            };
            vms.push(VmConfig {
                name,
                listen: ListenOn::Fd(named.fd),
                device: base.clone(),
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
                None => ListenOn::Path(vm.socket.clone()),
            };
            vms.push(VmConfig {
                name: checked_name(&vm.name)?,
                listen,
                device,
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
        let control_path = args
            .control_socket
            .clone()
            .or_else(|| daemon_file.control_socket.clone());
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
        })
    }
}

impl TryFrom<Args> for Config {
    type Error = Error;

    fn try_from(args: Args) -> Result<Self, Error> {
        Config::build(args, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("cenallocd").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("2M").unwrap(), 2 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn size_suffixes_and_hex_digits_do_not_mix_up() {
        assert_eq!(parse_size("1KB").unwrap(), 1 << 10);
        assert_eq!(parse_size("3mb").unwrap(), 3 << 20);
        assert_eq!(parse_size("512b").unwrap(), 512);
        assert_eq!(parse_size(" 0x10M ").unwrap(), 16 << 20);
        // A trailing b of a hexadecimal number is a digit, not "bytes".
        assert_eq!(parse_size("0x1b").unwrap(), 0x1b);
        assert_eq!(parse_size("0xab").unwrap(), 0xab);
        for bad in [
            "", "b", "K", "0x", "0xM", "+5", "-1", "0x+5", "1.5G", "64 M", "0x1g2",
        ] {
            assert!(
                matches!(parse_size(bad), Err(Error::Size(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn sizes_that_overflow_64_bits_say_so() {
        for big in [
            "18446744073709551616",
            "0x10000000000000000",
            "17179869184G",
            "0x400000000G",
        ] {
            assert!(
                matches!(parse_size(big), Err(Error::SizeTooLarge(_))),
                "{big:?}"
            );
        }
        assert_eq!(parse_size("17179869183G").unwrap(), 17179869183 << 30);
        assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
    }

    /// Writes `text` to a fresh file and builds the device config from it.
    fn config_from_toml(test: &str, text: &str) -> Result<DeviceConfig, Error> {
        let dir =
            std::env::temp_dir().join(format!("cenalloc-config-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let result = device_config(Some(&path), &[]);
        std::fs::remove_dir_all(&dir).ok();
        result
    }

    #[test]
    fn unknown_keys_are_refused_everywhere_with_their_name() {
        for (text, key) in [
            ("max_batchh = 4\n", "max_batchh"),
            ("[limits]\nmax_bufers = 4\n", "max_bufers"),
            (
                "[[kind]]\nbit = 8\nname = \"k\"\ncontigous = true\n",
                "contigous",
            ),
            ("[[pool]]\nsize = \"1M\"\nbelow4g = true\n", "below4g"),
            ("[extra]\na = 1\n", "extra"),
        ] {
            let error = config_from_toml("unknown", text).unwrap_err();
            assert!(
                matches!(error, Error::ParseConfig { .. }),
                "{text}: {error}"
            );
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn bad_values_in_the_file_get_clear_messages() {
        let error = config_from_toml("negative", "[[pool]]\nsize = -4096\n").unwrap_err();
        assert!(error.to_string().contains("a size"), "{error}");
        let error =
            config_from_toml("kinds", "[[pool]]\nsize = \"1M\"\nkinds = true\n").unwrap_err();
        assert!(error.to_string().contains("kind names"), "{error}");
        let error = config_from_toml("huge", "[[pool]]\nsize = \"99999999999G\"\n").unwrap_err();
        assert!(matches!(error, Error::SizeTooLarge(_)), "{error}");
        let error = config_from_toml(
            "bit",
            "[[kind]]\nbit = 40\nname = \"far\"\n[[pool]]\nkind = \"far\"\nsize = \"1M\"\n",
        )
        .unwrap_err();
        assert!(
            matches!(&error, Error::KindBit { name, bit: 40 } if name == "far"),
            "{error}"
        );
    }

    #[test]
    fn default_layout_asks_little_at_probe() {
        let config = Config::try_from(args(&["--socket-path", "/tmp/s"])).unwrap();
        assert_eq!(config.vms[0].device, DeviceConfig::default_layout());
        let total: u64 = config.vms[0].device.pool_sizes.iter().sum();
        assert!(total <= 16 << 20, "{total}");
        assert_eq!(
            config.vms[0].device.pool_sizes.len(),
            config.vms[0].device.pool.allocators.len()
        );
        assert_eq!(
            config.vms[0].device.pool_max_sizes,
            vec![0; config.vms[0].device.pool_sizes.len()]
        );
        assert_eq!(config.vms[0].device.max_pool_percent, 50);
    }

    #[test]
    fn polling_is_configured_by_flag_or_file() {
        let config = Config::try_from(args(&["-s", "/tmp/s"])).unwrap();
        assert_eq!(config.vms[0].device.poll_us, crate::poll::DEFAULT_POLL_US);
        let config = Config::try_from(args(&["-s", "/tmp/s", "--poll-us", "0"])).unwrap();
        assert_eq!(config.vms[0].device.poll_us, 0);
        let device = config_from_toml("poll", "poll_us = 200\n").unwrap();
        assert_eq!(device.poll_us, 200);
        let result = Config::try_from(args(&["-s", "/tmp/s", "--poll-us", "5000"]));
        assert!(matches!(result, Err(Error::PollUs(5000))));
    }

    #[test]
    fn pool_maxima_and_the_share_of_guest_ram() {
        let config = Config::try_from(args(&[
            "-s",
            "/tmp/s",
            "--pool",
            "system:4M:max=64M",
            "--pool",
            "contig:2M",
        ]))
        .unwrap();
        assert_eq!(config.vms[0].device.pool_max_sizes, vec![64 << 20, 0]);
        assert_eq!(config.vms[0].device.config_space().pools[0].max_mb, 64);
        // 64 MiB of its own, and half of a 1 GiB guest with the others'.
        let device = &config.vms[0].device;
        assert_eq!(device.pool_capacity_limit(0, 1 << 30, 0), 64 << 20);
        assert_eq!(device.pool_capacity_limit(1, 1 << 30, 500 << 20), 12 << 20);
        for bad in ["system:4M:max=2M", "system:4M:max=5000K"] {
            let result = Config::try_from(args(&["-s", "/tmp/s", "--pool", bad]));
            assert!(
                matches!(result, Err(Error::PoolMaxSize { .. })),
                "{bad} accepted"
            );
        }
        let device = config_from_toml(
            "maxima",
            "max_pool_percent = 25\n[limits]\nmax_lease_bytes = 0\nmax_regions = 64\n[[pool]]\nsize = \"1M\"\nmax_size = \"16M\"\n",
        )
        .unwrap();
        assert_eq!(device.max_pool_percent, 25);
        assert_eq!(device.pool_max_sizes, vec![16 << 20]);
        assert_eq!(device.pool.limits.max_lease_bytes, 0);
        assert_eq!(device.pool.limits.max_regions, 64);
        assert_eq!(
            device.features() & (1 << crate::protocol::CENALLOC_F_LEASE),
            0
        );
        for percent in ["0", "91"] {
            let result = config_from_toml("percent", &format!("max_pool_percent = {percent}\n"));
            assert!(matches!(result, Err(Error::PoolPercent(_))), "{percent}");
        }
    }

    #[test]
    fn pool_flags_replace_the_default_layout() {
        let config = Config::try_from(args(&[
            "-s",
            "/tmp/s",
            "--pool",
            "contig:64M:below4g,align=2M",
            "--pool",
            "system:32M:name=plenty",
        ]))
        .unwrap();
        let pools = &config.vms[0].device.pool.allocators;
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].strategy, Strategy::Contiguous);
        assert!(pools[0].placement.below_4g);
        assert_eq!(pools[0].placement.align, 2 << 20);
        assert_eq!(pools[1].name, "plenty");
        assert_eq!(config.vms[0].device.pool_sizes, vec![64 << 20, 32 << 20]);
    }

    #[test]
    fn bad_pool_flags_are_refused() {
        for bad in [
            "contig",
            "bogus:1M",
            "system:12Q",
            "system:1M:frob",
            "system:0",
            "contig:1M:align=3M",
        ] {
            let result = Config::try_from(args(&["-s", "/tmp/s", "--pool", bad]));
            assert!(result.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sockets_name_the_vms() {
        let config = Config::try_from(args(&["--fd", "3"])).unwrap();
        assert_eq!(config.vms[0].listen, ListenOn::Fd(3));
        assert_eq!(config.vms[0].name, "fd3");
        let config = Config::try_from(args(&["-s", "/tmp/s.sock"])).unwrap();
        assert_eq!(config.vms[0].listen, ListenOn::Path("/tmp/s.sock".into()));
        assert_eq!(config.vms[0].name, "s");
        let config = Config::try_from(args(&[
            "-s",
            "vm1=/tmp/a.sock",
            "--socket-path",
            "vm2=/tmp/b=c.sock",
            "--fd",
            "vm3=4",
            "-s",
            "/tmp/d=e/f.sock",
        ]))
        .unwrap();
        let names: Vec<_> = config.vms.iter().map(|vm| vm.name.as_str()).collect();
        assert_eq!(names, ["vm1", "vm2", "f", "vm3"]);
        assert_eq!(config.vms[1].listen, ListenOn::Path("/tmp/b=c.sock".into()));
        assert_eq!(
            config.vms[2].listen,
            ListenOn::Path("/tmp/d=e/f.sock".into())
        );
        assert_eq!(config.vms[3].listen, ListenOn::Fd(4));
        for bad in [
            &["cenallocd", "--fd", "-1"][..],
            &["cenallocd", "--fd", "three"][..],
            &["cenallocd", "--fd", "x y=3"][..],
            &["cenallocd", "--fd"][..],
            &["cenallocd", "-s", ""][..],
            &["cenallocd", "-s", "vm=", "--fd", "3"][..],
            &["cenallocd", "-s", "/tmp/a", "--socket-mode", "999"][..],
        ] {
            let error = Args::try_parse_from(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
        for (bad, message) in [
            (&["-s", "a=/tmp/1", "-s", "a=/tmp/2"][..], "used twice"),
            (&["-s", "a=/tmp/1", "-s", "b=/tmp/1"][..], "used twice"),
            (&["-s", "/tmp/.hidden"][..], "give NAME=PATH"),
            (
                &["-s", "/tmp/s", "--control-socket", "/tmp/s"][..],
                "used twice",
            ),
        ] {
            let error = Config::try_from(args(bad)).unwrap_err();
            assert!(error.to_string().contains(message), "{bad:?}: {error}");
        }
        // Built by hand (not through clap), no socket at all is an error too.
        let mut neither = args(&["--fd", "3"]);
        neither.fds.clear();
        assert!(matches!(Config::try_from(neither), Err(Error::NoSocket)));
    }

    #[test]
    fn socket_permissions_default_to_owner_only() {
        let config = Config::try_from(args(&["-s", "/tmp/s"])).unwrap();
        assert_eq!(config.socket_permissions, SocketPermissions::default());
        assert_eq!(config.socket_permissions.mode, 0o600);
        let config = Config::try_from(args(&["-s", "/tmp/s", "--socket-group", "0"])).unwrap();
        assert_eq!(
            config.socket_permissions,
            SocketPermissions {
                mode: 0o660,
                group: Some(0)
            }
        );
        let config = Config::try_from(args(&["-s", "/tmp/s", "--socket-mode", "0640"])).unwrap();
        assert_eq!(config.socket_permissions.mode, 0o640);
        let error = Config::try_from(args(&["-s", "/tmp/s", "--socket-group", "no-such-group-x"]))
            .unwrap_err();
        assert!(error.to_string().contains("no group"), "{error}");
        let config =
            Config::try_from(args(&["-s", "/tmp/s", "--control-socket", "/tmp/c"])).unwrap();
        let control = config.control.unwrap();
        assert_eq!(control.permissions.mode, 0o600);
        assert!(!control.allow_writable_export);
        assert_eq!(control.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(control.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn control_timeouts_are_a_second_to_a_day() {
        assert_eq!(
            control_timeout("k", Some(1), DEFAULT_IDLE_TIMEOUT).unwrap(),
            Duration::from_secs(1)
        );
        for secs in [0, MAX_CONTROL_TIMEOUT_SECS + 1] {
            let error = control_timeout("k", Some(secs), DEFAULT_IDLE_TIMEOUT).unwrap_err();
            assert!(error.to_string().contains("must be 1..="), "{error}");
        }
    }

    #[test]
    fn vm_tables_have_their_own_limits_and_pools() {
        let dir = std::env::temp_dir().join(format!("cenalloc-config-vms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vms.toml");
        std::fs::write(
            &path,
            r#"
[daemon]
max_vms = 3
max_buffers = 3000
max_total_bytes = "8G"
control_socket = "/run/c.sock"
socket_mode = 0o640
allow_writable_export = true
control_idle_timeout_secs = 300
seccomp = "log"
landlock = "off"
[limits]
max_buffers = 1000
max_total_bytes = "2G"
[[pool]]
kind = "system"
size = "8M"
[[vm]]
name = "one"
socket = "/run/one.sock"
[[vm]]
name = "two"
socket = "/run/two.sock"
max_batch = 8
[vm.limits]
max_buffers = 10
[[vm.pool]]
kind = "contig32"
size = "4M"
"#,
        )
        .unwrap();
        let config = Config::try_from(args(&["-c", path.to_str().unwrap()])).unwrap();
        assert_eq!(config.vms.len(), 2);
        let (one, two) = (&config.vms[0], &config.vms[1]);
        assert_eq!(one.listen, ListenOn::Path("/run/one.sock".into()));
        assert_eq!(one.device.pool.limits.max_buffers, 1000);
        assert_eq!(one.device.pool_sizes, vec![8 << 20]);
        assert_eq!(two.device.pool.limits.max_buffers, 10);
        assert_eq!(two.device.pool.limits.max_total_bytes, 2 << 30);
        assert_eq!(two.device.max_batch, 8);
        assert_eq!(two.device.pool.allocators[0].name, "contig32");
        assert_eq!(two.device.pool_sizes, vec![4 << 20]);
        assert_eq!(
            config.daemon,
            DaemonLimits {
                max_vms: 3,
                max_buffers: 3000,
                max_total_bytes: 8 << 30
            }
        );
        assert_eq!(config.socket_permissions.mode, 0o640);
        let control = config.control.as_ref().unwrap();
        assert_eq!(control.listen, ListenOn::Path("/run/c.sock".into()));
        assert!(control.allow_writable_export);
        assert_eq!(control.idle_timeout, Duration::from_secs(300));
        assert_eq!(control.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(config.sandbox.seccomp, SeccompMode::Log);
        assert_eq!(config.sandbox.landlock, LandlockMode::Off);
        assert_eq!(config.sandbox.removable_dirs, vec![PathBuf::from("/run")]);

        // Socket activation hands "two" its socket by name.
        let activated = [ActivatedSocket {
            fd: 3,
            name: "two".into(),
        }];
        let config = Config::build(args(&["-c", path.to_str().unwrap()]), &activated).unwrap();
        assert_eq!(config.vms.len(), 2);
        assert_eq!(config.vms[1].listen, ListenOn::Fd(3));
        assert_eq!(config.vms[1].device.pool.limits.max_buffers, 10);

        // A VM whose limits exceed the daemon's is refused at start-up.
        let over = dir.join("over.toml");
        std::fs::write(
            &over,
            "[daemon]\nmax_buffers = 10\n[[vm]]\nname = \"a\"\nsocket = \"/run/a.sock\"\n",
        )
        .unwrap();
        let error = Config::try_from(args(&["-c", over.to_str().unwrap()])).unwrap_err();
        assert!(matches!(error, Error::VmOverDaemon { .. }), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/cenallocd.toml");
        // The group may not exist where the test runs: any group will do.
        let text = std::fs::read_to_string(&example)
            .unwrap()
            .replace("socket_group = \"kvm\"", "socket_group = \"0\"");
        let dir = std::env::temp_dir().join(format!("cenalloc-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cenallocd.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::try_from(args(&["-c", path.to_str().unwrap()])).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let names: Vec<&str> = config.vms.iter().map(|vm| vm.name.as_str()).collect();
        assert_eq!(names, ["desktop", "camera"]);
        assert_eq!(config.vms[1].device.pool.allocators[0].name, "contig32");
        assert_eq!(config.socket_permissions.mode, 0o660);
        assert_eq!(config.control.unwrap().permissions.mode, 0o600);
        // Both VMs fit in the daemon's budget at once.
        let buffers: u64 = config
            .vms
            .iter()
            .map(|vm| u64::from(vm.device.pool.limits.max_buffers))
            .sum();
        let bytes: u64 = config
            .vms
            .iter()
            .map(|vm| vm.device.pool.limits.max_total_bytes)
            .sum();
        assert!(buffers <= config.daemon.max_buffers);
        assert!(bytes <= config.daemon.max_total_bytes);
    }

    #[test]
    fn activated_sockets_are_vms_and_the_control_socket() {
        let activated = [
            ActivatedSocket {
                fd: 3,
                name: "vm1".into(),
            },
            ActivatedSocket {
                fd: 4,
                name: CONTROL_FD_NAME.into(),
            },
        ];
        let config = Config::build(args(&[]), &activated).unwrap();
        assert_eq!(config.vms.len(), 1);
        assert_eq!(config.vms[0].name, "vm1");
        assert_eq!(config.control.unwrap().listen, ListenOn::Fd(4));
        let error = Config::build(args(&["--control-socket", "/tmp/c"]), &activated).unwrap_err();
        assert!(matches!(error, Error::TwoControlSockets), "{error}");
        let bad = [ActivatedSocket {
            fd: 3,
            name: "a b".into(),
        }];
        assert!(matches!(
            Config::build(args(&[]), &bad),
            Err(Error::BadName(_))
        ));
    }

    #[test]
    fn missing_socket_is_a_usage_error() {
        // Clap accepts no socket (the file or socket activation may have
        // them); the configuration refuses it.
        let none = Args::try_parse_from(["cenallocd"]).unwrap();
        assert!(matches!(Config::try_from(none), Err(Error::NoSocket)));
        assert!(Args::try_parse_from(["cenallocd", "--print-config-size"]).is_ok());
        assert!(Args::try_parse_from(["cenallocd", "--frobnicate"]).is_err());
    }

    #[test]
    fn config_file_sets_limits_kinds_and_pools() {
        let dir = std::env::temp_dir().join(format!("cenalloc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pools.toml");
        std::fs::write(
            &path,
            r#"
max_batch = 16
exporter_types = ["sg", "contig", 0x8001]
[limits]
max_buffers = 100
max_buffer_size = "16M"
max_total_bytes = "64M"
[[kind]]
bit = 8
name = "carveout"
contiguous = true
max_address = "4G"
align = "2M"
[[pool]]
name = "carve"
kind = "carveout"
size = "32M"
align = "2M"
[[pool]]
kind = "system"
size = "16M"
"#,
        )
        .unwrap();
        let config =
            Config::try_from(args(&["-s", "/tmp/s", "-c", path.to_str().unwrap()])).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let device = &config.vms[0].device;
        assert_eq!(device.max_batch, 16);
        assert_eq!(device.pool.limits.max_buffers, 100);
        assert_eq!(device.pool.limits.max_buffer_size, 16 << 20);
        assert_eq!(
            device.pool.exporter_types,
            vec![
                MappingType::ScatterGather,
                MappingType::Contiguous,
                MappingType::Private(0x8001)
            ]
        );
        assert_eq!(device.pool.allocators[0].name, "carve");
        assert_eq!(device.pool.allocators[0].kinds, 1 << 8);
        assert_eq!(device.pool.allocators[0].strategy, Strategy::Contiguous);
        assert_eq!(device.pool_sizes, vec![32 << 20, 16 << 20]);
    }
}
