//! Descriptor chains → bytes and back.
//!
//! A control chain is checked in a fixed order before anything acts on it:
//! descriptor count → direction (every readable descriptor before every
//! writable one) → sizes (request bounded, every descriptor inside guest
//! RAM). The readable part is gathered into one request, the answer is
//! scattered over the writable part. A malformed chain still gets an
//! answer: a `cenalloc_batch_resp` with `-EINVAL` when its writable part can
//! hold one, else it is returned with 0 bytes written.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::device::Device;
use crate::protocol::{status_of_errno, BatchResp, Event};

/// Most descriptors one chain may have (direct or indirect).
pub const MAX_DESCRIPTORS: usize = 1024;
/// Largest readable part: a full batch of the largest commands fits easily.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Why a chain cannot be used as it is.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    #[error("chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("readable descriptor {0} follows a writable one")]
    ReadableAfterWritable(usize),
    #[error("readable part of {0} bytes exceeds {MAX_REQUEST_BYTES}")]
    RequestTooLarge(usize),
    #[error("descriptor {index} ({addr:#x}+{len:#x}) is not inside guest RAM")]
    OutsideGuestRam { index: usize, addr: u64, len: u32 },
    #[error("writable part of {got} bytes, need {need}")]
    InsufficientWritable { need: usize, got: usize },
}

/// The writable descriptors of a chain, each checked to lie in guest RAM.
#[derive(Debug, Default)]
pub struct Writable {
    ranges: Vec<(GuestAddress, usize)>,
    len: usize,
}

impl Writable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `bytes` across the ranges in order; returns the bytes written.
    pub fn scatter<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        bytes: &[u8],
    ) -> Result<usize, ChainError> {
        if bytes.len() > self.len {
            return Err(ChainError::InsufficientWritable {
                need: bytes.len(),
                got: self.len,
            });
        }
        let mut done = 0;
        for (index, &(addr, len)) in self.ranges.iter().enumerate() {
            if done == bytes.len() {
                break;
            }
            let step = len.min(bytes.len() - done);
            mem.write_slice(&bytes[done..done + step], addr)
                .map_err(|_| ChainError::OutsideGuestRam {
                    index,
                    addr: addr.0,
                    len: len as u32,
                })?;
            done += step;
        }
        Ok(done)
    }
}

/// A chain split into its request bytes and its writable part.
#[derive(Debug)]
pub struct Parsed {
    pub request: Vec<u8>,
    pub writable: Writable,
    /// The first defect found; `writable` then holds what could be checked
    /// (empty if the writable part itself is unusable).
    pub error: Option<ChainError>,
}

/// Checks and gathers a chain.
pub fn parse<M: GuestMemoryBackend>(
    mem: &M,
    descriptors: impl Iterator<Item = Descriptor>,
) -> Parsed {
    let mut parsed = Parsed {
        request: Vec::new(),
        writable: Writable::default(),
        error: None,
    };
    let mut readable: Vec<(usize, Descriptor)> = Vec::new();
    let mut writable_ok = true;
    for (index, desc) in descriptors.enumerate() {
        if index >= MAX_DESCRIPTORS {
            parsed.error.get_or_insert(ChainError::TooManyDescriptors);
            break;
        }
        if desc.is_write_only() {
            let len = desc.len() as usize;
            if !writable_ok {
                continue;
            }
            if mem.check_range(desc.addr(), len) || len == 0 {
                parsed.writable.ranges.push((desc.addr(), len));
                parsed.writable.len += len;
            } else {
                writable_ok = false;
                parsed.error.get_or_insert(ChainError::OutsideGuestRam {
                    index,
                    addr: desc.addr().0,
                    len: desc.len(),
                });
            }
        } else {
            if !parsed.writable.ranges.is_empty() || !writable_ok {
                parsed
                    .error
                    .get_or_insert(ChainError::ReadableAfterWritable(index));
            }
            readable.push((index, desc));
        }
    }
    if !writable_ok {
        parsed.writable = Writable::default();
    }
    if parsed.error.is_some() {
        return parsed;
    }

    let total: usize = readable.iter().map(|(_, d)| d.len() as usize).sum();
    if total > MAX_REQUEST_BYTES {
        parsed.error = Some(ChainError::RequestTooLarge(total));
        return parsed;
    }
    parsed.request = vec![0u8; total];
    let mut offset = 0;
    for (index, desc) in readable {
        let len = desc.len() as usize;
        if mem
            .read_slice(&mut parsed.request[offset..offset + len], desc.addr())
            .is_err()
        {
            parsed.error = Some(ChainError::OutsideGuestRam {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            });
            parsed.request.clear();
            return parsed;
        }
        offset += len;
    }
    parsed
}

/// Answers one control chain; returns the bytes written to its writable
/// part (the used length). Never fails: a bad chain is counted and answered
/// as well as its writable part allows.
pub fn answer_control<M: GuestMemoryBackend>(
    device: &mut Device,
    mem: &M,
    descriptors: impl Iterator<Item = Descriptor>,
) -> u32 {
    let parsed = parse(mem, descriptors);
    let response = match &parsed.error {
        None => device.execute_batch(mem, &parsed.request, parsed.writable.len()),
        Some(error) => {
            log::debug!("malformed control chain: {error}");
            device.counters.malformed_chains += 1;
            if parsed.writable.len() < size_of::<BatchResp>() {
                return 0;
            }
            BatchResp {
                status: status_of_errno(libc::EINVAL),
                num_done: 0,
            }
            .as_slice()
            .to_vec()
        }
    };
    match parsed.writable.scatter(mem, &response) {
        Ok(written) => written as u32,
        Err(error) => {
            log::debug!("answer of a control chain lost: {error}");
            0
        }
    }
}

/// Writes one event into an event chain; returns the bytes written, or the
/// reason the chain cannot take an event.
pub fn deliver_event<M: GuestMemoryBackend>(
    mem: &M,
    descriptors: impl Iterator<Item = Descriptor>,
    event: &Event,
) -> Result<u32, ChainError> {
    let parsed = parse(mem, descriptors);
    if let Some(error) = parsed.error {
        return Err(error);
    }
    let written = parsed.writable.scatter(mem, event.as_slice())?;
    Ok(written as u32)
}
