//! The daemon's work in guest memory: zeroing new backing, the FILL
//! pattern, CHECKSUM, and migration copies. Every operation checks that all
//! its segments lie in guest RAM before it writes the first byte.
//!
//! Each operation is a [`Work`]: a cursor over its segments that advances
//! by at most [`CHUNK`] bytes per [`Work::step`], so that a batch can be
//! interrupted between steps (a ring stop) and resumed later. The
//! functions [`zero_segments`], [`fill_pattern`], [`checksum`] and
//! [`copy_segments`] run one to its end.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::Error;
use crate::model::Segment;
use crate::protocol::*;

/// Bytes moved through guest memory per step (zeroing, FILL, CHECKSUM,
/// copies): the most work done between two chances to interrupt.
pub const CHUNK: usize = 64 << 10;

fn to_usize(len: u64) -> Result<usize, Error> {
    usize::try_from(len).map_err(|_| Error::Framing("segment too large"))
}

/// Checks that every segment lies inside guest RAM, so that an operation
/// over several segments fails before it writes the first byte (the memory
/// table may have changed since the regions were donated).
fn check_in_ram<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<(), Error> {
    for segment in segments {
        let inside = usize::try_from(segment.len)
            .is_ok_and(|len| mem.check_range(GuestAddress(segment.addr), len));
        if !inside {
            return Err(Error::SegmentOutsideRam {
                addr: segment.addr,
                len: segment.len,
            });
        }
    }
    Ok(())
}

/// A position in a list of segments, in buffer order.
#[derive(Clone, Debug, Default)]
struct Cursor {
    index: usize,
    offset: u64,
}

impl Cursor {
    /// The next piece of at most `max` bytes: (guest address, length), or
    /// `None` at the end.
    fn piece(&self, segments: &[Segment], max: u64) -> Option<(u64, u64)> {
        let segment = segments.get(self.index)?;
        let len = (segment.len - self.offset).min(max);
        Some((segment.addr + self.offset, len))
    }

    fn advance(&mut self, segments: &[Segment], by: u64) {
        self.offset += by;
        if let Some(segment) = segments.get(self.index) {
            if self.offset >= segment.len {
                self.index += 1;
                self.offset = 0;
            }
        }
    }
}

#[derive(Debug)]
enum Op {
    Zero,
    Fill {
        seed: u64,
        word: u64,
    },
    Checksum {
        hash: Fnv1a64,
        total: u64,
    },
    /// Segment by segment from `from` (the work's cursor walks the target).
    Copy {
        from: Vec<Segment>,
        source: Cursor,
    },
    /// Overlapping backings: everything into `bounce` first, then out.
    Bounce {
        from: Vec<Segment>,
        source: Cursor,
        bounce: Vec<u8>,
        read: usize,
        written: usize,
    },
}

/// One guest-memory operation in progress.
#[derive(Debug)]
pub struct Work {
    op: Op,
    /// What is written (zero, fill, copy target) or read (checksum).
    segments: Vec<Segment>,
    cursor: Cursor,
    /// Staging for one step (FILL, CHECKSUM, copies).
    chunk: Vec<u8>,
}

impl Work {
    /// Zeroes `segments`.
    pub fn zero<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<Self, Error> {
        Self::new(mem, Op::Zero, segments)
    }

    /// Writes the FILL pattern over `segments`.
    pub fn fill<M: GuestMemoryBackend>(
        mem: &M,
        segments: &[Segment],
        seed: u64,
    ) -> Result<Self, Error> {
        Self::new(mem, Op::Fill { seed, word: 0 }, segments)
    }

    /// Hashes `segments` (the result comes from [`Work::checksum_result`]).
    pub fn checksum<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<Self, Error> {
        let op = Op::Checksum {
            hash: Fnv1a64::default(),
            total: 0,
        };
        Self::new(mem, op, segments)
    }

    /// Copies the contents of `from` into `to` (same total length, buffer
    /// order). The old backing was already returned to its allocator, so
    /// the two may overlap: then the whole contents go through a bounce
    /// buffer.
    pub fn copy<M: GuestMemoryBackend>(
        mem: &M,
        from: &[Segment],
        to: &[Segment],
    ) -> Result<Self, Error> {
        check_in_ram(mem, from)?;
        let overlaps = from.iter().any(|a| {
            to.iter()
                .any(|b| a.addr < b.addr + b.len && b.addr < a.addr + a.len)
        });
        let op = if overlaps {
            let total: u64 = from.iter().map(|s| s.len).sum();
            Op::Bounce {
                from: from.to_vec(),
                source: Cursor::default(),
                bounce: vec![0u8; to_usize(total)?],
                read: 0,
                written: 0,
            }
        } else {
            Op::Copy {
                from: from.to_vec(),
                source: Cursor::default(),
            }
        };
        Self::new(mem, op, to)
    }

    fn new<M: GuestMemoryBackend>(mem: &M, op: Op, segments: &[Segment]) -> Result<Self, Error> {
        check_in_ram(mem, segments)?;
        let chunk = match op {
            Op::Zero | Op::Bounce { .. } => Vec::new(),
            _ => vec![0u8; CHUNK],
        };
        Ok(Work {
            op,
            segments: segments.to_vec(),
            cursor: Cursor::default(),
            chunk,
        })
    }

    /// Does at most [`CHUNK`] bytes of the work; `Ok(true)` once it is
    /// complete. An error leaves the work where it failed.
    pub fn step<M: GuestMemoryBackend>(&mut self, mem: &M) -> Result<bool, Error> {
        static ZEROES: [u8; CHUNK] = [0; CHUNK];
        let Work {
            op,
            segments,
            cursor,
            chunk,
        } = self;
        if let Op::Bounce {
            from,
            source,
            bounce,
            read,
            ..
        } = op
        {
            if *read < bounce.len() {
                let Some((addr, len)) = source.piece(from, CHUNK as u64) else {
                    *read = bounce.len();
                    return Ok(false);
                };
                let len = to_usize(len)?;
                mem.read_slice(&mut bounce[*read..*read + len], GuestAddress(addr))?;
                source.advance(from, len as u64);
                *read += len;
                return Ok(false);
            }
        }
        let Some((addr, len)) = cursor.piece(segments, CHUNK as u64) else {
            return Ok(true);
        };
        let mut len = to_usize(len)?;
        match op {
            Op::Zero => mem.write_slice(&ZEROES[..len], GuestAddress(addr))?,
            Op::Fill { seed, word } => {
                for bytes in chunk[..len].chunks_exact_mut(8) {
                    bytes.copy_from_slice(&cenalloc_pattern(*seed, *word).to_le_bytes());
                    *word += 1;
                }
                mem.write_slice(&chunk[..len], GuestAddress(addr))?;
            }
            Op::Checksum { hash, total } => {
                mem.read_slice(&mut chunk[..len], GuestAddress(addr))?;
                hash.update(&chunk[..len]);
                *total += len as u64;
            }
            Op::Copy { from, source } => {
                let Some((src, src_len)) = source.piece(from, len as u64) else {
                    // The source is shorter: the rest stays as it is.
                    return Ok(true);
                };
                len = to_usize(src_len)?;
                mem.read_slice(&mut chunk[..len], GuestAddress(src))?;
                mem.write_slice(&chunk[..len], GuestAddress(addr))?;
                source.advance(from, len as u64);
            }
            Op::Bounce {
                bounce, written, ..
            } => {
                len = len.min(bounce.len() - *written);
                if len == 0 {
                    return Ok(true);
                }
                mem.write_slice(&bounce[*written..*written + len], GuestAddress(addr))?;
                *written += len;
            }
        }
        cursor.advance(segments, len as u64);
        Ok(cursor.index >= segments.len())
    }

    /// Runs the work to its end.
    pub fn finish<M: GuestMemoryBackend>(&mut self, mem: &M) -> Result<(), Error> {
        while !self.step(mem)? {}
        Ok(())
    }

    /// (hash, bytes hashed) of a checksum work; (0, 0) for other work.
    pub fn checksum_result(&self) -> (u64, u64) {
        match &self.op {
            Op::Checksum { hash, total } => (hash.finish(), *total),
            _ => (0, 0),
        }
    }
}

/// Zeroes every segment through the daemon's mapping of guest memory.
pub fn zero_segments<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<(), Error> {
    Work::zero(mem, segments)?.finish(mem)
}

/// Writes the FILL pattern: 64-bit word `i` of the buffer is
/// `cenalloc_pattern(seed, i)`, little-endian.
pub fn fill_pattern<M: GuestMemoryBackend>(
    mem: &M,
    segments: &[Segment],
    seed: u64,
) -> Result<(), Error> {
    Work::fill(mem, segments, seed)?.finish(mem)
}

/// FNV-1a 64 of every byte of the segments, in order; returns (hash, bytes).
pub fn checksum<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<(u64, u64), Error> {
    let mut work = Work::checksum(mem, segments)?;
    work.finish(mem)?;
    Ok(work.checksum_result())
}

/// Copies the contents of `from` into `to` (see [`Work::copy`]).
pub fn copy_segments<M: GuestMemoryBackend>(
    mem: &M,
    from: &[Segment],
    to: &[Segment],
) -> Result<(), Error> {
    Work::copy(mem, from, to)?.finish(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn seg(addr: u64, len: u64) -> Segment {
        Segment { addr, len }
    }

    #[test]
    fn copy_keeps_buffer_order_across_different_segmentations() {
        let mem = memory();
        let from = [seg(0x10_0000, 0x3000), seg(0x20_0000, 0x1000)];
        let to = [seg(0x40_0000, 0x1000), seg(0x50_0000, 0x3000)];
        fill_pattern(&mem, &from, 5).unwrap();
        copy_segments(&mem, &from, &to).unwrap();
        assert_eq!(checksum(&mem, &from).unwrap(), checksum(&mem, &to).unwrap());
    }

    #[test]
    fn copy_between_overlapping_backings_goes_through_a_bounce_buffer() {
        let mem = memory();
        let from = [seg(0x10_0000, 0x4000)];
        let to = [seg(0x10_2000, 0x4000)];
        fill_pattern(&mem, &from, 9).unwrap();
        let (before, _) = checksum(&mem, &from).unwrap();
        copy_segments(&mem, &from, &to).unwrap();
        assert_eq!(checksum(&mem, &to).unwrap(), (before, 0x4000));
    }

    #[test]
    fn work_done_step_by_step_equals_work_done_at_once() {
        let mem = memory();
        // Odd segment sizes so that steps straddle segment ends.
        let a = [
            seg(0x10_0000, 0x3_1000),
            seg(0x20_0000, 0x1000),
            seg(0x30_0000, 0x2_2000),
        ];
        let b = [seg(0x50_0000, 0x5_4000)];
        let mut fill = Work::fill(&mem, &a, 77).unwrap();
        let mut steps = 0;
        while !fill.step(&mem).unwrap() {
            steps += 1;
        }
        assert!(steps >= 5, "{steps} steps");
        let expected = checksum(&mem, &a).unwrap();
        let mut sum = Work::checksum(&mem, &a).unwrap();
        while !sum.step(&mem).unwrap() {}
        assert_eq!(sum.checksum_result(), expected);
        assert_eq!(expected.1, 0x5_4000);
        let mut copy = Work::copy(&mem, &a, &b).unwrap();
        while !copy.step(&mem).unwrap() {}
        assert_eq!(checksum(&mem, &b).unwrap(), expected);
        // Overlapping: through the bounce buffer, in steps too.
        let c = [seg(0x52_0000, 0x5_4000)];
        let mut bounce = Work::copy(&mem, &b, &c).unwrap();
        let mut steps = 0;
        while !bounce.step(&mem).unwrap() {
            steps += 1;
        }
        assert!(steps >= 8, "{steps} steps");
        assert_eq!(checksum(&mem, &c).unwrap(), expected);
        let mut zero = Work::zero(&mem, &c).unwrap();
        while !zero.step(&mem).unwrap() {}
        let mut bytes = vec![1u8; 0x5_4000];
        mem.read_slice(&mut bytes, GuestAddress(0x52_0000)).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn zeroing_and_guest_memory_errors() {
        let mem = memory();
        let segments = [seg(0x10_0000, 0x2_0000)];
        fill_pattern(&mem, &segments, 1).unwrap();
        zero_segments(&mem, &segments).unwrap();
        let mut bytes = vec![1u8; 0x2_0000];
        mem.read_slice(&mut bytes, GuestAddress(0x10_0000)).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
        // Outside guest memory: an error, not a panic.
        let outside = [seg(0xff_f000, 0x2000)];
        assert_eq!(
            zero_segments(&mem, &outside).unwrap_err().errno(),
            libc::EFAULT
        );
        assert_eq!(checksum(&mem, &outside).unwrap_err().errno(), libc::EFAULT);
    }

    #[test]
    fn fill_and_copy_fail_before_writing_when_a_segment_left_guest_ram() {
        let mem = memory();
        let inside = seg(0x10_0000, 0x1000);
        let outside = seg(0xff_f000, 0x2000);
        assert_eq!(
            fill_pattern(&mem, &[inside, outside], 3)
                .unwrap_err()
                .errno(),
            libc::EFAULT
        );
        assert_eq!(
            zero_segments(&mem, &[inside, outside]).unwrap_err().errno(),
            libc::EFAULT
        );
        let target = seg(0x20_0000, 0x1000);
        fill_pattern(&mem, &[target], 4).unwrap();
        let (before, _) = checksum(&mem, &[target]).unwrap();
        assert_eq!(
            copy_segments(&mem, &[inside, outside], &[target, seg(0x30_0000, 0x2000)])
                .unwrap_err()
                .errno(),
            libc::EFAULT
        );
        let mut bytes = vec![1u8; 0x1000];
        mem.read_slice(&mut bytes, GuestAddress(inside.addr))
            .unwrap();
        assert!(
            bytes.iter().all(|&b| b == 0),
            "a failed FILL or zeroing wrote its first segment"
        );
        assert_eq!(checksum(&mem, &[target]).unwrap().0, before);
    }
}
