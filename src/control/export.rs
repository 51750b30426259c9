//! The daemon's side of `export`: from a buffer id to guest memory files,
//! offsets and a status page, registered with the VM's exports (see
//! [`crate::registry::exports`] for when an export is revoked).
//!
//! # What read-only means here
//! QEMU hands the daemon each guest RAM region as a file descriptor opened
//! read-write (a memfd for `memory-backend-memfd`). A read-only export
//! does not pass that descriptor on: it opens the same file again through
//! `/proc/self/fd/N` with `O_RDONLY`, a new open file description. Through
//! it the kernel refuses `write(2)` (`EBADF`), a shared writable mapping
//! (`EACCES`) and `mprotect(PROT_WRITE)` of a shared read-only mapping.
//! What the kernel does **not** enforce (measured on Linux 6.18, see
//! `tests/control.rs`):
//! - the holder can open `/proc/self/fd/M` of its read-only descriptor
//!   again with `O_RDWR` and write: a memfd's inode has mode 0777 and the
//!   file belongs to QEMU's user, so only a holder without access to its
//!   own `/proc` (a sandbox, another user with `ptrace` restrictions on
//!   the daemon) is really kept read-only;
//! - seals cannot help for guest RAM: QEMU's memfd has `F_SEAL_SEAL`
//!   already (always without `MFD_ALLOW_SEALING`; QEMU's `seal=on` adds
//!   grow/shrink seals, then `F_SEAL_SEAL`), and a write seal would be
//!   inode-wide, stopping the guest and QEMU too. The status page, which
//!   the daemon creates, is sealed with `F_SEAL_FUTURE_WRITE`;
//! - the descriptor gives access to the **whole** region, all of that
//!   guest's RAM in it, not just the buffer: the control socket is
//!   therefore mode 0600 (root or the daemon's user) unless a group is
//!   configured.
//!
//! A writable export (`writable: true`, only when the daemon allows it)
//! passes a duplicate of the read-write descriptor.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use vm_memory::{Address, GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};

use super::protocol::{ErrorBody, ErrorCode, ExportInfo, ExportSegment};
use crate::model::Segment;
use crate::registry::{Identity, Revocation, StatusPage, Vm};

fn fail(code: ErrorCode, message: String) -> ErrorBody {
    ErrorBody { code, message }
}

/// An export ready to be sent: its description and its descriptors
/// (status page first).
pub struct Prepared {
    pub info: ExportInfo,
    pub files: Vec<File>,
    /// The export's status page (registered with the VM's exports).
    pub status: Arc<StatusPage>,
}

/// Opens `file` again: read-only through /proc (a new open file
/// description), or a duplicate of the read-write descriptor.
fn reopen(file: &File, writable: bool) -> std::io::Result<File> {
    if writable {
        return file.try_clone();
    }
    std::fs::OpenOptions::new()
        .read(true)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// One piece of a segment inside one region.
struct Piece {
    region: usize,
    offset: u64,
    len: u64,
    gpa: u64,
}

/// Exports `buffer` of `vm` for control connection `holder` as export
/// `id`.
pub fn export(
    vm: &Vm,
    holder: u64,
    id: u64,
    buffer: u32,
    writable: bool,
) -> Result<Prepared, ErrorBody> {
    let status = Arc::new(StatusPage::new().map_err(|e| {
        fail(
            ErrorCode::Internal,
            format!("cannot create a status page: {e}"),
        )
    })?);
    let memory = vm.memory.memory().into_inner();
    let located = vm.read(|device| {
        let pool = device.pool();
        let size = pool.buffer_size(buffer).map_err(|_| {
            fail(
                ErrorCode::UnknownBuffer,
                format!("VM {:?} has no buffer {buffer}", vm.name),
            )
        })?;
        if device.preparing() == Some(buffer) {
            // Its pages still hold what they held before the MAP.
            return Err(fail(
                ErrorCode::NotExportable,
                format!(
                    "buffer {buffer} of VM {:?}: a MAP interrupted (by a ring stop, or to \
                     let a control request in) is still preparing its backing; try again \
                     once the VM runs",
                    vm.name
                ),
            ));
        }
        let segments: Vec<Segment> = pool
            .backing(buffer)
            .map_err(|_| {
                fail(
                    ErrorCode::NotExportable,
                    format!(
                        "buffer {buffer} of VM {:?} has no backing yet (never mapped)",
                        vm.name
                    ),
                )
            })?
            .to_vec();
        let pieces = locate(&*memory, &segments).map_err(|message| {
            fail(
                ErrorCode::NotExportable,
                format!("buffer {buffer} of VM {:?}: {message}", vm.name),
            )
        })?;
        let identity = Identity::of(pool, buffer).ok_or_else(|| {
            fail(
                ErrorCode::Internal,
                format!("buffer {buffer} has segments but no backing serial"),
            )
        })?;
        // Under the worker's lock: the next command that changes this
        // backing revokes the export before it touches the pages. Refused
        // if the front-end left since the server looked the VM up.
        vm.exports
            .add(id, holder, buffer, identity, status.clone())
            .map_err(|e| fail(ErrorCode::NotConnected, format!("VM {:?}: {e}", vm.name)))?;
        Ok((size, pieces))
    });
    let (size, pieces) = located.unwrap_or_else(|| {
        Err(fail(
            ErrorCode::Internal,
            "the device state could not be read".into(),
        ))
    })?;
    // A memory table that changed since `memory` was loaded may have been
    // revoked before the export was added: refuse rather than hand out
    // offsets into a stale table.
    if !Arc::ptr_eq(&memory, &vm.memory.memory().into_inner()) {
        vm.exports.release(id, holder);
        status.set(Revocation::MemoryChanged);
        return Err(fail(
            ErrorCode::NotExportable,
            "the VM's memory table changed during the export; try again".into(),
        ));
    }
    let undo = |message: String| {
        vm.exports.release(id, holder);
        fail(ErrorCode::Internal, message)
    };
    let status_file = status
        .file()
        .try_clone()
        .map_err(|e| undo(format!("cannot duplicate the status page: {e}")))?;
    let mut files = vec![status_file];
    let mut region_fd: Vec<(usize, u32)> = Vec::new();
    let mut out = Vec::with_capacity(pieces.len());
    for piece in &pieces {
        let fd = match region_fd.iter().find(|(region, _)| *region == piece.region) {
            Some((_, fd)) => *fd,
            None => {
                let region = memory
                    .iter()
                    .nth(piece.region)
                    .ok_or_else(|| undo("guest memory region vanished".into()))?;
                let file = region
                    .file_offset()
                    .ok_or_else(|| undo("guest memory region is not file-backed".into()))?
                    .file();
                let opened = reopen(file, writable)
                    .map_err(|e| undo(format!("cannot open guest memory read-only: {e}")))?;
                files.push(opened);
                let fd = (files.len() - 1) as u32;
                region_fd.push((piece.region, fd));
                fd
            }
        };
        out.push(ExportSegment {
            fd,
            offset: piece.offset,
            len: piece.len,
            gpa: piece.gpa,
        });
    }
    Ok(Prepared {
        info: ExportInfo {
            export: id,
            vm: vm.name.clone(),
            buffer,
            size,
            writable,
            status_fd: 0,
            fds: files.len() as u32,
            segments: out,
        },
        files,
        status,
    })
}

/// Splits the segments at region boundaries and finds each piece's file
/// offset.
fn locate<M: GuestMemoryBackend>(memory: &M, segments: &[Segment]) -> Result<Vec<Piece>, String> {
    let regions: Vec<_> = memory.iter().collect();
    let mut pieces = Vec::with_capacity(segments.len());
    for segment in segments {
        let mut gpa = segment.addr;
        let end = segment
            .addr
            .checked_add(segment.len)
            .ok_or_else(|| format!("segment {:#x}+{:#x} overflows", segment.addr, segment.len))?;
        while gpa < end {
            let (index, region) = regions
                .iter()
                .enumerate()
                .find(|(_, r)| {
                    let start = r.start_addr().raw_value();
                    gpa >= start && gpa - start < r.len()
                })
                .ok_or_else(|| format!("guest address {gpa:#x} is not in guest RAM"))?;
            let start = region.start_addr().raw_value();
            let file_offset = region
                .file_offset()
                .ok_or_else(|| "guest memory is not file-backed".to_string())?;
            let within = gpa - start;
            let len = (end - gpa).min(region.len() - within);
            let offset = file_offset
                .start()
                .checked_add(within)
                .ok_or_else(|| "file offset overflows".to_string())?;
            match pieces.last_mut() {
                // Adjacent in buffer order, region and file: one piece.
                Some(Piece {
                    region: r,
                    offset: o,
                    len: l,
                    gpa: g,
                }) if *r == index && *o + *l == offset && *g + *l == gpa => *l += len,
                _ => pieces.push(Piece {
                    region: index,
                    offset,
                    len,
                    gpa,
                }),
            }
            gpa += len;
        }
    }
    Ok(pieces)
}
