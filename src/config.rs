//! Command line and configuration file → the daemon's validated
//! configuration.
//!
//! Front-ends connect to `--socket-path PATH` (bound by the daemon) or to
//! `--fd FD`, a listening unix socket the caller passes down (QEMU's
//! back-end program conventions); exactly one of the two.
//!
//! Pools come from the configuration file (`[[pool]]` tables) followed by
//! the repeated `--pool KIND:SIZE[:OPTS]` flags; with neither, the default
//! layout ([`DeviceConfig::default_layout`]) is used.
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
//! [limits]
//! max_buffers = 1024
//! max_attachments_per_buffer = 16
//! max_buffer_size = "64M"
//! max_total_bytes = "256M"
//! max_lease_bytes = "2M"                 # per allocator; 0: no leases
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
//! ```

use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::device::DeviceConfig;
use crate::model::{
    kinds, AllocatorSpec, KindSpec, Limits, MappingType, Placement, Pool, Strategy,
};
use crate::protocol::{
    CENALLOC_MAX_BATCH, CENALLOC_MAX_MAP_TYPES, CENALLOC_MAX_POOLS, CENALLOC_PAGE_SIZE,
};

/// Command line of `cenallocd`.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "cenallocd",
    version,
    about = "vhost-user backend of the cenalloc device (virtio device ID 37)"
)]
pub struct Args {
    /// Unix socket the front-end (QEMU) connects to.
    #[arg(
        short,
        long,
        conflicts_with = "fd",
        required_unless_present_any = ["fd", "print_capabilities", "print_config_size"]
    )]
    pub socket_path: Option<PathBuf>,

    /// A listening unix socket inherited from the caller, used instead of
    /// --socket-path.
    #[arg(long, value_name = "FD", value_parser = clap::value_parser!(i32).range(0..))]
    pub fd: Option<i32>,

    /// A pool the guest is asked to donate: KIND:SIZE[:OPTS], repeatable
    /// (e.g. `contig:64M:below4g,align=2M`).
    #[arg(long = "pool", value_name = "KIND:SIZE[:OPTS]")]
    pub pools: Vec<String>,

    /// TOML configuration file: limits, pools, custom kinds, exporter types.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

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

/// Where front-ends connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenOn {
    /// A socket the daemon binds (and removes when it exits).
    Path(PathBuf),
    /// An inherited listening socket, owned by the caller's file system
    /// entry (if any): the daemon neither binds nor removes anything.
    Fd(RawFd),
}

/// Test hooks of the queue glue; empty in normal builds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Where the fault to inject comes from (`--fault`, `--fault-file`).
    #[cfg(feature = "fault-injection")]
    pub fault: Option<crate::fault::Source>,
}

/// The validated configuration of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: ListenOn,
    pub device: DeviceConfig,
    /// Test hooks of the queue glue (none in normal builds).
    pub hooks: Hooks,
}

/// Everything wrong a configuration can be.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("exactly one of --socket-path and --fd is required")]
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

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_buffers: Option<u32>,
    max_attachments_per_buffer: Option<u32>,
    max_buffer_size: Option<SizeValue>,
    max_total_bytes: Option<SizeValue>,
    max_lease_bytes: Option<SizeValue>,
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
struct ConfigFile {
    max_batch: Option<u32>,
    max_pool_percent: Option<u32>,
    poll_us: Option<u32>,
    exporter_types: Option<Vec<MapTypeValue>>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default, rename = "kind")]
    kinds: Vec<FileKind>,
    #[serde(default, rename = "pool")]
    pools: Vec<FilePool>,
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
    let mut config = DeviceConfig::default_layout();
    let defaults = Limits::default();
    let limits = &file.limits;
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
    if let Some(max_batch) = file.max_batch {
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
    for pool in &file.pools {
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

impl TryFrom<Args> for Config {
    type Error = Error;

    fn try_from(args: Args) -> Result<Self, Error> {
        let listen = match (args.socket_path, args.fd) {
            (Some(path), None) => ListenOn::Path(path),
            (None, Some(fd)) => ListenOn::Fd(fd),
            _ => return Err(Error::NoSocket),
        };
        let mut device = device_config(args.config.as_deref(), &args.pools)?;
        if let Some(us) = args.poll_us {
            device.poll_us = us;
        }
        if device.poll_us > crate::poll::MAX_POLL_US {
            return Err(Error::PollUs(device.poll_us));
        }
        #[cfg(feature = "fault-injection")]
        let hooks = Hooks {
            fault: match (args.fault, args.fault_file) {
                (Some(fault), _) => Some(crate::fault::Source::Fixed(fault)),
                (None, Some(path)) => Some(crate::fault::Source::File(path)),
                (None, None) => None,
            },
        };
        #[cfg(not(feature = "fault-injection"))]
        let hooks = Hooks::default();
        Ok(Config {
            listen,
            device,
            hooks,
        })
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
        assert_eq!(config.device, DeviceConfig::default_layout());
        let total: u64 = config.device.pool_sizes.iter().sum();
        assert!(total <= 16 << 20, "{total}");
        assert_eq!(
            config.device.pool_sizes.len(),
            config.device.pool.allocators.len()
        );
        assert_eq!(
            config.device.pool_max_sizes,
            vec![0; config.device.pool_sizes.len()]
        );
        assert_eq!(config.device.max_pool_percent, 50);
    }

    #[test]
    fn polling_is_configured_by_flag_or_file() {
        let config = Config::try_from(args(&["-s", "/tmp/s"])).unwrap();
        assert_eq!(config.device.poll_us, crate::poll::DEFAULT_POLL_US);
        let config = Config::try_from(args(&["-s", "/tmp/s", "--poll-us", "0"])).unwrap();
        assert_eq!(config.device.poll_us, 0);
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
        assert_eq!(config.device.pool_max_sizes, vec![64 << 20, 0]);
        assert_eq!(config.device.config_space().pools[0].max_mb, 64);
        // 64 MiB of its own, and half of a 1 GiB guest with the others'.
        let device = &config.device;
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
            "max_pool_percent = 25\n[limits]\nmax_lease_bytes = 0\n[[pool]]\nsize = \"1M\"\nmax_size = \"16M\"\n",
        )
        .unwrap();
        assert_eq!(device.max_pool_percent, 25);
        assert_eq!(device.pool_max_sizes, vec![16 << 20]);
        assert_eq!(device.pool.limits.max_lease_bytes, 0);
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
        let pools = &config.device.pool.allocators;
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].strategy, Strategy::Contiguous);
        assert!(pools[0].placement.below_4g);
        assert_eq!(pools[0].placement.align, 2 << 20);
        assert_eq!(pools[1].name, "plenty");
        assert_eq!(config.device.pool_sizes, vec![64 << 20, 32 << 20]);
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
    fn socket_path_or_fd_exactly_one() {
        let config = Config::try_from(args(&["--fd", "3"])).unwrap();
        assert_eq!(config.listen, ListenOn::Fd(3));
        let config = Config::try_from(args(&["-s", "/tmp/s"])).unwrap();
        assert_eq!(config.listen, ListenOn::Path("/tmp/s".into()));
        for bad in [
            &["cenallocd", "--fd", "3", "--socket-path", "/tmp/s"][..],
            &["cenallocd", "--fd", "-1"][..],
            &["cenallocd", "--fd", "three"][..],
            &["cenallocd", "--fd"][..],
        ] {
            let error = Args::try_parse_from(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
        // Built by hand (not through clap), neither is an error too.
        let mut neither = args(&["--fd", "3"]);
        neither.fd = None;
        assert!(matches!(Config::try_from(neither), Err(Error::NoSocket)));
    }

    #[test]
    fn missing_socket_is_a_usage_error() {
        let error = Args::try_parse_from(["cenallocd"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
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
        let device = &config.device;
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
