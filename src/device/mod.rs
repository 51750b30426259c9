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

use crate::journal::{self, Journal};
use crate::model::{self, Direction, Mapped, MappingType, Pool, Segment};
use crate::protocol::*;

mod config;
mod error;
mod frame;
mod guest_log;
mod guest_mem;
mod import;
mod replay;
mod share;
#[cfg(test)]
mod share_proptests;
#[cfg(test)]
mod share_tests;

pub use config::DeviceConfig;
pub use error::Error;
pub use frame::{MAX_RESPONSE_BYTES, MAX_SLOT_BYTES};
pub use guest_log::{GuestLog, GUEST_LOG_BURST, GUEST_LOG_PER_SEC};
pub use guest_mem::{checksum, copy_segments, fill_pattern, zero_segments, Work, CHUNK};
pub use replay::{DeviceImage, ReplayError};

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
    /// Journal writes that failed (the journal was then dropped).
    pub journal_failures: u64,
    /// Journal compactions: the records replaced by the device's image.
    pub journal_images: u64,
    /// Control queue notifications (kicks) the queue glue handled.
    pub control_wakeups: u64,
    /// Used-buffer notifications (interrupts) sent on the control queue.
    pub control_signals: u64,
    /// Time spent answering control chains, nanoseconds.
    pub control_busy_ns: u64,
    /// LEASED_MAPs and LEASE_RETURNs refused (each one counted, logged
    /// at a limited rate: [`GuestLog`]), LEASE_REVOKE events queued.
    pub leased_maps_refused: u64,
    pub lease_returns_refused: u64,
    pub lease_revokes: u64,
    /// Polling of the control queue after an answer (the queue glue's):
    /// polls that found a request, polls that did not, time spent
    /// polling (ns), the current window (ns).
    pub poll_hits: u64,
    pub poll_misses: u64,
    pub poll_busy_ns: u64,
    pub poll_window_ns: u64,
    /// RESET commands run (the device state was dropped).
    pub resets: u64,
    /// Times a batch stopped between two steps of work because its ring
    /// was being stopped or a control socket request was waiting for the
    /// device (it resumes when the ring runs again, or at once).
    pub batches_interrupted: u64,
}

/// Told whenever a command may have changed which memory backs which
/// buffer (the registry's exports revoke what changed): after the command's
/// changes to the model and before any of its guest-memory work (zeroing
/// or copying into pages another buffer had a moment ago), and after a
/// command's changes are undone. Called with the device borrowed, so under
/// whatever lock protects the device.
pub trait BackingWatch: Send + Sync {
    fn backing_changed(&self, pool: &Pool);
}

/// Events kept for an event ring that is stopped; further ones are dropped.
pub const MAX_PENDING_EVENTS: usize = 1024;

/// Bytes of journal records after which they are replaced by the device's
/// image (bounds both the journal and the replay at a restart).
pub const JOURNAL_COMPACT_AFTER: u64 = 256 << 10;

/// What a command produced, for batch references.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Produced {
    Nothing,
    Buffer(u32),
    Attachment(u32),
}

/// A command whose guest-memory work is not done yet.
#[derive(Debug)]
enum Pending {
    /// The model already mapped (and allocated or migrated): `work` zeroes
    /// or copies the new backing.
    Map {
        attachment: u32,
        direction: Direction,
        buffer: u32,
        mapped: Mapped,
        flags: u32,
        work: Option<Work>,
    },
    Fill(Work),
    Checksum(Work),
    /// The model already leased `extents`: `work` zeroes them.
    Lease {
        allocator: usize,
        extents: Vec<Segment>,
        work: Work,
    },
    /// An UNSHARE or a FREE of a shared buffer: the model and the table
    /// changed; the answer waits until the shares `tokens` are settled.
    Settle {
        tokens: Vec<u64>,
        answer: share::Settled,
    },
}

impl Pending {
    fn work(&mut self) -> Option<&mut Work> {
        match self {
            Pending::Map { work, .. } => work.as_mut(),
            Pending::Fill(work) | Pending::Checksum(work) => Some(work),
            Pending::Lease { work, .. } => Some(work),
            Pending::Settle { .. } => None,
        }
    }
}

/// How a command started.
enum Started {
    Done((usize, Produced)),
    Work(Box<Pending>),
}

/// Where a command stands after [`Device::advance`].
enum Step {
    Finished(Result<(usize, Produced), Error>),
    Yielded(Box<Pending>),
}

/// A batch in progress: its request, its answer so far, and the command
/// it stands at. Built by [`Device::begin_batch`], run by
/// [`Device::run_batch`], which may stop between two steps of work and
/// continue later.
#[derive(Debug)]
pub struct Batch {
    request: Vec<u8>,
    writable_len: usize,
    /// The chain it came from (avail index, head), for the journal.
    chain: Option<(u16, u16)>,
    frames: Vec<frame::CommandFrame>,
    response: Vec<u8>,
    produced: Vec<Produced>,
    status: BatchResp,
    /// The command running or to run next.
    next: usize,
    /// Its work, when it started and has some left.
    pending: Option<Box<Pending>>,
}

impl Batch {
    /// The readable part of the chain this batch came from.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Names the chain this batch came from (its avail index and head) in
    /// the journal.
    pub fn set_chain(&mut self, position: u16, head: u16) {
        self.chain = Some((position, head));
    }
}

/// What [`Device::run_batch`] returned.
#[derive(Debug)]
pub enum Progress {
    /// The answer: the bytes for the writable part.
    Done(Vec<u8>),
    /// Stopped because `yield_now` said so; run it again to continue.
    Yielded,
}

/// The device state of one front-end connection.
pub struct Device {
    config: DeviceConfig,
    pool: Pool,
    events: VecDeque<Event>,
    pub counters: DeviceCounters,
    watch: Option<std::sync::Arc<dyn BackingWatch>>,
    /// The buffer whose new backing a suspended MAP is still zeroing or
    /// copying into ([`Device::preparing`]).
    preparing: Option<u32>,
    /// Lines the guest's requests cause, rate-limited.
    log: GuestLog,
    /// Where committed batches go, if this device keeps a journal.
    journal: Option<Journal>,
    /// Replaying a journal: guest-memory work is checked, not done.
    dry: bool,
    /// While replaying a batch given up inside a command: the index of
    /// that command, which stops before its work.
    hold_work_at: Option<usize>,
    /// Journal bytes after which the records become an image.
    compact_after: u64,
    /// The way to the share table, if this VM may share (issue 17).
    share: Option<crate::share::ShareLink>,
    /// The backings other VMs' windows hold, by share token (one serial
    /// per hold, in the order taken).
    share_holds: std::collections::BTreeMap<u64, Vec<u64>>,
}

impl Device {
    pub fn new(config: DeviceConfig) -> Result<Self, Error> {
        let pool = Pool::new(config.pool.clone())?;
        Ok(Device {
            config,
            pool,
            events: VecDeque::new(),
            counters: DeviceCounters::default(),
            watch: None,
            preparing: None,
            log: GuestLog::default(),
            journal: None,
            dry: false,
            hold_work_at: None,
            compact_after: JOURNAL_COMPACT_AFTER,
            share: None,
            share_holds: std::collections::BTreeMap::new(),
        })
    }

    /// The device with every committed batch and delivered event written
    /// to `journal` (which must start at this device's [`Device::origin`]).
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Takes the journal away (the device journals no more).
    pub fn take_journal(&mut self) -> Option<Journal> {
        self.journal.take()
    }

    /// Journals from now on to `journal`, which must start at this
    /// device's [`Device::origin`] with no records.
    pub fn set_journal(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// Replaces the journal's records with the device's image once they
    /// pass `bytes` ([`JOURNAL_COMPACT_AFTER`] by default).
    pub fn set_journal_compaction(&mut self, bytes: u64) {
        self.compact_after = bytes;
    }

    /// The journal, if this device keeps one and it has not failed.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Where this device's ids and serials stood when it was empty last.
    pub fn origin(&self) -> model::Origin {
        self.pool.origin()
    }

    /// Writes `record` to the journal. A journal that cannot take it is
    /// marked broken and dropped: a successor must not rebuild a state
    /// that misses a batch whose answer the guest may see.
    fn write_journal(&mut self, record: &journal::Record) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        if let Err(e) = journal.append(record) {
            self.journal_failed("", &e);
        }
    }

    /// A journal write failed: the journal is marked broken and dropped,
    /// so that no successor rebuilds a device that misses what failed.
    fn journal_failed(&mut self, doing: &str, e: &journal::Error) {
        self.log.warn(format_args!(
            "journal: {doing}{e}; a restart will not restore this device"
        ));
        if let Some(mut journal) = self.journal.take() {
            journal.mark_broken();
        }
        self.counters.journal_failures += 1;
    }

    fn journal_batch(
        &mut self,
        request: &[u8],
        writable_len: usize,
        chain: Option<(u16, u16)>,
        used_len: u32,
        end: journal::End,
    ) {
        if self.journal.is_none() {
            return;
        }
        let record = journal::Record::Batch(journal::BatchRecord {
            request: request.to_vec(),
            writable_len: u32::try_from(writable_len).unwrap_or(u32::MAX),
            end,
            chain,
            used_len,
        });
        self.write_journal(&record);
        let answer = match (end, chain) {
            (journal::End::Answered { .. }, Some(chain)) => Some((chain, used_len)),
            _ => None,
        };
        self.compact_journal(answer);
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.records_len() > self.compact_after)
        {
            self.snapshot_journal(answer);
        }
    }

    /// Replaces the journal's records with the device's image (and the
    /// last answer, which they held).
    fn snapshot_journal(&mut self, answer: Option<((u16, u16), u32)>) {
        let state = match serde_json::to_vec(&self.image()) {
            Ok(state) => state,
            Err(e) => {
                self.log
                    .warn(format_args!("journal: cannot write the device image: {e}"));
                return;
            }
        };
        let image = journal::Record::Image {
            answer: answer.map(|((position, head), used_len)| (position, head, used_len)),
            state,
        };
        let Some(journal) = &mut self.journal else {
            return;
        };
        if let Err(e) = journal.compact(image) {
            self.journal_failed("cannot compact it: ", &e);
        } else {
            self.counters.journal_images += 1;
        }
    }

    /// After a batch that left the device as empty as a new one (a RESET),
    /// the journal starts over from here, remembering that batch's
    /// `answer` (its chain and used length) until the next one.
    fn compact_journal(&mut self, answer: Option<((u16, u16), u32)>) {
        if !self.pool.is_pristine() || !self.events.is_empty() {
            return;
        }
        let origin = self.pool.origin();
        let Ok(fresh) = Pool::from_origin(self.config.pool.clone(), origin) else {
            return;
        };
        if fresh.snapshot() != self.pool.snapshot() {
            return;
        }
        if let Some(journal) = &mut self.journal {
            let restarted = journal.restart(origin).and_then(|()| match answer {
                Some((chain, used_len)) => {
                    journal.append(&journal::Record::Answer { chain, used_len })
                }
                None => Ok(()),
            });
            if let Err(e) = restarted {
                self.journal_failed("cannot start it over: ", &e);
            }
        }
    }

    /// Names the VM in the lines this device logs.
    pub fn set_vm_name(&mut self, name: &str) {
        self.log.set_vm(name);
    }

    /// The buffer whose new backing a suspended batch's MAP has not
    /// finished zeroing or copying into: until it has, those pages hold
    /// what they held before (another buffer's bytes), so the buffer must
    /// not be exported.
    pub fn preparing(&self) -> Option<u32> {
        self.preparing
    }

    /// The device with `watch` told of every change of a backing.
    pub fn with_watch(mut self, watch: std::sync::Arc<dyn BackingWatch>) -> Self {
        self.watch = Some(watch);
        self
    }

    fn backing_changed(&self) {
        if let Some(watch) = &self.watch {
            watch.backing_changed(&self.pool);
        }
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
        if self.events.pop_front().is_some() {
            self.write_journal(&journal::Record::EventPopped);
        }
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
        self.end_all_shares();
        self.counters.resets += 1;
        Ok(dropped)
    }

    /// Runs one batch to its end. `request` is the readable part of the
    /// chain, `writable_len` the size of its writable part. Returns the
    /// bytes to write at the start of the writable part (empty if not even
    /// the `cenalloc_batch_resp` fits).
    pub fn execute_batch<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        request: &[u8],
        writable_len: usize,
    ) -> Vec<u8> {
        let mut batch = match self.begin_batch(request.to_vec(), writable_len) {
            Ok(batch) => batch,
            Err(answer) => return answer,
        };
        loop {
            if let Progress::Done(answer) = self.run_batch(mem, &mut batch, &mut || false) {
                self.commit_batch(&batch, answer.len() as u32);
                return answer;
            }
            if matches!(batch.pending.as_deref(), Some(Pending::Settle { .. })) {
                // Parked until other VMs let go (bounded by the share
                // table's deadlines): no busy wait.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Checks the framing of a batch. `Err` is the whole answer of a batch
    /// refused as a whole (empty if not even a `cenalloc_batch_resp` fits).
    pub fn begin_batch(&mut self, request: Vec<u8>, writable_len: usize) -> Result<Batch, Vec<u8>> {
        self.counters.batches += 1;
        let frames = match parse_batch(&request, writable_len, self.config.max_batch) {
            Ok(frames) => frames,
            Err(error) => {
                debug!("batch rejected: {error}");
                self.counters.rejected_batches += 1;
                if writable_len < size_of::<BatchResp>() {
                    return Err(Vec::new());
                }
                let resp = BatchResp {
                    status: status_of_errno(error.errno()),
                    num_done: 0,
                };
                return Err(resp.as_slice().to_vec());
            }
        };
        let total = frames.last().map_or(size_of::<BatchResp>(), |last| {
            last.response + size_of::<RespHdr>() + last.header.resp_len as usize
        });
        Ok(Batch {
            request,
            writable_len,
            chain: None,
            produced: Vec::with_capacity(frames.len()),
            frames,
            response: vec![0u8; total],
            status: BatchResp::default(),
            next: 0,
            pending: None,
        })
    }

    /// Runs `batch` on from where it stands. Between two steps of
    /// guest-memory work (at most [`CHUNK`] bytes) and between two commands
    /// it asks `yield_now`; if that says so it returns
    /// [`Progress::Yielded`], and a later call continues. While a batch is
    /// unfinished no other batch may run (a MAP's migration copy reads
    /// backing the model already freed): continue it, or
    /// [`Device::abandon_batch`] it first.
    pub fn run_batch<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        batch: &mut Batch,
        yield_now: &mut dyn FnMut() -> bool,
    ) -> Progress {
        let Batch {
            request,
            writable_len: _,
            chain: _,
            frames,
            response,
            produced,
            status,
            next,
            pending,
        } = batch;
        self.preparing = None;
        while let Some(frame) = frames.get(*next) {
            let slot_start = frame.response + size_of::<RespHdr>();
            let slot_end = slot_start + frame.header.resp_len as usize;
            let payload_end = frame.payload + frame.header.len as usize;
            let slot = &mut response[slot_start..slot_end];
            let step = match pending.take() {
                Some(work) => self.advance(mem, work, slot, yield_now),
                None => {
                    self.counters.commands += 1;
                    if status.status != 0 {
                        Step::Finished(Err(Error::Cancelled))
                    } else {
                        let payload = &request[frame.payload..payload_end];
                        let started =
                            self.start_command(mem, &frame.header, payload, slot, produced);
                        // Before the command's guest-memory work: the pages
                        // it zeroes or copies into may have been another
                        // buffer's a moment ago (FREE X; MAP Y).
                        self.backing_changed();
                        match started {
                            Ok(Started::Done(done)) => Step::Finished(Ok(done)),
                            Ok(Started::Work(work)) if self.hold_work_at == Some(*next) => {
                                Step::Yielded(work)
                            }
                            Ok(Started::Work(work)) => self.advance(mem, work, slot, yield_now),
                            Err(error) => Step::Finished(Err(error)),
                        }
                    }
                }
            };
            let result = match step {
                Step::Yielded(work) => {
                    if let Pending::Map {
                        buffer,
                        work: Some(_),
                        ..
                    } = &*work
                    {
                        self.preparing = Some(*buffer);
                    }
                    *pending = Some(work);
                    self.counters.batches_interrupted += 1;
                    return Progress::Yielded;
                }
                Step::Finished(result) => result,
            };
            let header = match result {
                Ok((len, product)) => {
                    produced.push(product);
                    status.num_done += 1;
                    RespHdr {
                        status: 0,
                        len: len as u32,
                        ..Default::default()
                    }
                }
                Err(error) => {
                    if !matches!(error, Error::Cancelled) {
                        debug!("command {} (opcode {}) failed: {error}", *next, {
                            frame.header.opcode
                        });
                        self.counters.failed_commands += 1;
                        status.status = status_of_errno(error.errno());
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
            *next += 1;
            if *next < frames.len() && yield_now() {
                self.counters.batches_interrupted += 1;
                return Progress::Yielded;
            }
        }
        response[..size_of::<BatchResp>()].copy_from_slice(status.as_slice());
        Progress::Done(std::mem::take(response))
    }

    /// Commits a batch [`Device::run_batch`] finished, once its answer
    /// (`used_len` bytes) is written into its chain and before it is put on
    /// the used ring: the journal then has every answer the guest can see.
    pub fn commit_batch(&mut self, batch: &Batch, used_len: u32) {
        self.journal_batch(
            &batch.request,
            batch.writable_len,
            batch.chain,
            used_len,
            journal::End::Answered {
                status: batch.status.status as i32,
                num_done: batch.status.num_done,
            },
        );
    }

    /// Gives up an unfinished batch (its chain is not coming back): a MAP
    /// whose new backing was not prepared yet gives it back, as if its work
    /// had failed (a migrated buffer's contents are lost). Commands that
    /// completed keep their effects; a FILL cut short leaves part of the
    /// pattern written.
    pub fn abandon_batch(&mut self, batch: Batch) {
        self.preparing = None;
        let Batch {
            request,
            writable_len,
            chain,
            next,
            pending,
            ..
        } = batch;
        let started = pending.is_some();
        if let Some(pending) = pending {
            debug!("abandoned batch: its command's model changes undone");
            self.undo_pending(*pending);
            self.backing_changed();
        }
        // Journaled once the device is as the batch leaves it (an image
        // the journal may take now must not hold the undone command).
        if next > 0 || started {
            self.journal_batch(
                &request,
                writable_len,
                chain,
                0,
                journal::End::Abandoned {
                    completed: next as u32,
                    pending: started,
                },
            );
        }
    }

    /// Undoes the model changes of a command whose guest-memory work did
    /// not finish: a MAP's new backing, a LEASE's extents.
    fn undo_pending(&mut self, pending: Pending) {
        match pending {
            Pending::Map {
                attachment,
                direction,
                buffer,
                ..
            } => self.unprepared_map(attachment, direction, buffer),
            Pending::Lease {
                allocator, extents, ..
            } => {
                if let Err(undo) = self.pool.lease_return(allocator, &extents) {
                    warn!("LEASE: taking back extents that were not zeroed failed: {undo}");
                }
            }
            Pending::Fill(_) | Pending::Checksum(_) => {}
            // The share ended and the table revokes on: only the answer is
            // lost with the chain.
            Pending::Settle { .. } => {}
        }
    }

    /// Starts a command: the checks and model changes, and for MAP, FILL
    /// and CHECKSUM the guest-memory work still to do.
    fn start_command<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        header: &CmdHdr,
        payload: &[u8],
        slot: &mut [u8],
        produced: &[Produced],
    ) -> Result<Started, Error> {
        if header.flags != 0 {
            return Err(Error::CommandFlags(header.flags));
        }
        if header.reserved != 0 {
            return Err(Error::Reserved(header.reserved));
        }
        match header.opcode {
            CENALLOC_CMD_MAP => {
                let req: MapReq = exact(payload)?;
                let attachment = resolve_attachment(req.attach_id, produced)?;
                let direction = direction(req.direction)?;
                if let Some(link) = self.share.clone() {
                    let buffer = self.pool.attachment_buffer(attachment)?;
                    if self.pool.is_imported(buffer)? {
                        return self
                            .map_import_cmd(&link, buffer, attachment, direction, slot)
                            .map(Started::Done);
                    }
                }
                let pending = self.start_map(mem, attachment, direction)?;
                Ok(Started::Work(Box::new(pending)))
            }
            CENALLOC_CMD_FILL => {
                let req: FillReq = exact(payload)?;
                check_reserved(req.reserved)?;
                let buffer = resolve_buffer(req.buffer_id, produced)?;
                let segments = self.pool.backing(buffer)?;
                let work = Work::fill(mem, segments, req.seed)?;
                Ok(Started::Work(Box::new(Pending::Fill(work))))
            }
            CENALLOC_CMD_LEASE => {
                let pending = self.start_lease(mem, payload, slot)?;
                Ok(Started::Work(Box::new(pending)))
            }
            CENALLOC_CMD_UNSHARE => {
                let pending = self.start_unshare(payload, slot, produced)?;
                Ok(Started::Work(Box::new(pending)))
            }
            CENALLOC_CMD_FREE if self.share.is_some() => {
                let req: FreeReq = exact(payload)?;
                check_reserved(req.reserved)?;
                let buffer = resolve_buffer(req.buffer_id, produced)?;
                match self.start_free_shared(buffer)? {
                    Some(pending) => Ok(Started::Work(Box::new(pending))),
                    None => self
                        .run_command(mem, header, payload, slot, produced)
                        .map(Started::Done),
                }
            }
            CENALLOC_CMD_CHECKSUM => {
                let req: ChecksumReq = exact(payload)?;
                check_reserved(req.reserved)?;
                check_slot::<ChecksumResp>(slot)?;
                let buffer = resolve_buffer(req.buffer_id, produced)?;
                let segments = self.pool.backing(buffer)?;
                let work = Work::checksum(mem, segments)?;
                Ok(Started::Work(Box::new(Pending::Checksum(work))))
            }
            _ => self
                .run_command(mem, header, payload, slot, produced)
                .map(Started::Done),
        }
    }

    /// Does the work of a started command step by step, asking `yield_now`
    /// after each step; then finishes the command.
    fn advance<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        mut pending: Box<Pending>,
        slot: &mut [u8],
        yield_now: &mut dyn FnMut() -> bool,
    ) -> Step {
        if let Pending::Settle { tokens, .. } = &*pending {
            if !self.settled(tokens) {
                return Step::Yielded(pending);
            }
        }
        // A replay checked the work's segments when it started; the guest
        // memory already holds what the work wrote.
        while let Some(work) = pending.work().filter(|_| !self.dry) {
            match work.step(mem) {
                Ok(true) => break,
                Ok(false) => {
                    if yield_now() {
                        return Step::Yielded(pending);
                    }
                }
                Err(error) => {
                    self.undo_pending(*pending);
                    self.backing_changed();
                    return Step::Finished(Err(error));
                }
            }
        }
        Step::Finished(self.finish_command(*pending, slot))
    }

    fn finish_command(
        &mut self,
        pending: Pending,
        slot: &mut [u8],
    ) -> Result<(usize, Produced), Error> {
        match pending {
            Pending::Map {
                attachment,
                direction,
                buffer,
                mapped,
                flags,
                ..
            } => {
                let answer = self
                    .finish_map(attachment, direction, buffer, &mapped, flags, slot)
                    .map(nothing);
                if answer.is_ok() {
                    // Zeroed or copied: the windows waiting for a shared
                    // buffer may be mapped now.
                    self.place_after_map(buffer);
                }
                answer
            }
            Pending::Fill(_) => Ok((0, Produced::Nothing)),
            Pending::Settle { tokens, answer } => self.finish_settle(&tokens, answer, slot),
            Pending::Lease {
                allocator, extents, ..
            } => self.finish_lease(allocator, &extents, slot).map(nothing),
            Pending::Checksum(work) => {
                let (checksum, len) = work.checksum_result();
                let resp = ChecksumResp { checksum, len };
                Ok((write_struct(slot, &resp), Produced::Nothing))
            }
        }
    }

    fn run_command<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        header: &CmdHdr,
        payload: &[u8],
        slot: &mut [u8],
        produced: &[Produced],
    ) -> Result<(usize, Produced), Error> {
        match header.opcode {
            CENALLOC_CMD_GET_INFO => {
                expect_empty(payload)?;
                self.get_info(slot).map(nothing)
            }
            CENALLOC_CMD_POOL_ADD => self.pool_add(mem, payload).map(|()| (0, Produced::Nothing)),
            CENALLOC_CMD_POOL_REMOVE => self.pool_remove(payload).map(|()| (0, Produced::Nothing)),
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
                        self.log.warn(format_args!("LEASE_RETURN refused: {e}"));
                        self.counters.lease_returns_refused += 1;
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
            // CENALLOC_F_SHARE is defined but not offered: its device side
            // lands in steps (docs/design/cross-vm-sharing.md). A device
            // with a share link serves the share commands (UNSHARE and FREE
            // of a shared buffer park, in `start_command`); on a device
            // without one, every share opcode is answered as an opcode this
            // device does not know, whatever the payload.
            CENALLOC_CMD_SHARE => self.share_cmd(payload, slot, produced),
            CENALLOC_CMD_IMPORT => self.import_cmd(payload, slot),
            CENALLOC_CMD_RELEASE => self.release_cmd(payload, produced),
            CENALLOC_CMD_REVOKE_ACK => self.revoke_ack_cmd(payload, produced),
            // Parked commands start in `start_command`.
            opcode @ CENALLOC_CMD_UNSHARE => Err(Error::UnknownOpcode(opcode)),
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

    /// LEASE: carves the extents; the work zeroes them before the answer
    /// ([`Device::finish_lease`]). Extents that cannot be zeroed go back to
    /// the allocator and the lease fails.
    fn start_lease<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        payload: &[u8],
        slot: &[u8],
    ) -> Result<Pending, Error> {
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
        match Work::zero(mem, &extents) {
            Ok(work) => Ok(Pending::Lease {
                allocator,
                extents,
                work,
            }),
            Err(error) => {
                self.undo_pending(Pending::Lease {
                    allocator,
                    extents: extents.clone(),
                    work: Work::zero(mem, &[])?,
                });
                Err(error)
            }
        }
    }

    /// The end of a LEASE whose extents are zeroed: the answer.
    fn finish_lease(
        &mut self,
        allocator: usize,
        extents: &[Segment],
        slot: &mut [u8],
    ) -> Result<usize, Error> {
        if !extents.is_empty() {
            self.check_pool_low(allocator);
        }
        let resp = LeaseResp {
            num_extents: extents.len() as u32,
            reserved: 0,
        };
        let mut offset = write_struct(slot, &resp);
        for extent in extents {
            let range = Range {
                addr: extent.addr,
                len: extent.len,
            };
            offset += write_struct(&mut slot[offset..], &range);
        }
        Ok(offset)
    }

    /// LEASED_MAP: decodes the records; the model validates and applies
    /// all or nothing. A refusal is counted and logged (at a limited rate):
    /// an honest driver never sees one.
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
            self.log.warn(format_args!(
                "LEASED_MAP of buffer {:#x} on extent {:#x} refused: {e}",
                request.buffer_id, request.extent
            ));
            self.counters.leased_maps_refused += 1;
            e
        })?;
        self.check_pool_low(mapped.allocator);
        if slot.is_empty() {
            return Ok(0);
        }
        Ok(write_map_answer(slot, &mapped, CENALLOC_MAP_F_ALLOCATED))
    }

    /// MAP: the model maps (allocating or migrating the backing); the new
    /// backing is then zeroed, or the migrated contents copied into it,
    /// through guest memory ([`Device::advance`]) before the answer. If
    /// that fails, the new backing goes back to its allocator (its bytes
    /// must not reach the guest) and the next MAP allocates afresh. An
    /// answer that does not fit the slot undoes the mapping (the backing
    /// stays) and reports the size it needs.
    fn start_map<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        attachment: u32,
        direction: Direction,
    ) -> Result<Pending, Error> {
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
        let work = if let Some(old) = &mapped.migrated_from {
            flags |= CENALLOC_MAP_F_MIGRATED;
            Some(Work::copy(mem, old, &mapped.segments))
        } else if mapped.newly_allocated {
            flags |= CENALLOC_MAP_F_ALLOCATED;
            Some(Work::zero(mem, &mapped.segments))
        } else {
            None
        };
        let work = match work.transpose() {
            Ok(work) => work,
            Err(error) => {
                self.unprepared_map(attachment, direction, buffer);
                return Err(error);
            }
        };
        Ok(Pending::Map {
            attachment,
            direction,
            buffer,
            mapped,
            flags,
            work,
        })
    }

    /// A MAP whose new backing could not be prepared: no mapping, no
    /// backing.
    fn unprepared_map(&mut self, attachment: u32, direction: Direction, buffer: u32) {
        self.undo_map(attachment, direction);
        if let Err(discard_error) = self.pool.discard_backing(buffer) {
            warn!("MAP: discarding unprepared backing of buffer {buffer} failed: {discard_error}");
        }
    }

    /// The end of a MAP whose backing is ready: events, the answer.
    fn finish_map(
        &mut self,
        attachment: u32,
        direction: Direction,
        buffer: u32,
        mapped: &Mapped,
        flags: u32,
        slot: &mut [u8],
    ) -> Result<usize, Error> {
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
        Ok(write_map_answer(slot, mapped, flags))
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
        self.push_event(Event {
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
                self.push_event(Event {
                    event_type: CENALLOC_EVENT_POOL_LOW,
                    buffer_id: 0,
                    data: allocator as u64,
                });
            }
        }
    }

    /// STATS: the JSON snapshot, written straight into the slot. Its cost
    /// is bounded: a snapshot larger than [`STATS_MAX_BYTES`] fails with
    /// -E2BIG, refused before it is built when its buffers and attachments
    /// alone would pass that size, else once the serialization does.
    fn stats(&self, slot: &mut [u8]) -> Result<usize, Error> {
        #[derive(Serialize)]
        struct Stats<'a> {
            device: &'a DeviceCounters,
            pool: model::Snapshot,
        }
        let cap = STATS_MAX_BYTES;
        let floor = self
            .pool
            .num_buffers()
            .saturating_mul(STATS_MIN_BUFFER_BYTES)
            .saturating_add(
                self.pool
                    .num_attachments()
                    .saturating_mul(STATS_MIN_ATTACHMENT_BYTES),
            );
        if floor > cap {
            return Err(Error::SnapshotTooLarge { at_least: floor });
        }
        let mut out = SlotWriter { slot, len: 0, cap };
        let stats = Stats {
            device: &self.counters,
            pool: self.pool.snapshot(),
        };
        if let Err(e) = serde_json::to_writer(&mut out, &stats) {
            return Err(if out.len > cap {
                Error::SnapshotTooLarge { at_least: out.len }
            } else {
                Error::Serialize(e.to_string())
            });
        }
        if out.len > out.slot.len() {
            return Err(Error::SlotTooSmall {
                need: out.len,
                got: out.slot.len(),
            });
        }
        Ok(out.len)
    }
}

/// Largest STATS answer. Building and serializing a snapshot this large
/// takes about 15 ms on the project's build machine (a 100 MB one, 65536
/// buffers with 16 attachments each, took 250 ms): the bound keeps one
/// STATS, which runs in one piece, short.
pub const STATS_MAX_BYTES: usize = 4 << 20;

/// Smallest JSON of one buffer, and of one attachment (with its id in its
/// buffer's list), in a STATS snapshot: lower bounds the tests check.
const STATS_MIN_BUFFER_BYTES: usize = 150;
const STATS_MIN_ATTACHMENT_BYTES: usize = 60;

/// Writes into a slot while it has room and counts everything; fails once
/// the count passes `cap`.
struct SlotWriter<'a> {
    slot: &'a mut [u8],
    len: usize,
    cap: usize,
}

impl std::io::Write for SlotWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Some(room) = self.slot.get_mut(self.len..) {
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
        }
        self.len = self.len.saturating_add(bytes.len());
        if self.len > self.cap {
            return Err(std::io::Error::other("snapshot larger than any answer"));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn nothing(len: usize) -> (usize, Produced) {
    (len, Produced::Nothing)
}

/// Writes a MAP (or LEASED_MAP) answer, the header then one range per
/// segment, into a slot the caller checked is large enough; returns its
/// length.
fn write_map_answer(slot: &mut [u8], mapped: &Mapped, flags: u32) -> usize {
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
    offset
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

    /// CREATE + ATTACH + MAP (zeroing 1 MiB) + FILL + CHECKSUM x2.
    fn long_batch() -> Vec<u8> {
        let mut attach = AttachReq {
            buffer_id: CENALLOC_BATCH_REF,
            mask: CENALLOC_KIND_SYSTEM,
            num_types: 1,
            ..Default::default()
        };
        attach.types[0] = CENALLOC_MAP_SG;
        let create = CreateReq {
            size: 1 << 20,
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
            seed: 11,
        };
        let sum = ChecksumReq {
            buffer_id: CENALLOC_BATCH_REF,
            reserved: 0,
        };
        let cmds: [(u16, &[u8], u32); 6] = [
            (CENALLOC_CMD_CREATE, create.as_slice(), 16),
            (CENALLOC_CMD_ATTACH, attach.as_slice(), 16),
            (CENALLOC_CMD_MAP, map.as_slice(), 24 + 16 * 8),
            (CENALLOC_CMD_FILL, fill.as_slice(), 0),
            (CENALLOC_CMD_CHECKSUM, sum.as_slice(), 16),
            (CENALLOC_CMD_CHECKSUM, sum.as_slice(), 16),
        ];
        let mut request = BatchHdr {
            num_cmds: cmds.len() as u32,
            reserved: 0,
        }
        .as_slice()
        .to_vec();
        for (opcode, payload, resp_len) in cmds {
            let hdr = CmdHdr {
                opcode,
                flags: 0,
                len: payload.len() as u32,
                resp_len,
                reserved: 0,
            };
            request.extend_from_slice(hdr.as_slice());
            request.extend_from_slice(payload);
        }
        request
    }

    /// Encodes a batch of (opcode, payload, response slot length).
    fn encode(cmds: &[(u16, &[u8], u32)]) -> Vec<u8> {
        let mut request = BatchHdr {
            num_cmds: cmds.len() as u32,
            reserved: 0,
        }
        .as_slice()
        .to_vec();
        for &(opcode, payload, resp_len) in cmds {
            let hdr = CmdHdr {
                opcode,
                flags: 0,
                len: payload.len() as u32,
                resp_len,
                reserved: 0,
            };
            request.extend_from_slice(hdr.as_slice());
            request.extend_from_slice(payload);
        }
        request
    }

    /// A watch that looks at one buffer's pages each time it is told of a
    /// change: whether the buffer still exists, and whether its old pages
    /// still hold its bytes.
    struct PageProbe {
        mem: GuestMemoryMmap,
        buffer: u32,
        pages: Segment,
        seen: std::sync::Mutex<Vec<(bool, bool)>>,
    }

    impl BackingWatch for PageProbe {
        fn backing_changed(&self, pool: &Pool) {
            let mut bytes = vec![0u8; self.pages.len as usize];
            self.mem
                .read_slice(&mut bytes, GuestAddress(self.pages.addr))
                .unwrap();
            let exists = pool.buffer_size(self.buffer).is_ok();
            let intact = bytes.iter().all(|&b| b == 0x5c);
            self.seen.lock().unwrap().push((exists, intact));
        }
    }

    /// Issue 20, item 1, from inside the device: in `FREE X; CREATE Y;
    /// ATTACH; MAP Y` the watch hears of X's end while X's old pages still
    /// hold X's bytes; MAP Y zeroes them only after.
    #[test]
    fn the_watch_hears_of_a_free_before_the_pages_are_reused() {
        let mem = memory();
        let mut device = donated_device();
        let x = device.pool.create(0x4000, 0, 0).unwrap().id;
        let pages = {
            let attached = device
                .pool
                .attach(x, model::kinds::SYSTEM, &[MappingType::ScatterGather])
                .unwrap();
            device
                .pool
                .map(attached.id, Direction::Bidirectional)
                .unwrap();
            device
                .pool
                .unmap(attached.id, Direction::Bidirectional)
                .unwrap();
            device.pool.detach(attached.id).unwrap();
            device.pool.backing(x).unwrap()[0]
        };
        mem.write_slice(&[0x5c; 0x4000], GuestAddress(pages.addr))
            .unwrap();
        let probe = std::sync::Arc::new(PageProbe {
            mem: mem.clone(),
            buffer: x,
            pages,
            seen: std::sync::Mutex::new(Vec::new()),
        });
        let mut device = device.with_watch(probe.clone());
        let free = FreeReq {
            buffer_id: x,
            reserved: 0,
        };
        let create = CreateReq {
            size: 0x4000,
            flags: 0,
            initial_mask: 0,
        };
        let mut attach = AttachReq {
            buffer_id: CENALLOC_BATCH_REF | 1,
            mask: CENALLOC_KIND_SYSTEM,
            num_types: 1,
            ..Default::default()
        };
        attach.types[0] = CENALLOC_MAP_SG;
        let map = MapReq {
            attach_id: CENALLOC_BATCH_REF | 2,
            direction: CENALLOC_DIR_BIDIRECTIONAL,
        };
        let request = encode(&[
            (CENALLOC_CMD_FREE, free.as_slice(), 0),
            (CENALLOC_CMD_CREATE, create.as_slice(), 16),
            (CENALLOC_CMD_ATTACH, attach.as_slice(), 16),
            (CENALLOC_CMD_MAP, map.as_slice(), 24 + 16),
        ]);
        let answer = device.execute_batch(&mem, &request, 1 << 12);
        assert_eq!(&answer[0..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        let y = device.pool.snapshot().buffers[0].id;
        assert_eq!(
            device.pool.backing(y).unwrap(),
            &[pages],
            "Y got other pages"
        );
        let seen = probe.seen.lock().unwrap().clone();
        let first_gone = seen.iter().position(|&(exists, _)| !exists);
        assert_eq!(first_gone, Some(0), "told after the FREE: {seen:?}");
        assert!(
            seen[0].1,
            "X's pages were touched before the watch heard of it"
        );
        let mut bytes = vec![1u8; 0x4000];
        mem.read_slice(&mut bytes, GuestAddress(pages.addr))
            .unwrap();
        assert!(
            bytes.iter().all(|&b| b == 0),
            "MAP Y did not zero the pages"
        );
    }

    /// A MAP suspended while it zeroes its new backing names its buffer
    /// as being prepared (the control socket refuses to export it); done
    /// or abandoned, it no longer does.
    #[test]
    fn a_suspended_map_names_the_buffer_it_prepares() {
        let mem = memory();
        for abandon in [false, true] {
            let mut device = donated_device();
            let mut batch = device.begin_batch(long_batch(), 1 << 16).unwrap();
            // Yield at the first chance: CREATE and ATTACH are done, the
            // MAP has zeroed one step of its 1 MiB.
            let mut steps = 0;
            loop {
                let progress = device.run_batch(&mem, &mut batch, &mut || {
                    steps += 1;
                    true
                });
                assert!(matches!(progress, Progress::Yielded));
                if device.preparing().is_some() {
                    break;
                }
                assert!(steps < 10, "the MAP never yielded");
            }
            let buffer = device.pool.snapshot().buffers[0].id;
            assert_eq!(device.preparing(), Some(buffer));
            if abandon {
                device.abandon_batch(batch);
            } else {
                while let Progress::Yielded = device.run_batch(&mem, &mut batch, &mut || false) {}
            }
            assert_eq!(device.preparing(), None);
        }
    }

    fn donated_device() -> Device {
        let mut device = Device::new(DeviceConfig::default_layout()).unwrap();
        device.pool.add_region(0, 0x40_0000, 0x40_0000).unwrap();
        device
    }

    #[test]
    fn a_batch_interrupted_at_every_step_answers_as_one_run_at_once() {
        let mem = memory();
        let request = long_batch();
        let mut reference = donated_device();
        let expected = reference.execute_batch(&mem, &request, 1 << 16);
        assert_eq!(&expected[0..8], &[0, 0, 0, 0, 6, 0, 0, 0]);

        let mut device = donated_device();
        let mut batch = device.begin_batch(request.clone(), 1 << 16).unwrap();
        let mut yields = 0;
        let answer = loop {
            match device.run_batch(&mem, &mut batch, &mut || true) {
                Progress::Done(answer) => break answer,
                Progress::Yielded => yields += 1,
            }
        };
        assert_eq!(answer, expected);
        // 1 MiB zeroed, filled and hashed twice in 64 KiB steps, plus the
        // command boundaries.
        assert!(yields >= 4 * 16, "{yields} yields");
        assert_eq!(device.counters.batches_interrupted, yields);
        assert_eq!(device.pool.snapshot(), reference.pool.snapshot());
    }

    #[test]
    fn an_abandoned_map_gives_its_new_backing_back() {
        let mem = memory();
        let mut device = donated_device();
        let mut batch = device.begin_batch(long_batch(), 1 << 16).unwrap();
        // Stop within the MAP's zeroing: after CREATE, ATTACH, one step.
        let mut asked = 0;
        let progress = device.run_batch(&mem, &mut batch, &mut || {
            asked += 1;
            asked == 3
        });
        assert!(matches!(progress, Progress::Yielded));
        assert!(device.pool.backing(1).is_ok(), "MAP allocated");
        device.abandon_batch(batch);
        assert_eq!(device.pool.backing(1).unwrap_err().errno(), libc::ENODATA);
        let snapshot = device.pool.snapshot();
        assert_eq!(snapshot.attachments[0].maps, [0, 0, 0]);
        assert_eq!(device.pool.allocator_stats()[0].free, 0x40_0000);
    }

    fn stats_len(device: &mut Device) -> usize {
        let mem = memory();
        let (status, slot) = run_one(device, &mem, CENALLOC_CMD_STATS, &[], 1 << 20);
        assert_eq!(status, 0);
        slot.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
    }

    #[test]
    fn stats_size_floors_are_lower_bounds() {
        let mut device = Device::new(DeviceConfig::default_layout()).unwrap();
        let empty = stats_len(&mut device);
        let buffer = device.pool.create(4096, 0, 0).unwrap().id;
        let one_buffer = stats_len(&mut device);
        device
            .pool
            .attach(buffer, 1, &[MappingType::ScatterGather])
            .unwrap();
        let one_attachment = stats_len(&mut device);
        assert!(one_buffer - empty >= STATS_MIN_BUFFER_BYTES);
        assert!(one_attachment - one_buffer >= STATS_MIN_ATTACHMENT_BYTES);
    }

    #[test]
    fn a_snapshot_larger_than_stats_max_bytes_fails_with_e2big() {
        let mem = memory();
        let mut device = Device::new(DeviceConfig::default_layout()).unwrap();
        // Under the floor (150 bytes a buffer), over the cap once written.
        for _ in 0..27_000 {
            device.pool.create(4096, 0, 0).unwrap();
        }
        let (status, _) = run_one(&mut device, &mem, CENALLOC_CMD_STATS, &[], 8);
        assert_eq!(status, -libc::E2BIG);
        // Refused once the serialization passed the cap: it wrote into the
        // slot, and reports how far it got.
        let mut slot = vec![0xa5u8; 64];
        match device.stats(&mut slot) {
            Err(Error::SnapshotTooLarge { at_least }) => {
                assert!(at_least > STATS_MAX_BYTES && at_least < STATS_MAX_BYTES + 4096)
            }
            other => panic!("expected the late refusal, got {other:?}"),
        }
        assert!(
            slot.iter().any(|&b| b != 0xa5),
            "the snapshot was not built"
        );
        // Over the floor: refused from the counts, before anything is built
        // (the slot stays untouched, the size reported is the floor).
        for _ in 0..1_000 {
            device.pool.create(4096, 0, 0).unwrap();
        }
        let floor = device.pool.num_buffers() * STATS_MIN_BUFFER_BYTES;
        assert!(floor > STATS_MAX_BYTES);
        let mut slot = vec![0xa5u8; 64];
        match device.stats(&mut slot) {
            Err(Error::SnapshotTooLarge { at_least }) => assert_eq!(
                at_least, floor,
                "refused after building the snapshot, not from the counts"
            ),
            other => panic!("expected the early refusal, got {other:?}"),
        }
        assert!(slot.iter().all(|&b| b == 0xa5), "the snapshot was built");
        let counters = device.counters.clone();
        let (status, _) = run_one(&mut device, &mem, CENALLOC_CMD_STATS, &[], 8);
        assert_eq!(status, -libc::E2BIG);
        assert_eq!(
            device.counters.failed_commands,
            counters.failed_commands + 1
        );
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
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

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

    /// The extents `stateful_device` holds leased (allocator 0), and
    /// their length.
    const LEASED: [u64; 2] = [0x40_4000, 0x41_4000];
    const LEASED_LEN: u64 = 0x1_0000;

    /// Fields that get LEASE, LEASE_RETURN and LEASED_MAP past their
    /// first checks often enough: the leased extents, their length,
    /// driver ids, the allocator that leased.
    fn extent_addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            12 => proptest::sample::select(LEASED.to_vec()),
            1 => Just(LEASED[0] + 0x1000),
            1 => Just(0x40_0000u64),
            1 => any::<u64>(),
        ]
    }

    fn byte_size() -> impl Strategy<Value = u64> {
        prop_oneof![
            6 => Just(LEASED_LEN),
            6 => Just(0x1000u64),
            1 => Just(2 * LEASED_LEN),
            1 => Just(0u64),
            1 => any::<u64>(),
        ]
    }

    fn allocator_id() -> impl Strategy<Value = u32> {
        prop_oneof![12 => Just(0u32), 1 => 1u32..6, 1 => any::<u32>()]
    }

    fn driver_id() -> impl Strategy<Value = u32> {
        prop_oneof![
            12 => CENALLOC_DRIVER_ID_FIRST..CENALLOC_DRIVER_ID_FIRST + 3,
            1 => 0u32..3,
            1 => Just(CENALLOC_BATCH_REF),
            1 => any::<u32>(),
        ]
    }

    fn kind_mask() -> impl Strategy<Value = u32> {
        prop_oneof![
            12 => Just(CENALLOC_KIND_SYSTEM),
            1 => Just(CENALLOC_KIND_DMA32),
            1 => Just(0u32),
            1 => any::<u32>(),
        ]
    }

    fn map_type() -> impl Strategy<Value = u32> {
        prop_oneof![12 => Just(CENALLOC_MAP_SG), 1 => Just(CENALLOC_MAP_CONTIG), 1 => any::<u32>()]
    }

    /// A count that mostly matches the records that follow.
    fn count_of(len: usize) -> impl Strategy<Value = u32> {
        prop_oneof![12 => Just(len as u32), 1 => 0u32..4, 1 => any::<u32>()]
    }

    /// Mostly zero (reserved fields, directions).
    fn mostly_zero() -> impl Strategy<Value = u32> {
        prop_oneof![12 => Just(0u32), 1 => 1u32..4, 1 => any::<u32>()]
    }

    fn lease_payload() -> BoxedStrategy<Vec<u8>> {
        (
            allocator_id(),
            prop_oneof![4 => 1u32..4, 1 => any::<u32>()],
            byte_size(),
        )
            .prop_map(|(allocator_id, count, size)| {
                LeaseReq {
                    allocator_id,
                    count,
                    size,
                }
                .as_slice()
                .to_vec()
            })
            .boxed()
    }

    fn lease_return_payload() -> BoxedStrategy<Vec<u8>> {
        proptest::collection::vec((extent_addr(), byte_size()), 0..4)
            .prop_flat_map(|ranges| {
                (allocator_id(), count_of(ranges.len()), Just(ranges)).prop_map(
                    |(allocator_id, num_ranges, ranges)| {
                        let mut out = LeaseReturnReq {
                            allocator_id,
                            num_ranges,
                        }
                        .as_slice()
                        .to_vec();
                        for (addr, len) in ranges {
                            out.extend_from_slice(Range { addr, len }.as_slice());
                        }
                        out
                    },
                )
            })
            .boxed()
    }

    fn leased_attach() -> BoxedStrategy<LeasedAttach> {
        (
            driver_id(),
            kind_mask(),
            map_type(),
            proptest::collection::vec(map_type(), 1..3),
            mostly_zero(),
        )
            .prop_map(|(attach_id, mask, map_type, listed, extra)| {
                let mut types = [0; CENALLOC_MAX_MAP_TYPES];
                types[..listed.len()].copy_from_slice(&listed);
                LeasedAttach {
                    attach_id,
                    mask,
                    map_type,
                    num_types: listed.len() as u32 + extra,
                    types,
                }
            })
            .boxed()
    }

    fn leased_map_payload() -> BoxedStrategy<Vec<u8>> {
        proptest::collection::vec(leased_attach(), 0..3)
            .prop_flat_map(|records| {
                let last = records.len().saturating_sub(1) as u32;
                (
                    (driver_id(), mostly_zero(), byte_size(), extent_addr()),
                    (
                        prop_oneof![6 => 0..=last, 1 => 0u32..4],
                        mostly_zero(),
                        count_of(records.len()),
                        mostly_zero(),
                    ),
                    Just(records),
                )
                    .prop_map(
                        |(
                            (buffer_id, initial_mask, size, extent),
                            (map_index, direction, num_attachments, reserved),
                            records,
                        )| {
                            let mut out = LeasedMapReq {
                                buffer_id,
                                initial_mask,
                                size,
                                extent,
                                map_index,
                                direction,
                                num_attachments,
                                reserved,
                            }
                            .as_slice()
                            .to_vec();
                            for record in records {
                                out.extend_from_slice(record.as_slice());
                            }
                            out
                        },
                    )
            })
            .boxed()
    }

    /// One command of any opcode, 0 to 23: small words for the older
    /// commands (and the share opcodes, refused as unknown for now),
    /// structured payloads (sometimes cut short) for the lease commands,
    /// whose requests are too long for random words to frame.
    fn command() -> BoxedStrategy<(u16, Vec<u8>)> {
        let lease = prop_oneof![
            lease_payload().prop_map(|p| (CENALLOC_CMD_LEASE, p)),
            lease_return_payload().prop_map(|p| (CENALLOC_CMD_LEASE_RETURN, p)),
            leased_map_payload().prop_map(|p| (CENALLOC_CMD_LEASED_MAP, p)),
        ];
        prop_oneof![
            3 => (
                0u16..=CENALLOC_CMD_REVOKE_ACK,
                proptest::collection::vec(
                    prop_oneof![3 => Just(0u32), 2 => Just(1u32), 1 => 2u32..16, 1 => any::<u32>()],
                    0..12,
                ),
            )
                .prop_map(|(opcode, words)| {
                    (opcode, words.iter().flat_map(|w| w.to_le_bytes()).collect())
                }),
            3 => (lease, prop_oneof![12 => Just(0usize), 1 => 1usize..16]).prop_map(
                |((opcode, mut payload), cut)| {
                    payload.truncate(payload.len().saturating_sub(cut));
                    (opcode, payload)
                },
            ),
        ]
        .boxed()
    }

    /// What one command did to the state `stateful_device` builds.
    #[derive(Debug, Default)]
    struct Reach {
        /// Lease commands that changed the pool.
        leases: u64,
        lease_returns: u64,
        leased_maps: u64,
        /// LEASED_MAPs the model refused (they got past the framing).
        leased_maps_refused: u64,
    }

    /// Runs one command on `stateful_device`; a failed command must leave
    /// the pool and the event queue as they were (the documented
    /// exceptions aside).
    fn failed_command_changes_nothing(
        opcode: u16,
        payload: Vec<u8>,
        resp_len: u32,
    ) -> Result<Reach, TestCaseError> {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let mut device = stateful_device(&mem);
        let before = (device.pool.snapshot(), device.events.clone());
        let refused = device.counters.leased_maps_refused;
        let out = device.execute_batch(&mem, &framed(&[(opcode, payload, resp_len)]), 1 << 20);
        let status = u32::from_le_bytes(out[0..4].try_into().unwrap()) as i32;
        let after = (device.pool.snapshot(), device.events.clone());
        if status == 0 {
            // (A RESET sets the counters back.)
            let (old, new) = (&before.0.counters, &after.0.counters);
            return Ok(Reach {
                leases: new.leased_extents.saturating_sub(old.leased_extents),
                lease_returns: new.lease_returns.saturating_sub(old.lease_returns),
                leased_maps: new.leased_maps.saturating_sub(old.leased_maps),
                leased_maps_refused: 0,
            });
        }
        if opcode == CENALLOC_CMD_MAP && status == -libc::ENOSPC {
            // The header's one exception: a MAP whose answer does not fit
            // keeps the backing it allocated (and counts a map and unmap).
        } else if opcode == CENALLOC_CMD_MAP && status == -libc::EAGAIN {
            // Room only in the leased stock: nothing changes but a
            // LEASE_REVOKE for the allocator.
            prop_assert_eq!(&after.0, &before.0);
            prop_assert_eq!(after.1.len(), before.1.len() + 1);
            prop_assert!(after.1.iter().zip(&before.1).all(|(a, b)| a == b));
            let revoke = after.1.back().unwrap();
            prop_assert_eq!(revoke.event_type, CENALLOC_EVENT_LEASE_REVOKE);
            prop_assert_eq!(revoke.buffer_id, 0);
        } else {
            prop_assert_eq!(&after, &before);
        }
        Ok(Reach {
            leased_maps_refused: device.counters.leased_maps_refused - refused,
            ..Reach::default()
        })
    }

    /// A device with donated memory, one mapped and filled buffer, two
    /// leased extents and a pending event.
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
        let lease = LeaseReq {
            allocator_id: 0,
            count: LEASED.len() as u32,
            size: LEASED_LEN,
        };
        let out = device.execute_batch(
            mem,
            &framed(&[
                (CENALLOC_CMD_CREATE, create.as_slice().to_vec(), 2),
                (CENALLOC_CMD_ATTACH, attach.as_slice().to_vec(), 2),
                (CENALLOC_CMD_MAP, map.as_slice().to_vec(), 8),
                (CENALLOC_CMD_FILL, fill.as_slice().to_vec(), 0),
                (CENALLOC_CMD_LEASE, lease.as_slice().to_vec(), 8),
            ]),
            1 << 20,
        );
        assert_eq!(&out[0..8], &[0, 0, 0, 0, 5, 0, 0, 0]);
        let stock: Vec<u64> = device.pool.stock(0).iter().map(|e| e.addr).collect();
        assert_eq!(stock, LEASED, "the leased extents moved: update LEASED");
        device.push_event(Event {
            event_type: CENALLOC_EVENT_POOL_LOW,
            buffer_id: 0,
            data: 0,
        });
        device
    }

    /// One step of a VM's life for the journal properties.
    #[derive(Clone, Debug)]
    enum Life {
        /// A batch answered in full.
        Batch(Vec<(u16, Vec<u8>, u32)>),
        /// A batch given up after `yields` chances to stop (its chain
        /// never came back).
        Abandoned(Vec<(u16, Vec<u8>, u32)>, usize),
        /// The event ring took the oldest event.
        PopEvent,
        /// A LEASE of one 64 KiB extent, then a LEASED_MAP of a buffer
        /// with the driver's ids (offset by this) on the extent it gave.
        LeaseAndMap(u32),
    }

    fn small_id() -> impl Strategy<Value = u32> {
        prop_oneof![8 => 1u32..6, 2 => Just(CENALLOC_BATCH_REF), 1 => Just(CENALLOC_BATCH_REF | 1)]
    }

    /// Commands that mostly succeed on a device with donated memory, so
    /// that the state grows, shrinks, migrates and leases.
    fn lifecycle() -> BoxedStrategy<(u16, Vec<u8>, u32)> {
        let create =
            prop_oneof![3 => 1u64..0x4000, 1 => 0x1_0000u64..0x6_0000, 1 => Just(0x10_0000u64)]
                .prop_map(|size| {
                    let req = CreateReq {
                        size,
                        flags: 0,
                        initial_mask: 0,
                    };
                    (CENALLOC_CMD_CREATE, req.as_slice().to_vec(), 2)
                });
        let attach = (
            small_id(),
            prop_oneof![4 => Just(CENALLOC_KIND_SYSTEM), 1 => Just(CENALLOC_KIND_DMA32)],
            map_type(),
        )
            .prop_map(|(buffer_id, mask, map_type)| {
                let mut req = AttachReq {
                    buffer_id,
                    mask,
                    num_types: 1,
                    ..Default::default()
                };
                req.types[0] = map_type;
                (CENALLOC_CMD_ATTACH, req.as_slice().to_vec(), 2)
            });
        let by_attachment = (
            prop_oneof![
                Just(CENALLOC_CMD_MAP),
                Just(CENALLOC_CMD_UNMAP),
                Just(CENALLOC_CMD_DETACH)
            ],
            small_id(),
        )
            .prop_map(|(opcode, id)| {
                let payload = match opcode {
                    CENALLOC_CMD_DETACH => DetachReq {
                        attach_id: id,
                        reserved: 0,
                    }
                    .as_slice()
                    .to_vec(),
                    CENALLOC_CMD_UNMAP => UnmapReq {
                        attach_id: id,
                        direction: 0,
                    }
                    .as_slice()
                    .to_vec(),
                    _ => MapReq {
                        attach_id: id,
                        direction: 0,
                    }
                    .as_slice()
                    .to_vec(),
                };
                (opcode, payload, 16)
            });
        let by_buffer = (
            prop_oneof![
                Just(CENALLOC_CMD_FREE),
                Just(CENALLOC_CMD_FILL),
                Just(CENALLOC_CMD_CHECKSUM)
            ],
            small_id(),
            any::<u64>(),
        )
            .prop_map(|(opcode, id, seed)| {
                let payload = match opcode {
                    CENALLOC_CMD_FREE => FreeReq {
                        buffer_id: id,
                        reserved: 0,
                    }
                    .as_slice()
                    .to_vec(),
                    CENALLOC_CMD_FILL => FillReq {
                        buffer_id: id,
                        reserved: 0,
                        seed,
                    }
                    .as_slice()
                    .to_vec(),
                    _ => ChecksumReq {
                        buffer_id: id,
                        reserved: 0,
                    }
                    .as_slice()
                    .to_vec(),
                };
                (opcode, payload, 2)
            });
        let pool_add = (0u64..4).prop_map(|n| {
            let mut out = PoolAddReq {
                pool_index: 0,
                num_ranges: 1,
            }
            .as_slice()
            .to_vec();
            out.extend_from_slice(
                Range {
                    addr: 0x40_0000 + n * 0x10_0000,
                    len: 0x10_0000,
                }
                .as_slice(),
            );
            (CENALLOC_CMD_POOL_ADD, out, 0)
        });
        let leases = prop_oneof![
            lease_payload().prop_map(|p| (CENALLOC_CMD_LEASE, p, 8)),
            lease_return_payload().prop_map(|p| (CENALLOC_CMD_LEASE_RETURN, p, 0)),
            leased_map_payload().prop_map(|p| (CENALLOC_CMD_LEASED_MAP, p, 8)),
        ];
        prop_oneof![
            4 => create,
            4 => attach,
            6 => by_attachment,
            4 => by_buffer,
            2 => leases,
            1 => pool_add,
            1 => command().prop_map(|(opcode, payload)| (opcode, payload, 8)),
        ]
        .boxed()
    }

    /// CREATE, ATTACH and MAP of one new buffer (ids from the batch).
    fn new_mapped_buffer() -> impl Strategy<Value = Vec<(u16, Vec<u8>, u32)>> {
        prop_oneof![
            2 => 1u64..0x4000,
            1 => 0x1_0000u64..0x6_0000,
            1 => Just(0x10_0000u64),
            1 => Just(0x1e_0000u64),
        ]
        .prop_map(new_mapped_buffer_cmds)
    }

    fn new_mapped_buffer_cmds(size: u64) -> Vec<(u16, Vec<u8>, u32)> {
        let create = CreateReq {
            size,
            flags: 0,
            initial_mask: 0,
        };
        let mut attach = AttachReq {
            buffer_id: CENALLOC_BATCH_REF,
            mask: CENALLOC_KIND_SYSTEM,
            num_types: 1,
            ..Default::default()
        };
        attach.types[0] = CENALLOC_MAP_SG;
        let map = MapReq {
            attach_id: CENALLOC_BATCH_REF | 1,
            direction: 0,
        };
        vec![
            (CENALLOC_CMD_CREATE, create.as_slice().to_vec(), 2),
            (CENALLOC_CMD_ATTACH, attach.as_slice().to_vec(), 2),
            (CENALLOC_CMD_MAP, map.as_slice().to_vec(), 64),
        ]
    }

    fn life() -> impl Strategy<Value = Vec<Life>> {
        let batch = prop_oneof![
            2 => proptest::collection::vec(lifecycle(), 1..5),
            1 => new_mapped_buffer(),
        ];
        let reset = vec![(
            CENALLOC_CMD_RESET,
            ResetReq {
                flags: 0,
                reserved: 0,
            }
            .as_slice()
            .to_vec(),
            2,
        )];
        proptest::collection::vec(
            prop_oneof![
                16 => batch.clone().prop_map(Life::Batch),
                2 => (batch, 0usize..6).prop_map(|(cmds, yields)| Life::Abandoned(cmds, yields)),
                4 => Just(Life::PopEvent),
                1 => Just(Life::Batch(reset)),
                3 => (0u32..64).prop_map(Life::LeaseAndMap),
            ],
            1..40,
        )
    }

    /// Runs `life` on a device that keeps a journal (after donating 2 MiB
    /// of `mem`); returns the device.
    fn live(mem: &GuestMemoryMmap, life: &[Life]) -> Device {
        live_compacting(mem, life, u64::MAX)
    }

    /// [`live`] with the journal's records replaced by the device's image
    /// whenever they pass `compact_after` bytes.
    fn live_compacting(mem: &GuestMemoryMmap, life: &[Life], compact_after: u64) -> Device {
        let config = DeviceConfig::default_layout();
        let origin = Pool::new(config.pool.clone()).unwrap().origin();
        let journal = Journal::create(origin, journal::DEFAULT_LIMIT).unwrap();
        let mut device = Device::new(config).unwrap().with_journal(journal);
        device.set_journal_compaction(compact_after);
        let mut donate = PoolAddReq {
            pool_index: 0,
            num_ranges: 1,
        }
        .as_slice()
        .to_vec();
        donate.extend_from_slice(
            Range {
                addr: 0x40_0000,
                len: 0x20_0000,
            }
            .as_slice(),
        );
        device.execute_batch(mem, &framed(&[(CENALLOC_CMD_POOL_ADD, donate, 0)]), 1 << 12);
        for (position, step) in life.iter().enumerate() {
            match step {
                Life::Batch(cmds) => {
                    let request = framed(cmds);
                    if let Ok(mut batch) = device.begin_batch(request, 1 << 16) {
                        batch.set_chain(position as u16, 0);
                        loop {
                            if let Progress::Done(answer) =
                                device.run_batch(mem, &mut batch, &mut || false)
                            {
                                device.commit_batch(&batch, answer.len() as u32);
                                break;
                            }
                        }
                    }
                }
                Life::Abandoned(cmds, yields) => {
                    if let Ok(mut batch) = device.begin_batch(framed(cmds), 1 << 16) {
                        let mut left = *yields;
                        let mut yield_now = || {
                            if left == 0 {
                                return true;
                            }
                            left -= 1;
                            false
                        };
                        match device.run_batch(mem, &mut batch, &mut yield_now) {
                            Progress::Yielded => device.abandon_batch(batch),
                            // It finished before it could be given up.
                            Progress::Done(answer) => {
                                device.commit_batch(&batch, answer.len() as u32)
                            }
                        }
                    }
                }
                Life::PopEvent => {
                    device.counters.events_sent += u64::from(device.has_events());
                    device.pop_event();
                }
                Life::LeaseAndMap(offset) => {
                    let lease = LeaseReq {
                        allocator_id: 0,
                        count: 1,
                        size: 0x1_0000,
                    };
                    let answer = device.execute_batch(
                        mem,
                        &framed(&[(CENALLOC_CMD_LEASE, lease.as_slice().to_vec(), 8)]),
                        1 << 12,
                    );
                    // batch_resp, resp_hdr, lease_resp, then the range.
                    let Some(range) = read_struct::<Range>(&answer, 8 + 16 + 8) else {
                        continue;
                    };
                    if answer[0..4] != [0; 4] {
                        continue;
                    }
                    let mut types = [0; CENALLOC_MAX_MAP_TYPES];
                    types[0] = CENALLOC_MAP_SG;
                    let mut map = LeasedMapReq {
                        buffer_id: CENALLOC_DRIVER_ID_FIRST + offset,
                        initial_mask: 0,
                        size: range.len,
                        extent: range.addr,
                        map_index: 0,
                        direction: 0,
                        num_attachments: 1,
                        reserved: 0,
                    }
                    .as_slice()
                    .to_vec();
                    map.extend_from_slice(
                        LeasedAttach {
                            attach_id: CENALLOC_DRIVER_ID_FIRST + offset,
                            mask: CENALLOC_KIND_SYSTEM,
                            map_type: CENALLOC_MAP_SG,
                            num_types: 1,
                            types,
                        }
                        .as_slice(),
                    );
                    device.execute_batch(
                        mem,
                        &framed(&[(CENALLOC_CMD_LEASED_MAP, map, 8)]),
                        1 << 12,
                    );
                }
            }
        }
        device
    }

    /// The device rebuilt from `device`'s journal as a successor would.
    fn replayed(device: &Device, mem: &GuestMemoryMmap) -> Result<Device, ReplayError> {
        use std::os::fd::AsFd;
        let journal = device.journal().expect("the journal failed");
        let fd = journal.as_fd().try_clone_to_owned().unwrap();
        let (_, origin, records) = Journal::adopt(fd, journal::DEFAULT_LIMIT).unwrap();
        Device::replay(DeviceConfig::default_layout(), origin, &records, mem)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The device a successor rebuilds from the journal is the one the
        /// dead process had: same pool (buffers, ids, backings, leases,
        /// regions, counters) and the same pending events; and the replay
        /// writes nothing to guest memory.
        #[test]
        fn replaying_the_journal_rebuilds_the_device(
            life in life(),
            compact_after in prop_oneof![Just(u64::MAX), 0u64..2048],
        ) {
            let mem = memory();
            let device = live_compacting(&mem, &life, compact_after);
            // What the guest wrote since: the replay must leave it.
            let before = vec![0x5a; 0x100_0000];
            mem.write_slice(&before, GuestAddress(0)).unwrap();
            let successor = replayed(&device, &mem).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(successor.pool.snapshot(), device.pool.snapshot());
            prop_assert_eq!(&successor.events, &device.events);
            let mut after = vec![0u8; 0x100_0000];
            mem.read_slice(&mut after, GuestAddress(0)).unwrap();
            prop_assert!(before == after, "the replay wrote guest memory");
        }

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
            (opcode, payload) in command(),
            resp_len in 0u32..8,
        ) {
            failed_command_changes_nothing(opcode, payload, resp_len)?;
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
                prop_oneof![
                    1 => (0u16..=CENALLOC_CMD_REVOKE_ACK, proptest::collection::vec(any::<u8>(), 0..64)),
                    1 => command(),
                ]
                .prop_flat_map(|(opcode, payload)| (Just(opcode), Just(payload), 0u32..64)),
                1..8,
            ),
        ) {
            let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
            // Memory, a mapped buffer and leased extents, so MAP, FILL,
            // CHECKSUM and the lease commands can reach guest RAM.
            let mut device = stateful_device(&mem);
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

    /// A RESET that leaves the device as a new one starts the journal over
    /// (it does not grow with the VM's life across resets); a batch that
    /// leaves state behind after its RESET does not.
    #[test]
    fn a_reset_starts_the_journal_over() {
        let mem = memory();
        let reset = (
            CENALLOC_CMD_RESET,
            ResetReq {
                flags: 0,
                reserved: 0,
            }
            .as_slice()
            .to_vec(),
            2,
        );
        let life = [
            Life::Batch(new_mapped_buffer_cmds(0x4000)),
            Life::Batch(vec![reset.clone()]),
        ];
        let device = live(&mem, &life);
        {
            use std::os::fd::AsFd;
            let fd = device
                .journal()
                .unwrap()
                .as_fd()
                .try_clone_to_owned()
                .unwrap();
            let (_, _, records) = Journal::adopt(fd, journal::DEFAULT_LIMIT).unwrap();
            // Only the RESET batch's answer, at its chain (position 1).
            assert!(
                matches!(
                    records.as_slice(),
                    [journal::Record::Answer { chain: (1, 0), .. }]
                ),
                "{records:?}"
            );
        }
        let successor = replayed(&device, &mem).unwrap();
        assert_eq!(successor.pool.snapshot(), device.pool.snapshot());
        assert_eq!(successor.origin(), device.origin());
        assert!(device.origin().next_buffer_id > 1);

        let mut after_reset = vec![reset];
        after_reset.extend(new_mapped_buffer_cmds(0x4000));
        let device = live(&mem, &[Life::Batch(after_reset)]);
        assert!(!device.journal().unwrap().is_empty());
        let successor = replayed(&device, &mem).unwrap();
        assert_eq!(successor.pool.snapshot(), device.pool.snapshot());
    }

    /// Guards the journal property's generator: its lives end with
    /// buffers, mappings, leases and pending events, give batches up inside
    /// a command's work, pop events and reset (the same draws, from a fixed
    /// seed).
    #[test]
    fn the_journal_property_reaches_a_full_device() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = life();
        let (mut buffers, mut mapped, mut leased, mut events, mut pops, mut held, mut resets) =
            (0, 0, 0, 0, 0, 0, 0);
        let (mut images, mut leased_images) = (0, 0);
        let mem = memory();
        for _ in 0..256 {
            let life =
                proptest::strategy::ValueTree::current(&strategy.new_tree(&mut runner).unwrap());
            let device = live(&mem, &life);
            let snapshot = device.pool.snapshot();
            buffers += snapshot.buffers.len();
            mapped += snapshot
                .buffers
                .iter()
                .filter(|b| !b.backing.is_empty())
                .count();
            leased += device.pool.stock(0).len();
            events += device.events.len();
            resets += device.counters.resets;
            pops += device.counters.events_sent;
            held += device.counters.batches_interrupted;
            assert!(device.journal().is_some());
            let compacting = live_compacting(&mem, &life, 512);
            images += compacting.counters.journal_images;
            // Images that hold leased maps (the driver's ids).
            if compacting.counters.journal_images > 0
                && compacting
                    .pool
                    .snapshot()
                    .buffers
                    .iter()
                    .any(|b| b.id >= CENALLOC_DRIVER_ID_FIRST)
            {
                leased_images += 1;
            }
        }
        let reach = (buffers, mapped, leased, events, pops, held, resets);
        eprintln!("{reach:?}");
        assert!(buffers > 256 && mapped > 64 && leased > 16, "{reach:?}");
        assert!(
            events > 0 && pops > 64 && held > 16 && resets > 8,
            "{reach:?}"
        );
        eprintln!("{images} journal images at 512 bytes, {leased_images} lives with leased maps");
        assert!(images > 64, "{images} journal images");
        assert!(leased_images > 8, "{leased_images} lives with leased maps");
    }

    /// The version-1 request of each `CENALLOC_F_SHARE` opcode, naming the
    /// buffer `stateful_device` holds (id 1), and its answer's size.
    fn share_requests() -> Vec<(u16, Vec<u8>, u32)> {
        let share = ShareReq {
            buffer_id: 1,
            flags: CENALLOC_SHARE_F_WRITABLE,
            group: encode_name("camera"),
            reserved: 0,
        };
        let unshare = UnshareReq {
            buffer_id: 1,
            flags: 0,
            token: 1,
        };
        let import = ImportReq {
            token: 1,
            flags: CENALLOC_IMPORT_F_WRITABLE,
            initial_mask: CENALLOC_KIND_SYSTEM,
        };
        let release = ReleaseReq {
            buffer_id: 1,
            reserved: 0,
        };
        let revoke_ack = RevokeAckReq {
            buffer_id: 1,
            reserved: 0,
            serial: 1,
        };
        vec![
            (
                CENALLOC_CMD_SHARE,
                share.as_slice().to_vec(),
                size_of::<ShareResp>() as u32,
            ),
            (
                CENALLOC_CMD_UNSHARE,
                unshare.as_slice().to_vec(),
                size_of::<UnshareResp>() as u32,
            ),
            (
                CENALLOC_CMD_IMPORT,
                import.as_slice().to_vec(),
                size_of::<ImportResp>() as u32,
            ),
            (CENALLOC_CMD_RELEASE, release.as_slice().to_vec(), 0),
            (CENALLOC_CMD_REVOKE_ACK, revoke_ack.as_slice().to_vec(), 0),
        ]
    }

    /// Design step 2 (docs/design/cross-vm-sharing.md): the share
    /// protocol is defined, not offered. The bit is not offered, and each
    /// of opcodes 19-23, with its version-1 payload (or a longer, zeroed
    /// one) on a device with a buffer, leases and a pending event, is
    /// answered -EOPNOTSUPP as an unknown opcode: no answer bytes, the
    /// batch stops there, the pool and the events are unchanged.
    #[test]
    fn share_opcodes_are_refused_as_unknown_and_change_nothing() {
        // With and without leases (the bits the daemon offers depend on
        // the configuration).
        for max_lease_bytes in [0, 1 << 20] {
            let mut config = DeviceConfig::default_layout();
            config.pool.limits.max_lease_bytes = max_lease_bytes;
            assert_eq!(config.features() & (1 << CENALLOC_F_SHARE), 0);
        }
        let mem = memory();
        let mut requests = share_requests();
        assert_eq!(requests.len(), 5);
        for (opcode, payload, resp_len) in share_requests() {
            let mut longer = payload;
            longer.extend_from_slice(&[0; 8]);
            requests.push((opcode, longer, resp_len));
        }
        for (opcode, payload, resp_len) in requests {
            let mut device = stateful_device(&mem);
            let before = (device.pool.snapshot(), device.events.clone());
            let failed = device.counters.failed_commands;
            let mut request = BatchHdr {
                num_cmds: 2,
                reserved: 0,
            }
            .as_slice()
            .to_vec();
            for (opcode, payload, resp_len) in [
                (opcode, payload.as_slice(), resp_len),
                (CENALLOC_CMD_STATS, &[][..], 8),
            ] {
                let hdr = CmdHdr {
                    opcode,
                    flags: 0,
                    len: payload.len() as u32,
                    resp_len,
                    reserved: 0,
                };
                request.extend_from_slice(hdr.as_slice());
                request.extend_from_slice(payload);
            }
            let writable =
                size_of::<BatchResp>() + 2 * size_of::<RespHdr>() + resp_len as usize + 8;
            let out = device.execute_batch(&mem, &request, writable);
            assert_eq!(out.len(), writable, "opcode {opcode}");
            let batch: BatchResp = read_struct(&out, 0).unwrap();
            assert_eq!(batch.status as i32, -libc::EOPNOTSUPP, "opcode {opcode}");
            assert_eq!(batch.num_done, 0, "opcode {opcode}");
            let first: RespHdr = read_struct(&out, size_of::<BatchResp>()).unwrap();
            assert_eq!(
                (first.status as i32, first.len, first.needed),
                (-libc::EOPNOTSUPP, 0, 0),
                "opcode {opcode}"
            );
            let slot = size_of::<BatchResp>() + size_of::<RespHdr>();
            assert!(
                out[slot..slot + resp_len as usize].iter().all(|&b| b == 0),
                "opcode {opcode} wrote answer bytes"
            );
            let second: RespHdr = read_struct(&out, slot + resp_len as usize).unwrap();
            assert_eq!(second.status as i32, -libc::ECANCELED, "opcode {opcode}");
            assert_eq!(
                (device.pool.snapshot(), device.events.clone()),
                before,
                "opcode {opcode} changed the device"
            );
            assert_eq!(device.counters.failed_commands, failed + 1);
        }
    }

    /// Guards the generator: the commands `a_failed_command_changes_nothing`
    /// draws reach the lease commands' real work, not just their framing
    /// checks (the same draws, from a fixed seed).
    #[test]
    fn the_failed_command_property_reaches_the_lease_commands() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = (command(), 0u32..8);
        let mut total = Reach::default();
        for _ in 0..512 {
            let ((opcode, payload), resp_len) =
                proptest::strategy::ValueTree::current(&strategy.new_tree(&mut runner).unwrap());
            let reach = failed_command_changes_nothing(opcode, payload, resp_len).unwrap();
            total.leases += reach.leases;
            total.lease_returns += reach.lease_returns;
            total.leased_maps += reach.leased_maps;
            total.leased_maps_refused += reach.leased_maps_refused;
        }
        eprintln!("{total:?}");
        assert!(total.leases > 0, "{total:?}");
        assert!(total.lease_returns > 0, "{total:?}");
        assert!(total.leased_maps > 0, "{total:?}");
        assert!(total.leased_maps_refused > 0, "{total:?}");
    }
}
