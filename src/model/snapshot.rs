//! Introspection: a serializable picture of the whole pool.

use serde::{Deserialize, Serialize};

use super::{AttachmentId, BufferId, Limits, MappingType, Placement, Segment, Strategy};

/// Counts of successful operations and current totals. Failed operations
/// count nowhere, so a failed operation leaves the snapshot unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub creates: u64,
    pub frees: u64,
    /// Buffers whose record is gone (freed and detached).
    pub destroyed: u64,
    pub attaches: u64,
    pub detaches: u64,
    pub maps: u64,
    pub unmaps: u64,
    /// Backing allocations (first maps and migrations).
    pub allocations: u64,
    pub migrations: u64,
    pub regions_added: u64,
    /// Ranges given back to the guest (POOL_REMOVE).
    pub regions_removed: u64,
    /// Extents leased, extents given back unused, leased maps accepted.
    pub leased_extents: u64,
    pub lease_returns: u64,
    pub leased_maps: u64,
    /// Live buffers and attachments.
    pub live_buffers: u64,
    pub live_attachments: u64,
    /// Sum of the sizes of live buffers (what `max_total_bytes` limits).
    pub total_bytes: u64,
    /// Bytes of backing in use.
    pub backing_bytes: u64,
    /// Bytes other VMs may still reach after their buffer let go of them
    /// (neither free nor backing; [`Pool::unhold`](super::Pool::unhold)).
    #[serde(default)]
    pub quarantined_bytes: u64,
}

/// One allocator, as `cenalloc_allocator_info` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AllocatorStats {
    /// Index in the pool: its priority, 0 first.
    pub id: usize,
    pub name: String,
    pub strategy: Strategy,
    pub kinds: u32,
    pub placement: Placement,
    /// Exclusive end limit of its regions.
    pub limit: u64,
    /// Alignment of each allocation's start.
    pub alloc_align: u64,
    pub capacity: u64,
    pub free: u64,
    pub largest_free: u64,
    pub free_extents: usize,
    pub fragmentation_permille: u32,
    /// Buffers backed by it.
    pub num_buffers: u32,
    /// Bytes and extents leased to the driver, not yet used or returned.
    pub leased: u64,
    pub leased_extents: usize,
    /// Bytes in quarantine: neither free nor any buffer's backing.
    pub quarantined: u64,
    /// Backs only buffers shared with other VMs.
    pub share: bool,
}

/// One donated region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegionInfo {
    pub allocator: usize,
    pub addr: u64,
    pub len: u64,
}

/// One buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BufferInfo {
    pub id: BufferId,
    pub size: u64,
    pub flags: u32,
    pub initial_mask: u32,
    pub access_mask: u32,
    /// The creator dropped its reference; attachments keep it alive.
    pub released: bool,
    /// Allocator of the backing, if allocated.
    pub allocator: Option<usize>,
    pub backing: Vec<Segment>,
    pub migrate_pending: bool,
    pub attachments: Vec<AttachmentId>,
    /// Another VM's shared buffer, reached through this VM's window.
    pub imported: bool,
}

/// One attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachmentInfo {
    pub id: AttachmentId,
    pub buffer: BufferId,
    pub mask: u32,
    pub map_type: MappingType,
    /// Outstanding maps per direction: bidirectional, to device, from device.
    pub maps: [u32; 3],
    pub owner: super::Owner,
}

/// The whole pool. Buffers and attachments sorted by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub limits: Limits,
    pub exporter_types: Vec<MappingType>,
    pub counters: Counters,
    pub allocators: Vec<AllocatorStats>,
    pub regions: Vec<RegionInfo>,
    pub buffers: Vec<BufferInfo>,
    pub attachments: Vec<AttachmentInfo>,
    /// Next ids the pool will try to hand out.
    pub next_buffer_id: BufferId,
    pub next_attachment_id: AttachmentId,
}
