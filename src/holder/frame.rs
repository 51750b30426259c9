//! vhost-user frames as the holder relays them: a 12-byte header
//! (request, flags, payload size, little-endian), the payload, and the
//! file descriptors that came with the header (SCM_RIGHTS). The holder
//! does not interpret payloads; it only needs whole frames, their fds,
//! and bounds that a hostile peer cannot push it past.
//!
//! A front-end's frame is read with a time bound once its first bytes
//! have come ([`Frame::read_within`], [`FRAME_TIMEOUT`]): QEMU writes a
//! message whole (its fds with the first bytes), so the rest of a frame
//! follows at once, and a front-end that stops inside one (it sends a
//! header and keeps the connection open, hostile or stuck) is an error
//! after the bound, not a relay thread and a frame's fds held for as long
//! as it likes. Waiting for a frame to *start* is not bounded: a session
//! is idle most of the time.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Bytes of a vhost-user message header.
pub const HEADER_LEN: usize = 12;
/// The largest payload relayed: vhost's `MAX_MSG_SIZE`.
pub const MAX_PAYLOAD: usize = 0x1000;
/// The most fds one frame carries: vhost's `MAX_ATTACHED_FD_ENTRIES`.
pub const MAX_FDS: usize = 32;

/// How long the rest of a front-end's frame (the rest of its header, its
/// payload) may take once its first bytes have come. Generous: the rest
/// of a frame is already on its way when the first bytes are (the holder
/// reads a frame through without stopping, so the sender's write never
/// waits for the holder more than a moment).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Header flag: the sender asks for a reply (REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// Header flag: this frame is a reply.
pub const FLAG_REPLY: u32 = 0x4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer closed the connection inside a frame ({0} of {1} bytes)")]
    Truncated(usize, usize),
    #[error(
        "the peer stopped inside a frame ({got} of {expected} bytes, nothing more for {bound:?})"
    )]
    Stalled {
        got: usize,
        expected: usize,
        bound: Duration,
    },
    #[error("a payload of {0} bytes (at most {MAX_PAYLOAD})")]
    TooLarge(u32),
    #[error("{0} file descriptors in one frame (at most {MAX_FDS})")]
    TooManyFds(usize),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// One vhost-user frame.
#[derive(Debug)]
pub struct Frame {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Frame {
    /// Whether the sender waits for an answer to this frame: it asked for
    /// one (REPLY_ACK), or its request has a reply of its own. `replying`
    /// says which requests do (the holder takes it from the protocol's
    /// table; frames that are replies never do).
    pub fn awaits_reply(&self, replying: impl Fn(u32) -> bool) -> bool {
        self.flags & FLAG_REPLY == 0
            && (self.flags & FLAG_NEED_REPLY != 0 || replying(self.request))
    }

    /// Reads one whole frame, waiting as long as it takes. A frame over
    /// the bounds is an error, and the connection is then out of step: the
    /// caller drops it.
    pub fn read(sock: &UnixStream) -> Result<Frame, FrameError> {
        Self::receive(sock, 0, None)
    }

    /// [`Frame::read`], but once the frame's first bytes have come the rest
    /// must come within `bound`, or the read fails with
    /// [`FrameError::Stalled`] (the frame's fds are closed; the connection
    /// is out of step).
    pub fn read_within(sock: &UnixStream, bound: Duration) -> Result<Frame, FrameError> {
        Self::receive(sock, 0, Some(bound))
    }

    /// [`Frame::peek_within`] without a bound.
    pub fn peek(sock: &UnixStream) -> Result<Frame, FrameError> {
        Self::receive(sock, libc::MSG_PEEK, None)
    }

    /// Reads the next whole frame without taking it off the socket (its
    /// fds are duplicates). The socket's peek offset must be on
    /// ([`enable_peek_offset`]): each peek goes on from where the last one
    /// ended, and a [`Frame::read`] of the frame takes it back to where
    /// it was. Once the frame's first bytes have come, the rest must come
    /// within `bound`, as for [`Frame::read_within`].
    pub fn peek_within(sock: &UnixStream, bound: Duration) -> Result<Frame, FrameError> {
        Self::receive(sock, libc::MSG_PEEK, Some(bound))
    }

    fn receive(
        sock: &UnixStream,
        flags: libc::c_int,
        bound: Option<Duration>,
    ) -> Result<Frame, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let mut raw_fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: HEADER_LEN,
        }];
        let (got, nfds) = if flags == 0 {
            // SAFETY: the iovec points into `header`, which outlives the
            // call and is HEADER_LEN bytes long; `raw_fds` has room for
            // MAX_FDS.
            unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) }
                .map_err(|e| FrameError::Io(std::io::Error::from_raw_os_error(e.errno())))?
        } else {
            recv_peek_with_fds(sock, &mut header, &mut raw_fds)?
        };
        // SAFETY: the receive gave us the first `nfds` descriptors, open
        // and owned by nobody else; each is wrapped once.
        let fds: Vec<OwnedFd> = raw_fds[..nfds]
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if got == 0 {
            return Err(FrameError::Closed);
        }
        let rest = bound.map(|bound| Rest {
            deadline: Instant::now() + bound,
            bound,
        });
        read_rest(sock, &mut header, got, flags, rest, 0)?;
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (request, flags_word, size) = (word(0), word(4), word(8));
        if size as usize > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(size));
        }
        let mut payload = vec![0u8; size as usize];
        read_rest(sock, &mut payload, 0, flags, rest, HEADER_LEN)?;
        Ok(Frame {
            request,
            flags: flags_word,
            payload,
            fds,
        })
    }

    /// The same frame, with duplicates of its fds.
    pub fn try_clone(&self) -> std::io::Result<Frame> {
        Ok(Frame {
            request: self.request,
            flags: self.flags,
            payload: self.payload.clone(),
            fds: self
                .fds
                .iter()
                .map(|fd| fd.try_clone())
                .collect::<std::io::Result<_>>()?,
        })
    }

    /// Writes the frame in one message with its fds (the rest of the bytes
    /// after a short send, without fds: they travel with the first byte).
    pub fn write(&self, sock: &UnixStream) -> Result<(), FrameError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(self.payload.len() as u32));
        }
        if self.fds.len() > MAX_FDS {
            return Err(FrameError::TooManyFds(self.fds.len()));
        }
        let mut bytes = Vec::with_capacity(HEADER_LEN + self.payload.len());
        bytes.extend_from_slice(&self.request.to_le_bytes());
        bytes.extend_from_slice(&self.flags.to_le_bytes());
        bytes.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&self.payload);
        let fds: Vec<RawFd> = self.fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let sent = sock
            .send_with_fds(&[bytes.as_slice()], &fds)
            .map_err(|e| FrameError::Io(std::io::Error::from_raw_os_error(e.errno())))?;
        let mut rest = sock;
        rest.write_all(&bytes[sent..])?;
        Ok(())
    }
}

/// When the rest of a frame must have come.
#[derive(Clone, Copy)]
struct Rest {
    deadline: Instant,
    bound: Duration,
}

/// Fills `buf[done..]` from the stream (`buf` comes after `before` bytes
/// of its frame), by `rest.deadline` if given.
fn read_rest(
    sock: &UnixStream,
    buf: &mut [u8],
    mut done: usize,
    flags: libc::c_int,
    rest: Option<Rest>,
    before: usize,
) -> Result<(), FrameError> {
    let result = fill(sock, buf, &mut done, flags, rest);
    if rest.is_some() {
        // The bound is this frame's only.
        let _ = sock.set_read_timeout(None);
    }
    result.map_err(|e| match (e, rest) {
        (FrameError::Io(e), Some(rest))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            FrameError::Stalled {
                got: before + done,
                expected: before + buf.len(),
                bound: rest.bound,
            }
        }
        (e, _) => e,
    })
}

/// The loop of [`read_rest`]: each receive waits until `rest.deadline` at
/// most (`SO_RCVTIMEO`: a poll cannot wait for bytes past a peek offset).
fn fill(
    sock: &UnixStream,
    buf: &mut [u8],
    done: &mut usize,
    flags: libc::c_int,
    rest: Option<Rest>,
) -> Result<(), FrameError> {
    while *done < buf.len() {
        if let Some(rest) = rest {
            let left = rest.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FrameError::Io(std::io::ErrorKind::TimedOut.into()));
            }
            sock.set_read_timeout(Some(left))?;
        }
        // SAFETY: the pointer and length are the live tail of `buf`.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf[*done..].as_mut_ptr().cast(),
                buf.len() - *done,
                flags,
            )
        };
        match n {
            0 => return Err(FrameError::Truncated(*done, buf.len())),
            n if n > 0 => *done += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(FrameError::Io(e));
                }
            }
        }
    }
    Ok(())
}

/// `recvmsg(MSG_PEEK)` of up to `buf.len()` bytes and their fds (the
/// kernel installs duplicates of a peeked message's fds).
fn recv_peek_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut [RawFd; MAX_FDS],
) -> Result<(usize, usize), FrameError> {
    const SPACE: usize = MAX_FDS * std::mem::size_of::<RawFd>();
    // CMSG_SPACE of MAX_FDS ints, with room for alignment.
    let mut control = [0u64; (SPACE + 64) / 8];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; the fields used are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(SPACE as u32) } as usize;
        // SAFETY: `msg` points at `iov`, `buf` and `control`, all live
        // across the call and as long as their lengths say.
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_PEEK | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(FrameError::Io(e));
        }
        let mut count = 0;
        // SAFETY: the CMSG macros walk the control buffer the kernel
        // filled, within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        let fd = data.add(i).read_unaligned();
                        if count < MAX_FDS {
                            fds[count] = fd;
                            count += 1;
                        } else {
                            libc::close(fd);
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            for &fd in &fds[..count] {
                // SAFETY: descriptors the kernel just installed for us.
                unsafe { libc::close(fd) };
            }
            return Err(FrameError::TooManyFds(MAX_FDS + 1));
        }
        return Ok((n as usize, count));
    }
}

/// Turns the socket's peek offset on, at the head of the socket: peeks
/// then go on from where the last one ended ([`Frame::peek`]).
pub fn enable_peek_offset(sock: &UnixStream) -> std::io::Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: setsockopt reads one int through the pointer.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn inode(fd: impl AsFd) -> (u64, u64) {
        let file = std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap());
        let meta = file.metadata().unwrap();
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd has no memory preconditions; a valid result is a
        // new fd that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned here only.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn a_frame_with_fds_crosses_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let fds = vec![eventfd(), eventfd()];
        let ids: Vec<_> = fds.iter().map(inode).collect();
        let frame = Frame {
            request: 5,
            flags: 1 | FLAG_NEED_REPLY,
            payload: (0..200u8).collect(),
            fds,
        };
        frame.write(&a).unwrap();
        let got = Frame::read(&b).unwrap();
        assert_eq!((got.request, got.flags), (5, 1 | FLAG_NEED_REPLY));
        assert_eq!(got.payload, frame.payload);
        let got_ids: Vec<_> = got.fds.iter().map(inode).collect();
        assert_eq!(got_ids, ids);
        assert!(got.awaits_reply(|_| false));
    }

    #[test]
    fn frames_in_a_row_keep_their_boundaries() {
        let (a, b) = UnixStream::pair().unwrap();
        for size in [0usize, 1, 11, 12, 13, MAX_PAYLOAD] {
            Frame {
                request: size as u32,
                flags: 1,
                payload: vec![size as u8; size],
                fds: Vec::new(),
            }
            .write(&a)
            .unwrap();
        }
        for size in [0usize, 1, 11, 12, 13, MAX_PAYLOAD] {
            let got = Frame::read(&b).unwrap();
            assert_eq!(got.request, size as u32);
            assert_eq!(got.payload, vec![size as u8; size]);
        }
    }

    #[test]
    fn hostile_sizes_and_endings_are_errors() {
        let (mut a, b) = UnixStream::pair().unwrap();
        // A header announcing more than the bound.
        let mut header = Vec::new();
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        a.write_all(&header).unwrap();
        assert!(
            matches!(Frame::read(&b), Err(FrameError::TooLarge(s)) if s as usize == MAX_PAYLOAD + 1)
        );
        // Half a header, then the end.
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[1, 0, 0, 0, 1]).unwrap();
        drop(a);
        assert!(matches!(
            Frame::read(&b),
            Err(FrameError::Truncated(5, HEADER_LEN))
        ));
        // A payload cut short.
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&[9, 9, 9]);
        a.write_all(&bytes).unwrap();
        drop(a);
        assert!(matches!(Frame::read(&b), Err(FrameError::Truncated(3, 8))));
        // A clean end between frames.
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(Frame::read(&b), Err(FrameError::Closed)));
    }

    fn memfd() -> OwnedFd {
        // SAFETY: the name is a valid C string; a valid result is a new fd
        // that nothing else owns.
        let fd = unsafe { libc::memfd_create(c"frame-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned here only.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// How many of this process's open fds are one of `files` (by inode:
    /// robust against the other tests' fds).
    fn open_links(files: &[(u64, u64)]) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::metadata(entry.ok()?.path()).ok())
            .filter(|meta| {
                use std::os::unix::fs::MetadataExt;
                files.contains(&(meta.dev(), meta.ino()))
            })
            .count()
    }

    #[test]
    fn more_fds_than_a_frame_carries_is_an_error_and_they_are_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let fds: Vec<OwnedFd> = (0..=MAX_FDS).map(|_| memfd()).collect();
        let files: Vec<_> = fds.iter().map(inode).collect();
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        a.send_with_fds(&[bytes.as_slice()], &raw).unwrap();
        drop(fds);
        // Only the copies in flight are left.
        assert_eq!(open_links(&files), 0);
        assert!(
            matches!(Frame::read(&b), Err(FrameError::Io(e)) if e.raw_os_error() == Some(libc::ENOBUFS))
        );
        assert_eq!(open_links(&files), 0, "received fds left open");
    }

    #[test]
    fn a_frame_that_stops_is_an_error_at_the_bound_and_its_fds_are_closed() {
        let bound = Duration::from_millis(200);
        // Half a header, then nothing (the connection stays open).
        let (a, b) = UnixStream::pair().unwrap();
        let start = Instant::now();
        (&a).write_all(&[1, 0, 0, 0, 1]).unwrap();
        assert!(matches!(
            Frame::read_within(&b, bound),
            Err(FrameError::Stalled {
                got: 5,
                expected: HEADER_LEN,
                ..
            })
        ));
        assert!(start.elapsed() >= bound, "{:?}", start.elapsed());
        // A header with fds and part of its payload, then nothing.
        let (a, b) = UnixStream::pair().unwrap();
        let fds = vec![memfd(), memfd()];
        let files: Vec<_> = fds.iter().map(inode).collect();
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&5u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&72u32.to_le_bytes());
        bytes.extend_from_slice(&[7; 10]);
        a.send_with_fds(&[bytes.as_slice()], &raw).unwrap();
        drop(fds);
        let start = Instant::now();
        assert!(matches!(
            Frame::read_within(&b, bound),
            Err(FrameError::Stalled {
                got: 22,
                expected: 84,
                ..
            })
        ));
        let took = start.elapsed();
        assert!(took >= bound && took < bound * 10, "{took:?}");
        assert_eq!(open_links(&files), 0, "the stalled frame's fds left open");
        // Not bounded before its first bytes: an idle connection waits.
        let (a, b) = UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(bound * 2);
            Frame {
                request: 3,
                flags: 1,
                payload: vec![1, 2, 3],
                fds: Vec::new(),
            }
            .write(&a)
            .unwrap();
        });
        let got = Frame::read_within(&b, bound).unwrap();
        assert_eq!((got.request, got.payload), (3, vec![1, 2, 3]));
        sender.join().unwrap();
    }

    #[test]
    fn a_frame_cut_in_pieces_within_the_bound_is_read_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = eventfd();
        let id = inode(&fd);
        let sender = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&12u32.to_le_bytes());
            bytes.extend_from_slice(&1u32.to_le_bytes());
            bytes.extend_from_slice(&8u32.to_le_bytes());
            // The header in two pieces (the fd with the first), the
            // payload in two more.
            a.send_with_fds(&[&bytes[..7]], &[fd.as_raw_fd()]).unwrap();
            for piece in [&bytes[7..], &[1, 2, 3][..], &[4, 5, 6, 7, 8][..]] {
                std::thread::sleep(Duration::from_millis(30));
                (&a).write_all(piece).unwrap();
            }
        });
        let got = Frame::read_within(&b, Duration::from_secs(5)).unwrap();
        sender.join().unwrap();
        assert_eq!((got.request, got.flags), (12, 1));
        assert_eq!(got.payload, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(got.fds.iter().map(inode).collect::<Vec<_>>(), vec![id]);
    }

    #[test]
    fn replies_are_not_awaited() {
        let frame = Frame {
            request: 1,
            flags: 1 | FLAG_REPLY | FLAG_NEED_REPLY,
            payload: Vec::new(),
            fds: Vec::new(),
        };
        assert!(!frame.awaits_reply(|_| true));
        let get = Frame {
            request: 1,
            flags: 1,
            payload: Vec::new(),
            fds: Vec::new(),
        };
        assert!(get.awaits_reply(|r| r == 1));
        assert!(!get.awaits_reply(|_| false));
    }

    /// Peeked frames, one split on the wire between its header (with its
    /// fds) and its body: each peek returns the whole next frame with
    /// duplicates of its fds, and the read that follows takes the same
    /// frame off the socket.
    #[test]
    fn a_peek_sees_the_whole_frame_a_read_then_takes() {
        let (a, b) = UnixStream::pair().unwrap();
        enable_peek_offset(&b).unwrap();
        let first = Frame {
            request: 5,
            flags: 1,
            payload: (0..100u8).collect(),
            fds: vec![eventfd(), eventfd()],
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&5u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&100u32.to_le_bytes());
        let raw: Vec<RawFd> = first.fds.iter().map(|fd| fd.as_raw_fd()).collect();
        a.send_with_fds(&[bytes.as_slice()], &raw).unwrap();
        let writer = {
            let a = a.try_clone().unwrap();
            let payload = first.payload.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                (&a).write_all(&payload).unwrap();
                Frame {
                    request: 7,
                    flags: 1,
                    payload: vec![7; 3],
                    fds: Vec::new(),
                }
                .write(&a)
                .unwrap();
            })
        };
        let peeked = Frame::peek(&b).unwrap();
        assert_eq!((peeked.request, peeked.payload.len()), (5, 100));
        assert_eq!(peeked.payload, first.payload);
        assert_eq!(peeked.fds.len(), 2);
        let read = Frame::read(&b).unwrap();
        assert_eq!(read.payload, first.payload);
        assert!(crate::holder::persist::same_frame(&peeked, &read));
        assert!(crate::holder::persist::same_frame(&first, &read));
        writer.join().unwrap();
        let next = Frame::peek(&b).unwrap();
        assert_eq!((next.request, next.payload.clone()), (7, vec![7; 3]));
        assert_eq!(next.fds.len(), 0);
        // A second peek without a read sees what follows, not the same
        // frame: the peek offset moved on.
        drop(a);
        assert!(matches!(Frame::peek(&b), Err(FrameError::Closed)));
        enable_peek_offset(&b).unwrap();
        let again = Frame::peek(&b).unwrap();
        assert_eq!(again.request, 7);
        let read = Frame::read(&b).unwrap();
        assert_eq!(read.request, 7);
    }

    /// What Linux does (request::takes_fds): a peek that ends inside an
    /// fd-less message may return the fds of the message after it.
    #[test]
    fn a_peek_of_an_fd_less_frame_may_see_the_next_frames_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        enable_peek_offset(&b).unwrap();
        for (request, fds) in [(8, Vec::new()), (12, vec![eventfd()])] {
            Frame {
                request,
                flags: 1,
                payload: vec![0; 8],
                fds,
            }
            .write(&a)
            .unwrap();
        }
        let peeked = Frame::peek(&b).unwrap();
        let read = Frame::read(&b).unwrap();
        assert_eq!((peeked.request, read.request), (8, 8));
        assert_eq!(read.fds.len(), 0);
        // Not asserted either way: kernels differ. Whatever it is, the
        // frame after it still comes whole with its own fd.
        eprintln!("peeked fds of an fd-less frame: {}", peeked.fds.len());
        let next = Frame::peek(&b).unwrap();
        assert_eq!((next.request, next.fds.len()), (12, 1));
        assert!(crate::holder::persist::same_frame(
            &next,
            &Frame::read(&b).unwrap()
        ));
    }
}
