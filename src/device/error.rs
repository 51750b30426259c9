//! Errors of the command executor, each with the errno the guest sees.

use vm_memory::GuestMemoryError;

use crate::model;
use crate::protocol::{
    CENALLOC_MAX_LEASED_ATTACH, CENALLOC_MAX_MAP_TYPES, CENALLOC_MAX_POOL_RANGES,
};

/// Everything that can make a command (or a whole batch) fail.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("{0}")]
    Model(#[from] model::Error),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("non-zero command header flags {0:#x}")]
    CommandFlags(u16),
    #[error("non-zero reserved field {0:#x}")]
    Reserved(u32),
    #[error("invalid flags {0:#x}")]
    InvalidFlags(u32),
    #[error("payload of {got} bytes, the command takes {need}")]
    PayloadLength { need: usize, got: usize },
    #[error("response slot of {got} bytes, the answer needs {need}")]
    SlotTooSmall { need: usize, got: usize },
    #[error("batch reference {reference:#x} does not name an earlier {kind} of this batch")]
    BadBatchReference { reference: u32, kind: &'static str },
    #[error("invalid direction {0}")]
    InvalidDirection(u32),
    #[error("{0} mapping types, must be 1..={max}", max = CENALLOC_MAX_MAP_TYPES)]
    MappingTypeCount(u32),
    #[error("unused mapping type slot {0} is not zero")]
    UnusedMappingType(usize),
    #[error("unknown mapping type code {0:#x}")]
    UnknownMappingType(u32),
    #[error("no pool with index {0}")]
    UnknownPool(u32),
    #[error("{0} ranges, must be 1..={max}", max = CENALLOC_MAX_POOL_RANGES)]
    RangeCount(u32),
    #[error("range {addr:#x}+{len:#x} is not page aligned or empty")]
    RangeNotPageAligned { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} is not aligned to the pool's {align:#x}")]
    RangeMisaligned { addr: u64, len: u64, align: u64 },
    #[error("range {addr:#x}+{len:#x} is not inside one guest RAM region")]
    RangeOutsideRam { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} ends above the pool's limit {limit:#x}")]
    RangeOutOfPlacement { addr: u64, len: u64, limit: u64 },
    #[error("backing segment {addr:#x}+{len:#x} is not inside guest RAM")]
    SegmentOutsideRam { addr: u64, len: u64 },
    #[error("guest memory access failed: {0}")]
    GuestMemory(#[from] GuestMemoryError),
    #[error("the batch was cancelled by an earlier failure")]
    Cancelled,
    #[error("batch framing: {0}")]
    Framing(&'static str),
    #[error("writable part of {got} bytes, the batch needs {need}")]
    ResponseTooSmall { need: usize, got: usize },
    #[error("STATS serialization failed: {0}")]
    Serialize(String),
    #[error("the STATS snapshot has at least {at_least} bytes, more than any answer can hold")]
    SnapshotTooLarge { at_least: usize },
    #[error("pool {pool}: {capacity:#x} bytes + {added:#x} would exceed its limit {max:#x}")]
    PoolFull {
        pool: u32,
        capacity: u64,
        added: u64,
        max: u64,
    },
    #[error("{0} leased attachment records, must be 1..={max}", max = CENALLOC_MAX_LEASED_ATTACH)]
    LeasedAttachCount(u32),
    #[error("non-zero byte at {offset} past the {known} bytes of the request this device knows")]
    UnknownTail { known: usize, offset: usize },
    #[error("non-zero reserved field {0:#x}")]
    Reserved64(u64),
    #[error("malformed name field (not NUL-padded UTF-8)")]
    BadName,
    #[error("buffer {0} is another VM's (an import): it cannot be shared again")]
    ImportedBuffer(u32),
    #[error("{0}")]
    Share(#[from] crate::share::ShareError),
    #[error("import {0}: the window does not hold the buffer (yet)")]
    WindowNotMapped(u32),
    #[error("import {0}: revoked for good")]
    ImportRevoked(u32),
    #[error("mask {0:#x}: custom kinds of an importer need the group's kind_map, not built yet")]
    ImportKinds(u32),
}

impl Error {
    /// The positive Linux errno of this error.
    pub fn errno(&self) -> i32 {
        use Error::*;
        match self {
            Model(e) => e.errno(),
            UnknownOpcode(_) => libc::EOPNOTSUPP,
            CommandFlags(_)
            | Reserved(_)
            | InvalidFlags(_)
            | PayloadLength { .. }
            | BadBatchReference { .. }
            | InvalidDirection(_)
            | MappingTypeCount(_)
            | UnusedMappingType(_)
            | UnknownMappingType(_)
            | RangeCount(_)
            | RangeNotPageAligned { .. }
            | RangeMisaligned { .. }
            | LeasedAttachCount(_)
            | Reserved64(_)
            | BadName
            | ImportedBuffer(_)
            | Framing(_) => libc::EINVAL,
            UnknownTail { .. } => libc::E2BIG,
            WindowNotMapped(_) => libc::EAGAIN,
            ImportRevoked(_) => libc::ENOLINK,
            ImportKinds(_) => libc::EOPNOTSUPP,
            Share(e) => e.errno(),
            PoolFull { .. } => libc::ENOSPC,
            UnknownPool(_) => libc::ENOENT,
            SlotTooSmall { .. } | ResponseTooSmall { .. } => libc::ENOSPC,
            RangeOutsideRam { .. } | SegmentOutsideRam { .. } | GuestMemory(_) => libc::EFAULT,
            RangeOutOfPlacement { .. } => libc::ERANGE,
            Cancelled => libc::ECANCELED,
            Serialize(_) => libc::EIO,
            SnapshotTooLarge { .. } => libc::E2BIG,
        }
    }

    /// The `needed` field of the response header.
    pub(crate) fn needed(&self) -> u32 {
        match self {
            Error::SlotTooSmall { need, .. } => u32::try_from(*need).unwrap_or(u32::MAX),
            _ => 0,
        }
    }
}
