//! The errors of the buffer model, each with its Linux errno.

use super::{AttachmentId, BufferId, Direction};

/// Every way a model operation can fail. A failed operation changes nothing.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Error {
    // ---- configuration (Pool::new) ----
    #[error("invalid pool configuration: {0}")]
    InvalidConfig(String),
    #[error("an origin no pool can have (an id of 0 or too large, or serial 0)")]
    BadOrigin,

    // ---- regions (Pool::add_region) ----
    #[error("no allocator with index {0}")]
    UnknownAllocator(usize),
    #[error("empty region at {addr:#x}")]
    EmptyRegion { addr: u64 },
    #[error("region {addr:#x}+{len:#x} is not aligned to {align:#x}")]
    MisalignedRegion { addr: u64, len: u64, align: u64 },
    #[error("region {addr:#x}+{len:#x} wraps around the address space")]
    RegionOverflow { addr: u64, len: u64 },
    #[error("region {addr:#x}+{len:#x} overlaps a region of allocator {allocator}")]
    RegionOverlap {
        addr: u64,
        len: u64,
        allocator: usize,
    },
    #[error("region {addr:#x}+{len:#x} ends above the allocator's limit {limit:#x}")]
    RegionOutOfPlacement { addr: u64, len: u64, limit: u64 },
    #[error("range {addr:#x}+{len:#x} is not memory of allocator {allocator}")]
    RegionNotDonated {
        addr: u64,
        len: u64,
        allocator: usize,
    },
    #[error("range {addr:#x}+{len:#x} is in use (backing or leased)")]
    RegionInUse { addr: u64, len: u64 },
    #[error("the pool would hold {regions} donated regions, at most {max}")]
    TooManyRegions { regions: usize, max: u32 },

    // ---- leases ----
    #[error("lease of {count} extents of {size:#x} bytes: out of range")]
    InvalidLease { size: u64, count: u32 },
    #[error("extent at {addr:#x} is not leased (allocator {allocator}, or none)")]
    NotLeased { addr: u64, allocator: usize },
    #[error("leased extent {addr:#x}+{len:#x} is smaller than the buffer ({size:#x})")]
    LeaseTooSmall { addr: u64, len: u64, size: u64 },
    #[error(
        "leased extent {addr:#x} is of allocator {allocator}, the rule picks {chosen:?} for this buffer"
    )]
    LeaseElsewhere {
        addr: u64,
        allocator: usize,
        chosen: Option<usize>,
    },
    #[error("attachment {attachment}: driver negotiated type {driver:#x}, the device {device:#x}")]
    LeasedMappingType {
        attachment: AttachmentId,
        driver: u32,
        device: u32,
    },
    #[error("leased map names attachment record {0}, which does not exist")]
    LeasedMapIndex(usize),
    #[error("id {0:#x} is outside the driver's id range")]
    DriverIdOutOfRange(u32),
    #[error("id {0:#x} is already in use")]
    IdInUse(u32),
    #[error(
        "allocator {allocator} has room for {size:#x} bytes only in its leased stock: the driver must give it back first"
    )]
    RoomLeased { allocator: usize, size: u64 },

    // ---- create ----
    #[error("buffer size 0")]
    ZeroSize,
    #[error("buffer size {size:#x} above the limit {max:#x}")]
    BufferTooLarge { size: u64, max: u64 },
    #[error("unknown create flags {0:#x}")]
    InvalidFlags(u32),
    #[error("too many buffers (limit {max})")]
    TooManyBuffers { max: u32 },
    #[error(
        "total buffer bytes would exceed the limit {max:#x} ({in_use:#x} in use, {size:#x} asked)"
    )]
    TotalBytesExceeded { in_use: u64, size: u64, max: u64 },
    #[error("no free id left")]
    IdsExhausted,

    // ---- ids ----
    #[error("unknown buffer {0}")]
    UnknownBuffer(BufferId),
    #[error("unknown attachment {0}")]
    UnknownAttachment(AttachmentId),
    #[error("buffer {0} was already freed by its creator")]
    BufferReleased(BufferId),

    // ---- attach ----
    #[error("too many attachments on buffer {buffer} (limit {max})")]
    TooManyAttachments { buffer: BufferId, max: u32 },
    #[error("attach mask {mask:#x} leaves access mask {access_mask:#x} empty")]
    EmptyAccessMask { access_mask: u32, mask: u32 },
    #[error("no importer mapping type given")]
    NoImporterTypes,
    #[error("invalid mapping type code {0:#x}")]
    InvalidMappingType(u32),
    #[error("mapping type {0:#x} cannot serve this buffer")]
    MappingTypeUnsupported(u32),
    #[error("no mapping type both exporter and importer support for this buffer")]
    NoMutualMappingType,
    #[error(
        "buffer {buffer}: backing does not satisfy mask {mask:#x} and it is mapped, cannot migrate"
    )]
    MigrationWhileMapped { buffer: BufferId, mask: u32 },
    #[error("buffer {buffer}: no allocator serves mask {mask:#x}")]
    NoAllocatorForMask { buffer: BufferId, mask: u32 },

    // ---- detach / map / unmap ----
    #[error("attachment {0} still has mappings outstanding")]
    AttachmentMapped(AttachmentId),
    #[error("no allocator can back {size:#x} bytes for access mask {mask:#x}")]
    OutOfMemory { size: u64, mask: u32 },
    #[error("attachment {attachment} has no {direction:?} mapping outstanding")]
    NotMapped {
        attachment: AttachmentId,
        direction: Direction,
    },
    #[error("attachment {0} has too many mappings outstanding")]
    MapCountOverflow(AttachmentId),

    // ---- phys / backing ----
    #[error("buffer {0} has no backing yet")]
    NoBacking(BufferId),
    #[error("backing of buffer {0} is not one contiguous range")]
    NotContiguous(BufferId),

    // ---- sharing with other VMs ----
    #[error("buffer {0} is already shared")]
    AlreadyShared(BufferId),
    #[error("buffer {0} is not shared")]
    NotShared(BufferId),
    #[error("share page size {0:#x} must be a power of two, 4 KiB ..= 2 MiB")]
    InvalidPageSize(u64),
    #[error("no share allocator serves buffer {buffer}'s access mask {mask:#x}")]
    NoShareAllocator { buffer: BufferId, mask: u32 },
    #[error("share attachment {0} still has importers")]
    SharedWithImporters(AttachmentId),
    #[error("no window holds the backing with serial {0}")]
    UnknownHold(u64),
    #[error("buffer {0}: not for an imported buffer (or not one)")]
    NotImported(BufferId),
}

impl Error {
    /// The positive Linux errno the protocol reports for this error.
    pub fn errno(&self) -> i32 {
        use Error::*;
        match self {
            InvalidConfig(_)
            | BadOrigin
            | UnknownAllocator(_)
            | EmptyRegion { .. }
            | MisalignedRegion { .. }
            | RegionOverflow { .. }
            | ZeroSize
            | InvalidFlags(_)
            | BufferReleased(_)
            | EmptyAccessMask { .. }
            | NoImporterTypes
            | InvalidMappingType(_)
            | NotMapped { .. }
            | InvalidLease { .. }
            | LeaseTooSmall { .. }
            | LeasedMapIndex(_)
            | DriverIdOutOfRange(_)
            | NotShared(_)
            | InvalidPageSize(_)
            | NotImported(_) => libc::EINVAL,
            RegionOverlap { .. } | IdInUse(_) | AlreadyShared(_) => libc::EEXIST,
            NoShareAllocator { .. } => libc::ENOMEM,
            SharedWithImporters(_) => libc::EBUSY,
            UnknownHold(_) => libc::ENOENT,
            RegionNotDonated { .. } => libc::ENOENT,
            RegionInUse { .. } => libc::EBUSY,
            NotLeased { .. } => libc::EPERM,
            LeaseElsewhere { .. } => libc::ESTALE,
            LeasedMappingType { .. } => libc::EPROTO,
            RoomLeased { .. } => libc::EAGAIN,
            RegionOutOfPlacement { .. } => libc::ERANGE,
            BufferTooLarge { .. } => libc::E2BIG,
            TooManyBuffers { .. }
            | TooManyRegions { .. }
            | TotalBytesExceeded { .. }
            | IdsExhausted
            | TooManyAttachments { .. } => libc::ENOSPC,
            UnknownBuffer(_) | UnknownAttachment(_) => libc::ENOENT,
            MappingTypeUnsupported(_) | NoMutualMappingType => libc::EOPNOTSUPP,
            MigrationWhileMapped { .. } | NoAllocatorForMask { .. } | AttachmentMapped(_) => {
                libc::EBUSY
            }
            OutOfMemory { .. } => libc::ENOMEM,
            MapCountOverflow(_) => libc::EOVERFLOW,
            NoBacking(_) => libc::ENODATA,
            NotContiguous(_) => libc::ENODEV,
        }
    }
}
