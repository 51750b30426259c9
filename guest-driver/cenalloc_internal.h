/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cenalloc.ko internals: the device state, the request transport, pools,
 * buffers and attachments.
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
 */
#ifndef CENALLOC_INTERNAL_H
#define CENALLOC_INTERNAL_H

#include <linux/completion.h>
#include <linux/dma-buf.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/cache.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "cenalloc_compat.h"
#include "cenalloc_proto.h"

struct virtio_device;
struct virtqueue;
struct dentry;

#define CENALLOC_EVENT_BUFS	16
#define CENALLOC_MAX_ALLOCATORS	32
#define CENALLOC_LATENCY_SAMPLES	1024

/* The last CENALLOC_LATENCY_SAMPLES latencies of one kind, in ns. */
struct cenalloc_latency {
	u32 ns[CENALLOC_LATENCY_SAMPLES];
	unsigned int next;		/* ring position */
	unsigned int count;		/* valid samples, <= the ring size */
};

/* One block of memory donated to a pool: 2^order pages at page. */
struct cenalloc_chunk {
	struct page *page;
	unsigned int order;
};

/* Guest memory donated to one pool of config space. */
struct cenalloc_pool {
	struct cenalloc_config_pool config;	/* as read from config space */
	struct cenalloc_chunk *chunks;		/* sorted by physical address */
	unsigned int num_chunks;
	struct cenalloc_range *extents;		/* chunks merged, sorted */
	unsigned int num_extents;
	unsigned int num_donated;		/* extents the device accepted */
	u64 reserve_addr, reserve_len;		/* boot-time reservation */
	u64 donated;				/* bytes accepted by the device */
	u64 longest_extent;			/* bytes */
	int status;				/* POOL_ADD result, 0 or -errno */
};

struct cenalloc_dev {
	struct kref ref;
	struct virtio_device *vdev;		/* NULL after remove */
	struct mutex lock;			/* buffers list, info cache */

	/* Control queue. */
	spinlock_t ctrl_lock;			/* ctrl_vq, removed, inflight */
	struct virtqueue *ctrl_vq;
	wait_queue_head_t ctrl_wait;		/* ring space freed */
	bool removed;				/* new requests fail -ENODEV */
	unsigned int inflight;
	unsigned int unkicked;			/* posted chains not kicked yet */
	unsigned int pollers;			/* submitters polling, callbacks off */
	struct delayed_work post_kick;		/* kicks posted chains left alone */

	/* Event queue. */
	spinlock_t event_lock;
	struct virtqueue *event_vq;
	struct cenalloc_event *event_bufs;	/* CENALLOC_EVENT_BUFS */
	atomic_t events_migrated;
	atomic_t events_pool_low;
	atomic_t events_unknown;

	/* Counters. */
	atomic64_t round_trips;			/* submitted and waited for */
	atomic64_t posted;			/* fire-and-forget */
	atomic64_t posted_errors;

	/* Transport figures (debugfs "transport"), under ctrl_lock. */
	u64 kicks;				/* virtqueue_notify() calls */
	u64 ctrl_interrupts;			/* control queue callbacks */
	u64 polled;				/* waited chains reaped by polling */
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

	/* Buffers alive (for debugfs and local limits). */
	struct list_head buffers;
	unsigned int num_buffers;
	u64 total_bytes;
};

/* ---- cenalloc_main.c ---- */
void cenalloc_dev_put(struct cenalloc_dev *cdev);
struct cenalloc_dev *cenalloc_dev_get_current(void);
u32 cenalloc_device_mask(struct device *dev);
#define CENALLOC_MASK_NAME_LEN	64
int cenalloc_mask_set(const char *name, u32 mask);
extern unsigned int cenalloc_size_limit_mb;
extern unsigned int cenalloc_buffer_limit;
extern unsigned int cenalloc_poll_us;

/* ---- cenalloc_vq.c: batches on the control queue ---- */
#define CENALLOC_REQ_INLINE_CMD		256
#define CENALLOC_REQ_INLINE_RESP	256

struct cenalloc_req {
	struct cenalloc_dev *cdev;
	struct completion done;
	bool posted;			/* fire-and-forget: freed on completion */
	bool polling;			/* its submitter polls for the answer */
	u64 queued_ns;			/* ktime when it went on the ring */
	int error;			/* transport error (-ENODEV, -EIO) */
	unsigned int num_cmds;
	u32 used_len;
	size_t cmd_len, cmd_cap;
	size_t resp_len;
	u8 *cmd_buf;			/* batch_hdr + commands */
	u8 *resp_buf;			/* batch_resp + (resp_hdr + slot)... */
	u32 resp_off[CENALLOC_MAX_BATCH];	/* offset of each resp_hdr */
	u32 slot_len[CENALLOC_MAX_BATCH];
	/* A small batch (the usual one) needs no allocation of its own. */
	u8 inline_cmd[CENALLOC_REQ_INLINE_CMD] __aligned(8);
	u8 inline_resp[CENALLOC_REQ_INLINE_RESP] ____cacheline_aligned;
};

struct cenalloc_req *cenalloc_req_alloc(struct cenalloc_dev *cdev);
void cenalloc_req_free(struct cenalloc_req *req);
void *cenalloc_req_add(struct cenalloc_req *req, u16 opcode, u32 len,
		       u32 resp_len);
int cenalloc_req_submit(struct cenalloc_req *req);
void cenalloc_req_post(struct cenalloc_req *req);
int cenalloc_req_status(struct cenalloc_req *req, unsigned int i);
void *cenalloc_req_resp(struct cenalloc_req *req, unsigned int i, u32 *len);
u32 cenalloc_req_needed(struct cenalloc_req *req, unsigned int i);
int cenalloc_vq_init(struct cenalloc_dev *cdev);
void cenalloc_vq_stop(struct cenalloc_dev *cdev);
void cenalloc_ctrl_done(struct virtqueue *vq);
void cenalloc_event_done(struct virtqueue *vq);
void cenalloc_latency_add(struct cenalloc_latency *lat, u64 ns);
int cenalloc_get_info(struct cenalloc_dev *cdev,
		      struct cenalloc_info_resp *info,
		      struct cenalloc_allocator_info *allocators,
		      unsigned int max_allocators);

/* ---- cenalloc_pool.c ---- */
int cenalloc_pools_donate(struct cenalloc_dev *cdev);
void cenalloc_pools_free(struct cenalloc_dev *cdev);
bool cenalloc_pools_contain(struct cenalloc_dev *cdev, u64 addr, u64 len);

/* ---- cenalloc_buffer.c ---- */
struct cenalloc_attachment;

struct cenalloc_buffer {
	struct cenalloc_dev *cdev;		/* holds a reference */
	struct dma_buf *dmabuf;
	struct mutex lock;			/* everything below */
	struct list_head node;			/* in cdev->buffers */
	u64 size;
	u32 buffer_id;				/* 0 until CREATE ran */
	u32 initial_mask;
	u32 access_mask;
	bool backed;
	u32 allocator_id;
	bool contiguous_promised;		/* an attachment got MAP_CONTIG */
	struct list_head attachments;
	unsigned int num_attachments;
	struct cenalloc_attachment *cpu_attach;	/* pins the backing for CPU */
	struct cenalloc_range *backing;		/* segments of the CPU map */
	u32 num_backing;
	void *vaddr;
	unsigned int vmap_count;

	/* Explicit parameters of the cenalloc_attach() in progress. */
	struct mutex explicit_mutex;
	struct task_struct *explicit_task;
	struct device *explicit_dev;
	u32 explicit_mask;
	u32 explicit_num_types;
	u32 explicit_types[CENALLOC_MAX_MAP_TYPES];
};

/* One map_dma_buf() of an attachment, for begin/end_cpu_access syncs. */
struct cenalloc_mapping {
	struct list_head node;		/* in attachment->mappings */
	struct sg_table sgt;
	enum dma_data_direction dir;
};

struct cenalloc_attachment {
	struct cenalloc_buffer *buffer;
	struct list_head mappings;
	struct device *dev;			/* NULL for the CPU attachment */
	struct list_head node;			/* in buffer->attachments */
	u32 attach_id;				/* 0 until ATTACH ran */
	u32 mask;
	u32 map_type;
	u32 num_types;
	u32 types[CENALLOC_MAX_MAP_TYPES];
	unsigned int num_maps;			/* outstanding MAPs */
	char dev_name[32];
};

extern const struct dma_buf_ops cenalloc_dmabuf_ops;
struct dma_buf *cenalloc_buffer_create(struct cenalloc_dev *cdev, u64 size,
				       bool rdwr, u32 initial_mask);
int cenalloc_buffer_phys(struct cenalloc_buffer *buffer, u64 *addr, u64 *len);
int cenalloc_buffer_fill(struct cenalloc_buffer *buffer, u64 seed);
int cenalloc_buffer_checksum(struct cenalloc_buffer *buffer, u64 *sum,
			     u64 *len);

/* ---- cenalloc_attach.c: attachments and their device side ---- */
int cenalloc_dmabuf_attach(struct dma_buf *dmabuf,
			   struct dma_buf_attachment *attach);
void cenalloc_dmabuf_detach(struct dma_buf *dmabuf,
			    struct dma_buf_attachment *attach);
struct sg_table *cenalloc_map_dma_buf(struct dma_buf_attachment *attach,
				      enum dma_data_direction dir);
void cenalloc_unmap_dma_buf(struct dma_buf_attachment *attach,
			    struct sg_table *sgt, enum dma_data_direction dir);
struct cenalloc_attachment *cenalloc_attachment_new(struct cenalloc_buffer *buffer,
						    struct device *dev, u32 mask,
						    const u32 *types, u32 num_types);
int cenalloc_attachment_map(struct cenalloc_attachment *a, u32 direction,
			    struct cenalloc_range **segments, u32 *num);
void cenalloc_attachment_release(struct cenalloc_attachment *a,
				 struct cenalloc_req *req);
int cenalloc_buffer_cpu_map(struct cenalloc_buffer *buffer);

/* ---- cenalloc_ioctl.c ---- */
int cenalloc_misc_register(void);
void cenalloc_misc_deregister(void);

/* ---- cenalloc_debugfs.c ---- */
void cenalloc_debugfs_init(struct cenalloc_dev *cdev);
void cenalloc_debugfs_exit(void);

#endif /* CENALLOC_INTERNAL_H */
