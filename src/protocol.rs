//! Rust mirror of the wire protocol, `guest-driver/cenalloc_proto.h`.
//!
//! The header is the one definition; `tests/protocol_layout.rs` compiles a C
//! program against it and checks every size, offset and constant below.
//!
//! Byte order: every field is little-endian on the wire. The structs hold
//! plain integers and are read and written byte for byte
//! ([`ByteValued`]), which is only correct on a little-endian host; the
//! `compile_error!` below keeps the crate from building anywhere else.

use vm_memory::ByteValued;

#[cfg(not(target_endian = "little"))]
compile_error!("cenalloc's wire structs are read byte for byte: little-endian hosts only");

pub const VIRTIO_ID_DMABUF: u32 = 37;
pub const CENALLOC_PROTOCOL_VERSION: u32 = 2;

pub const CENALLOC_VQ_CONTROL: u16 = 0;
pub const CENALLOC_VQ_EVENT: u16 = 1;
pub const CENALLOC_NUM_VQS: usize = 2;

pub const CENALLOC_PAGE_SIZE: u64 = 4096;

pub const CENALLOC_MAX_POOLS: usize = 5;
pub const CENALLOC_MAX_MAP_TYPES: usize = 8;
pub const CENALLOC_MAX_BATCH: u32 = 64;
pub const CENALLOC_MAX_POOL_RANGES: u32 = 256;
pub const CENALLOC_NAME_LEN: usize = 16;

pub const CENALLOC_BATCH_REF: u32 = 0x8000_0000;

pub const CENALLOC_F_ELASTIC: u32 = 0;
pub const CENALLOC_F_LEASE: u32 = 1;
/// Cross-VM sharing. Defined, not offered yet: the device side lands in
/// steps (docs/design/cross-vm-sharing.md), and until it does opcodes
/// 19-23 answer `EOPNOTSUPP` as any unknown opcode.
pub const CENALLOC_F_SHARE: u32 = 8;
/// The importer's window: its VIRTIO shared memory region id.
pub const CENALLOC_SHM_WINDOW: u8 = 0;
/// `map_resp.allocator_id` of an imported buffer.
pub const CENALLOC_ALLOCATOR_WINDOW: u32 = 0xffff_ffff;
pub const CENALLOC_DRIVER_ID_FIRST: u32 = 0x4000_0000;

pub const CENALLOC_KIND_SYSTEM: u32 = 1 << 0;
pub const CENALLOC_KIND_CONTIG: u32 = 1 << 1;
pub const CENALLOC_KIND_DMA32: u32 = 1 << 2;
pub const CENALLOC_KIND_CONTIG_DMA32: u32 = 1 << 3;
pub const CENALLOC_KIND_WELL_KNOWN: u32 = 0x0000_00ff;
pub const CENALLOC_KIND_CUSTOM: u32 = 0xffff_ff00;
pub const CENALLOC_MASK_ANY: u32 = 0xffff_ffff;

pub const CENALLOC_MAP_SG: u32 = 1;
pub const CENALLOC_MAP_CONTIG: u32 = 2;
pub const CENALLOC_MAP_PRIVATE_FIRST: u32 = 0x8000;
pub const CENALLOC_MAP_PRIVATE_LAST: u32 = 0xffff;

pub const CENALLOC_PLACE_CONTIG: u32 = 1 << 0;
pub const CENALLOC_PLACE_DMA32: u32 = 1 << 1;

pub const CENALLOC_CMD_GET_INFO: u16 = 1;
pub const CENALLOC_CMD_POOL_ADD: u16 = 2;
pub const CENALLOC_CMD_CREATE: u16 = 3;
pub const CENALLOC_CMD_ATTACH: u16 = 4;
pub const CENALLOC_CMD_DETACH: u16 = 5;
pub const CENALLOC_CMD_MAP: u16 = 6;
pub const CENALLOC_CMD_UNMAP: u16 = 7;
pub const CENALLOC_CMD_FREE: u16 = 8;
pub const CENALLOC_CMD_PHYS: u16 = 9;
pub const CENALLOC_CMD_SYNC: u16 = 10;
pub const CENALLOC_CMD_STATS: u16 = 11;
pub const CENALLOC_CMD_FILL: u16 = 12;
pub const CENALLOC_CMD_CHECKSUM: u16 = 13;
pub const CENALLOC_CMD_RESET: u16 = 14;
pub const CENALLOC_CMD_POOL_REMOVE: u16 = 15;
pub const CENALLOC_CMD_LEASE: u16 = 16;
pub const CENALLOC_CMD_LEASE_RETURN: u16 = 17;
pub const CENALLOC_CMD_LEASED_MAP: u16 = 18;
pub const CENALLOC_CMD_SHARE: u16 = 19;
pub const CENALLOC_CMD_UNSHARE: u16 = 20;
pub const CENALLOC_CMD_IMPORT: u16 = 21;
pub const CENALLOC_CMD_RELEASE: u16 = 22;
pub const CENALLOC_CMD_REVOKE_ACK: u16 = 23;

pub const CENALLOC_LEASE_MAX_SIZE: u64 = 1 << 20;
pub const CENALLOC_MAX_LEASE: u32 = 64;
pub const CENALLOC_MAX_LEASED_ATTACH: u32 = 16;

pub const CENALLOC_CREATE_F_ALL: u32 = 0;
pub const CENALLOC_ATTACH_F_MIGRATE: u32 = 1 << 0;
pub const CENALLOC_RESET_F_ALL: u32 = 0;

pub const CENALLOC_DIR_BIDIRECTIONAL: u32 = 0;
pub const CENALLOC_DIR_TO_DEVICE: u32 = 1;
pub const CENALLOC_DIR_FROM_DEVICE: u32 = 2;

pub const CENALLOC_MAP_F_ALLOCATED: u32 = 1 << 0;
pub const CENALLOC_MAP_F_MIGRATED: u32 = 1 << 1;
pub const CENALLOC_MAP_F_WINDOW: u32 = 1 << 2;

pub const CENALLOC_SHARE_F_WRITABLE: u32 = 1 << 0;
pub const CENALLOC_SHARE_F_MIGRATE: u32 = 1 << 1;
pub const CENALLOC_IMPORT_F_WRITABLE: u32 = 1 << 0;
pub const CENALLOC_IMPORT_F_MAPPED: u32 = 1 << 1;

pub const CENALLOC_SYNC_BEGIN: u32 = 1 << 0;
pub const CENALLOC_SYNC_END: u32 = 1 << 1;
pub const CENALLOC_SYNC_READ: u32 = 1 << 2;
pub const CENALLOC_SYNC_WRITE: u32 = 1 << 3;

pub const CENALLOC_FNV1A64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const CENALLOC_FNV1A64_PRIME: u64 = 0x0000_0100_0000_01b3;

pub const CENALLOC_EVENT_MIGRATED: u32 = 1;
pub const CENALLOC_EVENT_POOL_LOW: u32 = 2;
pub const CENALLOC_EVENT_LEASE_REVOKE: u32 = 3;
pub const CENALLOC_EVENT_SHARE_REVOKE: u32 = 4;
pub const CENALLOC_EVENT_SHARE_READY: u32 = 5;

/// SHARE_REVOKE's `data`: the serial in these bits, the reason above
/// [`CENALLOC_REVOKE_REASON_SHIFT`].
pub const CENALLOC_REVOKE_SERIAL_MASK: u64 = (1 << 56) - 1;
pub const CENALLOC_REVOKE_REASON_SHIFT: u32 = 56;
pub const CENALLOC_REVOKE_FINAL: u64 = 1;
pub const CENALLOC_REVOKE_MOVING: u64 = 2;

/// `cenalloc_pattern()`: splitmix64 of `seed + (i + 1) * golden`, the value
/// of 64-bit word `i` written by FILL.
pub fn cenalloc_pattern(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a 64 state, fed in pieces (CHECKSUM hashes a backing segment by
/// segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv1a64(pub u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(CENALLOC_FNV1A64_OFFSET)
    }
}

impl Fnv1a64 {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut hash = self.0;
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(CENALLOC_FNV1A64_PRIME);
        }
        self.0 = hash;
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Defines a wire struct: `#[repr(C)]`, zero-initialisable, [`ByteValued`],
/// with its size checked at compile time (every struct is a multiple of 8
/// bytes with explicit padding; the layout test checks every offset).
macro_rules! wire_struct {
    ($(#[$meta:meta])* $name:ident = $size:expr, { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        const _: () = assert!(std::mem::size_of::<$name>() == $size);

        // SAFETY: `$name` is `repr(C)`, holds only integers and integer arrays
        // (every bit pattern is valid), and has no implicit padding: its size
        // equals the sum of its fields (asserted above against the header's
        // size, offsets checked by tests/protocol_layout.rs).
        unsafe impl ByteValued for $name {}
    };
}

wire_struct!(
    /// `struct cenalloc_config_pool`: one pool the device asks the guest to donate.
    ConfigPool = 40, {
        kinds: u32,
        placement: u32,
        size: u64,
        align: u32,
        max_mb: u32,
        name: [u8; CENALLOC_NAME_LEN],
    }
);

wire_struct!(
    /// `struct cenalloc_config`: the device config space.
    Config = 240, {
        version: u32,
        num_pools: u32,
        max_buffers: u32,
        max_attachments: u32,
        max_buffer_size: u64,
        max_total_bytes: u64,
        max_batch: u32,
        max_segments: u32,
        pools: [ConfigPool; CENALLOC_MAX_POOLS],
    }
);

wire_struct!(
    /// `struct cenalloc_batch_hdr`: start of the readable part of a chain.
    BatchHdr = 8, {
        num_cmds: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_batch_resp`: start of the writable part of a chain.
    BatchResp = 8, {
        status: u32,
        num_done: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_cmd_hdr`.
    CmdHdr = 16, {
        opcode: u16,
        flags: u16,
        len: u32,
        resp_len: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_resp_hdr`.
    RespHdr = 16, {
        status: u32,
        len: u32,
        needed: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_info_resp` (followed by `AllocatorInfo[num_allocators]`).
    InfoResp = 72, {
        version: u32,
        num_allocators: u32,
        max_buffers: u32,
        max_attachments: u32,
        max_buffer_size: u64,
        max_total_bytes: u64,
        num_buffers: u32,
        num_exporter_types: u32,
        exporter_types: [u32; CENALLOC_MAX_MAP_TYPES],
    }
);

wire_struct!(
    /// `struct cenalloc_allocator_info`.
    AllocatorInfo = 64, {
        id: u32,
        kinds: u32,
        placement: u32,
        fragmentation: u32,
        capacity: u64,
        free: u64,
        largest_free: u64,
        num_buffers: u32,
        reserved: u32,
        name: [u8; CENALLOC_NAME_LEN],
    }
);

wire_struct!(
    /// `struct cenalloc_range`: a guest-physical range.
    Range = 16, {
        addr: u64,
        len: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_pool_add_req` (followed by `Range[num_ranges]`).
    PoolAddReq = 8, {
        pool_index: u32,
        num_ranges: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_pool_remove_req` (followed by `Range[num_ranges]`).
    PoolRemoveReq = 8, {
        pool_index: u32,
        num_ranges: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_lease_req`.
    LeaseReq = 16, {
        allocator_id: u32,
        count: u32,
        size: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_lease_resp` (followed by `Range[num_extents]`).
    LeaseResp = 8, {
        num_extents: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_lease_return_req` (followed by `Range[num_ranges]`).
    LeaseReturnReq = 8, {
        allocator_id: u32,
        num_ranges: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_leased_attach`: one attachment of a LEASED_MAP.
    LeasedAttach = 48, {
        attach_id: u32,
        mask: u32,
        map_type: u32,
        num_types: u32,
        types: [u32; CENALLOC_MAX_MAP_TYPES],
    }
);

wire_struct!(
    /// `struct cenalloc_leased_map_req` (followed by
    /// `LeasedAttach[num_attachments]`).
    LeasedMapReq = 40, {
        buffer_id: u32,
        initial_mask: u32,
        size: u64,
        extent: u64,
        map_index: u32,
        direction: u32,
        num_attachments: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_create_req`.
    CreateReq = 16, {
        size: u64,
        flags: u32,
        initial_mask: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_create_resp`.
    CreateResp = 16, {
        buffer_id: u32,
        reserved: u32,
        size: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_attach_req`.
    AttachReq = 48, {
        buffer_id: u32,
        mask: u32,
        num_types: u32,
        reserved: u32,
        types: [u32; CENALLOC_MAX_MAP_TYPES],
    }
);

wire_struct!(
    /// `struct cenalloc_attach_resp`.
    AttachResp = 16, {
        attach_id: u32,
        map_type: u32,
        flags: u32,
        access_mask: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_detach_req`.
    DetachReq = 8, {
        attach_id: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_map_req`.
    MapReq = 8, {
        attach_id: u32,
        direction: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_map_resp` (followed by `Range[num_segments]`).
    MapResp = 24, {
        map_type: u32,
        num_segments: u32,
        allocator_id: u32,
        flags: u32,
        size: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_unmap_req`.
    UnmapReq = 8, {
        attach_id: u32,
        direction: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_free_req`.
    FreeReq = 8, {
        buffer_id: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_phys_req`.
    PhysReq = 8, {
        buffer_id: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_phys_resp`.
    PhysResp = 16, {
        addr: u64,
        len: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_sync_req`.
    SyncReq = 8, {
        buffer_id: u32,
        flags: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_fill_req`.
    FillReq = 16, {
        buffer_id: u32,
        reserved: u32,
        seed: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_checksum_req`.
    ChecksumReq = 8, {
        buffer_id: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_checksum_resp`.
    ChecksumResp = 16, {
        checksum: u64,
        len: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_reset_req`.
    ResetReq = 8, {
        flags: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_reset_resp`: what a RESET dropped.
    ResetResp = 16, {
        buffers: u32,
        reserved: u32,
        donated: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_share_req`, version 1 (opcodes 19 on take sized
    /// payloads: a longer request is zero past this size).
    ShareReq = 32, {
        buffer_id: u32,
        flags: u32,
        group: [u8; CENALLOC_NAME_LEN],
        reserved: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_share_resp`, version 1.
    ShareResp = 24, {
        token: u64,
        size: u64,
        flags: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_unshare_req`, version 1.
    UnshareReq = 16, {
        buffer_id: u32,
        flags: u32,
        token: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_unshare_resp`, version 1.
    UnshareResp = 8, {
        revoked: u32,
        forced: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_import_req`, version 1.
    ImportReq = 16, {
        token: u64,
        flags: u32,
        initial_mask: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_import_resp`, version 1.
    ImportResp = 32, {
        buffer_id: u32,
        flags: u32,
        size: u64,
        window_offset: u64,
        window_len: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_release_req`, version 1.
    ReleaseReq = 8, {
        buffer_id: u32,
        reserved: u32,
    }
);

wire_struct!(
    /// `struct cenalloc_revoke_ack_req`, version 1.
    RevokeAckReq = 16, {
        buffer_id: u32,
        reserved: u32,
        serial: u64,
    }
);

wire_struct!(
    /// `struct cenalloc_event`: one device → driver notice on the event queue.
    Event = 16, {
        #[doc = "`CENALLOC_EVENT_*`"]
        event_type: u32,
        buffer_id: u32,
        data: u64,
    }
);

/// Encodes a name NUL-padded into a fixed wire field (truncated to
/// `CENALLOC_NAME_LEN - 1` bytes so it always ends with a NUL).
pub fn encode_name(name: &str) -> [u8; CENALLOC_NAME_LEN] {
    let mut out = [0u8; CENALLOC_NAME_LEN];
    let bytes = name.as_bytes();
    let len = bytes.len().min(CENALLOC_NAME_LEN - 1);
    out[..len].copy_from_slice(&bytes[..len]);
    out
}

/// A status word: 0 or a negative errno, as the two's complement `__le32`.
pub fn status_of_errno(errno: i32) -> u32 {
    (-errno.abs()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        let mut empty = Fnv1a64::default();
        empty.update(b"");
        assert_eq!(empty.finish(), 0xcbf2_9ce4_8422_2325);
        let mut a = Fnv1a64::default();
        a.update(b"a");
        assert_eq!(a.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut foobar = Fnv1a64::default();
        foobar.update(b"foo");
        foobar.update(b"bar");
        assert_eq!(foobar.finish(), 0x85944171f73967e8);
    }

    #[test]
    fn splitmix64_matches_reference() {
        // splitmix64 with state 0: first output is 0xe220a8397b1dcdaf.
        assert_eq!(cenalloc_pattern(0, 0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn names_are_nul_padded_and_truncated() {
        assert_eq!(&encode_name("dma")[..4], b"dma\0");
        let long = encode_name("a-very-long-pool-name");
        assert_eq!(long[CENALLOC_NAME_LEN - 1], 0);
        assert_eq!(&long[..15], b"a-very-long-poo");
    }

    #[test]
    fn status_is_negative_errno() {
        assert_eq!(status_of_errno(libc::EINVAL) as i32, -libc::EINVAL);
        assert_eq!(status_of_errno(-libc::ENOSPC) as i32, -libc::ENOSPC);
    }
}
