//! What the daemon offers a guest: the pool configuration, the sizes the
//! guest is asked to donate, and the config space built from them.

use serde::Serialize;

use crate::model::{self, PoolConfig};
use crate::protocol::*;

/// What the daemon offers: the pool configuration plus what the model does
/// not know (the size of each pool the guest is asked to donate, protocol
/// limits).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceConfig {
    pub pool: PoolConfig,
    /// Bytes the guest is asked to donate to allocator `i` (config space).
    pub pool_sizes: Vec<u64>,
    /// Commands per chain, 1..=`CENALLOC_MAX_BATCH`.
    pub max_batch: u32,
}

impl DeviceConfig {
    /// The default pool layout with modest sizes (256 MiB together, so a
    /// 1 GiB guest can donate all of it).
    pub fn default_layout() -> Self {
        let pool = PoolConfig::default_layout();
        let pool_sizes = pool
            .allocators
            .iter()
            .map(|spec| match spec.name.as_str() {
                "system" => 128 << 20,
                "dma32" => 64 << 20,
                _ => 32 << 20,
            })
            .collect();
        DeviceConfig {
            pool,
            pool_sizes,
            max_batch: CENALLOC_MAX_BATCH,
        }
    }

    /// The config space the driver reads at probe.
    pub fn config_space(&self) -> Config {
        let limits = &self.pool.limits;
        let mut config = Config {
            version: CENALLOC_PROTOCOL_VERSION,
            num_pools: self.pool.allocators.len().min(CENALLOC_MAX_POOLS) as u32,
            max_buffers: limits.max_buffers,
            max_attachments: limits.max_attachments_per_buffer,
            max_buffer_size: limits.max_buffer_size,
            max_total_bytes: limits.max_total_bytes,
            max_batch: self.max_batch,
            max_segments: max_segments(limits.max_buffer_size),
            ..Default::default()
        };
        for (slot, (spec, size)) in config
            .pools
            .iter_mut()
            .zip(self.pool.allocators.iter().zip(&self.pool_sizes))
        {
            *slot = ConfigPool {
                kinds: spec.kinds,
                placement: placement_flags(&spec.placement),
                size: *size,
                align: u32::try_from(spec.placement.align).unwrap_or(u32::MAX),
                reserved: 0,
                name: encode_name(&spec.name),
            };
        }
        config
    }
}

/// Worst case of segments one MAP returns: one per page of the largest
/// buffer.
fn max_segments(max_buffer_size: u64) -> u32 {
    u32::try_from(max_buffer_size / CENALLOC_PAGE_SIZE).unwrap_or(u32::MAX)
}

pub(crate) fn placement_flags(placement: &model::Placement) -> u32 {
    let mut flags = 0;
    if placement.contiguous {
        flags |= CENALLOC_PLACE_CONTIG;
    }
    if placement.below_4g {
        flags |= CENALLOC_PLACE_DMA32;
    }
    flags
}
