//! Cross-VM sharing (issue 17): `[share]`, `[[share_group]]`,
//! `[limits.share]` and `[vm.share]` turned into a checked, per-VM view
//! (docs/design/cross-vm-sharing.md, section 1). Share pools (`share =
//! true` on a `[[pool]]`) are built with the other pools ([`super::pools`])
//! and checked here with [`check_share_pool`].
//!
//! Sharing is being built: the configuration is parsed and checked, the
//! device does not share yet. A VM in no `[[share_group]]` gets no share
//! configuration at all ([`super::VmConfig::share`] is `None`).

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{KindSpec, Strategy, PAGE_SIZE};
use crate::protocol::CENALLOC_NAME_LEN;

use super::file::{ConfigFile, FileShareGroup, FileShareLimits};
use super::{Error, VmConfig};

/// Default `[share] revoke_timeout_ms`: how long an importer has to
/// acknowledge a revocation.
pub const DEFAULT_REVOKE_TIMEOUT_MS: u32 = 1000;
/// Default `[share] unmap_timeout_ms`: how long the proof that a window is
/// gone may take.
pub const DEFAULT_UNMAP_TIMEOUT_MS: u32 = 2000;
/// Default `[share] grace_ms`: after the proof, before the extent is reused.
pub const DEFAULT_GRACE_MS: u32 = 20;
/// `revoke_timeout_ms` and `unmap_timeout_ms` accepted (a minute at most:
/// an exporter's command waits that long).
const TIMEOUT_MS: RangeInclusive<u32> = 1..=60_000;
/// `grace_ms` accepted.
const GRACE_MS: RangeInclusive<u32> = 0..=1000;

/// Default `align` of a share pool: whole host pages of the exporter's RAM,
/// 2 MiB covering hugetlb.
pub const DEFAULT_SHARE_POOL_ALIGN: u64 = 2 << 20;
/// Default `max_importers` of a group.
pub const DEFAULT_MAX_IMPORTERS: u32 = 4;
/// An importer's window (a BAR): a power of two in this range.
pub const WINDOW_SIZES: RangeInclusive<u64> = (2 << 20)..=(1 << 30);
/// `max_mappings` accepted: kernel vhost back-ends of the importer take 64
/// memory regions, its RAM included.
pub const MAX_MAPPINGS: RangeInclusive<u32> = 1..=64;

/// The daemon-wide bounds of a revocation (`[share]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareTimeouts {
    /// An importer's acknowledgement of a revocation (`revoke_timeout_ms`).
    pub revoke: Duration,
    /// The proof that a window is gone (`unmap_timeout_ms`).
    pub unmap: Duration,
    /// After the proof, before the extent is reused (`grace_ms`).
    pub grace: Duration,
}

impl Default for ShareTimeouts {
    fn default() -> Self {
        ShareTimeouts {
            revoke: Duration::from_millis(DEFAULT_REVOKE_TIMEOUT_MS.into()),
            unmap: Duration::from_millis(DEFAULT_UNMAP_TIMEOUT_MS.into()),
            grace: Duration::from_millis(DEFAULT_GRACE_MS.into()),
        }
    }
}

/// The most an importer of a group gets (`access`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShareAccess {
    #[default]
    ReadOnly,
    ReadWrite,
}

/// One line of a group's `kind_map`: an importer's custom kind and the
/// exporter's custom kinds it stands for. Custom kinds are the daemon's
/// (`[[kind]]`), so a name has one bit in every VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindMapping {
    pub importer_kind: String,
    /// Bit of `importer_kind`.
    pub importer_bit: u8,
    pub exporter_kinds: Vec<String>,
    /// Bits of `exporter_kinds`.
    pub exporter_mask: u32,
}

/// One `[[share_group]]`, checked: its members are VMs of the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareGroup {
    /// 1..=15 bytes of `a-z 0-9 _ -` (fits `CENALLOC_NAME_LEN`).
    pub name: String,
    /// VMs that share buffers in this group; each has a share pool.
    pub exporters: Vec<String>,
    /// VMs that import them; each has a window.
    pub importers: Vec<String>,
    pub access: ShareAccess,
    /// Imports of one share at once.
    pub max_importers: u32,
    /// In `kind_map`'s (sorted) order.
    pub kind_map: Vec<KindMapping>,
}

impl ShareGroup {
    pub fn is_exporter(&self, vm: &str) -> bool {
        self.exporters.iter().any(|name| name == vm)
    }

    pub fn is_importer(&self, vm: &str) -> bool {
        self.importers.iter().any(|name| name == vm)
    }

    pub fn is_member(&self, vm: &str) -> bool {
        self.is_exporter(vm) || self.is_importer(vm)
    }
}

/// The daemon's sharing policy: timeouts and groups (none: no VM shares).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShareConfig {
    pub timeouts: ShareTimeouts,
    pub groups: Vec<ShareGroup>,
}

impl ShareConfig {
    /// VM `vm` is an exporter or importer of some group.
    pub fn is_member(&self, vm: &str) -> bool {
        self.groups.iter().any(|group| group.is_member(vm))
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&ShareGroup> {
        self.groups.iter().find(|group| group.name == name)
    }
}

/// One VM's sharing limits (`[limits.share]`, overridden key by key by
/// `[vm.share]`). Exceeding one is refused with -ENOSPC (design, section 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareLimits {
    /// Importer: imported buffers at once.
    pub max_imports: u32,
    /// Importer: bytes imported at once.
    pub max_import_bytes: u64,
    /// Importer: windows mapped at once, the memory slots it spends
    /// (1..=64).
    pub max_mappings: u32,
    /// Exporter: buffers published at once.
    pub max_shares: u32,
    /// Exporter: bytes published at once.
    pub max_shared_bytes: u64,
    /// Exporter: extents held for an importer that did not let go.
    pub max_quarantine_bytes: u64,
}

impl Default for ShareLimits {
    fn default() -> Self {
        ShareLimits {
            max_imports: 16,
            max_import_bytes: 256 << 20,
            max_mappings: 8,
            max_shares: 16,
            max_shared_bytes: 256 << 20,
            max_quarantine_bytes: 64 << 20,
        }
    }
}

/// What a member VM may do, resolved from the groups and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmShare {
    /// Groups it exports in (config order); its first is the one a SHARE
    /// naming no group uses.
    pub exporter_groups: Vec<String>,
    /// Groups it imports from (config order).
    pub importer_groups: Vec<String>,
    /// Size of its window, the shared memory region (importers only).
    pub window: Option<u64>,
    pub limits: ShareLimits,
}

impl VmShare {
    pub fn is_exporter(&self) -> bool {
        !self.exporter_groups.is_empty()
    }

    pub fn is_importer(&self) -> bool {
        !self.importer_groups.is_empty()
    }
}

fn error(key: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Share {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A share pool (`share = true`): contiguous, `align` a power of two of at
/// least 4 KiB (the model bounds it to 1 GiB).
pub(super) fn check_share_pool(name: &str, strategy: Strategy, align: u64) -> Result<(), Error> {
    let key = format!("pool {name:?}");
    if strategy != Strategy::Contiguous {
        return Err(error(
            format!("{key} share"),
            "a share pool must be contiguous (kind contig, contig32 or a contiguous [[kind]], \
             or strategy = \"contiguous\")",
        ));
    }
    if !align.is_power_of_two() || align < PAGE_SIZE {
        return Err(error(
            format!("{key} align"),
            format!("{align:#x}: a share pool's align must be a power of two of at least 4 KiB"),
        ));
    }
    Ok(())
}

/// A group name: 1..=15 bytes of `a-z 0-9 _ -`.
pub fn valid_group_name(name: &str) -> bool {
    (1..CENALLOC_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// The keys of a `[limits.share]` or `[vm.share]` table that it gives,
/// checked.
#[derive(Clone, Copy, Debug, Default)]
struct Given {
    window: Option<u64>,
    max_imports: Option<u32>,
    max_import_bytes: Option<u64>,
    max_mappings: Option<u32>,
    max_shares: Option<u32>,
    max_shared_bytes: Option<u64>,
    max_quarantine_bytes: Option<u64>,
}

impl Given {
    /// Checks the keys `table` (named `key`) gives.
    fn check(key: &str, table: &FileShareLimits) -> Result<Given, Error> {
        let bytes = |value: &Option<super::file::SizeValue>| value.as_ref().map(|v| v.bytes());
        let window = bytes(&table.window).transpose()?;
        if let Some(window) = window {
            if !window.is_power_of_two() || !WINDOW_SIZES.contains(&window) {
                return Err(error(
                    format!("{key} window"),
                    format!("{window:#x}: must be a power of two from 2 MiB to 1 GiB"),
                ));
            }
        }
        if let Some(max) = table.max_mappings {
            if !MAX_MAPPINGS.contains(&max) {
                return Err(error(
                    format!("{key} max_mappings"),
                    format!(
                        "{max}: must be {}..={}",
                        MAX_MAPPINGS.start(),
                        MAX_MAPPINGS.end()
                    ),
                ));
            }
        }
        Ok(Given {
            window,
            max_imports: table.max_imports,
            max_import_bytes: bytes(&table.max_import_bytes).transpose()?,
            max_mappings: table.max_mappings,
            max_shares: table.max_shares,
            max_shared_bytes: bytes(&table.max_shared_bytes).transpose()?,
            max_quarantine_bytes: bytes(&table.max_quarantine_bytes).transpose()?,
        })
    }

    /// These keys, with `base`'s where they give none.
    fn or(self, base: Given) -> Given {
        Given {
            window: self.window.or(base.window),
            max_imports: self.max_imports.or(base.max_imports),
            max_import_bytes: self.max_import_bytes.or(base.max_import_bytes),
            max_mappings: self.max_mappings.or(base.max_mappings),
            max_shares: self.max_shares.or(base.max_shares),
            max_shared_bytes: self.max_shared_bytes.or(base.max_shared_bytes),
            max_quarantine_bytes: self.max_quarantine_bytes.or(base.max_quarantine_bytes),
        }
    }

    /// The limits, defaults where no table gives a key.
    fn limits(&self) -> ShareLimits {
        let d = ShareLimits::default();
        ShareLimits {
            max_imports: self.max_imports.unwrap_or(d.max_imports),
            max_import_bytes: self.max_import_bytes.unwrap_or(d.max_import_bytes),
            max_mappings: self.max_mappings.unwrap_or(d.max_mappings),
            max_shares: self.max_shares.unwrap_or(d.max_shares),
            max_shared_bytes: self.max_shared_bytes.unwrap_or(d.max_shared_bytes),
            max_quarantine_bytes: self.max_quarantine_bytes.unwrap_or(d.max_quarantine_bytes),
        }
    }
}

fn timeout(
    key: &str,
    value: Option<u32>,
    default: u32,
    range: RangeInclusive<u32>,
) -> Result<Duration, Error> {
    let ms = value.unwrap_or(default);
    if !range.contains(&ms) {
        return Err(error(
            format!("[share] {key}"),
            format!("{ms}: must be {}..={}", range.start(), range.end()),
        ));
    }
    Ok(Duration::from_millis(ms.into()))
}

/// A custom kind's bit, or an error naming `key`.
fn custom_bit(key: &str, name: &str, custom: &[KindSpec]) -> Result<u8, Error> {
    custom
        .iter()
        .find(|kind| kind.name == name)
        .map(|kind| kind.bit)
        .ok_or_else(|| {
            error(
                key,
                format!("{name:?} is not a custom kind (the name of a [[kind]])"),
            )
        })
}

/// One group, checked against the daemon's VMs and the custom kinds.
fn group(
    file: &FileShareGroup,
    vms: &[VmConfig],
    custom: &[KindSpec],
) -> Result<ShareGroup, Error> {
    let name = &file.name;
    if !valid_group_name(name) {
        return Err(error(
            "[[share_group]] name",
            format!("{name:?}: use 1..=15 bytes of a-z 0-9 _ -"),
        ));
    }
    let key = format!("[[share_group]] {name:?}");
    for (list, members) in [
        ("exporters", &file.exporters),
        ("importers", &file.importers),
    ] {
        if members.is_empty() {
            return Err(error(format!("{key} {list}"), "names no VM"));
        }
        let mut seen = BTreeSet::new();
        for member in members {
            if !seen.insert(member) {
                return Err(error(
                    format!("{key} {list}"),
                    format!("{member:?} is listed twice"),
                ));
            }
            if !vms.iter().any(|vm| &vm.name == member) {
                let known: Vec<&str> = vms.iter().map(|vm| vm.name.as_str()).collect();
                return Err(error(
                    format!("{key} {list}"),
                    format!(
                        "{member:?} is not a VM of the daemon ([[vm]], --socket-path NAME=, \
                         --fd NAME=, an activated socket; known: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    let max_importers = file.max_importers.unwrap_or(DEFAULT_MAX_IMPORTERS);
    if max_importers == 0 {
        return Err(error(format!("{key} max_importers"), "must be at least 1"));
    }
    let map_key = format!("{key} kind_map");
    let kind_map = file
        .kind_map
        .iter()
        .map(|(importer_kind, exporter_kinds)| {
            let importer_bit = custom_bit(&map_key, importer_kind, custom)?;
            if exporter_kinds.is_empty() {
                return Err(error(
                    format!("{map_key} {importer_kind}"),
                    "names no exporter kind",
                ));
            }
            let exporter_mask = exporter_kinds.iter().try_fold(0u32, |mask, kind| {
                custom_bit(&format!("{map_key} {importer_kind}"), kind, custom)
                    .map(|bit| mask | 1 << bit)
            })?;
            Ok(KindMapping {
                importer_kind: importer_kind.clone(),
                importer_bit,
                exporter_kinds: exporter_kinds.clone(),
                exporter_mask,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(ShareGroup {
        name: name.clone(),
        exporters: file.exporters.clone(),
        importers: file.importers.clone(),
        access: file.access.unwrap_or_default(),
        max_importers,
        kind_map,
    })
}

/// The sharing policy of the daemon, and each member VM's [`VmShare`] in
/// `vms` (the daemon's VMs, named and unique); `custom` are the custom
/// kinds (`[[kind]]`, the same for every VM).
pub(super) fn build(
    file: &ConfigFile,
    vms: &mut [VmConfig],
    custom: &[KindSpec],
) -> Result<ShareConfig, Error> {
    let share = &file.share;
    let timeouts = ShareTimeouts {
        revoke: timeout(
            "revoke_timeout_ms",
            share.revoke_timeout_ms,
            DEFAULT_REVOKE_TIMEOUT_MS,
            TIMEOUT_MS,
        )?,
        unmap: timeout(
            "unmap_timeout_ms",
            share.unmap_timeout_ms,
            DEFAULT_UNMAP_TIMEOUT_MS,
            TIMEOUT_MS,
        )?,
        grace: timeout("grace_ms", share.grace_ms, DEFAULT_GRACE_MS, GRACE_MS)?,
    };

    let mut groups: Vec<ShareGroup> = Vec::new();
    for file_group in &file.share_groups {
        let group = group(file_group, vms, custom)?;
        if groups.iter().any(|other| other.name == group.name) {
            return Err(error(
                "[[share_group]] name",
                format!("{:?} is used twice", group.name),
            ));
        }
        groups.push(group);
    }

    let every_vm = Given::check("[limits.share]", &file.limits.share)?;
    for vm in vms.iter_mut() {
        let own = match file.vms.iter().find(|own| own.name == vm.name) {
            Some(own) => {
                if own.limits.share.gives_any() {
                    return Err(error(
                        format!("[[vm]] {:?} [vm.limits.share]", vm.name),
                        "a VM's own sharing limits are [vm.share]",
                    ));
                }
                Given::check(&format!("[[vm]] {:?} [vm.share]", vm.name), &own.share)?
            }
            None => Given::default(),
        };
        let exporter_groups: Vec<String> = groups
            .iter()
            .filter(|group| group.is_exporter(&vm.name))
            .map(|group| group.name.clone())
            .collect();
        let importer_groups: Vec<String> = groups
            .iter()
            .filter(|group| group.is_importer(&vm.name))
            .map(|group| group.name.clone())
            .collect();
        if importer_groups.is_empty() && own.window.is_some() {
            return Err(error(
                format!("[[vm]] {:?} [vm.share] window", vm.name),
                "the VM imports in no [[share_group]]",
            ));
        }
        if exporter_groups.is_empty() && importer_groups.is_empty() {
            vm.share = None;
            continue;
        }
        if let Some(group) = exporter_groups.first() {
            if !vm.device.pool.allocators.iter().any(|spec| spec.share) {
                return Err(error(
                    format!("[[share_group]] {group:?} exporters"),
                    format!(
                        "VM {:?} has no share pool (a contiguous [[pool]] with share = true)",
                        vm.name
                    ),
                ));
            }
        }
        let given = own.or(every_vm);
        let window = match importer_groups.first() {
            None => None,
            Some(group) => Some(given.window.ok_or_else(|| {
                error(
                    format!("[[share_group]] {group:?} importers"),
                    format!(
                        "VM {:?} has no window ([vm.share] or [limits.share] window)",
                        vm.name
                    ),
                )
            })?),
        };
        vm.share = Some(VmShare {
            exporter_groups,
            importer_groups,
            window,
            limits: given.limits(),
        });
    }
    Ok(ShareConfig { timeouts, groups })
}

impl FileShareLimits {
    /// The table gives at least one key.
    fn gives_any(&self) -> bool {
        let FileShareLimits {
            window,
            max_imports,
            max_import_bytes,
            max_mappings,
            max_shares,
            max_shared_bytes,
            max_quarantine_bytes,
        } = self;
        window.is_some()
            || max_imports.is_some()
            || max_import_bytes.is_some()
            || max_mappings.is_some()
            || max_shares.is_some()
            || max_shared_bytes.is_some()
            || max_quarantine_bytes.is_some()
    }
}
