//! Pools, kinds and sizes: `--pool KIND:SIZE[:OPTS]`, `[[kind]]` and
//! `[[pool]]` tables, `[limits]`, turned into a validated
//! [`DeviceConfig`].

use std::path::Path;

use crate::device::DeviceConfig;
use crate::model::{
    kinds, AllocatorSpec, KindSpec, Limits, MappingType, Placement, Pool, Strategy,
};
use crate::protocol::{
    CENALLOC_MAX_BATCH, CENALLOC_MAX_MAP_TYPES, CENALLOC_MAX_POOLS, CENALLOC_PAGE_SIZE,
};

use super::file::{read_config_file, ConfigFile, FileLimits, FilePool, KindsValue, MapTypeValue};
use super::{share, Error};

/// Size suffixes (after lowercasing) and their shifts; longest first.
pub(super) const SIZE_SUFFIXES: [(&str, u32); 9] = [
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

pub(super) fn parse_mask(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Well-known allocator templates: (name, strategy, kinds, below 4 GiB).
pub(super) fn well_known(kind: &str) -> Option<(Strategy, u32, bool)> {
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

pub(super) fn kind_bit(name: &str, custom: &[KindSpec]) -> Option<u32> {
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
pub(super) fn template(
    kind: &str,
    custom: &[KindSpec],
) -> Result<(Strategy, u32, bool, u64), Error> {
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
pub(super) fn parse_pool_flag(spec: &str, custom: &[KindSpec]) -> Result<PoolEntry, Error> {
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
        share: false,
    };
    Ok((allocator, size, max_size))
}

pub(super) fn parse_map_type(value: &MapTypeValue) -> Result<MappingType, Error> {
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
pub(super) fn build_device(
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
        let name = pool.name.clone().unwrap_or_else(|| base.to_string());
        match &pool.align {
            Some(value) => align = value.bytes()?,
            None if pool.share => align = align.max(share::DEFAULT_SHARE_POOL_ALIGN),
            None => {}
        }
        if pool.share {
            share::check_share_pool(&name, strategy, align)?;
        }
        let spec = AllocatorSpec {
            name,
            strategy,
            kinds: mask,
            placement: Placement {
                contiguous: strategy == Strategy::Contiguous,
                below_4g,
                align,
            },
            share: pool.share,
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
