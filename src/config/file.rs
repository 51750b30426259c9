//! The configuration file's TOML schema, as serde reads it: every table
//! refuses unknown keys; values are checked when the configuration is
//! built ([`super::pools`], [`super::Config::build`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sandbox::{LandlockMode, SeccompMode};

use super::pools::parse_size;
use super::share::ShareAccess;
use super::{parse_mode, Error};

/// A size: an integer, or a string with an optional K/M/G suffix.
#[derive(Deserialize, Debug, Clone)]
#[serde(
    untagged,
    expecting = "a size: a non-negative integer or a string such as \"64M\""
)]
pub(super) enum SizeValue {
    Number(u64),
    Text(String),
}

impl SizeValue {
    pub(super) fn bytes(&self) -> Result<u64, Error> {
        match self {
            SizeValue::Number(n) => Ok(*n),
            SizeValue::Text(text) => parse_size(text),
        }
    }
}

/// A kind mask: a number, or a list of kind names.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged, expecting = "kinds: a 32-bit mask or a list of kind names")]
pub(super) enum KindsValue {
    Mask(u32),
    Names(Vec<String>),
}

/// A mapping type: a number or `sg` / `contig`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged, expecting = "a mapping type: \"sg\", \"contig\" or a number")]
pub(super) enum MapTypeValue {
    Code(u32),
    Name(String),
}

/// A permission mode: an integer (`0o660`) or an octal string (`"0660"`).
#[derive(Deserialize, Debug, Clone)]
#[serde(
    untagged,
    expecting = "a mode: an integer such as 0o660 or a string such as \"0660\""
)]
pub(super) enum ModeValue {
    Number(u32),
    Text(String),
}

impl ModeValue {
    pub(super) fn mode(&self) -> Result<u32, Error> {
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
pub(super) struct FileLimits {
    pub(super) max_buffers: Option<u32>,
    pub(super) max_attachments_per_buffer: Option<u32>,
    pub(super) max_buffer_size: Option<SizeValue>,
    pub(super) max_total_bytes: Option<SizeValue>,
    pub(super) max_lease_bytes: Option<SizeValue>,
    pub(super) max_regions: Option<u32>,
    /// `[limits.share]`, every VM's sharing limits (issue 17). A VM's own
    /// are `[vm.share]`: [`super::share`] refuses `[vm.limits.share]`.
    #[serde(default)]
    pub(super) share: FileShareLimits,
}

impl FileLimits {
    /// These limits with `over`'s keys replacing theirs.
    pub(super) fn overridden_by(&self, over: &FileLimits) -> FileLimits {
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
            // A VM's own sharing limits are [vm.share], merged by
            // super::share.
            share: self.share.clone(),
        }
    }
}

/// `[limits.share]` or `[vm.share]` (issue 17); checked and merged by
/// [`super::share`].
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct FileShareLimits {
    pub(super) window: Option<SizeValue>,
    pub(super) max_imports: Option<u32>,
    pub(super) max_import_bytes: Option<SizeValue>,
    pub(super) max_mappings: Option<u32>,
    pub(super) max_shares: Option<u32>,
    pub(super) max_shared_bytes: Option<SizeValue>,
    pub(super) max_quarantine_bytes: Option<SizeValue>,
}

/// `[share]`: the daemon-wide bounds of a revocation (issue 17).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileShare {
    pub(super) revoke_timeout_ms: Option<u32>,
    pub(super) unmap_timeout_ms: Option<u32>,
    pub(super) grace_ms: Option<u32>,
}

/// One `[[share_group]]` (issue 17).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct FileShareGroup {
    pub(super) name: String,
    pub(super) exporters: Vec<String>,
    pub(super) importers: Vec<String>,
    pub(super) access: Option<ShareAccess>,
    pub(super) max_importers: Option<u32>,
    /// An importer's custom kind → the exporter's custom kinds.
    #[serde(default)]
    pub(super) kind_map: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct FileKind {
    pub(super) bit: u8,
    pub(super) name: String,
    #[serde(default)]
    pub(super) contiguous: bool,
    pub(super) max_address: Option<SizeValue>,
    pub(super) align: Option<SizeValue>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePool {
    pub(super) name: Option<String>,
    /// A well-known allocator or custom kind name; gives the defaults.
    pub(super) kind: Option<String>,
    pub(super) strategy: Option<String>,
    pub(super) kinds: Option<KindsValue>,
    pub(super) size: SizeValue,
    pub(super) max_size: Option<SizeValue>,
    pub(super) below_4g: Option<bool>,
    pub(super) align: Option<SizeValue>,
    /// A share pool (issue 17): contiguous, `align` 2 MiB by default.
    #[serde(default)]
    pub(super) share: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDaemon {
    pub(super) max_vms: Option<u32>,
    pub(super) max_buffers: Option<u64>,
    pub(super) max_total_bytes: Option<SizeValue>,
    pub(super) control_socket: Option<PathBuf>,
    pub(super) control_socket_group: Option<String>,
    pub(super) allow_writable_export: Option<bool>,
    pub(super) max_exports_per_client: Option<u32>,
    pub(super) control_idle_timeout_secs: Option<u32>,
    pub(super) control_request_timeout_secs: Option<u32>,
    pub(super) socket_mode: Option<ModeValue>,
    pub(super) socket_group: Option<String>,
    pub(super) user: Option<String>,
    pub(super) seccomp: Option<SeccompMode>,
    pub(super) landlock: Option<LandlockMode>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct FileVm {
    pub(super) name: String,
    pub(super) socket: PathBuf,
    pub(super) max_batch: Option<u32>,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default, rename = "pool")]
    pub(super) pools: Vec<FilePool>,
    /// `[vm.share]`: overrides `[limits.share]` key by key.
    #[serde(default)]
    pub(super) share: FileShareLimits,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    pub(super) max_batch: Option<u32>,
    pub(super) max_pool_percent: Option<u32>,
    pub(super) poll_us: Option<u32>,
    pub(super) exporter_types: Option<Vec<MapTypeValue>>,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default)]
    pub(super) daemon: FileDaemon,
    #[serde(default, rename = "kind")]
    pub(super) kinds: Vec<FileKind>,
    #[serde(default, rename = "pool")]
    pub(super) pools: Vec<FilePool>,
    #[serde(default, rename = "vm")]
    pub(super) vms: Vec<FileVm>,
    #[serde(default)]
    pub(super) share: FileShare,
    #[serde(default, rename = "share_group")]
    pub(super) share_groups: Vec<FileShareGroup>,
}

pub(super) fn read_config_file(path: &Path) -> Result<ConfigFile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| Error::ParseConfig {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}
