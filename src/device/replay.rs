//! Rebuilding a device from its journal ([`crate::journal`]): the batches
//! run again through the same code, in dry mode, where guest-memory work
//! is checked when it starts (its segments in guest RAM, as live) but not
//! done: the guest memory already holds what the dead process wrote, and
//! zeroing or filling it again would destroy what the guest wrote since.
//! Each answered batch must end as the journal says (status and commands
//! done), or the replay stops: a device that diverged from the one the
//! guest talked to is not handed out.

use vm_memory::GuestMemoryBackend;

use super::{Device, DeviceConfig, Progress};
use crate::journal::{BatchRecord, End, Record};
use crate::model::{Origin, Pool};
use crate::protocol::Event;

#[derive(thiserror::Error, Debug)]
pub enum ReplayError {
    #[error("the device cannot be built at the journal's origin: {0}")]
    Origin(#[from] super::Error),
    #[error("record {index}: the batch ended {got:?}, the journal says {expected:?}")]
    Diverged {
        index: usize,
        expected: End,
        got: End,
    },
    #[error("record {index}: an event was taken off an empty queue")]
    NoEvent { index: usize },
    #[error("record {index}: unusable device image: {why}")]
    Image { index: usize, why: String },
}

/// The device's state as data: the pool and the pending events (a journal
/// compaction, [`Device::image`]).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DeviceImage {
    pub pool: crate::model::PoolImage,
    /// type, buffer, data.
    pub events: Vec<(u32, u32, u64)>,
}

impl Device {
    /// The device's state as data.
    pub fn image(&self) -> DeviceImage {
        DeviceImage {
            pool: self.pool.image(),
            events: self
                .events
                .iter()
                .map(|e| (e.event_type, e.buffer_id, e.data))
                .collect(),
        }
    }
}

impl Device {
    /// The device a journal describes: built at `origin`, then every
    /// record applied in order, checked against `mem` (the VM's memory
    /// table now) without writing it.
    pub fn replay<M: GuestMemoryBackend>(
        config: DeviceConfig,
        origin: Origin,
        records: &[Record],
        mem: &M,
    ) -> Result<Device, ReplayError> {
        let mut device = Device::new(config)?;
        device.pool =
            Pool::from_origin(device.config.pool.clone(), origin).map_err(super::Error::from)?;
        device.dry = true;
        for (index, record) in records.iter().enumerate() {
            match record {
                Record::Batch(batch) => device.replay_batch(index, batch, mem)?,
                // Its effects are in the origin.
                Record::Answer { .. } => {}
                Record::Image { state, .. } => {
                    let image: DeviceImage =
                        serde_json::from_slice(state).map_err(|e| ReplayError::Image {
                            index,
                            why: e.to_string(),
                        })?;
                    device.pool = Pool::from_image(device.config.pool.clone(), &image.pool)
                        .map_err(|e| ReplayError::Image {
                            index,
                            why: e.to_string(),
                        })?;
                    device.events = image
                        .events
                        .iter()
                        .map(|&(event_type, buffer_id, data)| Event {
                            event_type,
                            buffer_id,
                            data,
                        })
                        .collect();
                }
                Record::EventPopped => {
                    if device.events.pop_front().is_none() {
                        return Err(ReplayError::NoEvent { index });
                    }
                }
            }
        }
        device.dry = false;
        device.hold_work_at = None;
        Ok(device)
    }

    fn replay_batch<M: GuestMemoryBackend>(
        &mut self,
        index: usize,
        record: &BatchRecord,
        mem: &M,
    ) -> Result<(), ReplayError> {
        let diverged = |got| ReplayError::Diverged {
            index,
            expected: record.end,
            got,
        };
        let ended = |answer: &[u8]| {
            let word = |at: usize| {
                answer
                    .get(at..at + 4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            };
            End::Answered {
                status: word(0) as i32,
                num_done: word(4),
            }
        };
        let mut batch = match self.begin_batch(record.request.clone(), record.writable_len as usize)
        {
            Ok(batch) => batch,
            // Refused as a whole: it changed nothing, live or now.
            Err(answer) => {
                let got = ended(&answer);
                return if got == record.end {
                    Ok(())
                } else {
                    Err(diverged(got))
                };
            }
        };
        match record.end {
            End::Answered { .. } => loop {
                if let Progress::Done(answer) = self.run_batch(mem, &mut batch, &mut || false) {
                    let got = ended(&answer);
                    return if got == record.end {
                        Ok(())
                    } else {
                        Err(diverged(got))
                    };
                }
            },
            End::Abandoned { completed, pending } => {
                let completed = completed as usize;
                self.hold_work_at = pending.then_some(completed);
                // One command per call (dry work never yields): stop where
                // the live batch was given up.
                let reached = loop {
                    if batch.next == completed && (!pending || batch.pending.is_some()) {
                        break true;
                    }
                    if batch.next > completed {
                        break false;
                    }
                    if let Progress::Done(_) = self.run_batch(mem, &mut batch, &mut || true) {
                        break false;
                    }
                };
                self.hold_work_at = None;
                if !reached {
                    return Err(diverged(End::Abandoned {
                        completed: batch.next as u32,
                        pending: batch.pending.is_some(),
                    }));
                }
                let journal = self.journal.take();
                self.abandon_batch(batch);
                self.journal = journal;
                Ok(())
            }
        }
    }
}
