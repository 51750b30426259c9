//! The fault of one front-end connection: where it comes from, and the
//! MAP slots hidden from the executor so that a rewritten answer that
//! needs more room is first refused, as a device would.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

use log::{info, warn};
use vm_memory::ByteValued;

use crate::protocol::*;

use super::rewrite::{commands, read, refuse_attach, rewrite, share_backing, write, Verdict};
use super::Fault;

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
