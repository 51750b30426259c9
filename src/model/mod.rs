//! The buffer model of cenallocd: buffers, attachments, constraint masks,
//! mapping types and the allocator pool. It knows nothing of vhost or
//! virtqueues and is fully testable without a VM.
//!
//! # Life cycle
//! A buffer is first an abstract handle of a fixed size ([`Pool::create`]):
//! nothing is allocated. Every device that will use it attaches with its
//! constraint mask ([`Pool::attach`]); the buffer's *access mask* is the
//! intersection of all those masks (and of the optional initial mask given
//! at create). The first [`Pool::map`] allocates backing storage from the
//! first allocator, in pool priority order, that serves a kind of the access
//! mask and has room. [`Pool::free`] drops the creator's reference; the
//! backing returns to its allocator when no reference and no attachment
//! remain.
//!
//! # Memory kinds
//! A constraint mask is a `u32` bit set of memory kinds ([`kinds`]). Every
//! allocator serves one or more kinds; an allocator satisfies a mask when
//! they share a kind. Each kind has properties ([`KindSpec`]): contiguous or
//! not, an address limit and an alignment. [`Pool::new`] checks that every
//! allocator really provides every property of every kind it declares
//! (a scatter allocator cannot serve a contiguous kind; an allocator serving
//! a kind limited to 4 GiB only accepts regions below 4 GiB; a contiguous
//! allocator aligns each allocation to the largest alignment of its kinds).
//! Hence *every* backing satisfies *every* kind of its allocator, and a
//! backing satisfies a mask exactly when its allocator's kind set meets it.
//!
//! # Late attach and migration
//! An attach after the backing exists is accepted as is when the backing's
//! allocator serves a kind of the new access mask. Otherwise, if no map is
//! outstanding on any attachment of the buffer and some allocator serves a
//! kind of the new mask, it is accepted and the buffer is marked for
//! migration ([`Attached::migrate_pending`]): the next [`Pool::map`]
//! allocates new backing (`ENOMEM` keeps the mark and changes nothing),
//! returns the old segments in [`Mapped::migrated_from`] for the caller to
//! copy, and frees them in the model. Otherwise `EBUSY`. A detach that
//! widens the mask back cancels a pending migration the backing no longer
//! needs.
//!
//! # Mapping types
//! Negotiated at attach ([`mapping::negotiate`]): the exporter list of the
//! pool configuration is walked in priority order; the first type the
//! importer also lists and whose `match` accepts the buffer is recorded on
//! the attachment. [`MappingType::Contiguous`] only matches a buffer that is
//! or can only become one contiguous range: its backing is one segment (and
//! stays, no migration pending), or it will be allocated and every
//! allocator serving a kind of the new access mask is a contiguous
//! allocator (this includes "every kind of the mask is a contiguous kind",
//! since only contiguous allocators may serve those). Private types
//! (0x8000..=0xffff) match when both lists name the same code and map like
//! scatter-gather. When no type matches, attach
//! fails with `EOPNOTSUPP` ([`Error::NoMutualMappingType`]). Once an
//! attachment has negotiated `Contiguous`, every later allocation of that
//! buffer (first map, migration) asks for one single segment, so the
//! promise holds even if a detach widens the access mask.
//!
//! # Elastic pools
//! Memory comes and goes while buffers live: [`Pool::add_regions`] adds
//! regions at any time, [`Pool::remove_regions`] gives free ones back (all
//! or nothing; a range with any backing or lease on it is refused with
//! `EBUSY`).
//!
//! # Leases
//! [`Pool::lease`] hands the driver a stock of free extents of one
//! allocator (the caller zeroes them before the driver sees them). The
//! driver backs the first map of a small buffer from that stock without
//! asking ([`Pool::leased_map`], which creates the buffer, its attachments
//! with the ids the driver chose, and maps it) and gives back what it does
//! not use ([`Pool::lease_return`]). The stock is still the allocator's
//! memory: **room** of an allocator means its free extents *and* its
//! stock. The allocator rule is unchanged, "the first allocator, in
//! priority order, that serves a kind of the access mask and has room",
//! and both paths use it:
//! - a leased map is accepted only if the allocator of the extent is the
//!   one the rule picks for the buffer at that moment (it always is for an
//!   honest driver: it uses the stock of the first allocator that serves a
//!   kind of the mask at all, and the extent itself is room there);
//! - an ordinary map picks by the same rule; when the room it found is in
//!   the stock rather than in free extents, the map fails with `EAGAIN`
//!   ([`Error::RoomLeased`]) and changes nothing: the driver returns its
//!   stock and asks again, and the map lands where the rule said.
//!
//! So leasing never sends a buffer to an allocator the rule would not
//! pick; it only changes who carves the extent. `src/model/proptests.rs`
//! checks it over random sequences.
//!
//! # Errors and limits
//! Every failed operation leaves the whole pool exactly as before. Errno
//! choices (see [`Error::errno`]): unknown ids `ENOENT`; malformed arguments
//! and an empty access mask `EINVAL`; a buffer larger than
//! [`Limits::max_buffer_size`] `E2BIG`; exceeding
//! [`Limits::max_buffers`], [`Limits::max_attachments_per_buffer`] or
//! [`Limits::max_total_bytes`] `ENOSPC` (the total is the sum of the sizes
//! of all live buffers, checked at create, so a created buffer can always be
//! accounted for); no allocator with room `ENOMEM`; incompatible late
//! attach or detach with maps outstanding `EBUSY`; no mutual mapping type
//! `EOPNOTSUPP`; phys of a non-contiguous backing `ENODEV`; phys or backing
//! of an unallocated buffer `ENODATA`.

pub mod allocator;
pub mod config;
mod error;
pub mod extents;
mod ids;
pub mod mapping;
mod pool;
pub mod snapshot;

#[cfg(test)]
mod elastic_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod share_proptests;
#[cfg(test)]
mod share_tests;
#[cfg(test)]
mod tests;

pub use allocator::{Allocator, ContiguousAllocator, ScatterAllocator};
pub use config::{AllocatorSpec, KindSpec, Limits, Placement, PoolConfig, Strategy};
pub use error::Error;
pub use mapping::MappingType;
pub use pool::{
    Attached, AttachmentImage, BufferImage, Created, Held, LeasedAttach, LeasedMap, Mapped, Origin,
    Owner, Pool, PoolImage, Quarantined,
};
pub use snapshot::{AllocatorStats, AttachmentInfo, BufferInfo, Counters, RegionInfo, Snapshot};

use serde::{Deserialize, Serialize};

/// Buffer id: never 0, top bit ([`ID_BATCH_REF_BIT`]) never set.
pub type BufferId = u32;
/// Attachment id: never 0, top bit ([`ID_BATCH_REF_BIT`]) never set.
pub type AttachmentId = u32;

/// The bit the protocol reserves for batch references; never set in an id.
pub const ID_BATCH_REF_BIT: u32 = 0x8000_0000;
/// First id of the range the driver chooses ids from itself (a leased
/// map, [`Pool::leased_map`]); the model never hands these out.
pub const DRIVER_ID_FIRST: u32 = 0x4000_0000;
/// Last id of the driver's range.
pub const DRIVER_ID_LAST: u32 = ID_BATCH_REF_BIT - 1;
/// Largest id the model hands out (1..=MAX_ID).
pub const MAX_ID: u32 = DRIVER_ID_FIRST - 1;

/// Largest extent one lease hands out ([`Pool::lease`]).
pub const LEASE_MAX_EXTENT: u64 = 1 << 20;
/// Most extents one lease hands out.
pub const LEASE_MAX_COUNT: u32 = 64;

/// Page size: buffer sizes, regions and segments are multiples of it.
pub const PAGE_SIZE: u64 = 4096;
/// Largest allocation alignment a kind may ask for.
pub const MAX_KIND_ALIGN: u64 = 2 << 20;
/// Largest region alignment a placement may ask for.
pub const MAX_REGION_ALIGN: u64 = 1 << 30;
/// 4 GiB: the end limit of the `DMA32` kinds and of `below_4g` placements.
pub const FOUR_GIB: u64 = 1 << 32;

/// The memory kinds: bits of a constraint mask. The one place where the
/// well-known bits are defined; they equal `CENALLOC_KIND_*` of
/// `guest-driver/cenalloc_proto.h` (checked by a unit test).
pub mod kinds {
    /// Pages anywhere in guest RAM.
    pub const SYSTEM: u32 = 1 << 0;
    /// Physically contiguous, anywhere.
    pub const CONTIG: u32 = 1 << 1;
    /// Pages below 4 GiB.
    pub const DMA32: u32 = 1 << 2;
    /// Physically contiguous, below 4 GiB.
    pub const CONTIG_DMA32: u32 = 1 << 3;
    /// Bits 0-7: well-known kinds (4-7 reserved, never served).
    pub const WELL_KNOWN: u32 = 0x0000_00ff;
    /// Bits 8-31: kinds a pool configuration may define.
    pub const CUSTOM: u32 = 0xffff_ff00;
    /// A device that can access every kind.
    pub const ANY: u32 = 0xffff_ffff;
    /// First bit a custom kind may use.
    pub const FIRST_CUSTOM_BIT: u8 = 8;
}

/// One guest-physical range `[addr, addr + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Segment {
    pub addr: u64,
    pub len: u64,
}

impl Segment {
    /// First address after the segment (callers guarantee no overflow).
    pub fn end(&self) -> u64 {
        self.addr + self.len
    }
}

/// Direction of a mapping, as `CENALLOC_DIR_*`. Outstanding maps are counted
/// per attachment and per direction: an unmap must name the direction of a
/// map still outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    Bidirectional,
    ToDevice,
    FromDevice,
}

impl Direction {
    /// Every direction, in code order.
    pub const ALL: [Direction; 3] = [
        Direction::Bidirectional,
        Direction::ToDevice,
        Direction::FromDevice,
    ];

    /// The wire code (`CENALLOC_DIR_*`).
    pub fn code(self) -> u32 {
        match self {
            Direction::Bidirectional => 0,
            Direction::ToDevice => 1,
            Direction::FromDevice => 2,
        }
    }

    /// The direction of a wire code, `None` for an unknown one.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Direction::Bidirectional),
            1 => Some(Direction::ToDevice),
            2 => Some(Direction::FromDevice),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        self.code() as usize
    }
}

/// Coalesces adjacent segments in place (`a.end() == b.addr`), keeping order.
pub fn coalesce(segments: &mut Vec<Segment>) {
    let mut out = 0;
    for i in 0..segments.len() {
        let seg = segments[i];
        if out > 0 && segments[out - 1].end() == seg.addr {
            segments[out - 1].len += seg.len;
        } else {
            segments[out] = seg;
            out += 1;
        }
    }
    segments.truncate(out);
}
