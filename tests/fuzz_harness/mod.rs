//! The fuzz harness: everything a guest controls, driven through the same
//! code the daemon runs. Shared, byte for byte, by the fuzz targets
//! (`fuzz/fuzz_targets/*.rs` include this file) and by the corpus replay
//! test (`tests/fuzz_corpus.rs`), so a committed input means the same thing
//! to both.
//!
//! Two entry points, each taking raw fuzzer bytes decoded with `arbitrary`:
//! - [`run_ring`]: a [`CenallocBackend`] with two real
//!   `vhost_user_backend::VringRwLock`s over a `GuestMemoryAtomic`, set up
//!   the way the vhost-user handler sets them up (queue size, ring
//!   addresses, base, ready, enable, EVENT_IDX), then a sequence of guest
//!   actions (descriptor chains, indirect tables, raw descriptor patches,
//!   avail index and used_event writes, event buffers, arbitrary memory
//!   writes) and kicks (`handle_event`, as the epoll thread calls it).
//! - [`run_batch`]: `Device::execute_batch` directly, with well-framed
//!   structured batches (every command, batch references, pool donations)
//!   so the fuzzer spends its time in the commands, not in the framing.
//!
//! Guest memory (three regions, 512 KiB in all, so the worst command stays
//! cheap): `[0, 128 KiB)` holds the rings and the scratch area, `[1 MiB,
//! 1 MiB + 256 KiB)` and `[4 GiB, 4 GiB + 128 KiB)` are pool memory. The
//! holes between them are there to be hit.
//!
//! Oracles: nothing panics (debug assertions are on: arithmetic overflow
//! panics too), every call returns (the replay test bounds each input, the
//! fuzzer's `-timeout` does the same), an answer never exceeds the writable
//! part, and after every batch and every kick the pool stays consistent
//! (backing inside donated RAM, no two buffers sharing a byte, capacity =
//! free + leased + backing). `batch`: a batch that did nothing changed
//! nothing (a first MAP that failed may change its backing only). `ring`,
//! around every kick and ring stop: each used entry's length fits the
//! writable descriptors of its chain, and guest RAM changed only in the
//! writable descriptors of the chains returned, the used rings and pool
//! memory.
//!
//! Seed inputs (`fuzz/corpus/<target>/seed-*`) are built as structures by
//! [`seeds`] and written with [`encode`], the inverse of `arbitrary`'s
//! decoding.

#![allow(dead_code)]

mod share;
pub use share::{run_linked, ShareReach, PEER_TOKEN_ALIAS};

use arbitrary::{Arbitrary, Unstructured};
use cenalloc::device::{Device, DeviceConfig};
use cenalloc::protocol::*;
use cenalloc::registry::DeviceView;
use cenalloc::vhu_cenalloc::{CenallocBackend, MAX_QUEUE_SIZE};
use std::sync::Arc;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;

/// Guest RAM regions: (guest-physical base, length).
pub const REGIONS: [(u64, u64); 3] = [(0, 128 << 10), (1 << 20, 256 << 10), (1 << 32, 128 << 10)];
/// Pages of guest RAM, over all regions (a page index picks one of them).
const RAM_PAGES: u64 = (128 + 256 + 128) >> 2;

/// Default ring placement in region 0 (room for `MAX_QUEUE_SIZE` entries).
const CONTROL_DESC: u64 = 0x0000;
const CONTROL_AVAIL: u64 = 0x4000;
const CONTROL_USED: u64 = 0x5000;
const EVENT_DESC: u64 = 0x8000;
const EVENT_AVAIL: u64 = 0xc000;
const EVENT_USED: u64 = 0xd000;
/// Request bytes, writable areas and indirect tables are laid out here.
const SCRATCH_START: u64 = 0x1_0000;
const SCRATCH_END: u64 = 0x2_0000;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// Most guest actions one input runs (keeps each input's work bounded).
const MAX_STEPS: usize = 32;
/// Most batches one `run_batch` input runs.
const MAX_BATCHES: usize = 16;

type Mem = GuestMemoryMmap<()>;
type AtomicMem = GuestMemoryAtomic<Mem>;

/// The default layout, allowed to take all of the fuzzer's small guest
/// memory (512 KiB): the default share of guest RAM (half) would refuse
/// the donations the cases start from.
pub fn fuzz_config() -> DeviceConfig {
    DeviceConfig {
        max_pool_percent: 100,
        ..DeviceConfig::default_layout()
    }
}

pub fn guest_memory() -> Mem {
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(base, len)| (GuestAddress(base), len as usize))
        .collect();
    match GuestMemoryMmap::from_ranges(&ranges) {
        Ok(mem) => mem,
        Err(e) => panic!("cannot map the fuzz guest memory: {e}"),
    }
}

/// [`guest_memory`] backed by one sealed memfd, as a front-end hands it
/// to the backend (SET_MEM_TABLE refuses anonymous or unsealed memory).
pub fn guest_memory_file() -> Mem {
    // SAFETY: memfd_create with a NUL-terminated name; checked below.
    let fd = unsafe {
        libc::memfd_create(
            c"cenalloc-fuzz".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        panic!("memfd_create: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let total: u64 = REGIONS.iter().map(|&(_, len)| len).sum();
    if let Err(e) = file.set_len(total) {
        panic!("cannot size the fuzz guest memory: {e}");
    }
    // SAFETY: fcntl on the descriptor `file` owns.
    if unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    } != 0
    {
        panic!("F_ADD_SEALS: {}", std::io::Error::last_os_error());
    }
    let mut offset = 0;
    let mut ranges = Vec::new();
    for &(base, len) in &REGIONS {
        let clone = match file.try_clone() {
            Ok(clone) => clone,
            Err(e) => panic!("dup of the fuzz guest memory: {e}"),
        };
        ranges.push((
            GuestAddress(base),
            len as usize,
            Some(vm_memory::FileOffset::new(clone, offset)),
        ));
        offset += len;
    }
    match GuestMemoryMmap::from_ranges_with_files(ranges) {
        Ok(mem) => mem,
        Err(e) => panic!("cannot map the fuzz guest memory: {e}"),
    }
}

fn page_addr(page: u64) -> u64 {
    let mut page = page % RAM_PAGES;
    for &(base, len) in &REGIONS {
        let pages = len / CENALLOC_PAGE_SIZE;
        if page < pages {
            return base + page * CENALLOC_PAGE_SIZE;
        }
        page -= pages;
    }
    unreachable!("page index reduced modulo RAM_PAGES")
}

// ---------------------------------------------------------------------------
// Structured commands (shared by both targets).

/// A guest-physical address: mostly somewhere in (or just past) a RAM
/// region, sometimes anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum AddrSpec {
    Ram { region: u8, offset: u32 },
    Raw(u64),
}

impl AddrSpec {
    fn resolve(self) -> u64 {
        match self {
            AddrSpec::Ram { region, offset } => {
                let (base, len) = REGIONS[usize::from(region) % REGIONS.len()];
                base + u64::from(offset) % (len + 64)
            }
            AddrSpec::Raw(addr) => addr,
        }
    }
}

/// A buffer or attachment id field.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum IdSpec {
    /// A small plain id (the model hands out 1, 2, 3, ...).
    Id(u8),
    /// A batch reference to command `n` of this batch.
    Ref(u8),
    Raw(u32),
}

impl IdSpec {
    fn resolve(self) -> u32 {
        match self {
            IdSpec::Id(id) => u32::from(id),
            IdSpec::Ref(index) => CENALLOC_BATCH_REF | u32::from(index % 72),
            IdSpec::Raw(raw) => raw,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SizeSpec {
    Pages(u8),
    Bytes(u16),
    Raw(u64),
}

impl SizeSpec {
    fn resolve(self) -> u64 {
        match self {
            SizeSpec::Pages(pages) => u64::from(pages) * CENALLOC_PAGE_SIZE,
            SizeSpec::Bytes(bytes) => u64::from(bytes),
            SizeSpec::Raw(raw) => raw,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum MaskSpec {
    /// Some of the well-known kinds.
    Kinds(u8),
    Any,
    Raw(u32),
}

impl MaskSpec {
    fn resolve(self) -> u32 {
        match self {
            MaskSpec::Kinds(bits) => u32::from(bits & 0x0f),
            MaskSpec::Any => CENALLOC_MASK_ANY,
            MaskSpec::Raw(raw) => raw,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum TypeSpec {
    Sg,
    Contig,
    Private(u8),
    Raw(u32),
}

impl TypeSpec {
    fn resolve(self) -> u32 {
        match self {
            TypeSpec::Sg => CENALLOC_MAP_SG,
            TypeSpec::Contig => CENALLOC_MAP_CONTIG,
            TypeSpec::Private(n) => CENALLOC_MAP_PRIVATE_FIRST + u32::from(n),
            TypeSpec::Raw(raw) => raw,
        }
    }
}

/// A response slot size.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SlotSpec {
    /// Large enough for any answer in this memory.
    Natural,
    Words(u8),
    Raw(u32),
}

impl SlotSpec {
    fn resolve(self, natural: u32) -> u32 {
        match self {
            SlotSpec::Natural => natural,
            SlotSpec::Words(words) => u32::from(words) * 8,
            SlotSpec::Raw(raw) => raw,
        }
    }
}

/// A POOL_ADD range.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum RangeSpec {
    Pages { first: u16, count: u8 },
    Raw { addr: u64, len: u64 },
}

impl RangeSpec {
    fn resolve(self) -> Range {
        match self {
            RangeSpec::Pages { first, count } => Range {
                addr: page_addr(u64::from(first)),
                len: u64::from(count) * CENALLOC_PAGE_SIZE,
            },
            RangeSpec::Raw { addr, len } => Range { addr, len },
        }
    }
}

/// One command. Reserved and flag fields are `Option`: `None` is the valid
/// zero.
#[derive(Arbitrary, Debug, Clone)]
pub enum CmdSpec {
    GetInfo {
        slot: SlotSpec,
    },
    PoolAdd {
        pool: u8,
        ranges: Vec<RangeSpec>,
    },
    Create {
        size: SizeSpec,
        flags: Option<u32>,
        mask: Option<MaskSpec>,
    },
    Attach {
        buffer: IdSpec,
        mask: MaskSpec,
        types: Vec<TypeSpec>,
        reserved: Option<u32>,
    },
    Detach {
        attach: IdSpec,
        reserved: Option<u32>,
    },
    Map {
        attach: IdSpec,
        direction: u8,
        slot: SlotSpec,
    },
    Unmap {
        attach: IdSpec,
        direction: u8,
    },
    Free {
        buffer: IdSpec,
        reserved: Option<u32>,
    },
    Phys {
        buffer: IdSpec,
        reserved: Option<u32>,
        slot: SlotSpec,
    },
    Sync {
        buffer: IdSpec,
        flags: u8,
    },
    Stats {
        slot: SlotSpec,
    },
    Fill {
        buffer: IdSpec,
        seed: u64,
        reserved: Option<u32>,
    },
    Checksum {
        buffer: IdSpec,
        reserved: Option<u32>,
        slot: SlotSpec,
    },
    Reset {
        flags: Option<u32>,
        reserved: Option<u32>,
        slot: SlotSpec,
    },
    PoolRemove {
        pool: u8,
        ranges: Vec<RangeSpec>,
    },
    Lease {
        allocator: u8,
        count: u8,
        size: SizeSpec,
        slot: SlotSpec,
    },
    LeaseReturn {
        allocator: u8,
        ranges: Vec<RangeSpec>,
    },
    /// A buffer created, attached and mapped on an extent the driver says
    /// the device leased it (a page of RAM, or anything).
    LeasedMap {
        buffer: DriverIdSpec,
        initial_mask: Option<MaskSpec>,
        size: SizeSpec,
        extent: ExtentSpec,
        map_index: u8,
        direction: u8,
        attachments: Vec<LeasedAttachSpec>,
        /// A count other than the records that follow.
        num_attachments: Option<u8>,
        reserved: Option<u32>,
        slot: SlotSpec,
    },
    /// Anything at all in a well-framed command.
    Raw {
        opcode: u16,
        flags: u16,
        reserved: u32,
        payload: Vec<u8>,
        resp_len: u32,
    },
}

/// An id a LEASED_MAP gives a new buffer or attachment: mostly one of the
/// driver's range, as a driver chooses them.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DriverIdSpec {
    Driver(u8),
    Other(IdSpec),
}

impl DriverIdSpec {
    fn resolve(self) -> u32 {
        match self {
            DriverIdSpec::Driver(n) => CENALLOC_DRIVER_ID_FIRST + u32::from(n),
            DriverIdSpec::Other(id) => id.resolve(),
        }
    }
}

/// The extent of a LEASED_MAP: mostly one the device leased earlier in
/// this case (as a driver would name it), else any page or address.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ExtentSpec {
    Leased(u8),
    Other(RangeSpec),
}

thread_local! {
    /// Extents the device's LEASE answers gave in the current case.
    static LEASED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ExtentSpec {
    fn resolve(self) -> u64 {
        match self {
            ExtentSpec::Leased(n) => LEASED.with(|l| {
                let l = l.borrow();
                l.get(usize::from(n) % l.len().max(1)).copied().unwrap_or(0)
            }),
            ExtentSpec::Other(range) => range.resolve().addr,
        }
    }
}

/// Notes the extents of every successful LEASE of `request` in `answer`
/// (the framing read defensively: a defect just ends the walk).
fn note_leases(request: &[u8], answer: &[u8]) {
    let mut offset = size_of::<BatchHdr>();
    let mut resp = size_of::<BatchResp>();
    let count = read_u32(request, 0).min(CENALLOC_MAX_BATCH + 1);
    for _ in 0..count {
        let Some(hdr) = request
            .get(offset..offset + size_of::<CmdHdr>())
            .and_then(CmdHdr::from_slice)
            .copied()
        else {
            return;
        };
        let status = read_u32(answer, resp);
        let body = resp + size_of::<RespHdr>();
        if hdr.opcode == CENALLOC_CMD_LEASE && status == 0 && answer.len() > body {
            let n = read_u32(answer, body) as usize;
            let first = body + size_of::<LeaseResp>();
            LEASED.with(|l| {
                let mut l = l.borrow_mut();
                for i in 0..n.min(CENALLOC_MAX_LEASE as usize) {
                    let at = first + i * size_of::<Range>();
                    if let Some(bytes) = answer.get(at..at + 8) {
                        let mut addr = [0u8; 8];
                        addr.copy_from_slice(bytes);
                        l.push(u64::from_le_bytes(addr));
                    }
                }
            });
        }
        offset += size_of::<CmdHdr>() + hdr.len as usize;
        resp = body + hdr.resp_len as usize;
    }
}

/// One attachment record of a LEASED_MAP.
#[derive(Arbitrary, Debug, Clone)]
pub struct LeasedAttachSpec {
    attach: DriverIdSpec,
    mask: MaskSpec,
    map_type: TypeSpec,
    types: Vec<TypeSpec>,
}

/// `PoolAddReq`-shaped payload: a header then up to one more range than
/// the device takes.
fn with_ranges<T: ByteValued>(req: T, ranges: &[RangeSpec]) -> Vec<u8> {
    let mut payload = req.as_slice().to_vec();
    for range in ranges {
        payload.extend_from_slice(range.resolve().as_slice());
    }
    payload
}

fn ranges_cut(ranges: &[RangeSpec]) -> &[RangeSpec] {
    &ranges[..ranges.len().min(CENALLOC_MAX_POOL_RANGES as usize + 1)]
}

/// A command on the wire: header fields, payload, response slot.
struct Encoded {
    opcode: u16,
    flags: u16,
    reserved: u32,
    payload: Vec<u8>,
    resp_len: u32,
}

fn encoded<T: ByteValued>(opcode: u16, req: &T, resp_len: u32) -> Encoded {
    with_payload(opcode, req.as_slice().to_vec(), resp_len)
}

/// A well-framed command (flags and reserved zero) with this payload.
fn with_payload(opcode: u16, payload: Vec<u8>, resp_len: u32) -> Encoded {
    Encoded {
        opcode,
        flags: 0,
        reserved: 0,
        payload,
        resp_len,
    }
}

/// Slot of a MAP answer that holds every page of guest RAM.
const MAP_SLOT: u32 = (size_of::<MapResp>() as u64 + RAM_PAGES * 16) as u32;
/// Slot of a STATS answer of any pool this memory can hold.
const STATS_SLOT: u32 = 256 << 10;

impl CmdSpec {
    fn encode(&self) -> Encoded {
        match self {
            CmdSpec::GetInfo { slot } => with_payload(
                CENALLOC_CMD_GET_INFO,
                Vec::new(),
                slot.resolve(72 + 64 * CENALLOC_MAX_POOLS as u32),
            ),
            CmdSpec::PoolAdd { pool, ranges } => {
                let ranges = ranges_cut(ranges);
                let req = PoolAddReq {
                    pool_index: u32::from(*pool % 8),
                    num_ranges: ranges.len() as u32,
                };
                let payload = with_ranges(req, ranges);
                with_payload(CENALLOC_CMD_POOL_ADD, payload, 0)
            }
            CmdSpec::Create { size, flags, mask } => {
                let req = CreateReq {
                    size: size.resolve(),
                    flags: flags.unwrap_or(0),
                    initial_mask: mask.map_or(0, MaskSpec::resolve),
                };
                encoded(CENALLOC_CMD_CREATE, &req, 16)
            }
            CmdSpec::Attach {
                buffer,
                mask,
                types,
                reserved,
            } => {
                let mut req = AttachReq {
                    buffer_id: buffer.resolve(),
                    mask: mask.resolve(),
                    num_types: types.len().min(CENALLOC_MAX_MAP_TYPES + 1) as u32,
                    reserved: reserved.unwrap_or(0),
                    types: [0; CENALLOC_MAX_MAP_TYPES],
                };
                for (slot, t) in req.types.iter_mut().zip(types) {
                    *slot = t.resolve();
                }
                encoded(CENALLOC_CMD_ATTACH, &req, 16)
            }
            CmdSpec::Detach { attach, reserved } => {
                let req = DetachReq {
                    attach_id: attach.resolve(),
                    reserved: reserved.unwrap_or(0),
                };
                encoded(CENALLOC_CMD_DETACH, &req, 0)
            }
            CmdSpec::Map {
                attach,
                direction,
                slot,
            } => {
                let req = MapReq {
                    attach_id: attach.resolve(),
                    direction: u32::from(*direction % 4),
                };
                encoded(CENALLOC_CMD_MAP, &req, slot.resolve(MAP_SLOT))
            }
            CmdSpec::Unmap { attach, direction } => {
                let req = UnmapReq {
                    attach_id: attach.resolve(),
                    direction: u32::from(*direction % 4),
                };
                encoded(CENALLOC_CMD_UNMAP, &req, 0)
            }
            CmdSpec::Free { buffer, reserved } => {
                let req = FreeReq {
                    buffer_id: buffer.resolve(),
                    reserved: reserved.unwrap_or(0),
                };
                encoded(CENALLOC_CMD_FREE, &req, 0)
            }
            CmdSpec::Phys {
                buffer,
                reserved,
                slot,
            } => {
                let req = PhysReq {
                    buffer_id: buffer.resolve(),
                    reserved: reserved.unwrap_or(0),
                };
                encoded(CENALLOC_CMD_PHYS, &req, slot.resolve(16))
            }
            CmdSpec::Sync { buffer, flags } => {
                let req = SyncReq {
                    buffer_id: buffer.resolve(),
                    flags: u32::from(*flags),
                };
                encoded(CENALLOC_CMD_SYNC, &req, 0)
            }
            CmdSpec::Stats { slot } => {
                with_payload(CENALLOC_CMD_STATS, Vec::new(), slot.resolve(STATS_SLOT))
            }
            CmdSpec::Fill {
                buffer,
                seed,
                reserved,
            } => {
                let req = FillReq {
                    buffer_id: buffer.resolve(),
                    reserved: reserved.unwrap_or(0),
                    seed: *seed,
                };
                encoded(CENALLOC_CMD_FILL, &req, 0)
            }
            CmdSpec::Checksum {
                buffer,
                reserved,
                slot,
            } => {
                let req = ChecksumReq {
                    buffer_id: buffer.resolve(),
                    reserved: reserved.unwrap_or(0),
                };
                encoded(CENALLOC_CMD_CHECKSUM, &req, slot.resolve(16))
            }
            CmdSpec::Reset {
                flags,
                reserved,
                slot,
            } => {
                let req = ResetReq {
                    flags: flags.unwrap_or(0),
                    reserved: reserved.unwrap_or(0),
                };
                encoded(
                    CENALLOC_CMD_RESET,
                    &req,
                    slot.resolve(size_of::<ResetResp>() as u32),
                )
            }
            CmdSpec::PoolRemove { pool, ranges } => {
                let ranges = ranges_cut(ranges);
                let req = PoolRemoveReq {
                    pool_index: u32::from(*pool % 8),
                    num_ranges: ranges.len() as u32,
                };
                with_payload(CENALLOC_CMD_POOL_REMOVE, with_ranges(req, ranges), 0)
            }
            CmdSpec::Lease {
                allocator,
                count,
                size,
                slot,
            } => {
                let req = LeaseReq {
                    allocator_id: u32::from(*allocator % 8),
                    count: u32::from(*count),
                    size: size.resolve(),
                };
                let natural = size_of::<LeaseResp>() + usize::from(*count) * size_of::<Range>();
                encoded(CENALLOC_CMD_LEASE, &req, slot.resolve(natural as u32))
            }
            CmdSpec::LeaseReturn { allocator, ranges } => {
                let ranges = ranges_cut(ranges);
                let req = LeaseReturnReq {
                    allocator_id: u32::from(*allocator % 8),
                    num_ranges: ranges.len() as u32,
                };
                with_payload(CENALLOC_CMD_LEASE_RETURN, with_ranges(req, ranges), 0)
            }
            CmdSpec::LeasedMap {
                buffer,
                initial_mask,
                size,
                extent,
                map_index,
                direction,
                attachments,
                num_attachments,
                reserved,
                slot,
            } => {
                let attachments = &attachments[..attachments
                    .len()
                    .min(CENALLOC_MAX_LEASED_ATTACH as usize + 1)];
                let req = LeasedMapReq {
                    buffer_id: buffer.resolve(),
                    initial_mask: initial_mask.map_or(0, MaskSpec::resolve),
                    size: size.resolve(),
                    extent: extent.resolve(),
                    map_index: u32::from(*map_index),
                    direction: u32::from(*direction % 4),
                    num_attachments: num_attachments.map_or(attachments.len() as u32, u32::from),
                    reserved: reserved.unwrap_or(0),
                };
                let mut payload = req.as_slice().to_vec();
                for a in attachments {
                    let mut record = LeasedAttach {
                        attach_id: a.attach.resolve(),
                        mask: a.mask.resolve(),
                        map_type: a.map_type.resolve(),
                        num_types: a.types.len().min(CENALLOC_MAX_MAP_TYPES + 1) as u32,
                        types: [0; CENALLOC_MAX_MAP_TYPES],
                    };
                    for (slot, t) in record.types.iter_mut().zip(&a.types) {
                        *slot = t.resolve();
                    }
                    payload.extend_from_slice(record.as_slice());
                }
                with_payload(
                    CENALLOC_CMD_LEASED_MAP,
                    payload,
                    slot.resolve((size_of::<MapResp>() + size_of::<Range>()) as u32),
                )
            }
            CmdSpec::Raw {
                opcode,
                flags,
                reserved,
                payload,
                resp_len,
            } => Encoded {
                opcode: *opcode,
                flags: *flags,
                reserved: *reserved,
                payload: payload.clone(),
                resp_len: *resp_len,
            },
        }
    }
}

/// Framing defects to inject into an otherwise well-framed batch.
#[derive(Arbitrary, Debug, Clone)]
pub enum Framing {
    WellFramed,
    NumCmds(u32),
    Reserved(u32),
    Trailing(Vec<u8>),
    Truncate(u16),
}

/// One batch: the readable part of a control chain.
#[derive(Arbitrary, Debug, Clone)]
pub struct BatchSpec {
    pub cmds: Vec<CmdSpec>,
    pub framing: Framing,
}

impl BatchSpec {
    /// The request bytes and the writable size the answer needs.
    pub fn encode(&self) -> (Vec<u8>, usize) {
        let cmds = &self.cmds[..self.cmds.len().min(CENALLOC_MAX_BATCH as usize + 1)];
        let mut header = BatchHdr {
            num_cmds: cmds.len() as u32,
            reserved: 0,
        };
        match &self.framing {
            Framing::NumCmds(n) => header.num_cmds = *n,
            Framing::Reserved(r) => header.reserved = *r,
            _ => {}
        }
        let mut request = header.as_slice().to_vec();
        let mut need = size_of::<BatchResp>();
        for cmd in cmds {
            let e = cmd.encode();
            let hdr = CmdHdr {
                opcode: e.opcode,
                flags: e.flags,
                len: e.payload.len() as u32,
                resp_len: e.resp_len,
                reserved: e.reserved,
            };
            request.extend_from_slice(hdr.as_slice());
            request.extend_from_slice(&e.payload);
            need = need
                .saturating_add(size_of::<RespHdr>())
                .saturating_add(e.resp_len as usize);
        }
        match &self.framing {
            Framing::Trailing(bytes) => request.extend_from_slice(bytes),
            Framing::Truncate(cut) => {
                let keep = request.len().saturating_sub(usize::from(*cut) % 64 + 1);
                request.truncate(keep);
            }
            _ => {}
        }
        (request, need)
    }
}

/// The writable part given to a batch.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum WritableSpec {
    /// Exactly what the batch needs.
    Exact,
    /// What it needs plus or minus a little.
    Off(i16),
    Raw(u32),
}

impl WritableSpec {
    fn resolve(self, need: usize) -> usize {
        match self {
            WritableSpec::Exact => need,
            WritableSpec::Off(delta) => need.saturating_add_signed(isize::from(delta)),
            WritableSpec::Raw(raw) => raw as usize % (64 << 20),
        }
    }
}

// ---------------------------------------------------------------------------
// run_batch: the command executor directly.

#[derive(Arbitrary, Debug)]
pub struct BatchCase {
    /// Donate pool memory before the batches (a driver does at probe).
    pub donate: bool,
    pub batches: Vec<(BatchSpec, WritableSpec)>,
}

/// Donates a fixed layout: region 2 (above 4 GiB) to `system`, region 1 to
/// `dma32`, `contig` and `contig32`.
fn donate_default(device: &mut Device, mem: &Mem) {
    let (r1, _) = REGIONS[1];
    let (r2, r2_len) = REGIONS[2];
    donate(
        device,
        mem,
        &[
            (0, r2, r2_len),
            (1, r1, 64 << 10),
            (2, r1 + (64 << 10), 64 << 10),
            (3, r1 + (128 << 10), 128 << 10),
        ],
    );
}

/// POOL_ADD of each (pool, address, length), each alone in a batch; a
/// refusal fails the case's set-up.
fn donate(device: &mut Device, mem: &Mem, layout: &[(u32, u64, u64)]) {
    for &(pool, addr, len) in layout {
        let mut payload = PoolAddReq {
            pool_index: pool,
            num_ranges: 1,
        }
        .as_slice()
        .to_vec();
        payload.extend_from_slice(Range { addr, len }.as_slice());
        let answer = one_command(device, mem, CENALLOC_CMD_POOL_ADD, &payload, 0);
        assert_eq!(
            read_u32(&answer, 0),
            0,
            "the donation of pool {pool} failed"
        );
    }
}

/// One command in a batch of its own, its slot `resp_len` bytes: the answer.
fn one_command(
    device: &mut Device,
    mem: &Mem,
    opcode: u16,
    payload: &[u8],
    resp_len: u32,
) -> Vec<u8> {
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
    let writable = size_of::<BatchResp>() + size_of::<RespHdr>() + resp_len as usize;
    device.execute_batch(mem, &request, writable)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    bytes
        .get(offset..offset + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// What one batch input reached (the replay checks the corpus gets there).
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchReach {
    /// Pool counters at the end.
    pub allocations: u64,
    pub migrations: u64,
    pub leased_maps: u64,
    /// Batches that did nothing, checked to have changed nothing.
    pub unchanged_checked: u64,
    /// Commands of the share opcodes (19-23) with at least their
    /// version-1 payload, whatever the answer.
    pub share_commands: u64,
    /// The same batches on a device that may share.
    pub linked: ShareReach,
}

/// Whether a command is a MAP (structured, or raw with MAP's opcode).
fn is_map(cmd: &CmdSpec) -> bool {
    match cmd {
        CmdSpec::Map { .. } => true,
        CmdSpec::Raw { opcode, .. } => *opcode == CENALLOC_CMD_MAP,
        _ => false,
    }
}

/// The version-1 request size and answer size of each share opcode
/// (`CENALLOC_F_SHARE`, docs/virtio-dmabuf.md 5.N.6.14): their payloads
/// are sized, at least this long, zero past what the device knows.
pub const SHARE_PAYLOADS: [(u16, usize, usize); 5] = [
    (
        CENALLOC_CMD_SHARE,
        size_of::<ShareReq>(),
        size_of::<ShareResp>(),
    ),
    (
        CENALLOC_CMD_UNSHARE,
        size_of::<UnshareReq>(),
        size_of::<UnshareResp>(),
    ),
    (
        CENALLOC_CMD_IMPORT,
        size_of::<ImportReq>(),
        size_of::<ImportResp>(),
    ),
    (CENALLOC_CMD_RELEASE, size_of::<ReleaseReq>(), 0),
    (CENALLOC_CMD_REVOKE_ACK, size_of::<RevokeAckReq>(), 0),
];

/// Whether a command is a share opcode with at least its version-1
/// payload.
fn is_sized_share_command(cmd: &Encoded) -> bool {
    SHARE_PAYLOADS
        .iter()
        .any(|&(opcode, len, _)| cmd.opcode == opcode && cmd.payload.len() >= len)
}

/// Runs a structured batch case against a fresh device. Panics (an
/// oracle failed) on a bug.
pub fn run_batch(data: &[u8]) -> BatchReach {
    let mut u = Unstructured::new(data);
    let Ok(case) = BatchCase::arbitrary(&mut u) else {
        return BatchReach::default();
    };
    run_batch_case(&case)
}

/// [`run_batch`] of a decoded case.
pub fn run_batch_case(case: &BatchCase) -> BatchReach {
    let mut reach = BatchReach::default();
    let mem = guest_memory();
    let mut device = match Device::new(fuzz_config()) {
        Ok(device) => device,
        Err(e) => panic!("the default device config is refused: {e}"),
    };
    if case.donate {
        donate_default(&mut device, &mem);
    }
    LEASED.with(|l| l.borrow_mut().clear());
    for (spec, writable) in case.batches.iter().take(MAX_BATCHES) {
        reach.share_commands += spec
            .cmds
            .iter()
            .take(CENALLOC_MAX_BATCH as usize + 1)
            .filter(|cmd| is_sized_share_command(&cmd.encode()))
            .count() as u64;
        let (request, need) = spec.encode();
        let writable_len = writable.resolve(need);
        let before = device.pool().snapshot();
        let answer = device.execute_batch(&mem, &request, writable_len);
        note_leases(&request, &answer);
        check_answer(&answer, writable_len, spec, &request);
        let after = device.pool().snapshot();
        // No command done: the first one failed (or the batch was refused
        // as a whole), and no other ran.
        let did_nothing = answer.len() >= 8 && read_u32(&answer, 4) == 0;
        if did_nothing {
            if spec.cmds.first().is_some_and(is_map) {
                // A failed MAP may keep its new backing (answer too large
                // for the slot) or drop the old one (preparing it failed),
                // by design, and counts a map and an unmap: the backing,
                // the free space and the counters may change, nothing
                // else.
                let strip = |snapshot: &cenalloc::model::Snapshot| {
                    let mut s = snapshot.clone();
                    s.counters = Default::default();
                    for a in &mut s.allocators {
                        (a.free, a.largest_free, a.free_extents) = (0, 0, 0);
                        (a.fragmentation_permille, a.num_buffers) = (0, 0);
                    }
                    for b in &mut s.buffers {
                        (b.allocator, b.backing, b.migrate_pending) = (None, Vec::new(), false);
                    }
                    s
                };
                assert_eq!(
                    strip(&before),
                    strip(&after),
                    "a MAP that failed changed more than its backing"
                );
            } else {
                assert_eq!(before, after, "a batch that did nothing changed the pool");
            }
            reach.unchanged_checked += 1;
        }
        check_pool(&device);
    }
    let counters = &device.pool().snapshot().counters;
    reach.allocations = counters.allocations;
    reach.migrations = counters.migrations;
    reach.leased_maps = counters.leased_maps;
    // Again, on a device that may share (issue 17).
    reach.linked = run_linked(case);
    reach
}

/// The answer fits the writable part, and its header agrees with itself.
fn check_answer(answer: &[u8], writable_len: usize, spec: &BatchSpec, request: &[u8]) {
    assert!(
        answer.len() <= writable_len,
        "answer of {} bytes for a writable part of {writable_len}",
        answer.len()
    );
    if answer.len() < size_of::<BatchResp>() {
        assert!(
            answer.is_empty(),
            "a partial batch_resp of {} bytes",
            answer.len()
        );
        return;
    }
    let status = read_u32(answer, 0);
    let done = read_u32(answer, 4);
    let announced = read_u32(request, 0);
    assert!(
        done <= announced,
        "{done} commands done of {announced} announced"
    );
    if status == 0 {
        assert_eq!(
            done as usize,
            spec.cmds.len().min(CENALLOC_MAX_BATCH as usize + 1),
            "status 0 but not every command done"
        );
    } else {
        assert!(
            (status as i32) < 0,
            "batch status {status:#x} is not a negative errno"
        );
    }
}

/// Every byte of a buffer's backing lies inside regions donated to its
/// allocator, and no byte backs two buffers.
fn check_pool(device: &Device) {
    let snapshot = device.pool().snapshot();
    let mut backing: Vec<(u64, u64, u32)> = Vec::new();
    for buffer in &snapshot.buffers {
        let mut total = 0u64;
        for segment in &buffer.backing {
            let end = segment.addr.checked_add(segment.len);
            let Some(end) = end else {
                panic!("buffer {} has a wrapping segment {segment:?}", buffer.id);
            };
            // Adjacent donated regions form one extent: a segment may span
            // several of them, but no byte outside them.
            let mut regions: Vec<(u64, u64)> = snapshot
                .regions
                .iter()
                .filter(|r| Some(r.allocator) == buffer.allocator)
                .map(|r| (r.addr, r.addr + r.len))
                .collect();
            regions.sort_unstable();
            let mut covered = segment.addr;
            for &(start, stop) in &regions {
                if start <= covered && covered < stop {
                    covered = stop;
                }
            }
            assert!(
                covered >= end,
                "buffer {} segment {segment:?} is outside its allocator's regions",
                buffer.id
            );
            backing.push((segment.addr, end, buffer.id));
            total += segment.len;
        }
        if !buffer.backing.is_empty() {
            assert!(
                total >= buffer.size,
                "buffer {} of {} bytes has {total} bytes of backing",
                buffer.id,
                buffer.size
            );
        }
    }
    backing.sort_unstable();
    for pair in backing.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "buffers {} and {} share backing: {:?} {:?}",
            pair[0].2,
            pair[1].2,
            pair[0],
            pair[1]
        );
    }
    for stat in &snapshot.allocators {
        assert!(
            stat.free <= stat.capacity && stat.largest_free <= stat.free,
            "allocator {} accounts free {} largest {} of capacity {}",
            stat.name,
            stat.free,
            stat.largest_free,
            stat.capacity
        );
        // Conservation: every byte of the allocator is free, leased or
        // backing, once (a leak or a double count shows here).
        let backed: u64 = snapshot
            .buffers
            .iter()
            .filter(|b| b.allocator == Some(stat.id))
            .flat_map(|b| &b.backing)
            .map(|s| s.len)
            .sum();
        let donated: u64 = snapshot
            .regions
            .iter()
            .filter(|r| r.allocator == stat.id)
            .map(|r| r.len)
            .sum();
        // Extents other VMs' windows may still reach (issue 17).
        let quarantined: u64 = device
            .pool()
            .quarantined()
            .iter()
            .filter(|q| q.allocator == Some(stat.id))
            .flat_map(|q| &q.segments)
            .map(|s| s.len)
            .sum();
        assert_eq!(
            stat.capacity, donated,
            "allocator {} capacity is not its donated regions",
            stat.name
        );
        assert_eq!(
            stat.capacity,
            stat.free + stat.leased + backed + quarantined,
            "allocator {}: capacity {} != free {} + leased {} + backing {backed} + quarantined {quarantined}",
            stat.name,
            stat.capacity,
            stat.free,
            stat.leased
        );
    }
}

// ---------------------------------------------------------------------------
// run_ring: the backend, kicked through handle_event.

/// The queue size given with SET_VRING_NUM.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum QueueSize {
    Pow2(u8),
    Raw(u16),
}

/// How the front-end sets up one ring (SET_VRING_NUM, SET_VRING_ADDR,
/// SET_VRING_BASE, SET_VRING_KICK, SET_VRING_ENABLE).
#[derive(Arbitrary, Debug, Clone)]
pub struct QueueSetup {
    pub size: QueueSize,
    /// `None`: the default, valid placement.
    pub desc: Option<AddrSpec>,
    pub avail: Option<AddrSpec>,
    pub used: Option<AddrSpec>,
    /// SET_VRING_BASE (`None`: 0).
    pub base: Option<u16>,
    /// Whether the kick fd arrived (the handler then marks the ring ready)
    /// and SET_VRING_ENABLE said 1.
    pub not_started: bool,
    pub disabled: bool,
}

/// How a chain's request is split into readable descriptors.
#[derive(Arbitrary, Debug, Clone)]
pub enum RequestSpec {
    Batch(BatchSpec),
    Raw(Vec<u8>),
}

/// A descriptor chain the guest lays out.
#[derive(Arbitrary, Debug, Clone)]
pub struct ChainSpec {
    pub request: RequestSpec,
    /// Sizes of the readable descriptors (the last one takes the rest).
    pub splits: Vec<u16>,
    /// Writable descriptor lengths; `None`: one of the size the batch needs.
    pub writable: Option<Vec<u16>>,
    /// Put the chain in an indirect table.
    pub indirect: bool,
}

/// One guest or front-end action.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// Lay out chains on the control queue and publish them (avail ring
    /// entries, then avail->idx).
    Chains(Vec<ChainSpec>),
    /// A kick of the control queue.
    Kick,
    /// A kick of the event queue.
    KickEvents,
    /// An epoll event that is not a plain kick.
    OddEvent { queue: u16, bits: u32 },
    /// Post writable event buffers of these lengths.
    EventBuffers(Vec<u16>),
    /// Write avail->idx of the control queue.
    AvailIdx(u16),
    /// Write avail->flags of the control queue.
    AvailFlags(u16),
    /// Write used_event (after the avail ring) of the control queue.
    UsedEvent(u16),
    /// Publish raw head indices on the control queue.
    Heads(Vec<u16>),
    /// Overwrite one control descriptor.
    Desc {
        index: u16,
        addr: AddrSpec,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// Write arbitrary bytes into guest memory.
    Write { addr: AddrSpec, bytes: Vec<u8> },
    /// GET_VRING_BASE: the front-end stops a ring.
    Stop { queue: bool },
    /// SET_VRING_BASE + SET_VRING_KICK: the front-end starts it again.
    Start { queue: bool, base: u16 },
    /// SET_VRING_ENABLE.
    Enable { queue: bool, on: bool },
}

#[derive(Arbitrary, Debug, Clone)]
pub struct RingCase {
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    pub control: QueueSetup,
    pub events: QueueSetup,
    pub donate: bool,
    pub steps: Vec<Step>,
}

/// The guest driver's view of one ring.
struct GuestRing {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    avail_idx: u16,
    next_desc: u16,
}

/// The backend as `VhostUserDaemon` holds it (`CenallocBackend::new_shared`),
/// driven through the `VhostUserBackend` trait the daemon's threads call.
struct RingWorld<B> {
    atomic: AtomicMem,
    backend: B,
    /// The same backend, as the control socket reads its device.
    view: Arc<CenallocBackend>,
    vrings: Vec<VringRwLock>,
    rings: [GuestRing; 2],
    scratch: u64,
    reach: RingReach,
}

/// What one ring input reached (the replay checks the corpus gets there).
#[derive(Debug, Default, Clone, Copy)]
pub struct RingReach {
    /// Pool counters at the end: backing allocations, maps, migrations.
    pub allocations: u64,
    pub maps: u64,
    pub migrations: u64,
    /// Bytes of donated pool memory a kick left non-zero and changed
    /// (FILL, or the copy of a migration).
    pub pool_bytes_written: u64,
    /// Used entries checked against their chains.
    pub used_entries: u64,
}

/// A copy of guest RAM, region by region (as [`REGIONS`]).
struct Ram(Vec<Vec<u8>>);

impl Ram {
    fn read(&self, addr: u64, len: u64) -> Option<&[u8]> {
        for (&(base, size), bytes) in REGIONS.iter().zip(&self.0) {
            if addr >= base && addr - base < size {
                let start = (addr - base) as usize;
                let end = start.checked_add(usize::try_from(len).ok()?)?;
                return bytes.get(start..end);
            }
        }
        None
    }

    fn u16_at(&self, addr: u64) -> Option<u16> {
        self.read(addr, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32_at(&self, addr: u64) -> Option<u32> {
        self.read(addr, 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The writable descriptors of the chain at `head` of a descriptor
    /// table of `size` entries, as a lenient walker finds them: it follows
    /// `next` and one indirect table as far as the bytes allow, so it
    /// never finds less than the device (which stops at the first defect).
    fn writable(&self, table: u64, size: u16, head: u32) -> Vec<(u64, u64)> {
        let (mut table, mut entries) = (table, u64::from(size));
        let mut index = u64::from(head);
        let mut indirect = false;
        let mut areas = Vec::new();
        let budget = 2 * (u64::from(size) + MAX_QUEUE_SIZE as u64 + 1);
        for _ in 0..budget {
            if index >= entries {
                break;
            }
            let Some(d) = table
                .checked_add(16 * index)
                .and_then(|at| self.read(at, 16))
            else {
                break;
            };
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
            let len = u64::from(u32::from_le_bytes(d[8..12].try_into().unwrap_or_default()));
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            if flags & DESC_F_INDIRECT != 0 && !indirect {
                indirect = true;
                (table, entries, index) = (addr, len / 16, 0);
                continue;
            }
            if flags & DESC_F_WRITE != 0 {
                areas.push((addr, len));
            }
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            index = u64::from(next);
        }
        areas
    }
}

/// Whether `addr` lies in one of `areas` (start, length).
fn inside(areas: &[(u64, u64)], addr: u64) -> bool {
    areas
        .iter()
        .any(|&(start, len)| addr >= start && addr - start < len)
}

impl<B: VhostUserBackend<Bitmap = (), Vring = VringRwLock>> RingWorld<B> {
    fn mem(&self) -> impl std::ops::Deref<Target = Mem> {
        self.atomic.memory()
    }

    /// Guest writes ignore failures: the guest may point anywhere.
    fn write(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem().write_slice(bytes, GuestAddress(addr));
    }

    fn write_u16(&self, addr: u64, value: u16) {
        self.write(addr, &value.to_le_bytes());
    }

    /// Scratch space for `len` bytes (wraps: later chains may overwrite
    /// earlier ones, as a careless guest would).
    fn alloc(&mut self, len: u64) -> u64 {
        let len = (len.max(1) + 15) & !15;
        if len > SCRATCH_END - SCRATCH_START {
            // Too big for scratch: anywhere in region 1, possibly past it.
            return REGIONS[1].0;
        }
        if self.scratch + len > SCRATCH_END {
            self.scratch = SCRATCH_START;
        }
        let addr = self.scratch;
        self.scratch += len;
        addr
    }

    fn write_desc(&self, table: u64, index: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        self.write(table.wrapping_add(16 * index), &bytes);
    }

    /// Lays out `spec` on ring `q`; returns its head index.
    fn lay_out(&mut self, q: usize, spec: &ChainSpec) -> u16 {
        let (request, need) = match &spec.request {
            RequestSpec::Batch(batch) => batch.encode(),
            RequestSpec::Raw(bytes) => (bytes.clone(), 64),
        };
        // Descriptors: (addr, len, write).
        let mut descs: Vec<(u64, u32, bool)> = Vec::new();
        let mut rest = &request[..];
        for &split in &spec.splits {
            if rest.is_empty() {
                break;
            }
            let take = usize::from(split).min(rest.len());
            let addr = self.alloc(take as u64);
            self.write(addr, &rest[..take]);
            descs.push((addr, take as u32, false));
            rest = &rest[take..];
        }
        if !rest.is_empty() {
            let addr = self.alloc(rest.len() as u64);
            self.write(addr, rest);
            descs.push((addr, rest.len() as u32, false));
        }
        let writable: Vec<u32> = match &spec.writable {
            Some(lens) => lens.iter().map(|&l| u32::from(l)).collect(),
            None => vec![u32::try_from(need).unwrap_or(u32::MAX)],
        };
        for len in writable {
            let addr = self.alloc(u64::from(len));
            descs.push((addr, len, true));
        }
        let ring = &self.rings[q];
        let size = u64::from(ring.size.max(1));
        let table = ring.desc;
        let head = ring.next_desc;
        if spec.indirect {
            let itable = self.alloc(16 * descs.len() as u64);
            for (i, &(addr, len, write)) in descs.iter().enumerate() {
                let last = i + 1 == descs.len();
                let flags =
                    if write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
                self.write_desc(itable, i as u64, addr, len, flags, (i + 1) as u16);
            }
            let slot = u64::from(head) % size;
            self.write_desc(
                table,
                slot,
                itable,
                (16 * descs.len()) as u32,
                DESC_F_INDIRECT,
                0,
            );
            self.rings[q].next_desc = head.wrapping_add(1);
            return slot as u16;
        }
        let count = descs.len().max(1) as u16;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let slot = (u64::from(head) + i as u64) % size;
            let next = ((u64::from(head) + i as u64 + 1) % size) as u16;
            let last = i + 1 == descs.len();
            let flags = if write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            self.write_desc(table, slot, addr, len, flags, next);
        }
        self.rings[q].next_desc = head.wrapping_add(count);
        (u64::from(head) % size) as u16
    }

    /// Puts heads on ring `q`'s avail ring and publishes them.
    fn publish(&mut self, q: usize, heads: &[u16]) {
        let ring = &self.rings[q];
        let size = u64::from(ring.size.max(1));
        let mut idx = ring.avail_idx;
        for &head in heads {
            let entry = ring.avail.wrapping_add(4 + 2 * (u64::from(idx) % size));
            self.write_u16(entry, head);
            idx = idx.wrapping_add(1);
        }
        self.rings[q].avail_idx = idx;
        self.write_u16(self.rings[q].avail.wrapping_add(2), idx);
    }

    fn kick(&mut self, queue: u16, evset: EventSet) {
        let Some(vring) = self.vrings.get(usize::from(queue)) else {
            self.handle(queue, evset);
            return;
        };
        // The daemon only watches the kick fd of a ring that is started
        // and enabled.
        let live = {
            let state = vring.get_ref();
            state.get_queue().ready() && state.is_enabled()
        };
        if !live {
            return;
        }
        self.handle(queue, evset);
    }

    fn handle(&mut self, queue: u16, evset: EventSet) {
        // `handle_event` returns Ok on every path (a bad kick breaks the
        // ring, it is no error of the daemon's): the oracles are in
        // `guarded`.
        self.guarded(|world| {
            let _ = world.backend.handle_event(queue, evset, &world.vrings, 0);
        });
    }

    fn ram(&self) -> Ram {
        let mem = self.mem();
        Ram(REGIONS
            .iter()
            .map(|&(base, len)| {
                let mut bytes = vec![0u8; len as usize];
                if let Err(e) = mem.read_slice(&mut bytes, GuestAddress(base)) {
                    panic!("cannot read guest RAM at {base:#x}: {e}");
                }
                bytes
            })
            .collect())
    }

    /// The donated regions (backing, free space and leased stock all lie
    /// in them), as (start, length).
    fn pool_memory(&self) -> Vec<(u64, u64)> {
        let mut areas = Vec::new();
        self.view.with_device(&mut |device| {
            let snapshot = device.pool().snapshot();
            areas.extend(snapshot.regions.iter().map(|r| (r.addr, r.len)));
        });
        areas
    }

    /// Runs `action` (a kick, a ring stop) with the oracles around it:
    /// the pool stays consistent; every used entry it added names a chain
    /// whose writable descriptors hold its length; and it wrote guest RAM
    /// only in the writable descriptors of the chains it returned, in the
    /// used rings, and in pool memory (regions donated before or after:
    /// a buffer mapped and freed within one kick leaves no other trace).
    fn guarded(&mut self, action: impl FnOnce(&mut Self)) {
        let before = self.ram();
        let pool_before = self.pool_memory();
        let used_before: Vec<Option<u16>> = (0..self.vrings.len())
            .map(|q| {
                let used = self.vrings[q].get_ref().get_queue().used_ring();
                before.u16_at(used.wrapping_add(2))
            })
            .collect();
        action(self);
        self.view.with_device(&mut |device| check_pool(device));
        let after = self.ram();
        let mut allowed = pool_before;
        allowed.extend(self.pool_memory());
        let pool = allowed.clone();
        for (q, vring) in self.vrings.iter().enumerate() {
            let (desc, used, size) = {
                let state = vring.get_ref();
                let queue = state.get_queue();
                (queue.desc_table(), queue.used_ring(), queue.size())
            };
            allowed.push((used, 6 + 8 * u64::from(size)));
            let (Some(old), Some(new)) = (used_before[q], after.u16_at(used.wrapping_add(2)))
            else {
                continue;
            };
            let mut added = new.wrapping_sub(old);
            let mut first = old;
            if added > size {
                // More chains than the ring holds in one go (the guest's
                // own chains moved the avail index: the ring abuse the
                // device bounds): the used ring kept the last `size`
                // entries only. Allow every chain of the table, check the
                // entries still there.
                for head in 0..u32::from(size) {
                    allowed.extend(before.writable(desc, size, head));
                    allowed.extend(after.writable(desc, size, head));
                }
                first = old.wrapping_add(added - size);
                added = size;
            }
            for i in 0..added {
                let slot = u64::from(first.wrapping_add(i) % size.max(1));
                let entry = used.wrapping_add(4 + 8 * slot);
                let (Some(head), Some(len)) = (after.u32_at(entry), after.u32_at(entry + 4)) else {
                    continue;
                };
                // The descriptors as the kick found them and as it left
                // them (an answer may land on a later chain's table).
                let mut areas = before.writable(desc, size, head);
                let writable: u64 = areas.iter().map(|a| a.1).sum();
                let later = after.writable(desc, size, head);
                let writable = writable.max(later.iter().map(|a| a.1).sum());
                areas.extend(later);
                assert!(
                    u64::from(len) <= writable,
                    "queue {q}: used entry for head {head} says {len} bytes, its chain has {writable} writable"
                );
                allowed.extend(areas);
                self.reach.used_entries += 1;
            }
        }
        for (r, (&(base, _), (old, new))) in REGIONS
            .iter()
            .zip(before.0.iter().zip(&after.0))
            .enumerate()
        {
            for (c, (a, b)) in old.chunks(4096).zip(new.chunks(4096)).enumerate() {
                if a == b {
                    continue;
                }
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    if x == y {
                        continue;
                    }
                    let addr = base + (c * 4096 + i) as u64;
                    assert!(
                        inside(&allowed, addr),
                        "guest RAM at {addr:#x} (region {r}) changed {x:#04x} -> {y:#04x} outside every area the device may write"
                    );
                    if *y != 0 && inside(&pool, addr) {
                        self.reach.pool_bytes_written += 1;
                    }
                }
            }
        }
    }

    fn ring_index(queue: bool) -> usize {
        usize::from(queue)
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Chains(chains) => {
                let heads: Vec<u16> = chains.iter().take(64).map(|c| self.lay_out(0, c)).collect();
                self.publish(0, &heads);
            }
            Step::Kick => self.kick(CENALLOC_VQ_CONTROL, EventSet::IN),
            Step::KickEvents => self.kick(CENALLOC_VQ_EVENT, EventSet::IN),
            Step::OddEvent { queue, bits } => {
                let evset = EventSet::from_bits_truncate(*bits);
                self.kick(*queue % 4, evset);
            }
            Step::EventBuffers(lens) => {
                let mut heads = Vec::new();
                for &len in lens.iter().take(64) {
                    let spec = ChainSpec {
                        request: RequestSpec::Raw(Vec::new()),
                        splits: Vec::new(),
                        writable: Some(vec![len]),
                        indirect: false,
                    };
                    heads.push(self.lay_out(1, &spec));
                }
                self.publish(1, &heads);
            }
            Step::AvailIdx(idx) => {
                self.rings[0].avail_idx = *idx;
                self.write_u16(self.rings[0].avail.wrapping_add(2), *idx);
            }
            Step::AvailFlags(flags) => self.write_u16(self.rings[0].avail, *flags),
            Step::UsedEvent(value) => {
                let ring = &self.rings[0];
                let at = ring.avail.wrapping_add(4 + 2 * u64::from(ring.size.max(1)));
                self.write_u16(at, *value);
            }
            Step::Heads(heads) => {
                let heads: Vec<u16> = heads.iter().take(1024).copied().collect();
                self.publish(0, &heads);
            }
            Step::Desc {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let ring = &self.rings[0];
                let slot = u64::from(*index) % u64::from(ring.size.max(1));
                self.write_desc(ring.desc, slot, addr.resolve(), *len, *flags, *next);
            }
            Step::Write { addr, bytes } => {
                let bytes = &bytes[..bytes.len().min(4096)];
                self.write(addr.resolve(), bytes);
            }
            Step::Stop { queue } => {
                let index = Self::ring_index(*queue);
                self.vrings[index].set_queue_ready(false);
                // Ok on every path; the oracles are in `guarded`.
                self.guarded(|world| {
                    let _ = world.backend.stop_vring(index as u32);
                });
            }
            Step::Start { queue, base } => {
                let index = Self::ring_index(*queue);
                self.vrings[index].set_queue_next_avail(*base);
                self.vrings[index].set_queue_ready(true);
            }
            Step::Enable { queue, on } => {
                self.vrings[Self::ring_index(*queue)].set_enabled(*on);
            }
        }
    }
}

fn set_up(vring: &VringRwLock, setup: &QueueSetup, defaults: (u64, u64, u64), event_idx: bool) {
    // SET_VRING_NUM: the handler refuses 0 and sizes above the maximum;
    // the queue itself refuses sizes that are not a power of two.
    let num = match setup.size {
        QueueSize::Pow2(shift) => 1u32 << (shift % 11),
        QueueSize::Raw(raw) => u32::from(raw),
    };
    if num != 0 && num as usize <= MAX_QUEUE_SIZE {
        vring.set_queue_size(num as u16);
    }
    // SET_VRING_ADDR: a misaligned address is refused (InvalidParam) and
    // the ring keeps what it had; then the used index is read back.
    let desc = setup.desc.map_or(defaults.0, AddrSpec::resolve);
    let avail = setup.avail.map_or(defaults.1, AddrSpec::resolve);
    let used = setup.used.map_or(defaults.2, AddrSpec::resolve);
    if vring.set_queue_info(desc, avail, used).is_ok() {
        if let Ok(idx) = vring.queue_used_idx() {
            vring.set_queue_next_used(idx);
        }
    }
    // SET_VRING_BASE.
    vring.set_queue_next_avail(setup.base.unwrap_or(0));
    vring.set_queue_event_idx(event_idx);
    // SET_VRING_KICK marks the ring ready; SET_VRING_ENABLE.
    vring.set_queue_ready(!setup.not_started);
    vring.set_enabled(!setup.disabled);
}

fn guest_ring(vring: &VringRwLock, setup: &QueueSetup, defaults: (u64, u64, u64)) -> GuestRing {
    let size = vring.get_ref().get_queue().size();
    GuestRing {
        desc: setup.desc.map_or(defaults.0, AddrSpec::resolve),
        avail: setup.avail.map_or(defaults.1, AddrSpec::resolve),
        used: setup.used.map_or(defaults.2, AddrSpec::resolve),
        size,
        avail_idx: setup.base.unwrap_or(0),
        next_desc: 0,
    }
}

/// Runs one ring case against a fresh backend. Panics (an oracle failed)
/// on a bug; never returns while the backend spins.
pub fn run_ring(data: &[u8]) -> RingReach {
    let mut u = Unstructured::new(data);
    let Ok(case) = RingCase::arbitrary(&mut u) else {
        return RingReach::default();
    };
    run_ring_case(&case)
}

/// [`run_ring`] of a decoded case.
pub fn run_ring_case(case: &RingCase) -> RingReach {
    // Its batches name no leased extent (their answers are not read).
    LEASED.with(|l| l.borrow_mut().clear());
    let atomic = GuestMemoryAtomic::new(guest_memory_file());
    let backend = match CenallocBackend::new_shared(fuzz_config()) {
        Ok(backend) => backend,
        Err(e) => panic!("the default device config is refused: {e}"),
    };
    backend.set_event_idx(case.event_idx);
    if let Err(e) = backend.update_memory(atomic.clone()) {
        panic!("update_memory failed: {e}");
    }
    let mut vrings = Vec::with_capacity(CENALLOC_NUM_VQS);
    for _ in 0..CENALLOC_NUM_VQS {
        match VringRwLock::new(atomic.clone(), MAX_QUEUE_SIZE as u16) {
            Ok(vring) => vrings.push(vring),
            Err(e) => panic!("cannot build a vring: {e}"),
        }
    }
    let control_defaults = (CONTROL_DESC, CONTROL_AVAIL, CONTROL_USED);
    let event_defaults = (EVENT_DESC, EVENT_AVAIL, EVENT_USED);
    set_up(&vrings[0], &case.control, control_defaults, case.event_idx);
    set_up(&vrings[1], &case.events, event_defaults, case.event_idx);
    let rings = [
        guest_ring(&vrings[0], &case.control, control_defaults),
        guest_ring(&vrings[1], &case.events, event_defaults),
    ];
    let mut world = RingWorld {
        atomic,
        view: backend.clone(),
        backend,
        vrings,
        rings,
        scratch: SCRATCH_START,
        reach: RingReach::default(),
    };
    if case.donate {
        let spec = ChainSpec {
            request: RequestSpec::Batch(BatchSpec {
                cmds: vec![
                    CmdSpec::PoolAdd {
                        pool: 0,
                        ranges: vec![RangeSpec::Raw {
                            addr: REGIONS[2].0,
                            len: REGIONS[2].1,
                        }],
                    },
                    CmdSpec::PoolAdd {
                        pool: 3,
                        ranges: vec![RangeSpec::Raw {
                            addr: REGIONS[1].0,
                            len: REGIONS[1].1,
                        }],
                    },
                ],
                framing: Framing::WellFramed,
            }),
            splits: Vec::new(),
            writable: None,
            indirect: false,
        };
        world.step(&Step::Chains(vec![spec]));
    }
    for step in case.steps.iter().take(MAX_STEPS) {
        world.step(step);
    }
    // The guest always kicks after its last action.
    world.kick(CENALLOC_VQ_CONTROL, EventSet::IN);
    let mut reach = world.reach;
    world.view.with_device(&mut |device| {
        let counters = &device.pool().snapshot().counters;
        reach.allocations = counters.allocations;
        reach.maps = counters.maps;
        reach.migrations = counters.migrations;
    });
    reach
}

/// The decoded form of a `ring` or `batch` input, for triage.
pub fn describe(target: &str, data: &[u8]) -> String {
    let mut u = Unstructured::new(data);
    match target {
        "ring" => format!("{:#?}", RingCase::arbitrary(&mut u)),
        "batch" => format!("{:#?}", BatchCase::arbitrary(&mut u)),
        other => format!("unknown target {other}"),
    }
}

// ---------------------------------------------------------------------------
// Encoding: the bytes `arbitrary` (1.x, as derived) decodes into a given
// case, so seed inputs can be written as structures. Integers are little
// endian, `bool` one byte, `Option` a bool then the value, `Vec` a `true`
// byte before each element and a `false` byte after the last, an enum
// variant `i` of `n` a u32 `t` with `t * n >> 32 == i`.

pub trait Encode {
    fn encode_into(&self, out: &mut Vec<u8>);
}

/// The input bytes of `case`.
pub fn encode<T: Encode>(case: &T) -> Vec<u8> {
    let mut out = Vec::new();
    case.encode_into(&mut out);
    out
}

fn variant(out: &mut Vec<u8>, index: u32, count: u32) {
    let tag = (u64::from(index) << 32).div_ceil(u64::from(count));
    out.extend_from_slice(&(tag as u32).to_le_bytes());
}

macro_rules! encode_ints {
    ($($t:ty)*) => {$(
        impl Encode for $t {
            fn encode_into(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
encode_ints!(u8 u16 u32 u64 i16);

impl Encode for bool {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.is_some().encode_into(out);
        if let Some(value) = self {
            value.encode_into(out);
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode_into(&self, out: &mut Vec<u8>) {
        for item in self {
            out.push(1);
            item.encode_into(out);
        }
        out.push(0);
    }
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.0.encode_into(out);
        self.1.encode_into(out);
    }
}

/// `encode_enum!(Type, count; Variant(index) { fields } ...)`.
macro_rules! encode_enum {
    ($ty:ident, $count:expr; $($variant:ident $index:literal $({ $($field:ident),* })? $(( $($tuple:ident),* ))?;)*) => {
        impl Encode for $ty {
            fn encode_into(&self, out: &mut Vec<u8>) {
                match self {
                    $(
                        $ty::$variant $({ $($field),* })? $(( $($tuple),* ))? => {
                            variant(out, $index, $count);
                            $($( $field.encode_into(out); )*)?
                            $($( $tuple.encode_into(out); )*)?
                        }
                    )*
                }
            }
        }
    };
}

macro_rules! encode_struct {
    ($ty:ident { $($field:ident),* }) => {
        impl Encode for $ty {
            fn encode_into(&self, out: &mut Vec<u8>) {
                $( self.$field.encode_into(out); )*
            }
        }
    };
}

encode_enum!(AddrSpec, 2; Ram 0 { region, offset }; Raw 1 (addr););
encode_enum!(IdSpec, 3; Id 0 (id); Ref 1 (index); Raw 2 (raw););
encode_enum!(SizeSpec, 3; Pages 0 (pages); Bytes 1 (bytes); Raw 2 (raw););
encode_enum!(MaskSpec, 3; Kinds 0 (bits); Any 1; Raw 2 (raw););
encode_enum!(TypeSpec, 4; Sg 0; Contig 1; Private 2 (n); Raw 3 (raw););
encode_enum!(SlotSpec, 3; Natural 0; Words 1 (words); Raw 2 (raw););
encode_enum!(RangeSpec, 2; Pages 0 { first, count }; Raw 1 { addr, len };);
encode_enum!(DriverIdSpec, 2; Driver 0 (n); Other 1 (id););
encode_enum!(ExtentSpec, 2; Leased 0 (n); Other 1 (range););
encode_struct!(LeasedAttachSpec {
    attach,
    mask,
    map_type,
    types
});
encode_enum!(CmdSpec, 19;
    GetInfo 0 { slot };
    PoolAdd 1 { pool, ranges };
    Create 2 { size, flags, mask };
    Attach 3 { buffer, mask, types, reserved };
    Detach 4 { attach, reserved };
    Map 5 { attach, direction, slot };
    Unmap 6 { attach, direction };
    Free 7 { buffer, reserved };
    Phys 8 { buffer, reserved, slot };
    Sync 9 { buffer, flags };
    Stats 10 { slot };
    Fill 11 { buffer, seed, reserved };
    Checksum 12 { buffer, reserved, slot };
    Reset 13 { flags, reserved, slot };
    PoolRemove 14 { pool, ranges };
    Lease 15 { allocator, count, size, slot };
    LeaseReturn 16 { allocator, ranges };
    LeasedMap 17 { buffer, initial_mask, size, extent, map_index, direction, attachments,
        num_attachments, reserved, slot };
    Raw 18 { opcode, flags, reserved, payload, resp_len };
);
encode_enum!(Framing, 5; WellFramed 0; NumCmds 1 (n); Reserved 2 (r); Trailing 3 (bytes);
    Truncate 4 (cut););
encode_struct!(BatchSpec { cmds, framing });
encode_enum!(WritableSpec, 3; Exact 0; Off 1 (delta); Raw 2 (raw););
encode_struct!(BatchCase { donate, batches });
encode_enum!(QueueSize, 2; Pow2 0 (shift); Raw 1 (raw););
encode_struct!(QueueSetup {
    size,
    desc,
    avail,
    used,
    base,
    not_started,
    disabled
});
encode_enum!(RequestSpec, 2; Batch 0 (batch); Raw 1 (bytes););
encode_struct!(ChainSpec {
    request,
    splits,
    writable,
    indirect
});
encode_enum!(Step, 14;
    Chains 0 (chains);
    Kick 1;
    KickEvents 2;
    OddEvent 3 { queue, bits };
    EventBuffers 4 (lens);
    AvailIdx 5 (idx);
    AvailFlags 6 (flags);
    UsedEvent 7 (value);
    Heads 8 (heads);
    Desc 9 { index, addr, len, flags, next };
    Write 10 { addr, bytes };
    Stop 11 { queue };
    Start 12 { queue, base };
    Enable 13 { queue, on };
);
encode_struct!(RingCase {
    event_idx,
    control,
    events,
    donate,
    steps
});

// ---------------------------------------------------------------------------
// Seed inputs: cases the fuzzer found hard to reach, written as structures
// (committed as `fuzz/corpus/<target>/seed-*`, encoded with [`encode`]).

fn batch(cmds: Vec<CmdSpec>) -> BatchSpec {
    BatchSpec {
        cmds,
        framing: Framing::WellFramed,
    }
}

/// An attachment that `system` (first in priority) serves, and allocators
/// below 4 GiB too.
fn system_attach(buffer: IdSpec) -> CmdSpec {
    CmdSpec::Attach {
        buffer,
        mask: MaskSpec::Kinds((CENALLOC_KIND_SYSTEM | CENALLOC_KIND_DMA32) as u8),
        types: vec![TypeSpec::Sg],
        reserved: None,
    }
}

/// An attachment that only allocators below 4 GiB serve: the backing of
/// a buffer in `system` (above 4 GiB) must move.
fn dma32_attach(buffer: IdSpec) -> CmdSpec {
    CmdSpec::Attach {
        buffer,
        mask: MaskSpec::Kinds(CENALLOC_KIND_DMA32 as u8),
        types: vec![TypeSpec::Sg],
        reserved: None,
    }
}

fn map(attach: IdSpec, slot: SlotSpec) -> CmdSpec {
    CmdSpec::Map {
        attach,
        direction: 0,
        slot,
    }
}

/// Create a buffer of `pages` in `system`, map it, fill it, checksum it;
/// then (next batch) unmap it, attach a DMA32 device and map again: the
/// backing migrates, its bytes copied; checksum, and give everything
/// back. The model numbers buffers and attachments 1, 2, ...
fn map_fill_migrate_free(pages: u8) -> Vec<BatchSpec> {
    vec![
        batch(vec![
            CmdSpec::Create {
                size: SizeSpec::Pages(pages),
                flags: None,
                mask: None,
            },
            system_attach(IdSpec::Ref(0)),
            map(IdSpec::Ref(1), SlotSpec::Natural),
            CmdSpec::Fill {
                buffer: IdSpec::Ref(0),
                seed: 0x5eed,
                reserved: None,
            },
            CmdSpec::Checksum {
                buffer: IdSpec::Ref(0),
                reserved: None,
                slot: SlotSpec::Natural,
            },
        ]),
        batch(vec![
            CmdSpec::Unmap {
                attach: IdSpec::Id(1),
                direction: 0,
            },
            dma32_attach(IdSpec::Id(1)),
            map(IdSpec::Ref(1), SlotSpec::Natural),
            CmdSpec::Checksum {
                buffer: IdSpec::Id(1),
                reserved: None,
                slot: SlotSpec::Natural,
            },
            CmdSpec::Phys {
                buffer: IdSpec::Id(1),
                reserved: None,
                slot: SlotSpec::Natural,
            },
        ]),
        batch(vec![
            CmdSpec::Unmap {
                attach: IdSpec::Id(2),
                direction: 0,
            },
            CmdSpec::Detach {
                attach: IdSpec::Id(1),
                reserved: None,
            },
            CmdSpec::Detach {
                attach: IdSpec::Id(2),
                reserved: None,
            },
            CmdSpec::Free {
                buffer: IdSpec::Id(1),
                reserved: None,
            },
        ]),
    ]
}

fn default_queue() -> QueueSetup {
    QueueSetup {
        size: QueueSize::Pow2(8),
        desc: None,
        avail: None,
        used: None,
        base: None,
        not_started: false,
        disabled: false,
    }
}

fn chain(batch: BatchSpec, splits: Vec<u16>, indirect: bool) -> ChainSpec {
    ChainSpec {
        request: RequestSpec::Batch(batch),
        splits,
        writable: None,
        indirect,
    }
}

/// Each share opcode as a driver would send it (a raw command: the
/// device does not offer `CENALLOC_F_SHARE` yet and refuses them as
/// unknown), naming `buffer`, with its version-1 payload followed by
/// `tail` (empty, zeros a newer driver may send, or non-zero bytes), and
/// a slot of its version-1 answer.
fn share_commands(buffer: u32, tail: &[u8]) -> Vec<CmdSpec> {
    let group = encode_name("camera");
    let requests: [(u16, Vec<u8>); 5] = [
        (
            CENALLOC_CMD_SHARE,
            ShareReq {
                buffer_id: buffer,
                flags: CENALLOC_SHARE_F_WRITABLE,
                group,
                reserved: 0,
            }
            .as_slice()
            .to_vec(),
        ),
        (
            CENALLOC_CMD_UNSHARE,
            UnshareReq {
                buffer_id: buffer,
                flags: 0,
                token: 0x5eed,
            }
            .as_slice()
            .to_vec(),
        ),
        (
            CENALLOC_CMD_IMPORT,
            ImportReq {
                token: PEER_TOKEN_ALIAS,
                flags: CENALLOC_IMPORT_F_WRITABLE,
                initial_mask: CENALLOC_KIND_SYSTEM,
            }
            .as_slice()
            .to_vec(),
        ),
        (
            CENALLOC_CMD_RELEASE,
            ReleaseReq {
                buffer_id: buffer,
                reserved: 0,
            }
            .as_slice()
            .to_vec(),
        ),
        (
            CENALLOC_CMD_REVOKE_ACK,
            RevokeAckReq {
                buffer_id: buffer,
                reserved: 0,
                serial: 1,
            }
            .as_slice()
            .to_vec(),
        ),
    ];
    requests
        .into_iter()
        .zip(SHARE_PAYLOADS)
        .map(|((opcode, mut payload), (_, len, resp_len))| {
            assert_eq!(payload.len(), len);
            payload.extend_from_slice(tail);
            CmdSpec::Raw {
                opcode,
                flags: 0,
                reserved: 0,
                payload,
                resp_len: resp_len as u32,
            }
        })
        .collect()
}

/// The committed seed inputs: (target, file name, input bytes).
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    // Through the rings: donate (the case's own donation), map, fill,
    // migrate, free, with event buffers posted, one chain per kick.
    for (name, event_idx, indirect) in [
        ("seed-map-fill-migrate", false, false),
        ("seed-map-fill-migrate-event-idx-indirect", true, true),
    ] {
        let mut steps = vec![Step::EventBuffers(vec![16, 16, 16, 16])];
        let splits = if indirect { vec![8, 24] } else { Vec::new() };
        for batch in map_fill_migrate_free(16) {
            steps.push(Step::Chains(vec![chain(batch, splits.clone(), indirect)]));
            steps.push(Step::Kick);
            steps.push(Step::KickEvents);
        }
        let case = RingCase {
            event_idx,
            control: default_queue(),
            events: default_queue(),
            donate: true,
            steps,
        };
        seeds.push(("ring", name, encode(&case)));
    }
    // Straight to the executor: the same life cycle with a migration,
    // then a first MAP whose answer does not fit (it keeps the backing it
    // allocated: the narrowed did-nothing oracle).
    let mut batches = map_fill_migrate_free(4);
    batches.push(batch(vec![
        CmdSpec::Create {
            size: SizeSpec::Pages(2),
            flags: None,
            mask: None,
        },
        system_attach(IdSpec::Ref(0)),
        CmdSpec::Stats {
            slot: SlotSpec::Natural,
        },
    ]));
    batches.push(batch(vec![map(IdSpec::Id(3), SlotSpec::Words(1))]));
    let case = BatchCase {
        donate: true,
        batches: batches
            .into_iter()
            .map(|b| (b, WritableSpec::Exact))
            .collect(),
    };
    seeds.push(("batch", "seed-map-fill-migrate-free", encode(&case)));
    // The share opcodes (19-23), each alone in a batch after a buffer was
    // created and mapped: their version-1 payloads, then longer ones
    // (zeros, then non-zero bytes past the version-1 size). Refused as
    // unknown today, each batch checked to change nothing; the commands
    // to start from once the device serves them.
    let mut batches = vec![batch(vec![
        CmdSpec::Create {
            size: SizeSpec::Pages(2),
            flags: None,
            mask: None,
        },
        system_attach(IdSpec::Ref(0)),
        map(IdSpec::Ref(1), SlotSpec::Natural),
    ])];
    for tail in [&[][..], &[0; 8], &[0xff; 8]] {
        batches.extend(
            share_commands(1, tail)
                .into_iter()
                .map(|cmd| batch(vec![cmd])),
        );
    }
    let case = BatchCase {
        donate: true,
        batches: batches
            .into_iter()
            .map(|b| (b, WritableSpec::Exact))
            .collect(),
    };
    seeds.push(("batch", "seed-share-opcodes", encode(&case)));
    // Sharing on the linked device (the unlinked run refuses it all): A
    // shares buffer 1 before its first map, which places it in the share
    // pool and maps beta's window; A imports beta's share (the alias) as
    // buffer 2, attaches and maps it; A frees buffer 1 (parked until
    // beta's window goes), then releases its import.
    let cmds = share_commands(1, &[]);
    let (share, import, release) = (cmds[0].clone(), cmds[2].clone(), cmds[3].clone());
    let release_import = match release {
        CmdSpec::Raw {
            opcode,
            flags,
            reserved,
            resp_len,
            ..
        } => CmdSpec::Raw {
            opcode,
            flags,
            reserved,
            payload: ReleaseReq {
                buffer_id: 2,
                reserved: 0,
            }
            .as_slice()
            .to_vec(),
            resp_len,
        },
        other => other,
    };
    let batches = vec![
        batch(vec![CmdSpec::Create {
            size: SizeSpec::Pages(2),
            flags: None,
            mask: None,
        }]),
        batch(vec![share]),
        batch(vec![
            system_attach(IdSpec::Id(1)),
            map(IdSpec::Ref(0), SlotSpec::Natural),
        ]),
        batch(vec![import]),
        batch(vec![
            system_attach(IdSpec::Id(2)),
            map(IdSpec::Ref(0), SlotSpec::Natural),
        ]),
        batch(vec![CmdSpec::Free {
            buffer: IdSpec::Id(1),
            reserved: None,
        }]),
        batch(vec![release_import]),
    ];
    let case = BatchCase {
        donate: true,
        batches: batches
            .into_iter()
            .map(|b| (b, WritableSpec::Exact))
            .collect(),
    };
    seeds.push(("batch", "seed-share-linked", encode(&case)));
    seeds
}

/// Checks [`encode`] against `arbitrary` on cases decoded from
/// pseudo-random bytes (every variant comes up): encoding a decoded case
/// and decoding it again gives the same case. Returns the cases checked.
pub fn encoder_round_trips() -> usize {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut checked = 0;
    for round in 0..512usize {
        let bytes: Vec<u8> = (0..(round * 13) % 2048)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        if let Ok(case) = RingCase::arbitrary(&mut Unstructured::new(&bytes)) {
            let again = RingCase::arbitrary(&mut Unstructured::new(&encode(&case)));
            let again = format!("{:?}", again.ok());
            assert_eq!(again, format!("{:?}", Some(case)), "ring case re-encoded");
            checked += 1;
        }
        if let Ok(case) = BatchCase::arbitrary(&mut Unstructured::new(&bytes)) {
            let again = BatchCase::arbitrary(&mut Unstructured::new(&encode(&case)));
            let again = format!("{:?}", again.ok());
            assert_eq!(again, format!("{:?}", Some(case)), "batch case re-encoded");
            checked += 1;
        }
    }
    checked
}
