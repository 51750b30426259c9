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

use super::frame::{Frame, FrameError, FLAG_NEED_REPLY, FLAG_REPLY, FRAME_TIMEOUT};
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
}

/// A VM's relay.
pub struct VmRelay {
    pub name: String,
    /// Its index in the supervisor's plan.
    pub index: usize,
    /// The socket front-ends connect to.
    pub listener: UnixListener,
    pub supervisor: Arc<Supervisor>,
}

impl VmRelay {
    /// Serves the VM's front-ends one after the other, until the holder
    /// has no serving process any more.
    pub fn serve(self) {
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
            // A serving process started while the session lasts takes the
            // device over from its journal.
            self.supervisor.set_live(self.index, true);
            let ended = self.session(&front_end);
            self.supervisor.set_live(self.index, false);
            match ended {
                Ok(()) => info!("{}: front-end disconnected", self.name),
                Err(e @ RelayError::Gone(_)) => {
                    error!("{}: {e}; closing the front-end's connection", self.name);
                    return;
                }
                Err(e) => error!("{}: {e}; closing the front-end's connection", self.name),
            }
        }
    }

    /// Relays one front-end connection until it ends.
    fn session(&self, front_end: &UnixStream) -> Result<(), RelayError> {
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
                let frame = match Frame::read_within(front_end, FRAME_TIMEOUT) {
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
                if awaits {
                    self.pending = Some(frame);
                } else {
                    self.keep(frame);
                }
                if let Err(e) = sent {
                    // Kept or pending: the replay sends it whole.
                    self.recover(&e)?;
                }
            }
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
        reply.write(front_end).map_err(RelayError::FrontEnd)
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
                Ok(()) => {
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
    /// the pending request (whose reply the main loop passes on).
    fn replay(&mut self) -> Result<(), RelayError> {
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
        Ok(())
    }
}
