/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cenalloc device state (cenalloc_dev.c): what the driver knows of one
 * virtio device, its lifetime, and the one device /dev/cenalloc serves.
 *
 * Lifetimes: struct cenalloc_dev is reference counted (kref). The virtio
 * driver holds one reference from probe to remove, every buffer holds one
 * until its dma-buf is released, every open /dev/cenalloc file none (it
 * looks the device up per ioctl). The donated pool memory is freed at the
 * last put, when no buffer can reach it any more.
 *
 * Locking order: dma_resv (taken by the dma-buf core) -> cdev->lock ->
 * buffer->lock -> cdev->ctrl_lock (spinlock, irq). The config, exporter
 * types and allocator list cached at probe never change afterwards and are
 * read without a lock.
 *
 * The driver's files form layers; each includes only the headers of the
 * layers below it:
 *   cenalloc_main.c (virtio driver, module)
 *   cenalloc_ioctl.c, cenalloc_debugfs.c
 *   cenalloc_api.c (exported in-kernel API)
 *   cenalloc_buffer.c (the dma-buf exporter)
 *   cenalloc_attach.c (dma-buf attachments)
 *   cenalloc_batch.c (attachment commands to the device), cenalloc_sg.c,
 *   cenalloc_negotiate.c, cenalloc_devmask.c, cenalloc_reach.c
 *   cenalloc_shrink.c (memory pressure)
 *   cenalloc_lease.c (leased extents)
 *   cenalloc_pool.c, cenalloc_vq.c (transport), cenalloc_quota.c
 *   cenalloc_dev.c (this state)
 */
#ifndef CENALLOC_DEV_H
#define CENALLOC_DEV_H

#include <linux/atomic.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rbtree.h>
#include <linux/rwlock.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "cenalloc_pool.h"
#include "cenalloc_proto.h"

struct cenalloc_leases;
struct shrinker;
struct virtio_device;
struct virtqueue;

#define CENALLOC_EVENT_BUFS	16
#define CENALLOC_MAX_ALLOCATORS	32
#define CENALLOC_LATENCY_SAMPLES	1024

/* The last CENALLOC_LATENCY_SAMPLES latencies of one kind, in ns. */
struct cenalloc_latency {
	u32 ns[CENALLOC_LATENCY_SAMPLES];
	unsigned int next;		/* ring position */
	unsigned int count;		/* valid samples, <= the ring size */
};

struct cenalloc_dev {
	struct kref ref;
	struct virtio_device *vdev;		/* NULL after remove */
	struct mutex lock;			/* buffers list, info cache */

	/*
	 * Control queue. removed and broken are written under ctrl_lock
	 * (WRITE_ONCE) and only ever go from false to true; readers outside
	 * the lock use READ_ONCE and take a stale false as "try, and let the
	 * transport refuse under the lock".
	 */
	spinlock_t ctrl_lock;			/* everything down to post_kick */
	struct virtqueue *ctrl_vq;
	wait_queue_head_t ctrl_wait;		/* answers reaped, ring space */
	bool removed;				/* new requests fail -ENODEV */
	bool broken;				/* timed out: new requests -EIO */
	unsigned int inflight;
	unsigned long progress;			/* jiffies: last answer, or work */
	unsigned int unkicked;			/* posted chains not kicked yet */
	unsigned int pollers;			/* submitters polling, callbacks off */
	struct list_head backlog;		/* posted requests waiting for room */
	unsigned int backlogged;
	struct list_head held;			/* posted, kept for the next chain */
	unsigned int num_held;
	struct list_head abandoned;		/* answered, submitter gone */
	u64 abandoned_reqs;			/* submitters that stopped waiting */
	struct work_struct abandoned_work;	/* undoes their effects */
	struct delayed_work post_kick;		/* kicks posted chains left alone */
	struct delayed_work held_work;		/* sends held chains left alone */

	/* Event queue. */
	spinlock_t event_lock;
	struct virtqueue *event_vq;
	struct cenalloc_event *event_bufs;	/* CENALLOC_EVENT_BUFS */
	atomic_t events_migrated;
	atomic_t events_pool_low;
	atomic_t events_lease_revoke;
	atomic_t events_unknown;
	/* Called for POOL_LOW and LEASE_REVOKE, in interrupt context. */
	void (*event_hook)(struct cenalloc_dev *cdev,
			   const struct cenalloc_event *event);

	/* Counters. */
	atomic64_t round_trips;			/* submitted and waited for */
	atomic64_t posted;			/* fire-and-forget */
	atomic64_t posted_errors;
	atomic64_t answers_rejected;		/* malformed or inconsistent */

	/* Transport figures (debugfs "transport"), under ctrl_lock. */
	u64 kicks;				/* virtqueue_notify() calls */
	u64 ctrl_interrupts;			/* control queue callbacks */
	u64 polls;				/* waited chains that polled */
	u64 polled;				/* ... and were reaped by polling */
	u64 poll_expired;			/* ... gave up: poll_us passed */
	u64 poll_yielded;			/* ... gave up: need_resched() */
	u64 chains_sent;
	u64 chains_done;
	struct cenalloc_latency lat_device;	/* queued -> answer reaped */
	struct cenalloc_latency lat_posted;	/* same, posted chains */
	struct cenalloc_latency lat_wake;	/* queued -> submitter runs */

	/* Config space and GET_INFO, cached at probe (under lock). */
	struct cenalloc_config config;
	u32 max_batch;
	u32 max_segments;
	u32 max_attachments;			/* per buffer, 0: no limit */
	u32 num_exporter_types;
	u32 exporter_types[CENALLOC_MAX_MAP_TYPES];
	u32 num_allocators;
	struct cenalloc_allocator_info allocators[CENALLOC_MAX_ALLOCATORS];

	struct cenalloc_pool pools[CENALLOC_MAX_POOLS];
	unsigned int num_pools;

	/* Negotiated device features. */
	bool elastic;				/* CENALLOC_F_ELASTIC */
	bool lease_feature;			/* CENALLOC_F_LEASE */
	bool quiesced;				/* remove: no growth, shrink, lease */

	/* Donated memory (cenalloc_pool.c). */
	struct rb_root blocks;			/* struct cenalloc_block by address */
	rwlock_t block_lock;
	atomic64_t pools_bytes;			/* given to the device or held */
	struct work_struct pool_low_work;
	unsigned long pool_low_pending;		/* bit per pool */
	struct shrinker *shrinker;		/* cenalloc_shrink.c */
	atomic64_t shrink_scans;
	atomic64_t shrunk_bytes;

	/* Leased extents (cenalloc_lease.c), NULL without leases. */
	struct cenalloc_leases *leases;

	/* Buffers alive (for debugfs and local limits). */
	struct list_head buffers;
	unsigned int num_buffers;
	u64 total_bytes;
};

struct cenalloc_dev *cenalloc_dev_new(struct virtio_device *vdev);
void cenalloc_dev_put(struct cenalloc_dev *cdev);
int cenalloc_dev_claim(struct cenalloc_dev *cdev);
void cenalloc_dev_publish(struct cenalloc_dev *cdev);
void cenalloc_dev_unpublish(struct cenalloc_dev *cdev);
struct cenalloc_dev *cenalloc_dev_get_current(void);

#endif /* CENALLOC_DEV_H */
