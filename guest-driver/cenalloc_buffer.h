/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cenalloc buffers and attachments: the objects of the dma-buf exporter
 * (cenalloc_buffer.c) and of its attachments (cenalloc_attach.c).
 */
#ifndef CENALLOC_BUFFER_H
#define CENALLOC_BUFFER_H

#include <linux/dma-buf.h>
#include <linux/dma-direction.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/scatterlist.h>
#include <linux/types.h>

#include "cenalloc_dev.h"
#include "cenalloc_lease.h"
#include "cenalloc_reach.h"

struct cenalloc_attachment;
struct cenalloc_req;
struct cenalloc_user;

/*
 * Teardown never fails: every request that releasing an object needs (the
 * UNMAP of a mapping, the DETACH of an attachment, the FREE of a buffer) is
 * allocated when the object is made, and sent then (behind the buffer's
 * pending batch), merged into as few chains as max_batch allows, without
 * waiting for the device.
 */
struct cenalloc_buffer {
	struct cenalloc_dev *cdev;		/* holds a reference */
	struct dma_buf *dmabuf;
	struct mutex lock;			/* everything below */
	struct list_head node;			/* in cdev->buffers */
	u64 size;
	u32 buffer_id;				/* 0 until CREATE ran */
	u32 initial_mask;
	u32 access_mask;
	bool backed;				/* a MAP answer was accepted */
	u32 allocator_id;
	bool contiguous_promised;		/* an attachment got MAP_CONTIG */
	struct list_head attachments;
	unsigned int num_attachments;
	unsigned int revocable_maps;		/* MAPs of dynamic importers, ever */
	struct cenalloc_attachment *cpu_attach;	/* pins the backing for CPU */
	struct cenalloc_req *cpu_unmap_req;	/* its UNMAP */
	struct cenalloc_req *free_req;		/* FREE, allocated at create */
	struct cenalloc_user *user;		/* charged for the buffer */
	/* Checked segments of the last accepted MAP (kvmalloc), counted on
	 * the pool blocks under them.
	 */
	struct cenalloc_range *backing;
	u32 num_backing;
	/* Backing disowned: a MAP that may have moved it got no accepted
	 * answer; the next accepted MAP answer says where it is.
	 */
	bool backing_loose;
	struct list_head zombies;		/* struct cenalloc_zombie */
	/* Ids this driver chose for a LEASED_MAP (the buffer's, then its
	 * attachments'), kept from reuse until the FREE is on the ring.
	 */
	struct cenalloc_lease_id *lease_ids;
	unsigned int num_lease_ids;
	/* Where they are for a buffer with one attachment (the usual). */
	struct cenalloc_lease_id lease_ids_inline[2];
	/* Commands nobody waits for, not on the ring yet (cenalloc_batch.c). */
	struct cenalloc_req *pending;
	/*
	 * The LEASED_MAP of the first map while the transport holds it
	 * (cenalloc_req_hold()): written under ctrl_lock, NULL once it left
	 * for the ring. While it is set, pending is NULL: later commands go
	 * into it.
	 */
	struct cenalloc_req *held;
	void *vaddr;
	unsigned int vmap_count;
};

/*
 * A backing a migration left while revoked mappings made of it were still
 * DMA-mapped: their late unmap may still write into it (a swiotlb bounce
 * copy, a cache invalidation of a non-coherent device), and their
 * importer's DMA may still reach it. It stays owned and counted on its
 * blocks (no other buffer gets it, the shrinker keeps it) until the last
 * of those mappings is unmapped.
 */
struct cenalloc_zombie {
	struct list_head node;		/* in buffer->zombies */
	struct cenalloc_range *ranges;	/* the old backing (kvmalloc) */
	u32 num;
	unsigned int mappings;		/* revoked mappings made of it */
	bool owned;			/* its owner bits are the buffer's */
};

/*
 * One map_dma_buf() of an attachment, for begin/end_cpu_access syncs. A
 * revoked mapping (move_notify) is no longer mapped on the device; it stays
 * listed until its importer unmaps it, and keeps the backing it was made
 * of (@zombie once that backing moved).
 */
struct cenalloc_mapping {
	struct list_head node;		/* in attachment->mappings */
	struct sg_table sgt;
	enum dma_data_direction dir;
	bool revoked;
	struct cenalloc_zombie *zombie;
	struct cenalloc_req *unmap_req;	/* its UNMAP, allocated at map */
};

struct cenalloc_import;

struct cenalloc_attachment {
	struct cenalloc_buffer *buffer;
	struct list_head mappings;
	struct device *dev;			/* NULL for the CPU attachment */
	struct list_head node;			/* in buffer->attachments */
	u32 attach_id;				/* 0 until ATTACH ran */
	u32 mask;				/* effective: requested & reach */
	u32 requested;				/* importer's or device table's */
	struct cenalloc_reach reach;		/* derived from @dev */
	u32 map_type;
	u32 num_types;
	u32 types[CENALLOC_MAX_MAP_TYPES];
	unsigned int num_maps;			/* outstanding MAPs on the device */
	unsigned int num_sgts;			/* listed mappings, revoked too */
	unsigned int pins;			/* pin() minus unpin() calls */
	bool revocable;				/* importer has move_notify */
	bool api;				/* attached by cenalloc_mapping_attach() */
	struct cenalloc_import *import;		/* its arguments, API only */
	unsigned int revoked;			/* mappings revoked so far */
	int refused;				/* the device refused the ATTACH */
	struct cenalloc_req *detach_req;	/* its DETACH, allocated at attach */
	char dev_name[32];
};

extern const struct dma_buf_ops cenalloc_dmabuf_ops;
struct dma_buf *cenalloc_buffer_create(struct cenalloc_dev *cdev, u64 size,
				       bool rdwr, u32 initial_mask);
int cenalloc_buffer_phys(struct cenalloc_buffer *buffer, u64 *addr, u64 *len);
int cenalloc_buffer_fill(struct cenalloc_buffer *buffer, u64 seed);
int cenalloc_buffer_checksum(struct cenalloc_buffer *buffer, u64 *sum,
			     u64 *len);
unsigned int cenalloc_buffer_revoked_live(struct cenalloc_buffer *buffer);
void cenalloc_zombie_add(struct cenalloc_buffer *buffer,
			 struct cenalloc_zombie *z);
void cenalloc_zombie_put(struct cenalloc_buffer *buffer,
			 struct cenalloc_zombie *z);

#endif /* CENALLOC_BUFFER_H */
