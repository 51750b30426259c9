//! The guest memory files a front-end hands over with SET_MEM_TABLE.
//!
//! The daemon maps each region from the file the front-end passed. A
//! mapping past the end of its file is allowed, but the first access there
//! raises SIGBUS and kills the daemon, and with it the device of every VM
//! it serves. So a memory table is refused (that front-end's connection
//! ends; nothing else changes) unless every region's file
//! - is a regular file (a memfd is one), whose size covers the region
//!   (`mmap_offset + memory_size <= st_size`), and
//! - is sealed against shrinking (`F_SEAL_SHRINK`): otherwise the
//!   front-end could truncate it at any later time. QEMU's
//!   `memory-backend-memfd` seals its memfd (`seal=on` is the default:
//!   `F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`). Files of
//!   `memory-backend-file` (tmpfs, hugetlbfs) cannot be sealed and are
//!   refused; `memory-backend-memfd,hugetlb=on` gives huge pages instead.
//!
//! Accepted guest memory is excluded from core dumps (`MADV_DONTDUMP`):
//! a crash of the daemon must not write every VM's RAM into a core file.

use std::os::fd::AsRawFd;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Why a memory table is refused.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum Refused {
    #[error("region {index} (guest {start:#x}) has no file")]
    NoFile { index: usize, start: u64 },
    #[error("region {index} (guest {start:#x}): statx: errno {errno}")]
    Stat {
        index: usize,
        start: u64,
        errno: i32,
    },
    #[error("region {index} (guest {start:#x}): its file is not a regular file or memfd")]
    NotRegular { index: usize, start: u64 },
    #[error(
        "region {index} (guest {start:#x}): its file is not sealed against shrinking \
         (F_SEAL_SHRINK), so the front-end could truncate it under the daemon; \
         give QEMU memory-backend-memfd (seal=on, its default)"
    )]
    Unsealed { index: usize, start: u64 },
    #[error(
        "region {index} (guest {start:#x}): bytes {offset:#x}..{end:#x} of its file are mapped, \
         but the file has {size:#x} bytes"
    )]
    Short {
        index: usize,
        start: u64,
        offset: u64,
        end: u64,
        size: u64,
    },
}

/// Checks every region of a memory table the front-end handed over (see
/// the module documentation).
pub fn check(memory: &GuestMemoryMmap) -> Result<(), Refused> {
    for (index, region) in memory.iter().enumerate() {
        let start = region.start_addr().0;
        let file = region
            .file_offset()
            .ok_or(Refused::NoFile { index, start })?;
        let fd = file.file().as_raw_fd();
        // F_SEAL_SHRINK first: once it is there, the size checked below
        // stays.
        // SAFETY: fcntl(F_GET_SEALS) on a descriptor the region owns; it
        // only reads. A file that cannot be sealed answers EINVAL.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(Refused::Unsealed { index, start });
        }
        // std's metadata is statx, which the seccomp allowlist has.
        let stat = file.file().metadata().map_err(|e| Refused::Stat {
            index,
            start,
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        if !stat.file_type().is_file() {
            return Err(Refused::NotRegular { index, start });
        }
        let offset = file.start();
        let size = stat.len();
        let end = offset.saturating_add(region.len());
        if end > size {
            return Err(Refused::Short {
                index,
                start,
                offset,
                end,
                size,
            });
        }
    }
    Ok(())
}

/// Marks every region's mapping `MADV_DONTDUMP`: a core dump of the
/// daemon leaves guest memory out. Returns the first failure (the
/// mappings are the daemon's own, so none is expected).
pub fn exclude_from_core_dumps(memory: &GuestMemoryMmap) -> Result<(), nix::errno::Errno> {
    for region in memory.iter() {
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        // SAFETY: the range is exactly the region's own mapping
        // (page-aligned by mmap), alive while `memory` is; MADV_DONTDUMP
        // changes only what a core dump includes, not the contents.
        let rc = unsafe { libc::madvise(region.as_ptr().cast(), len, libc::MADV_DONTDUMP) };
        if rc != 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use vm_memory::{FileOffset, GuestAddress};

    fn memfd(len: u64, seals: libc::c_int) -> File {
        // SAFETY: memfd_create with a NUL-terminated name; checked below.
        let fd = unsafe {
            libc::memfd_create(
                c"memory-table-test".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        if seals != 0 {
            // SAFETY: fcntl on a descriptor this test owns.
            assert_eq!(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) }, 0);
        }
        file
    }

    fn table(file: &File, regions: &[(u64, usize, u64)]) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges_with_files(regions.iter().map(|&(gpa, len, offset)| {
            (
                GuestAddress(gpa),
                len,
                Some(FileOffset::new(file.try_clone().unwrap(), offset)),
            )
        }))
        .unwrap()
    }

    #[test]
    fn a_sealed_file_that_covers_every_region_passes() {
        let file = memfd(3 << 20, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
        let memory = table(&file, &[(0, 1 << 20, 0), (1 << 32, 2 << 20, 1 << 20)]);
        assert_eq!(check(&memory), Ok(()));
        exclude_from_core_dumps(&memory).unwrap();
    }

    #[test]
    fn a_short_file_names_the_region_and_the_bytes_missing() {
        let file = memfd(2 << 20, libc::F_SEAL_SHRINK);
        let memory = table(&file, &[(0, 1 << 20, 0), (1 << 32, 2 << 20, 1 << 20)]);
        assert_eq!(
            check(&memory),
            Err(Refused::Short {
                index: 1,
                start: 1 << 32,
                offset: 1 << 20,
                end: 3 << 20,
                size: 2 << 20,
            })
        );
    }

    #[test]
    fn a_file_without_f_seal_shrink_is_refused_whatever_its_size() {
        for seals in [0, libc::F_SEAL_GROW, libc::F_SEAL_SEAL] {
            let file = memfd(1 << 20, seals);
            let memory = table(&file, &[(0, 1 << 20, 0)]);
            assert_eq!(
                check(&memory),
                Err(Refused::Unsealed { index: 0, start: 0 }),
                "seals {seals:#x}"
            );
        }
    }

    #[test]
    fn a_regular_file_that_cannot_be_sealed_is_refused() {
        let path = std::env::temp_dir().join(format!("memory-table-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.set_len(1 << 20).unwrap();
        let memory = table(&file, &[(0, 1 << 20, 0)]);
        assert_eq!(
            check(&memory),
            Err(Refused::Unsealed { index: 0, start: 0 })
        );
    }
}
