//! The device state journal: what a serving process commits about one VM's
//! device, kept in a memfd that outlives the process (the holder of
//! `cenallocd --supervise`, or systemd's fd store, keeps the fd), so that
//! a restarted process rebuilds exactly the state the dead one had
//! committed (docs/design/surviving-daemon.md).
//!
//! The device is deterministic given its configuration, where its ids
//! started ([`Origin`]) and the batches it ran, so the journal holds those
//! and not the state: an [`Origin`] (in the header), then one
//! [`Record::Batch`] per batch whose answer is about to be published
//! (written into the chain, then journaled, then put on the used ring: an
//! answer the guest saw is always in the journal, and one journaled but
//! not on the used ring yet is published by the successor), and one
//! [`Record::EventPopped`] per event the event ring took. A batch given up
//! half-way (its chain never came back) is journaled with how far it got.
//! [`Device::replay`](crate::device::Device::replay) runs the records
//! through the device again without touching guest memory.
//!
//! The file: a [`HEADER_LEN`]-byte header (magic, version, a broken flag,
//! the end of the committed records, the origin), then records, each a
//! little-endian `u32` body length, a kind byte, three zero bytes and the
//! body. A record is written past the committed end first and committed by
//! one write of the new end; a restart ([`Journal::restart`]) writes the
//! new end and the new origin in one write. A process killed between two
//! writes leaves the journal at its previous commit (one `pwrite` of a few
//! bytes inside one page of a memfd is never cut by a signal). The file is only ever shared between
//! the serving process and its holder, but it is read as untrusted input
//! all the same: bad bytes are an error, never a panic.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::model::Origin;

#[cfg(test)]
mod tests;

/// Bytes of the header.
pub const HEADER_LEN: u64 = 48;
const _: () = assert!(ORIGIN_AT + 16 == HEADER_LEN);
const MAGIC: [u8; 8] = *b"CNJRNL\0\x01";
const VERSION: u32 = 1;
/// Offsets of the header's fields.
const VERSION_AT: u64 = 8;
const BROKEN_AT: u64 = 12;
const COMMITTED_AT: u64 = 16;
/// Where the records start (a compaction moves it past the old ones).
const START_AT: u64 = 24;
/// The origin: next serial (u64), next buffer and attachment ids (u32),
/// right after the committed end and the start, so that all three change
/// in one write.
const ORIGIN_AT: u64 = 32;
/// Bytes before a record's body: length, kind, padding.
const RECORD_HEADER: usize = 8;

const KIND_BATCH: u8 = 2;
/// Bytes of a batch record's fields before its request.
const BATCH_FIELDS: usize = 28;
const KIND_EVENT_POPPED: u8 = 3;
const KIND_ANSWER: u8 = 4;
const KIND_IMAGE: u8 = 5;

/// The largest journal when nothing else is asked for.
pub const DEFAULT_LIMIT: u64 = 256 << 20;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("journal file: {0}")]
    Io(#[from] io::Error),
    #[error("not a journal (bad magic)")]
    BadMagic,
    #[error("journal version {0}, this daemon reads version {VERSION}")]
    BadVersion(u32),
    #[error("the journal was marked broken by the process that wrote it")]
    Broken,
    #[error("the committed end {committed:#x} is outside the file ({len:#x} bytes)")]
    BadCommitted { committed: u64, len: u64 },
    #[error("record at {at:#x}: {what}")]
    BadRecord { at: u64, what: &'static str },
    #[error("the journal would grow past its limit of {0} bytes")]
    Full(u64),
}

/// How a journaled batch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Its answer was published: its status and how many commands ran.
    Answered { status: i32, num_done: u32 },
    /// Given up after `completed` commands; `pending` if the next one had
    /// started (its model changes undone, as
    /// [`Device::abandon_batch`](crate::device::Device::abandon_batch) does).
    Abandoned { completed: u32, pending: bool },
}

/// One journaled batch: the readable bytes of its chain, the size of the
/// writable part, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    pub request: Vec<u8>,
    pub writable_len: u32,
    pub end: End,
    /// The chain it came from, if the caller said: its avail index and
    /// head (a successor publishes a committed answer the used ring does
    /// not show yet, rather than running the chain again).
    pub chain: Option<(u16, u16)>,
    /// Bytes of the answer written into the chain (its used length).
    pub used_len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Batch(BatchRecord),
    /// The oldest pending event was taken off the device's queue.
    EventPopped,
    /// The answer of a batch whose effects the origin already holds (the
    /// journal started over after it): not replayed, only published if the
    /// used ring does not show it yet.
    Answer {
        chain: (u16, u16),
        used_len: u32,
    },
    /// The whole device state, as the device wrote it (a compaction): the
    /// replay starts from it, and records before it are dropped. With the
    /// last answer committed before it (chain position, head, used
    /// length), which the records it replaces held.
    Image {
        answer: Option<(u16, u16, u32)>,
        state: Vec<u8>,
    },
}

/// The last answer `records` committed: its chain's avail position and
/// head and its used length (later events do not hide it; a batch given up
/// or without a chain ends the search: its chain was never answered).
pub fn last_answer(records: &[Record]) -> Option<(u16, u16, u32)> {
    records.iter().rev().find_map(|record| match record {
        Record::EventPopped => None,
        Record::Image { answer, .. } => Some(*answer),
        Record::Answer { chain, used_len } => Some(Some((chain.0, chain.1, *used_len))),
        Record::Batch(batch) => Some(match (batch.end, batch.chain) {
            (End::Answered { .. }, Some((position, head))) => {
                Some((position, head, batch.used_len))
            }
            _ => None,
        }),
    })?
}

/// Appends `record`'s encoding to `out`.
fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    let kind = match record {
        Record::Batch(batch) => {
            let (end, a, b) = match batch.end {
                End::Answered { status, num_done } => (0u32, status as u32, num_done),
                End::Abandoned { completed, pending } => (1, completed, u32::from(pending)),
            };
            out.extend_from_slice(&batch.writable_len.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
            let (known, position, head) = match batch.chain {
                Some((position, head)) => (1u32, position, head),
                None => (0, 0, 0),
            };
            out.extend_from_slice(&known.to_le_bytes());
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&head.to_le_bytes());
            out.extend_from_slice(&batch.used_len.to_le_bytes());
            out.extend_from_slice(&batch.request);
            KIND_BATCH
        }
        Record::EventPopped => KIND_EVENT_POPPED,
        Record::Image { answer, state } => {
            let (known, (position, head, used_len)) = match answer {
                Some(answer) => (1u32, *answer),
                None => (0, (0, 0, 0)),
            };
            out.extend_from_slice(&known.to_le_bytes());
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&head.to_le_bytes());
            out.extend_from_slice(&used_len.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(state);
            KIND_IMAGE
        }
        Record::Answer { chain, used_len } => {
            out.extend_from_slice(&chain.0.to_le_bytes());
            out.extend_from_slice(&chain.1.to_le_bytes());
            out.extend_from_slice(&used_len.to_le_bytes());
            KIND_ANSWER
        }
    };
    let body = (out.len() - start - RECORD_HEADER) as u32;
    out[start..start + 4].copy_from_slice(&body.to_le_bytes());
    out[start + 4] = kind;
}

/// The header's tail from the committed end on: a journal of no records
/// starting at `origin`.
fn start(origin: Origin) -> [u8; (HEADER_LEN - COMMITTED_AT) as usize] {
    let mut tail = [0u8; (HEADER_LEN - COMMITTED_AT) as usize];
    tail[..8].copy_from_slice(&HEADER_LEN.to_le_bytes());
    tail[8..16].copy_from_slice(&HEADER_LEN.to_le_bytes());
    let at = (ORIGIN_AT - COMMITTED_AT) as usize;
    tail[at..at + 8].copy_from_slice(&origin.next_serial.to_le_bytes());
    tail[at + 8..at + 12].copy_from_slice(&origin.next_buffer_id.to_le_bytes());
    tail[at + 12..at + 16].copy_from_slice(&origin.next_attachment_id.to_le_bytes());
    tail
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Decodes the records of `bytes` (the committed part of a journal after
/// its header, which starts at file offset `base`).
fn decode(bytes: &[u8], base: u64) -> Result<Vec<Record>, Error> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = |what| Error::BadRecord {
            at: base + at as u64,
            what,
        };
        if bytes.len() - at < RECORD_HEADER {
            return Err(bad("cut short in its header"));
        }
        let len = u32_at(bytes, at) as usize;
        let kind = bytes[at + 4];
        if bytes[at + 5..at + 8] != [0; 3] {
            return Err(bad("padding not zero"));
        }
        let body_at = at + RECORD_HEADER;
        if bytes.len() - body_at < len {
            return Err(bad("body runs past the committed end"));
        }
        let body = &bytes[body_at..body_at + len];
        let record = match kind {
            KIND_BATCH => {
                if len < BATCH_FIELDS {
                    return Err(bad("batch shorter than its fields"));
                }
                let chain = match u32_at(body, 16) {
                    0 => None,
                    1 => Some((
                        u16::from_le_bytes([body[20], body[21]]),
                        u16::from_le_bytes([body[22], body[23]]),
                    )),
                    _ => return Err(bad("unknown chain flag")),
                };
                let (a, b) = (u32_at(body, 8), u32_at(body, 12));
                let end = match (u32_at(body, 4), b) {
                    (0, _) => End::Answered {
                        status: a as i32,
                        num_done: b,
                    },
                    (1, 0 | 1) => End::Abandoned {
                        completed: a,
                        pending: b == 1,
                    },
                    _ => return Err(bad("unknown batch end")),
                };
                Record::Batch(BatchRecord {
                    writable_len: u32_at(body, 0),
                    end,
                    chain,
                    used_len: u32_at(body, 24),
                    request: body[BATCH_FIELDS..].to_vec(),
                })
            }
            KIND_EVENT_POPPED => {
                if len != 0 {
                    return Err(bad("event record with a body"));
                }
                Record::EventPopped
            }
            KIND_IMAGE => {
                if len < 16 {
                    return Err(bad("image shorter than its fields"));
                }
                let answer = match u32_at(body, 0) {
                    0 => None,
                    1 => Some((
                        u16::from_le_bytes([body[4], body[5]]),
                        u16::from_le_bytes([body[6], body[7]]),
                        u32_at(body, 8),
                    )),
                    _ => return Err(bad("unknown answer flag")),
                };
                Record::Image {
                    answer,
                    state: body[16..].to_vec(),
                }
            }
            KIND_ANSWER => {
                if len != 8 {
                    return Err(bad("answer record of the wrong size"));
                }
                Record::Answer {
                    chain: (
                        u16::from_le_bytes([body[0], body[1]]),
                        u16::from_le_bytes([body[2], body[3]]),
                    ),
                    used_len: u32_at(body, 4),
                }
            }
            _ => return Err(bad("unknown kind")),
        };
        records.push(record);
        at = body_at + len;
    }
    Ok(records)
}

/// One VM's journal file, open for appending.
#[derive(Debug)]
pub struct Journal {
    file: File,
    /// Where the records start and the committed ones end (file offsets).
    start: u64,
    committed: u64,
    /// The most bytes the file may hold.
    limit: u64,
    /// Staging for one record.
    scratch: Vec<u8>,
}

impl Journal {
    /// A new journal in a fresh memfd, starting at `origin`; it may grow
    /// to `limit` bytes (4 KiB at least).
    pub fn create(origin: Origin, limit: u64) -> Result<Journal, Error> {
        // SAFETY: memfd_create with a NUL-terminated name; checked below.
        let fd = unsafe { libc::memfd_create(c"cenalloc-journal".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Self::create_in(unsafe { OwnedFd::from_raw_fd(fd) }, origin, limit)
    }

    /// A new journal in the file `fd` (a memfd the holder keeps), whatever
    /// it held before.
    pub fn create_in(fd: OwnedFd, origin: Origin, limit: u64) -> Result<Journal, Error> {
        let file = File::from(fd);
        file.set_len(0)?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(&MAGIC);
        header[VERSION_AT as usize..VERSION_AT as usize + 4]
            .copy_from_slice(&VERSION.to_le_bytes());
        header[COMMITTED_AT as usize..].copy_from_slice(&start(origin));
        file.write_all_at(&header, 0)?;
        Ok(Journal {
            file,
            start: HEADER_LEN,
            committed: HEADER_LEN,
            limit: limit.max(4096),
            scratch: Vec::new(),
        })
    }

    /// Takes over the journal in `fd` (left by a process that died): its
    /// origin and committed records, then the journal to go on appending to.
    pub fn adopt(fd: OwnedFd, limit: u64) -> Result<(Journal, Origin, Vec<Record>), Error> {
        let file = File::from(fd);
        let len = file.metadata()?.len();
        let mut header = [0u8; HEADER_LEN as usize];
        if len < HEADER_LEN {
            return Err(Error::BadMagic);
        }
        file.read_exact_at(&mut header, 0)?;
        if header[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = u32_at(&header, VERSION_AT as usize);
        if version != VERSION {
            return Err(Error::BadVersion(version));
        }
        if u32_at(&header, BROKEN_AT as usize) != 0 {
            return Err(Error::Broken);
        }
        let committed = u64_at(&header, COMMITTED_AT as usize);
        let start = u64_at(&header, START_AT as usize);
        if start < HEADER_LEN || committed < start || committed > len || committed - start > limit {
            return Err(Error::BadCommitted { committed, len });
        }
        let mut bytes = vec![0u8; (committed - start) as usize];
        file.read_exact_at(&mut bytes, start)?;
        let records = decode(&bytes, start)?;
        let origin = Origin {
            next_serial: u64_at(&header, ORIGIN_AT as usize),
            next_buffer_id: u32_at(&header, ORIGIN_AT as usize + 8),
            next_attachment_id: u32_at(&header, ORIGIN_AT as usize + 12),
        };
        Ok((
            Journal {
                file,
                start,
                committed,
                limit,
                scratch: Vec::new(),
            },
            origin,
            records,
        ))
    }

    /// Appends and commits `record`. On error nothing is committed.
    pub fn append(&mut self, record: &Record) -> Result<(), Error> {
        self.scratch.clear();
        encode(record, &mut self.scratch);
        let end = self.committed + self.scratch.len() as u64;
        if end - self.start > self.limit {
            return Err(Error::Full(self.limit));
        }
        self.file.write_all_at(&self.scratch, self.committed)?;
        self.commit(end)
    }

    /// Replaces every record with `image` (a [`Record::Image`]): it is
    /// written after them, then made the only record by one write of the
    /// start and the end; the old records' memory goes back (a hole).
    pub fn compact(&mut self, image: Record) -> Result<(), Error> {
        self.scratch.clear();
        encode(&image, &mut self.scratch);
        let len = self.scratch.len() as u64;
        if len > self.limit {
            return Err(Error::Full(self.limit));
        }
        let at = self.committed;
        let end = at + len;
        self.file.write_all_at(&self.scratch, at)?;
        let mut both = [0u8; 16];
        both[..8].copy_from_slice(&end.to_le_bytes());
        both[8..].copy_from_slice(&at.to_le_bytes());
        self.file.write_all_at(&both, COMMITTED_AT)?;
        let (old_start, hole) = (self.start, at - self.start);
        self.start = at;
        self.committed = end;
        // SAFETY: fallocate on an open descriptor with integer arguments;
        // punching a hole never changes the file's size.
        let punched = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                old_start as libc::off_t,
                hole as libc::off_t,
            )
        };
        if punched != 0 {
            log::debug!(
                "journal: cannot free the old records: {}",
                io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Bytes of records since the start (the last compaction or restart).
    pub fn records_len(&self) -> u64 {
        self.committed - self.start
    }

    /// Starts over from `origin`: every record is dropped (the device was
    /// reset, or a snapshot replaces them) in one write, and the file
    /// gives its memory back.
    pub fn restart(&mut self, origin: Origin) -> Result<(), Error> {
        self.file.write_all_at(&start(origin), COMMITTED_AT)?;
        self.start = HEADER_LEN;
        self.committed = HEADER_LEN;
        self.file.set_len(HEADER_LEN)?;
        Ok(())
    }

    /// Marks the journal unusable (an append failed: what is committed no
    /// longer describes the device), so that no successor trusts it.
    pub fn mark_broken(&mut self) {
        if let Err(e) = self.file.write_all_at(&1u32.to_le_bytes(), BROKEN_AT) {
            log::error!("journal: cannot mark it broken: {e}");
        }
    }

    fn commit(&mut self, end: u64) -> Result<(), Error> {
        self.file.write_all_at(&end.to_le_bytes(), COMMITTED_AT)?;
        self.committed = end;
        Ok(())
    }

    /// Bytes committed, header included.
    pub fn len(&self) -> u64 {
        self.committed
    }

    pub fn is_empty(&self) -> bool {
        self.committed == self.start
    }
}

impl AsFd for Journal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
