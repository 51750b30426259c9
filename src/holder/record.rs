//! The session record of one front-end connection: the vhost-user
//! messages that set up the back-end's state, kept (with their fds) so
//! that a new serving process can be brought to the same session state by
//! replaying them in order.
//!
//! Compaction: each message has a key (what state it sets: the features,
//! the memory table, one ring's kick fd...), and a message replaces the
//! earlier one of its key (whose fds are closed) and goes to the end.
//! Replaying the record then sends the last message of every key in the
//! order the front-end sent them, which reaches the state the front-end
//! reached, because the state vhost-user-backend 0.24 keeps is a function
//! of the last message of each key, with two exceptions.
//!
//! Memory messages (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) go before
//! the first ring message instead of the end: a ring's SET_VRING_ADDR is
//! translated through the memory table the back-end has when it handles
//! it (none: refused, and the connection ends), so the table must be
//! replayed before it. QEMU sends the table again while the rings run (a
//! memory hot-plug; cenallocd does not offer CONFIGURE_MEM_SLOTS), and
//! keeps the memory a running ring lives in where it is, so the last
//! table translates the rings' addresses as the first one did. The
//! memory messages keep their order among themselves.
//!
//! Where a message clears state, the record mirrors it by dropping
//! entries:
//! - GET_VRING_BASE (answered) stops its ring and forgets its kick and
//!   call fds: their entries go, so the replayed ring stays stopped until
//!   the front-end starts it again;
//! - SET_MEM_TABLE replaces every ADD_MEM_REG and REM_MEM_REG before it;
//!   a REM_MEM_REG takes out the ADD_MEM_REG of the same region;
//! - RESET_OWNER forgets the owner and both feature sets; RESET_DEVICE
//!   the virtio features and every ring's enable (a fresh back-end is in
//!   the state these leave, so they are not kept themselves).
//!
//! A SET_VRING_ENABLE is kept only while the kept SET_FEATURES acks
//! VHOST_USER_F_PROTOCOL_FEATURES. Without it the back-end refuses the
//! message and nothing changes, but a fresh back-end refuses it more
//! harshly: vhost 0.18's handler keeps the virtio features it last saw
//! across a RESET_DEVICE and checks them first, while vhost-user-backend
//! forgets them there. So live, a SET_VRING_ENABLE between a RESET_DEVICE
//! and the next SET_FEATURES (QEMU sends them when a device stops) is
//! refused quietly; replayed into a new serving process, whose handler has
//! no features at all, it ended the session (seen: the serving process
//! killed while a guest's driver reset its device).
//!
//! Not kept: queries (GET_*, except GET_FEATURES: vhost's handler decides
//! REPLY_ACK from what it last reported), replies, one-shot messages
//! (SEND_RARP, IOTLB_MSG, migration's SET_DEVICE_STATE_FD and POSTCOPY_*),
//! and messages too short to carry what their key is made of (the
//! back-end refuses those). Any other request is kept by its code, the
//! last one of each.
//!
//! Bounds: [`MAX_ENTRIES`] messages and [`MAX_RECORD_FDS`] fds. A
//! front-end that goes past them (no honest one does: a few dozen
//! messages make a session) leaves a record that can no longer restore
//! its session; the relay then ends the session at the next restart
//! instead of replaying a wrong state.
//!
//! Device state (buffers, pools, ring positions) is not vhost-user state
//! and is not here: the device-state journal of the design is.

use super::frame::{Frame, FLAG_REPLY};
use super::request::*;

/// VHOST_USER_F_PROTOCOL_FEATURES, in SET_FEATURES.
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

/// Most messages one record keeps.
pub const MAX_ENTRIES: usize = 640;
/// Most fds one record keeps.
pub const MAX_RECORD_FDS: usize = 640;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the session record is over its bounds ({0} messages, {1} fds): it can no longer restore the session")]
    Full(usize, usize),
}

/// What state a kept message sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    GetFeatures,
    Owner,
    Features,
    ProtocolFeatures,
    MemTable,
    AddMem { gpa: u64, size: u64 },
    RemMem { gpa: u64, size: u64 },
    LogBase,
    LogFd,
    BackendReq,
    Inflight,
    Config { offset: u32, size: u32 },
    Status,
    Vring { index: u32, request: u32 },
    Other(u32),
}

/// What a message does to the record.
enum Effect {
    Keep(Key),
    /// Clears what the predicate matches; the message is not kept.
    Clear(Box<dyn Fn(&Key) -> bool>),
    Ignore,
}

/// The ring a vring message is about: a u32 index first
/// (VhostUserVringState, VhostUserVringAddr), or the low byte of a u64
/// (KICK, CALL, ERR).
fn vring_index(frame: &Frame) -> Option<u32> {
    match frame.request {
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            payload_u64(&frame.payload, 0).map(|v| (v & 0xff) as u32)
        }
        _ => payload_u32(&frame.payload, 0),
    }
}

/// guest address and size of ADD_MEM_REG / REM_MEM_REG (after 8 bytes of
/// padding).
fn region(frame: &Frame) -> Option<(u64, u64)> {
    Some((
        payload_u64(&frame.payload, 8)?,
        payload_u64(&frame.payload, 16)?,
    ))
}

fn effect(frame: &Frame) -> Effect {
    let keep = |key: Option<Key>| key.map_or(Effect::Ignore, Effect::Keep);
    match frame.request {
        GET_FEATURES => Effect::Keep(Key::GetFeatures),
        SET_OWNER => Effect::Keep(Key::Owner),
        SET_FEATURES => Effect::Keep(Key::Features),
        SET_PROTOCOL_FEATURES => Effect::Keep(Key::ProtocolFeatures),
        SET_MEM_TABLE => Effect::Keep(Key::MemTable),
        ADD_MEM_REG => keep(region(frame).map(|(gpa, size)| Key::AddMem { gpa, size })),
        REM_MEM_REG => keep(region(frame).map(|(gpa, size)| Key::RemMem { gpa, size })),
        SET_LOG_BASE => Effect::Keep(Key::LogBase),
        SET_LOG_FD => Effect::Keep(Key::LogFd),
        SET_BACKEND_REQ_FD => Effect::Keep(Key::BackendReq),
        SET_INFLIGHT_FD => Effect::Keep(Key::Inflight),
        SET_STATUS => Effect::Keep(Key::Status),
        SET_CONFIG => keep((|| {
            Some(Key::Config {
                offset: payload_u32(&frame.payload, 0)?,
                size: payload_u32(&frame.payload, 4)?,
            })
        })()),
        SET_VRING_NUM | SET_VRING_ADDR | SET_VRING_BASE | SET_VRING_KICK | SET_VRING_CALL
        | SET_VRING_ERR | SET_VRING_ENABLE => keep(vring_index(frame).map(|index| Key::Vring {
            index,
            request: frame.request,
        })),
        GET_VRING_BASE => match vring_index(frame) {
            Some(stopped) => Effect::Clear(Box::new(move |key| {
                matches!(key, Key::Vring { index, request }
                    if *index == stopped && matches!(*request, SET_VRING_KICK | SET_VRING_CALL))
            })),
            None => Effect::Ignore,
        },
        RESET_OWNER => Effect::Clear(Box::new(|key| {
            matches!(key, Key::Owner | Key::Features | Key::ProtocolFeatures)
        })),
        RESET_DEVICE => Effect::Clear(Box::new(|key| {
            matches!(
                key,
                Key::Features
                    | Key::Vring {
                        request: SET_VRING_ENABLE,
                        ..
                    }
            )
        })),
        GET_PROTOCOL_FEATURES
        | GET_QUEUE_NUM
        | GET_CONFIG
        | GET_INFLIGHT_FD
        | GET_MAX_MEM_SLOTS
        | GET_STATUS
        | GET_SHARED_OBJECT
        | CHECK_DEVICE_STATE
        | GET_SHMEM_CONFIG
        | SEND_RARP
        | IOTLB_MSG
        | SET_DEVICE_STATE_FD
        | POSTCOPY_ADVISE
        | POSTCOPY_LISTEN
        | POSTCOPY_END => Effect::Ignore,
        other => Effect::Keep(Key::Other(other)),
    }
}

struct Entry {
    key: Key,
    frame: Frame,
}

/// The session record of one front-end connection.
#[derive(Default)]
pub struct Record {
    entries: Vec<Entry>,
    fds: usize,
    overflowed: bool,
}

impl Record {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes note of a message the back-end took: one without a reply once
    /// it is sent, one with a reply once its (successful) reply passed.
    /// The record owns the frame's fds from now on (the back-end has its
    /// own copies).
    pub fn keep(&mut self, frame: Frame) -> Result<(), RecordError> {
        if frame.flags & FLAG_REPLY != 0 {
            return Ok(());
        }
        if frame.request == SET_VRING_ENABLE && !self.protocol_features_acked() {
            return Ok(());
        }
        match effect(&frame) {
            Effect::Ignore => {}
            Effect::Clear(matching) => self.remove(|key| matching(key)),
            Effect::Keep(key) => {
                match key {
                    Key::MemTable => self.remove(|k| {
                        matches!(k, Key::MemTable | Key::AddMem { .. } | Key::RemMem { .. })
                    }),
                    Key::RemMem { gpa, size } => {
                        let added = Key::AddMem { gpa, size };
                        if self.entries.iter().any(|e| e.key == added) {
                            // The region goes; so does the record of it.
                            self.remove(|k| *k == added);
                            return Ok(());
                        }
                        self.remove(|k| *k == key);
                    }
                    Key::AddMem { gpa, size } => {
                        self.remove(|k| *k == key || *k == Key::RemMem { gpa, size })
                    }
                    _ => self.remove(|k| *k == key),
                }
                if self.overflowed {
                    return Err(RecordError::Full(self.entries.len(), self.fds));
                }
                if self.entries.len() + 1 > MAX_ENTRIES
                    || self.fds + frame.fds.len() > MAX_RECORD_FDS
                {
                    self.overflowed = true;
                    return Err(RecordError::Full(
                        self.entries.len() + 1,
                        self.fds + frame.fds.len(),
                    ));
                }
                self.fds += frame.fds.len();
                let at = match key {
                    Key::MemTable | Key::AddMem { .. } | Key::RemMem { .. } => self
                        .entries
                        .iter()
                        .position(|e| matches!(e.key, Key::Vring { .. }))
                        .unwrap_or(self.entries.len()),
                    _ => self.entries.len(),
                };
                self.entries.insert(at, Entry { key, frame });
            }
        }
        Ok(())
    }

    /// Whether the kept SET_FEATURES acks VHOST_USER_F_PROTOCOL_FEATURES.
    fn protocol_features_acked(&self) -> bool {
        self.entries.iter().any(|entry| {
            entry.key == Key::Features
                && payload_u64(&entry.frame.payload, 0)
                    .is_some_and(|features| features & PROTOCOL_FEATURES_BIT != 0)
        })
    }

    /// Drops (and closes the fds of) every entry whose key matches.
    fn remove(&mut self, matching: impl Fn(&Key) -> bool) {
        let fds = &mut self.fds;
        self.entries.retain(|entry| {
            let gone = matching(&entry.key);
            if gone {
                *fds -= entry.frame.fds.len();
            }
            !gone
        });
    }

    /// Whether replaying the record restores the session (it never went
    /// past its bounds).
    pub fn restorable(&self) -> bool {
        !self.overflowed
    }

    /// Marks the record as past its bounds (a restored record that was).
    pub fn mark_overflowed(&mut self) {
        self.overflowed = true;
    }

    /// The messages to replay, in order.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.entries.iter().map(|entry| &entry.frame)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Fds the record holds.
    pub fn fd_count(&self) -> usize {
        self.fds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A memfd: an inode of its own (eventfds share one).
    fn memfd() -> OwnedFd {
        // SAFETY: the name is a valid C string; a valid result is a new fd
        // that nothing else owns.
        let fd = unsafe { libc::memfd_create(c"record-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned here only.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn msg(request: u32, payload: Vec<u8>, fds: usize) -> Frame {
        Frame {
            request,
            flags: 1,
            payload,
            fds: (0..fds).map(|_| memfd()).collect(),
        }
    }

    fn u64s(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn state(index: u32, num: u32) -> Vec<u8> {
        [index.to_le_bytes(), num.to_le_bytes()].concat()
    }

    /// A ring started as QEMU starts it.
    fn start_ring(record: &mut Record, index: u32, base: u32) {
        record
            .keep(msg(SET_VRING_NUM, state(index, 256), 0))
            .unwrap();
        let mut addr = state(index, 0);
        addr.extend(u64s(&[0x1000, 0x2000, 0x3000, 0]));
        record.keep(msg(SET_VRING_ADDR, addr, 0)).unwrap();
        record
            .keep(msg(SET_VRING_BASE, state(index, base), 0))
            .unwrap();
        record
            .keep(msg(SET_VRING_CALL, u64s(&[index as u64]), 1))
            .unwrap();
        record
            .keep(msg(SET_VRING_KICK, u64s(&[index as u64]), 1))
            .unwrap();
        record
            .keep(msg(SET_VRING_ENABLE, state(index, 1), 0))
            .unwrap();
    }

    fn session() -> Record {
        let mut record = Record::new();
        record.keep(msg(SET_OWNER, Vec::new(), 0)).unwrap();
        record.keep(msg(GET_FEATURES, Vec::new(), 0)).unwrap();
        record
            .keep(msg(SET_FEATURES, u64s(&[1 << 32 | 1 << 30]), 0))
            .unwrap();
        record
            .keep(msg(SET_PROTOCOL_FEATURES, u64s(&[1 << 9]), 0))
            .unwrap();
        record.keep(msg(GET_CONFIG, vec![0; 12], 0)).unwrap();
        record.keep(msg(SET_MEM_TABLE, vec![0; 72], 2)).unwrap();
        for index in 0..2 {
            start_ring(&mut record, index, 0);
        }
        record
    }

    /// (request, vring index if any) of the replay, in order.
    fn replay(record: &Record) -> Vec<(u32, Option<u32>)> {
        record
            .frames()
            .map(|frame| {
                let ring = match frame.request {
                    SET_VRING_NUM..=SET_VRING_ERR | SET_VRING_ENABLE => vring_index(frame),
                    _ => None,
                };
                (frame.request, ring)
            })
            .collect()
    }

    #[test]
    fn queries_are_not_kept_and_replay_keeps_the_order() {
        let record = session();
        let requests: Vec<u32> = record.frames().map(|f| f.request).collect();
        assert_eq!(
            &requests[..5],
            &[
                SET_OWNER,
                GET_FEATURES,
                SET_FEATURES,
                SET_PROTOCOL_FEATURES,
                SET_MEM_TABLE
            ]
        );
        assert_eq!(record.len(), 5 + 12);
        assert_eq!(record.fd_count(), 2 + 4);
    }

    #[test]
    fn pause_resume_cycles_do_not_grow_it() {
        let mut record = session();
        let (len, fds) = (record.len(), record.fd_count());
        for cycle in 0..100 {
            for index in 0..2 {
                record
                    .keep(msg(GET_VRING_BASE, state(index, 0), 0))
                    .unwrap();
            }
            // Stopped: neither ring has a kick or call fd left.
            assert_eq!(record.fd_count(), 2);
            record.keep(msg(GET_FEATURES, Vec::new(), 0)).unwrap();
            record.keep(msg(SET_FEATURES, u64s(&[1 << 32]), 0)).unwrap();
            for index in 0..2 {
                start_ring(&mut record, index, cycle);
            }
        }
        assert_eq!((record.len(), record.fd_count()), (len, fds));
        // The last base of each ring is the one replayed.
        let bases: Vec<u32> = record
            .frames()
            .filter(|f| f.request == SET_VRING_BASE)
            .map(|f| payload_u32(&f.payload, 4).unwrap())
            .collect();
        assert_eq!(bases, vec![99, 99]);
    }

    #[test]
    fn a_stopped_ring_stays_stopped() {
        let mut record = session();
        record.keep(msg(GET_VRING_BASE, state(1, 0), 0)).unwrap();
        let replayed = replay(&record);
        assert!(replayed.contains(&(SET_VRING_KICK, Some(0))));
        assert!(!replayed.contains(&(SET_VRING_KICK, Some(1))));
        assert!(!replayed.contains(&(SET_VRING_CALL, Some(1))));
        // Its other settings stay (vhost-user-backend keeps them).
        assert!(replayed.contains(&(SET_VRING_ADDR, Some(1))));
        // Started again: the new kick comes after everything before it.
        record.keep(msg(SET_VRING_KICK, u64s(&[1]), 1)).unwrap();
        assert_eq!(replay(&record).last(), Some(&(SET_VRING_KICK, Some(1))));
    }

    #[test]
    fn a_memory_table_sent_again_is_replayed_before_the_rings() {
        let mut record = session();
        let (len, fds) = (record.len(), record.fd_count());
        // A hot-plug while the rings run.
        let table = msg(SET_MEM_TABLE, vec![1; 104], 3);
        let files = inodes(&table);
        record.keep(table).unwrap();
        assert_eq!((record.len(), record.fd_count()), (len, fds + 1));
        let replayed = replay(&record);
        let first_ring = replayed.iter().position(|(_, ring)| ring.is_some());
        let tables: Vec<usize> = (0..replayed.len())
            .filter(|&i| replayed[i].0 == SET_MEM_TABLE)
            .collect();
        assert_eq!(tables.len(), 1);
        assert!(Some(tables[0]) < first_ring, "{replayed:?}");
        // Where the first table was: after the features.
        assert_eq!(tables[0], 4, "{replayed:?}");
        let kept = record
            .frames()
            .find(|f| f.request == SET_MEM_TABLE)
            .unwrap();
        assert_eq!(kept.payload, vec![1; 104]);
        assert_eq!(inodes(kept), files);
        // Regions added and removed afterwards keep their order, before
        // the rings too.
        let region = u64s(&[0, 1 << 32, 1 << 20, 0, 0]);
        record.keep(msg(ADD_MEM_REG, region.clone(), 1)).unwrap();
        let other = u64s(&[0, 2 << 32, 1 << 20, 0, 0]);
        record.keep(msg(REM_MEM_REG, other, 1)).unwrap();
        let replayed = replay(&record);
        assert_eq!(
            replayed[4..7].iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            vec![SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG],
            "{replayed:?}"
        );
        assert!(replayed[7].1.is_some(), "{replayed:?}");
        // Ring messages still go to the end.
        record.keep(msg(SET_VRING_BASE, state(0, 5), 0)).unwrap();
        assert_eq!(replay(&record).last(), Some(&(SET_VRING_BASE, Some(0))));
    }

    /// Open fds of this process that are one of `files` (by inode).
    fn open_links(files: &[(u64, u64)]) -> usize {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::metadata(entry.ok()?.path()).ok())
            .filter(|meta| files.contains(&(meta.dev(), meta.ino())))
            .count()
    }

    fn inodes(frame: &Frame) -> Vec<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        frame
            .fds
            .iter()
            .map(|fd| {
                let file = std::fs::File::from(fd.try_clone().unwrap());
                let meta = file.metadata().unwrap();
                (meta.dev(), meta.ino())
            })
            .collect()
    }

    #[test]
    fn a_superseded_message_closes_its_fds() {
        let mut record = Record::new();
        let first = msg(SET_MEM_TABLE, vec![0; 72], 2);
        let files = inodes(&first);
        record.keep(first).unwrap();
        assert_eq!(open_links(&files), 2);
        let mut region = u64s(&[0, 0x1000, 0x2000, 0, 0]);
        record.keep(msg(ADD_MEM_REG, region.clone(), 1)).unwrap();
        record.keep(msg(SET_MEM_TABLE, vec![0; 72], 2)).unwrap();
        assert_eq!(open_links(&files), 0, "the old table's fds are open");
        assert_eq!(record.fd_count(), 2);
        assert_eq!(record.len(), 1);
        // ADD then REM of the same region leaves nothing.
        record.keep(msg(ADD_MEM_REG, region.clone(), 1)).unwrap();
        region[24] = 7; // another user address: the same region
        record.keep(msg(REM_MEM_REG, region, 1)).unwrap();
        assert_eq!((record.len(), record.fd_count()), (1, 2));
    }

    #[test]
    fn resets_clear_what_they_reset() {
        let mut record = session();
        record.keep(msg(RESET_DEVICE, Vec::new(), 0)).unwrap();
        let replayed = replay(&record);
        assert!(!replayed.iter().any(|(r, _)| *r == SET_FEATURES));
        assert!(!replayed.iter().any(|(r, _)| *r == SET_VRING_ENABLE));
        assert!(replayed.iter().any(|(r, _)| *r == SET_PROTOCOL_FEATURES));
        record.keep(msg(RESET_OWNER, Vec::new(), 0)).unwrap();
        let replayed = replay(&record);
        assert!(!replayed
            .iter()
            .any(|(r, _)| matches!(*r, SET_OWNER | SET_PROTOCOL_FEATURES)));
        assert!(replayed.iter().any(|(r, _)| *r == SET_MEM_TABLE));
    }

    #[test]
    fn a_ring_enable_the_back_end_refused_after_a_reset_is_not_replayed() {
        let mut record = session();
        record.keep(msg(RESET_DEVICE, Vec::new(), 0)).unwrap();
        // QEMU stopping the device: rings disabled after the reset, which
        // a back-end without acked features refuses (quietly, live).
        for index in 0..2 {
            record
                .keep(msg(SET_VRING_ENABLE, state(index, 0), 0))
                .unwrap();
        }
        assert!(!replay(&record).iter().any(|(r, _)| *r == SET_VRING_ENABLE));
        // Without VHOST_USER_F_PROTOCOL_FEATURES acked, still refused.
        record.keep(msg(SET_FEATURES, u64s(&[1 << 32]), 0)).unwrap();
        start_ring(&mut record, 0, 0);
        assert!(!replay(&record).iter().any(|(r, _)| *r == SET_VRING_ENABLE));
        // The device started again: kept.
        record
            .keep(msg(SET_FEATURES, u64s(&[1 << 32 | 1 << 30]), 0))
            .unwrap();
        start_ring(&mut record, 0, 0);
        assert_eq!(
            replay(&record)
                .iter()
                .filter(|(r, _)| *r == SET_VRING_ENABLE)
                .count(),
            1
        );
    }

    #[test]
    fn a_hostile_front_end_cannot_grow_it_without_bound() {
        let mut record = Record::new();
        let mut full = None;
        for gpa in 0..(MAX_ENTRIES as u64 + 10) {
            let region = u64s(&[0, gpa << 20, 1 << 20, 0, 0]);
            if let Err(e) = record.keep(msg(ADD_MEM_REG, region, 1)) {
                full = Some(e);
                break;
            }
        }
        assert!(matches!(full, Some(RecordError::Full(..))), "{full:?}");
        assert!(!record.restorable());
        assert!(record.len() <= MAX_ENTRIES && record.fd_count() <= MAX_RECORD_FDS);
        // Short messages are not kept; replies neither.
        let mut record = Record::new();
        record.keep(msg(SET_VRING_KICK, vec![1], 1)).unwrap();
        let mut reply = msg(SET_FEATURES, u64s(&[1]), 0);
        reply.flags |= FLAG_REPLY;
        record.keep(reply).unwrap();
        assert!(record.is_empty());
    }
}
