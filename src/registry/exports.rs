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
//! read-only, [`StatusPage`]) becomes non-zero ([`Revocation`]) right after
//! the command that changed the backing, before the guest sees its answer.
//! From then on the segments may hold anything the guest puts there.
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
//! The check runs after every control chain while the VM has exports (one
//! atomic load when it has none) under the device lock, the same lock an
//! export is created under, so an export never misses a change.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::model::{BufferId, Pool, Segment};

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
        })
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
        // SAFETY: a fresh shared mapping of the whole (page-sized) file;
        // checked below, unmapped in Drop.
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
        let page = StatusPage { file, word };
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on the memfd we own; no pointers.
        if unsafe { libc::fcntl(page.file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(page)
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
    segments: Vec<Segment>,
    status: std::sync::Arc<StatusPage>,
}

/// The live exports of one VM.
#[derive(Default)]
pub struct Exports {
    /// Number of records; read without the lock on every control chain.
    active: AtomicUsize,
    records: Mutex<Vec<Record>>,
}

impl Exports {
    pub fn new() -> Self {
        Exports::default()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Vec<Record>> {
        // Records stay consistent even if a holder panicked mid-update.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of live exports.
    pub fn count(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Records a new export of `buffer`, whose backing is `segments` now.
    /// Call with the device lock held (the lock [`Exports::check`] runs
    /// under), so no change of the backing can slip between the two.
    pub fn add(
        &self,
        id: u64,
        holder: u64,
        buffer: BufferId,
        segments: Vec<Segment>,
        status: std::sync::Arc<StatusPage>,
    ) {
        let mut records = self.records();
        records.push(Record {
            id,
            holder,
            buffer,
            segments,
            status,
        });
        self.active.store(records.len(), Ordering::Release);
    }

    /// Revokes every export whose buffer is gone or whose backing changed.
    /// Runs after every control chain, with the device lock held.
    pub fn check(&self, pool: &Pool) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut records = self.records();
        records.retain(|record| {
            let reason = match pool.backing(record.buffer) {
                Ok(segments) if segments == record.segments.as_slice() => return true,
                Ok(_) => Revocation::Migrated,
                Err(_) => Revocation::Freed,
            };
            log::debug!(
                "export {} of buffer {} revoked: {reason}",
                record.id,
                record.buffer
            );
            record.status.set(reason);
            false
        });
        self.active.store(records.len(), Ordering::Release);
    }

    /// Revokes every export (the VM disconnected, its memory changed).
    pub fn revoke_all(&self, reason: Revocation) {
        let mut records = self.records();
        for record in records.drain(..) {
            record.status.set(reason);
        }
        self.active.store(0, Ordering::Release);
    }

    /// Releases export `id` if `holder` holds it; returns whether it did.
    pub fn release(&self, id: u64, holder: u64) -> bool {
        let mut records = self.records();
        let Some(index) = records
            .iter()
            .position(|r| r.id == id && r.holder == holder)
        else {
            return false;
        };
        let record = records.remove(index);
        record.status.set(Revocation::Released);
        self.active.store(records.len(), Ordering::Release);
        true
    }

    /// Releases everything `holder` holds (its connection closed).
    pub fn release_holder(&self, holder: u64) -> usize {
        let mut records = self.records();
        let before = records.len();
        records.retain(|record| {
            if record.holder != holder {
                return true;
            }
            record.status.set(Revocation::Released);
            false
        });
        self.active.store(records.len(), Ordering::Release);
        before - records.len()
    }

    /// Number of live exports of each exported buffer.
    pub fn per_buffer(&self) -> std::collections::BTreeMap<BufferId, usize> {
        let mut out = std::collections::BTreeMap::new();
        for record in self.records().iter() {
            *out.entry(record.buffer).or_insert(0) += 1;
        }
        out
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

    fn mapped(pool: &mut Pool, size: u64) -> (BufferId, Vec<Segment>) {
        let id = pool.create(size, 0, 0).unwrap().id;
        let attached = pool
            .attach(id, kinds::SYSTEM, &[MappingType::ScatterGather])
            .unwrap();
        let segments = pool
            .map(attached.id, Direction::Bidirectional)
            .unwrap()
            .segments;
        (id, segments)
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
        let (kept, kept_segments) = mapped(&mut pool, 0x2000);
        let (freed, freed_segments) = mapped(&mut pool, 0x2000);
        let pages: Vec<Arc<StatusPage>> = (0..2)
            .map(|_| Arc::new(StatusPage::new().unwrap()))
            .collect();
        exports.add(1, 7, kept, kept_segments, pages[0].clone());
        exports.add(2, 7, freed, freed_segments, pages[1].clone());
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
}
