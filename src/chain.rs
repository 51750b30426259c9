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

use crate::device::{Batch, Device, Progress};
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
#[derive(Debug, Default, PartialEq, Eq)]
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
    answer_parsed(device, mem, parse(mem, descriptors))
}

/// [`answer_control`] for a chain already [`parse`]d.
pub fn answer_parsed<M: GuestMemoryBackend>(device: &mut Device, mem: &M, parsed: Parsed) -> u32 {
    let mut work = ControlWork::start(device, parsed);
    loop {
        if let Some(written) = work.run(device, mem, &mut || false) {
            return written;
        }
    }
}

/// A test hook (the fault injection of test builds) around one chain: it
/// sees the request before the device runs it and the answer before it is
/// written, and may change either, or withhold the answer.
pub trait Filter {
    /// May change the request bytes before the device runs them.
    fn request(&mut self, _request: &mut [u8]) {}

    /// The answer to write (changed or not), or `None`: write nothing and
    /// never return the chain.
    fn answer(&mut self, request: &[u8], response: Vec<u8>) -> Option<Vec<u8>>;
}

/// The filter of normal operation: changes nothing.
pub struct Honest;

impl Filter for Honest {
    fn answer(&mut self, _request: &[u8], response: Vec<u8>) -> Option<Vec<u8>> {
        Some(response)
    }
}

/// What [`ControlWork::run_filtered`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The answer is written: this many bytes (the used length).
    Written(u32),
    /// Stopped between two steps; call again to continue.
    Yielded,
    /// The filter withheld the answer: the chain is never to be returned.
    Withheld,
}

/// A control chain being answered: where its answer goes, and its batch
/// (or the answer already known, for a chain refused as a whole). It may
/// stop between two steps of work and go on later ([`ControlWork::run`]).
#[derive(Debug)]
pub struct ControlWork {
    writable: Writable,
    state: ControlState,
}

#[derive(Debug)]
enum ControlState {
    Answer(Vec<u8>),
    Running(Batch),
}

impl ControlWork {
    /// Checks a parsed chain and its batch framing. A bad chain is counted
    /// and answered as well as its writable part allows.
    pub fn start(device: &mut Device, parsed: Parsed) -> Self {
        let Parsed {
            request,
            writable,
            error,
        } = parsed;
        let state = match error {
            Some(error) => {
                log::debug!("malformed control chain: {error}");
                device.counters.malformed_chains += 1;
                if writable.len() < size_of::<BatchResp>() {
                    ControlState::Answer(Vec::new())
                } else {
                    let resp = BatchResp {
                        status: status_of_errno(libc::EINVAL),
                        num_done: 0,
                    };
                    ControlState::Answer(resp.as_slice().to_vec())
                }
            }
            None => match device.begin_batch(request, writable.len()) {
                Ok(batch) => ControlState::Running(batch),
                Err(answer) => ControlState::Answer(answer),
            },
        };
        ControlWork { writable, state }
    }

    /// Runs the batch on; once it is done, writes the answer and returns
    /// the bytes written (the used length). `None`: `yield_now` stopped it
    /// between two steps; call again to continue.
    pub fn run<M: GuestMemoryBackend>(
        &mut self,
        device: &mut Device,
        mem: &M,
        yield_now: &mut dyn FnMut() -> bool,
    ) -> Option<u32> {
        match self.run_filtered(device, mem, yield_now, &mut Honest) {
            Outcome::Written(written) => Some(written),
            Outcome::Yielded => None,
            Outcome::Withheld => Some(0),
        }
    }

    /// [`Self::run`] with the answer passed through `filter` before it is
    /// written (test builds: fault injection).
    pub fn run_filtered<M: GuestMemoryBackend>(
        &mut self,
        device: &mut Device,
        mem: &M,
        yield_now: &mut dyn FnMut() -> bool,
        filter: &mut dyn Filter,
    ) -> Outcome {
        let response = match &mut self.state {
            ControlState::Answer(bytes) => std::mem::take(bytes),
            ControlState::Running(batch) => match device.run_batch(mem, batch, yield_now) {
                Progress::Done(response) => response,
                Progress::Yielded => return Outcome::Yielded,
            },
        };
        let request: &[u8] = match &self.state {
            ControlState::Running(batch) => batch.request(),
            ControlState::Answer(_) => &[],
        };
        let Some(response) = filter.answer(request, response) else {
            return Outcome::Withheld;
        };
        let written = match self.writable.scatter(mem, &response) {
            Ok(written) => written as u32,
            Err(error) => {
                log::debug!("answer of a control chain lost: {error}");
                0
            }
        };
        // Written, not yet on the used ring: the journal's moment.
        if let ControlState::Running(batch) = &self.state {
            device.commit_batch(batch, written);
        }
        Outcome::Written(written)
    }

    /// Names the chain (its avail index and head) in the journal.
    pub fn set_chain(&mut self, position: u16, head: u16) {
        if let ControlState::Running(batch) = &mut self.state {
            batch.set_chain(position, head);
        }
    }

    /// Whether `parsed` is the chain this work was started from: the same
    /// request bytes and the same writable ranges.
    pub fn same_chain(&self, parsed: &Parsed) -> bool {
        parsed.error.is_none()
            && parsed.writable == self.writable
            && matches!(&self.state, ControlState::Running(batch) if batch.request() == parsed.request)
    }

    /// Gives the work up (its chain is not coming back).
    pub fn abandon(self, device: &mut Device) {
        if let ControlState::Running(batch) = self.state {
            device.abandon_batch(batch);
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
    deliver_parsed(mem, parse(mem, descriptors), event)
}

/// [`deliver_event`] into a chain already [`parse`]d.
pub fn deliver_parsed<M: GuestMemoryBackend>(
    mem: &M,
    parsed: Parsed,
    event: &Event,
) -> Result<u32, ChainError> {
    if let Some(error) = parsed.error {
        return Err(error);
    }
    let written = parsed.writable.scatter(mem, event.as_slice())?;
    Ok(written as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceConfig;
    use crate::protocol::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestMemoryMmap;

    const REQUEST: u64 = 0x10_0000;
    const RESPONSE: u64 = 0x20_0000;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn device() -> Device {
        Device::new(DeviceConfig::default_layout()).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn batch(cmds: &[(u16, &[u8], u32)]) -> (Vec<u8>, u32) {
        let mut out = BatchHdr {
            num_cmds: cmds.len() as u32,
            reserved: 0,
        }
        .as_slice()
        .to_vec();
        let mut resp = 8;
        for &(opcode, payload, resp_len) in cmds {
            let hdr = CmdHdr {
                opcode,
                flags: 0,
                len: payload.len() as u32,
                resp_len,
                reserved: 0,
            };
            out.extend_from_slice(hdr.as_slice());
            out.extend_from_slice(payload);
            resp += 16 + resp_len;
        }
        (out, resp)
    }

    fn read_u32(mem: &GuestMemoryMmap, addr: u64) -> u32 {
        mem.read_obj::<u32>(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn get_info_through_a_mock_chain() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let (request, need) = batch(&[(CENALLOC_CMD_GET_INFO, &[], 1024)]);
        mem.write_slice(&request, GuestAddress(REQUEST)).unwrap();
        let chain = queue
            .build_desc_chain(&[
                desc(REQUEST, request.len() as u32, 0),
                desc(RESPONSE, need, WRITE),
            ])
            .unwrap();
        let mut device = device();
        let written = answer_control(&mut device, &mem, chain);
        assert_eq!(written, need);
        assert_eq!(read_u32(&mem, RESPONSE), 0);
        assert_eq!(read_u32(&mem, RESPONSE + 4), 1);
        let info: InfoResp = mem.read_obj(GuestAddress(RESPONSE + 8 + 16)).unwrap();
        assert_eq!(info.num_allocators, 4);
        assert_eq!(info.version, CENALLOC_PROTOCOL_VERSION);
    }

    #[test]
    fn request_and_response_split_over_descriptors() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let create = CreateReq {
            size: 4096,
            flags: 0,
            initial_mask: 0,
        };
        let (request, need) = batch(&[
            (CENALLOC_CMD_CREATE, create.as_slice(), 16),
            (CENALLOC_CMD_CREATE, create.as_slice(), 16),
        ]);
        // Readable: 3 pieces at scattered addresses; writable: 2 pieces.
        let cuts = [0, 5, 29, request.len()];
        let mut descs = Vec::new();
        for (i, w) in cuts.windows(2).enumerate() {
            let addr = REQUEST + 0x1000 * i as u64;
            mem.write_slice(&request[w[0]..w[1]], GuestAddress(addr))
                .unwrap();
            descs.push(desc(addr, (w[1] - w[0]) as u32, 0));
        }
        descs.push(desc(RESPONSE, 12, WRITE));
        descs.push(desc(RESPONSE + 0x1000, need - 12, WRITE));
        let chain = queue.build_desc_chain(&descs).unwrap();
        let mut device = device();
        assert_eq!(answer_control(&mut device, &mem, chain), need);
        assert_eq!(read_u32(&mem, RESPONSE + 4), 2, "num_done");
        // Second CREATE's buffer id sits in the second writable piece.
        let second_id_at = 8 + 16 + 16 + 16;
        let id = read_u32(&mem, RESPONSE + 0x1000 + second_id_at - 12);
        assert_eq!(id, 2);
        assert_eq!(device.pool().num_buffers(), 2);
    }

    #[test]
    fn readable_after_writable_is_refused_with_einval() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let (request, need) = batch(&[(CENALLOC_CMD_GET_INFO, &[], 1024)]);
        mem.write_slice(&request, GuestAddress(REQUEST)).unwrap();
        let chain = queue
            .build_desc_chain(&[
                desc(RESPONSE, need, WRITE),
                desc(REQUEST, request.len() as u32, 0),
            ])
            .unwrap();
        let mut device = device();
        assert_eq!(answer_control(&mut device, &mem, chain), 8);
        assert_eq!(read_u32(&mem, RESPONSE) as i32, -libc::EINVAL);
        assert_eq!(device.counters.malformed_chains, 1);
    }

    #[test]
    fn unusable_writable_parts_get_nothing_written() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let (request, _) = batch(&[(CENALLOC_CMD_GET_INFO, &[], 1024)]);
        mem.write_slice(&request, GuestAddress(REQUEST)).unwrap();
        let mut device = device();
        for writable in [desc(RESPONSE, 4, WRITE), desc(0x200_0000, 4096, WRITE)] {
            let chain = queue
                .build_desc_chain(&[desc(REQUEST, request.len() as u32, 0), writable])
                .unwrap();
            assert_eq!(answer_control(&mut device, &mem, chain), 0);
        }
    }

    #[test]
    fn readable_outside_memory_is_refused() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let chain = queue
            .build_desc_chain(&[desc(0xff_fff0, 64, 0), desc(RESPONSE, 64, WRITE)])
            .unwrap();
        let mut device = device();
        assert_eq!(answer_control(&mut device, &mem, chain), 8);
        assert_eq!(read_u32(&mem, RESPONSE) as i32, -libc::EINVAL);
    }

    #[test]
    fn many_chains_from_one_queue_are_all_answered() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, 16);
        let (request, need) = batch(&[(CENALLOC_CMD_GET_INFO, &[], 1024)]);
        mem.write_slice(&request, GuestAddress(REQUEST)).unwrap();
        let mut descs = Vec::new();
        for i in 0..4u64 {
            descs.push(RawDescriptor::from(Descriptor::new(
                REQUEST,
                request.len() as u32,
                virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
                (2 * i + 1) as u16,
            )));
            descs.push(desc(RESPONSE + 0x1000 * i, need, WRITE));
        }
        mock.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let chains: Vec<_> = queue.iter(&mem).unwrap().collect();
        assert_eq!(chains.len(), 4);
        let mut device = device();
        for (i, chain) in chains.into_iter().enumerate() {
            assert_eq!(answer_control(&mut device, &mem, chain), need);
            assert_eq!(read_u32(&mem, RESPONSE + 0x1000 * i as u64 + 4), 1);
        }
    }

    #[test]
    fn events_need_a_writable_part_of_at_least_16_bytes() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let event = Event {
            event_type: CENALLOC_EVENT_POOL_LOW,
            buffer_id: 0,
            data: 3,
        };
        let chain = queue
            .build_desc_chain(&[desc(RESPONSE, 16, WRITE)])
            .unwrap();
        assert_eq!(deliver_event(&mem, chain, &event), Ok(16));
        let got: Event = mem.read_obj(GuestAddress(RESPONSE)).unwrap();
        assert_eq!(got, event);
        let chain = queue.build_desc_chain(&[desc(RESPONSE, 8, WRITE)]).unwrap();
        assert_eq!(
            deliver_event(&mem, chain, &event),
            Err(ChainError::InsufficientWritable { need: 16, got: 8 })
        );
    }
}
