//! The share table (issue 17, docs/design/cross-vm-sharing.md section 4):
//! which buffers of which VM are published under which token, which VM
//! imports them, where each import sits in the importer's window, what
//! state its mapping is in, and the revocations under way. One per serving
//! process, shared by every VM's worker under its own lock; it knows no
//! vhost type, no guest memory and no clock of its own (every call that
//! depends on time is given `now`, a monotonic instant), so every rule is
//! tested here without a VM.
//!
//! The table decides; the callers do. What must happen outside (an event
//! to an importer, a map or an unmap on its backend channel, a hold to
//! drop in the exporter's model) is returned as [`Action`]s, in order.
//!
//! The revocation order for one import: the event goes to the importer
//! with a serial and a deadline ([`ShareTable::unshare`] and the others
//! that revoke); its acknowledgement ([`ShareTable::revoke_ack`]) or the
//! deadline ([`ShareTable::poll`]) sends the unmap; the proof that the
//! window is gone ([`ShareTable::unmapped`]) or the unmap deadline ends
//! it. Only then is the share *settled* ([`ShareTable::settled`]): the
//! exporter's command that started it may be answered. A window whose
//! unmap was never proven is *forced*: its range and memory slot stay
//! reserved, and the exporter's hold stays, until the importer leaves
//! ([`ShareTable::leave`]).

mod desk;
mod window;

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::time::Duration;

use serde::Serialize;
use siphasher::sip::SipHasher24;
use thiserror::Error;

use crate::config::{ShareAccess, ShareConfig, VmShare};
use crate::protocol::{CENALLOC_REVOKE_FINAL, CENALLOC_REVOKE_MOVING, CENALLOC_REVOKE_SERIAL_MASK};
pub use desk::{Desk, ShareLink};
pub use window::Window;

/// Why a share or an import was refused. Each maps to the protocol's
/// status ([`ShareError::errno`]).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShareError {
    #[error("VM {0:?} is in no share group")]
    NotMember(String),
    #[error("VM {vm:?} exports in no group {group:?}")]
    NotExporterIn { vm: String, group: String },
    #[error("no share {0:#x} this VM may import")]
    UnknownToken(u64),
    #[error("buffer {0} is already shared")]
    AlreadyShared(u32),
    #[error("VM {0:?} imports that share already")]
    AlreadyImported(String),
    #[error("the group is read-only")]
    ReadOnly,
    #[error("{what} of VM {vm:?} reached ({max})")]
    Limit {
        vm: String,
        what: &'static str,
        max: u64,
    },
    #[error("no hole of {0:#x} bytes in the window")]
    WindowFull(u64),
    #[error("VM {0:?} has no window")]
    NoWindow(String),
    #[error("no import {1} of VM {0:?}")]
    UnknownImport(String, u32),
    #[error("import {0} still mapped in the importer")]
    ImportInUse(u32),
    #[error("serial {serial} is not the current revocation of import {import}")]
    StaleRevocation { import: u32, serial: u64 },
    #[error("a zero-sized share")]
    ZeroSize,
}

impl ShareError {
    /// The positive errno the protocol answers.
    pub fn errno(&self) -> i32 {
        use ShareError::*;
        match self {
            NotExporterIn { .. } | UnknownToken(_) | UnknownImport(..) | StaleRevocation { .. } => {
                libc::ENOENT
            }
            NotMember(_) | NoWindow(_) => libc::EOPNOTSUPP,
            AlreadyShared(_) | AlreadyImported(_) => libc::EEXIST,
            ReadOnly => libc::EPERM,
            Limit { .. } | WindowFull(_) => libc::ENOSPC,
            ImportInUse(_) => libc::EBUSY,
            ZeroSize => libc::EINVAL,
        }
    }
}

/// Why an import is revoked (`SHARE_REVOKE`'s reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// For good: unshared, freed, the exporter reset or left. Later MAPs
    /// in the importer answer -ENOLINK.
    Final,
    /// The backing moves or the exporter stopped: mapped again later.
    Moving,
}

impl Reason {
    /// The event's `data`: the reason above the serial bits.
    pub fn event_data(self, serial: u64) -> u64 {
        let reason = match self {
            Reason::Final => CENALLOC_REVOKE_FINAL,
            Reason::Moving => CENALLOC_REVOKE_MOVING,
        };
        (reason << crate::protocol::CENALLOC_REVOKE_REASON_SHIFT)
            | (serial & CENALLOC_REVOKE_SERIAL_MASK)
    }
}

/// Where an import's window stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mapping {
    /// Range and slot reserved; nothing mapped (before the exporter's
    /// first map, or after a `Moving` revocation).
    Reserved,
    /// The map request is on the importer's channel.
    Mapping,
    /// The window holds the exporter's pages.
    Mapped,
    /// The unmap request is sent; waiting for its proof.
    Unmapping,
    /// Revoked for good and proven gone: range and slot are free again.
    Revoked,
}

/// A revocation under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Revocation {
    pub serial: u64,
    pub reason: Reason,
    /// The importer's acknowledgement is waited for until then.
    pub ack_deadline: Duration,
    /// Set when the unmap was sent: its proof is waited for until then.
    pub unmap_deadline: Option<Duration>,
    pub acked: bool,
}

/// One published buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Share {
    pub token: u64,
    pub exporter: String,
    /// The exporter's buffer id and serial (a later buffer with the same
    /// id is another one).
    pub buffer: u32,
    pub buffer_serial: u64,
    pub size: u64,
    /// Bytes an importer's window takes: `size` in whole exporter pages.
    pub window_len: u64,
    pub page_size: u64,
    pub group: String,
    pub writable: bool,
    /// Unshared: no new import; gone once every import is settled.
    pub ending: bool,
}

/// One import of a share by one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Import {
    pub token: u64,
    pub importer: String,
    /// The importer's id of the imported buffer.
    pub id: u32,
    pub offset: u64,
    pub len: u64,
    pub writable: bool,
    pub mapping: Mapping,
    pub revocation: Option<Revocation>,
    /// The unmap's proof did not come in time: the revocation no longer
    /// holds the exporter's command back, but range, slot and the
    /// exporter's hold stay until the proof or the importer's departure.
    pub forced: bool,
    /// The importer released it: forgotten once settled.
    pub released: bool,
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Queue `SHARE_REVOKE` for import `import` of VM `vm`.
    Revoke { vm: String, import: u32, data: u64 },
    /// Queue `SHARE_READY` for import `import` of VM `vm`.
    Ready { vm: String, import: u32 },
    /// Send `BACKEND_SHMEM_UNMAP` of `[offset, offset + len)` on VM `vm`'s
    /// channel.
    Unmap {
        vm: String,
        import: u32,
        offset: u64,
        len: u64,
    },
    /// The window that reached the exporter's backing is gone: drop one
    /// hold of share `token` in the exporter's model.
    Unhold { exporter: String, token: u64 },
    /// From an importer's IMPORT, for the exporter's worker: if share
    /// `token`'s backing is in place, map the windows that wait for it.
    Place { exporter: String, token: u64 },
    /// From the exporter's worker (its hold taken): send
    /// `BACKEND_SHMEM_MAP` on VM `vm`'s channel, the exporter's extent at
    /// guest-physical `addr` (its memory table gives file and offset) to
    /// `[offset, offset + len)` of `vm`'s window.
    Map {
        vm: String,
        import: u32,
        exporter: String,
        addr: u64,
        offset: u64,
        len: u64,
        writable: bool,
    },
}

/// The answer to a SHARE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shared {
    pub token: u64,
    pub writable: bool,
}

/// The answer to an IMPORT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    pub exporter: String,
    pub buffer: u32,
    pub size: u64,
    pub offset: u64,
    pub len: u64,
    pub writable: bool,
}

#[derive(Clone, Debug)]
struct Member {
    share: VmShare,
    window: Option<Window>,
    shares: u32,
    shared_bytes: u64,
    imports: u32,
    import_bytes: u64,
    /// Windows reserved (a reserved range is a memory slot to come).
    mappings: u32,
}

/// The table: see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct ShareTable {
    config: ShareConfig,
    members: BTreeMap<String, Member>,
    shares: BTreeMap<u64, Share>,
    imports: BTreeMap<(String, u32), Import>,
    key: [u8; 16],
    next_serial: u64,
}

impl ShareTable {
    /// A table for the groups of `config`; `key` makes tokens unguessable
    /// (drawn once per daemon, kept across its restarts).
    pub fn new(config: ShareConfig, key: [u8; 16]) -> ShareTable {
        ShareTable {
            config,
            members: BTreeMap::new(),
            shares: BTreeMap::new(),
            imports: BTreeMap::new(),
            key,
            next_serial: 1,
        }
    }

    /// A member VM's device came up (its front-end connected).
    pub fn join(&mut self, vm: &str, share: VmShare) {
        let window = share.window.map(Window::new);
        self.members.insert(
            vm.to_string(),
            Member {
                share,
                window,
                shares: 0,
                shared_bytes: 0,
                imports: 0,
                import_bytes: 0,
                mappings: 0,
            },
        );
    }

    /// The token of `exporter`'s buffer with serial `serial`: SipHash-2-4
    /// under the daemon's key, never 0. Recomputed alike after a restart.
    pub fn token(&self, exporter: &str, serial: u64) -> u64 {
        let mut hasher = SipHasher24::new_with_key(&self.key);
        hasher.write(exporter.as_bytes());
        hasher.write_u8(0);
        hasher.write_u64(serial);
        hasher.finish().max(1)
    }

    fn member(&self, vm: &str) -> Result<&Member, ShareError> {
        self.members
            .get(vm)
            .ok_or_else(|| ShareError::NotMember(vm.to_string()))
    }

    /// Publishes `exporter`'s buffer `buffer` (serial `serial`, `size`
    /// bytes, one extent of `page_size` pages) in `group` (`None`: its
    /// first exporter group). `writable` is granted if the group is
    /// read-write. Limits: `max_shares`, `max_shared_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub fn share(
        &mut self,
        exporter: &str,
        buffer: u32,
        serial: u64,
        size: u64,
        page_size: u64,
        group: Option<&str>,
        writable: bool,
    ) -> Result<Shared, ShareError> {
        let member = self.member(exporter)?;
        let group = match group {
            Some(name) => name.to_string(),
            None => member
                .share
                .exporter_groups
                .first()
                .cloned()
                .ok_or_else(|| ShareError::NotMember(exporter.to_string()))?,
        };
        if !member.share.exporter_groups.contains(&group) {
            return Err(ShareError::NotExporterIn {
                vm: exporter.to_string(),
                group,
            });
        }
        if size == 0 || !page_size.is_power_of_two() {
            return Err(ShareError::ZeroSize);
        }
        let window_len = size
            .checked_next_multiple_of(page_size)
            .ok_or(ShareError::ZeroSize)?;
        let token = self.token(exporter, serial);
        if self.shares.contains_key(&token) {
            return Err(ShareError::AlreadyShared(buffer));
        }
        let limits = &member.share.limits;
        let limit = |what, max: u64| ShareError::Limit {
            vm: exporter.to_string(),
            what,
            max,
        };
        if member.shares >= limits.max_shares {
            return Err(limit("max_shares", limits.max_shares.into()));
        }
        if member.shared_bytes.saturating_add(size) > limits.max_shared_bytes {
            return Err(limit("max_shared_bytes", limits.max_shared_bytes));
        }
        let read_write = self
            .config
            .group(&group)
            .is_some_and(|g| g.access == ShareAccess::ReadWrite);
        let writable = writable && read_write;
        if let Some(member) = self.members.get_mut(exporter) {
            member.shares += 1;
            member.shared_bytes += size;
        }
        self.shares.insert(
            token,
            Share {
                token,
                exporter: exporter.to_string(),
                buffer,
                buffer_serial: serial,
                size,
                window_len,
                page_size,
                group,
                writable,
                ending: false,
            },
        );
        Ok(Shared { token, writable })
    }

    /// Imports share `token` into `importer` as its buffer `id`: reserves a
    /// window range and a mapping. The token must be of a group in which
    /// `importer` imports and the exporter exports (else -ENOENT, the same
    /// as a token that does not exist).
    pub fn import(
        &mut self,
        importer: &str,
        token: u64,
        id: u32,
        writable: bool,
    ) -> Result<Imported, ShareError> {
        let member = self.member(importer)?;
        let share = self
            .shares
            .get(&token)
            .filter(|s| !s.ending && s.exporter != importer)
            .filter(|s| member.share.importer_groups.contains(&s.group))
            .ok_or(ShareError::UnknownToken(token))?;
        if writable && !share.writable {
            return Err(ShareError::ReadOnly);
        }
        if self
            .imports
            .values()
            .any(|i| i.token == token && i.importer == importer && i.mapping != Mapping::Revoked)
        {
            return Err(ShareError::AlreadyImported(importer.to_string()));
        }
        let group = self.config.group(&share.group);
        let max_importers = group.map_or(0, |g| g.max_importers);
        let importers = self
            .imports
            .values()
            .filter(|i| i.token == token && i.mapping != Mapping::Revoked)
            .count();
        let limit = |what, max: u64| ShareError::Limit {
            vm: importer.to_string(),
            what,
            max,
        };
        if importers >= max_importers as usize {
            return Err(limit("max_importers", max_importers.into()));
        }
        let limits = &member.share.limits;
        if member.imports >= limits.max_imports {
            return Err(limit("max_imports", limits.max_imports.into()));
        }
        if member.import_bytes.saturating_add(share.size) > limits.max_import_bytes {
            return Err(limit("max_import_bytes", limits.max_import_bytes));
        }
        if member.mappings >= limits.max_mappings {
            return Err(limit("max_mappings", limits.max_mappings.into()));
        }
        if self.imports.contains_key(&(importer.to_string(), id)) {
            return Err(ShareError::AlreadyImported(importer.to_string()));
        }
        let (size, len, page) = (share.size, share.window_len, share.page_size);
        let imported = Imported {
            exporter: share.exporter.clone(),
            buffer: share.buffer,
            size,
            offset: 0,
            len,
            writable,
        };
        let member = self
            .members
            .get_mut(importer)
            .ok_or_else(|| ShareError::NotMember(importer.to_string()))?;
        let window = member
            .window
            .as_mut()
            .ok_or_else(|| ShareError::NoWindow(importer.to_string()))?;
        let offset = window
            .reserve(len, page)
            .ok_or(ShareError::WindowFull(len))?;
        member.imports += 1;
        member.import_bytes += size;
        member.mappings += 1;
        self.imports.insert(
            (importer.to_string(), id),
            Import {
                token,
                importer: importer.to_string(),
                id,
                offset,
                len,
                writable,
                mapping: Mapping::Reserved,
                revocation: None,
                forced: false,
                released: false,
            },
        );
        Ok(Imported { offset, ..imported })
    }

    /// The exporter's backing exists and is held: the imports of `token`
    /// waiting for it are to be mapped. Returns the imports whose map
    /// request the caller sends now (each is `Mapping` from here).
    pub fn backing_ready(&mut self, token: u64) -> Vec<(String, u32)> {
        let mut ready = Vec::new();
        for import in self.imports.values_mut() {
            if import.token == token
                && import.mapping == Mapping::Reserved
                && import.revocation.is_none()
            {
                import.mapping = Mapping::Mapping;
                ready.push((import.importer.clone(), import.id));
            }
        }
        ready
    }

    /// The importer's QEMU answered the map request of import `id`.
    /// Success: the window holds the pages (`SHARE_READY` follows). A
    /// failure returns the import to `Reserved` (its MAPs answer -EIO) and
    /// the exporter's hold is dropped.
    pub fn map_answered(&mut self, importer: &str, id: u32, ok: bool) -> Vec<Action> {
        let Some(import) = self.imports.get_mut(&(importer.to_string(), id)) else {
            return Vec::new();
        };
        if import.mapping != Mapping::Mapping {
            return Vec::new();
        }
        if ok {
            import.mapping = Mapping::Mapped;
            return vec![Action::Ready {
                vm: importer.to_string(),
                import: id,
            }];
        }
        import.mapping = Mapping::Reserved;
        let token = import.token;
        self.unhold(token)
    }

    fn unhold(&self, token: u64) -> Vec<Action> {
        self.shares
            .get(&token)
            .map(|s| Action::Unhold {
                exporter: s.exporter.clone(),
                token,
            })
            .into_iter()
            .collect()
    }

    /// Starts revoking every import of `token` for `reason`: an event per
    /// import that holds or is about to hold a window, with a deadline for
    /// its acknowledgement; an import with nothing mapped is settled at
    /// once (a `Final` one is marked revoked).
    fn revoke_all(&mut self, token: u64, reason: Reason, now: Duration) -> Vec<Action> {
        let keys: Vec<(String, u32)> = self
            .imports
            .iter()
            .filter(|(_, i)| i.token == token && i.mapping != Mapping::Revoked)
            .map(|(k, _)| k.clone())
            .collect();
        let mut actions = Vec::new();
        for key in keys {
            actions.extend(self.revoke(&key, reason, now));
        }
        actions
    }

    fn revoke(&mut self, key: &(String, u32), reason: Reason, now: Duration) -> Vec<Action> {
        let serial = self.next_serial;
        let ack_deadline = now + self.config.timeouts.revoke;
        let Some(import) = self.imports.get_mut(key) else {
            return Vec::new();
        };
        match (import.mapping, import.revocation) {
            (Mapping::Reserved, _) => {
                if reason == Reason::Final {
                    return self.settle(key);
                }
                Vec::new()
            }
            (Mapping::Mapping | Mapping::Mapped, None) => {
                self.next_serial += 1;
                import.revocation = Some(Revocation {
                    serial,
                    reason,
                    ack_deadline,
                    unmap_deadline: None,
                    acked: false,
                });
                vec![Action::Revoke {
                    vm: key.0.clone(),
                    import: key.1,
                    data: reason.event_data(serial),
                }]
            }
            (_, Some(mut under_way)) => {
                // Already under way: a Final revocation stays final.
                if reason == Reason::Final {
                    under_way.reason = Reason::Final;
                    import.revocation = Some(under_way);
                }
                Vec::new()
            }
            (Mapping::Unmapping | Mapping::Revoked, None) => Vec::new(),
        }
    }

    /// Ends an import whose window is gone (or never came): a `Final`
    /// revocation (or a release) frees its range and slot.
    fn settle(&mut self, key: &(String, u32)) -> Vec<Action> {
        let Some(import) = self.imports.get_mut(key) else {
            return Vec::new();
        };
        let moving = import
            .revocation
            .is_some_and(|r| r.reason == Reason::Moving);
        import.revocation = None;
        if moving {
            import.mapping = Mapping::Reserved;
            return Vec::new();
        }
        import.mapping = Mapping::Revoked;
        let (offset, len, token) = (import.offset, import.len, import.token);
        if import.released {
            self.imports.remove(key);
        }
        let size = self.shares.get(&token).map_or(0, |s| s.size);
        if let Some(member) = self.members.get_mut(&key.0) {
            if let Some(window) = member.window.as_mut() {
                window.free(offset, len);
            }
            member.mappings = member.mappings.saturating_sub(1);
            member.imports = member.imports.saturating_sub(1);
            member.import_bytes = member.import_bytes.saturating_sub(size);
        }
        self.drop_ended(token);
        Vec::new()
    }

    /// Forgets an ending share once no import of it is under way.
    fn drop_ended(&mut self, token: u64) {
        let ending = self.shares.get(&token).is_some_and(|s| s.ending);
        let live = self
            .imports
            .values()
            .any(|i| i.token == token && i.mapping != Mapping::Revoked);
        if ending && !live {
            if let Some(share) = self.shares.remove(&token) {
                if let Some(member) = self.members.get_mut(&share.exporter) {
                    member.shares = member.shares.saturating_sub(1);
                    member.shared_bytes = member.shared_bytes.saturating_sub(share.size);
                }
            }
        }
    }

    /// UNSHARE (and the UNSHARE inside a FREE): no new import; every
    /// import is revoked for good. The exporter's command waits until
    /// [`ShareTable::settled`].
    pub fn unshare(
        &mut self,
        exporter: &str,
        token: u64,
        now: Duration,
    ) -> Result<Vec<Action>, ShareError> {
        let share = self
            .shares
            .get_mut(&token)
            .filter(|s| s.exporter == exporter && !s.ending)
            .ok_or(ShareError::UnknownToken(token))?;
        share.ending = true;
        let actions = self.revoke_all(token, Reason::Final, now);
        self.drop_ended(token);
        Ok(actions)
    }

    /// The exporter's backing of `token` is about to move (or its device
    /// stopped): every window is revoked, to be mapped again later.
    pub fn suspend(&mut self, token: u64, now: Duration) -> Vec<Action> {
        self.revoke_all(token, Reason::Moving, now)
    }

    /// REVOKE_ACK of import `id` for revocation `serial`: the unmap goes
    /// now. Repeating it is answered 0 and does nothing more; any other
    /// serial is -ENOENT.
    pub fn revoke_ack(
        &mut self,
        importer: &str,
        id: u32,
        serial: u64,
        now: Duration,
    ) -> Result<Vec<Action>, ShareError> {
        let key = (importer.to_string(), id);
        let import = self
            .imports
            .get_mut(&key)
            .ok_or_else(|| ShareError::UnknownImport(importer.to_string(), id))?;
        let stale = ShareError::StaleRevocation { import: id, serial };
        let Some(revocation) = import.revocation.as_mut() else {
            return Err(stale);
        };
        if revocation.serial & CENALLOC_REVOKE_SERIAL_MASK != serial & CENALLOC_REVOKE_SERIAL_MASK {
            return Err(stale);
        }
        if revocation.acked {
            return Ok(Vec::new());
        }
        revocation.acked = true;
        Ok(self.send_unmap(&key, now))
    }

    fn send_unmap(&mut self, key: &(String, u32), now: Duration) -> Vec<Action> {
        let unmap = self.config.timeouts.unmap;
        let Some(import) = self.imports.get_mut(key) else {
            return Vec::new();
        };
        if let Some(revocation) = import.revocation.as_mut() {
            revocation.unmap_deadline = Some(now + unmap);
        }
        import.mapping = Mapping::Unmapping;
        vec![Action::Unmap {
            vm: key.0.clone(),
            import: key.1,
            offset: import.offset,
            len: import.len,
        }]
    }

    /// The proof that import `id`'s window is gone (the importer's memory
    /// table lost it, the unmap was answered while its rings were stopped,
    /// or its connection ended): the exporter's hold goes, and the import
    /// is settled.
    pub fn unmapped(&mut self, importer: &str, id: u32) -> Vec<Action> {
        let key = (importer.to_string(), id);
        let Some(import) = self.imports.get_mut(&key) else {
            return Vec::new();
        };
        if import.mapping != Mapping::Unmapping {
            return Vec::new();
        }
        import.forced = false;
        let token = import.token;
        let mut actions = self.unhold(token);
        actions.extend(self.settle(&key));
        actions
    }

    /// Deadlines passed at `now`: an importer that did not acknowledge is
    /// unmapped anyway; an unmap whose proof did not come ends the
    /// revocation as *forced* (range, slot and hold stay until the proof
    /// or the importer's departure).
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        let keys: Vec<(String, u32)> = self.imports.keys().cloned().collect();
        for key in keys {
            let Some(import) = self.imports.get_mut(&key) else {
                continue;
            };
            let Some(revocation) = import.revocation else {
                continue;
            };
            match revocation.unmap_deadline {
                None if now >= revocation.ack_deadline => {
                    if let Some(r) = import.revocation.as_mut() {
                        r.acked = true;
                    }
                    actions.extend(self.send_unmap(&key, now));
                }
                Some(deadline) if now >= deadline => import.forced = true,
                _ => {}
            }
        }
        actions
    }

    /// Whether nothing of `token` is under way: no revocation waits for an
    /// acknowledgement or a proof. The exporter's waiting command may be
    /// answered.
    pub fn settled(&self, token: u64) -> bool {
        !self
            .imports
            .values()
            .any(|i| i.token == token && i.revocation.is_some() && !i.forced)
    }

    /// The imports of `token` whose unmap was never proven.
    pub fn forced(&self, token: u64) -> usize {
        self.imports
            .values()
            .filter(|i| i.token == token && i.forced)
            .count()
    }

    /// RELEASE in the importer: ends import `id`. A mapped window is
    /// unmapped (no event: the importer asked); its range and slot come
    /// back with the proof.
    pub fn release(
        &mut self,
        importer: &str,
        id: u32,
        now: Duration,
    ) -> Result<Vec<Action>, ShareError> {
        let key = (importer.to_string(), id);
        let import = self
            .imports
            .get_mut(&key)
            .filter(|i| !i.released)
            .ok_or_else(|| ShareError::UnknownImport(importer.to_string(), id))?;
        import.released = true;
        let final_release = Revocation {
            serial: 0,
            reason: Reason::Final,
            ack_deadline: now,
            unmap_deadline: None,
            acked: true,
        };
        Ok(match import.mapping {
            Mapping::Revoked => {
                self.imports.remove(&key);
                Vec::new()
            }
            Mapping::Reserved => {
                import.revocation = Some(final_release);
                self.settle(&key)
            }
            Mapping::Mapping | Mapping::Mapped => {
                import.revocation = Some(final_release);
                self.send_unmap(&key, now)
            }
            Mapping::Unmapping => {
                if let Some(r) = import.revocation.as_mut() {
                    r.reason = Reason::Final;
                }
                Vec::new()
            }
        })
    }

    /// A member VM's front-end is gone. As an importer: every window of it
    /// is gone with its QEMU's connection (proof (c)), holds are dropped.
    /// As an exporter: its shares end; their importers are revoked for good
    /// (nobody waits: the exporter's memory cannot be reused while its
    /// file is mapped elsewhere).
    pub fn leave(&mut self, vm: &str, now: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        let mine: Vec<(String, u32)> = self
            .imports
            .keys()
            .filter(|(importer, _)| importer == vm)
            .cloned()
            .collect();
        for key in mine {
            if let Some(import) = self.imports.remove(&key) {
                let holds = matches!(
                    import.mapping,
                    Mapping::Mapping | Mapping::Mapped | Mapping::Unmapping
                );
                if holds {
                    actions.extend(self.unhold(import.token));
                }
                self.drop_ended(import.token);
            }
        }
        let tokens: Vec<u64> = self
            .shares
            .values()
            .filter(|s| s.exporter == vm)
            .map(|s| s.token)
            .collect();
        for token in tokens {
            if let Some(share) = self.shares.get_mut(&token) {
                share.ending = true;
            }
            actions.extend(self.revoke_all(token, Reason::Final, now));
            // Nobody answers to a departed exporter: its holds die with it.
            actions.retain(|a| !matches!(a, Action::Unhold { exporter, .. } if exporter == vm));
            self.drop_ended(token);
        }
        self.members.remove(vm);
        actions
    }

    pub fn share_of(&self, token: u64) -> Option<&Share> {
        self.shares.get(&token)
    }

    pub fn import_of(&self, importer: &str, id: u32) -> Option<&Import> {
        self.imports.get(&(importer.to_string(), id))
    }

    /// Every share and import, for `cenallocctl shares`.
    pub fn shares(&self) -> impl Iterator<Item = &Share> {
        self.shares.values()
    }

    pub fn imports(&self) -> impl Iterator<Item = &Import> {
        self.imports.values()
    }

    /// Whether `vm` is in the table (its front-end is connected).
    pub fn joined(&self, vm: &str) -> bool {
        self.members.contains_key(vm)
    }

    /// Memory slots `vm` spends (reserved windows).
    pub fn mappings(&self, vm: &str) -> u32 {
        self.members.get(vm).map_or(0, |m| m.mappings)
    }

    /// The reserved ranges of `vm`'s window.
    pub fn window(&self, vm: &str) -> Option<&Window> {
        self.members.get(vm).and_then(|m| m.window.as_ref())
    }
}

#[cfg(test)]
mod tests;
