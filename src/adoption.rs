//! A serving process taking a VM over from one that died (the supervised
//! mode of issue 16, docs/design/surviving-daemon.md). The holder keeps
//! the VM's vhost-user connection and its device journal (a memfd) and
//! replays the session into the new process; what the new process adds is
//! here:
//!
//! 1. the device is rebuilt from the journal ([`Device::replay`]) once the
//!    guest memory is known (the session's memory table), before the first
//!    chain is taken;
//! 2. each ring goes on from the used index in guest memory, not from the
//!    base the replayed session set up when the VM started; the last
//!    answer the dead process committed is published if the used ring does
//!    not show it yet ([`ring::resume_at_used`]), so no chain runs twice
//!    and none is left unanswered;
//! 3. from then on the device journals to the same file.
//!
//! A journal that cannot be read or replayed is not trusted: the device
//! starts empty (as after a RESET: the guest's next commands fail with
//! -ENOENT, which its driver reports), the journal starts over, and the
//! log says why. Nothing here touches guest memory but the rings.

use std::os::fd::OwnedFd;

use log::{error, info, warn};
use vhost_user_backend::{VringRwLock, VringT};

use crate::device::{Device, DeviceConfig};
use crate::journal::{self, Journal, Record};
use crate::model::{Origin, Pool};
use crate::ring::{self, MemoryGuard};

/// How a backend keeps its device's journal.
#[derive(Debug)]
pub enum JournalSlot {
    /// A new front-end: the journal starts in this file, whatever it held.
    Fresh(OwnedFd),
    /// The serving process was replaced: the device is rebuilt from this
    /// journal before its first chain.
    Adopt(OwnedFd),
}

/// A journal read at start-up, waiting for the guest memory.
#[derive(Debug)]
pub struct Pending {
    journal: Journal,
    origin: Origin,
    records: Vec<Record>,
}

/// What an adoption found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Journal records replayed (0 when the journal was not trusted).
    pub records: usize,
    /// The journal could not be read or replayed: the device starts empty.
    pub distrusted: bool,
    /// Where the control ring goes on, and whether the last committed
    /// answer had to be published there.
    pub control_at: Option<u16>,
    pub published: bool,
    /// Where the event ring goes on.
    pub events_at: Option<u16>,
}

impl Pending {
    /// Reads the journal in `fd`. An unreadable one still gives a journal
    /// to go on with (started over), and the device starts empty.
    pub fn open(fd: OwnedFd, config: &DeviceConfig) -> Result<Pending, journal::Error> {
        let copy = fd.try_clone().map_err(journal::Error::Io)?;
        match Journal::adopt(fd, journal::DEFAULT_LIMIT) {
            Ok((journal, origin, records)) => Ok(Pending {
                journal,
                origin,
                records,
            }),
            Err(e) => {
                error!("device journal unusable ({e}): the device starts empty");
                Ok(Pending {
                    journal: Journal::create_in(
                        copy,
                        fresh_origin(config),
                        journal::DEFAULT_LIMIT,
                    )?,
                    origin: fresh_origin(config),
                    records: Vec::new(),
                })
            }
        }
    }
}

/// Where a new device's ids start.
fn fresh_origin(config: &DeviceConfig) -> Origin {
    Pool::new(config.pool.clone()).map_or(
        Origin {
            next_buffer_id: 1,
            next_attachment_id: 1,
            next_serial: 1,
        },
        |pool| pool.origin(),
    )
}

/// Rebuilds the device of `pending` against `mem` and sets the rings where
/// the dead process left them: `control` must be set up (its base set) by
/// now; `events` if it is (else the caller sets it later,
/// [`ring::resume_at_used`]). The device comes back journaling. An error
/// only if not even an empty device can be built.
pub fn adopt(
    pending: Pending,
    config: &DeviceConfig,
    mem: &MemoryGuard,
    control: &VringRwLock,
    events: Option<&VringRwLock>,
) -> Result<(Device, Adopted), crate::device::Error> {
    let Pending {
        mut journal,
        origin,
        records,
    } = pending;
    let mut adopted = Adopted::default();
    let device = match Device::replay(config.clone(), origin, &records, &**mem) {
        Ok(device) => {
            adopted.records = records.len();
            device
        }
        Err(e) => {
            error!("device journal does not replay ({e}): the device starts empty");
            adopted.distrusted = true;
            if let Err(e) = journal.restart(fresh_origin(config)) {
                error!("device journal cannot start over: {e}");
            }
            Device::new(config.clone())?
        }
    };
    let committed = if adopted.distrusted {
        None
    } else {
        journal::last_answer(&records)
    };
    match ring::resume_at_used(control, mem, committed) {
        Ok(Some((at, published))) => {
            adopted.control_at = Some(at);
            adopted.published = published;
        }
        Ok(None) => {}
        Err(e) => warn!("control ring after the restart: {e}"),
    }
    if let Some(events) = events {
        match ring::resume_at_used(events, mem, None) {
            Ok(at) => adopted.events_at = at.map(|(at, _)| at),
            Err(e) => warn!("event ring after the restart: {e}"),
        }
    }
    // The dead process may have put answers on a used ring and died before
    // it notified the driver, which would then sleep for ever: notify once
    // (a notification with nothing new is harmless to a virtio driver).
    for vring in std::iter::once(control).chain(events) {
        if let Err(e) = vring.signal_used_queue() {
            warn!("notifying the driver after the restart: {e}");
        }
    }
    info!(
        "device taken over: {} journal records replayed, control ring at {:?}{}, event ring at {:?}",
        adopted.records,
        adopted.control_at,
        if adopted.published {
            " (the last answer published now)"
        } else {
            ""
        },
        adopted.events_at
    );
    Ok((device.with_journal(journal), adopted))
}
