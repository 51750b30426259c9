//! What the holder must know of vhost-user requests to relay them: their
//! codes, which of them are answered, and when a NEED_REPLY flag is
//! answered (REPLY_ACK). Mirrors vhost 0.18's `BackendReqHandler`, the
//! handler that serves the child's end.

use super::frame::{Frame, FLAG_NEED_REPLY, FLAG_REPLY};

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const RESET_OWNER: u32 = 4;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_LOG_BASE: u32 = 6;
pub const SET_LOG_FD: u32 = 7;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const SET_VRING_ERR: u32 = 14;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;
pub const SEND_RARP: u32 = 19;
pub const SET_BACKEND_REQ_FD: u32 = 21;
pub const IOTLB_MSG: u32 = 22;
pub const GET_CONFIG: u32 = 24;
pub const SET_CONFIG: u32 = 25;
pub const POSTCOPY_ADVISE: u32 = 28;
pub const POSTCOPY_LISTEN: u32 = 29;
pub const POSTCOPY_END: u32 = 30;
pub const GET_INFLIGHT_FD: u32 = 31;
pub const SET_INFLIGHT_FD: u32 = 32;
pub const RESET_DEVICE: u32 = 34;
pub const GET_MAX_MEM_SLOTS: u32 = 36;
pub const ADD_MEM_REG: u32 = 37;
pub const REM_MEM_REG: u32 = 38;
pub const SET_STATUS: u32 = 39;
pub const GET_STATUS: u32 = 40;
pub const GET_SHARED_OBJECT: u32 = 41;
pub const SET_DEVICE_STATE_FD: u32 = 42;
pub const CHECK_DEVICE_STATE: u32 = 43;
pub const GET_SHMEM_CONFIG: u32 = 44;

/// `VHOST_USER_F_PROTOCOL_FEATURES`, a virtio feature bit.
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// `VHOST_USER_PROTOCOL_F_REPLY_ACK`.
const REPLY_ACK_BIT: u64 = 1 << 3;

/// Requests the back-end answers whatever their flags.
pub fn has_reply(request: u32) -> bool {
    matches!(
        request,
        GET_FEATURES
            | SET_LOG_BASE
            | GET_VRING_BASE
            | GET_PROTOCOL_FEATURES
            | GET_QUEUE_NUM
            | GET_CONFIG
            | POSTCOPY_ADVISE
            | GET_INFLIGHT_FD
            | GET_MAX_MEM_SLOTS
            | GET_STATUS
            | GET_SHARED_OBJECT
            | SET_DEVICE_STATE_FD
            | CHECK_DEVICE_STATE
            | GET_SHMEM_CONFIG
    )
}

/// The first little-endian u64 of a payload, if it has one.
/// Whether a front-end request can carry fds (they come with its first
/// byte). A peek of a frame that carries none can still return fds: Linux
/// (6.1 at least) peeks the fds of the next message when a peek that ends
/// inside an fd-less message walks on to it, so the holder keeps a peeked
/// frame's fds only for these requests.
pub fn takes_fds(request: u32) -> bool {
    matches!(
        request,
        SET_MEM_TABLE
            | SET_LOG_BASE
            | SET_LOG_FD
            | SET_VRING_KICK
            | SET_VRING_CALL
            | SET_VRING_ERR
            | SET_BACKEND_REQ_FD
            | SET_INFLIGHT_FD
            | ADD_MEM_REG
            | SET_DEVICE_STATE_FD
    )
}

pub fn payload_u64(payload: &[u8], at: usize) -> Option<u64> {
    let bytes = payload.get(at..at + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// A little-endian u32 of a payload, if it has one.
pub fn payload_u32(payload: &[u8], at: usize) -> Option<u32> {
    let bytes = payload.get(at..at + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Whether the back-end answers NEED_REPLY, as vhost's handler decides
/// it: the virtio features it last reported (GET_FEATURES) include
/// PROTOCOL_FEATURES and the acked protocol features include REPLY_ACK.
/// Fed with every request and reply that passes, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acks {
    reported_features: u64,
    protocol_features: u64,
}

impl Acks {
    fn enabled(&self) -> bool {
        self.reported_features & PROTOCOL_FEATURES_BIT != 0
            && self.protocol_features & REPLY_ACK_BIT != 0
    }

    /// Takes note of a request sent to the back-end; returns whether the
    /// back-end will answer it.
    pub fn request(&mut self, frame: &Frame) -> bool {
        if frame.flags & FLAG_REPLY != 0 {
            return false;
        }
        if frame.request == SET_PROTOCOL_FEATURES {
            // The handler takes the value before it answers.
            if let Some(value) = payload_u64(&frame.payload, 0) {
                self.protocol_features = value;
            }
        }
        has_reply(frame.request) || (frame.flags & FLAG_NEED_REPLY != 0 && self.enabled())
    }

    /// Takes note of a reply that passed.
    pub fn reply(&mut self, reply: &Frame) {
        if reply.request == GET_FEATURES {
            if let Some(value) = payload_u64(&reply.payload, 0) {
                self.reported_features = value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(request: u32, flags: u32, value: u64) -> Frame {
        Frame {
            request,
            flags,
            payload: value.to_le_bytes().to_vec(),
            fds: Vec::new(),
        }
    }

    #[test]
    fn need_reply_is_answered_only_with_reply_ack() {
        let mut acks = Acks::default();
        let kick = frame(SET_VRING_KICK, 1 | FLAG_NEED_REPLY, 0);
        assert!(!acks.request(&kick));
        assert!(acks.request(&frame(GET_FEATURES, 1, 0)));
        acks.reply(&frame(GET_FEATURES, 1 | FLAG_REPLY, PROTOCOL_FEATURES_BIT));
        assert!(!acks.request(&kick));
        // SET_PROTOCOL_FEATURES with NEED_REPLY is answered under its own
        // value.
        assert!(acks.request(&frame(
            SET_PROTOCOL_FEATURES,
            1 | FLAG_NEED_REPLY,
            REPLY_ACK_BIT
        )));
        assert!(acks.request(&kick));
        assert!(!acks.request(&frame(SET_VRING_KICK, 1, 0)));
        // A reply is never answered.
        assert!(!acks.request(&frame(GET_FEATURES, 1 | FLAG_REPLY, 0)));
    }
}
