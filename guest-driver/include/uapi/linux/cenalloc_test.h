/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * /dev/cenalloc_test: a test importer (like vgem for DRM tests). It owns a
 * few virtual devices, each with a constraint mask, a mapping-type list, DMA
 * limits (mask width, maximum segment, segment boundary) and a static or
 * dynamic importer mode, and lets userspace attach them to any dma-buf fd,
 * map, unmap, detach, see move_notify, and read or write through the
 * kernel mapping.
 */
#ifndef _UAPI_LINUX_CENALLOC_TEST_H
#define _UAPI_LINUX_CENALLOC_TEST_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define CENALLOC_TEST_MAX_DEVICES	8
#define CENALLOC_TEST_MAX_TYPES		8

/* Configure virtual device `device` (0..CENALLOC_TEST_MAX_DEVICES-1). */
#define CENALLOC_TEST_DEV_DYNAMIC	(1u << 0)	/* importer ops with move_notify */
/* With DYNAMIC: move_notify maps the attachment once more (kept to detach). */
#define CENALLOC_TEST_DEV_REMAP_IN_NOTIFY (1u << 1)
#define CENALLOC_TEST_DEV_FLAGS		(CENALLOC_TEST_DEV_DYNAMIC | \
					 CENALLOC_TEST_DEV_REMAP_IN_NOTIFY)

struct cenalloc_test_device_arg {
	__u32 device;
	__u32 mask;		/* constraint mask; 0 = attach with plain dma_buf_attach() */
	__u32 num_types;	/* importer mapping types, 1..CENALLOC_TEST_MAX_TYPES */
	__u32 types[CENALLOC_TEST_MAX_TYPES];	/* entries past num_types must be 0 */
	__u32 flags;		/* CENALLOC_TEST_DEV_* */
	/* DMA mask width, 24..64; 0: 32 if mask lists only DMA32 kinds, else 64 */
	__u32 dma_bits;
	__u32 max_segment;	/* dma_set_max_seg_size(), bytes; 0: no limit */
	__u64 seg_boundary;	/* dma_set_seg_boundary() mask; 0: none */
};

struct cenalloc_test_attach_arg {
	__s32 dmabuf_fd;	/* in */
	__u32 device;		/* in */
	__u32 handle;		/* out: attachment handle, valid for this open file */
	__u32 map_type;		/* out: negotiated mapping type (0 for plain attach) */
	__u64 reserved;		/* must be 0 */
};

struct cenalloc_test_segment {
	__u64 addr;		/* DMA address */
	__u64 len;
};

/*
 * MAP of a handle that is mapped fails with EBUSY, unless it is a dynamic
 * handle whose mapping move_notify invalidated: then the old mapping is
 * unmapped and a new one made (flags CENALLOC_TEST_MAP_F_REMAPPED).
 */
#define CENALLOC_TEST_MAP_F_REMAPPED	(1u << 0)

struct cenalloc_test_map_arg {
	__u32 handle;		/* in */
	__u32 direction;	/* in: 0 bidirectional, 1 to device, 2 from device */
	__u32 max_segments;	/* in: entries at segments_ptr */
	__u32 num_segments;	/* out: segments of the mapping (may exceed max) */
	__u64 segments_ptr;	/* in: struct cenalloc_test_segment[max_segments] */
	__u32 map_type;		/* out */
	__u32 flags;		/* out: CENALLOC_TEST_MAP_F_* */
	__u32 move_notifies;	/* out: move_notify calls seen by the handle */
	/* in: 1 = one segment per sg entry, 0 = merge entries contiguous in DMA space */
	__u32 raw;
};

#define CENALLOC_TEST_STATUS_MAPPED	(1u << 0)
#define CENALLOC_TEST_STATUS_INVALIDATED (1u << 1)	/* move_notify since the map */
#define CENALLOC_TEST_STATUS_DYNAMIC	(1u << 2)
#define CENALLOC_TEST_STATUS_NOTIFY_MAPPED (1u << 3)	/* REMAP_IN_NOTIFY's map */

struct cenalloc_test_status_arg {
	__u32 handle;		/* in */
	__u32 flags;		/* out: CENALLOC_TEST_STATUS_* */
	__u32 move_notifies;	/* out */
	__u32 reserved;		/* must be 0 */
};

struct cenalloc_test_handle_arg {
	__u32 handle;
	__u32 reserved;		/* must be 0 */
};

/* Read or write the buffer through the exporter's kernel mapping (vmap). */
struct cenalloc_test_rw_arg {
	__s32 dmabuf_fd;
	__u32 write;		/* 1: user -> buffer, 0: buffer -> user */
	__u64 offset;
	__u64 len;
	__u64 data_ptr;
};

/* Rename virtual device `device` (device_rename()): device-table keying. */
struct cenalloc_test_rename_arg {
	__u32 device;
	__u32 reserved;		/* must be 0 */
	char name[32];		/* NUL-terminated; "" restores cenalloc_test.N */
};

#define CENALLOC_TEST_IOC_MAGIC		'c'
#define CENALLOC_TEST_IOC_SET_DEVICE \
	_IOW(CENALLOC_TEST_IOC_MAGIC, 0, struct cenalloc_test_device_arg)
#define CENALLOC_TEST_IOC_ATTACH \
	_IOWR(CENALLOC_TEST_IOC_MAGIC, 1, struct cenalloc_test_attach_arg)
#define CENALLOC_TEST_IOC_DETACH \
	_IOW(CENALLOC_TEST_IOC_MAGIC, 2, struct cenalloc_test_handle_arg)
#define CENALLOC_TEST_IOC_MAP \
	_IOWR(CENALLOC_TEST_IOC_MAGIC, 3, struct cenalloc_test_map_arg)
#define CENALLOC_TEST_IOC_UNMAP \
	_IOW(CENALLOC_TEST_IOC_MAGIC, 4, struct cenalloc_test_handle_arg)
#define CENALLOC_TEST_IOC_RW \
	_IOW(CENALLOC_TEST_IOC_MAGIC, 5, struct cenalloc_test_rw_arg)
#define CENALLOC_TEST_IOC_STATUS \
	_IOWR(CENALLOC_TEST_IOC_MAGIC, 6, struct cenalloc_test_status_arg)
#define CENALLOC_TEST_IOC_RENAME \
	_IOW(CENALLOC_TEST_IOC_MAGIC, 7, struct cenalloc_test_rename_arg)

#endif /* _UAPI_LINUX_CENALLOC_TEST_H */
