//! One VM's relay: a thread that accepts the VM's front-end connections
//! (one at a time, as `serve_vm` does) and relays whole vhost-user frames,
//! fds included, between the front-end and its relay end to the serving
//! process, keeping the session record and the one request not answered
//! yet. When the relay end closes because the serving process died, it
//! takes a relay end to the next one, replays the record into it
//! (swallowing the replies, which the front-end already had), re-sends
//! the request not answered yet, and goes on: the front-end sees nothing
//! but a late reply.
//!
//! When the relay end closes and the serving process did not die, the
//! serving process ended the connection on purpose (a request it refused,
//! the daemon limits): the front-end's connection is closed too, as
//! without a holder.
//!
//! Bounds: one frame at a time (4 KiB and 32 fds at most, see
//! [`super::frame`]), one request awaiting its reply (a front-end that
//! sends another before it has the reply is out of protocol and is
//! disconnected), and the record's own bounds. A front-end's frame must
//! be whole [`FRAME_TIMEOUT`] (5 s) after its first bytes came: one that
//! stops inside a frame (a header, then nothing) is disconnected then,
//! logged, and the frame's fds closed, so it holds neither the relay
//! thread nor descriptors. Blocking reads and writes only ever block this
//! VM's thread; nothing is read from a side that did not poll readable,
//! so no loop spins.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};

use super::frame::{self, Frame, FrameError, FLAG_NEED_REPLY, FLAG_REPLY, FRAME_TIMEOUT};
use super::persist::{self, Persister, Restored};
use super::record::Record;
use super::request::{self, Acks};
use super::serving::{Generation, Supervisor};

/// How long a relay end that closed waits for its serving process to
/// exit before it concludes that the process closed it on purpose.
const DEATH_GRACE: Duration = Duration::from_secs(2);
/// How long a replay waits for each reply of the new serving process.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("front-end: {0}")]
    FrontEnd(FrameError),
    #[error("the front-end sent request {0} before the reply to request {1}")]
    OutOfTurn(u32, u32),
    #[error("the serving process closed the connection (it is still running)")]
    ClosedByServer,
    #[error("{0}")]
    Gone(#[from] super::serving::Gone),
    #[error("the session record went past its bounds: it cannot be replayed")]
    NotRestorable,
    #[error("replay: {0}")]
    Replay(FrameError),
    #[error("replay: request {0} answered with request {1}")]
    ReplayOutOfStep(u32, u32),
    #[error("the front-end's frame changed between its peek and its read")]
    PeekMismatch,
}

/// A VM's relay.
pub struct VmRelay {
    pub name: String,
    /// Its index in the supervisor's plan.
    pub index: usize,
    /// The socket front-ends connect to.
    pub listener: UnixListener,
    pub supervisor: Arc<Supervisor>,
    /// Under systemd's fd store: where the relay state is kept for the
    /// holder's own death (super::persist).
    pub persist: std::cell::RefCell<Option<Persister>>,
    /// A session the store kept from a holder that died: its front-end's
    /// connection and its state.
    pub adopted: Option<(UnixStream, Restored)>,
}

impl VmRelay {
    /// Serves the VM's front-ends one after the other, until the holder
    /// has no serving process any more.
    pub fn serve(mut self) {
        if let Some((front_end, restored)) = self.adopted.take() {
            if !self.run_session(|vm| vm.adopted_session(&front_end, restored)) {
                return;
            }
        }
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let front_end = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(
                        "{}: cannot accept: {e}; trying again in {} ms",
                        self.name,
                        backoff.as_millis()
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            backoff = ACCEPT_BACKOFF_MIN;
            if !self.run_session(|vm| vm.session(&front_end)) {
                return;
            }
        }
    }

    /// Runs one session (`session`) while the VM is marked live (a serving
    /// process started meanwhile takes the device over from its journal),
    /// and says how it ended. Returns false when there will be no serving
    /// process any more: the holder stops or gave up, and leaves the
    /// session in the store, for the next holder to go on with.
    fn run_session(&self, session: impl FnOnce(&Self) -> Result<(), RelayError>) -> bool {
        self.supervisor.set_live(self.index, true);
        let ended = session(self);
        self.supervisor.set_live(self.index, false);
        match ended {
            Ok(()) => info!("{}: front-end disconnected", self.name),
            Err(e @ RelayError::Gone(_)) => {
                error!("{}: {e}; closing the front-end's connection", self.name);
                return false;
            }
            Err(e) => error!("{}: {e}; closing the front-end's connection", self.name),
        }
        self.forget_session();
        true
    }

    /// Under the fd store: the session ended, its state and connection
    /// leave the store.
    fn forget_session(&self) {
        if let Some(persister) = self.persist.borrow_mut().as_mut() {
            if let Err(e) = persister
                .clear()
                .and_then(|()| persister.remove_connection())
            {
                warn!("{}: fd store: {e}", self.name);
            }
        }
    }

    /// Relays one front-end connection until it ends.
    fn session(&self, front_end: &UnixStream) -> Result<(), RelayError> {
        if let Some(persister) = self.persist.borrow_mut().as_mut() {
            let stored = frame::enable_peek_offset(front_end)
                .map_err(persist::PersistError::Io)
                .and_then(|()| persister.clear())
                .and_then(|()| persister.put_connection(front_end));
            if let Err(e) = stored {
                warn!(
                    "{}: fd store: {e}; this session will not outlive the holder",
                    self.name
                );
                *self.persist.borrow_mut() = None;
            }
        }
        let (relay, generation) = self.supervisor.connect(self.index, None)?;
        info!(
            "{}: front-end connected, relayed to serving process {}",
            self.name, generation.pid
        );
        let mut session = Session {
            vm: self,
            record: Record::new(),
            acks: Acks::default(),
            pending: None,
            relay,
            generation,
        };
        session.run(front_end)
    }

    /// Goes on with a session a dead holder kept in the fd store: settles
    /// what it was doing with the front-end (a frame peeked but perhaps
    /// not read, a reply perhaps not written), then replays the session
    /// into the serving process, which takes the device over from its
    /// journal, and relays as before.
    fn adopted_session(
        &self,
        front_end: &UnixStream,
        restored: Restored,
    ) -> Result<(), RelayError> {
        let Restored {
            record,
            pending,
            replying,
            at_head,
        } = restored;
        frame::enable_peek_offset(front_end).map_err(|e| RelayError::FrontEnd(e.into()))?;
        if let Some(head) = at_head {
            if readable_now(front_end) {
                let peeked = peek_front_end(front_end).map_err(RelayError::FrontEnd)?;
                frame::enable_peek_offset(front_end).map_err(|e| RelayError::FrontEnd(e.into()))?;
                if persist::same_frame(&peeked, &head) {
                    Frame::read(front_end).map_err(RelayError::FrontEnd)?;
                    info!(
                        "{}: request {} was taken but not read off the socket: read now",
                        self.name, head.request
                    );
                }
            }
        }
        if let Some(reply) = replying {
            let sent =
                persist::reply_was_sent(front_end).map_err(|e| RelayError::FrontEnd(e.into()))?;
            if !sent {
                info!("{}: reply {} written again", self.name, reply.request);
                reply.write(front_end).map_err(RelayError::FrontEnd)?;
            }
        }
        if !record.restorable() {
            return Err(RelayError::NotRestorable);
        }
        let (relay, generation) = self.supervisor.connect(self.index, None)?;
        let mut session = Session {
            vm: self,
            record,
            acks: Acks::default(),
            pending,
            relay,
            generation,
        };
        session.save(None, None);
        match session.replay() {
            Ok(acks) => session.acks = acks,
            Err(e) => {
                warn!("{}: {e}", self.name);
                session.recover(&FrameError::Closed)?;
            }
        }
        info!(
            "{}: session adopted from the fd store and replayed into serving process {} ({} messages{})",
            self.name,
            session.generation.pid,
            session.record.len(),
            match &session.pending {
                Some(p) => format!(", then request {} again", p.request),
                None => String::new(),
            }
        );
        session.run(front_end)
    }
}

/// The front-end's next frame, peeked, with fds only if its request takes
/// any ([`request::takes_fds`]).
fn peek_front_end(sock: &UnixStream) -> Result<Frame, FrameError> {
    let mut frame = Frame::peek_within(sock, FRAME_TIMEOUT)?;
    if !request::takes_fds(frame.request) {
        frame.fds.clear();
    }
    Ok(frame)
}

/// Whether `sock` has bytes to read (or its peer closed) now. A poll,
/// not a peek: a peek would move the socket's peek offset.
fn readable_now(sock: &UnixStream) -> bool {
    persist::readable_now(sock)
}

/// One front-end connection's state in the holder.
struct Session<'a> {
    vm: &'a VmRelay,
    record: Record,
    /// Whether the back-end answers NEED_REPLY, as the front-end's
    /// requests passed.
    acks: Acks,
    /// The request sent and not answered yet.
    pending: Option<Frame>,
    relay: UnixStream,
    generation: Arc<Generation>,
}

/// Which of the two sides are readable (or closed).
fn poll2(a: &UnixStream, b: &UnixStream) -> std::io::Result<(bool, bool)> {
    let ready = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
    let mut fds = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is an array of two initialised pollfds that lives
        // across the call; the kernel writes only their `revents`.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ret > 0 {
            return Ok((fds[0].revents & ready != 0, fds[1].revents & ready != 0));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Session<'_> {
    fn run(&mut self, front_end: &UnixStream) -> Result<(), RelayError> {
        loop {
            let (from_front_end, from_server) =
                poll2(front_end, &self.relay).map_err(|e| RelayError::FrontEnd(e.into()))?;
            if from_server {
                match Frame::read(&self.relay) {
                    Ok(reply) => self.pass_reply(reply, front_end)?,
                    Err(e) => {
                        self.recover(&e)?;
                        continue;
                    }
                }
            }
            if from_front_end {
                let persisting = self.vm.persist.borrow().is_some();
                let taken = if persisting {
                    peek_front_end(front_end)
                } else {
                    Frame::read_within(front_end, FRAME_TIMEOUT)
                };
                let frame = match taken {
                    Ok(frame) => frame,
                    Err(FrameError::Closed) => return Ok(()),
                    Err(e) => return Err(RelayError::FrontEnd(e)),
                };
                let awaits = self.acks.request(&frame);
                if awaits {
                    if let Some(pending) = &self.pending {
                        return Err(RelayError::OutOfTurn(frame.request, pending.request));
                    }
                }
                let sent = frame.write(&self.relay);
                let head = if persisting {
                    Some(
                        frame
                            .try_clone()
                            .map_err(|e| RelayError::FrontEnd(e.into()))?,
                    )
                } else {
                    None
                };
                if awaits {
                    self.pending = Some(frame);
                } else {
                    self.keep(frame);
                }
                if let Some(head) = head {
                    // Saved with the frame at the head of the socket, read
                    // off it, saved without: see super::persist.
                    self.save(None, Some(&head));
                    let read = Frame::read(front_end).map_err(RelayError::FrontEnd)?;
                    if !persist::same_frame(&read, &head) {
                        return Err(RelayError::PeekMismatch);
                    }
                    self.save(None, None);
                }
                if let Err(e) = sent {
                    // Kept or pending: the replay sends it whole.
                    self.recover(&e)?;
                }
            }
        }
    }

    /// Under the fd store: saves the relay state (a failure is logged and
    /// ends the keeping: the session then does not outlive the holder).
    fn save(&mut self, replying: Option<&Frame>, at_head: Option<&Frame>) {
        let mut persist = self.vm.persist.borrow_mut();
        let Some(persister) = persist.as_mut() else {
            return;
        };
        if let Err(e) = persister.save(&self.record, self.pending.as_ref(), replying, at_head) {
            warn!(
                "{}: fd store: {e}; this session will not outlive the holder",
                self.vm.name
            );
            *persist = None;
        }
    }

    fn keep(&mut self, frame: Frame) {
        if let Err(e) = self.record.keep(frame) {
            error!("{}: {e}", self.vm.name);
        }
    }

    /// A frame from the serving process: the reply to the pending request
    /// goes to the front-end (and the request to the record); anything
    /// else is out of protocol and dropped.
    fn pass_reply(&mut self, reply: Frame, front_end: &UnixStream) -> Result<(), RelayError> {
        let matches = self
            .pending
            .as_ref()
            .is_some_and(|p| p.request == reply.request && reply.flags & FLAG_REPLY != 0);
        if !matches {
            warn!(
                "{}: the serving process sent request {} (flags {:#x}) unasked; dropped",
                self.vm.name, reply.request, reply.flags
            );
            return Ok(());
        }
        let Some(request) = self.pending.take() else {
            return Ok(());
        };
        self.acks.reply(&reply);
        // A REPLY_ACK that says the request failed: the back-end did not
        // take it, so it is not part of the session.
        let refused = request.flags & FLAG_NEED_REPLY != 0
            && !request::has_reply(request.request)
            && request::payload_u64(&reply.payload, 0).is_some_and(|v| v != 0);
        if !refused {
            self.keep(request);
        }
        self.save(Some(&reply), None);
        reply.write(front_end).map_err(RelayError::FrontEnd)?;
        self.save(None, None);
        Ok(())
    }

    /// The relay end failed (`why`): if the serving process died, carries
    /// on with the next one; otherwise the session ends.
    fn recover(&mut self, why: &FrameError) -> Result<(), RelayError> {
        loop {
            if !self.generation.died_within(DEATH_GRACE) {
                return Err(RelayError::ClosedByServer);
            }
            warn!(
                "{}: serving process {} died ({why}); waiting for the next one",
                self.vm.name, self.generation.pid
            );
            if !self.record.restorable() {
                return Err(RelayError::NotRestorable);
            }
            let (relay, generation) = self
                .vm
                .supervisor
                .connect(self.vm.index, Some(self.generation.number))?;
            self.relay = relay;
            self.generation = generation;
            match self.replay() {
                Ok(_) => {
                    info!(
                        "{}: session replayed into serving process {} ({} messages{})",
                        self.vm.name,
                        self.generation.pid,
                        self.record.len(),
                        match &self.pending {
                            Some(p) => format!(", then request {} again", p.request),
                            None => String::new(),
                        }
                    );
                    return Ok(());
                }
                Err(e) => warn!("{}: {e}", self.vm.name),
            }
        }
    }

    /// Sends the record to the new relay end, swallowing its replies, then
    /// the pending request (whose reply the main loop passes on); returns
    /// what the replies said about REPLY_ACK.
    fn replay(&mut self) -> Result<Acks, RelayError> {
        self.relay
            .set_read_timeout(Some(REPLAY_TIMEOUT))
            .map_err(|e| RelayError::Replay(e.into()))?;
        let mut acks = Acks::default();
        for frame in self.record.frames() {
            frame.write(&self.relay).map_err(RelayError::Replay)?;
            if acks.request(frame) {
                let reply = Frame::read(&self.relay).map_err(RelayError::Replay)?;
                if reply.request != frame.request || reply.flags & FLAG_REPLY == 0 {
                    return Err(RelayError::ReplayOutOfStep(frame.request, reply.request));
                }
                acks.reply(&reply);
            }
        }
        self.relay
            .set_read_timeout(None)
            .map_err(|e| RelayError::Replay(e.into()))?;
        if let Some(pending) = &self.pending {
            pending.write(&self.relay).map_err(RelayError::Replay)?;
        }
        Ok(acks)
    }
}
