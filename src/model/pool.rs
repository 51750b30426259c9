//! The pool: buffers, attachments and the allocators behind them.

use std::collections::BTreeMap;

use super::allocator::{Allocator, ContiguousAllocator, ScatterAllocator};
use super::config::{self, AllocatorProps, KindTable};
use super::ids::{IdAllocator, IdMap};
use super::mapping::{self, MappingType};
use super::snapshot::{AllocatorStats, AttachmentInfo, BufferInfo, Counters, RegionInfo, Snapshot};
use super::{
    kinds, AttachmentId, BufferId, Direction, Error, PoolConfig, Segment, Strategy, PAGE_SIZE,
};

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

#[derive(Clone, Debug)]
struct Backing {
    allocator: usize,
    segments: Vec<Segment>,
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
}

#[derive(Clone, Debug)]
struct Attachment {
    buffer: BufferId,
    mask: u32,
    map_type: MappingType,
    maps: [u32; 3],
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
    num_buffers: u32,
}

/// The buffer model: see the [module documentation](super).
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
                    num_buffers: 0,
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
    /// use). On error nothing changed.
    pub fn clear(&mut self) -> Result<(), Error> {
        let mut fresh = Pool::new(self.config.clone())?;
        fresh.buffer_ids = self.buffer_ids.clone();
        fresh.attachment_ids = self.attachment_ids.clone();
        *self = fresh;
        Ok(())
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
        let id = self
            .buffer_ids
            .peek(&self.buffers)
            .ok_or(Error::IdsExhausted)?;
        self.buffer_ids.commit(id);
        self.buffers.insert(
            id,
            Buffer {
                size: rounded,
                flags,
                initial_mask,
                access_mask: base_mask(initial_mask),
                released: false,
                attachments: Vec::new(),
                backing: None,
                migrate_pending: false,
            },
        );
        self.counters.creates += 1;
        self.counters.live_buffers += 1;
        self.counters.total_bytes += rounded;
        Ok(Created { id, size: rounded })
    }

    /// Whether every allocator that could back `mask` is contiguous (and
    /// there is at least one): a buffer with this access mask can only
    /// become one contiguous range.
    fn only_contiguous_for(&self, mask: u32) -> bool {
        let mut any = false;
        for slot in &self.allocators {
            if slot.kinds & mask != 0 {
                if slot.strategy != Strategy::Contiguous {
                    return false;
                }
                any = true;
            }
        }
        any
    }

    fn any_allocator_for(&self, mask: u32) -> bool {
        self.allocators.iter().any(|slot| slot.kinds & mask != 0)
    }

    /// Attaches a device with constraint `mask` and the mapping types it
    /// supports. See the module documentation for the rules.
    pub fn attach(
        &mut self,
        buffer_id: BufferId,
        mask: u32,
        importer_types: &[MappingType],
    ) -> Result<Attached, Error> {
        let buffer = self
            .buffers
            .get(&buffer_id)
            .ok_or(Error::UnknownBuffer(buffer_id))?;
        if buffer.released {
            return Err(Error::BufferReleased(buffer_id));
        }
        if importer_types.is_empty() {
            return Err(Error::NoImporterTypes);
        }
        if let Some(bad) = importer_types.iter().find(|t| !t.is_valid()) {
            return Err(Error::InvalidMappingType(bad.code()));
        }
        let max = self.config.limits.max_attachments_per_buffer;
        if buffer.attachments.len() >= max as usize {
            return Err(Error::TooManyAttachments {
                buffer: buffer_id,
                max,
            });
        }
        let new_mask = buffer.access_mask & mask;
        if new_mask == 0 {
            return Err(Error::EmptyAccessMask {
                access_mask: buffer.access_mask,
                mask,
            });
        }

        // Does the backing (if any) still fit? If not: migrate or refuse.
        let mut migrate = buffer.migrate_pending;
        if let Some(backing) = &buffer.backing {
            if self.allocators[backing.allocator].kinds & new_mask == 0 {
                let mapped = buffer
                    .attachments
                    .iter()
                    .any(|a| self.attachments.get(a).is_some_and(Attachment::mapped));
                if mapped {
                    return Err(Error::MigrationWhileMapped {
                        buffer: buffer_id,
                        mask: new_mask,
                    });
                }
                if !self.any_allocator_for(new_mask) {
                    return Err(Error::NoAllocatorForMask {
                        buffer: buffer_id,
                        mask: new_mask,
                    });
                }
                migrate = true;
            }
        }

        // Contiguous matches a buffer that is one range (and stays), or that
        // will be allocated and can only become one range.
        let contiguous_ok = match &buffer.backing {
            Some(backing) if !migrate => backing.segments.len() == 1,
            _ => self.only_contiguous_for(new_mask),
        };
        let map_type =
            mapping::negotiate(&self.config.exporter_types, importer_types, |t| match t {
                MappingType::Contiguous if !contiguous_ok => {
                    Err(Error::MappingTypeUnsupported(t.code()))
                }
                _ => Ok(()),
            })?;

        let id = self
            .attachment_ids
            .peek(&self.attachments)
            .ok_or(Error::IdsExhausted)?;
        self.attachment_ids.commit(id);
        self.attachments.insert(
            id,
            Attachment {
                buffer: buffer_id,
                mask,
                map_type,
                maps: [0; 3],
            },
        );
        let buffer = self
            .buffers
            .get_mut(&buffer_id)
            .ok_or(Error::UnknownBuffer(buffer_id))?;
        buffer.attachments.push(id);
        buffer.access_mask = new_mask;
        buffer.migrate_pending = migrate;
        self.counters.attaches += 1;
        self.counters.live_attachments += 1;
        Ok(Attached {
            id,
            map_type,
            migrate_pending: migrate,
            access_mask: new_mask,
        })
    }

    /// Detaches; fails with `EBUSY` while maps are outstanding. The access
    /// mask is recomputed (it may widen; a pending migration is cancelled
    /// when the backing satisfies the wider mask). Detaching the last
    /// attachment of a freed buffer destroys it.
    pub fn detach(&mut self, attachment_id: AttachmentId) -> Result<(), Error> {
        let attachment = self
            .attachments
            .get(&attachment_id)
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
        if let Some(backing) = &buffer.backing {
            // Cancel a pending migration the backing no longer needs: it
            // satisfies the wider mask and every contiguous promise.
            let contiguous_promised = buffer.attachments.iter().any(|a| {
                self.attachments
                    .get(a)
                    .is_some_and(|att| att.map_type == MappingType::Contiguous)
            });
            if self.allocators[backing.allocator].kinds & access != 0
                && (!contiguous_promised || backing.segments.len() == 1)
            {
                buffer.migrate_pending = false;
            }
        }
        self.counters.detaches += 1;
        self.counters.live_attachments -= 1;
        if buffer.released && buffer.attachments.is_empty() {
            self.destroy(buffer_id);
        }
        Ok(())
    }

    /// Allocates backing for `size` bytes from the first allocator serving
    /// `mask` that has room.
    fn allocate(
        allocators: &mut [AllocatorSlot],
        size: u64,
        mask: u32,
        single_segment: bool,
    ) -> Option<Backing> {
        allocators
            .iter_mut()
            .enumerate()
            .filter(|(_, slot)| slot.kinds & mask != 0)
            .find_map(|(index, slot)| {
                slot.allocator
                    .alloc(size, single_segment)
                    .map(|segments| Backing {
                        allocator: index,
                        segments,
                    })
            })
    }

    /// Maps the buffer of `attachment_id` in `dir`. The first map allocates
    /// the backing; the first map after an attach that asked for migration
    /// moves it.
    pub fn map(&mut self, attachment_id: AttachmentId, dir: Direction) -> Result<Mapped, Error> {
        let attachment = self
            .attachments
            .get(&attachment_id)
            .ok_or(Error::UnknownAttachment(attachment_id))?;
        if attachment.maps[dir.index()] == u32::MAX {
            return Err(Error::MapCountOverflow(attachment_id));
        }
        let map_type = attachment.map_type;
        let buffer_id = attachment.buffer;
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
            let new = Self::allocate(
                &mut self.allocators,
                buffer.size,
                buffer.access_mask,
                single_segment,
            )
            .ok_or(Error::OutOfMemory {
                size: buffer.size,
                mask: buffer.access_mask,
            })?;
            self.allocators[new.allocator].num_buffers += 1;
            self.counters.allocations += 1;
            match buffer.backing.replace(new) {
                Some(old) => {
                    let slot = &mut self.allocators[old.allocator];
                    slot.allocator.free(&old.segments);
                    slot.num_buffers -= 1;
                    migrated_from = Some(old.segments);
                    buffer.migrate_pending = false;
                    self.counters.migrations += 1;
                }
                None => {
                    newly_allocated = true;
                    self.counters.backing_bytes += buffer.size;
                }
            }
        }
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
        let slot = &mut self.allocators[backing.allocator];
        slot.allocator.free(&backing.segments);
        slot.num_buffers -= 1;
        self.counters.backing_bytes -= buffer.size;
        buffer.migrate_pending = false;
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
        buffer.released = true;
        let destroy = buffer.attachments.is_empty();
        self.counters.frees += 1;
        if destroy {
            self.destroy(buffer_id);
        }
        Ok(())
    }

    fn destroy(&mut self, buffer_id: BufferId) {
        if let Some(buffer) = self.buffers.remove(&buffer_id) {
            if let Some(backing) = buffer.backing {
                let slot = &mut self.allocators[backing.allocator];
                slot.allocator.free(&backing.segments);
                slot.num_buffers -= 1;
                self.counters.backing_bytes -= buffer.size;
            }
            self.counters.total_bytes -= buffer.size;
            self.counters.live_buffers -= 1;
            self.counters.destroyed += 1;
        }
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

    /// Rounded size of a live buffer.
    pub fn buffer_size(&self, buffer_id: BufferId) -> Result<u64, Error> {
        Ok(self.buffer(buffer_id)?.size)
    }

    /// Buffer of a live attachment.
    pub fn attachment_buffer(&self, attachment_id: AttachmentId) -> Result<BufferId, Error> {
        self.attachments
            .get(&attachment_id)
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
