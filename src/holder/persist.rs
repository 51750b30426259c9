//! A VM's relay state kept outside the holder, for the holder's own death
//! under systemd (super::store): the session record, the request not
//! answered yet, a reply being handed to the front-end, and a front-end
//! frame taken into that state but perhaps still unread in the socket.
//!
//! The image lives in a memfd (stored as `cenalloc.<vm>.session`) with
//! two slots: an image is written into the slot not in use, then one
//! 16-byte `pwrite` of the header makes it the current one, so a holder
//! killed at any instant leaves the previous image or the new one. Its
//! frames' fds are stored one by one (`cenalloc.<vm>.fd.<key>`) before the
//! image that names them, and removed once no image names them. systemd
//! keeps one copy of a file description however often it is stored, so
//! fds of one description share one key (`kcmp(2)`).
//!
//! The order of work in the relay, and what a restarted holder does with
//! each state it finds (super::relay):
//! - a front-end frame is *peeked*, relayed, taken into the record (or
//!   made the pending request) and saved with `at_head` naming it, then
//!   read for real and saved without `at_head`: a restarted holder that
//!   finds `at_head` and the same frame (bytes, and fds of the same
//!   descriptions) at the head of the socket reads it away;
//! - a reply is saved as `replying` before it is written to the
//!   front-end, and saved away after: a restarted holder that finds
//!   `replying` decides whether it was sent (see [`reply_was_sent`]).

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::frame::{Frame, MAX_FDS, MAX_PAYLOAD};
use super::record::{Record, MAX_ENTRIES};
use super::store::{self, FdStore, Stored};

const MAGIC: u32 = u32::from_le_bytes(*b"CSES");
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
/// Where the two slots start, and their size (the largest record with
/// its pending frames fits with room to spare).
const SLOT_BASE: u64 = 4096;
const SLOT_SIZE: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("session file: {0}")]
    Io(#[from] std::io::Error),
    #[error("fd store: {0}")]
    Store(#[from] store::StoreError),
    #[error("the session image is damaged ({0})")]
    Damaged(&'static str),
    #[error("the session image names fd {0}, which the store did not pass back")]
    MissingFd(u64),
    #[error("an image of {0} bytes does not fit its slot")]
    TooLarge(usize),
}

/// A frame as the image holds it: its fds by store key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FrameImage {
    request: u32,
    flags: u32,
    payload: Vec<u8>,
    fds: Vec<u64>,
}

/// A session as restored from the store.
#[derive(Default)]
pub struct Restored {
    pub record: Record,
    pub pending: Option<Frame>,
    pub replying: Option<Frame>,
    pub at_head: Option<Frame>,
}

/// `kcmp(2)` `KCMP_FILE`: whether two fds of this process share one open
/// file description.
pub fn same_description(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    // SAFETY: kcmp takes integers only; our own pid twice.
    let pid = unsafe { libc::getpid() };
    // SAFETY: as above; KCMP_FILE is 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            0,
            a.as_raw_fd() as libc::c_ulong,
            b.as_raw_fd() as libc::c_ulong,
        )
    };
    ret == 0
}

/// Whether two frames are the same message: the same bytes, and fds of
/// the same open file descriptions in the same order.
pub fn same_frame(a: &Frame, b: &Frame) -> bool {
    a.request == b.request
        && a.flags == b.flags
        && a.payload == b.payload
        && a.fds.len() == b.fds.len()
        && a.fds
            .iter()
            .zip(&b.fds)
            .all(|(x, y)| same_description(x.as_fd(), y.as_fd()))
}

struct Encoder(Vec<u8>);

impl Encoder {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn frame(&mut self, frame: &FrameImage) {
        self.u32(frame.request);
        self.u32(frame.flags);
        self.u32(frame.payload.len() as u32);
        self.0.extend_from_slice(&frame.payload);
        self.u32(frame.fds.len() as u32);
        for &key in &frame.fds {
            self.u64(key);
        }
    }
    fn optional(&mut self, frame: Option<&FrameImage>) {
        match frame {
            Some(frame) => {
                self.u32(1);
                self.frame(frame);
            }
            None => self.u32(0),
        }
    }
}

struct Decoder<'a>(&'a [u8]);

impl Decoder<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], PersistError> {
        if self.0.len() < n {
            return Err(PersistError::Damaged("short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, PersistError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PersistError> {
        let b = self.bytes(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }
    fn frame(&mut self) -> Result<FrameImage, PersistError> {
        let request = self.u32()?;
        let flags = self.u32()?;
        let size = self.u32()? as usize;
        if size > MAX_PAYLOAD {
            return Err(PersistError::Damaged("payload size"));
        }
        let payload = self.bytes(size)?.to_vec();
        let count = self.u32()? as usize;
        if count > MAX_FDS {
            return Err(PersistError::Damaged("fd count"));
        }
        let fds = (0..count).map(|_| self.u64()).collect::<Result<_, _>>()?;
        Ok(FrameImage {
            request,
            flags,
            payload,
            fds,
        })
    }
    fn optional(&mut self) -> Result<Option<FrameImage>, PersistError> {
        match self.u32()? {
            0 => Ok(None),
            1 => self.frame().map(Some),
            _ => Err(PersistError::Damaged("option tag")),
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Image {
    /// The record went past its bounds: the session cannot be restored.
    overflowed: bool,
    record: Vec<FrameImage>,
    pending: Option<FrameImage>,
    replying: Option<FrameImage>,
    at_head: Option<FrameImage>,
}

impl Image {
    /// The store keys of the fds the image's frames hold.
    fn keys(&self) -> BTreeSet<u64> {
        self.record
            .iter()
            .chain(&self.pending)
            .chain(&self.replying)
            .chain(&self.at_head)
            .flat_map(|frame| frame.fds.iter().copied())
            .collect()
    }

    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder(Vec::new());
        e.u32(u32::from(self.overflowed));
        e.u32(self.record.len() as u32);
        for frame in &self.record {
            e.frame(frame);
        }
        e.optional(self.pending.as_ref());
        e.optional(self.replying.as_ref());
        e.optional(self.at_head.as_ref());
        e.0
    }

    fn decode(bytes: &[u8]) -> Result<Image, PersistError> {
        let mut d = Decoder(bytes);
        let overflowed = d.u32()? != 0;
        let count = d.u32()? as usize;
        if count > MAX_ENTRIES {
            return Err(PersistError::Damaged("record length"));
        }
        let record = (0..count).map(|_| d.frame()).collect::<Result<_, _>>()?;
        let image = Image {
            overflowed,
            record,
            pending: d.optional()?,
            replying: d.optional()?,
            at_head: d.optional()?,
        };
        if !d.0.is_empty() {
            return Err(PersistError::Damaged("trailing bytes"));
        }
        Ok(image)
    }
}

/// The session memfd.
struct SessionFile {
    fd: std::fs::File,
    /// The slot of the current image.
    slot: u32,
}

impl SessionFile {
    fn create() -> std::io::Result<SessionFile> {
        // SAFETY: memfd_create with a NUL-terminated name; checked below.
        let fd = unsafe { libc::memfd_create(c"cenalloc-session".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut file = SessionFile { fd, slot: 1 };
        file.write(&Image::default().encode())?;
        Ok(file)
    }

    fn slot_offset(slot: u32) -> u64 {
        SLOT_BASE + u64::from(slot) * SLOT_SIZE
    }

    fn write(&mut self, image: &[u8]) -> std::io::Result<()> {
        let slot = 1 - self.slot;
        self.fd.write_all_at(image, Self::slot_offset(slot))?;
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&VERSION.to_le_bytes());
        header[8..12].copy_from_slice(&slot.to_le_bytes());
        header[12..16].copy_from_slice(&(image.len() as u32).to_le_bytes());
        self.fd.write_all_at(&header, 0)?;
        self.slot = slot;
        Ok(())
    }

    fn read(fd: OwnedFd) -> Result<(SessionFile, Image), PersistError> {
        let fd = std::fs::File::from(fd);
        let mut header = [0u8; HEADER_LEN];
        fd.read_exact_at(&mut header, 0)?;
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        if word(0) != MAGIC || word(4) != VERSION {
            return Err(PersistError::Damaged("header"));
        }
        let (slot, len) = (word(8), word(12) as u64);
        if slot > 1 || len > SLOT_SIZE {
            return Err(PersistError::Damaged("slot"));
        }
        let mut bytes = vec![0u8; len as usize];
        fd.read_exact_at(&mut bytes, Self::slot_offset(slot))?;
        let image = Image::decode(&bytes)?;
        Ok((SessionFile { fd, slot }, image))
    }
}

/// A session image as seen from outside the holder (a test, a
/// diagnostic tool reading the memfd the store keeps as
/// `cenalloc.<vm>.session`): what a holder started now would find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// Messages in the record.
    pub messages: usize,
    /// The request sent and not answered yet (its request code).
    pub pending: Option<u32>,
    /// A reply being handed to the front-end.
    pub replying: Option<u32>,
    /// A front-end frame taken but perhaps still unread in its socket.
    pub at_head: Option<u32>,
    /// The store keys (`cenalloc.<vm>.fd.<key>`) the image names.
    pub fd_keys: BTreeSet<u64>,
}

impl SessionView {
    /// Whether the holder wrote the image between two exchanges with the
    /// front-end: no request pending, no reply being handed over, no
    /// frame at the head of the socket. A holder that dies then leaves
    /// its successor nothing to settle.
    pub fn settled(&self) -> bool {
        self.pending.is_none() && self.replying.is_none() && self.at_head.is_none()
    }
}

/// Reads the current image of a session memfd, changing nothing. An
/// image read while the holder writes the next one is the previous one,
/// the next one or an error ([`PersistError::Damaged`]): read again; only
/// a read that outlasts two of the holder's writes can be a mix of both.
pub fn view_session(session: BorrowedFd<'_>) -> Result<SessionView, PersistError> {
    let (_, image) = SessionFile::read(session.try_clone_to_owned()?)?;
    let code = |frame: &Option<FrameImage>| frame.as_ref().map(|f| f.request);
    Ok(SessionView {
        messages: image.record.len(),
        pending: code(&image.pending),
        replying: code(&image.replying),
        at_head: code(&image.at_head),
        fd_keys: image.keys(),
    })
}

/// Keeps one VM's relay state in the store.
pub struct Persister {
    store: Arc<FdStore>,
    vm: String,
    file: SessionFile,
    /// The fds stored now: key, and a duplicate to compare descriptions
    /// with.
    stored: Vec<(u64, OwnedFd)>,
    next_key: u64,
}

impl Persister {
    fn fd_name(&self, key: u64) -> String {
        store::vm_name(&self.vm, &format!("fd.{key}"))
    }

    /// VM `vm`'s persister, with the session the store kept for it if it
    /// kept one whose image can be read and whose fds all came back
    /// (otherwise the error says why, and the persister starts empty).
    /// Store fds of the VM that the image does not name are removed.
    pub fn open(
        store: Arc<FdStore>,
        vm: &str,
        passed: &mut Stored,
    ) -> Result<(Persister, Result<Option<Restored>, PersistError>), PersistError> {
        let fds: HashMap<u64, OwnedFd> = passed
            .take_prefixed(&store::vm_name(vm, "fd."))
            .into_iter()
            .filter_map(|(key, fd)| Some((key.parse().ok()?, fd)))
            .collect();
        let session_name = store::vm_name(vm, "session");
        let read = passed.take(&session_name).map(SessionFile::read);
        let (file, image) = match read {
            Some(Ok((file, image))) => (file, Ok(Some(image))),
            Some(Err(e)) => (SessionFile::create()?, Err(e)),
            None => (SessionFile::create()?, Ok(None)),
        };
        if !matches!(image, Ok(Some(_))) {
            store.remove(&session_name)?;
            store.put(&session_name, file.fd.as_fd())?;
        }
        let mut persister = Persister {
            store,
            vm: vm.to_string(),
            file,
            stored: Vec::new(),
            next_key: fds.keys().max().map_or(0, |k| k + 1),
        };
        let image = match image {
            Ok(Some(image)) => image,
            other => {
                persister.forget_keys(fds.keys().copied());
                return Ok((persister, other.map(|_| None)));
            }
        };
        let restored = persister.restore(&image, fds);
        if restored.is_err() {
            persister.clear()?;
        }
        Ok((persister, restored.map(Some)))
    }

    /// Rebuilds the frames of `image` from the stored `fds`, keeps those
    /// it names and removes the others from the store.
    fn restore(
        &mut self,
        image: &Image,
        mut fds: HashMap<u64, OwnedFd>,
    ) -> Result<Restored, PersistError> {
        let named = image.keys();
        let unnamed: Vec<u64> = fds
            .keys()
            .filter(|key| !named.contains(key))
            .copied()
            .collect();
        for key in &unnamed {
            fds.remove(key);
        }
        self.forget_keys(unnamed.into_iter());
        let frame = |image: &FrameImage| -> Result<Frame, PersistError> {
            let fds = image
                .fds
                .iter()
                .map(|key| {
                    fds.get(key)
                        .ok_or(PersistError::MissingFd(*key))?
                        .try_clone()
                        .map_err(PersistError::Io)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Frame {
                request: image.request,
                flags: image.flags,
                payload: image.payload.clone(),
                fds,
            })
        };
        let mut restored = Restored::default();
        for entry in &image.record {
            // Its bounds held when it was kept; if they do not now, the
            // record says it cannot restore the session.
            let _ = restored.record.keep(frame(entry)?);
        }
        if image.overflowed {
            restored.record.mark_overflowed();
        }
        restored.pending = image.pending.as_ref().map(frame).transpose()?;
        restored.replying = image.replying.as_ref().map(frame).transpose()?;
        restored.at_head = image.at_head.as_ref().map(frame).transpose()?;
        self.stored = fds.into_iter().collect();
        Ok(restored)
    }

    fn forget_keys(&mut self, keys: impl Iterator<Item = u64>) {
        for key in keys {
            if let Err(e) = self.store.remove(&self.fd_name(key)) {
                log::warn!("{}: {e}", self.vm);
            }
        }
    }

    /// The key of `fd`, storing it if no stored fd shares its description.
    fn key_of(&mut self, fd: BorrowedFd<'_>) -> Result<u64, PersistError> {
        if let Some((key, _)) = self
            .stored
            .iter()
            .find(|(_, kept)| same_description(kept.as_fd(), fd))
        {
            return Ok(*key);
        }
        let key = self.next_key;
        self.next_key += 1;
        let copy = fd.try_clone_to_owned()?;
        self.store.put(&self.fd_name(key), fd)?;
        self.stored.push((key, copy));
        Ok(key)
    }

    fn image_of(&mut self, frame: &Frame) -> Result<FrameImage, PersistError> {
        let fds = frame
            .fds
            .iter()
            .map(|fd| self.key_of(fd.as_fd()))
            .collect::<Result<_, _>>()?;
        Ok(FrameImage {
            request: frame.request,
            flags: frame.flags,
            payload: frame.payload.clone(),
            fds,
        })
    }

    /// Saves the relay state: stores new fds, writes the image, then
    /// removes the stored fds it no longer names.
    pub fn save(
        &mut self,
        record: &Record,
        pending: Option<&Frame>,
        replying: Option<&Frame>,
        at_head: Option<&Frame>,
    ) -> Result<(), PersistError> {
        let mut image = Image {
            overflowed: !record.restorable(),
            ..Image::default()
        };
        for frame in record.frames() {
            let frame = self.image_of(frame)?;
            image.record.push(frame);
        }
        image.pending = pending.map(|f| self.image_of(f)).transpose()?;
        image.replying = replying.map(|f| self.image_of(f)).transpose()?;
        image.at_head = at_head.map(|f| self.image_of(f)).transpose()?;
        let bytes = image.encode();
        if bytes.len() as u64 > SLOT_SIZE {
            return Err(PersistError::TooLarge(bytes.len()));
        }
        self.file.write(&bytes)?;
        let named = image.keys();
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stored)
            .into_iter()
            .partition(|(key, _)| named.contains(key));
        self.stored = kept;
        self.forget_keys(gone.into_iter().map(|(key, _)| key));
        Ok(())
    }

    /// The session ended: an empty image, no fds.
    pub fn clear(&mut self) -> Result<(), PersistError> {
        self.save(&Record::new(), None, None, None)
    }

    /// Stores the front-end's connection.
    pub fn put_connection(&self, conn: &UnixStream) -> Result<(), PersistError> {
        let name = store::vm_name(&self.vm, "conn");
        self.store.remove(&name)?;
        self.store.put(&name, conn.as_fd())?;
        Ok(())
    }

    /// The connection is over: out of the store.
    pub fn remove_connection(&self) -> Result<(), PersistError> {
        self.store.remove(&store::vm_name(&self.vm, "conn"))?;
        Ok(())
    }
}

/// Whether a reply a dead holder was handing to the front-end reached
/// it: bytes still unread by the front-end (`SIOCOUTQ` on our end) mean
/// it was written; so do bytes the front-end sent since (it does not send
/// its next request before it has the reply it waits for). With neither,
/// the reply was not written, or the front-end read it and has been quiet
/// since: the two cannot be told apart, and the reply is written (again)
/// — a front-end waiting for ever would hang its VM, a duplicate reply is
/// refused by the front-end's next read (its request code does not match).
pub fn reply_was_sent(conn: &UnixStream) -> std::io::Result<bool> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer.
    if unsafe { libc::ioctl(conn.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if queued > 0 {
        return Ok(true);
    }
    Ok(readable_now(conn))
}

/// Whether `sock` has bytes to read (or its peer closed) now. A poll, not
/// a peek: a peek would move the socket's peek offset.
pub fn readable_now(sock: &UnixStream) -> bool {
    let mut pollfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call; no wait.
    let ret = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ret > 0 && pollfd.revents & (libc::POLLIN | libc::POLLHUP) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        let frame = |request, fds: Vec<u64>| FrameImage {
            request,
            flags: 1,
            payload: vec![request as u8; request as usize],
            fds,
        };
        Image {
            overflowed: false,
            record: vec![frame(1, vec![]), frame(5, vec![0, 0, 3])],
            pending: Some(frame(24, vec![])),
            replying: None,
            at_head: Some(frame(24, vec![])),
        }
    }

    #[test]
    fn an_image_decodes_to_itself() {
        let image = image();
        assert_eq!(Image::decode(&image.encode()).unwrap(), image);
    }

    #[test]
    fn damaged_images_are_errors_not_panics() {
        let bytes = image().encode();
        for cut in 0..bytes.len() {
            assert!(Image::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut rng = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut bytes = bytes.clone();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let at = (rng % bytes.len() as u64) as usize;
            bytes[at] = (rng >> 32) as u8;
            let _ = Image::decode(&bytes);
        }
    }

    #[test]
    fn the_file_keeps_the_last_image_written() {
        let mut file = SessionFile::create().unwrap();
        let image = image();
        file.write(&image.encode()).unwrap();
        let copy = file.fd.try_clone().unwrap();
        let (_, read) = SessionFile::read(copy.into()).unwrap();
        assert_eq!(read, image);
        // A write cut before its header write leaves the previous image.
        let slot = 1 - file.slot;
        file.fd
            .write_all_at(&Image::default().encode(), SessionFile::slot_offset(slot))
            .unwrap();
        let (_, read) = SessionFile::read(file.fd.try_clone().unwrap().into()).unwrap();
        assert_eq!(read, image);
    }

    #[test]
    fn a_view_of_the_session_says_what_is_in_flight() {
        let mut file = SessionFile::create().unwrap();
        let view = view_session(file.fd.as_fd()).unwrap();
        assert!(view.settled());
        assert_eq!((view.messages, view.fd_keys.len()), (0, 0));
        file.write(&image().encode()).unwrap();
        let view = view_session(file.fd.as_fd()).unwrap();
        assert_eq!(view.messages, 2);
        assert_eq!(
            (view.pending, view.replying, view.at_head),
            (Some(24), None, Some(24))
        );
        assert!(!view.settled());
        assert_eq!(view.fd_keys, BTreeSet::from([0, 3]));
        let settled = Image {
            pending: None,
            at_head: None,
            ..image()
        };
        file.write(&settled.encode()).unwrap();
        let view = view_session(file.fd.as_fd()).unwrap();
        assert!(view.settled());
        assert_eq!(view.fd_keys, BTreeSet::from([0, 3]));
        // Reading changed nothing: the holder's next write lands as before.
        let (_, read) = SessionFile::read(file.fd.try_clone().unwrap().into()).unwrap();
        assert_eq!(read, settled);
    }

    #[test]
    fn same_description_tells_dups_from_other_files() {
        let (a, b) = UnixStream::pair().unwrap();
        let dup = a.try_clone().unwrap();
        assert!(same_description(a.as_fd(), dup.as_fd()));
        assert!(!same_description(a.as_fd(), b.as_fd()));
    }

    #[test]
    fn a_reply_unread_by_the_peer_counts_as_sent() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(!reply_was_sent(&a).unwrap());
        use std::io::Write;
        (&a).write_all(b"reply").unwrap();
        assert!(reply_was_sent(&a).unwrap());
        let mut buf = [0u8; 5];
        use std::io::Read;
        (&b).read_exact(&mut buf).unwrap();
        assert!(!reply_was_sent(&a).unwrap());
        (&b).write_all(b"next").unwrap();
        assert!(reply_was_sent(&a).unwrap());
    }
}
