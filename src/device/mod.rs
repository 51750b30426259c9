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
    /// RESET commands run (the device state was dropped).
    pub resets: u64,
}

/// Events kept for an event ring that is stopped; further ones are dropped.
pub const MAX_PENDING_EVENTS: usize = 1024;

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

    /// The oldest event not delivered yet.
    pub fn next_event(&self) -> Option<Event> {
        self.events.front().copied()
    }

    /// Forgets the oldest event (delivered, or dropped by the caller).
    pub fn pop_event(&mut self) {
        self.events.pop_front();
    }

    /// Queues an event for the event ring; beyond [`MAX_PENDING_EVENTS`]
    /// (a ring stopped for long) it is dropped and counted.
    fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.counters.events_dropped += 1;
            return;
        }
        self.events.push_back(event);
    }

    /// Drops every buffer, attachment, mapping, donated range and pending
    /// event (RESET): the state a new connection starts with. Returns what
    /// was dropped; on error nothing changed.
    pub fn reset(&mut self) -> Result<ResetResp, Error> {
        let dropped = ResetResp {
            buffers: u32::try_from(self.pool.num_buffers()).unwrap_or(u32::MAX),
            reserved: 0,
            donated: self
                .pool
                .allocator_stats()
                .iter()
                .map(|stat| stat.capacity)
                .sum(),
        };
        self.pool.clear()?;
        self.events.clear();
        self.counters.resets += 1;
        Ok(dropped)
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
            CENALLOC_CMD_RESET => {
                let req: ResetReq = exact(payload)?;
                if req.flags & !CENALLOC_RESET_F_ALL != 0 {
                    return Err(Error::InvalidFlags(req.flags));
                }
                check_reserved(req.reserved)?;
                check_slot::<ResetResp>(slot)?;
                let dropped = self.reset()?;
                if dropped.buffers != 0 || dropped.donated != 0 {
                    debug!(
                        "RESET dropped {} buffers and {} donated bytes",
                        dropped.buffers, dropped.donated
                    );
                }
                Ok((write_struct(slot, &dropped), Produced::Nothing))
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
                free: stat.free,
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
    /// first one is added, so a bad request changes nothing.
    fn pool_add<M: GuestMemoryBackend>(&mut self, mem: &M, payload: &[u8]) -> Result<(), Error> {
        let req: PoolAddReq = read_struct(payload, 0).ok_or(Error::PayloadLength {
            need: size_of::<PoolAddReq>(),
            got: payload.len(),
        })?;
        if req.num_ranges == 0 || req.num_ranges > CENALLOC_MAX_POOL_RANGES {
            return Err(Error::RangeCount(req.num_ranges));
        }
        let need = size_of::<PoolAddReq>() + req.num_ranges as usize * size_of::<Range>();
        if payload.len() != need {
            return Err(Error::PayloadLength {
                need,
                got: payload.len(),
            });
        }
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

        let mut ranges: Vec<Segment> = Vec::with_capacity(req.num_ranges as usize);
        for index in 0..req.num_ranges as usize {
            let offset = size_of::<PoolAddReq>() + index * size_of::<Range>();
            let range: Range = read_struct(payload, offset).ok_or(Error::Framing("range"))?;
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
            ranges.push(Segment { addr, len });
        }
        // The model checks overlaps (with each other and with every donated
        // region) and adds all ranges or none.
        self.pool.add_regions(allocator, &ranges)?;
        Ok(())
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
        let mapped = self.pool.map(attachment, direction)?;
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
            self.push_event(Event {
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

    /// Queues POOL_LOW when the allocator has less than 1/8 free.
    fn check_pool_low(&mut self, allocator: usize) {
        let stats = self.pool.allocator_stats();
        if let Some(stat) = stats.get(allocator) {
            if stat.free < stat.capacity / 8 {
                self.push_event(Event {
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
    let count = req.num_types as usize;
    if count == 0 || count > CENALLOC_MAX_MAP_TYPES {
        return Err(Error::MappingTypeCount(req.num_types));
    }
    if let Some(unused) = req.types[count..].iter().position(|&code| code != 0) {
        return Err(Error::UnusedMappingType(count + unused));
    }
    req.types[..count]
        .iter()
        .map(|&code| MappingType::from_code(code).ok_or(Error::UnknownMappingType(code)))
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

    /// A device with donated memory, one mapped and filled buffer and a
    /// pending event.
    fn stateful_device(mem: &GuestMemoryMmap) -> Device {
        let mut device = Device::new(DeviceConfig::default_layout()).unwrap();
        device.pool.add_region(0, 0x40_0000, 0x40_0000).unwrap();
        let mut attach = AttachReq {
            buffer_id: CENALLOC_BATCH_REF,
            mask: CENALLOC_KIND_SYSTEM,
            num_types: 1,
            ..Default::default()
        };
        attach.types[0] = CENALLOC_MAP_SG;
        let create = CreateReq {
            size: 0x4000,
            flags: 0,
            initial_mask: 0,
        };
        let map = MapReq {
            attach_id: CENALLOC_BATCH_REF | 1,
            direction: 0,
        };
        let fill = FillReq {
            buffer_id: CENALLOC_BATCH_REF,
            reserved: 0,
            seed: 3,
        };
        let out = device.execute_batch(
            mem,
            &framed(&[
                (CENALLOC_CMD_CREATE, create.as_slice().to_vec(), 2),
                (CENALLOC_CMD_ATTACH, attach.as_slice().to_vec(), 2),
                (CENALLOC_CMD_MAP, map.as_slice().to_vec(), 8),
                (CENALLOC_CMD_FILL, fill.as_slice().to_vec(), 0),
            ]),
            1 << 20,
        );
        assert_eq!(&out[0..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        device.push_event(Event {
            event_type: CENALLOC_EVENT_POOL_LOW,
            buffer_id: 0,
            data: 0,
        });
        device
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
        fn a_failed_command_changes_nothing(
            opcode in 1u16..16,
            words in proptest::collection::vec(
                prop_oneof![3 => Just(0u32), 2 => Just(1u32), 1 => 2u32..16, 1 => any::<u32>()],
                0..12,
            ),
            resp_len in 0u32..8,
        ) {
            let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
            let mut device = stateful_device(&mem);
            // Small words: ids and flags that commands accept often enough
            // to get past their first checks.
            let payload: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let before = (device.pool.snapshot(), device.events.clone());
            let out = device.execute_batch(&mem, &framed(&[(opcode, payload, resp_len)]), 1 << 20);
            let status = u32::from_le_bytes(out[0..4].try_into().unwrap()) as i32;
            // The header's one exception: a MAP whose answer does not fit
            // keeps the backing it allocated (and counts a map and unmap).
            let documented = opcode == CENALLOC_CMD_MAP && status == -libc::ENOSPC;
            if status != 0 && !documented {
                prop_assert_eq!((device.pool.snapshot(), device.events.clone()), before);
            }
        }

        #[test]
        fn reset_runs_only_with_zero_flags_and_reserved_and_room_to_answer(
            flags in prop_oneof![3 => Just(0u32), 1 => any::<u32>()],
            reserved in prop_oneof![3 => Just(0u32), 1 => any::<u32>()],
            slot_words in 0u32..4,
        ) {
            let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
            let mut device = stateful_device(&mem);
            let before = device.pool.snapshot();
            let req = ResetReq { flags, reserved };
            let out = device.execute_batch(
                &mem,
                &framed(&[(CENALLOC_CMD_RESET, req.as_slice().to_vec(), slot_words)]),
                1 << 20,
            );
            let status = u32::from_le_bytes(out[0..4].try_into().unwrap()) as i32;
            let expect = if flags != 0 || reserved != 0 {
                -libc::EINVAL
            } else if slot_words * 8 < 16 {
                -libc::ENOSPC
            } else {
                0
            };
            prop_assert_eq!(status, expect);
            if status == 0 {
                let dropped: ResetResp = read_struct(&out, 8 + 16).unwrap();
                prop_assert_eq!(dropped.buffers, 1);
                prop_assert_eq!(dropped.donated, 0x40_0000);
                prop_assert_eq!(device.pool.num_buffers(), 0);
                prop_assert!(device.pool.snapshot().regions.is_empty());
                prop_assert!(!device.has_events());
            } else {
                prop_assert_eq!(device.pool.snapshot(), before);
                prop_assert!(device.has_events());
            }
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
