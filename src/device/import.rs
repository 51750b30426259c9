//! The importer's share commands (issue 17, docs/design/cross-vm-sharing.md
//! section 2, step 5): IMPORT, RELEASE, REVOKE_ACK, and MAP of an imported
//! buffer, on a device given a [`crate::share::ShareLink`]; and the
//! exporter's part in mapping a window ([`Device::place`]).
//!
//! An imported buffer lives in the importer's model (an id, attachments,
//! maps counted) but is backed by the exporter's memory through the
//! importer's window: a MAP answers the window range once the table says
//! the window holds it, -EAGAIN before, -ENOLINK once it is revoked for
//! good. The importer never allocates and never touches the exporter's
//! model: what the exporter must do goes through the desk.

use log::warn;

use super::frame::{check_reserved, check_slot, sized, write_struct};
use super::{resolve_buffer, Device, Error, Produced};
use crate::model::{kinds, Direction};
use crate::protocol::*;
use crate::share::{Action, Mapping, Reason, ShareError, ShareLink};

impl Device {
    /// IMPORT: share `token` becomes an imported buffer of this VM, with a
    /// range of its window reserved.
    pub(super) fn import_cmd(
        &mut self,
        payload: &[u8],
        slot: &mut [u8],
    ) -> Result<(usize, Produced), Error> {
        let link = self.link(CENALLOC_CMD_IMPORT)?;
        let req: ImportReq = sized(payload)?;
        if req.flags & !CENALLOC_IMPORT_F_WRITABLE != 0 {
            return Err(Error::InvalidFlags(req.flags));
        }
        if req.initial_mask & kinds::CUSTOM != 0 {
            return Err(Error::ImportKinds(req.initial_mask));
        }
        check_slot::<ImportResp>(slot)?;
        let id = self.pool.next_import_id()?;
        let desk = link.desk();
        let now = desk.now();
        let imported = {
            let mut table = desk.table();
            let imported = table.import(
                link.vm(),
                req.token,
                id,
                req.flags & CENALLOC_IMPORT_F_WRITABLE != 0,
            )?;
            match self.pool.import(imported.size, req.initial_mask) {
                Ok(created) if created.id == id => imported,
                other => {
                    // Checked by next_import_id: cannot happen; undone
                    // all the same (a reserved import ends at once).
                    if let Ok(created) = &other {
                        if let Err(e) = self.pool.release_import(created.id) {
                            warn!("IMPORT: undoing buffer {}: {e}", created.id);
                        }
                    }
                    match table.release(link.vm(), id, now) {
                        Ok(actions) if actions.is_empty() => {}
                        undo => warn!("IMPORT: undoing import {id}: {undo:?}"),
                    }
                    return Err(match other {
                        Err(e) => e.into(),
                        Ok(_) => crate::model::Error::IdsExhausted.into(),
                    });
                }
            }
        };
        // The exporter maps the window at once if its backing is in place,
        // else at its first map.
        link.desk().carry(
            link.vm(),
            vec![Action::Place {
                exporter: imported.exporter.clone(),
                token: req.token,
            }],
        );
        let resp = ImportResp {
            buffer_id: id,
            flags: if imported.writable {
                CENALLOC_IMPORT_F_WRITABLE
            } else {
                0
            },
            size: imported.size,
            window_offset: imported.offset,
            window_len: imported.len,
        };
        Ok((write_struct(slot, &resp), Produced::Buffer(id)))
    }

    /// RELEASE: ends an import (its window is unmapped, no event: the
    /// importer asked).
    pub(super) fn release_cmd(
        &mut self,
        payload: &[u8],
        produced: &[Produced],
    ) -> Result<(usize, Produced), Error> {
        let link = self.link(CENALLOC_CMD_RELEASE)?;
        let req: ReleaseReq = sized(payload)?;
        check_reserved(req.reserved)?;
        let buffer = resolve_buffer(req.buffer_id, produced)?;
        // A buffer of this VM's own is no import (-ENOENT, as the spec says).
        if !self.pool.is_imported(buffer)? {
            return Err(ShareError::UnknownImport(link.vm().to_string(), buffer).into());
        }
        self.pool.release_import(buffer)?;
        let desk = link.desk();
        let now = desk.now();
        let released = desk.table().release(link.vm(), buffer, now);
        match released {
            Ok(actions) => self.carry(&link, actions),
            // The table forgot it already (its exporter left and the
            // revocation settled): the model's end is all there was.
            Err(e) => warn!("RELEASE of import {buffer}: {e}"),
        }
        Ok((0, Produced::Nothing))
    }

    /// REVOKE_ACK: the importer let go of a revoked import; the unmap goes.
    pub(super) fn revoke_ack_cmd(
        &mut self,
        payload: &[u8],
        produced: &[Produced],
    ) -> Result<(usize, Produced), Error> {
        let link = self.link(CENALLOC_CMD_REVOKE_ACK)?;
        let req: RevokeAckReq = sized(payload)?;
        check_reserved(req.reserved)?;
        let buffer = resolve_buffer(req.buffer_id, produced)?;
        // A buffer of this VM's own is no import (-ENOENT, as the spec says).
        if !self.pool.is_imported(buffer)? {
            return Err(ShareError::UnknownImport(link.vm().to_string(), buffer).into());
        }
        let desk = link.desk();
        let now = desk.now();
        let actions = desk
            .table()
            .revoke_ack(link.vm(), buffer, req.serial, now)?;
        self.carry(&link, actions);
        Ok((0, Produced::Nothing))
    }

    /// MAP by an attachment of an imported buffer: the window range, once
    /// the window holds the buffer.
    pub(super) fn map_import_cmd(
        &mut self,
        link: &ShareLink,
        buffer: u32,
        attachment: u32,
        direction: Direction,
        slot: &mut [u8],
    ) -> Result<(usize, Produced), Error> {
        let need = size_of::<MapResp>() + size_of::<Range>();
        if slot.len() < need {
            return Err(Error::SlotTooSmall {
                need,
                got: slot.len(),
            });
        }
        let import = link
            .desk()
            .table()
            .import_of(link.vm(), buffer)
            .cloned()
            .ok_or(Error::ImportRevoked(buffer))?;
        let final_revocation = import.revocation.is_some_and(|r| r.reason == Reason::Final);
        if final_revocation || import.mapping == Mapping::Revoked {
            return Err(Error::ImportRevoked(buffer));
        }
        if import.mapping != Mapping::Mapped || import.revocation.is_some() {
            return Err(Error::WindowNotMapped(buffer));
        }
        let map_type = self.pool.map_import(attachment, direction)?;
        let resp = MapResp {
            map_type: map_type.code(),
            num_segments: 1,
            allocator_id: CENALLOC_ALLOCATOR_WINDOW,
            flags: CENALLOC_MAP_F_WINDOW,
            size: self.pool.buffer_size(buffer)?,
        };
        let mut len = write_struct(slot, &resp);
        len += write_struct(
            &mut slot[len..],
            &Range {
                addr: import.offset,
                len: import.len,
            },
        );
        Ok((len, Produced::Nothing))
    }

    /// In the exporter: maps the windows waiting for share `token` if its
    /// backing is in place (one extent, not about to move), a hold taken
    /// for each before its map request goes to the importer's channel.
    pub(super) fn place(&mut self, link: &ShareLink, token: u64) {
        let buffer = {
            let table = link.desk().table();
            match table.share_of(token) {
                Some(s) if s.exporter == link.vm() && !s.ending => s.buffer,
                _ => return,
            }
        };
        let ready = matches!(self.pool.backing(buffer), Ok([_]))
            && matches!(self.pool.migrate_pending(buffer), Ok(false));
        if !ready {
            return;
        }
        let waiting = link.desk().table().backing_ready(token);
        let mut actions = Vec::new();
        for (importer, import) in waiting {
            match self.hold_share(token) {
                Ok(extent) => {
                    let table = link.desk().table();
                    if let Some(i) = table.import_of(&importer, import) {
                        actions.push(Action::Map {
                            vm: importer,
                            import,
                            exporter: link.vm().to_string(),
                            addr: extent.addr,
                            offset: i.offset,
                            len: i.len,
                            writable: i.writable,
                        });
                    }
                }
                Err(e) => {
                    warn!("share {token:#x}: no hold for import {import} of {importer}: {e}");
                    // Back to Reserved; the hold it names was never taken.
                    let undo = link.desk().table().map_answered(&importer, import, false);
                    if !undo.iter().all(|a| matches!(a, Action::Unhold { .. })) {
                        warn!("share {token:#x}: {undo:?}");
                    }
                }
            }
        }
        self.carry(link, actions);
    }
}
