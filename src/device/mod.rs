//! The command executor: decodes one batch (the readable bytes of a control
//! queue chain), runs its commands in order against the buffer model and
//! guest memory, and encodes the answer (the writable bytes). It knows no
//! vhost or virtqueue types: the guest memory is any
//! [`GuestMemoryBackend`], so tests use `GuestMemoryMmap::from_ranges`.
//!
//! Every field of a request is validated before anything changes: a bad
//! command gets a negative errno and changes nothing; the batch stops at the
//! first failure and every later command is answered `-ECANCELED`.

use std::collections::VecDeque;

use log::{debug, warn};
use serde::Serialize;
use vm_memory::{Address, ByteValued, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::model::{self, Direction, MappingType, Pool, Segment};
use crate::protocol::*;

mod config;
mod error;
mod frame;
mod guest_mem;

pub use config::DeviceConfig;
pub use error::Error;
pub use frame::{MAX_RESPONSE_BYTES, MAX_SLOT_BYTES};
pub use guest_mem::{checksum, copy_segments, fill_pattern, zero_segments};

use config::placement_flags;
use frame::{
    check_reserved, check_slot, exact, expect_empty, parse_batch, read_struct, write_struct,
};

/// Counters of the device layer (the model keeps its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceCounters {
    pub batches: u64,
    pub commands: u64,
    pub failed_commands: u64,
    /// Batches refused as a whole (framing, response space).
    pub rejected_batches: u64,
    /// Chains whose descriptors were unusable (counted by the queue glue).
    pub malformed_chains: u64,
    pub events_sent: u64,
    /// Events with no event buffer posted when they happened.
    pub events_dropped: u64,
    /// Control queue notifications (kicks) the queue glue handled.
    pub control_wakeups: u64,
    /// Used-buffer notifications (interrupts) sent on the control queue.
    pub control_signals: u64,
    /// Time spent answering control chains, nanoseconds.
    pub control_busy_ns: u64,
    /// LEASED_MAPs refused (each one logged), LEASE_REVOKE events queued.
    pub leased_maps_refused: u64,
    pub lease_revokes: u64,
    /// Polling of the control queue after an answer (the queue glue's):
    /// polls that found a request, polls that did not, time spent
    /// polling (ns), the current window (ns).
    pub poll_hits: u64,
    pub poll_misses: u64,
    pub poll_busy_ns: u64,
    pub poll_window_ns: u64,
}

/// What a command produced, for batch references.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Produced {
    Nothing,
    Buffer(u32),
    Attachment(u32),
}

/// The device state of one front-end connection.
pub struct Device {
    config: DeviceConfig,
    pool: Pool,
    events: VecDeque<Event>,
    pub counters: DeviceCounters,
}

impl Device {
    pub fn new(config: DeviceConfig) -> Result<Self, Error> {
        let pool = Pool::new(config.pool.clone())?;
        Ok(Device {
            config,
            pool,
            events: VecDeque::new(),
            counters: DeviceCounters::default(),
        })
    }

    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Takes the events produced since the last call, oldest first.
    pub fn take_events(&mut self) -> VecDeque<Event> {
        std::mem::take(&mut self.events)
    }

    /// Runs one batch. `request` is the readable part of the chain,
    /// `writable_len` the size of its writable part. Returns the bytes to
    /// write at the start of the writable part (empty if not even the
    /// `cenalloc_batch_resp` fits).
    pub fn execute_batch<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        request: &[u8],
        writable_len: usize,
    ) -> Vec<u8> {
        self.counters.batches += 1;
        let frames = match parse_batch(request, writable_len, self.config.max_batch) {
            Ok(frames) => frames,
            Err(error) => {
                debug!("batch rejected: {error}");
                self.counters.rejected_batches += 1;
                if writable_len < size_of::<BatchResp>() {
                    return Vec::new();
                }
                let resp = BatchResp {
                    status: status_of_errno(error.errno()),
                    num_done: 0,
                };
                return resp.as_slice().to_vec();
            }
        };

        let total = frames.last().map_or(size_of::<BatchResp>(), |last| {
            last.response + size_of::<RespHdr>() + last.header.resp_len as usize
        });
        let mut response = vec![0u8; total];
        let mut produced: Vec<Produced> = Vec::with_capacity(frames.len());
        let mut batch = BatchResp::default();
        for (index, frame) in frames.iter().enumerate() {
            self.counters.commands += 1;
            let slot_start = frame.response + size_of::<RespHdr>();
            let slot_end = slot_start + frame.header.resp_len as usize;
            let payload_end = frame.payload + frame.header.len as usize;
            let result = if batch.status != 0 {
                Err(Error::Cancelled)
            } else {
                self.run_command(
                    mem,
                    &frame.header,
                    &request[frame.payload..payload_end],
                    &mut response[slot_start..slot_end],
                    &produced,
                )
            };
            let header = match result {
                Ok((len, product)) => {
                    produced.push(product);
                    batch.num_done += 1;
                    RespHdr {
                        status: 0,
                        len: len as u32,
                        ..Default::default()
                    }
                }
                Err(error) => {
                    if !matches!(error, Error::Cancelled) {
                        debug!("command {index} (opcode {}) failed: {error}", {
                            frame.header.opcode
                        });
                        self.counters.failed_commands += 1;
                        batch.status = status_of_errno(error.errno());
                    }
                    produced.push(Produced::Nothing);
                    // A failed command leaves no partial answer behind.
                    response[slot_start..slot_end].fill(0);
                    RespHdr {
                        status: status_of_errno(error.errno()),
                        len: 0,
                        needed: error.needed(),
                        reserved: 0,
                    }
                }
            };
            response[frame.response..slot_start].copy_from_slice(header.as_slice());
        }
        response[..size_of::<BatchResp>()].copy_from_slice(batch.as_slice());
        response
    }

    fn run_command<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        header: &CmdHdr,
        payload: &[u8],
        slot: &mut [u8],
        produced: &[Produced],
    ) -> Result<(usize, Produced), Error> {
        if header.flags != 0 {
            return Err(Error::CommandFlags(header.flags));
        }
        if header.reserved != 0 {
            return Err(Error::Reserved(header.reserved));
        }
        match header.opcode {
            CENALLOC_CMD_GET_INFO => {
                expect_empty(payload)?;
                self.get_info(slot).map(nothing)
            }
            CENALLOC_CMD_POOL_ADD => self.pool_add(mem, payload).map(|()| (0, Produced::Nothing)),
            CENALLOC_CMD_POOL_REMOVE => self.pool_remove(payload).map(|()| (0, Produced::Nothing)),
            CENALLOC_CMD_LEASE => self.lease(mem, payload, slot).map(nothing),
            CENALLOC_CMD_LEASE_RETURN => {
                let req: LeaseReturnReq = read_struct(payload, 0).ok_or(Error::PayloadLength {
                    need: size_of::<LeaseReturnReq>(),
                    got: payload.len(),
                })?;
                let extents = ranges_after::<LeaseReturnReq>(payload, req.num_ranges)?;
                self.check_allocator(req.allocator_id)?;
                self.pool
                    .lease_return(req.allocator_id as usize, &extents)
                    .map_err(|e| {
                        warn!("LEASE_RETURN refused: {e}");
                        e
                    })?;
                Ok((0, Produced::Nothing))
            }
            CENALLOC_CMD_LEASED_MAP => self.leased_map(payload, slot).map(nothing),
            CENALLOC_CMD_CREATE => {
                let req: CreateReq = exact(payload)?;
                check_slot::<CreateResp>(slot)?;
                let created = self.pool.create(req.size, req.flags, req.initial_mask)?;
                let resp = CreateResp {
                    buffer_id: created.id,
                    reserved: 0,
                    size: created.size,
                };
                Ok((write_struct(slot, &resp), Produced::Buffer(created.id)))
            }
            CENALLOC_CMD_ATTACH => {
                let req: AttachReq = exact(payload)?;
                check_reserved(req.reserved)?;
                check_slot::<AttachResp>(slot)?;
                let buffer = resolve_buffer(req.buffer_id, produced)?;
                let types = importer_types(&req)?;
                let attached = self.pool.attach(buffer, req.mask, &types)?;
                let resp = AttachResp {
                    attach_id: attached.id,
                    map_type: attached.map_type.code(),
                    flags: if attached.migrate_pending {
                        CENALLOC_ATTACH_F_MIGRATE
                    } else {
                        0
                    },
                    access_mask: attached.access_mask,
                };
                Ok((write_struct(slot, &resp), Produced::Attachment(attached.id)))
            }
            CENALLOC_CMD_DETACH => {
                let req: DetachReq = exact(payload)?;
                check_reserved(req.reserved)?;
                let attachment = resolve_attachment(req.attach_id, produced)?;
                self.pool.detach(attachment)?;
                Ok((0, Produced::Nothing))
            }
            CENALLOC_CMD_MAP => {
                let req: MapReq = exact(payload)?;
                let attachment = resolve_attachment(req.attach_id, produced)?;
                let direction = direction(req.direction)?;
                self.map(mem, attachment, direction, slot).map(nothing)
            }
            CENALLOC_CMD_UNMAP => {
                let req: UnmapReq = exact(payload)?;
                let attachment = resolve_attachment(req.attach_id, produced)?;
                let direction = direction(req.direction)?;
                self.pool.unmap(attachment, direction)?;
                Ok((0, Produced::Nothing))
            }
            CENALLOC_CMD_FREE => {
                let req: FreeReq = exact(payload)?;
                check_reserved(req.reserved)?;
                let buffer = resolve_buffer(req.buffer_id, produced)?;
                self.pool.free(buffer)?;
                Ok((0, Produced::Nothing))
            }
            CENALLOC_CMD_PHYS => {
                let req: PhysReq = exact(payload)?;
                check_reserved(req.reserved)?;
                check_slot::<PhysResp>(slot)?;
                let buffer = resolve_buffer(req.buffer_id, produced)?;
                let segment = self.pool.phys(buffer)?;
                let resp = PhysResp {
                    addr: segment.addr,
                    len: segment.len,
                };
                Ok((write_struct(slot, &resp), Produced::Nothing))
            }
            CENALLOC_CMD_SYNC => {
                let req: SyncReq = exact(payload)?;
                let buffer = resolve_buffer(req.buffer_id, produced)?;
                check_sync_flags(req.flags)?;
                // Guest RAM is cache coherent with the daemon's mapping: SYNC
                // only checks that the buffer exists.
                self.pool.buffer_size(buffer)?;
                Ok((0, Produced::Nothing))
            }
            CENALLOC_CMD_STATS => {
                expect_empty(payload)?;
                self.stats(slot).map(nothing)
            }
            CENALLOC_CMD_FILL => {
                let req: FillReq = exact(payload)?;
                check_reserved(req.reserved)?;
                let buffer = resolve_buffer(req.buffer_id, produced)?;
                let segments = self.pool.backing(buffer)?;
                fill_pattern(mem, segments, req.seed)?;
                Ok((0, Produced::Nothing))
            }
            CENALLOC_CMD_CHECKSUM => {
                let req: ChecksumReq = exact(payload)?;
                check_reserved(req.reserved)?;
                check_slot::<ChecksumResp>(slot)?;
                let buffer = resolve_buffer(req.buffer_id, produced)?;
                let segments = self.pool.backing(buffer)?;
                let (checksum, len) = checksum(mem, segments)?;
                let resp = ChecksumResp { checksum, len };
                Ok((write_struct(slot, &resp), Produced::Nothing))
            }
            opcode => Err(Error::UnknownOpcode(opcode)),
        }
    }

    fn get_info(&self, slot: &mut [u8]) -> Result<usize, Error> {
        let stats = self.pool.allocator_stats();
        let need = size_of::<InfoResp>() + stats.len() * size_of::<AllocatorInfo>();
        if slot.len() < need {
            return Err(Error::SlotTooSmall {
                need,
                got: slot.len(),
            });
        }
        let config = self.pool.config();
        let limits = &config.limits;
        let mut info = InfoResp {
            version: CENALLOC_PROTOCOL_VERSION,
            num_allocators: stats.len() as u32,
            max_buffers: limits.max_buffers,
            max_attachments: limits.max_attachments_per_buffer,
            max_buffer_size: limits.max_buffer_size,
            max_total_bytes: limits.max_total_bytes,
            num_buffers: self.pool.num_buffers() as u32,
            num_exporter_types: config.exporter_types.len().min(CENALLOC_MAX_MAP_TYPES) as u32,
            ..Default::default()
        };
        for (slot_type, exporter_type) in info.exporter_types.iter_mut().zip(&config.exporter_types)
        {
            *slot_type = exporter_type.code();
        }
        let mut offset = write_struct(slot, &info);
        for stat in &stats {
            let entry = AllocatorInfo {
                id: stat.id as u32,
                kinds: stat.kinds,
                placement: placement_flags(&stat.placement),
                fragmentation: stat.fragmentation_permille,
                capacity: stat.capacity,
                // Room, as the allocator rule counts it: leased extents
                // back no buffer either.
                free: stat.free + stat.leased,
                largest_free: stat.largest_free,
                num_buffers: stat.num_buffers,
                reserved: 0,
                name: encode_name(&stat.name),
            };
            offset += write_struct(&mut slot[offset..], &entry);
        }
        Ok(offset)
    }

    /// POOL_ADD: every range is checked (page aligned, pool alignment, one
    /// guest RAM region, placement) here, overlaps by the model, before the
    /// first one is added, so a bad request changes nothing. The pool may
    /// not grow beyond its maximum, nor all pools together beyond their
    /// share of guest RAM.
    fn pool_add<M: GuestMemoryBackend>(&mut self, mem: &M, payload: &[u8]) -> Result<(), Error> {
        let req: PoolAddReq = read_struct(payload, 0).ok_or(Error::PayloadLength {
            need: size_of::<PoolAddReq>(),
            got: payload.len(),
        })?;
        let ranges = ranges_after::<PoolAddReq>(payload, req.num_ranges)?;
        let allocator = req.pool_index as usize;
        let stats = self.pool.allocator_stats();
        let stat = stats
            .get(allocator)
            .ok_or(Error::UnknownPool(req.pool_index))?;
        let align = stat.placement.align.max(CENALLOC_PAGE_SIZE);
        let limit = if stat.placement.below_4g {
            stat.limit.min(model::FOUR_GIB)
        } else {
            stat.limit
        };

        let mut added = 0u64;
        for range in &ranges {
            let (addr, len) = (range.addr, range.len);
            let end = addr
                .checked_add(len)
                .ok_or(Error::RangeNotPageAligned { addr, len })?;
            if len == 0 || addr % CENALLOC_PAGE_SIZE != 0 || len % CENALLOC_PAGE_SIZE != 0 {
                return Err(Error::RangeNotPageAligned { addr, len });
            }
            if addr % align != 0 {
                return Err(Error::RangeMisaligned { addr, len, align });
            }
            if end > limit {
                return Err(Error::RangeOutOfPlacement { addr, len, limit });
            }
            let region = mem
                .find_region(GuestAddress(addr))
                .ok_or(Error::RangeOutsideRam { addr, len })?;
            let region_end = region
                .start_addr()
                .raw_value()
                .checked_add(region.len())
                .ok_or(Error::RangeOutsideRam { addr, len })?;
            if end > region_end {
                return Err(Error::RangeOutsideRam { addr, len });
            }
            added = added.saturating_add(len);
        }
        let guest_ram: u64 = mem.iter().map(|region| region.len()).sum();
        let others: u64 = stats
            .iter()
            .filter(|s| s.id != allocator)
            .map(|s| s.capacity)
            .sum();
        let max = self
            .config
            .pool_capacity_limit(allocator, guest_ram, others);
        if stat.capacity.saturating_add(added) > max {
            return Err(Error::PoolFull {
                pool: req.pool_index,
                capacity: stat.capacity,
                added,
                max,
            });
        }
        // The model checks overlaps (with each other and with every donated
        // region) and adds all ranges or none.
        self.pool.add_regions(allocator, &ranges)?;
        Ok(())
    }

    /// POOL_REMOVE: the model checks every range (memory of this pool, no
    /// backing and no lease on it) and removes all or none.
    fn pool_remove(&mut self, payload: &[u8]) -> Result<(), Error> {
        let req: PoolRemoveReq = read_struct(payload, 0).ok_or(Error::PayloadLength {
            need: size_of::<PoolRemoveReq>(),
            got: payload.len(),
        })?;
        let ranges = ranges_after::<PoolRemoveReq>(payload, req.num_ranges)?;
        if req.pool_index as usize >= self.pool.allocator_stats().len() {
            return Err(Error::UnknownPool(req.pool_index));
        }
        self.pool.remove_regions(req.pool_index as usize, &ranges)?;
        Ok(())
    }

    /// LEASE: carves the extents, zeroes them, answers them. Extents that
    /// cannot be zeroed go back to the allocator and the lease fails.
    fn lease<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        payload: &[u8],
        slot: &mut [u8],
    ) -> Result<usize, Error> {
        let req: LeaseReq = exact(payload)?;
        if req.count == 0 || req.count > CENALLOC_MAX_LEASE {
            return Err(Error::Model(model::Error::InvalidLease {
                size: req.size,
                count: req.count,
            }));
        }
        let need = size_of::<LeaseResp>() + req.count as usize * size_of::<Range>();
        if slot.len() < need {
            return Err(Error::SlotTooSmall {
                need,
                got: slot.len(),
            });
        }
        self.check_allocator(req.allocator_id)?;
        let allocator = req.allocator_id as usize;
        let extents = self.pool.lease(allocator, req.size, req.count)?;
        if let Err(error) = zero_segments(mem, &extents) {
            if let Err(undo) = self.pool.lease_return(allocator, &extents) {
                warn!("LEASE: taking back extents that could not be zeroed failed: {undo}");
            }
            return Err(error);
        }
        if !extents.is_empty() {
            self.check_pool_low(allocator);
        }
        let resp = LeaseResp {
            num_extents: extents.len() as u32,
            reserved: 0,
        };
        let mut offset = write_struct(slot, &resp);
        for extent in &extents {
            let range = Range {
                addr: extent.addr,
                len: extent.len,
            };
            offset += write_struct(&mut slot[offset..], &range);
        }
        Ok(offset)
    }

    /// LEASED_MAP: decodes the records; the model validates and applies
    /// all or nothing. A refusal is logged: an honest driver never sees one.
    fn leased_map(&mut self, payload: &[u8], slot: &mut [u8]) -> Result<usize, Error> {
        let req: LeasedMapReq = read_struct(payload, 0).ok_or(Error::PayloadLength {
            need: size_of::<LeasedMapReq>(),
            got: payload.len(),
        })?;
        check_reserved(req.reserved)?;
        let count = req.num_attachments;
        if count == 0 || count > CENALLOC_MAX_LEASED_ATTACH {
            return Err(Error::LeasedAttachCount(count));
        }
        let need = size_of::<LeasedMapReq>() + count as usize * size_of::<LeasedAttach>();
        if payload.len() != need {
            return Err(Error::PayloadLength {
                need,
                got: payload.len(),
            });
        }
        let answer_len = size_of::<MapResp>() + size_of::<Range>();
        if !slot.is_empty() && slot.len() < answer_len {
            return Err(Error::SlotTooSmall {
                need: answer_len,
                got: slot.len(),
            });
        }
        let mut attachments = Vec::with_capacity(count as usize);
        for index in 0..count as usize {
            let offset = size_of::<LeasedMapReq>() + index * size_of::<LeasedAttach>();
            let record: LeasedAttach =
                read_struct(payload, offset).ok_or(Error::Framing("leased attach record"))?;
            let types = mapping_types(record.num_types, &record.types)?;
            let map_type = MappingType::from_code(record.map_type)
                .ok_or(Error::UnknownMappingType(record.map_type))?;
            attachments.push(model::LeasedAttach {
                id: record.attach_id,
                mask: record.mask,
                map_type,
                importer_types: types,
            });
        }
        let request = model::LeasedMap {
            buffer_id: req.buffer_id,
            size: req.size,
            initial_mask: req.initial_mask,
            attachments,
            map_index: req.map_index as usize,
            direction: direction(req.direction)?,
            extent: req.extent,
        };
        let mapped = self.pool.leased_map(&request).map_err(|e| {
            warn!(
                "LEASED_MAP of buffer {:#x} on extent {:#x} refused: {e}",
                request.buffer_id, request.extent
            );
            self.counters.leased_maps_refused += 1;
            e
        })?;
        self.check_pool_low(mapped.allocator);
        if slot.is_empty() {
            return Ok(0);
        }
        let resp = MapResp {
            map_type: mapped.map_type.code(),
            num_segments: mapped.segments.len() as u32,
            allocator_id: mapped.allocator as u32,
            flags: CENALLOC_MAP_F_ALLOCATED,
            size: mapped.size,
        };
        let mut offset = write_struct(slot, &resp);
        for segment in &mapped.segments {
            let range = Range {
                addr: segment.addr,
                len: segment.len,
            };
            offset += write_struct(&mut slot[offset..], &range);
        }
        Ok(offset)
    }

    /// MAP: zeroes new backing and copies migrated contents through guest
    /// memory before answering. If that fails, the new backing goes back to
    /// its allocator (its bytes must not reach the guest) and the next MAP
    /// allocates afresh. An answer that does not fit the slot undoes the
    /// mapping (the backing stays) and reports the size it needs.
    fn map<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        attachment: u32,
        direction: Direction,
        slot: &mut [u8],
    ) -> Result<usize, Error> {
        let buffer = self.pool.attachment_buffer(attachment)?;
        let mapped = match self.pool.map(attachment, direction) {
            Ok(mapped) => mapped,
            Err(error) => {
                if let model::Error::RoomLeased { allocator, .. } = error {
                    self.revoke(allocator);
                }
                return Err(error.into());
            }
        };
        let mut flags = 0;
        let mut prepared = Ok(());
        if let Some(old) = &mapped.migrated_from {
            flags |= CENALLOC_MAP_F_MIGRATED;
            prepared = copy_segments(mem, old, &mapped.segments);
        }
        if mapped.newly_allocated {
            flags |= CENALLOC_MAP_F_ALLOCATED;
            prepared = prepared.and_then(|()| zero_segments(mem, &mapped.segments));
        }
        if let Err(error) = prepared {
            self.undo_map(attachment, direction);
            if let Err(discard_error) = self.pool.discard_backing(buffer) {
                warn!(
                    "MAP: discarding unprepared backing of buffer {buffer} failed: {discard_error}"
                );
            }
            return Err(error);
        }
        if mapped.migrated_from.is_some() {
            self.events.push_back(Event {
                event_type: CENALLOC_EVENT_MIGRATED,
                buffer_id: buffer,
                data: mapped.allocator as u64,
            });
        }
        if flags != 0 {
            self.check_pool_low(mapped.allocator);
        }
        let need = size_of::<MapResp>() + mapped.segments.len() * size_of::<Range>();
        if slot.len() < need {
            self.undo_map(attachment, direction);
            return Err(Error::SlotTooSmall {
                need,
                got: slot.len(),
            });
        }
        let resp = MapResp {
            map_type: mapped.map_type.code(),
            num_segments: mapped.segments.len() as u32,
            allocator_id: mapped.allocator as u32,
            flags,
            size: mapped.size,
        };
        let mut offset = write_struct(slot, &resp);
        for segment in &mapped.segments {
            let range = Range {
                addr: segment.addr,
                len: segment.len,
            };
            offset += write_struct(&mut slot[offset..], &range);
        }
        Ok(offset)
    }

    /// Takes back the mapping a failed MAP counted.
    fn undo_map(&mut self, attachment: u32, direction: Direction) {
        if let Err(unmap_error) = self.pool.unmap(attachment, direction) {
            warn!("MAP: undoing map of attachment {attachment} failed: {unmap_error}");
        }
    }

    fn check_allocator(&self, id: u32) -> Result<(), Error> {
        if id as usize >= self.pool.config().allocators.len() {
            return Err(Error::UnknownPool(id));
        }
        Ok(())
    }

    /// Asks the driver to give back the stock of `allocator`.
    pub fn revoke(&mut self, allocator: usize) {
        self.counters.lease_revokes += 1;
        self.events.push_back(Event {
            event_type: CENALLOC_EVENT_LEASE_REVOKE,
            buffer_id: 0,
            data: allocator as u64,
        });
    }

    /// Queues POOL_LOW when the allocator has less than 1/8 free.
    fn check_pool_low(&mut self, allocator: usize) {
        let stats = self.pool.allocator_stats();
        if let Some(stat) = stats.get(allocator) {
            if stat.free < stat.capacity / 8 {
                self.events.push_back(Event {
                    event_type: CENALLOC_EVENT_POOL_LOW,
                    buffer_id: 0,
                    data: allocator as u64,
                });
            }
        }
    }

    fn stats(&self, slot: &mut [u8]) -> Result<usize, Error> {
        #[derive(Serialize)]
        struct Stats<'a> {
            device: &'a DeviceCounters,
            pool: model::Snapshot,
        }
        let json = serde_json::to_vec(&Stats {
            device: &self.counters,
            pool: self.pool.snapshot(),
        })
        .map_err(|e| Error::Serialize(e.to_string()))?;
        if slot.len() < json.len() {
            return Err(Error::SlotTooSmall {
                need: json.len(),
                got: slot.len(),
            });
        }
        slot[..json.len()].copy_from_slice(&json);
        Ok(json.len())
    }
}

fn nothing(len: usize) -> (usize, Produced) {
    (len, Produced::Nothing)
}

fn check_sync_flags(flags: u32) -> Result<(), Error> {
    let known = CENALLOC_SYNC_BEGIN | CENALLOC_SYNC_END | CENALLOC_SYNC_READ | CENALLOC_SYNC_WRITE;
    let bracket = flags & (CENALLOC_SYNC_BEGIN | CENALLOC_SYNC_END);
    let access = flags & (CENALLOC_SYNC_READ | CENALLOC_SYNC_WRITE);
    if flags & !known != 0
        || (bracket != CENALLOC_SYNC_BEGIN && bracket != CENALLOC_SYNC_END)
        || access == 0
    {
        return Err(Error::InvalidFlags(flags));
    }
    Ok(())
}

fn direction(code: u32) -> Result<Direction, Error> {
    Direction::from_code(code).ok_or(Error::InvalidDirection(code))
}

fn importer_types(req: &AttachReq) -> Result<Vec<MappingType>, Error> {
    mapping_types(req.num_types, &req.types)
}

/// The first `num_types` codes of `types` (the rest must be 0).
fn mapping_types(num_types: u32, types: &[u32]) -> Result<Vec<MappingType>, Error> {
    let count = num_types as usize;
    if count == 0 || count > CENALLOC_MAX_MAP_TYPES || count > types.len() {
        return Err(Error::MappingTypeCount(num_types));
    }
    if let Some(unused) = types[count..].iter().position(|&code| code != 0) {
        return Err(Error::UnusedMappingType(count + unused));
    }
    types[..count]
        .iter()
        .map(|&code| MappingType::from_code(code).ok_or(Error::UnknownMappingType(code)))
        .collect()
}

/// The `num` ranges that follow a `T` at the start of `payload` (which
/// must hold exactly those), 1..=`CENALLOC_MAX_POOL_RANGES` of them.
fn ranges_after<T: ByteValued>(payload: &[u8], num: u32) -> Result<Vec<Segment>, Error> {
    if num == 0 || num > CENALLOC_MAX_POOL_RANGES {
        return Err(Error::RangeCount(num));
    }
    let need = size_of::<T>() + num as usize * size_of::<Range>();
    if payload.len() != need {
        return Err(Error::PayloadLength {
            need,
            got: payload.len(),
        });
    }
    (0..num as usize)
        .map(|index| {
            let offset = size_of::<T>() + index * size_of::<Range>();
            let range: Range = read_struct(payload, offset).ok_or(Error::Framing("range"))?;
            Ok(Segment {
                addr: range.addr,
                len: range.len,
            })
        })
        .collect()
}

/// Resolves a buffer id field: a plain id, or a reference to an earlier
/// CREATE of this batch.
fn resolve_buffer(value: u32, produced: &[Produced]) -> Result<u32, Error> {
    if value & CENALLOC_BATCH_REF == 0 {
        return Ok(value);
    }
    match produced.get((value & !CENALLOC_BATCH_REF) as usize) {
        Some(Produced::Buffer(id)) => Ok(*id),
        _ => Err(Error::BadBatchReference {
            reference: value,
            kind: "CREATE",
        }),
    }
}

/// Resolves an attachment id field (references name an earlier ATTACH).
fn resolve_attachment(value: u32, produced: &[Produced]) -> Result<u32, Error> {
    if value & CENALLOC_BATCH_REF == 0 {
        return Ok(value);
    }
    match produced.get((value & !CENALLOC_BATCH_REF) as usize) {
        Some(Produced::Attachment(id)) => Ok(*id),
        _ => Err(Error::BadBatchReference {
            reference: value,
            kind: "ATTACH",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    /// One command in its own batch; returns (status, response slot).
    fn run_one(
        device: &mut Device,
        mem: &GuestMemoryMmap,
        opcode: u16,
        payload: &[u8],
        resp_len: u32,
    ) -> (i32, Vec<u8>) {
        let mut request = BatchHdr {
            num_cmds: 1,
            reserved: 0,
        }
        .as_slice()
        .to_vec();
        let hdr = CmdHdr {
            opcode,
            flags: 0,
            len: payload.len() as u32,
            resp_len,
            reserved: 0,
        };
        request.extend_from_slice(hdr.as_slice());
        request.extend_from_slice(payload);
        let out = device.execute_batch(mem, &request, 8 + 16 + resp_len as usize);
        let status = u32::from_le_bytes(out[8..12].try_into().unwrap()) as i32;
        (status, out[24..].to_vec())
    }

    #[test]
    fn backing_that_could_not_be_zeroed_never_reaches_the_guest() {
        let mem = memory();
        let mut device = Device::new(DeviceConfig::default_layout()).unwrap();
        device.pool.add_region(0, 0x40_0000, 0x10_0000).unwrap();
        let create = CreateReq {
            size: 0x2000,
            flags: 0,
            initial_mask: 0,
        };
        let (status, slot) = run_one(
            &mut device,
            &mem,
            CENALLOC_CMD_CREATE,
            create.as_slice(),
            16,
        );
        assert_eq!(status, 0);
        let buffer_id = u32::from_le_bytes(slot[0..4].try_into().unwrap());
        let mut attach = AttachReq {
            buffer_id,
            mask: CENALLOC_KIND_SYSTEM,
            num_types: 1,
            ..Default::default()
        };
        attach.types[0] = CENALLOC_MAP_SG;
        let (status, slot) = run_one(
            &mut device,
            &mem,
            CENALLOC_CMD_ATTACH,
            attach.as_slice(),
            16,
        );
        assert_eq!(status, 0);
        let attach_id = u32::from_le_bytes(slot[0..4].try_into().unwrap());
        let map = MapReq {
            attach_id,
            direction: CENALLOC_DIR_BIDIRECTIONAL,
        };

        // Stale guest data where the backing will go.
        mem.write_slice(&[0xa5; 0x2000], GuestAddress(0x40_0000))
            .unwrap();
        // The memory table changed: the donated region is no longer RAM.
        let shrunk = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let (status, _) = run_one(&mut device, &shrunk, CENALLOC_CMD_MAP, map.as_slice(), 64);
        assert_eq!(status, -libc::EFAULT);
        assert_eq!(
            device.pool.backing(buffer_id).unwrap_err().errno(),
            libc::ENODATA,
            "a failed MAP kept backing it could not zero"
        );
        assert_eq!(device.pool.allocator_stats()[0].free, 0x10_0000);

        // Back in RAM: the next MAP allocates and zeroes.
        let (status, slot) = run_one(&mut device, &mem, CENALLOC_CMD_MAP, map.as_slice(), 64);
        assert_eq!(status, 0);
        let resp: MapResp = read_struct(&slot, 0).unwrap();
        assert_eq!(resp.flags, CENALLOC_MAP_F_ALLOCATED);
        let mut bytes = vec![1u8; 0x2000];
        mem.read_slice(&mut bytes, GuestAddress(0x40_0000)).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn config_space_lists_the_pools_in_priority_order() {
        let config = DeviceConfig::default_layout();
        let space = config.config_space();
        assert_eq!(space.num_pools, 4);
        assert_eq!(
            space.pools[1].kinds,
            CENALLOC_KIND_DMA32 | CENALLOC_KIND_SYSTEM
        );
        assert_eq!(space.pools[1].placement, CENALLOC_PLACE_DMA32);
        assert_eq!(space.pools[2].placement, CENALLOC_PLACE_CONTIG);
        assert_eq!(space.max_segments, (1 << 30) / 4096);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use vm_memory::GuestMemoryMmap;

    /// A request built from valid framing around arbitrary payloads, so the
    /// decoder gets past the batch checks into every command.
    fn framed(cmds: &[(u16, Vec<u8>, u32)]) -> Vec<u8> {
        let mut out = BatchHdr {
            num_cmds: cmds.len() as u32,
            reserved: 0,
        }
        .as_slice()
        .to_vec();
        for (opcode, payload, resp_len) in cmds {
            let mut payload = payload.clone();
            payload.resize(payload.len().div_ceil(8) * 8, 0);
            let hdr = CmdHdr {
                opcode: *opcode,
                flags: 0,
                len: payload.len() as u32,
                resp_len: resp_len * 8,
                reserved: 0,
            };
            out.extend_from_slice(hdr.as_slice());
            out.extend_from_slice(&payload);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic_and_fit_the_writable_part(
            request in proptest::collection::vec(any::<u8>(), 0..512),
            writable in 0usize..4096,
        ) {
            let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let mut device = Device::new(DeviceConfig::default_layout()).unwrap();
            let out = device.execute_batch(&mem, &request, writable);
            prop_assert!(out.len() <= writable);
        }

        #[test]
        fn arbitrary_commands_never_panic(
            cmds in proptest::collection::vec(
                (0u16..16, proptest::collection::vec(any::<u8>(), 0..64), 0u32..64),
                1..8,
            ),
        ) {
            let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
            let mut device = Device::new(DeviceConfig::default_layout()).unwrap();
            // Give the pools memory so MAP/FILL/CHECKSUM can reach guest RAM.
            device.pool.add_region(0, 0x40_0000, 0x40_0000).unwrap();
            let request = framed(&cmds);
            let out = device.execute_batch(&mem, &request, 1 << 20);
            prop_assert!(out.len() >= 8);
            let status = u32::from_le_bytes(out[0..4].try_into().unwrap()) as i32;
            let done = u32::from_le_bytes(out[4..8].try_into().unwrap());
            prop_assert!(status <= 0);
            prop_assert!(done as usize <= cmds.len());
            prop_assert_eq!(status == 0, done as usize == cmds.len());
        }
    }
}
