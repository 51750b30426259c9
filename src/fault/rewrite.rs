//! Rewriting one answer as a fault says, after the executor produced it.

use std::time::Duration;

use vm_memory::ByteValued;

use crate::protocol::*;

use super::{Fault, MAX_DELAY_MS};

/// What to do with one answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write these bytes (the answer, rewritten or not).
    Answer(Vec<u8>),
    /// Never return the chain.
    Withhold,
}

/// `shared-backing`: a MAP answer that allocated is remembered, or, when
/// one is remembered that holds as many bytes, rewritten to name its
/// segments (memory that backs another live buffer).
pub(super) fn share_backing(shared: &mut Option<Vec<Range>>, cmd: &Command, response: &mut [u8]) {
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
pub(super) struct Command {
    pub(super) opcode: u16,
    pub(super) payload: usize,
    pub(super) response: usize,
    pub(super) slot: usize,
}

pub(super) fn read<T: ByteValued + Default>(bytes: &[u8], offset: usize) -> Option<T> {
    let src = bytes.get(offset..offset.checked_add(size_of::<T>())?)?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Some(value)
}

pub(super) fn write<T: ByteValued>(bytes: &mut [u8], offset: usize, value: &T) {
    if let Some(dst) = bytes.get_mut(offset..offset + size_of::<T>()) {
        dst.copy_from_slice(value.as_slice());
    }
}

/// The commands of a batch the executor answered (framing already checked
/// by it; anything odd here just ends the list).
pub(super) fn commands(request: &[u8], response: &[u8]) -> Vec<Command> {
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

pub(super) fn matches(filter: Option<u16>, commands: &[Command]) -> bool {
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
        Fault::InfoCount => {
            for cmd in cmds.iter().filter(|c| c.opcode == CENALLOC_CMD_GET_INFO) {
                let at = cmd.response + size_of::<RespHdr>();
                if let (Some(hdr), Some(mut info)) = (
                    read::<RespHdr>(&response, cmd.response),
                    read::<InfoResp>(&response, at),
                ) {
                    if hdr.status == 0 {
                        info.num_allocators = info.num_allocators.saturating_add(1);
                        write(&mut response, at, &info);
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
pub(super) fn rewrite_map(fault: Fault, request: &[u8], cmd: &Command, response: &mut [u8]) {
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
pub(super) fn split(segments: &mut Vec<Range>, i: usize) {
    let first = (segments[i].len / 2) & !(CENALLOC_PAGE_SIZE - 1);
    let second = Range {
        addr: segments[i].addr + first,
        len: segments[i].len - first,
    };
    segments[i].len = first;
    segments.insert(i + 1, second);
}
