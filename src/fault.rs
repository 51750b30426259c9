//! A hostile host, for tests only (cargo feature `fault-injection`).
//!
//! The guest driver must not trust its device. To test that, this module
//! rewrites the device's answers on purpose *after* the executor produced
//! them: the executor, the model and the queue glue stay what they are; the
//! glue only hands each answer (and the config space) through
//! [`Injector::rewrite_answer`] / [`Injector::rewrite_config`] when an
//! injector is configured. Normal builds have neither this module nor the
//! `--fault` and `--fault-file` options.
//!
//! A fault is named by a short spec (`--fault SPEC`, or the contents of the
//! file given with `--fault-file`, re-read whenever it changes, so that a
//! test can switch faults while the guest runs; an empty file or `none` is
//! an honest device):
//!
//! | spec | what the device answers |
//! | --- | --- |
//! | `split-segment` | MAP: its first segment of 2+ pages cut in two (same memory, one more segment) |
//! | `extra-segment` | MAP: one more segment (a copy of the last), more bytes than the buffer |
//! | `fewer-segments` | MAP: its last segment dropped (or the only one halved) |
//! | `outside-pool` | MAP: first segment moved to guest-physical 0 |
//! | `moved-backing` | MAP of existing backing (no ALLOCATED flag): first segment one page further |
//! | `shared-backing` | MAP that allocated: the segments of the previous one that did, if they hold as many bytes (another buffer's live memory) |
//! | `contig-split` | MAP of type CONTIG: its one segment cut in two |
//! | `dma32-high` | MAP: every segment 4 GiB higher |
//! | `map-type` | MAP: SG and CONTIG swapped (a private type becomes SG) |
//! | `allocator-id` | MAP: allocator 99 |
//! | `needed:N` | MAP: -ENOSPC, needing an N-byte answer (then, asked with N bytes, the real answer) |
//! | `attach-type` | ATTACH: map type 0x8123, which nobody lists |
//! | `lease-outside-pool` | LEASE: its first extent moved to guest-physical 0 |
//! | `info-placement` | GET_INFO: the first allocator's placement with `CENALLOC_PLACE_DMA32` flipped (config space keeps the truth) |
//! | `max-segments-huge` | config space: max_segments 0xffffffff (read at probe) |
//! | `max-batch:N` | config space: max_batch N (the device still takes 64) |
//! | `pool-align:N` | config space: the first pool's align N (read at probe) |
//! | `refuse-attach:MASK` | ATTACH of constraint mask MASK: refused (-EINVAL), as the request reaches the executor with mask 0 |
//! | `short-answer[:OP]` | chains (with an OP command): only the batch response written |
//! | `status-garbage[:OP]` | commands (OP only): status 0x1234, neither 0 nor an errno |
//! | `errno:OP:N` | OP commands: status -N, no answer body (an errno the protocol never answers, e.g. 512, -ERESTARTSYS) |
//! | `no-answer[:OP]` | chains (with an OP command): never returned to the guest |
//! | `slow:MS` | every chain answered MS milliseconds late |
//!
//! OP is an opcode name: `pool-add`, `map`, `create`, `attach`, ... MASK is
//! a number (`0x100`). `refuse-attach` is the one fault that changes a
//! request instead of an answer: a refusal the device's state agrees with.
//! A MAP
//! answer that needs one more segment than its slot holds becomes -ENOSPC
//! with the size it needs, as a device would answer; the guest then asks
//! again with room, and gets the rewritten answer.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use log::{info, warn};
use vm_memory::ByteValued;

use crate::protocol::*;

/// Most a `slow` fault may delay one chain.
pub const MAX_DELAY_MS: u64 = 60_000;

/// A fault the device injects into its answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    SplitSegment,
    ExtraSegment,
    FewerSegments,
    OutsidePool,
    MovedBacking,
    SharedBacking,
    ContigSplit,
    Dma32High,
    MapType,
    AllocatorId,
    Needed(u32),
    AttachType,
    LeaseOutsidePool,
    InfoPlacement,
    MaxSegmentsHuge,
    MaxBatch(u32),
    PoolAlign(u32),
    RefuseAttach(u32),
    ShortAnswer(Option<u16>),
    StatusGarbage(Option<u16>),
    /// OP's answers get status -N (1..=4095).
    Errno(u16, u32),
    NoAnswer(Option<u16>),
    Slow(u64),
}

/// Why a fault spec is not one.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum Error {
    #[error("unknown fault {0:?}")]
    Unknown(String),
    #[error("unknown opcode {0:?} in a fault spec")]
    Opcode(String),
    #[error("fault {0:?} takes no argument")]
    Argument(String),
    #[error("slow:MS needs milliseconds 1..={MAX_DELAY_MS}, not {0:?}")]
    Delay(String),
    #[error("{0:?} needs a number argument")]
    Number(String),
}

fn number(spec: &str, arg: Option<&str>) -> Result<u32, Error> {
    let arg = arg.ok_or_else(|| Error::Number(spec.to_string()))?;
    let parsed = match arg.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => arg.parse(),
    };
    parsed.map_err(|_| Error::Number(spec.to_string()))
}

const OPCODES: [(&str, u16); 17] = [
    ("get-info", CENALLOC_CMD_GET_INFO),
    ("pool-add", CENALLOC_CMD_POOL_ADD),
    ("create", CENALLOC_CMD_CREATE),
    ("attach", CENALLOC_CMD_ATTACH),
    ("detach", CENALLOC_CMD_DETACH),
    ("map", CENALLOC_CMD_MAP),
    ("unmap", CENALLOC_CMD_UNMAP),
    ("free", CENALLOC_CMD_FREE),
    ("phys", CENALLOC_CMD_PHYS),
    ("sync", CENALLOC_CMD_SYNC),
    ("stats", CENALLOC_CMD_STATS),
    ("fill", CENALLOC_CMD_FILL),
    ("checksum", CENALLOC_CMD_CHECKSUM),
    ("pool-remove", CENALLOC_CMD_POOL_REMOVE),
    ("lease", CENALLOC_CMD_LEASE),
    ("lease-return", CENALLOC_CMD_LEASE_RETURN),
    ("leased-map", CENALLOC_CMD_LEASED_MAP),
];

fn opcode(name: &str) -> Result<u16, Error> {
    OPCODES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, op)| op)
        .ok_or_else(|| Error::Opcode(name.to_string()))
}

impl FromStr for Fault {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self, Error> {
        let spec = spec.trim();
        let (name, arg) = match spec.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (spec, None),
        };
        let op = || arg.map(opcode).transpose();
        let plain = |fault| match arg {
            None => Ok(fault),
            Some(_) => Err(Error::Argument(spec.to_string())),
        };
        match name {
            "" | "none" => plain(Fault::None),
            "split-segment" => plain(Fault::SplitSegment),
            "extra-segment" => plain(Fault::ExtraSegment),
            "fewer-segments" => plain(Fault::FewerSegments),
            "outside-pool" => plain(Fault::OutsidePool),
            "moved-backing" => plain(Fault::MovedBacking),
            "shared-backing" => plain(Fault::SharedBacking),
            "contig-split" => plain(Fault::ContigSplit),
            "dma32-high" => plain(Fault::Dma32High),
            "map-type" => plain(Fault::MapType),
            "allocator-id" => plain(Fault::AllocatorId),
            "needed" => Ok(Fault::Needed(number(spec, arg)?)),
            "attach-type" => plain(Fault::AttachType),
            "lease-outside-pool" => plain(Fault::LeaseOutsidePool),
            "info-placement" => plain(Fault::InfoPlacement),
            "max-segments-huge" => plain(Fault::MaxSegmentsHuge),
            "max-batch" => Ok(Fault::MaxBatch(number(spec, arg)?)),
            "pool-align" => Ok(Fault::PoolAlign(number(spec, arg)?)),
            "errno" => {
                let (op, errno) = arg
                    .and_then(|arg| arg.split_once(':'))
                    .ok_or_else(|| Error::Number(spec.to_string()))?;
                let errno = number(spec, Some(errno))?;
                if !(1..=4095).contains(&errno) {
                    return Err(Error::Number(spec.to_string()));
                }
                Ok(Fault::Errno(opcode(op)?, errno))
            }
            "refuse-attach" => Ok(Fault::RefuseAttach(number(spec, arg)?)),
            "short-answer" => Ok(Fault::ShortAnswer(op()?)),
            "status-garbage" => Ok(Fault::StatusGarbage(op()?)),
            "no-answer" => Ok(Fault::NoAnswer(op()?)),
            "slow" => arg
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|ms| (1..=MAX_DELAY_MS).contains(ms))
                .map(Fault::Slow)
                .ok_or_else(|| Error::Delay(spec.to_string())),
            _ => Err(Error::Unknown(spec.to_string())),
        }
    }
}

/// What to do with one answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write these bytes (the answer, rewritten or not).
    Answer(Vec<u8>),
    /// Never return the chain.
    Withhold,
}

/// Where the fault comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// One fault for the daemon's life (`--fault`).
    Fixed(Fault),
    /// The contents of a file, re-read when it changes (`--fault-file`).
    File(PathBuf),
}

/// The fault of one front-end connection.
#[derive(Debug)]
pub struct Injector {
    source: Source,
    /// Inode, modification time and length of the file when last read
    /// (a writer that renames a new file into place always changes it).
    stamp: Option<(u64, SystemTime, u64)>,
    current: Fault,
    /// The request as the driver sent it, and its MAPs whose slot was
    /// hidden from the executor (command index, slot bytes).
    original: Vec<u8>,
    hidden: Vec<(usize, u32)>,
    /// The slot the driver asks again with: a MAP of that slot runs.
    room: Option<u32>,
    /// The fault of the chain being answered (read once per chain).
    chain_fault: Fault,
    /// `shared-backing`: the segments of the last MAP that allocated.
    shared: Option<Vec<Range>>,
}

impl Injector {
    pub fn new(source: Source) -> Self {
        let current = match &source {
            Source::Fixed(fault) => *fault,
            Source::File(_) => Fault::None,
        };
        let mut injector = Injector {
            source,
            stamp: None,
            current,
            original: Vec::new(),
            hidden: Vec::new(),
            room: None,
            chain_fault: Fault::None,
            shared: None,
        };
        injector.refresh();
        injector
    }

    /// The fault in force now (the file re-read if it changed).
    pub fn current(&mut self) -> Fault {
        self.refresh();
        self.current
    }

    fn refresh(&mut self) {
        let Source::File(path) = &self.source else {
            return;
        };
        let stamp = fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.ino(), m.modified().ok()?, m.len())));
        if stamp == self.stamp {
            return;
        }
        self.stamp = stamp;
        let text = fs::read_to_string(path).unwrap_or_default();
        let fault = text.parse().unwrap_or_else(|e| {
            warn!(
                "fault injection: {}: {e}; answering honestly",
                path.display()
            );
            Fault::None
        });
        if fault != self.current {
            info!("fault injection: now {fault:?}");
        }
        self.current = fault;
    }

    /// Rewrites the answer `response` to the batch `request`.
    pub fn rewrite_answer(&mut self, request: &[u8], response: Vec<u8>) -> Verdict {
        rewrite(self.current(), request, response)
    }

    /// Rewrites the config space bytes starting at `offset`.
    pub fn rewrite_config(&mut self, offset: u32, bytes: &mut [u8]) {
        let (field, value) = match self.current() {
            Fault::MaxSegmentsHuge => (std::mem::offset_of!(Config, max_segments), u32::MAX),
            Fault::MaxBatch(n) => (std::mem::offset_of!(Config, max_batch), n),
            Fault::PoolAlign(n) => (
                std::mem::offset_of!(Config, pools) + std::mem::offset_of!(ConfigPool, align),
                n,
            ),
            _ => return,
        };
        for (i, byte) in value.to_le_bytes().iter().enumerate() {
            let at = (field + i).checked_sub(offset as usize);
            if let Some(slot) = at.and_then(|at| bytes.get_mut(at)) {
                *slot = *byte;
            }
        }
    }
}

/// A fault whose MAP answers need more room than the driver gave, or
/// claim to: the injector makes the device answer -ENOSPC first (a MAP
/// with too small a slot maps nothing), so that the device's state agrees.
fn needs_room(fault: Fault) -> bool {
    matches!(
        fault,
        Fault::SplitSegment | Fault::ExtraSegment | Fault::ContigSplit | Fault::Needed(_)
    )
}

impl Injector {
    /// Hides the slot of every MAP of `request` from the executor, but one
    /// sent with the room asked for last time.
    fn hide_map_slots(&mut self, request: &mut [u8]) {
        self.original = request.to_vec();
        let Some(batch) = read::<BatchHdr>(request, 0) else {
            return;
        };
        let mut offset = size_of::<BatchHdr>();
        for index in 0..batch.num_cmds as usize {
            let Some(mut cmd) = read::<CmdHdr>(request, offset) else {
                return;
            };
            if cmd.opcode == CENALLOC_CMD_MAP {
                if self.room == Some(cmd.resp_len) {
                    self.room = None;
                } else {
                    self.hidden.push((index, cmd.resp_len));
                    cmd.resp_len = 0;
                    write(request, offset, &cmd);
                }
            }
            offset += size_of::<CmdHdr>() + cmd.len as usize;
        }
    }

    /// Gives the hidden MAP slots back to the answer (zeroed) and asks for
    /// one more segment's room where the device said -ENOSPC.
    fn restore_map_slots(&mut self, fault: Fault, response: Vec<u8>) -> Vec<u8> {
        let Some(batch) = read::<BatchHdr>(&self.original, 0) else {
            return response;
        };
        let mut out = response
            .get(..size_of::<BatchResp>())
            .unwrap_or(&[])
            .to_vec();
        let (mut offset, mut from) = (size_of::<BatchHdr>(), size_of::<BatchResp>());
        for index in 0..batch.num_cmds as usize {
            let Some(cmd) = read::<CmdHdr>(&self.original, offset) else {
                break;
            };
            offset += size_of::<CmdHdr>() + cmd.len as usize;
            let hidden = self.hidden.iter().any(|&(i, _)| i == index);
            let got = if hidden { 0 } else { cmd.resp_len as usize };
            let Some(hdr_bytes) = response.get(from..from + size_of::<RespHdr>()) else {
                break;
            };
            let mut hdr: RespHdr = read(hdr_bytes, 0).unwrap_or_default();
            if hidden && hdr.status == status_of_errno(libc::ENOSPC) {
                hdr.needed = match fault {
                    Fault::Needed(n) => n,
                    _ => hdr.needed.saturating_add(size_of::<Range>() as u32),
                };
                self.room = Some(hdr.needed);
            }
            out.extend_from_slice(hdr.as_slice());
            let slot = from + size_of::<RespHdr>();
            match response.get(slot..slot + got) {
                Some(bytes) if !hidden => out.extend_from_slice(bytes),
                _ => out.resize(out.len() + cmd.resp_len as usize, 0),
            }
            from = slot + got;
        }
        out
    }
}

impl crate::chain::Filter for Injector {
    fn request(&mut self, request: &mut [u8]) {
        self.hidden.clear();
        self.chain_fault = self.current();
        match self.chain_fault {
            Fault::RefuseAttach(mask) => refuse_attach(mask, request),
            fault if needs_room(fault) => self.hide_map_slots(request),
            _ => {}
        }
    }

    fn answer(&mut self, request: &[u8], response: Vec<u8>) -> Option<Vec<u8>> {
        let fault = self.chain_fault;
        let (request, response) = if self.hidden.is_empty() {
            (request.to_vec(), response)
        } else {
            let restored = self.restore_map_slots(fault, response);
            (std::mem::take(&mut self.original), restored)
        };
        self.hidden.clear();
        if fault != Fault::SharedBacking {
            self.shared = None;
        }
        match rewrite(fault, &request, response) {
            Verdict::Answer(mut bytes) => {
                if fault == Fault::SharedBacking {
                    for cmd in commands(&request, &bytes) {
                        if cmd.opcode == CENALLOC_CMD_MAP {
                            share_backing(&mut self.shared, &cmd, &mut bytes);
                        }
                    }
                }
                Some(bytes)
            }
            Verdict::Withhold => None,
        }
    }
}

/// `shared-backing`: a MAP answer that allocated is remembered, or, when
/// one is remembered that holds as many bytes, rewritten to name its
/// segments (memory that backs another live buffer).
fn share_backing(shared: &mut Option<Vec<Range>>, cmd: &Command, response: &mut [u8]) {
    let at = cmd.response + size_of::<RespHdr>();
    let (Some(mut hdr), Some(mut map)) = (
        read::<RespHdr>(response, cmd.response),
        read::<MapResp>(response, at),
    ) else {
        return;
    };
    if hdr.status != 0 || map.flags & CENALLOC_MAP_F_ALLOCATED == 0 {
        return;
    }
    let first = at + size_of::<MapResp>();
    let segments: Vec<Range> = (0..map.num_segments as usize)
        .map_while(|i| read::<Range>(response, first + i * size_of::<Range>()))
        .collect();
    if segments.len() != map.num_segments as usize {
        return;
    }
    let bytes = |segs: &[Range]| segs.iter().map(|s| s.len).sum::<u64>();
    let Some(other) = shared.take() else {
        *shared = Some(segments);
        return;
    };
    let need = size_of::<MapResp>() + other.len() * size_of::<Range>();
    if bytes(&other) != bytes(&segments) || other == segments || need > cmd.slot {
        *shared = Some(segments);
        return;
    }
    map.num_segments = other.len() as u32;
    write(response, at, &map);
    for (i, segment) in other.iter().enumerate() {
        write(response, first + i * size_of::<Range>(), segment);
    }
    hdr.len = need as u32;
    write(response, cmd.response, &hdr);
    *shared = Some(other);
}

/// Makes every ATTACH of constraint mask `mask` in `request` one of mask 0,
/// which the device refuses.
pub fn refuse_attach(mask: u32, request: &mut [u8]) {
    let Some(batch) = read::<BatchHdr>(request, 0) else {
        return;
    };
    let mut offset = size_of::<BatchHdr>();
    for _ in 0..batch.num_cmds {
        let Some(cmd) = read::<CmdHdr>(request, offset) else {
            return;
        };
        let payload = offset + size_of::<CmdHdr>();
        if cmd.opcode == CENALLOC_CMD_ATTACH {
            if let Some(mut attach) = read::<AttachReq>(request, payload) {
                if attach.mask == mask {
                    attach.mask = 0;
                    write(request, payload, &attach);
                }
            }
        }
        offset = payload + cmd.len as usize;
    }
}

/// One command of a batch: opcode, payload offset in the request, response
/// header offset and slot length in the response.
struct Command {
    opcode: u16,
    payload: usize,
    response: usize,
    slot: usize,
}

fn read<T: ByteValued + Default>(bytes: &[u8], offset: usize) -> Option<T> {
    let src = bytes.get(offset..offset.checked_add(size_of::<T>())?)?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Some(value)
}

fn write<T: ByteValued>(bytes: &mut [u8], offset: usize, value: &T) {
    if let Some(dst) = bytes.get_mut(offset..offset + size_of::<T>()) {
        dst.copy_from_slice(value.as_slice());
    }
}

/// The commands of a batch the executor answered (framing already checked
/// by it; anything odd here just ends the list).
fn commands(request: &[u8], response: &[u8]) -> Vec<Command> {
    let mut out = Vec::new();
    let Some(batch) = read::<BatchHdr>(request, 0) else {
        return out;
    };
    let mut offset = size_of::<BatchHdr>();
    let mut resp = size_of::<BatchResp>();
    for _ in 0..batch.num_cmds {
        let Some(cmd) = read::<CmdHdr>(request, offset) else {
            break;
        };
        let slot = cmd.resp_len as usize;
        if resp + size_of::<RespHdr>() + slot > response.len() {
            break;
        }
        out.push(Command {
            opcode: cmd.opcode,
            payload: offset + size_of::<CmdHdr>(),
            response: resp,
            slot,
        });
        offset += size_of::<CmdHdr>() + cmd.len as usize;
        resp += size_of::<RespHdr>() + slot;
    }
    out
}

fn matches(filter: Option<u16>, commands: &[Command]) -> bool {
    filter.map_or(true, |op| commands.iter().any(|c| c.opcode == op))
}

/// Applies `fault` to the answer `response` of the batch `request`.
pub fn rewrite(fault: Fault, request: &[u8], mut response: Vec<u8>) -> Verdict {
    let cmds = commands(request, &response);
    match fault {
        Fault::None
        | Fault::MaxSegmentsHuge
        | Fault::MaxBatch(_)
        | Fault::PoolAlign(_)
        | Fault::RefuseAttach(_) => {}
        Fault::Slow(ms) => std::thread::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))),
        Fault::NoAnswer(filter) => {
            if matches(filter, &cmds) {
                return Verdict::Withhold;
            }
        }
        Fault::ShortAnswer(filter) => {
            if matches(filter, &cmds) {
                response.truncate(size_of::<BatchResp>());
            }
        }
        Fault::StatusGarbage(filter) => {
            for cmd in &cmds {
                if filter.map_or(true, |op| op == cmd.opcode) {
                    if let Some(mut hdr) = read::<RespHdr>(&response, cmd.response) {
                        hdr.status = 0x1234;
                        write(&mut response, cmd.response, &hdr);
                    }
                }
            }
        }
        Fault::InfoPlacement => {
            for cmd in cmds.iter().filter(|c| c.opcode == CENALLOC_CMD_GET_INFO) {
                let at = cmd.response + size_of::<RespHdr>();
                let first = at + size_of::<InfoResp>();
                if let (Some(hdr), Some(info), Some(mut allocator)) = (
                    read::<RespHdr>(&response, cmd.response),
                    read::<InfoResp>(&response, at),
                    read::<AllocatorInfo>(&response, first),
                ) {
                    if hdr.status == 0 && info.num_allocators > 0 {
                        allocator.placement ^= CENALLOC_PLACE_DMA32;
                        write(&mut response, first, &allocator);
                    }
                }
            }
        }
        Fault::Errno(op, errno) => {
            for cmd in cmds.iter().filter(|c| c.opcode == op) {
                if let Some(mut hdr) = read::<RespHdr>(&response, cmd.response) {
                    hdr.status = (errno as i32).wrapping_neg() as u32;
                    hdr.len = 0;
                    write(&mut response, cmd.response, &hdr);
                }
            }
        }
        Fault::AttachType => {
            for cmd in cmds.iter().filter(|c| c.opcode == CENALLOC_CMD_ATTACH) {
                let at = cmd.response + size_of::<RespHdr>();
                if let (Some(hdr), Some(mut attach)) = (
                    read::<RespHdr>(&response, cmd.response),
                    read::<AttachResp>(&response, at),
                ) {
                    if hdr.status == 0 {
                        attach.map_type = 0x8123;
                        write(&mut response, at, &attach);
                    }
                }
            }
        }
        Fault::LeaseOutsidePool => {
            for cmd in cmds.iter().filter(|c| c.opcode == CENALLOC_CMD_LEASE) {
                let at = cmd.response + size_of::<RespHdr>();
                let first = at + size_of::<LeaseResp>();
                if let (Some(hdr), Some(lease), Some(mut extent)) = (
                    read::<RespHdr>(&response, cmd.response),
                    read::<LeaseResp>(&response, at),
                    read::<Range>(&response, first),
                ) {
                    if hdr.status == 0 && lease.num_extents > 0 {
                        extent.addr = 0;
                        write(&mut response, first, &extent);
                    }
                }
            }
        }
        _ => {
            for cmd in cmds.iter().filter(|c| c.opcode == CENALLOC_CMD_MAP) {
                rewrite_map(fault, request, cmd, &mut response);
            }
        }
    }
    Verdict::Answer(response)
}

/// Rewrites one successful MAP answer.
fn rewrite_map(fault: Fault, request: &[u8], cmd: &Command, response: &mut [u8]) {
    let Some(mut hdr) = read::<RespHdr>(response, cmd.response) else {
        return;
    };
    let at = cmd.response + size_of::<RespHdr>();
    if hdr.status != 0 || read::<MapReq>(request, cmd.payload).is_none() {
        return;
    }
    let Some(mut map) = read::<MapResp>(response, at) else {
        return;
    };
    let first = at + size_of::<MapResp>();
    let n = map.num_segments as usize;
    let mut segments: Vec<Range> = (0..n)
        .filter_map(|i| read::<Range>(response, first + i * size_of::<Range>()))
        .collect();
    if segments.len() != n || n == 0 {
        return;
    }
    match fault {
        Fault::SplitSegment => {
            let Some(i) = segments
                .iter()
                .position(|s| s.len >= 2 * CENALLOC_PAGE_SIZE)
            else {
                return;
            };
            split(&mut segments, i);
        }
        Fault::ContigSplit => {
            if map.map_type != CENALLOC_MAP_CONTIG || segments[0].len < 2 * CENALLOC_PAGE_SIZE {
                return;
            }
            split(&mut segments, 0);
        }
        Fault::ExtraSegment => segments.push(segments[n - 1]),
        Fault::FewerSegments => {
            if n > 1 {
                segments.pop();
            } else {
                segments[0].len = (segments[0].len / 2) & !(CENALLOC_PAGE_SIZE - 1);
            }
        }
        Fault::OutsidePool => segments[0].addr = 0,
        Fault::MovedBacking => {
            if map.flags & CENALLOC_MAP_F_ALLOCATED != 0 {
                return;
            }
            segments[0].addr += CENALLOC_PAGE_SIZE;
        }
        Fault::Dma32High => {
            for segment in &mut segments {
                segment.addr += 1 << 32;
            }
        }
        Fault::MapType => {
            map.map_type = if map.map_type == CENALLOC_MAP_SG {
                CENALLOC_MAP_CONTIG
            } else {
                CENALLOC_MAP_SG
            };
        }
        Fault::AllocatorId => map.allocator_id = 99,
        _ => return,
    }
    let need = size_of::<MapResp>() + segments.len() * size_of::<Range>();
    if need > cmd.slot {
        // No room for the lie (the injector asks for room beforehand).
        return;
    }
    map.num_segments = segments.len() as u32;
    write(response, at, &map);
    for (i, segment) in segments.iter().enumerate() {
        write(response, first + i * size_of::<Range>(), segment);
    }
    hdr.len = need as u32;
    write(response, cmd.response, &hdr);
}

/// Cuts segment `i` in two page-aligned halves.
fn split(segments: &mut Vec<Range>, i: usize) {
    let first = (segments[i].len / 2) & !(CENALLOC_PAGE_SIZE - 1);
    let second = Range {
        addr: segments[i].addr + first,
        len: segments[i].len - first,
    };
    segments[i].len = first;
    segments.insert(i + 1, second);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of one MAP and the honest answer with `segments`.
    fn map_batch(
        map_type: u32,
        flags: u32,
        segments: &[(u64, u64)],
        slot_segments: usize,
    ) -> (Vec<u8>, Vec<u8>) {
        let slot = size_of::<MapResp>() + slot_segments * size_of::<Range>();
        let mut request = BatchHdr {
            num_cmds: 1,
            reserved: 0,
        }
        .as_slice()
        .to_vec();
        request.extend_from_slice(
            CmdHdr {
                opcode: CENALLOC_CMD_MAP,
                flags: 0,
                len: size_of::<MapReq>() as u32,
                resp_len: slot as u32,
                reserved: 0,
            }
            .as_slice(),
        );
        request.extend_from_slice(
            MapReq {
                attach_id: 1,
                direction: 0,
            }
            .as_slice(),
        );
        let size: u64 = segments.iter().map(|s| s.1).sum();
        let mut response = BatchResp {
            status: 0,
            num_done: 1,
        }
        .as_slice()
        .to_vec();
        let len = size_of::<MapResp>() + segments.len() * size_of::<Range>();
        response.extend_from_slice(
            RespHdr {
                status: 0,
                len: len as u32,
                needed: 0,
                reserved: 0,
            }
            .as_slice(),
        );
        let mut slot_bytes = MapResp {
            map_type,
            num_segments: segments.len() as u32,
            allocator_id: 0,
            flags,
            size,
        }
        .as_slice()
        .to_vec();
        for &(addr, len) in segments {
            slot_bytes.extend_from_slice(Range { addr, len }.as_slice());
        }
        slot_bytes.resize(slot, 0);
        response.extend_from_slice(&slot_bytes);
        (request, response)
    }

    fn answer(verdict: Verdict) -> Vec<u8> {
        match verdict {
            Verdict::Answer(bytes) => bytes,
            Verdict::Withhold => panic!("withheld"),
        }
    }

    fn parse_map(response: &[u8]) -> (RespHdr, MapResp, Vec<Range>) {
        let hdr: RespHdr = read(response, 8).unwrap();
        let map: MapResp = read(response, 24).unwrap();
        let segments = (0..map.num_segments as usize)
            .map(|i| read(response, 48 + i * 16).unwrap())
            .collect();
        (hdr, map, segments)
    }

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        assert_eq!("none".parse(), Ok(Fault::None));
        assert_eq!("shared-backing".parse(), Ok(Fault::SharedBacking));
        assert_eq!("".parse(), Ok(Fault::None));
        assert_eq!(" split-segment\n".parse(), Ok(Fault::SplitSegment));
        assert_eq!("lease-outside-pool".parse(), Ok(Fault::LeaseOutsidePool));
        assert_eq!(
            "short-answer:pool-add".parse(),
            Ok(Fault::ShortAnswer(Some(CENALLOC_CMD_POOL_ADD)))
        );
        assert_eq!("no-answer".parse(), Ok(Fault::NoAnswer(None)));
        assert_eq!("slow:250".parse(), Ok(Fault::Slow(250)));
        assert_eq!("needed:0xfffffff8".parse(), Ok(Fault::Needed(0xffff_fff8)));
        assert!(matches!("slow:0".parse::<Fault>(), Err(Error::Delay(_))));
        assert!(matches!("slow".parse::<Fault>(), Err(Error::Delay(_))));
        assert!(matches!(
            "short-answer:nope".parse::<Fault>(),
            Err(Error::Opcode(_))
        ));
        assert!(matches!(
            "map-type:map".parse::<Fault>(),
            Err(Error::Argument(_))
        ));
        assert!(matches!(
            "sideways".parse::<Fault>(),
            Err(Error::Unknown(_))
        ));
        assert_eq!("max-batch:2".parse(), Ok(Fault::MaxBatch(2)));
        assert_eq!(
            "refuse-attach:0x100".parse(),
            Ok(Fault::RefuseAttach(0x100))
        );
        assert!(matches!(
            "refuse-attach".parse::<Fault>(),
            Err(Error::Number(_))
        ));
        assert!(matches!(
            "max-batch:x".parse::<Fault>(),
            Err(Error::Number(_))
        ));
        assert_eq!("pool-align:0x3000".parse(), Ok(Fault::PoolAlign(0x3000)));
        assert_eq!("info-placement".parse(), Ok(Fault::InfoPlacement));
        assert_eq!(
            "errno:checksum:512".parse(),
            Ok(Fault::Errno(CENALLOC_CMD_CHECKSUM, 512))
        );
        for bad in [
            "errno",
            "errno:checksum",
            "errno:checksum:0",
            "errno:checksum:4096",
        ] {
            assert!(
                matches!(bad.parse::<Fault>(), Err(Error::Number(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "errno:nope:5".parse::<Fault>(),
            Err(Error::Opcode(_))
        ));
    }

    #[test]
    fn config_rewrite_sets_the_first_pools_align() {
        let mut injector = Injector::new(Source::Fixed(Fault::PoolAlign(0x3000)));
        let mut bytes = Config::default().as_slice().to_vec();
        injector.rewrite_config(0, &mut bytes);
        let read_back: Config = read(&bytes, 0).unwrap();
        assert_eq!(read_back.pools[0].align, 0x3000);
        assert_eq!(read_back.pools[1].align, 0);
    }

    #[test]
    fn refuse_attach_zeroes_only_the_mask_asked_for() {
        let attach = |mask| AttachReq {
            buffer_id: 1,
            mask,
            num_types: 1,
            reserved: 0,
            types: [CENALLOC_MAP_SG, 0, 0, 0, 0, 0, 0, 0],
        };
        let mut request = BatchHdr {
            num_cmds: 2,
            reserved: 0,
        }
        .as_slice()
        .to_vec();
        for mask in [0x100, CENALLOC_KIND_SYSTEM] {
            request.extend_from_slice(
                CmdHdr {
                    opcode: CENALLOC_CMD_ATTACH,
                    flags: 0,
                    len: size_of::<AttachReq>() as u32,
                    resp_len: 16,
                    reserved: 0,
                }
                .as_slice(),
            );
            request.extend_from_slice(attach(mask).as_slice());
        }
        refuse_attach(0x100, &mut request);
        let first: AttachReq = read(&request, 8 + 16).unwrap();
        let second: AttachReq = read(&request, 8 + 16 + 48 + 16).unwrap();
        assert_eq!((first.mask, second.mask), (0, CENALLOC_KIND_SYSTEM));
    }

    #[test]
    fn an_honest_device_is_left_alone() {
        let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
        assert_eq!(
            answer(rewrite(Fault::None, &request, response.clone())),
            response
        );
        // A MAP fault leaves other commands' answers alone.
        assert_eq!(
            answer(rewrite(Fault::AttachType, &request, response.clone())),
            response
        );
    }

    #[test]
    fn split_segment_keeps_the_memory_and_adds_a_segment() {
        let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
        let (hdr, map, segments) =
            parse_map(&answer(rewrite(Fault::SplitSegment, &request, response)));
        assert_eq!(hdr.status, 0);
        assert_eq!(map.num_segments, 2);
        assert_eq!(hdr.len, 24 + 32);
        assert_eq!(
            segments,
            vec![
                Range {
                    addr: 0x10000,
                    len: 0x2000
                },
                Range {
                    addr: 0x12000,
                    len: 0x2000
                }
            ]
        );
    }

    #[test]
    fn a_lie_without_room_is_not_told() {
        let (request, response) = map_batch(CENALLOC_MAP_SG, 0, &[(0x10000, 0x4000)], 1);
        let unchanged = answer(rewrite(Fault::SplitSegment, &request, response.clone()));
        assert_eq!(unchanged, response);
    }

    /// What the executor answers to a lone MAP whose slot is 0 bytes.
    fn enospc(needed: u32) -> Vec<u8> {
        let mut out = BatchResp {
            status: status_of_errno(libc::ENOSPC),
            num_done: 0,
        }
        .as_slice()
        .to_vec();
        out.extend_from_slice(
            RespHdr {
                status: status_of_errno(libc::ENOSPC),
                len: 0,
                needed,
                reserved: 0,
            }
            .as_slice(),
        );
        out
    }

    #[test]
    fn faults_that_need_room_ask_for_it_without_a_mapping() {
        use crate::chain::Filter;

        let mut injector = Injector::new(Source::Fixed(Fault::SplitSegment));
        let (original, _) = map_batch(CENALLOC_MAP_SG, 0, &[(0x10000, 0x4000)], 1);
        let mut request = original.clone();
        injector.request(&mut request);
        let cmd: CmdHdr = read(&request, 8).unwrap();
        assert_eq!(cmd.resp_len, 0, "the executor sees no slot: maps nothing");
        let restored = injector.answer(&request, enospc(24 + 16)).unwrap();
        assert_eq!(restored.len(), 8 + 16 + 24 + 16, "the driver's layout");
        let hdr: RespHdr = read(&restored, 8).unwrap();
        assert_eq!(
            (hdr.status as i32, hdr.needed),
            (-libc::ENOSPC, 24 + 32),
            "room for one more segment"
        );
        // Asked again with that room: the MAP runs and the lie fits.
        let (original, response) = map_batch(CENALLOC_MAP_SG, 0, &[(0x10000, 0x4000)], 2);
        let mut request = original.clone();
        injector.request(&mut request);
        assert_eq!(request, original, "not hidden");
        let (hdr, map, _) = parse_map(&injector.answer(&request, response).unwrap());
        assert_eq!((hdr.status, map.num_segments), (0, 2));

        let mut huge = Injector::new(Source::Fixed(Fault::Needed(24 + 16 * 1000)));
        let mut request = original.clone();
        huge.request(&mut request);
        let (hdr, _, _) = parse_map(&huge.answer(&request, enospc(24 + 16)).unwrap());
        assert_eq!(
            (hdr.status as i32, hdr.needed),
            (-libc::ENOSPC, 24 + 16 * 1000)
        );
        // Asked with that room, the real (smaller) answer comes.
        let (original, response) = map_batch(CENALLOC_MAP_SG, 0, &[(0x10000, 0x4000)], 1000);
        let mut request = original.clone();
        huge.request(&mut request);
        let cmd: CmdHdr = read(&request, 8).unwrap();
        assert_eq!(cmd.resp_len, 24 + 16 * 1000, "not hidden");
        assert_eq!(huge.answer(&request, response.clone()).unwrap(), response);
    }

    #[test]
    fn shared_backing_names_the_previous_allocation() {
        use crate::chain::Filter;

        let alloc = CENALLOC_MAP_F_ALLOCATED;
        let mut injector = Injector::new(Source::Fixed(Fault::SharedBacking));
        let mut run = |flags, segments: &[(u64, u64)]| {
            let (mut request, response) = map_batch(CENALLOC_MAP_SG, flags, segments, 4);
            injector.request(&mut request);
            let segments = parse_map(&injector.answer(&request, response).unwrap()).2;
            segments.iter().map(|r| (r.addr, r.len)).collect::<Vec<_>>()
        };
        let first = [(0x10000, 0x4000)];
        assert_eq!(run(alloc, &first), vec![(0x10000, 0x4000)], "remembered");
        // Not allocated: left alone.
        assert_eq!(run(0, &[(0x30000, 0x4000)]), vec![(0x30000, 0x4000)]);
        // Allocated, as many bytes in two segments: the first buffer's.
        assert_eq!(
            run(alloc, &[(0x20000, 0x2000), (0x28000, 0x2000)]),
            vec![(0x10000, 0x4000)]
        );
        // Another size: answered as it is, and remembered instead.
        assert_eq!(run(alloc, &[(0x40000, 0x8000)]), vec![(0x40000, 0x8000)]);
        assert_eq!(run(alloc, &[(0x50000, 0x8000)]), vec![(0x40000, 0x8000)]);
    }

    #[test]
    fn segment_count_and_placement_faults() {
        let two = [(0x10000, 0x2000), (0x20000, 0x2000)];
        let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &two, 4);
        let (_, map, segs) = parse_map(&answer(rewrite(
            Fault::ExtraSegment,
            &request,
            response.clone(),
        )));
        assert_eq!(
            (map.num_segments, segs[2]),
            (
                3,
                Range {
                    addr: 0x20000,
                    len: 0x2000
                }
            )
        );
        let (_, map, _) = parse_map(&answer(rewrite(
            Fault::FewerSegments,
            &request,
            response.clone(),
        )));
        assert_eq!(map.num_segments, 1);
        let (_, _, segs) = parse_map(&answer(rewrite(
            Fault::OutsidePool,
            &request,
            response.clone(),
        )));
        assert_eq!(segs[0].addr, 0);
        let (_, _, segs) = parse_map(&answer(rewrite(
            Fault::Dma32High,
            &request,
            response.clone(),
        )));
        assert_eq!((segs[0].addr, segs[1].addr), (0x1_0001_0000, 0x1_0002_0000));
        let (_, map, _) = parse_map(&answer(rewrite(Fault::MapType, &request, response.clone())));
        assert_eq!(map.map_type, CENALLOC_MAP_CONTIG);
        let (_, map, _) = parse_map(&answer(rewrite(
            Fault::AllocatorId,
            &request,
            response.clone(),
        )));
        assert_eq!(map.allocator_id, 99);
        // Only a map of existing backing moves.
        assert_eq!(
            answer(rewrite(Fault::MovedBacking, &request, response.clone())),
            response
        );
        let (request, response) = map_batch(CENALLOC_MAP_SG, 0, &two, 4);
        let (_, _, segs) = parse_map(&answer(rewrite(Fault::MovedBacking, &request, response)));
        assert_eq!(segs[0].addr, 0x11000);
    }

    #[test]
    fn lease_outside_pool_moves_the_first_extent_of_a_lease_answer() {
        let mut request = BatchHdr {
            num_cmds: 1,
            reserved: 0,
        }
        .as_slice()
        .to_vec();
        let slot = size_of::<LeaseResp>() + 2 * size_of::<Range>();
        request.extend_from_slice(
            CmdHdr {
                opcode: CENALLOC_CMD_LEASE,
                flags: 0,
                len: size_of::<LeaseReq>() as u32,
                resp_len: slot as u32,
                reserved: 0,
            }
            .as_slice(),
        );
        request.extend_from_slice(LeaseReq::default().as_slice());
        let mut response = BatchResp {
            status: 0,
            num_done: 1,
        }
        .as_slice()
        .to_vec();
        response.extend_from_slice(
            RespHdr {
                status: 0,
                len: slot as u32,
                ..Default::default()
            }
            .as_slice(),
        );
        response.extend_from_slice(
            LeaseResp {
                num_extents: 2,
                ..Default::default()
            }
            .as_slice(),
        );
        for addr in [0x10000u64, 0x11000] {
            response.extend_from_slice(Range { addr, len: 0x1000 }.as_slice());
        }
        let first = size_of::<BatchResp>() + size_of::<RespHdr>() + size_of::<LeaseResp>();
        let lied = answer(rewrite(Fault::LeaseOutsidePool, &request, response.clone()));
        let extent = |bytes: &[u8], i: usize| read::<Range>(bytes, first + i * 16).unwrap();
        assert_eq!((extent(&lied, 0).addr, extent(&lied, 1).addr), (0, 0x11000));
        // Nothing else is touched: a MAP answer stays as it was.
        let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
        assert_eq!(
            answer(rewrite(Fault::LeaseOutsidePool, &request, response.clone())),
            response
        );
    }

    #[test]
    fn info_placement_flips_dma32_of_the_first_allocator_only() {
        let mut request = BatchHdr {
            num_cmds: 1,
            reserved: 0,
        }
        .as_slice()
        .to_vec();
        let slot = size_of::<InfoResp>() + 2 * size_of::<AllocatorInfo>();
        request.extend_from_slice(
            CmdHdr {
                opcode: CENALLOC_CMD_GET_INFO,
                flags: 0,
                len: 0,
                resp_len: slot as u32,
                reserved: 0,
            }
            .as_slice(),
        );
        let mut response = BatchResp {
            status: 0,
            num_done: 1,
        }
        .as_slice()
        .to_vec();
        response.extend_from_slice(
            RespHdr {
                status: 0,
                len: slot as u32,
                ..Default::default()
            }
            .as_slice(),
        );
        response.extend_from_slice(
            InfoResp {
                num_allocators: 2,
                ..Default::default()
            }
            .as_slice(),
        );
        for placement in [0, CENALLOC_PLACE_DMA32] {
            response.extend_from_slice(
                AllocatorInfo {
                    placement,
                    ..Default::default()
                }
                .as_slice(),
            );
        }
        let first = size_of::<BatchResp>() + size_of::<RespHdr>() + size_of::<InfoResp>();
        let lied = answer(rewrite(Fault::InfoPlacement, &request, response.clone()));
        let placement = |bytes: &[u8], i: usize| {
            read::<AllocatorInfo>(bytes, first + i * size_of::<AllocatorInfo>())
                .unwrap()
                .placement
        };
        assert_eq!(
            (placement(&lied, 0), placement(&lied, 1)),
            (CENALLOC_PLACE_DMA32, CENALLOC_PLACE_DMA32)
        );
        let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
        assert_eq!(
            answer(rewrite(Fault::InfoPlacement, &request, response.clone())),
            response
        );
    }

    #[test]
    fn contig_split_only_touches_contiguous_maps() {
        let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
        assert_eq!(
            answer(rewrite(Fault::ContigSplit, &request, response.clone())),
            response
        );
        let (request, response) = map_batch(CENALLOC_MAP_CONTIG, 1, &[(0x10000, 0x4000)], 4);
        let (_, map, _) = parse_map(&answer(rewrite(Fault::ContigSplit, &request, response)));
        assert_eq!((map.map_type, map.num_segments), (CENALLOC_MAP_CONTIG, 2));
    }

    #[test]
    fn chain_level_faults() {
        let (request, response) = map_batch(CENALLOC_MAP_SG, 1, &[(0x10000, 0x4000)], 4);
        assert_eq!(
            rewrite(Fault::NoAnswer(None), &request, response.clone()),
            Verdict::Withhold
        );
        assert_eq!(
            answer(rewrite(
                Fault::NoAnswer(Some(CENALLOC_CMD_POOL_ADD)),
                &request,
                response.clone()
            )),
            response
        );
        assert_eq!(
            answer(rewrite(
                Fault::ShortAnswer(None),
                &request,
                response.clone()
            ))
            .len(),
            8
        );
        let garbled = answer(rewrite(
            Fault::StatusGarbage(None),
            &request,
            response.clone(),
        ));
        assert_eq!(read::<RespHdr>(&garbled, 8).unwrap().status, 0x1234);
        let errno = answer(rewrite(
            Fault::Errno(CENALLOC_CMD_MAP, 512),
            &request,
            response.clone(),
        ));
        let hdr = read::<RespHdr>(&errno, 8).unwrap();
        assert_eq!((hdr.status as i32, hdr.len), (-512, 0));
        assert_eq!(
            answer(rewrite(
                Fault::Errno(CENALLOC_CMD_CHECKSUM, 512),
                &request,
                response.clone()
            )),
            response
        );
        // A MAP the device did run is not turned into -ENOSPC.
        assert_eq!(
            answer(rewrite(Fault::Needed(1 << 20), &request, response.clone())),
            response
        );
    }

    #[test]
    fn config_rewrite_hits_max_segments_at_any_offset() {
        let mut injector = Injector::new(Source::Fixed(Fault::MaxSegmentsHuge));
        let config = Config::default();
        let mut bytes = config.as_slice().to_vec();
        injector.rewrite_config(0, &mut bytes);
        let read_back: Config = read(&bytes, 0).unwrap();
        assert_eq!(read_back.max_segments, u32::MAX);
        // A read of 4 bytes at the field's offset.
        let field = std::mem::offset_of!(Config, max_segments);
        let mut word = [0u8; 4];
        injector.rewrite_config(field as u32, &mut word);
        assert_eq!(u32::from_le_bytes(word), u32::MAX);
        let mut batch = Injector::new(Source::Fixed(Fault::MaxBatch(2)));
        let mut bytes = config.as_slice().to_vec();
        batch.rewrite_config(0, &mut bytes);
        let read_back: Config = read(&bytes, 0).unwrap();
        assert_eq!((read_back.max_batch, read_back.max_segments), (2, 0));
        let mut honest = Injector::new(Source::Fixed(Fault::None));
        let mut untouched = [0u8; 4];
        honest.rewrite_config(field as u32, &mut untouched);
        assert_eq!(untouched, [0; 4]);
    }

    #[test]
    fn the_fault_file_is_re_read_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("cenalloc-fault-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fault");
        // As run-vm does: a new file renamed into place.
        let set = |spec: &str| {
            let tmp = dir.join("fault.tmp");
            fs::write(&tmp, spec).unwrap();
            fs::rename(&tmp, &path).unwrap();
        };
        let mut injector = Injector::new(Source::File(path.clone()));
        assert_eq!(injector.current(), Fault::None, "no file: honest");
        set("map-type\n");
        assert_eq!(injector.current(), Fault::MapType);
        set("attach-type");
        assert_eq!(injector.current(), Fault::AttachType);
        set("dma32-high\n");
        assert_eq!(
            injector.current(),
            Fault::Dma32High,
            "same length, new file"
        );
        set("bogus-fault");
        assert_eq!(injector.current(), Fault::None, "a bad spec: honest");
        set("no-answer:map");
        assert_eq!(injector.current(), Fault::NoAnswer(Some(CENALLOC_CMD_MAP)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
