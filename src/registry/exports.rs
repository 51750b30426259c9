//! The exports of one VM: which buffers a host program holds a view of,
//! and when such a view stops being the buffer.
//!
//! # Semantics: revoke, never pin
//! An export hands a host program the guest-memory file(s) behind a buffer
//! and the segment offsets. The daemon cannot take a file descriptor back,
//! and it does not hold the guest's memory hostage either: when the buffer
//! is freed, its backing migrated, the VM's memory table replaced or the
//! front-end gone, the export is *revoked*. The guest is never told and
//! never waits; the pages go back to its pool at once, exactly as without
//! an export. A revoked export's status word (a page the host program maps
//! read-only, [`StatusPage`]) becomes non-zero ([`Revocation`]) as soon as
//! the command that freed, moved or dropped the backing has changed the
//! buffer model, before the daemon touches those pages for anything else
//! (zeroing or copying into them for another buffer, zeroing a leased
//! extent) and before the guest sees any answer. From then on the segments
//! may hold anything the guest puts there.
//!
//! Why not pin (keep the old backing out of the free pool until the export
//! is released): a host reader could then shrink a guest's pool for as long
//! as it likes, the guest would pay for something it was not told about,
//! and pinning buys no consistency anyway (the guest may write the buffer
//! while the host reads it, export or not). A reader that needs a
//! consistent frame reads it, then checks the status word: still zero
//! after the read means the segments were this buffer's backing during the
//! whole read (revocation is final).
//!
//! # When the check runs
//! The device calls [`Exports::check`] (through
//! [`BackingWatch`](crate::device::BackingWatch)) after every command's
//! changes to the model and before that command's guest-memory work, and
//! again after a command is undone; one atomic load when the VM has no
//! exports. A batch suspended by a ring stop is therefore suspended with
//! its exports already revoked, and a buffer whose MAP such a stop
//! interrupted before its new backing was zeroed or copied cannot be
//! exported until the batch goes on ([`Device::preparing`]). The check
//! runs under the device lock, the same lock an export is created under,
//! so an export never misses a change.
//!
//! [`Device::preparing`]: crate::device::Device::preparing
//!
//! # Identity
//! An export names its buffer by the buffer's id *and* the serials of the
//! buffer and of the backing it saw ([`Identity`]): the daemon never hands
//! out a serial twice, so a driver that frees a leased buffer and maps
//! another one with the same id on the same extent does not inherit the
//! export, even if no check ran in between.
//!
//! # The end of a connection
//! [`Exports::close`] (the front-end left) revokes every export and
//! refuses later ones: an export prepared while the VM disconnected is
//! refused when it is recorded ([`Exports::add`]), under the same lock.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::model::{BufferId, Pool};

/// Bytes of a status page (one page; only the first word is used).
pub const STATUS_PAGE_BYTES: usize = 4096;

/// Why an export is no longer valid: the value of its status word (0
/// while valid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u64)]
pub enum Revocation {
    /// The buffer no longer exists (freed, or the device was reset).
    Freed = 1,
    /// The buffer moved to new backing (late attach with a stricter mask).
    Migrated = 2,
    /// The VM's front-end disconnected.
    Disconnected = 3,
    /// The VM's memory table was replaced.
    MemoryChanged = 4,
    /// The holder released it (or closed its control connection).
    Released = 5,
    /// The serving process that made it died or was upgraded
    /// (`cenallocd --supervise`: written by the holder, which keeps every
    /// status page it was given).
    DaemonRestarted = 6,
}

impl Revocation {
    /// The reason of a status word; `None` for 0 (valid) or an unknown value.
    pub fn from_word(word: u64) -> Option<Revocation> {
        Some(match word {
            1 => Revocation::Freed,
            2 => Revocation::Migrated,
            3 => Revocation::Disconnected,
            4 => Revocation::MemoryChanged,
            5 => Revocation::Released,
            6 => Revocation::DaemonRestarted,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Revocation::Freed => "the buffer was freed",
            Revocation::Migrated => "the buffer moved to new backing",
            Revocation::Disconnected => "the VM disconnected",
            Revocation::MemoryChanged => "the VM's memory table changed",
            Revocation::Released => "released",
            Revocation::DaemonRestarted => "the serving process that made it is gone",
        })
    }
}

/// The holder of `cenallocd --supervise` as the keeper of this serving
/// process's status pages: each page is sent to it (before the seal) and
/// the export waits for its acknowledgement; it writes
/// [`Revocation::DaemonRestarted`] into every page it holds once this
/// process is gone (crate::holder::status). The same channel tells the
/// holder the binary of an upgrade asked on the control socket
/// ([`keeper::ask_upgrade_binary`]).
pub mod keeper {
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    use crate::holder::status::{MAX_ANSWER, MSG_PAGE, MSG_UPGRADE_BINARY};

    /// How long a page waits for the holder's acknowledgement.
    const ACK_TIMEOUT: Duration = Duration::from_secs(1);

    static CHANNEL: OnceLock<Mutex<UnixDatagram>> = OnceLock::new();

    /// This process's status pages go to the holder through `channel` (a
    /// SOCK_SEQPACKET socket the holder handed down).
    pub fn set(channel: OwnedFd) -> io::Result<()> {
        let socket = UnixDatagram::from(channel);
        socket.set_read_timeout(Some(ACK_TIMEOUT))?;
        socket.set_write_timeout(Some(ACK_TIMEOUT))?;
        CHANNEL
            .set(Mutex::new(socket))
            .map_err(|_| io::Error::other("the status keeper is set already"))
    }

    /// Whether a holder keeps the status pages.
    pub fn is_set() -> bool {
        CHANNEL.get().is_some()
    }

    /// Hands `page` to the holder and waits for it to be mapped there; an
    /// error (no answer in time) fails the export. Nothing to do without a
    /// holder.
    pub(super) fn register(page: &File) -> io::Result<()> {
        let Some(channel) = CHANNEL.get() else {
            return Ok(());
        };
        let socket = channel.lock().unwrap_or_else(|e| e.into_inner());
        socket
            .send_with_fd(&[MSG_PAGE][..], page.as_raw_fd())
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        let mut ack = [0u8; 1];
        match socket.recv(&mut ack) {
            Ok(1) if ack[0] == 1 => Ok(()),
            Ok(_) => Err(io::Error::other("the holder refused the status page")),
            Err(e) => Err(io::Error::other(format!(
                "the holder did not take the status page: {e}"
            ))),
        }
    }

    /// Why the holder did not take an upgrade's binary.
    #[derive(Debug, thiserror::Error)]
    pub enum AskError {
        #[error("no holder channel to send it on")]
        NoHolder,
        #[error("the holder refused it: {0}")]
        Refused(String),
        #[error("the holder did not answer: {0}")]
        Io(io::Error),
    }

    /// Tells the holder which binary the upgrade about to be asked (on
    /// the upgrade eventfd) starts: `binary`, or the holder's own path.
    /// The holder checks and opens it, or refuses it with a reason.
    pub fn ask_upgrade_binary(binary: Option<&std::path::Path>) -> Result<(), AskError> {
        use std::os::unix::ffi::OsStrExt;
        let channel = CHANNEL.get().ok_or(AskError::NoHolder)?;
        let mut message = vec![MSG_UPGRADE_BINARY];
        if let Some(path) = binary {
            message.extend_from_slice(path.as_os_str().as_bytes());
        }
        let socket = channel.lock().unwrap_or_else(|e| e.into_inner());
        socket.send(&message).map_err(AskError::Io)?;
        let mut answer = vec![0u8; MAX_ANSWER];
        let read = socket.recv(&mut answer).map_err(AskError::Io)?;
        match answer.get(..read) {
            Some([1]) => Ok(()),
            Some([0, why @ ..]) => Err(AskError::Refused(String::from_utf8_lossy(why).into())),
            _ => Err(AskError::Refused(
                "an answer it should not give".to_string(),
            )),
        }
    }
}

/// One page of a sealed memfd holding an export's status word. The daemon
/// writes it through its own mapping; the holder gets the memfd and can
/// only map it read-only: `F_SEAL_FUTURE_WRITE` forbids every new writable
/// mapping and every write(2), through any descriptor, even one reopened
/// read-write through /proc.
pub struct StatusPage {
    file: File,
    word: NonNull<AtomicU64>,
}

// SAFETY: the mapping is owned by the page and only accessed through the
// AtomicU64, which is Sync; the File is Send + Sync.
unsafe impl Send for StatusPage {}
// SAFETY: as above.
unsafe impl Sync for StatusPage {}

impl StatusPage {
    pub fn new() -> io::Result<Self> {
        // SAFETY: memfd_create with a NUL-terminated name; the result is
        // checked and owned by a File.
        let fd = unsafe {
            libc::memfd_create(
                c"cenalloc-export-status".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(STATUS_PAGE_BYTES as u64)?;
        let page = Self::map(file)?;
        // Under a holder, the holder maps it too (before the seal), so that
        // it can revoke it once this process is gone.
        keeper::register(&page.file)?;
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on the memfd we own; no pointers.
        if unsafe { libc::fcntl(page.file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(page)
    }

    /// An existing status page, mapped read-write (the holder of
    /// `--supervise`, given the page before its seal: it revokes it when
    /// the serving process is gone). Neither sealed nor sent on here.
    pub fn adopt(file: File) -> io::Result<Self> {
        if file.metadata()?.len() != STATUS_PAGE_BYTES as u64 {
            return Err(io::Error::other("not a status page"));
        }
        Self::map(file)
    }

    /// `file` (one page long) mapped shared, read-write.
    fn map(file: File) -> io::Result<Self> {
        // SAFETY: a shared mapping of the whole (page-sized) file; checked
        // below, unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STATUS_PAGE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let Some(word) = NonNull::new(ptr.cast::<AtomicU64>()) else {
            return Err(io::Error::other("mmap returned a null mapping"));
        };
        Ok(StatusPage { file, word })
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: `word` points at the start of a live, page-aligned shared
        // mapping of at least 8 bytes, unmapped only in Drop.
        unsafe { self.word.as_ref() }
    }

    pub fn set(&self, reason: Revocation) {
        // The first reason wins: revocation is final.
        let _ = self
            .word()
            .compare_exchange(0, reason as u64, Ordering::AcqRel, Ordering::Acquire);
        // The word is visible before any later write of the daemon to the
        // pages (a reader who sees those writes sees the word).
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    pub fn get(&self) -> u64 {
        self.word().load(Ordering::Acquire)
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for StatusPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), of that length, not used after.
        unsafe { libc::munmap(self.word.as_ptr().cast(), STATUS_PAGE_BYTES) };
    }
}

/// One live export.
struct Record {
    id: u64,
    /// The control connection that holds it.
    holder: u64,
    buffer: BufferId,
    identity: Identity,
    status: std::sync::Arc<StatusPage>,
}

/// What an export names beyond the buffer id: the serials of the buffer
/// and of the backing exported ([`Pool::buffer_serial`],
/// [`Pool::backing_serial`]), never handed out twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub buffer: u64,
    pub backing: u64,
}

impl Identity {
    /// The identity of `buffer`'s backing now; `None` without backing.
    pub fn of(pool: &Pool, buffer: BufferId) -> Option<Identity> {
        Some(Identity {
            buffer: pool.buffer_serial(buffer).ok()?,
            backing: pool.backing_serial(buffer).ok()?,
        })
    }
}

#[derive(Default)]
struct Table {
    records: Vec<Record>,
    /// The front-end left: no export may be added any more.
    closed: bool,
}

/// Why [`Exports::add`] refused.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    #[error("the VM's front-end disconnected")]
    Closed,
}

/// The live exports of one VM.
#[derive(Default)]
pub struct Exports {
    /// Number of records; read without the lock after every command.
    active: AtomicUsize,
    table: Mutex<Table>,
}

impl Exports {
    pub fn new() -> Self {
        Exports::default()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Records stay consistent even if a holder panicked mid-update.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of live exports.
    pub fn count(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Records a new export of `buffer`, whose [`Identity`] is `identity`
    /// now. Call with the device lock held (the lock [`Exports::check`]
    /// runs under), so no change of the backing can slip between the two.
    /// Refused once the front-end has left ([`Exports::close`]).
    pub fn add(
        &self,
        id: u64,
        holder: u64,
        buffer: BufferId,
        identity: Identity,
        status: std::sync::Arc<StatusPage>,
    ) -> Result<(), AddError> {
        let mut table = self.table();
        if table.closed {
            return Err(AddError::Closed);
        }
        table.records.push(Record {
            id,
            holder,
            buffer,
            identity,
            status,
        });
        self.active.store(table.records.len(), Ordering::Release);
        Ok(())
    }

    /// Revokes every export whose buffer is gone or whose backing changed.
    /// Runs with the device lock held, after every command's model changes
    /// and before its guest-memory work.
    pub fn check(&self, pool: &Pool) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut table = self.table();
        table.records.retain(|record| {
            let reason = match (
                pool.buffer_serial(record.buffer),
                pool.backing_serial(record.buffer),
            ) {
                (Ok(buffer), Ok(backing)) if record.identity == Identity { buffer, backing } => {
                    return true
                }
                // The same buffer with another backing, or none left (its
                // MAP was undone): these pages are not it any more.
                (Ok(buffer), _) if buffer == record.identity.buffer => Revocation::Migrated,
                // Gone, or another buffer with the same id.
                _ => Revocation::Freed,
            };
            log::debug!(
                "export {} of buffer {} revoked: {reason}",
                record.id,
                record.buffer
            );
            record.status.set(reason);
            false
        });
        self.active.store(table.records.len(), Ordering::Release);
    }

    /// Revokes every export (the VM's memory table changed).
    pub fn revoke_all(&self, reason: Revocation) {
        let mut table = self.table();
        for record in table.records.drain(..) {
            record.status.set(reason);
        }
        self.active.store(0, Ordering::Release);
    }

    /// The front-end left: revokes every export (`Disconnected`) and
    /// refuses every later [`Exports::add`].
    pub fn close(&self) {
        let mut table = self.table();
        table.closed = true;
        for record in table.records.drain(..) {
            record.status.set(Revocation::Disconnected);
        }
        self.active.store(0, Ordering::Release);
    }

    /// Releases export `id` if `holder` holds it; returns whether it did.
    pub fn release(&self, id: u64, holder: u64) -> bool {
        let mut table = self.table();
        let Some(index) = table
            .records
            .iter()
            .position(|r| r.id == id && r.holder == holder)
        else {
            return false;
        };
        let record = table.records.remove(index);
        record.status.set(Revocation::Released);
        self.active.store(table.records.len(), Ordering::Release);
        true
    }

    /// Releases everything `holder` holds (its connection closed).
    pub fn release_holder(&self, holder: u64) -> usize {
        let mut table = self.table();
        let before = table.records.len();
        table.records.retain(|record| {
            if record.holder != holder {
                return true;
            }
            record.status.set(Revocation::Released);
            false
        });
        self.active.store(table.records.len(), Ordering::Release);
        before - table.records.len()
    }

    /// Number of live exports of each exported buffer.
    pub fn per_buffer(&self) -> std::collections::BTreeMap<BufferId, usize> {
        let mut out = std::collections::BTreeMap::new();
        for record in self.table().records.iter() {
            *out.entry(record.buffer).or_insert(0) += 1;
        }
        out
    }
}

/// The device tells the exports of every change of a backing.
impl crate::device::BackingWatch for Exports {
    fn backing_changed(&self, pool: &Pool) {
        self.check(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{kinds, Direction, MappingType, PoolConfig};
    use std::sync::Arc;

    fn pool() -> Pool {
        let mut pool = Pool::new(PoolConfig::default_layout()).unwrap();
        pool.add_region(0, 0x100_0000, 0x10_0000).unwrap();
        pool
    }

    /// A mapped buffer: its id and its identity.
    fn mapped(pool: &mut Pool, size: u64) -> (BufferId, Identity) {
        let id = pool.create(size, 0, 0).unwrap().id;
        let attached = pool
            .attach(id, kinds::SYSTEM, &[MappingType::ScatterGather])
            .unwrap();
        pool.map(attached.id, Direction::Bidirectional).unwrap();
        (id, Identity::of(pool, id).unwrap())
    }

    #[test]
    fn status_page_is_sealed_against_writes_by_anyone_else() {
        let page = StatusPage::new().unwrap();
        assert_eq!(page.get(), 0);
        page.set(Revocation::Migrated);
        page.set(Revocation::Freed);
        assert_eq!(page.get(), Revocation::Migrated as u64, "first reason wins");
        // A writable shared mapping is refused even through a descriptor
        // reopened read-write.
        let path = format!("/proc/self/fd/{}", page.file().as_raw_fd());
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        // SAFETY: a mapping attempt whose result is only compared.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STATUS_PAGE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                rw.as_raw_fd(),
                0,
            )
        };
        assert_eq!(ptr, libc::MAP_FAILED);
        assert_eq!(
            std::os::unix::fs::FileExt::write_at(&rw, &[1], 0)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EPERM)
        );
    }

    /// Migrated buffers: `tests/control.rs`
    /// (`exports_are_revoked_when_the_buffer_migrates`).
    #[test]
    fn check_revokes_freed_buffers_and_keeps_the_others() {
        let mut pool = pool();
        let exports = Exports::new();
        let (kept, kept_serial) = mapped(&mut pool, 0x2000);
        let (freed, freed_serial) = mapped(&mut pool, 0x2000);
        let pages: Vec<Arc<StatusPage>> = (0..2)
            .map(|_| Arc::new(StatusPage::new().unwrap()))
            .collect();
        exports
            .add(1, 7, kept, kept_serial, pages[0].clone())
            .unwrap();
        exports
            .add(2, 7, freed, freed_serial, pages[1].clone())
            .unwrap();
        exports.check(&pool);
        assert_eq!(exports.count(), 2);
        assert_eq!(pages[0].get(), 0);

        pool.free(freed).unwrap();
        let attachment = pool.snapshot().buffers[1].attachments[0];
        pool.unmap(attachment, Direction::Bidirectional).unwrap();
        pool.detach(attachment).unwrap();
        exports.check(&pool);
        assert_eq!(exports.count(), 1);
        assert_eq!(pages[1].get(), Revocation::Freed as u64);
        assert_eq!(pages[0].get(), 0);

        assert!(!exports.release(1, 8), "another holder's export");
        assert!(exports.release(1, 7));
        assert_eq!(pages[0].get(), Revocation::Released as u64);
        assert_eq!(exports.count(), 0);
    }

    /// Issue 20, item 12(a), in the model alone: the driver frees leased
    /// buffer D and maps a new buffer with the same id D on the same
    /// extent, with no check in between. Same id, same segments: only the
    /// identity tells them apart.
    #[test]
    fn a_driver_id_used_again_on_the_same_extent_is_another_buffer() {
        use crate::model::{LeasedAttach, LeasedMap, DRIVER_ID_FIRST};
        let mut pool = pool();
        let extent = pool.lease(0, 0x1_0000, 1).unwrap()[0];
        let request = LeasedMap {
            buffer_id: DRIVER_ID_FIRST,
            size: 0x1_0000,
            initial_mask: 0,
            attachments: vec![LeasedAttach {
                id: DRIVER_ID_FIRST + 1,
                mask: kinds::SYSTEM,
                map_type: MappingType::ScatterGather,
                importer_types: vec![MappingType::ScatterGather],
            }],
            map_index: 0,
            direction: Direction::Bidirectional,
            extent: extent.addr,
        };
        let old = pool.leased_map(&request).unwrap().segments;
        let exports = Exports::new();
        let page = Arc::new(StatusPage::new().unwrap());
        let identity = Identity::of(&pool, DRIVER_ID_FIRST).unwrap();
        exports
            .add(1, 7, DRIVER_ID_FIRST, identity, page.clone())
            .unwrap();

        let attachment = DRIVER_ID_FIRST + 1;
        pool.unmap(attachment, Direction::Bidirectional).unwrap();
        pool.detach(attachment).unwrap();
        pool.free(DRIVER_ID_FIRST).unwrap();
        assert_eq!(pool.lease(0, 0x1_0000, 1).unwrap(), vec![extent]);
        let new = pool.leased_map(&request).unwrap().segments;
        assert_eq!(new, old, "the same extent again");
        exports.check(&pool);
        assert_eq!(page.get(), Revocation::Freed as u64);
        assert_eq!(exports.count(), 0);
    }
}
