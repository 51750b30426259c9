//! The exporter's share commands (issue 17, docs/design/cross-vm-sharing.md
//! sections 2 and 4, step 5): SHARE, UNSHARE, and FREE of a shared buffer,
//! on a device given a [`ShareLink`]. A device without one answers the
//! share opcodes as unknown, as before.
//!
//! Order: the model changes first (SHARE adds the share attachment; UNSHARE
//! and FREE drop it, with the importers' remote attachments), then the
//! table; what the table asks of other VMs goes to the desk; a command
//! whose revocations are under way is *parked* ([`Pending::Settle`]): it
//! yields until the table says the share is settled, so its answer never
//! comes before the importers' windows are gone or their bounds passed.
//! Each check of a parked command also runs the table's deadlines.

use std::time::Duration;

use log::warn;

use super::frame::{check_slot, name_field, sized, write_struct};
use super::{resolve_buffer, Device, Error, Pending, Produced};
use crate::model::{Owner, Segment, PAGE_SIZE};
use crate::protocol::*;
use crate::share::{Action, Mapping, ShareError, ShareLink};

/// What a parked command answers once its shares are settled.
#[derive(Debug)]
pub(super) enum Settled {
    Unshare { revoked: u32 },
    Free,
}

impl Device {
    /// Links this device to the share table as VM `link.vm()`.
    pub fn with_share(mut self, link: ShareLink) -> Self {
        self.share = Some(link);
        self
    }

    /// The share link, or the answer a device without sharing gives.
    pub(super) fn link(&self, opcode: u16) -> Result<ShareLink, Error> {
        self.share.clone().ok_or(Error::UnknownOpcode(opcode))
    }

    /// SHARE: publishes a buffer of this VM under a token.
    pub(super) fn share_cmd(
        &mut self,
        payload: &[u8],
        slot: &mut [u8],
        produced: &[Produced],
    ) -> Result<(usize, Produced), Error> {
        let link = self.link(CENALLOC_CMD_SHARE)?;
        let req: ShareReq = sized(payload)?;
        if req.flags & !CENALLOC_SHARE_F_WRITABLE != 0 {
            return Err(Error::InvalidFlags(req.flags));
        }
        if req.reserved != 0 {
            return Err(Error::Reserved64(req.reserved));
        }
        let group = name_field(&req.group)?;
        check_slot::<ShareResp>(slot)?;
        let buffer = resolve_buffer(req.buffer_id, produced)?;
        if self.pool.is_imported(buffer)? {
            return Err(Error::ImportedBuffer(buffer));
        }
        let serial = self.pool.buffer_serial(buffer)?;
        let size = self.pool.buffer_size(buffer)?;
        let desk = link.desk();
        let now = desk.now();
        let mut table = desk.table();
        let shared = table.share(
            link.vm(),
            buffer,
            serial,
            size,
            PAGE_SIZE,
            group,
            req.flags & CENALLOC_SHARE_F_WRITABLE != 0,
        )?;
        let attached = match self.pool.share(buffer, PAGE_SIZE) {
            Ok(attached) => attached,
            Err(refused) => {
                // A share nobody imports yet: withdrawn at once, as if
                // never made.
                match table.unshare(link.vm(), shared.token, now) {
                    Ok(actions) if actions.is_empty() => {}
                    other => warn!("SHARE: withdrawing token {:#x}: {other:?}", shared.token),
                }
                return Err(refused.into());
            }
        };
        let mut flags = 0;
        if shared.writable {
            flags |= CENALLOC_SHARE_F_WRITABLE;
        }
        if attached.migrate_pending {
            flags |= CENALLOC_SHARE_F_MIGRATE;
        }
        let resp = ShareResp {
            token: shared.token,
            size,
            flags,
            reserved: 0,
        };
        Ok((write_struct(slot, &resp), Produced::Nothing))
    }

    /// The token under which this VM shares `buffer` (this buffer, not an
    /// earlier one with the same id), if it does.
    pub(super) fn token_of(&self, link: &ShareLink, buffer: u32) -> Result<Option<u64>, Error> {
        let serial = self.pool.buffer_serial(buffer)?;
        let table = link.desk().table();
        let token = table
            .shares()
            .find(|s| {
                s.exporter == link.vm()
                    && s.buffer == buffer
                    && s.buffer_serial == serial
                    && !s.ending
            })
            .map(|s| s.token);
        Ok(token)
    }

    /// Drops the buffer's share attachment and every remote attachment
    /// (importers no longer constrain a buffer they cannot reach).
    fn drop_share_attachments(&mut self, buffer: u32) -> Result<(), Error> {
        let owned = self.pool.attachments_of(buffer)?;
        // Remote ones first: the share attachment goes last.
        let (remote, share): (Vec<_>, Vec<_>) = owned
            .into_iter()
            .filter(|(_, owner)| !matches!(owner, Owner::Guest))
            .partition(|(_, owner)| matches!(owner, Owner::Remote { .. }));
        for (attachment, _) in remote.into_iter().chain(share) {
            self.pool.detach_owned(attachment)?;
        }
        Ok(())
    }

    /// UNSHARE: no new import; every import revoked; parked until settled.
    pub(super) fn start_unshare(
        &mut self,
        payload: &[u8],
        slot: &mut [u8],
        produced: &[Produced],
    ) -> Result<Pending, Error> {
        let link = self.link(CENALLOC_CMD_UNSHARE)?;
        let req: UnshareReq = sized(payload)?;
        if req.flags != 0 {
            return Err(Error::InvalidFlags(req.flags));
        }
        check_slot::<UnshareResp>(slot)?;
        let buffer = resolve_buffer(req.buffer_id, produced)?;
        if self.token_of(&link, buffer)? != Some(req.token) {
            return Err(ShareError::UnknownToken(req.token).into());
        }
        let revoked = self.live_imports(&link, req.token);
        // Checked above: the share attachment exists and nothing maps it.
        self.drop_share_attachments(buffer)?;
        self.end_share(&link, req.token)?;
        Ok(Pending::Settle {
            tokens: vec![req.token],
            answer: Settled::Unshare {
                revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
            },
        })
    }

    /// FREE of a buffer this VM shares: UNSHARE, then FREE, in one command
    /// (`None`: the buffer is not shared, FREE as ever).
    pub(super) fn start_free_shared(&mut self, buffer: u32) -> Result<Option<Pending>, Error> {
        let Some(link) = self.share.clone() else {
            return Ok(None);
        };
        let Some(token) = self.token_of(&link, buffer)? else {
            return Ok(None);
        };
        // A shared buffer is never released (SHARE refuses one, and FREE of
        // a shared one comes here): the model's FREE cannot fail below.
        self.drop_share_attachments(buffer)?;
        self.pool.free(buffer)?;
        self.end_share(&link, token)?;
        Ok(Some(Pending::Settle {
            tokens: vec![token],
            answer: Settled::Free,
        }))
    }

    /// The imports of `token` that an UNSHARE revokes.
    fn live_imports(&self, link: &ShareLink, token: u64) -> usize {
        link.desk()
            .table()
            .imports()
            .filter(|i| i.token == token && !i.released && i.mapping != Mapping::Revoked)
            .count()
    }

    /// Ends share `token` in the table and carries out what that asks.
    fn end_share(&mut self, link: &ShareLink, token: u64) -> Result<Vec<Action>, Error> {
        let desk = link.desk();
        let now = desk.now();
        let actions = desk.table().unshare(link.vm(), token, now)?;
        self.carry(link, actions.clone());
        Ok(actions)
    }

    /// Carries out actions: holds on this VM's backings are dropped here,
    /// everything else goes to the desk.
    pub(super) fn carry(&mut self, link: &ShareLink, actions: Vec<Action>) {
        let (mine, others): (Vec<_>, Vec<_>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::Unhold { exporter, .. } if exporter == link.vm()));
        for action in mine {
            self.receive(action);
        }
        if !others.is_empty() {
            link.desk().carry(link.vm(), others);
        }
    }

    /// A window of another VM is about to reach share `token`'s backing
    /// (its map request goes out next): the hold keeps the extent from any
    /// reuse, even after a FREE or a move, until the [`Action::Unhold`]
    /// that matches it. Returns the extent, in this VM's guest-physical
    /// addresses.
    pub fn hold_share(&mut self, token: u64) -> Result<Segment, Error> {
        let link = self.link(CENALLOC_CMD_SHARE)?;
        let (buffer, serial) = link
            .desk()
            .table()
            .share_of(token)
            .filter(|s| s.exporter == link.vm() && !s.ending)
            .map(|s| (s.buffer, s.buffer_serial))
            .ok_or(ShareError::UnknownToken(token))?;
        if self.pool.buffer_serial(buffer)? != serial {
            return Err(ShareError::UnknownToken(token).into());
        }
        let held = self.pool.hold(buffer)?;
        self.share_holds.entry(token).or_default().push(held.serial);
        Ok(held.extent)
    }

    /// Applies an action the share table addressed to this VM (from its
    /// own commands or, through the serving process, from another VM's).
    pub fn receive(&mut self, action: Action) {
        match action {
            Action::Revoke { import, data, .. } => self.push_event(Event {
                event_type: CENALLOC_EVENT_SHARE_REVOKE,
                buffer_id: import,
                data,
            }),
            Action::Ready { import, .. } => self.push_event(Event {
                event_type: CENALLOC_EVENT_SHARE_READY,
                buffer_id: import,
                data: 0,
            }),
            Action::Unhold { token, .. } => match self.share_holds.get_mut(&token) {
                Some(serials) if !serials.is_empty() => {
                    let serial = serials.remove(0);
                    if serials.is_empty() {
                        self.share_holds.remove(&token);
                    }
                    if let Err(e) = self.pool.unhold(serial) {
                        warn!("share {token:#x}: dropping the hold on backing {serial}: {e}");
                    }
                    self.backing_changed();
                }
                _ => warn!("share {token:#x}: a hold to drop that this device never took"),
            },
            Action::Place { token, .. } => {
                if let Some(link) = self.share.clone() {
                    self.place(&link, token);
                }
            }
            Action::Unmap { vm, .. } | Action::Map { vm, .. } => {
                warn!("a window request for VM {vm:?} reached a device: nothing to do here")
            }
        }
    }

    /// After a MAP that placed or kept `buffer`'s backing: if this VM
    /// shares it, the waiting windows are mapped.
    pub(super) fn place_after_map(&mut self, buffer: u32) {
        let Some(link) = self.share.clone().filter(|_| !self.dry) else {
            return;
        };
        if let Ok(Some(token)) = self.token_of(&link, buffer) {
            self.place(&link, token);
        }
    }

    /// Whether a parked command may answer; runs the table's deadlines
    /// first. A replay never waits (the journal says how it ended).
    pub(super) fn settled(&mut self, tokens: &[u64]) -> bool {
        let Some(link) = self.share.clone().filter(|_| !self.dry) else {
            return true;
        };
        let desk = link.desk();
        let now: Duration = desk.now();
        let (actions, settled) = {
            let mut table = desk.table();
            let actions = table.poll(now);
            let settled = tokens.iter().all(|&t| table.settled(t));
            (actions, settled)
        };
        self.carry(&link, actions);
        settled
    }

    /// Answers a parked command.
    pub(super) fn finish_settle(
        &mut self,
        tokens: &[u64],
        answer: Settled,
        slot: &mut [u8],
    ) -> Result<(usize, Produced), Error> {
        match answer {
            Settled::Free => Ok((0, Produced::Nothing)),
            Settled::Unshare { revoked } => {
                let forced = self.share.as_ref().map_or(0, |link| {
                    let table = link.desk().table();
                    tokens.iter().map(|&t| table.forced(t)).sum::<usize>()
                });
                let resp = UnshareResp {
                    revoked,
                    forced: u32::try_from(forced).unwrap_or(u32::MAX),
                };
                Ok((write_struct(slot, &resp), Produced::Nothing))
            }
        }
    }

    /// At RESET (the command, or the front-end's): every share of this VM
    /// ends, without waiting (docs/design/cross-vm-sharing.md wants the
    /// RESET command to wait as FREE does: not built yet), and every
    /// import of this VM is released (its windows unmapped, no event).
    /// Holds stay: the model keeps the extents in quarantine until each
    /// window is proven gone.
    pub(super) fn end_all_shares(&mut self) {
        let Some(link) = self.share.clone() else {
            return;
        };
        let imports: Vec<u32> = link
            .desk()
            .table()
            .imports()
            .filter(|i| i.importer == link.vm() && !i.released)
            .map(|i| i.id)
            .collect();
        for id in imports {
            let now = link.desk().now();
            let released = link.desk().table().release(link.vm(), id, now);
            match released {
                Ok(actions) => self.carry(&link, actions),
                Err(e) => warn!("RESET: releasing import {id}: {e}"),
            }
        }
        let tokens: Vec<u64> = link
            .desk()
            .table()
            .shares()
            .filter(|s| s.exporter == link.vm() && !s.ending)
            .map(|s| s.token)
            .collect();
        for token in tokens {
            if let Err(e) = self.end_share(&link, token) {
                warn!("RESET: ending share {token:#x}: {e}");
            }
        }
    }
}
