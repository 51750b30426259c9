//! `--print-config`: the configuration as the daemon built it, as TOML.
//! A view to read (what each VM is offered, what it may share), close to
//! the file's own keys; not a file to load (`exporter_groups`,
//! `importer_groups` and each pool's `strategy` and `kinds` are derived).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{kinds, Strategy};

use super::{Config, ShareAccess, VmConfig};

#[derive(Serialize)]
struct Printed<'a> {
    vm: Vec<PrintedVm<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    share: Option<PrintedTimeouts>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    share_group: Vec<PrintedGroup<'a>>,
}

#[derive(Serialize)]
struct PrintedVm<'a> {
    name: &'a str,
    socket: String,
    pool: Vec<PrintedPool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    share: Option<PrintedVmShare<'a>>,
}

#[derive(Serialize)]
struct PrintedPool<'a> {
    name: &'a str,
    strategy: &'static str,
    kinds: Vec<String>,
    size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_size: Option<String>,
    below_4g: bool,
    align: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    share: bool,
}

#[derive(Serialize)]
struct PrintedVmShare<'a> {
    exporter_groups: &'a [String],
    importer_groups: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<String>,
    max_imports: u32,
    max_import_bytes: String,
    max_mappings: u32,
    max_shares: u32,
    max_shared_bytes: String,
    max_quarantine_bytes: String,
}

#[derive(Serialize)]
struct PrintedTimeouts {
    revoke_timeout_ms: u64,
    unmap_timeout_ms: u64,
    grace_ms: u64,
}

#[derive(Serialize)]
struct PrintedGroup<'a> {
    name: &'a str,
    exporters: &'a [String],
    importers: &'a [String],
    access: ShareAccess,
    max_importers: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    kind_map: BTreeMap<&'a str, &'a [String]>,
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `bytes` with the largest of the suffixes G, M, K that divides it.
fn size_text(bytes: u64) -> String {
    match bytes {
        0 => "0".to_string(),
        b if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

/// The kind names of `mask` in VM `vm`'s configuration.
fn kind_names(vm: &VmConfig, mask: u32) -> Vec<String> {
    (0..32u32)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| match 1u32 << bit {
            kinds::SYSTEM => "system".to_string(),
            kinds::CONTIG => "contig".to_string(),
            kinds::DMA32 => "dma32".to_string(),
            kinds::CONTIG_DMA32 => "contig32".to_string(),
            _ => vm
                .device
                .pool
                .custom_kinds
                .iter()
                .find(|kind| u32::from(kind.bit) == bit)
                .map(|kind| kind.name.clone())
                .unwrap_or_else(|| format!("bit{bit}")),
        })
        .collect()
}

fn vm(vm: &VmConfig) -> PrintedVm<'_> {
    let device = &vm.device;
    let pool = device
        .pool
        .allocators
        .iter()
        .enumerate()
        .map(|(i, spec)| PrintedPool {
            name: &spec.name,
            strategy: match spec.strategy {
                Strategy::Contiguous => "contiguous",
                Strategy::Scatter => "scatter",
            },
            kinds: kind_names(vm, spec.kinds),
            size: size_text(device.pool_sizes.get(i).copied().unwrap_or(0)),
            max_size: device
                .pool_max_sizes
                .get(i)
                .filter(|max| **max != 0)
                .map(|max| size_text(*max)),
            below_4g: spec.placement.below_4g,
            align: size_text(spec.placement.align),
            share: spec.share,
        })
        .collect();
    let share = vm.share.as_ref().map(|share| PrintedVmShare {
        exporter_groups: &share.exporter_groups,
        importer_groups: &share.importer_groups,
        window: share.window.map(size_text),
        max_imports: share.limits.max_imports,
        max_import_bytes: size_text(share.limits.max_import_bytes),
        max_mappings: share.limits.max_mappings,
        max_shares: share.limits.max_shares,
        max_shared_bytes: size_text(share.limits.max_shared_bytes),
        max_quarantine_bytes: size_text(share.limits.max_quarantine_bytes),
    });
    PrintedVm {
        name: &vm.name,
        socket: vm.listen.to_string(),
        pool,
        share,
    }
}

impl Config {
    /// The configuration as built, as TOML (`--print-config`): every VM
    /// with its socket, pools and, for a member of a `[[share_group]]`,
    /// its `[vm.share]`; then `[share]` and the groups, if there are any.
    pub fn describe(&self) -> String {
        let share = &self.share;
        let has_groups = !share.groups.is_empty();
        let printed = Printed {
            vm: self.vms.iter().map(vm).collect(),
            share: has_groups.then(|| PrintedTimeouts {
                revoke_timeout_ms: millis(share.timeouts.revoke),
                unmap_timeout_ms: millis(share.timeouts.unmap),
                grace_ms: millis(share.timeouts.grace),
            }),
            share_group: share
                .groups
                .iter()
                .map(|group| PrintedGroup {
                    name: &group.name,
                    exporters: &group.exporters,
                    importers: &group.importers,
                    access: group.access,
                    max_importers: group.max_importers,
                    kind_map: group
                        .kind_map
                        .iter()
                        .map(|m| (m.importer_kind.as_str(), m.exporter_kinds.as_slice()))
                        .collect(),
                })
                .collect(),
        };
        let mut text = String::from("# cenallocd: the configuration as built (--print-config)\n");
        if !has_groups {
            text.push_str("# no [[share_group]]: no VM shares\n");
        }
        match toml::to_string(&printed) {
            Ok(body) => text.push_str(&body),
            Err(e) => text.push_str(&format!("# cannot print: {e}\n")),
        }
        text
    }
}
