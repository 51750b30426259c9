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
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryRegion,
};

use crate::model::{self, Direction, MappingType, Pool, PoolConfig, Segment};
use crate::protocol::*;

/// Largest response (writable part) one batch may ask for.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// Largest response payload slot of one command.
pub const MAX_SLOT_BYTES: u32 = 16 << 20;
/// Bytes moved through guest memory per step (zeroing, FILL, CHECKSUM, copies).
const CHUNK: usize = 64 << 10;

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
            | Framing(_) => libc::EINVAL,
            UnknownPool(_) => libc::ENOENT,
            SlotTooSmall { .. } | ResponseTooSmall { .. } => libc::ENOSPC,
            RangeOutsideRam { .. } | SegmentOutsideRam { .. } | GuestMemory(_) => libc::EFAULT,
            RangeOutOfPlacement { .. } => libc::ERANGE,
            Cancelled => libc::ECANCELED,
            Serialize(_) => libc::EIO,
        }
    }

    /// The `needed` field of the response header.
    fn needed(&self) -> u32 {
        match self {
            Error::SlotTooSmall { need, .. } => u32::try_from(*need).unwrap_or(u32::MAX),
            _ => 0,
        }
    }
}

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

fn placement_flags(placement: &model::Placement) -> u32 {
    let mut flags = 0;
    if placement.contiguous {
        flags |= CENALLOC_PLACE_CONTIG;
    }
    if placement.below_4g {
        flags |= CENALLOC_PLACE_DMA32;
    }
    flags
}

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
}

/// What a command produced, for batch references.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Produced {
    Nothing,
    Buffer(u32),
    Attachment(u32),
}

/// One command of a parsed batch.
struct CommandFrame {
    header: CmdHdr,
    /// Offset of the payload in the request.
    payload: usize,
    /// Offset of the response header in the response.
    response: usize,
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
        let frames = match self.parse_batch(request, writable_len) {
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

    /// Checks the framing of a whole batch before running any command.
    fn parse_batch(&self, request: &[u8], writable_len: usize) -> Result<Vec<CommandFrame>, Error> {
        let header: BatchHdr =
            read_struct(request, 0).ok_or(Error::Framing("short batch header"))?;
        if header.reserved != 0 {
            return Err(Error::Reserved(header.reserved));
        }
        if header.num_cmds == 0 || header.num_cmds > self.config.max_batch {
            return Err(Error::Framing("command count out of range"));
        }
        let mut frames = Vec::with_capacity(header.num_cmds as usize);
        let mut offset = size_of::<BatchHdr>();
        let mut response = size_of::<BatchResp>();
        for _ in 0..header.num_cmds {
            let cmd: CmdHdr =
                read_struct(request, offset).ok_or(Error::Framing("short command header"))?;
            if cmd.len % 8 != 0 || cmd.resp_len % 8 != 0 {
                return Err(Error::Framing("length not a multiple of 8"));
            }
            if cmd.resp_len > MAX_SLOT_BYTES {
                return Err(Error::Framing("response slot too large"));
            }
            let payload = offset + size_of::<CmdHdr>();
            let end = payload
                .checked_add(cmd.len as usize)
                .filter(|&end| end <= request.len())
                .ok_or(Error::Framing("payload runs past the readable part"))?;
            frames.push(CommandFrame {
                header: cmd,
                payload,
                response,
            });
            offset = end;
            response += size_of::<RespHdr>() + cmd.resp_len as usize;
            if response > MAX_RESPONSE_BYTES {
                return Err(Error::Framing("response too large"));
            }
        }
        if offset != request.len() {
            return Err(Error::Framing("trailing bytes after the last command"));
        }
        if response > writable_len {
            return Err(Error::ResponseTooSmall {
                need: response,
                got: writable_len,
            });
        }
        Ok(frames)
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

fn read_struct<T: ByteValued + Default>(bytes: &[u8], offset: usize) -> Option<T> {
    let end = offset.checked_add(size_of::<T>())?;
    let src = bytes.get(offset..end)?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Some(value)
}

/// Writes `value` at the start of `slot` (callers checked the size).
fn write_struct<T: ByteValued>(slot: &mut [u8], value: &T) -> usize {
    let bytes = value.as_slice();
    slot[..bytes.len()].copy_from_slice(bytes);
    bytes.len()
}

/// The payload must be exactly one `T`.
fn exact<T: ByteValued + Default>(payload: &[u8]) -> Result<T, Error> {
    if payload.len() != size_of::<T>() {
        return Err(Error::PayloadLength {
            need: size_of::<T>(),
            got: payload.len(),
        });
    }
    read_struct(payload, 0).ok_or(Error::PayloadLength {
        need: size_of::<T>(),
        got: payload.len(),
    })
}

fn expect_empty(payload: &[u8]) -> Result<(), Error> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(Error::PayloadLength {
            need: 0,
            got: payload.len(),
        })
    }
}

fn check_slot<T: ByteValued>(slot: &[u8]) -> Result<(), Error> {
    if slot.len() < size_of::<T>() {
        return Err(Error::SlotTooSmall {
            need: size_of::<T>(),
            got: slot.len(),
        });
    }
    Ok(())
}

fn check_reserved(value: u32) -> Result<(), Error> {
    if value != 0 {
        return Err(Error::Reserved(value));
    }
    Ok(())
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

fn to_usize(len: u64) -> Result<usize, Error> {
    usize::try_from(len).map_err(|_| Error::Framing("segment too large"))
}

/// Checks that every segment lies inside guest RAM, so that an operation
/// over several segments fails before it writes the first byte (the memory
/// table may have changed since the regions were donated).
fn check_in_ram<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<(), Error> {
    for segment in segments {
        let inside = usize::try_from(segment.len)
            .is_ok_and(|len| mem.check_range(GuestAddress(segment.addr), len));
        if !inside {
            return Err(Error::SegmentOutsideRam {
                addr: segment.addr,
                len: segment.len,
            });
        }
    }
    Ok(())
}

/// Zeroes every segment through the daemon's mapping of guest memory.
pub fn zero_segments<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<(), Error> {
    static ZEROES: [u8; CHUNK] = [0; CHUNK];
    check_in_ram(mem, segments)?;
    for segment in segments {
        let mut done = 0u64;
        while done < segment.len {
            let step = (segment.len - done).min(CHUNK as u64);
            mem.write_slice(
                &ZEROES[..to_usize(step)?],
                GuestAddress(segment.addr + done),
            )?;
            done += step;
        }
    }
    Ok(())
}

/// Writes the FILL pattern: 64-bit word `i` of the buffer is
/// `cenalloc_pattern(seed, i)`, little-endian.
pub fn fill_pattern<M: GuestMemoryBackend>(
    mem: &M,
    segments: &[Segment],
    seed: u64,
) -> Result<(), Error> {
    check_in_ram(mem, segments)?;
    let mut chunk = vec![0u8; CHUNK];
    let mut word = 0u64;
    for segment in segments {
        let mut done = 0u64;
        while done < segment.len {
            let step = to_usize((segment.len - done).min(CHUNK as u64))?;
            for bytes in chunk[..step].chunks_exact_mut(8) {
                bytes.copy_from_slice(&cenalloc_pattern(seed, word).to_le_bytes());
                word += 1;
            }
            mem.write_slice(&chunk[..step], GuestAddress(segment.addr + done))?;
            done += step as u64;
        }
    }
    Ok(())
}

/// FNV-1a 64 of every byte of the segments, in order; returns (hash, bytes).
pub fn checksum<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<(u64, u64), Error> {
    check_in_ram(mem, segments)?;
    let mut chunk = vec![0u8; CHUNK];
    let mut hash = Fnv1a64::default();
    let mut total = 0u64;
    for segment in segments {
        let mut done = 0u64;
        while done < segment.len {
            let step = to_usize((segment.len - done).min(CHUNK as u64))?;
            mem.read_slice(&mut chunk[..step], GuestAddress(segment.addr + done))?;
            hash.update(&chunk[..step]);
            done += step as u64;
            total += step as u64;
        }
    }
    Ok((hash.finish(), total))
}

/// Copies the contents of `from` into `to` (same total length, buffer
/// order). The old backing was already returned to its allocator, so the
/// two may overlap: then the whole contents go through a bounce buffer.
pub fn copy_segments<M: GuestMemoryBackend>(
    mem: &M,
    from: &[Segment],
    to: &[Segment],
) -> Result<(), Error> {
    check_in_ram(mem, from)?;
    check_in_ram(mem, to)?;
    let overlaps = from.iter().any(|a| {
        to.iter()
            .any(|b| a.addr < b.addr + b.len && b.addr < a.addr + a.len)
    });
    if overlaps {
        let total: u64 = from.iter().map(|s| s.len).sum();
        let mut bounce = vec![0u8; to_usize(total)?];
        let mut offset = 0usize;
        for segment in from {
            let len = to_usize(segment.len)?;
            mem.read_slice(
                &mut bounce[offset..offset + len],
                GuestAddress(segment.addr),
            )?;
            offset += len;
        }
        let mut offset = 0usize;
        for segment in to {
            let len = to_usize(segment.len)?;
            let end = (offset + len).min(bounce.len());
            mem.write_slice(&bounce[offset..end], GuestAddress(segment.addr))?;
            offset = end;
        }
        return Ok(());
    }
    let mut chunk = vec![0u8; CHUNK];
    let mut source = from.iter().map(|s| (s.addr, s.len));
    let mut current = source.next();
    for segment in to {
        let mut done = 0u64;
        while done < segment.len {
            let Some((src_addr, src_len)) = current else {
                return Ok(());
            };
            let step = (segment.len - done).min(src_len).min(CHUNK as u64);
            let len = to_usize(step)?;
            mem.read_slice(&mut chunk[..len], GuestAddress(src_addr))?;
            mem.write_slice(&chunk[..len], GuestAddress(segment.addr + done))?;
            done += step;
            current = if step == src_len {
                source.next()
            } else {
                Some((src_addr + step, src_len - step))
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn seg(addr: u64, len: u64) -> Segment {
        Segment { addr, len }
    }

    #[test]
    fn copy_keeps_buffer_order_across_different_segmentations() {
        let mem = memory();
        let from = [seg(0x10_0000, 0x3000), seg(0x20_0000, 0x1000)];
        let to = [seg(0x40_0000, 0x1000), seg(0x50_0000, 0x3000)];
        fill_pattern(&mem, &from, 5).unwrap();
        copy_segments(&mem, &from, &to).unwrap();
        assert_eq!(checksum(&mem, &from).unwrap(), checksum(&mem, &to).unwrap());
    }

    #[test]
    fn copy_between_overlapping_backings_goes_through_a_bounce_buffer() {
        let mem = memory();
        let from = [seg(0x10_0000, 0x4000)];
        let to = [seg(0x10_2000, 0x4000)];
        fill_pattern(&mem, &from, 9).unwrap();
        let (before, _) = checksum(&mem, &from).unwrap();
        copy_segments(&mem, &from, &to).unwrap();
        assert_eq!(checksum(&mem, &to).unwrap(), (before, 0x4000));
    }

    #[test]
    fn zeroing_and_guest_memory_errors() {
        let mem = memory();
        let segments = [seg(0x10_0000, 0x2_0000)];
        fill_pattern(&mem, &segments, 1).unwrap();
        zero_segments(&mem, &segments).unwrap();
        let mut bytes = vec![1u8; 0x2_0000];
        mem.read_slice(&mut bytes, GuestAddress(0x10_0000)).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
        // Outside guest memory: an error, not a panic.
        let outside = [seg(0xff_f000, 0x2000)];
        assert_eq!(
            zero_segments(&mem, &outside).unwrap_err().errno(),
            libc::EFAULT
        );
        assert_eq!(checksum(&mem, &outside).unwrap_err().errno(), libc::EFAULT);
    }

    #[test]
    fn fill_and_copy_fail_before_writing_when_a_segment_left_guest_ram() {
        let mem = memory();
        let inside = seg(0x10_0000, 0x1000);
        let outside = seg(0xff_f000, 0x2000);
        assert_eq!(
            fill_pattern(&mem, &[inside, outside], 3)
                .unwrap_err()
                .errno(),
            libc::EFAULT
        );
        assert_eq!(
            zero_segments(&mem, &[inside, outside]).unwrap_err().errno(),
            libc::EFAULT
        );
        let target = seg(0x20_0000, 0x1000);
        fill_pattern(&mem, &[target], 4).unwrap();
        let (before, _) = checksum(&mem, &[target]).unwrap();
        assert_eq!(
            copy_segments(&mem, &[inside, outside], &[target, seg(0x30_0000, 0x2000)])
                .unwrap_err()
                .errno(),
            libc::EFAULT
        );
        let mut bytes = vec![1u8; 0x1000];
        mem.read_slice(&mut bytes, GuestAddress(inside.addr))
            .unwrap();
        assert!(
            bytes.iter().all(|&b| b == 0),
            "a failed FILL or zeroing wrote its first segment"
        );
        assert_eq!(checksum(&mem, &[target]).unwrap().0, before);
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
