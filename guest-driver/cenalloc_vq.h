/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cenalloc request transport (cenalloc_vq.c): batches of commands on the
 * control queue, and the event queue.
 */
#ifndef CENALLOC_VQ_H
#define CENALLOC_VQ_H

#include <linux/cache.h>
#include <linux/completion.h>
#include <linux/types.h>

#include "cenalloc_dev.h"

#define CENALLOC_REQ_INLINE_CMD		256
/* How long probe and remove wait for the device's answer to RESET. */
#define CENALLOC_RESET_TIMEOUT_MS	5000
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
int cenalloc_req_submit_timeout(struct cenalloc_req *req, unsigned long timeout);
void cenalloc_req_post(struct cenalloc_req *req);
int cenalloc_req_status(struct cenalloc_req *req, unsigned int i);
void *cenalloc_req_resp(struct cenalloc_req *req, unsigned int i, u32 *len);
u32 cenalloc_req_needed(struct cenalloc_req *req, unsigned int i);
int cenalloc_vq_init(struct cenalloc_dev *cdev);
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
