//! vhost-user frames as the holder relays them: a 12-byte header
//! (request, flags, payload size, little-endian), the payload, and the
//! file descriptors that came with the header (SCM_RIGHTS). The holder
//! does not interpret payloads; it only needs whole frames, their fds,
//! and bounds that a hostile peer cannot push it past.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Bytes of a vhost-user message header.
pub const HEADER_LEN: usize = 12;
/// The largest payload relayed: vhost's `MAX_MSG_SIZE`.
pub const MAX_PAYLOAD: usize = 0x1000;
/// The most fds one frame carries: vhost's `MAX_ATTACHED_FD_ENTRIES`.
pub const MAX_FDS: usize = 32;

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

    /// Reads one whole frame. A frame over the bounds is an error, and the
    /// connection is then out of step: the caller drops it.
    pub fn read(sock: &UnixStream) -> Result<Frame, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let mut raw_fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: HEADER_LEN,
        }];
        // SAFETY: the iovec points into `header`, which outlives the call
        // and is HEADER_LEN bytes long; `raw_fds` has room for MAX_FDS.
        let (got, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) }
            .map_err(|e| FrameError::Io(std::io::Error::from_raw_os_error(e.errno())))?;
        // SAFETY: recv_with_fds gave us the first `nfds` descriptors, open
        // and owned by nobody else; each is wrapped once.
        let fds: Vec<OwnedFd> = raw_fds[..nfds]
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if got == 0 {
            return Err(FrameError::Closed);
        }
        read_rest(sock, &mut header, got)?;
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8));
        if size as usize > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(size));
        }
        let mut payload = vec![0u8; size as usize];
        read_rest(sock, &mut payload, 0)?;
        Ok(Frame {
            request,
            flags,
            payload,
            fds,
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

/// Fills `buf[done..]` from the stream.
fn read_rest(sock: &UnixStream, buf: &mut [u8], mut done: usize) -> Result<(), FrameError> {
    let mut stream = sock;
    while done < buf.len() {
        match stream.read(&mut buf[done..]) {
            Ok(0) => return Err(FrameError::Truncated(done, buf.len())),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
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
}
