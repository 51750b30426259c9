//! The pool: buffers, attachments and the allocators behind them.

use std::collections::BTreeMap;

use super::allocator::{Allocator, ContiguousAllocator, ScatterAllocator};
use super::config::{self, AllocatorProps, KindTable};
use super::ids::{IdAllocator, IdMap};
use super::mapping::{self, MappingType};
use super::snapshot::{AllocatorStats, AttachmentInfo, BufferInfo, Counters, RegionInfo, Snapshot};
use serde::{Deserialize, Serialize};

use super::{
    kinds, AttachmentId, BufferId, Direction, Error, PoolConfig, Segment, Strategy,
    DRIVER_ID_FIRST, DRIVER_ID_LAST, LEASE_MAX_COUNT, LEASE_MAX_EXTENT, PAGE_SIZE,
};

mod image;
pub use image::{AttachmentImage, BufferImage, PoolImage};

/// Flags `create` accepts (`CENALLOC_CREATE_F_ALL`).
pub const CREATE_FLAGS_ALL: u32 = 0;

/// Result of [`Pool::create`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Created {
    pub id: BufferId,
    /// Size rounded up to 4 KiB.
    pub size: u64,
}

/// Result of [`Pool::attach`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub id: AttachmentId,
    pub map_type: MappingType,
    /// The backing does not satisfy the new access mask: the next map moves
    /// it (`CENALLOC_ATTACH_F_MIGRATE`).
    pub migrate_pending: bool,
    /// The buffer's access mask after this attach.
    pub access_mask: u32,
}

/// Result of [`Pool::map`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub map_type: MappingType,
    /// Coalesced, in buffer order; exactly one for `Contiguous`. After a
    /// migration: the new backing.
    pub segments: Vec<Segment>,
    /// Allocator backing the buffer.
    pub allocator: usize,
    /// Buffer size.
    pub size: u64,
    /// This map allocated the backing: the caller must zero `segments`
    /// before the guest sees them.
    pub newly_allocated: bool,
    /// This map moved the backing: the caller copies these old segments
    /// into `segments`. The model has already returned them to their
    /// allocator, so the copy must happen before the next allocation.
    pub migrated_from: Option<Vec<Segment>>,
}

/// One attachment of a [`LeasedMap`], with the id the driver chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedAttach {
    pub id: AttachmentId,
    pub mask: u32,
    /// The type the driver negotiated; the model negotiates again and
    /// refuses the whole leased map if it differs.
    pub map_type: MappingType,
    pub importer_types: Vec<MappingType>,
}

/// What [`Pool::leased_map`] does in one step: create a buffer with the id
/// the driver chose, attach its attachments (ids chosen by the driver too),
/// and map attachment `map_index` on the leased extent at `extent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedMap {
    pub buffer_id: BufferId,
    pub size: u64,
    pub initial_mask: u32,
    pub attachments: Vec<LeasedAttach>,
    pub map_index: usize,
    pub direction: Direction,
    /// Start address of the leased extent that backs the buffer.
    pub extent: u64,
}

/// Who holds an attachment. The guest's driver names only its own
/// ([`Owner::Guest`]): map, unmap and detach of any other answer
/// `ENOENT`, as for an attachment that does not exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Owner {
    /// A device of this VM (ATTACH, a leased map).
    #[default]
    Guest,
    /// The buffer is published for importers in other VMs ([`Pool::share`]):
    /// it is allocated and moved only into share allocators, as one extent
    /// of whole `page_size` pages (the exporter's host pages).
    Share { page_size: u64 },
    /// One importing VM's constraints ([`Pool::attach_remote`]); `tag` is
    /// the caller's name for the import.
    Remote { tag: u64 },
}

/// Result of [`Pool::hold`]: the backing an importer's window now reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The backing's serial: what [`Pool::unhold`] names.
    pub serial: u64,
    /// The one extent of a shared buffer.
    pub extent: Segment,
}

/// An extent another VM may still reach: neither free nor any buffer's
/// backing until its last hold goes ([`Pool::unhold`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The backing serial the holds name.
    pub serial: u64,
    /// `None` once the pool was cleared: the extent is in no region, and
    /// no region may be donated over it until it leaves quarantine.
    pub allocator: Option<usize>,
    pub segments: Vec<Segment>,
    pub holds: u32,
}

/// Where an empty pool's ids and serials go on ([`Pool::origin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub next_buffer_id: u32,
    pub next_attachment_id: u32,
    pub next_serial: u64,
}

#[derive(Clone, Debug)]
struct Backing {
    allocator: usize,
    segments: Vec<Segment>,
    /// Unique in the pool's life (never reused, even by [`Pool::clear`]):
    /// names this backing of this buffer, whatever id the buffer has.
    serial: u64,
    /// Windows of other VMs that may reach it ([`Pool::hold`]): when the
    /// backing leaves its buffer with holds, it goes to quarantine.
    holds: u32,
}

impl Backing {
    fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

#[derive(Clone, Debug)]
struct Buffer {
    size: u64,
    flags: u32,
    initial_mask: u32,
    access_mask: u32,
    released: bool,
    attachments: Vec<AttachmentId>,
    backing: Option<Backing>,
    migrate_pending: bool,
    /// Unique in the pool's life, like a backing's serial: tells this
    /// buffer from a later one with the same id.
    serial: u64,
    /// Another VM's shared buffer, reached through this VM's window
    /// ([`Pool::import`]): never backed here.
    imported: bool,
}

#[derive(Clone, Debug)]
struct Attachment {
    buffer: BufferId,
    mask: u32,
    map_type: MappingType,
    maps: [u32; 3],
    owner: Owner,
}

impl Attachment {
    fn mapped(&self) -> bool {
        self.maps.iter().any(|&n| n > 0)
    }
}

struct AllocatorSlot {
    allocator: Box<dyn Allocator>,
    kinds: u32,
    strategy: Strategy,
    props: AllocatorProps,
    /// Backs only shared buffers, and shared buffers only come from it.
    share: bool,
    num_buffers: u32,
    /// Leased extents the driver has not used or given back: start -> len.
    /// Not free (nothing else is carved from them) and not backing.
    stock: BTreeMap<u64, u64>,
    stock_bytes: u64,
}

impl AllocatorSlot {
    /// Whether this allocator may back a buffer of access mask `mask`,
    /// shared in `page`-sized pages or not shared (`None`): it serves a
    /// kind of the mask, it is a share allocator exactly when the buffer is
    /// shared, and its allocations start on the share page.
    fn serves(&self, mask: u32, page: Option<u64>) -> bool {
        self.kinds & mask != 0
            && self.share == page.is_some()
            && page.map_or(true, |p| self.props.alloc_align % p == 0)
    }

    /// Room for `size` bytes: the allocator could carve them from its free
    /// extents, or could if its leased stock were free again.
    fn has_room(&self, size: u64, single_segment: bool) -> bool {
        if self.allocator.fits(size, single_segment) {
            return true;
        }
        if self.stock.is_empty() {
            return false;
        }
        if self.strategy == Strategy::Scatter && !single_segment {
            // Pages from anywhere: only the byte count matters.
            return size <= self.allocator.free_bytes() + self.stock_bytes;
        }
        self.allocator
            .fits_if_freed(size, single_segment, &self.stock)
    }
}

impl Clone for AllocatorSlot {
    fn clone(&self) -> Self {
        AllocatorSlot {
            allocator: self.allocator.clone_box(),
            kinds: self.kinds,
            strategy: self.strategy,
            props: self.props.clone(),
            share: self.share,
            num_buffers: self.num_buffers,
            stock: self.stock.clone(),
            stock_bytes: self.stock_bytes,
        }
    }
}

/// The buffer model: see the [module documentation](super).
#[derive(Clone)]
pub struct Pool {
    config: PoolConfig,
    kinds: KindTable,
    allocators: Vec<AllocatorSlot>,
    /// Every donated region: start -> (end, allocator).
    regions: BTreeMap<u64, (u64, usize)>,
    buffers: IdMap<Buffer>,
    attachments: IdMap<Attachment>,
    buffer_ids: IdAllocator,
    attachment_ids: IdAllocator,
    /// The serial of the next backing (see [`Pool::backing_serial`]).
    next_serial: u64,
    /// Extents other VMs may still reach, by backing serial.
    quarantine: BTreeMap<u64, Quarantined>,
    counters: Counters,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("buffers", &self.buffers.len())
            .field("attachments", &self.attachments.len())
            .field("counters", &self.counters)
            .finish()
    }
}

/// Removes `[addr, end)` from a region map (start -> (end, allocator)),
/// splitting the regions it cuts.
fn cut(regions: &mut BTreeMap<u64, (u64, usize)>, addr: u64, end: u64) {
    let overlapping: Vec<(u64, u64, usize)> = regions
        .range(..end)
        .rev()
        .take_while(|(_, &(region_end, _))| region_end > addr)
        .map(|(&start, &(region_end, owner))| (start, region_end, owner))
        .collect();
    for (start, region_end, owner) in overlapping {
        regions.remove(&start);
        if start < addr {
            regions.insert(start, (addr, owner));
        }
        if region_end > end {
            regions.insert(end, (region_end, owner));
        }
    }
}

/// Bytes a buffer's backing takes: a shared buffer's whole share pages.
fn alloc_size(size: u64, page: Option<u64>) -> u64 {
    match page {
        Some(page) => size.next_multiple_of(page),
        None => size,
    }
}

/// Access mask of a buffer without attachments.
fn base_mask(initial_mask: u32) -> u32 {
    if initial_mask == 0 {
        kinds::ANY
    } else {
        initial_mask
    }
}

impl Pool {
    /// Builds a pool without memory: regions come with [`Pool::add_region`].
    pub fn new(config: PoolConfig) -> Result<Pool, Error> {
        let (kinds, props) = config::validate(&config)?;
        let allocators = config
            .allocators
            .iter()
            .zip(props)
            .map(|(spec, props)| {
                let allocator: Box<dyn Allocator> = match spec.strategy {
                    Strategy::Contiguous => Box::new(ContiguousAllocator::new(
                        props.limit,
                        props.region_align,
                        props.alloc_align,
                    )),
                    Strategy::Scatter => {
                        Box::new(ScatterAllocator::new(props.limit, props.region_align))
                    }
                };
                AllocatorSlot {
                    allocator,
                    kinds: spec.kinds,
                    strategy: spec.strategy,
                    props,
                    share: spec.share,
                    num_buffers: 0,
                    stock: BTreeMap::new(),
                    stock_bytes: 0,
                }
            })
            .collect();
        Ok(Pool {
            config,
            kinds,
            allocators,
            regions: BTreeMap::new(),
            buffers: IdMap::default(),
            attachments: IdMap::default(),
            buffer_ids: IdAllocator::new(),
            attachment_ids: IdAllocator::new(),
            next_serial: 1,
            quarantine: BTreeMap::new(),
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Drops every buffer, attachment and donated region: the pool is as
    /// [`Pool::new`] built it, except that ids keep counting where they
    /// were, so that an id handed out before never names a later object.
    /// The counters start from zero (they hold the live totals the limits
    /// use). Extents other VMs may still reach stay in quarantine, in no
    /// region now: nothing may be donated over them until their last hold
    /// goes ([`Pool::unhold`]). On error nothing changed.
    pub fn clear(&mut self) -> Result<(), Error> {
        let mut fresh = Pool::new(self.config.clone())?;
        fresh.buffer_ids = self.buffer_ids.clone();
        fresh.attachment_ids = self.attachment_ids.clone();
        fresh.next_serial = self.next_serial;
        let held = self.buffers.values().filter_map(|b| b.backing.as_ref());
        let held = held.filter(|k| k.holds > 0).map(|k| Quarantined {
            serial: k.serial,
            allocator: None,
            segments: k.segments.clone(),
            holds: k.holds,
        });
        for entry in self.quarantine.values().cloned().chain(held) {
            fresh.counters.quarantined_bytes += entry.segments.iter().map(|s| s.len).sum::<u64>();
            fresh.quarantine.insert(
                entry.serial,
                Quarantined {
                    allocator: None,
                    ..entry
                },
            );
        }
        *self = fresh;
        Ok(())
    }

    /// What a pool just built or cleared carries from its past: where its
    /// ids and serials go on. [`Pool::from_origin`] builds that pool again.
    pub fn origin(&self) -> Origin {
        Origin {
            next_buffer_id: self.buffer_ids.next_value(),
            next_attachment_id: self.attachment_ids.next_value(),
            next_serial: self.next_serial,
        }
    }

    /// Whether the pool holds nothing: no buffer, attachment, region or
    /// leased extent (as after [`Pool::clear`]).
    pub fn is_pristine(&self) -> bool {
        self.buffers.is_empty()
            && self.attachments.is_empty()
            && self.quarantine.is_empty()
            && self.regions.is_empty()
            && self.allocators.iter().all(|slot| slot.stock.is_empty())
    }

    /// The empty pool [`Pool::clear`] would leave when its ids and serials
    /// stood at `origin` (a journal's starting point). An origin no pool
    /// can have (an id of 0 or above the largest, serial 0) is refused.
    pub fn from_origin(config: PoolConfig, origin: Origin) -> Result<Pool, Error> {
        let valid_id = |id: u32| (1..=super::MAX_ID).contains(&id);
        if !valid_id(origin.next_buffer_id)
            || !valid_id(origin.next_attachment_id)
            || origin.next_serial == 0
        {
            return Err(Error::BadOrigin);
        }
        let mut pool = Pool::new(config)?;
        pool.buffer_ids = IdAllocator::starting_at(origin.next_buffer_id);
        pool.attachment_ids = IdAllocator::starting_at(origin.next_attachment_id);
        pool.next_serial = origin.next_serial;
        Ok(pool)
    }

    /// Donates `[addr, addr + len)` to allocator `allocator`. The region must
    /// be non-empty, page multiple, aligned to the allocator's placement
    /// alignment, below its limit, and overlap no region of any allocator.
    pub fn add_region(&mut self, allocator: usize, addr: u64, len: u64) -> Result<(), Error> {
        self.add_regions(allocator, &[Segment { addr, len }])
    }

    /// Checks a region as [`Pool::add_region`] would, without adding it.
    pub fn check_region(&self, allocator: usize, addr: u64, len: u64) -> Result<(), Error> {
        let slot = self
            .allocators
            .get(allocator)
            .ok_or(Error::UnknownAllocator(allocator))?;
        slot.allocator.check_region(addr, len)?;
        let end = addr + len; // check_region refused an overflow
        let quarantined = self.quarantine.values().flat_map(|q| q.segments.iter());
        if quarantined.clone().any(|q| q.addr < end && addr < q.end()) {
            return Err(Error::RegionInUse { addr, len });
        }
        if let Some((_, &(prev_end, owner))) = self.regions.range(..end).next_back() {
            if prev_end > addr {
                return Err(Error::RegionOverlap {
                    addr,
                    len,
                    allocator: owner,
                });
            }
        }
        Ok(())
    }

    /// Donates several regions to one allocator, all or nothing: every
    /// region is checked (as [`Pool::add_region`], and against the others)
    /// before any is added.
    pub fn add_regions(&mut self, allocator: usize, regions: &[Segment]) -> Result<(), Error> {
        if allocator >= self.allocators.len() {
            return Err(Error::UnknownAllocator(allocator));
        }
        for region in regions {
            self.check_region(allocator, region.addr, region.len)?;
        }
        let mut sorted = regions.to_vec();
        sorted.sort_unstable();
        for pair in sorted.windows(2) {
            if pair[0].end() > pair[1].addr {
                return Err(Error::RegionOverlap {
                    addr: pair[1].addr,
                    len: pair[1].len,
                    allocator,
                });
            }
        }
        self.check_region_count(self.regions.len().saturating_add(regions.len()))?;
        for region in regions {
            self.allocators[allocator]
                .allocator
                .add_region(region.addr, region.len)?;
            self.regions.insert(region.addr, (region.end(), allocator));
            self.counters.regions_added += 1;
        }
        Ok(())
    }

    /// Creates a buffer of `size` bytes (rounded up to 4 KiB); allocates
    /// nothing. `initial_mask` (0 = none) counts in the access mask like an
    /// attachment's mask. `flags` must be 0.
    pub fn create(&mut self, size: u64, flags: u32, initial_mask: u32) -> Result<Created, Error> {
        let rounded = self.check_create(size, flags)?;
        let id = self
            .buffer_ids
            .peek(&self.buffers)
            .ok_or(Error::IdsExhausted)?;
        self.buffer_ids.commit(id);
        self.insert_buffer(id, rounded, flags, initial_mask);
        Ok(Created { id, size: rounded })
    }

    /// The checks of a create; returns the rounded size.
    fn check_create(&self, size: u64, flags: u32) -> Result<u64, Error> {
        if flags & !CREATE_FLAGS_ALL != 0 {
            return Err(Error::InvalidFlags(flags));
        }
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let limits = &self.config.limits;
        let rounded = size
            .checked_next_multiple_of(PAGE_SIZE)
            .filter(|&s| s <= limits.max_buffer_size)
            .ok_or(Error::BufferTooLarge {
                size,
                max: limits.max_buffer_size,
            })?;
        if self.buffers.len() >= limits.max_buffers as usize {
            return Err(Error::TooManyBuffers {
                max: limits.max_buffers,
            });
        }
        let in_use = self.counters.total_bytes;
        if !matches!(in_use.checked_add(rounded), Some(total) if total <= limits.max_total_bytes) {
            return Err(Error::TotalBytesExceeded {
                in_use,
                size: rounded,
                max: limits.max_total_bytes,
            });
        }
        Ok(rounded)
    }

    fn insert_buffer(&mut self, id: BufferId, size: u64, flags: u32, initial_mask: u32) {
        self.insert_buffer_as(id, size, flags, initial_mask, false);
    }

    fn insert_buffer_as(
        &mut self,
        id: BufferId,
        size: u64,
        flags: u32,
        initial_mask: u32,
        imported: bool,
    ) {
        let serial = self.take_serial();
        self.buffers.insert(
            id,
            Buffer {
                size,
                flags,
                initial_mask,
                access_mask: base_mask(initial_mask),
                released: false,
                attachments: Vec::new(),
                backing: None,
                migrate_pending: false,
                serial,
                imported,
            },
        );
        self.counters.creates += 1;
        self.counters.live_buffers += 1;
        if !imported {
            self.counters.total_bytes += size;
        }
    }

    /// An imported buffer: another VM's shared buffer of `size` bytes that
    /// this VM reaches through its window. It takes an id and a place in
    /// `max_buffers` but no memory of this pool (nothing in
    /// `max_total_bytes`, never backed). Its devices attach as to any
    /// buffer (the window is one range, so `Contiguous` matches), map it
    /// with [`Pool::map_import`], and [`Pool::release_import`] ends it;
    /// FREE, a share and the ordinary map refuse it (`EINVAL`).
    pub fn import(&mut self, size: u64, initial_mask: u32) -> Result<Created, Error> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let rounded = size
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(Error::BufferTooLarge {
                size,
                max: u64::MAX,
            })?;
        let max = self.config.limits.max_buffers;
        if self.buffers.len() >= max as usize {
            return Err(Error::TooManyBuffers { max });
        }
        let id = self
            .buffer_ids
            .peek(&self.buffers)
            .ok_or(Error::IdsExhausted)?;
        self.buffer_ids.commit(id);
        self.insert_buffer_as(id, rounded, 0, initial_mask, true);
        Ok(Created { id, size: rounded })
    }

    /// The id the next [`Pool::import`] takes, after the checks of
    /// `max_buffers` and the id space; changes nothing (an importer's
    /// table entry is made under this id before the model's).
    pub fn next_import_id(&self) -> Result<BufferId, Error> {
        let max = self.config.limits.max_buffers;
        if self.buffers.len() >= max as usize {
            return Err(Error::TooManyBuffers { max });
        }
        self.buffer_ids
            .peek(&self.buffers)
            .ok_or(Error::IdsExhausted)
    }

    /// Whether a live buffer's next map moves its backing.
    pub fn migrate_pending(&self, buffer_id: BufferId) -> Result<bool, Error> {
        Ok(self.buffer(buffer_id)?.migrate_pending)
    }

    /// Whether a live buffer is imported ([`Pool::import`]).
    pub fn is_imported(&self, buffer_id: BufferId) -> Result<bool, Error> {
        Ok(self.buffer(buffer_id)?.imported)
    }

    /// A map of an imported buffer by one of its guest attachments: only
    /// counted (the window holds the pages, if the exporter let it);
    /// returns the negotiated type. `EINVAL` for a buffer that is not
    /// imported.
    pub fn map_import(
        &mut self,
        attachment_id: AttachmentId,
        dir: Direction,
    ) -> Result<MappingType, Error> {
        let attachment = self
            .attachments
            .get(&attachment_id)
            .filter(|a| a.owner == Owner::Guest)
            .ok_or(Error::UnknownAttachment(attachment_id))?;
        let buffer = attachment.buffer;
        if !self.buffer(buffer)?.imported {
            return Err(Error::NotImported(buffer));
        }
        if attachment.maps[dir.index()] == u32::MAX {
            return Err(Error::MapCountOverflow(attachment_id));
        }
        let map_type = attachment.map_type;
        if let Some(att) = self.attachments.get_mut(&attachment_id) {
            att.maps[dir.index()] += 1;
        }
        self.counters.maps += 1;
        Ok(map_type)
    }

    /// Ends an import: the buffer and its attachments go. `EBUSY` while an
    /// attachment holds a mapping; `ENOENT` for a buffer that is not
    /// imported (or does not exist).
    pub fn release_import(&mut self, buffer_id: BufferId) -> Result<(), Error> {
        let buffer = self
            .buffers
            .get(&buffer_id)
            .filter(|b| b.imported)
            .ok_or(Error::UnknownBuffer(buffer_id))?;
        if let Some(mapped) = buffer
            .attachments
            .iter()
            .find(|a| self.attachments.get(a).is_some_and(Attachment::mapped))
        {
            return Err(Error::AttachmentMapped(*mapped));
        }
        let attachments = buffer.attachments.clone();
        for a in &attachments {
            self.attachments.remove(a);
            self.counters.detaches += 1;
            self.counters.live_attachments -= 1;
        }
        self.counters.frees += 1;
        self.destroy(buffer_id);
        Ok(())
    }

    /// Whether every allocator that could back `mask` is contiguous (and
    /// there is at least one): a buffer with this access mask can only
    /// become one contiguous range.
    fn only_contiguous_for(&self, mask: u32, page: Option<u64>) -> bool {
        let mut any = false;
        for slot in &self.allocators {
            if slot.serves(mask, page) {
                if slot.strategy != Strategy::Contiguous {
                    return false;
                }
                any = true;
            }
        }
        any
    }

    fn any_allocator_for(&self, mask: u32, page: Option<u64>) -> bool {
        self.allocators.iter().any(|slot| slot.serves(mask, page))
    }

    /// The share page size of a buffer: the largest of its share
    /// attachments' (`None`: the buffer is not shared).
    fn share_page(&self, buffer: &Buffer) -> Option<u64> {
        buffer
            .attachments
            .iter()
            .filter_map(|a| match self.attachments.get(a)?.owner {
                Owner::Share { page_size } => Some(page_size),
                _ => None,
            })
            .max()
    }

    /// Whether `backing` may stay the backing of a buffer with access mask
    /// `mask`, shared in `page`-sized pages or not shared (`None`).
    fn backing_fits(&self, backing: &Backing, mask: u32, page: Option<u64>) -> bool {
        let slot = &self.allocators[backing.allocator];
        if slot.kinds & mask == 0 {
            return false;
        }
        match page {
            None => true,
            Some(page) => {
                slot.share
                    && matches!(backing.segments.as_slice(),
                        [one] if one.addr % page == 0 && one.len % page == 0)
            }
        }
    }

    /// Whether `buffer`'s backing must move to serve access mask `mask`
    /// (shared in `page`-sized pages or not): the late-attach rule. `false`
    /// without backing or when it fits; refused when it does not fit and
    /// something maps the buffer, or no allocator could take it.
    fn backing_must_move(
        &self,
        buffer_id: BufferId,
        buffer: &Buffer,
        mask: u32,
        page: Option<u64>,
    ) -> Result<bool, Error> {
        let Some(backing) = &buffer.backing else {
            return Ok(false);
        };
        if self.backing_fits(backing, mask, page) {
            return Ok(false);
        }
        if self.any_mapped(buffer) {
            return Err(Error::MigrationWhileMapped {
                buffer: buffer_id,
                mask,
            });
        }
        if !self.any_allocator_for(mask, page) {
            return Err(Error::NoAllocatorForMask {
                buffer: buffer_id,
                mask,
            });
        }
        Ok(true)
    }

    /// Whether any attachment of `buffer` holds a mapping.
    fn any_mapped(&self, buffer: &Buffer) -> bool {
        buffer
            .attachments
            .iter()
            .any(|a| self.attachments.get(a).is_some_and(Attachment::mapped))
    }

    /// Attaches a device with constraint `mask` and the mapping types it
    /// supports. See the module documentation for the rules.
    pub fn attach(
        &mut self,
        buffer_id: BufferId,
        mask: u32,
        importer_types: &[MappingType],
    ) -> Result<Attached, Error> {
        self.attach_as(buffer_id, mask, importer_types, Owner::Guest)
    }

    fn attach_as(
        &mut self,
        buffer_id: BufferId,
        mask: u32,
        importer_types: &[MappingType],
        owner: Owner,
    ) -> Result<Attached, Error> {
        let checked = self.check_attach_as(buffer_id, mask, importer_types, owner)?;
        let id = self
            .attachment_ids
            .peek(&self.attachments)
            .ok_or(Error::IdsExhausted)?;
        self.attachment_ids.commit(id);
        self.insert_attachment(id, buffer_id, mask, checked, owner)
    }

    /// Publishes a buffer for other VMs: adds its share attachment (mask
    /// `ANY`, type `Contiguous`, never mapped in this VM, not counted in
    /// `max_attachments_per_buffer`). From now on the buffer is allocated
    /// and moved only into share allocators whose allocations start on
    /// `page_size`, as one extent of whole `page_size` pages. A backing
    /// that does not meet this follows the late-attach rule: the next map
    /// moves it (`migrate_pending`) if nothing maps it, else `EBUSY`.
    /// `EEXIST` if already shared, `EINVAL` for a page size that is not a
    /// power of two from 4 KiB to 2 MiB or a released buffer, `ENOMEM` when
    /// no share allocator could ever back it.
    pub fn share(&mut self, buffer_id: BufferId, page_size: u64) -> Result<Attached, Error> {
        self.attach_as(buffer_id, kinds::ANY, &[], Owner::Share { page_size })
    }

    /// Adds an importing VM's constraints to a shared buffer: an attachment
    /// of mask `mask`, type `Contiguous`, tagged `tag`, never mapped in this
    /// VM and not counted in `max_attachments_per_buffer`. The access mask
    /// and the late-attach rule apply as for [`Pool::attach`]. `EINVAL` if
    /// the buffer is not shared.
    pub fn attach_remote(
        &mut self,
        buffer_id: BufferId,
        mask: u32,
        tag: u64,
    ) -> Result<Attached, Error> {
        self.attach_as(buffer_id, mask, &[], Owner::Remote { tag })
    }

    /// Changes a remote attachment's mask (the importer attached or
    /// detached a device): as a detach and an attach in one step, all or
    /// nothing. A backing that meets the new access mask stays (a pending
    /// migration it no longer needs is cancelled); one that does not is
    /// marked for migration if nothing maps it, else `EBUSY`.
    pub fn set_remote_mask(
        &mut self,
        attachment_id: AttachmentId,
        mask: u32,
    ) -> Result<Attached, Error> {
        let attachment = self
            .attachments
            .get(&attachment_id)
            .filter(|a| matches!(a.owner, Owner::Remote { .. }))
            .ok_or(Error::UnknownAttachment(attachment_id))?;
        let buffer_id = attachment.buffer;
        let buffer = self.buffer(buffer_id)?;
        let mut access = base_mask(buffer.initial_mask) & mask;
        for a in buffer.attachments.iter().filter(|&&a| a != attachment_id) {
            if let Some(att) = self.attachments.get(a) {
                access &= att.mask;
            }
        }
        if access == 0 {
            return Err(Error::EmptyAccessMask {
                access_mask: buffer.access_mask,
                mask,
            });
        }
        let page = self.share_page(buffer);
        let migrate = self.backing_must_move(buffer_id, buffer, access, page)?;
        if let Some(buffer) = self.buffers.get_mut(&buffer_id) {
            buffer.access_mask = access;
            buffer.migrate_pending = migrate;
        }
        if let Some(att) = self.attachments.get_mut(&attachment_id) {
            att.mask = mask;
        }
        Ok(Attached {
            id: attachment_id,
            map_type: MappingType::Contiguous,
            migrate_pending: migrate,
            access_mask: access,
        })
    }

    /// Who holds a live attachment.
    pub fn attachment_owner(&self, attachment_id: AttachmentId) -> Result<Owner, Error> {
        self.attachments
            .get(&attachment_id)
            .map(|a| a.owner)
            .ok_or(Error::UnknownAttachment(attachment_id))
    }

    /// The attachments of a live buffer with their owners, in attach order.
    pub fn attachments_of(&self, buffer_id: BufferId) -> Result<Vec<(AttachmentId, Owner)>, Error> {
        let buffer = self.buffer(buffer_id)?;
        Ok(buffer
            .attachments
            .iter()
            .filter_map(|&a| Some((a, self.attachments.get(&a)?.owner)))
            .collect())
    }

    /// Whether a live buffer is shared (has a share attachment).
    pub fn is_shared(&self, buffer_id: BufferId) -> Result<bool, Error> {
        Ok(self.share_page(self.buffer(buffer_id)?).is_some())
    }

    /// The checks and the negotiation of an attach by `owner`; changes
    /// nothing.
    fn check_attach_as(
        &self,
        buffer_id: BufferId,
        mask: u32,
        importer_types: &[MappingType],
        owner: Owner,
    ) -> Result<Attached, Error> {
        let buffer = self
            .buffers
            .get(&buffer_id)
            .ok_or(Error::UnknownBuffer(buffer_id))?;
        if buffer.released {
            return Err(Error::BufferReleased(buffer_id));
        }
        let mut page = self.share_page(buffer);
        if buffer.imported && owner != Owner::Guest {
            // Nothing is shared again from another VM.
            return Err(Error::NotImported(buffer_id));
        }
        match owner {
            Owner::Guest => {
                if importer_types.is_empty() {
                    return Err(Error::NoImporterTypes);
                }
                if let Some(bad) = importer_types.iter().find(|t| !t.is_valid()) {
                    return Err(Error::InvalidMappingType(bad.code()));
                }
                let max = self.config.limits.max_attachments_per_buffer;
                let guests = buffer.attachments.iter().filter(|a| {
                    self.attachments
                        .get(a)
                        .is_some_and(|att| att.owner == Owner::Guest)
                });
                if guests.count() >= max as usize {
                    return Err(Error::TooManyAttachments {
                        buffer: buffer_id,
                        max,
                    });
                }
            }
            Owner::Share { page_size } => {
                if page.is_some() {
                    return Err(Error::AlreadyShared(buffer_id));
                }
                if !page_size.is_power_of_two()
                    || !(PAGE_SIZE..=super::MAX_KIND_ALIGN).contains(&page_size)
                {
                    return Err(Error::InvalidPageSize(page_size));
                }
                page = Some(page_size);
            }
            Owner::Remote { .. } => {
                if page.is_none() {
                    return Err(Error::NotShared(buffer_id));
                }
            }
        }
        let new_mask = buffer.access_mask & mask;
        if new_mask == 0 {
            return Err(Error::EmptyAccessMask {
                access_mask: buffer.access_mask,
                mask,
            });
        }

        // Does the backing (if any) still fit? If not: migrate or refuse.
        // Checked even when a migration is pending already.
        let must_move = self.backing_must_move(buffer_id, buffer, new_mask, page)?;
        let migrate = buffer.migrate_pending || must_move;
        if buffer.backing.is_none() && page.is_some() && !self.any_allocator_for(new_mask, page) {
            return Err(Error::NoShareAllocator {
                buffer: buffer_id,
                mask: new_mask,
            });
        }
        if owner != Owner::Guest {
            // A shared buffer is always one extent: the promise holds.
            return Ok(Attached {
                id: 0,
                map_type: MappingType::Contiguous,
                migrate_pending: migrate,
                access_mask: new_mask,
            });
        }

        // Contiguous matches a buffer that is one range (and stays), or that
        // will be allocated and can only become one range.
        let contiguous_ok = match &buffer.backing {
            // The window is one range.
            _ if buffer.imported => true,
            Some(backing) if !migrate => backing.segments.len() == 1,
            _ => self.only_contiguous_for(new_mask, page),
        };
        let map_type =
            mapping::negotiate(&self.config.exporter_types, importer_types, |t| match t {
                MappingType::Contiguous if !contiguous_ok => {
                    Err(Error::MappingTypeUnsupported(t.code()))
                }
                _ => Ok(()),
            })?;
        Ok(Attached {
            id: 0,
            map_type,
            migrate_pending: migrate,
            access_mask: new_mask,
        })
    }

    fn insert_attachment(
        &mut self,
        id: AttachmentId,
        buffer_id: BufferId,
        mask: u32,
        checked: Attached,
        owner: Owner,
    ) -> Result<Attached, Error> {
        let buffer = self
            .buffers
            .get_mut(&buffer_id)
            .ok_or(Error::UnknownBuffer(buffer_id))?;
        buffer.attachments.push(id);
        buffer.access_mask = checked.access_mask;
        buffer.migrate_pending = checked.migrate_pending;
        self.attachments.insert(
            id,
            Attachment {
                buffer: buffer_id,
                mask,
                map_type: checked.map_type,
                maps: [0; 3],
                owner,
            },
        );
        self.counters.attaches += 1;
        self.counters.live_attachments += 1;
        Ok(Attached { id, ..checked })
    }

    /// Detaches; fails with `EBUSY` while maps are outstanding. The access
    /// mask is recomputed (it may widen; a pending migration is cancelled
    /// when the backing satisfies the wider mask). Detaching the last
    /// attachment of a freed buffer destroys it.
    pub fn detach(&mut self, attachment_id: AttachmentId) -> Result<(), Error> {
        self.detach_as(attachment_id, |owner| owner == Owner::Guest)
    }

    /// Removes a share or a remote attachment ([`Pool::share`],
    /// [`Pool::attach_remote`]) as [`Pool::detach`] removes a guest's. The
    /// share attachment goes last: `EBUSY` while remote ones remain.
    pub fn detach_owned(&mut self, attachment_id: AttachmentId) -> Result<(), Error> {
        let owner = self.attachment_owner(attachment_id)?;
        if let Owner::Share { .. } = owner {
            let buffer = self.buffer(self.attachments[&attachment_id].buffer)?;
            let remote = buffer.attachments.iter().any(|a| {
                self.attachments
                    .get(a)
                    .is_some_and(|att| matches!(att.owner, Owner::Remote { .. }))
            });
            if remote {
                return Err(Error::SharedWithImporters(attachment_id));
            }
        }
        self.detach_as(attachment_id, |owner| owner != Owner::Guest)
    }

    fn detach_as(
        &mut self,
        attachment_id: AttachmentId,
        allowed: impl Fn(Owner) -> bool,
    ) -> Result<(), Error> {
        let attachment = self
            .attachments
            .get(&attachment_id)
            .filter(|a| allowed(a.owner))
            .ok_or(Error::UnknownAttachment(attachment_id))?;
        if attachment.mapped() {
            return Err(Error::AttachmentMapped(attachment_id));
        }
        let buffer_id = attachment.buffer;
        if !self.buffers.contains_key(&buffer_id) {
            return Err(Error::UnknownBuffer(buffer_id));
        }
        self.attachments.remove(&attachment_id);
        let Some(buffer) = self.buffers.get_mut(&buffer_id) else {
            return Err(Error::UnknownBuffer(buffer_id));
        };
        buffer.attachments.retain(|&a| a != attachment_id);
        let mut access = base_mask(buffer.initial_mask);
        for a in &buffer.attachments {
            if let Some(att) = self.attachments.get(a) {
                access &= att.mask;
            }
        }
        buffer.access_mask = access;
        let buffer = &self.buffers[&buffer_id];
        if let Some(backing) = &buffer.backing {
            // Cancel a pending migration the backing no longer needs: it
            // satisfies the wider mask, the share rule and every contiguous
            // promise.
            let contiguous_promised = self.contiguous_promised(buffer);
            let fits = self.backing_fits(backing, access, self.share_page(buffer))
                && (!contiguous_promised || backing.segments.len() == 1);
            if fits {
                if let Some(buffer) = self.buffers.get_mut(&buffer_id) {
                    buffer.migrate_pending = false;
                }
            }
        }
        let buffer = &self.buffers[&buffer_id];
        self.counters.detaches += 1;
        self.counters.live_attachments -= 1;
        if buffer.released && buffer.attachments.is_empty() {
            self.destroy(buffer_id);
        }
        Ok(())
    }

    /// The allocator rule: the first allocator, in priority order, that
    /// serves a kind of `mask` and has room for `size` bytes (free extents
    /// or leased stock, see the module documentation).
    /// A shared buffer (`page`: its share page size) only takes share
    /// allocators, an unshared one none.
    fn choose(
        allocators: &[AllocatorSlot],
        size: u64,
        mask: u32,
        single_segment: bool,
        page: Option<u64>,
    ) -> Option<usize> {
        allocators
            .iter()
            .position(|slot| slot.serves(mask, page) && slot.has_room(size, single_segment))
    }

    /// Allocates backing for `size` bytes from the allocator the rule picks.
    /// `EAGAIN` ([`Error::RoomLeased`]) when its room is leased stock.
    fn allocate(
        allocators: &mut [AllocatorSlot],
        size: u64,
        mask: u32,
        single_segment: bool,
        page: Option<u64>,
    ) -> Result<Backing, Error> {
        let index = Self::choose(allocators, size, mask, single_segment, page)
            .ok_or(Error::OutOfMemory { size, mask })?;
        let segments = allocators[index]
            .allocator
            .alloc(size, single_segment)
            .ok_or(Error::RoomLeased {
                allocator: index,
                size,
            })?;
        Ok(Backing {
            allocator: index,
            segments,
            serial: 0, // set by the caller
            holds: 0,
        })
    }

    /// A serial no backing had before.
    fn take_serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }

    /// The allocator a map of `buffer_id` would allocate from now, by the
    /// rule (`None`: no allocator has room). For tests and diagnostics.
    pub fn chosen_allocator(&self, buffer_id: BufferId) -> Result<Option<usize>, Error> {
        let buffer = self.buffer(buffer_id)?;
        let page = self.share_page(buffer);
        Ok(Self::choose(
            &self.allocators,
            alloc_size(buffer.size, page),
            buffer.access_mask,
            self.contiguous_promised(buffer),
            page,
        ))
    }

    /// Whether an attachment of the buffer negotiated `Contiguous`: its
    /// allocations must then be one segment.
    fn contiguous_promised(&self, buffer: &Buffer) -> bool {
        buffer.attachments.iter().any(|a| {
            self.attachments
                .get(a)
                .is_some_and(|att| att.map_type == MappingType::Contiguous)
        })
    }

    /// Maps the buffer of `attachment_id` in `dir`. The first map allocates
    /// the backing; the first map after an attach that asked for migration
    /// moves it.
    pub fn map(&mut self, attachment_id: AttachmentId, dir: Direction) -> Result<Mapped, Error> {
        let attachment = self
            .attachments
            .get(&attachment_id)
            .filter(|a| a.owner == Owner::Guest)
            .ok_or(Error::UnknownAttachment(attachment_id))?;
        if attachment.maps[dir.index()] == u32::MAX {
            return Err(Error::MapCountOverflow(attachment_id));
        }
        let map_type = attachment.map_type;
        let buffer_id = attachment.buffer;
        if self.buffer(buffer_id)?.imported {
            return Err(Error::NotImported(buffer_id));
        }
        let page = self.share_page(self.buffer(buffer_id)?);
        let buffer = self
            .buffers
            .get_mut(&buffer_id)
            .ok_or(Error::UnknownBuffer(buffer_id))?;

        let mut newly_allocated = false;
        let mut migrated_from = None;
        let needs_backing = buffer.backing.is_none() || buffer.migrate_pending;
        if !needs_backing
            && map_type == MappingType::Contiguous
            && buffer
                .backing
                .as_ref()
                .is_some_and(|b| b.segments.len() != 1)
        {
            // Cannot happen: Contiguous is only negotiated for a backing of
            // one segment, and every allocation for a buffer with a
            // contiguous attachment asks for one segment. Refuse rather
            // than lie, before anything changes.
            return Err(Error::NotContiguous(buffer_id));
        }
        if needs_backing {
            // A contiguous attachment (this one included) needs one segment.
            let single_segment = buffer.attachments.iter().any(|a| {
                self.attachments
                    .get(a)
                    .is_some_and(|att| att.map_type == MappingType::Contiguous)
            });
            let mut new = Self::allocate(
                &mut self.allocators,
                alloc_size(buffer.size, page),
                buffer.access_mask,
                single_segment,
                page,
            )?;
            new.serial = self.next_serial;
            self.next_serial += 1;
            self.allocators[new.allocator].num_buffers += 1;
            self.counters.allocations += 1;
            self.counters.backing_bytes += new.len();
            match buffer.backing.replace(new) {
                Some(old) => {
                    buffer.migrate_pending = false;
                    self.counters.migrations += 1;
                    migrated_from = Some(old.segments.clone());
                    self.retire(old);
                }
                None => newly_allocated = true,
            }
        }
        let Some(buffer) = self.buffers.get(&buffer_id) else {
            return Err(Error::UnknownBuffer(buffer_id)); // found just above
        };
        let Some(backing) = &buffer.backing else {
            return Err(Error::NoBacking(buffer_id)); // set just above
        };
        let mapped = Mapped {
            map_type,
            segments: backing.segments.clone(),
            allocator: backing.allocator,
            size: buffer.size,
            newly_allocated,
            migrated_from,
        };
        if let Some(att) = self.attachments.get_mut(&attachment_id) {
            att.maps[dir.index()] += 1;
        }
        self.counters.maps += 1;
        Ok(mapped)
    }

    /// Ends one map of `attachment_id` in `dir`; `EINVAL` if none is
    /// outstanding in that direction.
    pub fn unmap(&mut self, attachment_id: AttachmentId, dir: Direction) -> Result<(), Error> {
        let attachment = self
            .attachments
            .get_mut(&attachment_id)
            .filter(|a| a.owner == Owner::Guest)
            .ok_or(Error::UnknownAttachment(attachment_id))?;
        let count = &mut attachment.maps[dir.index()];
        if *count == 0 {
            return Err(Error::NotMapped {
                attachment: attachment_id,
                direction: dir,
            });
        }
        *count -= 1;
        self.counters.unmaps += 1;
        Ok(())
    }

    /// Gives a buffer's backing back to its allocator: the buffer is again
    /// without backing, and its next map allocates (and reports) new backing.
    /// For the device, when it could not zero or fill new backing. `EBUSY`
    /// while any attachment holds a mapping, `ENODATA` without backing.
    pub fn discard_backing(&mut self, buffer_id: BufferId) -> Result<(), Error> {
        let buffer = self
            .buffers
            .get(&buffer_id)
            .ok_or(Error::UnknownBuffer(buffer_id))?;
        if let Some(mapped) = buffer
            .attachments
            .iter()
            .find(|a| self.attachments.get(a).is_some_and(Attachment::mapped))
        {
            return Err(Error::AttachmentMapped(*mapped));
        }
        let Some(buffer) = self.buffers.get_mut(&buffer_id) else {
            return Err(Error::UnknownBuffer(buffer_id)); // found just above
        };
        let backing = buffer.backing.take().ok_or(Error::NoBacking(buffer_id))?;
        buffer.migrate_pending = false;
        self.retire(backing);
        Ok(())
    }

    /// Drops the creator's reference. The buffer (and its backing) goes
    /// away now if it has no attachment, else at its last detach. A second
    /// free fails with `EINVAL` while attachments keep it alive, `ENOENT`
    /// after.
    pub fn free(&mut self, buffer_id: BufferId) -> Result<(), Error> {
        let buffer = self
            .buffers
            .get_mut(&buffer_id)
            .ok_or(Error::UnknownBuffer(buffer_id))?;
        if buffer.released {
            return Err(Error::BufferReleased(buffer_id));
        }
        if buffer.imported {
            // An import ends with RELEASE.
            return Err(Error::NotImported(buffer_id));
        }
        buffer.released = true;
        let destroy = buffer.attachments.is_empty();
        self.counters.frees += 1;
        if destroy {
            self.destroy(buffer_id);
        }
        Ok(())
    }

    /// A backing leaves its buffer (destroyed, moved, discarded): back to
    /// its allocator, or to quarantine while other VMs may reach it.
    fn retire(&mut self, backing: Backing) {
        let len = backing.len();
        self.counters.backing_bytes -= len;
        let slot = &mut self.allocators[backing.allocator];
        slot.num_buffers -= 1;
        if backing.holds == 0 {
            slot.allocator.free(&backing.segments);
            return;
        }
        self.counters.quarantined_bytes += len;
        self.quarantine.insert(
            backing.serial,
            Quarantined {
                serial: backing.serial,
                allocator: Some(backing.allocator),
                segments: backing.segments,
                holds: backing.holds,
            },
        );
    }

    /// Records that a window of another VM reaches the backing of shared
    /// buffer `buffer_id` (a mapping is about to be made): until the
    /// matching [`Pool::unhold`], the extent is never free memory, even
    /// after the buffer is freed or moved (it is then quarantined).
    /// `EINVAL` for a buffer that is not shared, `ENODATA` without backing.
    pub fn hold(&mut self, buffer_id: BufferId) -> Result<Held, Error> {
        let page = self.share_page(self.buffer(buffer_id)?);
        let buffer = self
            .buffers
            .get_mut(&buffer_id)
            .ok_or(Error::UnknownBuffer(buffer_id))?;
        if page.is_none() {
            return Err(Error::NotShared(buffer_id));
        }
        let backing = buffer.backing.as_mut().ok_or(Error::NoBacking(buffer_id))?;
        let (&[extent], Some(holds)) = (backing.segments.as_slice(), backing.holds.checked_add(1))
        else {
            return Err(Error::NotContiguous(buffer_id));
        };
        backing.holds = holds;
        Ok(Held {
            serial: backing.serial,
            extent,
        })
    }

    /// Ends one [`Pool::hold`] of the backing `serial` (the window is
    /// proven gone). Returns true when that freed a quarantined extent.
    /// `ENOENT` for a serial without holds.
    pub fn unhold(&mut self, serial: u64) -> Result<bool, Error> {
        if let Some(entry) = self.quarantine.get_mut(&serial) {
            entry.holds -= 1;
            if entry.holds > 0 {
                return Ok(false);
            }
            if let Some(entry) = self.quarantine.remove(&serial) {
                self.counters.quarantined_bytes -=
                    entry.segments.iter().map(|s| s.len).sum::<u64>();
                if let Some(allocator) = entry.allocator {
                    self.allocators[allocator].allocator.free(&entry.segments);
                }
            }
            return Ok(true);
        }
        let backing = self
            .buffers
            .values_mut()
            .filter_map(|b| b.backing.as_mut())
            .find(|k| k.serial == serial && k.holds > 0)
            .ok_or(Error::UnknownHold(serial))?;
        backing.holds -= 1;
        Ok(false)
    }

    /// The extents in quarantine, by backing serial.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.quarantine.values().cloned().collect()
    }

    fn destroy(&mut self, buffer_id: BufferId) {
        if let Some(buffer) = self.buffers.remove(&buffer_id) {
            if let Some(backing) = buffer.backing {
                self.retire(backing);
            }
            if !buffer.imported {
                self.counters.total_bytes -= buffer.size;
            }
            self.counters.live_buffers -= 1;
            self.counters.destroyed += 1;
        }
    }

    /// Gives memory back to the guest: every range must lie in regions of
    /// `allocator` and be free (no backing, no lease on any byte), else
    /// nothing changes (`ENOENT` for memory the allocator does not have,
    /// `EBUSY` for memory in use, `EINVAL` for a malformed range, `EEXIST`
    /// for ranges that overlap each other). Ranges start on the allocator's
    /// region alignment.
    pub fn remove_regions(&mut self, allocator: usize, ranges: &[Segment]) -> Result<(), Error> {
        let slot = self
            .allocators
            .get(allocator)
            .ok_or(Error::UnknownAllocator(allocator))?;
        let align = slot.props.region_align.max(PAGE_SIZE);
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable();
        for range in &sorted {
            let (addr, len) = (range.addr, range.len);
            if len == 0 {
                return Err(Error::EmptyRegion { addr });
            }
            if addr % align != 0 || len % PAGE_SIZE != 0 {
                return Err(Error::MisalignedRegion { addr, len, align });
            }
            let end = addr
                .checked_add(len)
                .ok_or(Error::RegionOverflow { addr, len })?;
            if !self.regions_cover(allocator, addr, end) {
                return Err(Error::RegionNotDonated {
                    addr,
                    len,
                    allocator,
                });
            }
            if !slot.allocator.is_free(addr, len) {
                return Err(Error::RegionInUse { addr, len });
            }
        }
        for pair in sorted.windows(2) {
            if pair[0].end() > pair[1].addr {
                return Err(Error::RegionOverlap {
                    addr: pair[1].addr,
                    len: pair[1].len,
                    allocator,
                });
            }
        }
        self.check_region_count(self.regions_after_cut(&sorted))?;
        for range in &sorted {
            // Checked above: the range is free, so this cannot fail.
            if !self.allocators[allocator]
                .allocator
                .remove_free(range.addr, range.len)
            {
                return Err(Error::RegionInUse {
                    addr: range.addr,
                    len: range.len,
                });
            }
            self.cut_regions(range.addr, range.end());
            self.counters.regions_removed += 1;
        }
        Ok(())
    }

    /// Whether `[addr, end)` lies in regions of `allocator` (several
    /// adjacent ones may cover it).
    fn regions_cover(&self, allocator: usize, addr: u64, end: u64) -> bool {
        let mut at = addr;
        let mut regions = self.regions.range(..end).rev();
        // Walk backwards from the last region starting before `end` to the
        // one that contains `addr`, checking that they are contiguous.
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        for (&start, &(region_end, owner)) in regions.by_ref() {
            if region_end <= addr {
                break;
            }
            if owner != allocator {
                return false;
            }
            pieces.push((start, region_end));
            if start <= addr {
                break;
            }
        }
        pieces.reverse();
        for (start, region_end) in pieces {
            if start > at {
                return false;
            }
            at = at.max(region_end);
        }
        at >= end
    }

    /// Removes `[addr, end)` from the region map, splitting regions.
    fn cut_regions(&mut self, addr: u64, end: u64) {
        cut(&mut self.regions, addr, end);
    }

    /// `ENOSPC` if the pool would hold more than `max_regions` regions
    /// (the limit bounds the daemon's heap a guest's donations cost).
    fn check_region_count(&self, regions: usize) -> Result<(), Error> {
        let max = self.config.limits.max_regions;
        if regions > self.regions.len() && regions > max as usize {
            return Err(Error::TooManyRegions { regions, max });
        }
        Ok(())
    }

    /// How many regions the pool would hold after cutting the (sorted,
    /// disjoint) `ranges` out: the cut done on a copy of the regions they
    /// touch only.
    fn regions_after_cut(&self, ranges: &[Segment]) -> usize {
        let mut touched = BTreeMap::new();
        for range in ranges {
            let end = range.end();
            for (&start, &value) in self
                .regions
                .range(..end)
                .rev()
                .take_while(|(_, &(region_end, _))| region_end > range.addr)
            {
                touched.insert(start, value);
            }
        }
        let before = touched.len();
        for range in ranges {
            cut(&mut touched, range.addr, range.end());
        }
        self.regions.len() - before + touched.len()
    }

    /// Leases up to `count` extents of `size` bytes of `allocator` to the
    /// driver, carved like any allocation (one segment each, the
    /// allocator's alignment). Stops early, without error, when the
    /// allocator would keep less than an eighth of its capacity free or
    /// the stock would exceed [`Limits::max_lease_bytes`](super::Limits).
    /// The caller must zero the extents before the driver sees them (and
    /// give them back with [`Pool::lease_return`] if it cannot).
    pub fn lease(
        &mut self,
        allocator: usize,
        size: u64,
        count: u32,
    ) -> Result<Vec<Segment>, Error> {
        if size == 0 || size % PAGE_SIZE != 0 || size > LEASE_MAX_EXTENT {
            return Err(Error::InvalidLease { size, count });
        }
        if count == 0 || count > LEASE_MAX_COUNT {
            return Err(Error::InvalidLease { size, count });
        }
        let max_stock = self.config.limits.max_lease_bytes;
        let slot = self
            .allocators
            .get_mut(allocator)
            .ok_or(Error::UnknownAllocator(allocator))?;
        let mut extents = Vec::new();
        for _ in 0..count {
            let reserve = slot.allocator.capacity() / 8;
            let free = slot.allocator.free_bytes();
            if slot.stock_bytes + size > max_stock || free < reserve + size {
                break;
            }
            let Some(mut segments) = slot.allocator.alloc(size, true) else {
                break;
            };
            let Some(extent) = segments.pop() else {
                break;
            };
            slot.stock.insert(extent.addr, extent.len);
            slot.stock_bytes += extent.len;
            extents.push(extent);
        }
        self.counters.leased_extents += extents.len() as u64;
        Ok(extents)
    }

    /// Takes back leased extents the driver did not use: each must be an
    /// extent of `allocator`'s stock, exactly, named once; else nothing
    /// changes (`EPERM`).
    pub fn lease_return(&mut self, allocator: usize, extents: &[Segment]) -> Result<(), Error> {
        let slot = self
            .allocators
            .get_mut(allocator)
            .ok_or(Error::UnknownAllocator(allocator))?;
        let mut sorted = extents.to_vec();
        sorted.sort_unstable();
        for (i, extent) in sorted.iter().enumerate() {
            let leased = slot.stock.get(&extent.addr) == Some(&extent.len);
            if !leased || (i > 0 && sorted[i - 1].addr == extent.addr) {
                return Err(Error::NotLeased {
                    addr: extent.addr,
                    allocator,
                });
            }
        }
        for extent in &sorted {
            slot.stock.remove(&extent.addr);
            slot.stock_bytes -= extent.len;
            slot.allocator.free(std::slice::from_ref(extent));
        }
        self.counters.lease_returns += sorted.len() as u64;
        Ok(())
    }

    /// The stock of `allocator` (leased, neither used nor given back), in
    /// address order.
    pub fn stock(&self, allocator: usize) -> Vec<Segment> {
        self.allocators
            .get(allocator)
            .map_or_else(Vec::new, |slot| {
                slot.stock
                    .iter()
                    .map(|(&addr, &len)| Segment { addr, len })
                    .collect()
            })
    }

    /// Whether `id` is in the driver's id range and unused as a `what`.
    fn check_driver_id<V>(id: u32, in_use: &super::ids::IdMap<V>) -> Result<(), Error> {
        if !(DRIVER_ID_FIRST..=DRIVER_ID_LAST).contains(&id) {
            return Err(Error::DriverIdOutOfRange(id));
        }
        if in_use.contains_key(&id) {
            return Err(Error::IdInUse(id));
        }
        Ok(())
    }

    /// A leased map: creates the buffer and its attachments with the ids
    /// the driver chose and maps attachment `map_index` on the leased
    /// extent. All or nothing. The extent must be in the stock of the
    /// allocator the rule picks for the buffer (else `EPERM` for an extent
    /// that is not leased, `ESTALE` for one of another allocator), at least
    /// the buffer's size; every negotiated type must equal the driver's.
    /// The extent was zeroed when it was leased; its tail beyond the
    /// buffer's size goes back to the allocator.
    pub fn leased_map(&mut self, req: &LeasedMap) -> Result<Mapped, Error> {
        Self::check_driver_id(req.buffer_id, &self.buffers)?;
        for (i, a) in req.attachments.iter().enumerate() {
            Self::check_driver_id(a.id, &self.attachments)?;
            if req.attachments[..i].iter().any(|b| b.id == a.id) {
                return Err(Error::IdInUse(a.id));
            }
        }
        if req.map_index >= req.attachments.len() {
            return Err(Error::LeasedMapIndex(req.map_index));
        }
        let size = self.check_create(req.size, 0)?;
        let allocator = self
            .allocators
            .iter()
            .position(|slot| slot.stock.contains_key(&req.extent))
            .ok_or(Error::NotLeased {
                addr: req.extent,
                allocator: usize::MAX,
            })?;
        let extent_len = self.allocators[allocator].stock[&req.extent];
        if size > extent_len {
            return Err(Error::LeaseTooSmall {
                addr: req.extent,
                len: extent_len,
                size,
            });
        }

        // From here on every step can be undone by dropping the buffer.
        let saved_counters = self.counters.clone();
        self.insert_buffer(req.buffer_id, size, 0, req.initial_mask);
        let result = self.leased_map_steps(req, allocator, extent_len);
        if result.is_err() {
            for a in &req.attachments {
                self.attachments.remove(&a.id);
            }
            self.buffers.remove(&req.buffer_id);
            self.counters = saved_counters;
        }
        result
    }

    fn leased_map_steps(
        &mut self,
        req: &LeasedMap,
        allocator: usize,
        extent_len: u64,
    ) -> Result<Mapped, Error> {
        for a in &req.attachments {
            let checked =
                self.check_attach_as(req.buffer_id, a.mask, &a.importer_types, Owner::Guest)?;
            if checked.map_type != a.map_type {
                return Err(Error::LeasedMappingType {
                    attachment: a.id,
                    driver: a.map_type.code(),
                    device: checked.map_type.code(),
                });
            }
            self.insert_attachment(a.id, req.buffer_id, a.mask, checked, Owner::Guest)?;
        }
        let buffer = self.buffer(req.buffer_id)?;
        let (size, mask) = (buffer.size, buffer.access_mask);
        let single = self.contiguous_promised(buffer);
        let chosen = Self::choose(&self.allocators, size, mask, single, None);
        if chosen != Some(allocator) {
            return Err(Error::LeaseElsewhere {
                addr: req.extent,
                allocator,
                chosen,
            });
        }

        let slot = &mut self.allocators[allocator];
        slot.stock.remove(&req.extent);
        slot.stock_bytes -= extent_len;
        if extent_len > size {
            slot.allocator.free(&[Segment {
                addr: req.extent + size,
                len: extent_len - size,
            }]);
        }
        slot.num_buffers += 1;
        let segments = vec![Segment {
            addr: req.extent,
            len: size,
        }];
        let attachment = req.attachments[req.map_index].id;
        let map_type = req.attachments[req.map_index].map_type;
        let serial = self.take_serial();
        if let Some(buffer) = self.buffers.get_mut(&req.buffer_id) {
            buffer.backing = Some(Backing {
                allocator,
                segments: segments.clone(),
                serial,
                holds: 0,
            });
        }
        if let Some(att) = self.attachments.get_mut(&attachment) {
            att.maps[req.direction.index()] += 1;
        }
        self.counters.allocations += 1;
        self.counters.backing_bytes += size;
        self.counters.maps += 1;
        self.counters.leased_maps += 1;
        Ok(Mapped {
            map_type,
            segments,
            allocator,
            size,
            newly_allocated: false,
            migrated_from: None,
        })
    }

    /// The free extents of `allocator`, in address order (introspection).
    pub fn free_extents(&self, allocator: usize) -> Vec<Segment> {
        self.allocators
            .get(allocator)
            .map_or_else(Vec::new, |slot| slot.allocator.free_list())
    }

    fn buffer(&self, buffer_id: BufferId) -> Result<&Buffer, Error> {
        self.buffers
            .get(&buffer_id)
            .ok_or(Error::UnknownBuffer(buffer_id))
    }

    /// The one contiguous range of the backing: `ENODATA` without backing,
    /// `ENODEV` when the backing is more than one segment.
    pub fn phys(&self, buffer_id: BufferId) -> Result<Segment, Error> {
        match self.backing(buffer_id)? {
            [one] => Ok(*one),
            _ => Err(Error::NotContiguous(buffer_id)),
        }
    }

    /// The backing's segments in buffer order; `ENODATA` without backing.
    pub fn backing(&self, buffer_id: BufferId) -> Result<&[Segment], Error> {
        self.buffer(buffer_id)?
            .backing
            .as_ref()
            .map(|b| b.segments.as_slice())
            .ok_or(Error::NoBacking(buffer_id))
    }

    /// The serial of a live buffer: unique among every buffer the pool
    /// ever had, so a later buffer with the same id (a driver-chosen id
    /// used again) has another one.
    pub fn buffer_serial(&self, buffer_id: BufferId) -> Result<u64, Error> {
        Ok(self.buffer(buffer_id)?.serial)
    }

    /// The serial of the buffer's backing: unique among every backing the
    /// pool ever had, so a backing that was replaced, dropped or given to
    /// another buffer with the same id never has the serial of the old
    /// one. `ENODATA` without backing.
    pub fn backing_serial(&self, buffer_id: BufferId) -> Result<u64, Error> {
        self.buffer(buffer_id)?
            .backing
            .as_ref()
            .map(|b| b.serial)
            .ok_or(Error::NoBacking(buffer_id))
    }

    /// Rounded size of a live buffer.
    pub fn buffer_size(&self, buffer_id: BufferId) -> Result<u64, Error> {
        Ok(self.buffer(buffer_id)?.size)
    }

    /// Buffer of a live attachment of the guest (`ENOENT` for a share or
    /// remote attachment: the guest never names those).
    pub fn attachment_buffer(&self, attachment_id: AttachmentId) -> Result<BufferId, Error> {
        self.attachments
            .get(&attachment_id)
            .filter(|a| a.owner == Owner::Guest)
            .map(|a| a.buffer)
            .ok_or(Error::UnknownAttachment(attachment_id))
    }

    /// Allocator backing a buffer; `ENODATA` without backing.
    pub fn backing_allocator(&self, buffer_id: BufferId) -> Result<usize, Error> {
        self.buffer(buffer_id)?
            .backing
            .as_ref()
            .map(|b| b.allocator)
            .ok_or(Error::NoBacking(buffer_id))
    }

    pub fn allocator_stats(&self) -> Vec<AllocatorStats> {
        self.config
            .allocators
            .iter()
            .zip(&self.allocators)
            .enumerate()
            .map(|(id, (spec, slot))| AllocatorStats {
                id,
                name: spec.name.clone(),
                strategy: spec.strategy,
                kinds: spec.kinds,
                placement: spec.placement.clone(),
                limit: slot.props.limit,
                alloc_align: slot.props.alloc_align,
                capacity: slot.allocator.capacity(),
                free: slot.allocator.free_bytes(),
                largest_free: slot.allocator.largest_free(),
                free_extents: slot.allocator.free_extents(),
                fragmentation_permille: slot.allocator.fragmentation_permille(),
                num_buffers: slot.num_buffers,
                leased: slot.stock_bytes,
                leased_extents: slot.stock.len(),
                quarantined: self
                    .quarantine
                    .values()
                    .filter(|q| q.allocator == Some(id))
                    .flat_map(|q| q.segments.iter())
                    .map(|s| s.len)
                    .sum(),
                share: slot.share,
            })
            .collect()
    }

    /// Live buffers (including freed ones kept alive by attachments).
    pub fn num_buffers(&self) -> usize {
        self.buffers.len()
    }

    pub fn num_attachments(&self) -> usize {
        self.attachments.len()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Mask of every kind defined in this pool (well-known and custom).
    pub fn defined_kinds(&self) -> u32 {
        self.kinds.defined_mask()
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut buffers: Vec<BufferInfo> = self
            .buffers
            .iter()
            .map(|(&id, b)| BufferInfo {
                id,
                size: b.size,
                flags: b.flags,
                initial_mask: b.initial_mask,
                access_mask: b.access_mask,
                released: b.released,
                allocator: b.backing.as_ref().map(|k| k.allocator),
                backing: b
                    .backing
                    .as_ref()
                    .map(|k| k.segments.clone())
                    .unwrap_or_default(),
                migrate_pending: b.migrate_pending,
                attachments: b.attachments.clone(),
                imported: b.imported,
            })
            .collect();
        buffers.sort_by_key(|b| b.id);
        let mut attachments: Vec<AttachmentInfo> = self
            .attachments
            .iter()
            .map(|(&id, a)| AttachmentInfo {
                id,
                buffer: a.buffer,
                mask: a.mask,
                map_type: a.map_type,
                maps: a.maps,
                owner: a.owner,
            })
            .collect();
        attachments.sort_by_key(|a| a.id);
        Snapshot {
            limits: self.config.limits.clone(),
            exporter_types: self.config.exporter_types.clone(),
            counters: self.counters.clone(),
            allocators: self.allocator_stats(),
            regions: self
                .regions
                .iter()
                .map(|(&addr, &(end, allocator))| RegionInfo {
                    allocator,
                    addr,
                    len: end - addr,
                })
                .collect(),
            buffers,
            attachments,
            next_buffer_id: self.buffer_ids.next_value(),
            next_attachment_id: self.attachment_ids.next_value(),
        }
    }
}

#[cfg(test)]
mod region_bound_tests {
    use super::*;

    fn pool(max_regions: u32) -> Pool {
        let mut config = PoolConfig::default_layout();
        config.limits.max_regions = max_regions;
        Pool::new(config).unwrap()
    }

    fn page(i: u64) -> Segment {
        Segment {
            addr: 0x100_0000 + i * 0x1000,
            len: 0x1000,
        }
    }

    #[test]
    fn regions_past_the_bound_are_refused_and_cuts_are_counted_exactly() {
        let mut pool = pool(4);
        // One region of 16 pages, two single pages apart from it.
        pool.add_regions(
            0,
            &[Segment {
                addr: page(0).addr,
                len: 16 * 0x1000,
            }],
        )
        .unwrap();
        pool.add_regions(0, &[page(20), page(22)]).unwrap();
        let before = pool.snapshot();
        // Two more would be 5.
        let error = pool.add_regions(0, &[page(24), page(26)]).unwrap_err();
        assert_eq!(error, Error::TooManyRegions { regions: 5, max: 4 });
        assert_eq!(error.errno(), libc::ENOSPC);
        // Two pages out of the middle of the big one: 3 pieces, 5 regions.
        let error = pool.remove_regions(0, &[page(4), page(8)]).unwrap_err();
        assert_eq!(error, Error::TooManyRegions { regions: 5, max: 4 });
        assert_eq!(pool.snapshot(), before, "refusals changed the pool");
        // Adjacent pages out of the middle: 2 pieces, 4 regions.
        pool.remove_regions(0, &[page(4), page(5)]).unwrap();
        assert_eq!(pool.snapshot().regions.len(), 4);
        // From an edge, and a whole region: never more regions.
        pool.remove_regions(0, &[page(0), page(20)]).unwrap();
        assert_eq!(pool.snapshot().regions.len(), 3);
        pool.add_regions(0, &[page(24)]).unwrap();
    }
}
