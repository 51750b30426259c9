/* SPDX-License-Identifier: (GPL-2.0 OR BSD-3-Clause) */
/*
 * cenalloc virtio device wire protocol (virtio device ID 37, VIRTIO_ID_DMABUF).
 *
 * This header is the one definition of the protocol between the guest driver
 * (cenalloc.ko) and the device back-end (cenallocd). The Rust mirror lives in
 * src/protocol.rs and a test (tests/protocol_layout.rs) compiles a C program
 * against this file and checks every size, offset and constant.
 *
 * All fields are little-endian. Every struct has a fixed size that is a
 * multiple of 8 bytes, with explicit padding that must be zero.
 *
 * Queues
 *   0: control queue. One descriptor chain carries one batch: the readable
 *      part holds a struct cenalloc_batch_hdr followed by num_cmds commands;
 *      the writable part receives a struct cenalloc_batch_resp followed, for
 *      each command in order, by a struct cenalloc_resp_hdr and a response
 *      payload slot of exactly the resp_len bytes the command asked for.
 *      Commands run in order; the first failure stops the batch and every
 *      later command is answered -ECANCELED. Commands that succeeded before
 *      the failure keep their effects; the failed command changes nothing.
 *      The framing is checked before any command runs: a bad batch header,
 *      command header framing (len or resp_len not a multiple of 8, a
 *      payload past the readable part, trailing bytes, a resp_len above
 *      16 MiB, a whole answer above 32 MiB) or a malformed chain gets only a batch_resp with -EINVAL and
 *      num_done 0; a writable part smaller than the whole answer gets one
 *      with -ENOSPC. A chain whose writable part cannot hold a batch_resp
 *      is returned with 0 bytes written.
 *   1: event queue. The driver posts writable buffers of at least
 *      sizeof(struct cenalloc_event); the device fills one event per buffer.
 *
 * An invalid ring state stops a queue: an avail index more than the queue
 * size away from the device's own, a head outside the descriptor table, a
 * chain that cannot be walked to its end (a descriptor loop, a next index
 * outside its table, an unreadable or nested indirect table, more than
 * 4 GiB in total), rings that are missing or outside guest RAM, a kick in
 * error. The device then uses that ring no more (the chain it gave up on
 * is not returned), logs why once, and serves it again only after the VMM
 * restarts the queue, which a virtio device reset (driver reload) does. The
 * device state is kept. A malformed chain that can be walked is answered as
 * described above.
 *
 * Long batches: the device's work on guest memory (zeroing new backing and
 * copying a migrated buffer in MAP, FILL, CHECKSUM) goes in steps of at
 * most 64 KiB, so that the VMM never waits for a whole batch: when it stops
 * the control ring (GET_VRING_BASE) while a batch runs, the device stops
 * after the current step and hands the chain back unanswered (the ring's
 * base does not count it). When the ring runs again and hands out the same
 * chain, the batch goes on where it stopped: the driver sees one answer, as
 * if nothing had happened. If another chain is there instead (the driver
 * reset the device meanwhile), the unfinished batch is abandoned: a MAP in
 * progress gives its new backing back (a migrated buffer's contents are
 * lost), a FILL in progress leaves part of its pattern written. Everything
 * else a command does is short; STATS is bounded by its size (4 MiB).
 *
 * A command is a struct cenalloc_cmd_hdr followed by len payload bytes.
 *
 * Batch references: in an id field of a command, the value
 * CENALLOC_BATCH_REF | i names the id produced by command i (0-based) of the
 * same batch (the buffer id of a CREATE, the attachment id of an ATTACH).
 * Ids handed out by the device never have CENALLOC_BATCH_REF set and are
 * never 0.
 *
 * Status values are 0 or a negative Linux errno stored as a two's complement
 * __le32.
 *
 * Lifecycle of the device state
 *   The device state (donated pool memory, buffers, attachments, mappings,
 *   pending events) belongs to the guest driver. It is created by commands
 *   and dropped only by
 *   - RESET, which the driver sends first at every probe (before GET_INFO
 *     and POOL_ADD) and at remove (before it resets the virtio device);
 *   - the end of the front-end's vhost-user connection (QEMU exits, or the
 *     back-end restarts: nothing is kept across connections).
 *   A virtio device reset (status 0) and stopping or restarting the rings
 *   (the VMM does so at a VM pause/resume, a snapshot, a cancelled
 *   migration, a guest reboot) leave it untouched: the driver finds every
 *   buffer where it was. A guest that reboots without the driver leaves a
 *   stale state behind; it is harmless (the device touches guest RAM only
 *   when a command asks it to) and goes at the next probe's RESET.
 *
 *   Events produced while the event ring is stopped wait in the device (up
 *   to 1024, then further ones are dropped and counted) and are delivered,
 *   oldest first, when it runs again. On a running event ring an event that
 *   finds no posted buffer is dropped and counted.
 */
#ifndef CENALLOC_PROTO_H
#define CENALLOC_PROTO_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
typedef uint16_t __le16;
typedef uint32_t __le32;
typedef uint64_t __le64;
#endif

#define VIRTIO_ID_DMABUF		37
#define CENALLOC_PROTOCOL_VERSION	2

#define CENALLOC_VQ_CONTROL		0
#define CENALLOC_VQ_EVENT		1
#define CENALLOC_NUM_VQS		2

#define CENALLOC_PAGE_SIZE		4096

/* Limits of the protocol itself (the device may announce smaller ones). */
#define CENALLOC_MAX_POOLS		5	/* pools in config space */
#define CENALLOC_MAX_MAP_TYPES		8	/* importer list in ATTACH */
#define CENALLOC_MAX_BATCH		64	/* commands in one chain */
#define CENALLOC_MAX_POOL_RANGES	256	/* ranges in one POOL_ADD */
#define CENALLOC_NAME_LEN		16

#define CENALLOC_BATCH_REF		0x80000000u

/*
 * Device feature bits (virtio feature bits 0-23 are the device's own).
 *
 * CENALLOC_F_ELASTIC: pools grow and shrink while the device runs. The size
 *   in config space is what the guest donates at probe; more POOL_ADDs grow
 *   a pool up to its max_mb (and, all pools together, a share of guest RAM
 *   the device chooses); POOL_REMOVE gives free memory back.
 * CENALLOC_F_LEASE: the device leases the driver free extents (LEASE,
 *   LEASE_RETURN), and the driver backs a buffer's first map from them
 *   without waiting (LEASED_MAP); the device may ask for them back
 *   (CENALLOC_EVENT_LEASE_REVOKE). MAP may then fail with -EAGAIN.
 * CENALLOC_F_SHARE: cross-VM sharing (SHARE, UNSHARE, IMPORT, RELEASE,
 *   REVOKE_ACK; events SHARE_REVOKE, SHARE_READY). An importing device
 *   has the shared memory region CENALLOC_SHM_WINDOW. Bits 2-7 stay
 *   reserved for pool management and leases. cenallocd does not offer
 *   this bit yet: the device side lands in steps
 *   (docs/design/cross-vm-sharing.md); until then opcodes 19-23 answer
 *   -EOPNOTSUPP like any unknown opcode.
 */
#define CENALLOC_F_ELASTIC		0
#define CENALLOC_F_LEASE		1
#define CENALLOC_F_SHARE		8
#define CENALLOC_SHM_WINDOW		0	/* VIRTIO shared memory region id */
#define CENALLOC_ALLOCATOR_WINDOW	0xffffffffu /* map_resp.allocator_id of an import */

/*
 * Ids the driver chooses itself (LEASED_MAP): CENALLOC_DRIVER_ID_FIRST ..
 * CENALLOC_BATCH_REF - 1. The device hands out ids below this range only.
 */
#define CENALLOC_DRIVER_ID_FIRST	0x40000000u

/*
 * Memory kinds: the bits of a constraint mask. A device's mask is the set of
 * kinds it can access; an allocator serves one or more kinds; a buffer's
 * access mask is the intersection of its attachments' masks. Bits 0-7 are
 * the well-known kinds; bits 8-31 are free for a pool configuration.
 */
#define CENALLOC_KIND_SYSTEM		(1u << 0) /* pages anywhere in guest RAM */
#define CENALLOC_KIND_CONTIG		(1u << 1) /* physically contiguous */
#define CENALLOC_KIND_DMA32		(1u << 2) /* pages below 4 GiB */
#define CENALLOC_KIND_CONTIG_DMA32	(1u << 3) /* contiguous, below 4 GiB */
#define CENALLOC_KIND_WELL_KNOWN	0x000000ffu
#define CENALLOC_KIND_CUSTOM		0xffffff00u
#define CENALLOC_MASK_ANY		0xffffffffu

/*
 * Mapping types, negotiated at ATTACH: the device walks its own (exporter)
 * list in priority order and picks the first type the importer also lists
 * and that can serve the buffer.
 */
#define CENALLOC_MAP_SG			1 /* scatter-gather list of segments */
#define CENALLOC_MAP_CONTIG		2 /* one contiguous physical range */
#define CENALLOC_MAP_PRIVATE_FIRST	0x8000 /* opaque driver-private types */
#define CENALLOC_MAP_PRIVATE_LAST	0xffff

/* Pool placement flags (config space) and allocator flags (GET_INFO). */
#define CENALLOC_PLACE_CONTIG		(1u << 0) /* one physically contiguous extent per range */
#define CENALLOC_PLACE_DMA32		(1u << 1) /* every range below 4 GiB */

/* ---------------------------------------------------------------------- */
/* Config space, read by the driver at probe.                              */
/* vhost-user carries at most 256 bytes of config space                    */
/* (VHOST_USER_MAX_CONFIG_SIZE; QEMU aborts on more): 40 + 5 * 40 = 240.   */

struct cenalloc_config_pool {
	__le32 kinds;		/* CENALLOC_KIND_* served by this pool */
	__le32 placement;	/* CENALLOC_PLACE_* the donated memory must fit */
	__le64 size;		/* bytes the device asks the guest to donate at probe */
	__le32 align;		/* required alignment of each range, bytes (power of 2) */
	__le32 max_mb;		/* CENALLOC_F_ELASTIC: largest size in MiB the pool
				 * may grow to (0: no limit of its own); else 0 */
	char name[CENALLOC_NAME_LEN];	/* NUL-padded */
};

struct cenalloc_config {
	__le32 version;			/* CENALLOC_PROTOCOL_VERSION */
	__le32 num_pools;		/* valid entries in pools[] */
	__le32 max_buffers;
	__le32 max_attachments;		/* per buffer */
	__le64 max_buffer_size;		/* bytes */
	__le64 max_total_bytes;		/* all backing together */
	__le32 max_batch;		/* commands per chain */
	__le32 max_segments;		/* segments one MAP can return */
	struct cenalloc_config_pool pools[CENALLOC_MAX_POOLS];
};

/* ---------------------------------------------------------------------- */
/* Control queue framing.                                                  */

struct cenalloc_batch_hdr {
	__le32 num_cmds;	/* 1..max_batch */
	__le32 reserved;
};

struct cenalloc_batch_resp {
	__le32 status;		/* 0, or the status of the first failed command */
	__le32 num_done;	/* commands that succeeded */
};

struct cenalloc_cmd_hdr {
	__le16 opcode;		/* CENALLOC_CMD_* */
	__le16 flags;		/* must be 0 */
	__le32 len;		/* payload bytes after this header, multiple of 8 */
	__le32 resp_len;	/* response payload slot bytes, multiple of 8 */
	__le32 reserved;
};

struct cenalloc_resp_hdr {
	__le32 status;		/* 0 or -errno */
	__le32 len;		/* payload bytes written into the slot */
	__le32 needed;		/* with -ENOSPC: payload bytes the answer needs */
	__le32 reserved;
};

enum cenalloc_opcode {
	CENALLOC_CMD_GET_INFO = 1,
	CENALLOC_CMD_POOL_ADD = 2,
	CENALLOC_CMD_CREATE = 3,
	CENALLOC_CMD_ATTACH = 4,
	CENALLOC_CMD_DETACH = 5,
	CENALLOC_CMD_MAP = 6,
	CENALLOC_CMD_UNMAP = 7,
	CENALLOC_CMD_FREE = 8,
	CENALLOC_CMD_PHYS = 9,
	CENALLOC_CMD_SYNC = 10,
	CENALLOC_CMD_STATS = 11,
	CENALLOC_CMD_FILL = 12,
	CENALLOC_CMD_CHECKSUM = 13,
	CENALLOC_CMD_RESET = 14,
	CENALLOC_CMD_POOL_REMOVE = 15,	/* CENALLOC_F_ELASTIC */
	CENALLOC_CMD_LEASE = 16,	/* CENALLOC_F_LEASE */
	CENALLOC_CMD_LEASE_RETURN = 17,	/* CENALLOC_F_LEASE */
	CENALLOC_CMD_LEASED_MAP = 18,	/* CENALLOC_F_LEASE */
	CENALLOC_CMD_SHARE = 19,	/* CENALLOC_F_SHARE */
	CENALLOC_CMD_UNSHARE = 20,	/* CENALLOC_F_SHARE */
	CENALLOC_CMD_IMPORT = 21,	/* CENALLOC_F_SHARE */
	CENALLOC_CMD_RELEASE = 22,	/* CENALLOC_F_SHARE */
	CENALLOC_CMD_REVOKE_ACK = 23,	/* CENALLOC_F_SHARE */
};

/* ---------------------------------------------------------------------- */
/* Payloads. "req" follows the cmd header, "resp" goes in the resp slot.   */

/* GET_INFO: no request payload. */
struct cenalloc_info_resp {
	__le32 version;
	__le32 num_allocators;		/* struct cenalloc_allocator_info that follow */
	__le32 max_buffers;
	__le32 max_attachments;
	__le64 max_buffer_size;
	__le64 max_total_bytes;
	__le32 num_buffers;		/* live buffers */
	__le32 num_exporter_types;	/* valid entries of exporter_types */
	__le32 exporter_types[CENALLOC_MAX_MAP_TYPES]; /* priority order */
	/* followed by struct cenalloc_allocator_info[num_allocators] */
};

struct cenalloc_allocator_info {
	__le32 id;			/* allocator index, pool priority order */
	__le32 kinds;			/* CENALLOC_KIND_* served */
	__le32 placement;		/* CENALLOC_PLACE_* of its memory */
	__le32 fragmentation;		/* per mille: 1000 * (1 - largest_free / free) */
	__le64 capacity;		/* bytes donated */
	__le64 free;			/* bytes backing no buffer (free extents
					 * and extents leased to the driver) */
	__le64 largest_free;		/* largest free extent (not leased), bytes */
	__le32 num_buffers;		/* buffers backed by it */
	__le32 reserved;
	char name[CENALLOC_NAME_LEN];
};

/*
 * POOL_ADD: the guest donates guest-physical ranges to pool pool_index, all
 * or nothing: every range is checked before the first is added. -ENOENT for
 * an unknown pool_index; -EINVAL for a bad num_ranges or payload length, or
 * a range that is empty or not page (or pool align) aligned; -ERANGE for a
 * range above the pool's placement limit; -EFAULT for a range not inside one
 * guest RAM region; -EEXIST for a range overlapping another range or memory
 * donated before; -ENOSPC when the pool would grow beyond its max_mb or
 * all pools together beyond the share of guest RAM the device allows, or
 * the pools would hold more ranges than the device keeps track of.
 */
struct cenalloc_range {
	__le64 addr;
	__le64 len;
};

struct cenalloc_pool_add_req {
	__le32 pool_index;	/* index into config pools[] */
	__le32 num_ranges;	/* 1..CENALLOC_MAX_POOL_RANGES ranges follow */
	/* followed by struct cenalloc_range[num_ranges] */
};

/*
 * POOL_REMOVE (CENALLOC_F_ELASTIC): the device gives guest-physical ranges
 * of pool pool_index back to the guest, all or nothing: every range is
 * checked before the first is removed. A range must start on the pool's
 * align, be a page multiple, lie in memory donated to that pool, and be
 * free: no byte of it backs a buffer or is leased. -ENOENT for an unknown
 * pool_index or memory the pool does not have; -EBUSY for memory in use;
 * -EINVAL for a bad num_ranges or payload length, or a range that is empty
 * or misaligned; -EEXIST for ranges that overlap each other; -ENOSPC when
 * the cut would leave the pools more ranges than the device keeps track of.
 * After success the device never touches the ranges again.
 */
struct cenalloc_pool_remove_req {
	__le32 pool_index;
	__le32 num_ranges;	/* 1..CENALLOC_MAX_POOL_RANGES ranges follow */
	/* followed by struct cenalloc_range[num_ranges] */
};

/*
 * LEASE (CENALLOC_F_LEASE): the device leases up to count extents of size
 * bytes of allocator allocator_id to the driver: each one physically
 * contiguous, aligned as the allocator aligns allocations, zeroed before the
 * answer. It may lease fewer (even none: it keeps an eighth of the
 * allocator free and caps each allocator's leased bytes); the answer holds
 * num_extents ranges (the slot must hold count of them). A leased extent
 * is still the allocator's memory; the device carves nothing else from it
 * until the driver uses it (LEASED_MAP) or gives it back (LEASE_RETURN).
 * -ENOENT for an unknown allocator; -EINVAL for size not a page multiple
 * or above CENALLOC_LEASE_MAX_SIZE, count 0 or above CENALLOC_MAX_LEASE.
 */
#define CENALLOC_LEASE_MAX_SIZE		(1u << 20)
#define CENALLOC_MAX_LEASE		64

struct cenalloc_lease_req {
	__le32 allocator_id;
	__le32 count;		/* 1..CENALLOC_MAX_LEASE */
	__le64 size;		/* bytes per extent, page multiple */
};

struct cenalloc_lease_resp {
	__le32 num_extents;	/* struct cenalloc_range that follow */
	__le32 reserved;
	/* followed by struct cenalloc_range[num_extents] */
};

/*
 * LEASE_RETURN (CENALLOC_F_LEASE): the driver gives back leased extents it
 * did not use, all or nothing. Each range must be exactly an extent leased
 * from allocator_id and not used or returned since (else -EPERM); -ENOENT
 * for an unknown allocator; -EINVAL for a bad num_ranges or length.
 */
struct cenalloc_lease_return_req {
	__le32 allocator_id;
	__le32 num_ranges;	/* 1..CENALLOC_MAX_POOL_RANGES ranges follow */
	/* followed by struct cenalloc_range[num_ranges] */
};

/*
 * LEASED_MAP (CENALLOC_F_LEASE): the first map of a buffer, backed by a
 * leased extent, in one command the driver need not wait for (it knows the
 * answer): it creates the buffer with id buffer_id, attaches every record
 * of the payload with its attach_id (both ids chosen by the driver from
 * CENALLOC_DRIVER_ID_FIRST up), and maps attachment record map_index in
 * direction on the extent at address extent. The buffer's backing is
 * [extent, extent + size); the rest of the extent goes back to its
 * allocator. All or nothing; the device validates everything as CREATE,
 * ATTACH and MAP would, and:
 *  - the extent must be leased and not used or returned since (else
 *    -EPERM: a report of memory the device did not lease, or leased twice);
 *  - its allocator must be the one the allocator rule picks for the buffer
 *    (the first allocator, in priority order, that serves a kind of the
 *    access mask and has room, room counting leased extents): else
 *    -ESTALE. A driver that uses the stock of the first allocator serving
 *    a kind of the mask at all always passes;
 *  - size (a page multiple) must not exceed the extent (-EINVAL);
 *  - every record's map_type must be the type the device negotiates for it
 *    (-EPROTO);
 *  - the ids must be in the driver's range (-EINVAL) and unused (-EEXIST).
 * A refused leased map changes nothing and is logged by the device. The
 * answer slot may be 0 bytes (nothing written) or hold a cenalloc_map_resp
 * and one range.
 */
#define CENALLOC_MAX_LEASED_ATTACH	16

struct cenalloc_leased_attach {
	__le32 attach_id;	/* driver-chosen */
	__le32 mask;		/* constraint mask of the importing device */
	__le32 map_type;	/* CENALLOC_MAP_* the driver negotiated */
	__le32 num_types;	/* 1..CENALLOC_MAX_MAP_TYPES */
	__le32 types[CENALLOC_MAX_MAP_TYPES];	/* importer's types, rest 0 */
};

struct cenalloc_leased_map_req {
	__le32 buffer_id;	/* driver-chosen */
	__le32 initial_mask;	/* as CREATE */
	__le64 size;		/* bytes, a page multiple */
	__le64 extent;		/* start of the leased extent */
	__le32 map_index;	/* record that maps */
	__le32 direction;	/* CENALLOC_DIR_* */
	__le32 num_attachments;	/* 1..CENALLOC_MAX_LEASED_ATTACH records follow */
	__le32 reserved;
	/* followed by struct cenalloc_leased_attach[num_attachments] */
};

/* CREATE */
#define CENALLOC_CREATE_F_ALL		0u	/* no flags defined yet */

struct cenalloc_create_req {
	__le64 size;		/* bytes, rounded up to CENALLOC_PAGE_SIZE */
	__le32 flags;		/* must be 0 */
	__le32 initial_mask;	/* 0 = none, else counts like an attachment's mask */
};

struct cenalloc_create_resp {
	__le32 buffer_id;
	__le32 reserved;
	__le64 size;		/* rounded size */
};

/* ATTACH */
struct cenalloc_attach_req {
	__le32 buffer_id;
	__le32 mask;		/* constraint mask of the importing device */
	__le32 num_types;	/* 1..CENALLOC_MAX_MAP_TYPES */
	__le32 reserved;
	__le32 types[CENALLOC_MAX_MAP_TYPES];	/* importer's mapping types */
};

/*
 * A late ATTACH whose mask the backing does not satisfy migrates it only if
 * no attachment holds a mapping (else -EBUSY). A driver that can revoke
 * mappings (Linux dynamic importers, move_notify) sends an UNMAP for each
 * revoked mapping before the ATTACH, in the same batch: no other command
 * is needed. The specification is docs/virtio-dmabuf.md.
 */
#define CENALLOC_ATTACH_F_MIGRATE	(1u << 0) /* next MAP migrates the backing */

struct cenalloc_attach_resp {
	__le32 attach_id;
	__le32 map_type;	/* negotiated CENALLOC_MAP_* */
	__le32 flags;		/* CENALLOC_ATTACH_F_* */
	__le32 access_mask;	/* buffer's access mask after this attach */
};

/* DETACH */
struct cenalloc_detach_req {
	__le32 attach_id;
	__le32 reserved;
};

/* MAP / UNMAP */
#define CENALLOC_DIR_BIDIRECTIONAL	0
#define CENALLOC_DIR_TO_DEVICE		1
#define CENALLOC_DIR_FROM_DEVICE	2

struct cenalloc_map_req {
	__le32 attach_id;
	__le32 direction;	/* CENALLOC_DIR_* */
};

#define CENALLOC_MAP_F_ALLOCATED	(1u << 0) /* this MAP allocated the backing */
#define CENALLOC_MAP_F_MIGRATED		(1u << 1) /* this MAP moved the backing */
#define CENALLOC_MAP_F_WINDOW		(1u << 2) /* the range is an offset in the window */

/*
 * If the slot is too small for every segment, the MAP fails with -ENOSPC,
 * resp_hdr.needed says how many payload bytes it needs, and the attachment
 * holds no new mapping (the backing, once allocated, stays allocated).
 * If the device cannot zero new backing (or copy a migrated buffer into it)
 * because it is no longer inside guest RAM, the MAP fails with -EFAULT and
 * the new backing is given back: the buffer has no backing and the next
 * MAP allocates (and zeroes) again. A migrated buffer's contents are lost.
 * With CENALLOC_F_LEASE: when the allocator the rule picks has room only in
 * extents leased to the driver, the MAP fails with -EAGAIN, changes
 * nothing, and the device sends CENALLOC_EVENT_LEASE_REVOKE for that
 * allocator: the driver gives its unused extents back and maps again.
 * With CENALLOC_F_SHARE, the MAP of an imported buffer (IMPORT) answers one
 * range, an offset and length in the window CENALLOC_SHM_WINDOW, with
 * allocator_id CENALLOC_ALLOCATOR_WINDOW and CENALLOC_MAP_F_WINDOW set.
 */
struct cenalloc_map_resp {
	__le32 map_type;	/* negotiated type */
	__le32 num_segments;	/* struct cenalloc_range that follow */
	__le32 allocator_id;	/* allocator backing the buffer, or
				 * CENALLOC_ALLOCATOR_WINDOW (an import) */
	__le32 flags;		/* CENALLOC_MAP_F_* */
	__le64 size;		/* buffer size */
	/* followed by struct cenalloc_range[num_segments] */
};

struct cenalloc_unmap_req {
	__le32 attach_id;
	__le32 direction;
};

/* FREE: drops the creator's reference. */
struct cenalloc_free_req {
	__le32 buffer_id;
	__le32 reserved;
};

/* PHYS: -ENODEV if the backing is not one contiguous range, -ENODATA if the
 * buffer has no backing yet. */
struct cenalloc_phys_req {
	__le32 buffer_id;
	__le32 reserved;
};

struct cenalloc_phys_resp {
	__le64 addr;
	__le64 len;
};

/* SYNC: CPU access bracketing. */
#define CENALLOC_SYNC_BEGIN		(1u << 0)
#define CENALLOC_SYNC_END		(1u << 1)
#define CENALLOC_SYNC_READ		(1u << 2)
#define CENALLOC_SYNC_WRITE		(1u << 3)

struct cenalloc_sync_req {
	__le32 buffer_id;
	__le32 flags;		/* exactly one of BEGIN/END, plus READ and/or WRITE */
};

/* STATS: no request payload; the response is a UTF-8 JSON snapshot of the
 * buffers, attachments, allocators and counters (not NUL-terminated, its
 * length is resp_hdr.len). A snapshot larger than 4 MiB fails with -E2BIG
 * (the device bounds the work of one STATS). */

/*
 * FILL: the device writes a pattern into the buffer's backing through its
 * own mapping of guest memory: 64-bit little-endian word i (byte offset 8*i)
 * is cenalloc_pattern(seed, i). The buffer must have backing (-ENODATA).
 * If any part of the backing is no longer inside guest RAM, FILL fails with
 * -EFAULT before writing anything.
 */
struct cenalloc_fill_req {
	__le32 buffer_id;
	__le32 reserved;
	__le64 seed;
};

/* CHECKSUM: FNV-1a 64 over every byte of the backing, in buffer order
 * (-ENODATA without backing). */
struct cenalloc_checksum_req {
	__le32 buffer_id;
	__le32 reserved;
};

struct cenalloc_checksum_resp {
	__le64 checksum;
	__le64 len;		/* bytes hashed */
};

#define CENALLOC_FNV1A64_OFFSET		0xcbf29ce484222325ull
#define CENALLOC_FNV1A64_PRIME		0x00000100000001b3ull

/* splitmix64 of (seed + i): the FILL pattern. */
static inline uint64_t cenalloc_pattern(uint64_t seed, uint64_t i)
{
	uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/*
 * RESET: drops every buffer, attachment, mapping, donated pool range and
 * pending event: the device is as a fresh connection finds it (the pools
 * have no memory until the next POOL_ADD). Commands after it in the same
 * batch run on the fresh state; batch references to ids produced before it
 * name objects that no longer exist (-ENOENT). The response says what was
 * dropped. Errors (nothing is dropped): -EINVAL for flags other than
 * CENALLOC_RESET_F_ALL or a reserved field that is not zero, -ENOSPC for a
 * response slot smaller than struct cenalloc_reset_resp.
 */
#define CENALLOC_RESET_F_ALL		0u	/* no flags defined yet */

struct cenalloc_reset_req {
	__le32 flags;		/* must be 0 */
	__le32 reserved;	/* must be 0 */
};

struct cenalloc_reset_resp {
	__le32 buffers;		/* live buffers dropped */
	__le32 reserved;
	__le64 donated;		/* bytes of donated pool memory forgotten */
};

/* ---------------------------------------------------------------------- */
/* Cross-VM sharing (CENALLOC_F_SHARE).                                    */

/*
 * A VM (A, the exporter) shares a buffer of its own memory with the VMs
 * (B, the importers) the operator put in a share group with it; B reaches
 * the buffer through its window, the shared memory region
 * CENALLOC_SHM_WINDOW of its device (the driver finds it with
 * virtio_get_shm_region()). Nothing of this is in config space.
 *
 * Sized payloads (opcodes 19 on). A request's len is at least the size of
 * the version-1 struct below (else -EINVAL); bytes past the size the
 * device knows must be 0 (else -E2BIG), so a newer driver works with an
 * older device as long as it asks for nothing new. The response slot must
 * hold the version-1 answer (else -ENOSPC, needed = the device's whole
 * answer); the device writes min(slot, its answer) bytes and says how many
 * in resp_hdr.len. Every reserved field is 0 and every flag not defined is
 * 0 (else -EINVAL).
 *
 * Statuses new with sharing: -EAGAIN (the window does not hold the buffer
 * yet: CENALLOC_EVENT_SHARE_READY will say), -ENOLINK (revoked for good:
 * RELEASE it), -EACCES (a write through a read-only import), -EIO (the VMM
 * refused to map the window; logged), -E2BIG (non-zero bytes past the
 * known payload); -ENOENT, -EEXIST, -EBUSY, -ENOSPC, -EINVAL, -EOPNOTSUPP
 * and -EPERM as each command says.
 */

/*
 * SHARE (A): publishes buffer buffer_id in share group group (one of the
 * groups A exports to; all 0: A's first; else -ENOENT) and answers the
 * token an importer names it by: never 0, not guessable by a guest. A
 * buffer is shared once at a time (-EEXIST). A shared buffer is one extent
 * of a share pool: a buffer backed elsewhere or in several extents follows
 * the late-attach rule, answered CENALLOC_SHARE_F_MIGRATE when nothing maps
 * it (the next MAP moves it), else -EBUSY. CENALLOC_SHARE_F_WRITABLE is
 * granted if asked and the group is read-write. -ENOSPC at A's share
 * limits (shares, shared bytes, bytes held back for importers that did not
 * let go); -EINVAL for a released buffer or an imported one (nothing is
 * re-exported).
 */
#define CENALLOC_SHARE_F_WRITABLE	(1u << 0) /* importers may write (if the group allows) */
#define CENALLOC_SHARE_F_MIGRATE	(1u << 1) /* answer: the next MAP moves the backing */

struct cenalloc_share_req {		/* version 1: 32 bytes */
	__le32 buffer_id;		/* the buffer to share */
	__le32 flags;			/* CENALLOC_SHARE_F_WRITABLE */
	char group[CENALLOC_NAME_LEN];	/* NUL-padded; all 0: A's first group */
	__le64 reserved;		/* must be 0 */
};

struct cenalloc_share_resp {		/* version 1: 24 bytes */
	__le64 token;			/* never 0; the importer's key */
	__le64 size;			/* bytes an importer sees */
	__le32 flags;			/* CENALLOC_SHARE_F_WRITABLE granted, _MIGRATE */
	__le32 reserved;		/* 0 */
};

/*
 * UNSHARE (A): revokes every import of the share (each importer gets
 * CENALLOC_EVENT_SHARE_REVOKE, CENALLOC_REVOKE_FINAL) and answers once the
 * last window is gone or its bound passed. forced counts the imports that
 * may still see the buffer until the importer's VMM lets go: a later FREE
 * keeps the buffer's extent from reuse until then. -ENOENT for a buffer
 * not shared under token. FREE of a shared buffer is UNSHARE then FREE, in
 * one command.
 */
struct cenalloc_unshare_req {		/* version 1: 16 bytes */
	__le32 buffer_id;		/* the shared buffer */
	__le32 flags;			/* must be 0 */
	__le64 token;			/* as SHARE answered it */
};

struct cenalloc_unshare_resp {		/* version 1: 8 bytes */
	__le32 revoked;			/* imports that were revoked */
	__le32 forced;			/* of which without acknowledgement or proof */
};

/*
 * IMPORT (B): finds the share of token (-ENOENT when B is in no group with
 * its exporter, for an unknown token and for a token of another group: no
 * oracle for tokens), checks the limits (-ENOSPC: B's imports, imported
 * bytes, mappings and room in its window; the group's importers of one
 * share), reserves a range of B's window (first fit, in A's host pages)
 * and creates an imported buffer: an id of B's, no backing in B's pools.
 * initial_mask counts as a first attachment's mask, as in CREATE. If A's
 * backing meets it, the device maps the window at once
 * (CENALLOC_IMPORT_F_MAPPED when that was done before the answer), else
 * CENALLOC_EVENT_SHARE_READY says when. -EPERM for
 * CENALLOC_IMPORT_F_WRITABLE in a read-only group; -EEXIST for a second
 * import of one share by one VM; -EBUSY when the mask needs a migration A
 * cannot do now; -EOPNOTSUPP when B has no window or did not accept
 * CENALLOC_F_SHARE.
 *
 * On an imported buffer B uses the ordinary commands: ATTACH and DETACH,
 * MAP and UNMAP (one range in the window, see MAP; -EAGAIN while the
 * window does not hold the buffer, -ENOLINK once the share is revoked for
 * good), SYNC, CHECKSUM (over A's backing), FILL (-EACCES on a read-only
 * import). PHYS answers -ENODEV, FREE -EINVAL; LEASED_MAP cannot name one.
 */
#define CENALLOC_IMPORT_F_WRITABLE	(1u << 0) /* asked / granted */
#define CENALLOC_IMPORT_F_MAPPED	(1u << 1) /* answer: the window holds it now */

struct cenalloc_import_req {		/* version 1: 16 bytes */
	__le64 token;			/* SHARE's answer, passed on by the guests */
	__le32 flags;			/* CENALLOC_IMPORT_F_WRITABLE */
	__le32 initial_mask;		/* as CREATE: 0, or B's first importer's mask */
};

struct cenalloc_import_resp {		/* version 1: 32 bytes */
	__le32 buffer_id;		/* B's id of the imported buffer */
	__le32 flags;			/* CENALLOC_IMPORT_F_* */
	__le64 size;			/* bytes of the buffer */
	__le64 window_offset;		/* in region CENALLOC_SHM_WINDOW, host-page aligned */
	__le64 window_len;		/* size rounded up to A's host pages */
};

/*
 * RELEASE (B): ends an import. -EBUSY while an attachment of it holds a
 * mapping; -ENOENT for an unknown import. Its window range is reused
 * once the device has proof that the window no longer holds the buffer.
 * No answer payload.
 */
struct cenalloc_release_req {		/* version 1: 8 bytes */
	__le32 buffer_id;		/* an imported buffer */
	__le32 reserved;		/* must be 0 */
};

/*
 * REVOKE_ACK (B): acknowledges a CENALLOC_EVENT_SHARE_REVOKE: 0 for the
 * import's current serial (again if repeated), -ENOENT for any other (a
 * late acknowledgement of an older revocation). The device unmaps the
 * window after the acknowledgement, or after a bound without one. No
 * answer payload.
 */
struct cenalloc_revoke_ack_req {	/* version 1: 16 bytes */
	__le32 buffer_id;		/* an imported buffer */
	__le32 reserved;		/* must be 0 */
	__le64 serial;			/* data of the SHARE_REVOKE event, serial bits */
};


/* ---------------------------------------------------------------------- */
/* Event queue.                                                            */

enum cenalloc_event_type {
	CENALLOC_EVENT_MIGRATED = 1,	/* buffer_id moved to new backing */
	CENALLOC_EVENT_POOL_LOW = 2,	/* allocator data has < 1/8 free */
	CENALLOC_EVENT_LEASE_REVOKE = 3, /* give allocator data's stock back */
	CENALLOC_EVENT_SHARE_REVOKE = 4, /* buffer_id: an import; data: below */
	CENALLOC_EVENT_SHARE_READY = 5,	/* buffer_id: an import; data: its serial */
};

/*
 * SHARE_REVOKE (CENALLOC_F_SHARE): the device will unmap import buffer_id
 * from the window. data holds the revocation's serial (the bits of
 * CENALLOC_REVOKE_SERIAL_MASK, for REVOKE_ACK) and its reason (data >>
 * CENALLOC_REVOKE_REASON_SHIFT): CENALLOC_REVOKE_FINAL, later MAPs answer
 * -ENOLINK; CENALLOC_REVOKE_MOVING, a SHARE_READY follows. SHARE_READY
 * (CENALLOC_F_SHARE): the window holds the buffer (its first map, after a
 * migration or a stop of the exporter). Both stay hints: MAP's -EAGAIN and
 * -ENOLINK say the same.
 */
#define CENALLOC_REVOKE_SERIAL_MASK	0x00ffffffffffffffull /* bits 0-55 */
#define CENALLOC_REVOKE_REASON_SHIFT	56
#define CENALLOC_REVOKE_FINAL		1 /* freed, unshared, A reset or gone */
#define CENALLOC_REVOKE_MOVING		2 /* A migrates or stopped: SHARE_READY follows */

struct cenalloc_event {
	__le32 type;
	__le32 buffer_id;	/* MIGRATED, SHARE_*: the buffer; others: 0 */
	__le64 data;		/* POOL_LOW, LEASE_REVOKE: allocator id;
				 * MIGRATED: new allocator id;
				 * SHARE_REVOKE: serial and reason;
				 * SHARE_READY: serial */
};

#endif /* CENALLOC_PROTO_H */
