//! The daemon's work in guest memory: zeroing new backing, the FILL
//! pattern, CHECKSUM, and migration copies. Every operation checks that all
//! its segments lie in guest RAM before it writes the first byte.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::Error;
use crate::model::Segment;
use crate::protocol::*;

/// Bytes moved through guest memory per step (zeroing, FILL, CHECKSUM, copies).
const CHUNK: usize = 64 << 10;

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

/// Zeroes every segment through the daemon's mapping of guest memory.
pub fn zero_segments<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<(), Error> {
    static ZEROES: [u8; CHUNK] = [0; CHUNK];
    check_in_ram(mem, segments)?;
    for segment in segments {
        let mut done = 0u64;
        while done < segment.len {
            let step = (segment.len - done).min(CHUNK as u64);
            mem.write_slice(
                &ZEROES[..to_usize(step)?],
                GuestAddress(segment.addr + done),
            )?;
            done += step;
        }
    }
    Ok(())
}

/// Writes the FILL pattern: 64-bit word `i` of the buffer is
/// `cenalloc_pattern(seed, i)`, little-endian.
pub fn fill_pattern<M: GuestMemoryBackend>(
    mem: &M,
    segments: &[Segment],
    seed: u64,
) -> Result<(), Error> {
    check_in_ram(mem, segments)?;
    let mut chunk = vec![0u8; CHUNK];
    let mut word = 0u64;
    for segment in segments {
        let mut done = 0u64;
        while done < segment.len {
            let step = to_usize((segment.len - done).min(CHUNK as u64))?;
            for bytes in chunk[..step].chunks_exact_mut(8) {
                bytes.copy_from_slice(&cenalloc_pattern(seed, word).to_le_bytes());
                word += 1;
            }
            mem.write_slice(&chunk[..step], GuestAddress(segment.addr + done))?;
            done += step as u64;
        }
    }
    Ok(())
}

/// FNV-1a 64 of every byte of the segments, in order; returns (hash, bytes).
pub fn checksum<M: GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> Result<(u64, u64), Error> {
    check_in_ram(mem, segments)?;
    let mut chunk = vec![0u8; CHUNK];
    let mut hash = Fnv1a64::default();
    let mut total = 0u64;
    for segment in segments {
        let mut done = 0u64;
        while done < segment.len {
            let step = to_usize((segment.len - done).min(CHUNK as u64))?;
            mem.read_slice(&mut chunk[..step], GuestAddress(segment.addr + done))?;
            hash.update(&chunk[..step]);
            done += step as u64;
            total += step as u64;
        }
    }
    Ok((hash.finish(), total))
}

/// Copies the contents of `from` into `to` (same total length, buffer
/// order). The old backing was already returned to its allocator, so the
/// two may overlap: then the whole contents go through a bounce buffer.
pub fn copy_segments<M: GuestMemoryBackend>(
    mem: &M,
    from: &[Segment],
    to: &[Segment],
) -> Result<(), Error> {
    check_in_ram(mem, from)?;
    check_in_ram(mem, to)?;
    let overlaps = from.iter().any(|a| {
        to.iter()
            .any(|b| a.addr < b.addr + b.len && b.addr < a.addr + a.len)
    });
    if overlaps {
        let total: u64 = from.iter().map(|s| s.len).sum();
        let mut bounce = vec![0u8; to_usize(total)?];
        let mut offset = 0usize;
        for segment in from {
            let len = to_usize(segment.len)?;
            mem.read_slice(
                &mut bounce[offset..offset + len],
                GuestAddress(segment.addr),
            )?;
            offset += len;
        }
        let mut offset = 0usize;
        for segment in to {
            let len = to_usize(segment.len)?;
            let end = (offset + len).min(bounce.len());
            mem.write_slice(&bounce[offset..end], GuestAddress(segment.addr))?;
            offset = end;
        }
        return Ok(());
    }
    let mut chunk = vec![0u8; CHUNK];
    let mut source = from.iter().map(|s| (s.addr, s.len));
    let mut current = source.next();
    for segment in to {
        let mut done = 0u64;
        while done < segment.len {
            let Some((src_addr, src_len)) = current else {
                return Ok(());
            };
            let step = (segment.len - done).min(src_len).min(CHUNK as u64);
            let len = to_usize(step)?;
            mem.read_slice(&mut chunk[..len], GuestAddress(src_addr))?;
            mem.write_slice(&chunk[..len], GuestAddress(segment.addr + done))?;
            done += step;
            current = if step == src_len {
                source.next()
            } else {
                Some((src_addr + step, src_len - step))
            };
        }
    }
    Ok(())
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
