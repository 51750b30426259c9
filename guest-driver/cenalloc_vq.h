/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cenalloc request transport (cenalloc_vq.c): batches of commands on the
 * control queue, and the event queue.
 */
#ifndef CENALLOC_VQ_H
#define CENALLOC_VQ_H

#include <linux/cache.h>
#include <linux/list.h>
#include <linux/refcount.h>
#include <linux/scatterlist.h>
#include <linux/types.h>

#include "cenalloc_dev.h"

#define CENALLOC_REQ_INLINE_CMD		256
/* How long probe and remove wait for the device's answer to RESET. */
#define CENALLOC_RESET_TIMEOUT_MS	5000
#define CENALLOC_REQ_INLINE_RESP	256
/* Largest response slot of one command (the protocol's framing limit). */
#define CENALLOC_MAX_SLOT		(16u << 20)

/*
 * A request has up to two owners: whoever built it (until it calls
 * cenalloc_req_free()) and the ring (from the moment it is queued until the
 * device returns it or the device is reset). The last one frees it, so a
 * submitter that gives up waiting (timeout, fatal signal) never frees
 * memory the device may still write into.
 */
struct cenalloc_req {
	struct cenalloc_dev *cdev;
	refcount_t ref;
	struct list_head node;		/* backlog, held or abandoned list */
	/* While held (cenalloc_req_hold()): the pointer to it that its
	 * owner keeps, cleared when it leaves the held list (ctrl_lock).
	 */
	struct cenalloc_req **held_by;
	bool posted;			/* fire-and-forget: the ring owns it */
	bool queued;			/* on the ring (or its backlog) */
	bool answered;			/* returned by the device, or failed */
	bool abandoned;			/* its submitter stopped waiting */
	bool polling;			/* its submitter polls for the answer */
	u64 queued_ns;			/* ktime when it went on the ring */
	int error;			/* transport error (-ENODEV, -EIO) */
	unsigned int num_cmds;
	u32 used_len;
	size_t cmd_len, cmd_cap;
	size_t resp_len;
	u8 *cmd_buf;			/* batch_hdr + commands */
	u8 *resp_buf;			/* batch_resp + (resp_hdr + slot)... */
	struct page **resp_pages;	/* a paged answer buffer, else NULL */
	unsigned int resp_npages;
	struct sg_table resp_sgt;	/* its scatterlist */
	u32 resp_off[CENALLOC_MAX_BATCH];	/* offset of each resp_hdr */
	u32 slot_len[CENALLOC_MAX_BATCH];
	/* A small batch (the usual one) needs no allocation of its own. */
	u8 inline_cmd[CENALLOC_REQ_INLINE_CMD] __aligned(8);
	u8 inline_resp[CENALLOC_REQ_INLINE_RESP] ____cacheline_aligned;
};

extern unsigned int cenalloc_timeout_ms;

struct cenalloc_req *cenalloc_req_alloc(struct cenalloc_dev *cdev);
void cenalloc_req_free(struct cenalloc_req *req);
void *cenalloc_req_add(struct cenalloc_req *req, u16 opcode, u32 len,
		       u32 resp_len);
bool cenalloc_req_append(struct cenalloc_req *dst,
			 const struct cenalloc_req *src);
int cenalloc_req_submit(struct cenalloc_req *req);
int cenalloc_req_submit_timeout(struct cenalloc_req *req, unsigned long timeout);
int cenalloc_req_submit_unkillable(struct cenalloc_req *req);
int cenalloc_req_submit_background(struct cenalloc_req *req);
void cenalloc_req_post(struct cenalloc_req *req);
void cenalloc_req_post_own(struct cenalloc_dev *cdev, struct cenalloc_req *req,
			   struct cenalloc_req **owner);
void cenalloc_req_post_seq_own(struct cenalloc_dev *cdev,
			       struct cenalloc_req **reqs, unsigned int n,
			       struct cenalloc_req **owner);
void cenalloc_req_hold(struct cenalloc_req *req, struct cenalloc_req **owner);
bool cenalloc_req_held_append(struct cenalloc_dev *cdev,
			      struct cenalloc_req **owner,
			      const struct cenalloc_req *req);
unsigned int cenalloc_req_held_append_seq(struct cenalloc_dev *cdev,
					  struct cenalloc_req **owner,
					  struct cenalloc_req **reqs,
					  unsigned int n);
void cenalloc_req_undo(struct cenalloc_req *req);
int cenalloc_req_status(struct cenalloc_req *req, unsigned int i);
bool cenalloc_req_answered(struct cenalloc_req *req, unsigned int i);
void *cenalloc_req_resp(struct cenalloc_req *req, unsigned int i, u32 *len);
u32 cenalloc_req_needed(struct cenalloc_req *req, unsigned int i);
const void *cenalloc_req_cmd(const struct cenalloc_req *req, unsigned int i,
			     u16 *opcode, u32 *len);
int cenalloc_dev_usable(struct cenalloc_dev *cdev);
void cenalloc_dev_break(struct cenalloc_dev *cdev, const char *why);
void cenalloc_answer_rejected(struct cenalloc_dev *cdev);
int cenalloc_vq_init(struct cenalloc_dev *cdev);
void cenalloc_event_kick(struct cenalloc_dev *cdev);
void cenalloc_vq_stop(struct cenalloc_dev *cdev);
void cenalloc_ctrl_done(struct virtqueue *vq);
void cenalloc_event_done(struct virtqueue *vq);
void cenalloc_latency_add(struct cenalloc_latency *lat, u64 ns);
int cenalloc_reset(struct cenalloc_dev *cdev);
int cenalloc_get_info(struct cenalloc_dev *cdev,
		      struct cenalloc_info_resp *info,
		      struct cenalloc_allocator_info *allocators,
		      unsigned int max_allocators);

#endif /* CENALLOC_VQ_H */
