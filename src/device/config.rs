//! What the daemon offers a guest: the pool configuration, the sizes the
//! guest is asked to donate, and the config space built from them.

use serde::Serialize;

use crate::model::{self, PoolConfig};
use crate::protocol::*;

/// What the daemon offers: the pool configuration plus what the model does
/// not know (the size of each pool the guest is asked to donate, how far
/// pools may grow, protocol limits).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceConfig {
    pub pool: PoolConfig,
    /// Bytes the guest is asked to donate to allocator `i` at probe
    /// (config space); the pool grows from there on demand.
    pub pool_sizes: Vec<u64>,
    /// Largest capacity of allocator `i` (a POOL_ADD beyond it is refused),
    /// a multiple of 1 MiB; 0: only `max_pool_percent` limits it.
    pub pool_max_sizes: Vec<u64>,
    /// All pools together stay at or below this percentage of guest RAM.
    pub max_pool_percent: u32,
    /// Commands per chain, 1..=`CENALLOC_MAX_BATCH`.
    pub max_batch: u32,
    /// Longest time the control queue's worker polls for the next request
    /// after answering, microseconds (adaptive below it; 0: never).
    pub poll_us: u32,
    /// The size of the device's shared memory region
    /// (`CENALLOC_SHM_WINDOW`), the window other VMs' buffers are mapped
    /// into: only a VM that imports in a `[[share_group]]` has one (issue
    /// 17). `None`: no region, and the vhost-user features it needs
    /// (SHMEM, BACKEND_REQ, CONFIGURE_MEM_SLOTS) are not offered.
    pub window: Option<u64>,
}

/// Default of [`DeviceConfig::max_pool_percent`].
pub const DEFAULT_MAX_POOL_PERCENT: u32 = 50;

impl DeviceConfig {
    /// The default pool layout, elastic: the guest donates 8 MiB at probe
    /// (4 MiB `system`, 1 MiB `dma32`, 2 MiB `contig`, 1 MiB `contig32`)
    /// and the pools grow on demand, together up to half of guest RAM.
    pub fn default_layout() -> Self {
        let pool = PoolConfig::default_layout();
        let pool_sizes: Vec<u64> = pool
            .allocators
            .iter()
            .map(|spec| match spec.name.as_str() {
                "system" => 4 << 20,
                "contig" => 2 << 20,
                _ => 1 << 20,
            })
            .collect();
        DeviceConfig {
            pool_max_sizes: vec![0; pool_sizes.len()],
            pool,
            pool_sizes,
            max_pool_percent: DEFAULT_MAX_POOL_PERCENT,
            max_batch: CENALLOC_MAX_BATCH,
            poll_us: crate::poll::DEFAULT_POLL_US,
            window: None,
        }
    }

    /// Device feature bits (`CENALLOC_F_*`) the daemon offers.
    pub fn features(&self) -> u64 {
        let mut features = 1 << CENALLOC_F_ELASTIC;
        if self.pool.limits.max_lease_bytes > 0 {
            features |= 1 << CENALLOC_F_LEASE;
        }
        features
    }

    /// Largest capacity allocator `index` may reach in a guest with
    /// `guest_ram` bytes, counting the `others` bytes the other pools hold.
    pub fn pool_capacity_limit(&self, index: usize, guest_ram: u64, others: u64) -> u64 {
        let share = u128::from(guest_ram) * u128::from(self.max_pool_percent) / 100;
        let share = u64::try_from(share).unwrap_or(u64::MAX);
        let mut limit = share.saturating_sub(others);
        if let Some(&max) = self.pool_max_sizes.get(index) {
            if max != 0 {
                limit = limit.min(max);
            }
        }
        limit
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
        for (index, (slot, (spec, size))) in config
            .pools
            .iter_mut()
            .zip(self.pool.allocators.iter().zip(&self.pool_sizes))
            .enumerate()
        {
            let max = self.pool_max_sizes.get(index).copied().unwrap_or(0);
            *slot = ConfigPool {
                kinds: spec.kinds,
                placement: placement_flags(&spec.placement),
                size: *size,
                align: u32::try_from(spec.placement.align).unwrap_or(u32::MAX),
                max_mb: u32::try_from(max >> 20).unwrap_or(u32::MAX),
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
