//! Batch framing: the checks a whole batch passes before any command runs,
//! and the helpers that read a command's payload and write its answer.

use vm_memory::ByteValued;

use super::Error;
use crate::protocol::*;

/// Largest response (writable part) one batch may ask for.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// Largest response payload slot of one command.
pub const MAX_SLOT_BYTES: u32 = 16 << 20;

/// One command of a parsed batch.
#[derive(Debug)]
pub(crate) struct CommandFrame {
    pub header: CmdHdr,
    /// Offset of the payload in the request.
    pub payload: usize,
    /// Offset of the response header in the response.
    pub response: usize,
}

/// Checks the framing of a whole batch before running any command.
pub(crate) fn parse_batch(
    request: &[u8],
    writable_len: usize,
    max_batch: u32,
) -> Result<Vec<CommandFrame>, Error> {
    let header: BatchHdr = read_struct(request, 0).ok_or(Error::Framing("short batch header"))?;
    if header.reserved != 0 {
        return Err(Error::Reserved(header.reserved));
    }
    if header.num_cmds == 0 || header.num_cmds > max_batch {
        return Err(Error::Framing("command count out of range"));
    }
    let mut frames = Vec::with_capacity(header.num_cmds as usize);
    let mut offset = size_of::<BatchHdr>();
    let mut response = size_of::<BatchResp>();
    for _ in 0..header.num_cmds {
        let cmd: CmdHdr =
            read_struct(request, offset).ok_or(Error::Framing("short command header"))?;
        if cmd.len % 8 != 0 || cmd.resp_len % 8 != 0 {
            return Err(Error::Framing("length not a multiple of 8"));
        }
        if cmd.resp_len > MAX_SLOT_BYTES {
            return Err(Error::Framing("response slot too large"));
        }
        let payload = offset + size_of::<CmdHdr>();
        let end = payload
            .checked_add(cmd.len as usize)
            .filter(|&end| end <= request.len())
            .ok_or(Error::Framing("payload runs past the readable part"))?;
        frames.push(CommandFrame {
            header: cmd,
            payload,
            response,
        });
        offset = end;
        response += size_of::<RespHdr>() + cmd.resp_len as usize;
        if response > MAX_RESPONSE_BYTES {
            return Err(Error::Framing("response too large"));
        }
    }
    if offset != request.len() {
        return Err(Error::Framing("trailing bytes after the last command"));
    }
    if response > writable_len {
        return Err(Error::ResponseTooSmall {
            need: response,
            got: writable_len,
        });
    }
    Ok(frames)
}

pub(crate) fn read_struct<T: ByteValued + Default>(bytes: &[u8], offset: usize) -> Option<T> {
    let end = offset.checked_add(size_of::<T>())?;
    let src = bytes.get(offset..end)?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Some(value)
}

/// Writes `value` at the start of `slot` (callers checked the size).
pub(crate) fn write_struct<T: ByteValued>(slot: &mut [u8], value: &T) -> usize {
    let bytes = value.as_slice();
    slot[..bytes.len()].copy_from_slice(bytes);
    bytes.len()
}

/// A sized payload (opcodes 19 on): at least one `T`, and every byte past
/// it zero (a newer driver asking for nothing this device does not know).
pub(crate) fn sized<T: ByteValued + Default>(payload: &[u8]) -> Result<T, Error> {
    let known = size_of::<T>();
    let value = read_struct(payload, 0).ok_or(Error::PayloadLength {
        need: known,
        got: payload.len(),
    })?;
    if let Some(at) = payload[known..].iter().position(|&b| b != 0) {
        return Err(Error::UnknownTail {
            known,
            offset: known + at,
        });
    }
    Ok(value)
}

/// A NUL-padded name field: `None` when all zero, else the UTF-8 name
/// before the first NUL (which must exist, with only NULs after it).
pub(crate) fn name_field(field: &[u8]) -> Result<Option<&str>, Error> {
    let end = field.iter().position(|&b| b == 0).ok_or(Error::BadName)?;
    if field[end..].iter().any(|&b| b != 0) {
        return Err(Error::BadName);
    }
    if end == 0 {
        return Ok(None);
    }
    std::str::from_utf8(&field[..end])
        .map(Some)
        .map_err(|_| Error::BadName)
}

/// The payload must be exactly one `T`.
pub(crate) fn exact<T: ByteValued + Default>(payload: &[u8]) -> Result<T, Error> {
    if payload.len() != size_of::<T>() {
        return Err(Error::PayloadLength {
            need: size_of::<T>(),
            got: payload.len(),
        });
    }
    read_struct(payload, 0).ok_or(Error::PayloadLength {
        need: size_of::<T>(),
        got: payload.len(),
    })
}

pub(crate) fn expect_empty(payload: &[u8]) -> Result<(), Error> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(Error::PayloadLength {
            need: 0,
            got: payload.len(),
        })
    }
}

pub(crate) fn check_slot<T: ByteValued>(slot: &[u8]) -> Result<(), Error> {
    if slot.len() < size_of::<T>() {
        return Err(Error::SlotTooSmall {
            need: size_of::<T>(),
            got: slot.len(),
        });
    }
    Ok(())
}

pub(crate) fn check_reserved(value: u32) -> Result<(), Error> {
    if value != 0 {
        return Err(Error::Reserved(value));
    }
    Ok(())
}
