/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * /dev/cenalloc: constraint-enabled dma-buf allocation.
 *
 * Every struct is versioned by its size (encoded in the ioctl number);
 * reserved fields and undefined flag bits must be zero (-EINVAL otherwise).
 *
 * Access: the node is mode 0660 (root:root unless a udev rule gives it a
 * group); whoever opens it may CREATE and ask INFO. PHYS needs
 * CAP_SYS_ADMIN or membership of the group named by cenalloc.ko's phys_gid
 * parameter (-EPERM). FILL needs a dma-buf fd open for writing and CHECKSUM
 * one open for reading (-EBADF). SET_DEVICE_MASK needs CAP_SYS_ADMIN.
 *
 * Limits: CREATE charges the caller's effective uid for the buffer until
 * the dma-buf is released: at most user_buffers buffers and user_percent
 * percent of the memory the pools may hold, grown (module parameters, defaults
 * 4096 and 50); beyond, -EDQUOT. CAP_SYS_RESOURCE is not limited. -ENOSPC
 * is the device's own limits (max_buffers, max_total_bytes), -E2BIG its
 * largest buffer (or size_limit_mb).
 *
 * The device is not trusted and may fail: every call that needs it waits
 * while the device keeps answering, until it has answered nothing for
 * timeout_ms (module parameter, default 10000), and can be killed;
 * -ETIMEDOUT when it did not answer (the device is then broken, unless it
 * kept answering others for 8 * timeout_ms), -EINTR on
 * a fatal signal, -EIO when it is broken (until the driver is reloaded) or
 * answered something the driver refused to use. Closing and unmapping
 * never fail and send nothing they wait for, but they may wait (not
 * killable) for a call on the same buffer (a map, FILL, CHECKSUM, PHYS,
 * DMA_BUF_IOCTL_SYNC start) to end, itself within timeout_ms.
 */
#ifndef _UAPI_LINUX_CENALLOC_H
#define _UAPI_LINUX_CENALLOC_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* Memory kinds (constraint mask bits); equal to the wire protocol's. */
#define CENALLOC_KIND_SYSTEM		(1u << 0)
#define CENALLOC_KIND_CONTIG		(1u << 1)
#define CENALLOC_KIND_DMA32		(1u << 2)
#define CENALLOC_KIND_CONTIG_DMA32	(1u << 3)
#define CENALLOC_MASK_ANY		0xffffffffu

/* Mapping types; equal to the wire protocol's. */
#define CENALLOC_MAP_SG			1
#define CENALLOC_MAP_CONTIG		2
#define CENALLOC_MAP_PRIVATE_FIRST	0x8000
#define CENALLOC_MAP_PRIVATE_LAST	0xffff

/* CENALLOC_IOC_CREATE flags */
#define CENALLOC_CREATE_CLOEXEC		(1u << 0)	/* fd gets O_CLOEXEC */
#define CENALLOC_CREATE_RDWR		(1u << 1)	/* fd is O_RDWR (else O_RDONLY) */
#define CENALLOC_CREATE_VALID_FLAGS	(CENALLOC_CREATE_CLOEXEC | CENALLOC_CREATE_RDWR)

struct cenalloc_create_arg {
	__u64 size;		/* in: bytes, rounded up to the page size */
	__u32 flags;		/* in: CENALLOC_CREATE_* */
	__u32 initial_mask;	/* in: 0, or the mask of a device the buffer will go to */
	__s32 fd;		/* out: dma-buf fd */
	__u32 reserved0;	/* must be 0 */
	__u64 reserved[2];	/* must be 0 */
};

/* Contiguous physical range of a buffer's backing (allocating it if needed
 * is NOT done: -ENODATA before the first map, -ENODEV if not contiguous).
 * Needs CAP_SYS_ADMIN or the phys_gid group (-EPERM).
 */
struct cenalloc_phys_arg {
	__s32 fd;		/* in: a /dev/cenalloc dma-buf fd */
	__u32 flags;		/* must be 0 */
	__u64 addr;		/* out */
	__u64 len;		/* out */
	__u64 reserved;		/* must be 0 */
};

#define CENALLOC_NAME_LEN		16

struct cenalloc_allocator_info {
	__u32 id;
	__u32 kinds;		/* CENALLOC_KIND_* served */
	__u32 placement;	/* bit 0: contiguous, bit 1: below 4 GiB */
	__u32 fragmentation;	/* per mille */
	__u64 capacity;		/* bytes donated */
	__u64 free;		/* bytes free */
	__u64 largest_free;	/* bytes */
	__u32 num_buffers;
	__u32 reserved;
	char name[CENALLOC_NAME_LEN];
};

#define CENALLOC_MAX_MAP_TYPES		8

struct cenalloc_info_arg {
	__u32 version;			/* out: wire protocol version */
	__u32 num_allocators;		/* out: allocators the device has */
	__u32 max_allocators;		/* in: entries at allocators_ptr */
	__u32 flags;			/* must be 0 */
	__u64 allocators_ptr;		/* in: struct cenalloc_allocator_info[max_allocators] */
	__u64 max_buffer_size;		/* out */
	__u32 max_buffers;		/* out */
	__u32 num_buffers;		/* out: live buffers */
	__u32 num_exporter_types;	/* out */
	__u32 exporter_types[CENALLOC_MAX_MAP_TYPES];	/* out: priority order */
	__u32 reserved;			/* must be 0 */
};

/* Diagnostics that prove the host sees the guest's bytes. CHECKSUM needs
 * an fd open for reading, FILL one open for writing (-EBADF).
 */
struct cenalloc_checksum_arg {
	__s32 fd;		/* in */
	__u32 flags;		/* must be 0 */
	__u64 checksum;		/* out: FNV-1a 64 computed by the device */
	__u64 len;		/* out: bytes hashed */
};

struct cenalloc_fill_arg {
	__s32 fd;		/* in */
	__u32 flags;		/* must be 0 */
	__u64 seed;		/* in: word i becomes cenalloc_pattern(seed, i) */
};

/* Constraint mask of an in-kernel device that knows nothing of cenalloc,
 * used when it attaches with plain dma_buf_attach().
 */
#define CENALLOC_DEVICE_NAME_LEN	64

struct cenalloc_device_mask_arg {
	char name[CENALLOC_DEVICE_NAME_LEN];	/* dev_name(), NUL-terminated */
	__u32 mask;		/* 0 removes the entry */
	__u32 flags;		/* must be 0 */
};

#define CENALLOC_IOC_MAGIC	'C'
#define CENALLOC_IOC_CREATE	_IOWR(CENALLOC_IOC_MAGIC, 0, struct cenalloc_create_arg)
#define CENALLOC_IOC_PHYS	_IOWR(CENALLOC_IOC_MAGIC, 1, struct cenalloc_phys_arg)
#define CENALLOC_IOC_INFO	_IOWR(CENALLOC_IOC_MAGIC, 2, struct cenalloc_info_arg)
#define CENALLOC_IOC_CHECKSUM	_IOWR(CENALLOC_IOC_MAGIC, 3, struct cenalloc_checksum_arg)
#define CENALLOC_IOC_FILL	_IOW(CENALLOC_IOC_MAGIC, 4, struct cenalloc_fill_arg)
#define CENALLOC_IOC_SET_DEVICE_MASK _IOW(CENALLOC_IOC_MAGIC, 5, struct cenalloc_device_mask_arg)

#endif /* _UAPI_LINUX_CENALLOC_H */
