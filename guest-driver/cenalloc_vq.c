// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc request transport: one batch of commands per control-queue chain,
 * and the event queue.
 *
 * A request is built with cenalloc_req_add() (one call per command), then
 * either submitted (the caller waits until the device answers) or posted
 * (fire-and-forget: the completion logs a failure and frees the request).
 * A full ring (-ENOSPC) makes the submitter wait until the callback reaps
 * used buffers. After remove every new request fails with -ENODEV and every
 * request still on the ring is completed with -ENODEV.
 *
 * Notifications cost more than the work (each kick wakes the device, each
 * answer interrupts a CPU), so a posted chain goes on the ring without a
 * kick: the next submitted chain's kick carries it, and the device, which
 * takes chains in ring order, runs it first (an UNMAP, DETACH or FREE
 * always reaches the device before anything submitted after it; a FREE
 * gives its pool space back before a later CREATE). Posted chains nobody
 * follows are kicked from a delayed work a jiffy later, or at once when
 * CENALLOC_POST_MAX_UNKICKED wait or the ring is full.
 *
 * A submitter polls the used ring for its answer, with the queue's
 * callbacks off, for up to poll_us microseconds (as virtio-net does for its
 * control queue): an ordinary answer comes in well under that, and then no
 * interrupt, no wake-up and no reschedule happen at all. A slow answer
 * (a large MAP zeroes the whole buffer) turns the callbacks back on and
 * sleeps until the interrupt.
 */
#include <linux/ktime.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include <linux/moduleparam.h>

#include "cenalloc_vq.h"

static unsigned int cenalloc_poll_us = 200;
module_param_named(poll_us, cenalloc_poll_us, uint, 0644);
MODULE_PARM_DESC(poll_us,
		 "Microseconds a waiting request polls for its answer before sleeping until the interrupt (0: never poll)");

#define CENALLOC_POST_MAX_UNKICKED	16

/* Not zeroed as a whole (it is 1.5 KiB): every field a request reads
 * before writing it is set here, each command is zeroed by
 * cenalloc_req_add(), the answer buffer by cenalloc_req_queue().
 */
struct cenalloc_req *cenalloc_req_alloc(struct cenalloc_dev *cdev)
{
	struct cenalloc_req *req;

	req = kmalloc(sizeof(*req), GFP_KERNEL);
	if (!req)
		return NULL;
	req->cdev = cdev;
	init_completion(&req->done);
	req->posted = false;
	req->polling = false;
	req->queued_ns = 0;
	req->error = 0;
	req->num_cmds = 0;
	req->used_len = 0;
	req->cmd_buf = req->inline_cmd;
	req->cmd_cap = sizeof(req->inline_cmd);
	req->cmd_len = sizeof(struct cenalloc_batch_hdr);
	req->resp_buf = NULL;
	req->resp_len = sizeof(struct cenalloc_batch_resp);
	return req;
}

void cenalloc_req_free(struct cenalloc_req *req)
{
	if (!req)
		return;
	if (req->resp_buf != req->inline_resp)
		kfree(req->resp_buf);
	if (req->cmd_buf != req->inline_cmd)
		kfree(req->cmd_buf);
	kfree(req);
}

/*
 * Append a command with a zeroed payload of @len bytes and a response slot
 * of @resp_len bytes. Returns the payload to fill in (valid until the next
 * call), or an ERR_PTR.
 */
void *cenalloc_req_add(struct cenalloc_req *req, u16 opcode, u32 len,
		       u32 resp_len)
{
	size_t need = req->cmd_len + sizeof(struct cenalloc_cmd_hdr) + len;
	struct cenalloc_cmd_hdr *hdr;
	u8 *grown;

	if (req->num_cmds >= CENALLOC_MAX_BATCH ||
	    req->num_cmds >= req->cdev->max_batch)
		return ERR_PTR(-E2BIG);
	if (!IS_ALIGNED(len, 8) || !IS_ALIGNED(resp_len, 8))
		return ERR_PTR(-EINVAL);
	if (need > req->cmd_cap) {
		size_t cap = max(need, req->cmd_cap * 2);

		if (req->cmd_buf == req->inline_cmd) {
			grown = kmalloc(cap, GFP_KERNEL);
			if (grown)
				memcpy(grown, req->cmd_buf, req->cmd_len);
		} else {
			grown = krealloc(req->cmd_buf, cap, GFP_KERNEL);
		}
		if (!grown)
			return ERR_PTR(-ENOMEM);
		req->cmd_buf = grown;
		req->cmd_cap = cap;
	}
	hdr = (struct cenalloc_cmd_hdr *)(req->cmd_buf + req->cmd_len);
	memset(hdr, 0, sizeof(*hdr) + len);
	hdr->opcode = cpu_to_le16(opcode);
	hdr->len = cpu_to_le32(len);
	hdr->resp_len = cpu_to_le32(resp_len);
	req->cmd_len = need;
	req->resp_off[req->num_cmds] = req->resp_len;
	req->slot_len[req->num_cmds] = resp_len;
	req->resp_len += sizeof(struct cenalloc_resp_hdr) + resp_len;
	req->num_cmds++;
	return hdr + 1;
}

/* Kick decision for everything added so far (ctrl_lock held). */
static bool cenalloc_kick_prepare(struct cenalloc_dev *cdev)
{
	bool kick;

	if (cdev->unkicked) {
		cdev->unkicked = 0;
		cancel_delayed_work(&cdev->post_kick);
	}
	kick = virtqueue_kick_prepare(cdev->ctrl_vq);
	if (kick)
		cdev->kicks++;
	return kick;
}

/* Posted chains that no submitted chain followed. */
static void cenalloc_post_kick_work(struct work_struct *work)
{
	struct cenalloc_dev *cdev = container_of(to_delayed_work(work),
						 struct cenalloc_dev,
						 post_kick);
	unsigned long flags;
	bool kick = false;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (!cdev->removed && cdev->unkicked)
		kick = cenalloc_kick_prepare(cdev);
	/* Under the lock: remove sets removed before it deletes the vq. */
	if (kick)
		virtqueue_notify(cdev->ctrl_vq);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
}

static int cenalloc_vq_try_add(struct cenalloc_dev *cdev,
			       struct cenalloc_req *req)
{
	struct scatterlist out, in, *sgs[2] = { &out, &in };
	unsigned long flags;
	bool kick = false;
	int ret;

	sg_init_one(&out, req->cmd_buf, req->cmd_len);
	sg_init_one(&in, req->resp_buf, req->resp_len);

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (cdev->removed) {
		ret = -ENODEV;
		goto out_unlock;
	}
	ret = virtqueue_add_sgs(cdev->ctrl_vq, sgs, 1, 1, req, GFP_ATOMIC);
	if (ret) {
		/* A full ring drains only if the device hears of it. */
		if (ret == -ENOSPC && cdev->unkicked)
			kick = cenalloc_kick_prepare(cdev);
		goto out_unlock;
	}
	cdev->inflight++;
	cdev->chains_sent++;
	req->queued_ns = ktime_get_ns();
	/* Before the kick, so that the answer raises no interrupt. */
	if (req->polling && !cdev->pollers++)
		virtqueue_disable_cb(cdev->ctrl_vq);
	if (req->posted && ++cdev->unkicked < CENALLOC_POST_MAX_UNKICKED) {
		if (cdev->unkicked == 1)
			schedule_delayed_work(&cdev->post_kick, 1);
	} else {
		kick = cenalloc_kick_prepare(cdev);
	}
out_unlock:
	/*
	 * Notify under the lock: remove sets removed under it before the vq
	 * is deleted, so a notify after the unlock could touch a freed vq.
	 */
	if (kick)
		virtqueue_notify(cdev->ctrl_vq);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	return ret;
}

void cenalloc_latency_add(struct cenalloc_latency *lat, u64 ns)
{
	lat->ns[lat->next] = min_t(u64, ns, U32_MAX);
	lat->next = (lat->next + 1) % CENALLOC_LATENCY_SAMPLES;
	if (lat->count < CENALLOC_LATENCY_SAMPLES)
		lat->count++;
}

static void cenalloc_latency_record(struct cenalloc_dev *cdev,
				    struct cenalloc_latency *lat, u64 ns)
{
	unsigned long flags;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	cenalloc_latency_add(lat, ns);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
}

static int cenalloc_req_queue(struct cenalloc_req *req)
{
	struct cenalloc_dev *cdev = req->cdev;
	struct cenalloc_batch_hdr *bhdr;
	int ret;

	if (!req->num_cmds)
		return -EINVAL;
	bhdr = (struct cenalloc_batch_hdr *)req->cmd_buf;
	bhdr->num_cmds = cpu_to_le32(req->num_cmds);
	bhdr->reserved = 0;

	if (req->resp_len <= sizeof(req->inline_resp)) {
		req->resp_buf = req->inline_resp;
		memset(req->resp_buf, 0, req->resp_len);
	} else {
		req->resp_buf = kzalloc(req->resp_len, GFP_KERNEL);
		if (!req->resp_buf)
			return -ENOMEM;
	}

	wait_event(cdev->ctrl_wait,
		   (ret = cenalloc_vq_try_add(cdev, req)) != -ENOSPC);
	return ret;
}

static unsigned int cenalloc_ctrl_reap(struct cenalloc_dev *cdev);

/*
 * Reap answers for up to cenalloc_poll_us or until @req has its own, then
 * give the callbacks back (the last poller does) and reap what came
 * meanwhile. The vq is only touched under ctrl_lock and before remove.
 */
static void cenalloc_req_poll(struct cenalloc_req *req)
{
	u64 deadline = req->queued_ns +
		       (u64)READ_ONCE(cenalloc_poll_us) * NSEC_PER_USEC;
	struct cenalloc_dev *cdev = req->cdev;
	unsigned int reaped = 0;
	unsigned long flags;

	for (;;) {
		spin_lock_irqsave(&cdev->ctrl_lock, flags);
		if (!cdev->removed)
			reaped += cenalloc_ctrl_reap(cdev);
		spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
		if (completion_done(&req->done)) {
			spin_lock_irqsave(&cdev->ctrl_lock, flags);
			cdev->polled++;
			spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
			break;
		}
		if (ktime_get_ns() > deadline || need_resched())
			break;
		cpu_relax();
	}

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (!--cdev->pollers && !cdev->removed) {
		while (!virtqueue_enable_cb(cdev->ctrl_vq)) {
			virtqueue_disable_cb(cdev->ctrl_vq);
			reaped += cenalloc_ctrl_reap(cdev);
		}
	}
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	if (reaped)
		wake_up_all(&cdev->ctrl_wait);
}

/* Send the batch and wait until the device answers. Returns a transport
 * error; the status of each command is cenalloc_req_status().
 */
int cenalloc_req_submit(struct cenalloc_req *req)
{
	int ret;

	req->polling = READ_ONCE(cenalloc_poll_us) != 0;
	ret = cenalloc_req_queue(req);
	if (ret)
		return ret;
	atomic64_inc(&req->cdev->round_trips);
	if (req->polling)
		cenalloc_req_poll(req);
	wait_for_completion(&req->done);
	cenalloc_latency_record(req->cdev, &req->cdev->lat_wake,
				ktime_get_ns() - req->queued_ns);
	return req->error;
}

/*
 * Send the batch and wait at most @timeout jiffies (killable) for the
 * answer, without polling. Returns the transport error, or -ETIMEDOUT /
 * -EINTR when the wait ended first: the request then stays on the ring as
 * a posted one (whoever completes it frees it) and the caller must not
 * touch or free @req again.
 */
int cenalloc_req_submit_timeout(struct cenalloc_req *req, unsigned long timeout)
{
	struct cenalloc_dev *cdev = req->cdev;
	unsigned long flags;
	long left;
	int ret;

	req->polling = false;
	ret = cenalloc_req_queue(req);
	if (ret)
		return ret;
	atomic64_inc(&cdev->round_trips);
	left = wait_for_completion_killable_timeout(&req->done, timeout);
	if (left > 0)
		return req->error;
	/* Completions run under ctrl_lock: decide under it who frees @req. */
	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (completion_done(&req->done)) {
		spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
		return req->error;
	}
	req->posted = true;
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	return left < 0 ? -EINTR : -ETIMEDOUT;
}

static const char *cenalloc_opcode_name(u16 opcode)
{
	static const char * const names[] = {
		[CENALLOC_CMD_GET_INFO] = "GET_INFO",
		[CENALLOC_CMD_POOL_ADD] = "POOL_ADD",
		[CENALLOC_CMD_CREATE] = "CREATE",
		[CENALLOC_CMD_ATTACH] = "ATTACH",
		[CENALLOC_CMD_DETACH] = "DETACH",
		[CENALLOC_CMD_MAP] = "MAP",
		[CENALLOC_CMD_UNMAP] = "UNMAP",
		[CENALLOC_CMD_FREE] = "FREE",
		[CENALLOC_CMD_PHYS] = "PHYS",
		[CENALLOC_CMD_SYNC] = "SYNC",
		[CENALLOC_CMD_STATS] = "STATS",
		[CENALLOC_CMD_FILL] = "FILL",
		[CENALLOC_CMD_CHECKSUM] = "CHECKSUM",
		[CENALLOC_CMD_RESET] = "RESET",
		[CENALLOC_CMD_POOL_REMOVE] = "POOL_REMOVE",
		[CENALLOC_CMD_LEASE] = "LEASE",
		[CENALLOC_CMD_LEASE_RETURN] = "LEASE_RETURN",
		[CENALLOC_CMD_LEASED_MAP] = "LEASED_MAP",
	};

	if (opcode < ARRAY_SIZE(names) && names[opcode])
		return names[opcode];
	return "?";
}

/* Completion of a posted request: log what failed, free it. */
static void cenalloc_req_posted_done(struct cenalloc_req *req)
{
	const struct cenalloc_cmd_hdr *hdr;
	size_t off = sizeof(struct cenalloc_batch_hdr);
	unsigned int i;
	int status;

	/* Never sent before remove: the RESET at remove (or, if that one
	 * did not get through, at the next probe) drops its state.
	 */
	if (req->error == -ENODEV) {
		cenalloc_req_free(req);
		return;
	}
	for (i = 0; i < req->num_cmds; i++) {
		hdr = (const struct cenalloc_cmd_hdr *)(req->cmd_buf + off);
		off += sizeof(*hdr) + le32_to_cpu(hdr->len);
		status = cenalloc_req_status(req, i);
		if (!status || status == -ECANCELED)
			continue;
		atomic64_inc(&req->cdev->posted_errors);
		pr_warn_ratelimited("cenalloc: posted %s failed: %d\n",
				    cenalloc_opcode_name(le16_to_cpu(hdr->opcode)),
				    status);
	}
	cenalloc_req_free(req);
}

/* Send the batch without waiting: the completion logs errors and frees
 * @req. Used for UNMAP, DETACH and FREE.
 */
void cenalloc_req_post(struct cenalloc_req *req)
{
	int ret;

	req->posted = true;
	ret = cenalloc_req_queue(req);
	if (ret) {
		if (ret != -ENODEV)
			pr_warn_ratelimited("cenalloc: cannot post request: %d\n",
					    ret);
		cenalloc_req_free(req);
		return;
	}
	atomic64_inc(&req->cdev->posted);
}

/* Status of command @i: 0, the device's -errno, or -EIO when the answer is
 * missing or malformed.
 */
int cenalloc_req_status(struct cenalloc_req *req, unsigned int i)
{
	const struct cenalloc_resp_hdr *hdr;
	s32 status;

	if (req->error)
		return req->error;
	if (i >= req->num_cmds ||
	    req->used_len < req->resp_off[i] + sizeof(*hdr))
		return -EIO;
	hdr = (const struct cenalloc_resp_hdr *)(req->resp_buf +
						 req->resp_off[i]);
	status = (s32)le32_to_cpu(hdr->status);
	if (status > 0 || status < -MAX_ERRNO)
		return -EIO;
	if (le32_to_cpu(hdr->len) > req->slot_len[i])
		return -EIO;
	return status;
}

/* Response payload of command @i (status 0 checked by the caller). */
void *cenalloc_req_resp(struct cenalloc_req *req, unsigned int i, u32 *len)
{
	const struct cenalloc_resp_hdr *hdr;
	u32 off = req->resp_off[i] + sizeof(*hdr);

	hdr = (const struct cenalloc_resp_hdr *)(req->resp_buf +
						 req->resp_off[i]);
	*len = le32_to_cpu(hdr->len);
	if (*len > req->slot_len[i] || req->used_len < off + *len)
		*len = 0;
	return req->resp_buf + off;
}

/* With status -ENOSPC: the payload bytes the answer needs. */
u32 cenalloc_req_needed(struct cenalloc_req *req, unsigned int i)
{
	const struct cenalloc_resp_hdr *hdr;

	if (i >= req->num_cmds ||
	    req->used_len < req->resp_off[i] + sizeof(*hdr))
		return 0;
	hdr = (const struct cenalloc_resp_hdr *)(req->resp_buf +
						 req->resp_off[i]);
	return le32_to_cpu(hdr->needed);
}

static void cenalloc_req_complete(struct cenalloc_req *req)
{
	if (req->posted)
		cenalloc_req_posted_done(req);
	else
		complete(&req->done);
}

/* Complete every chain the device has used (ctrl_lock held). */
static unsigned int cenalloc_ctrl_reap(struct cenalloc_dev *cdev)
{
	unsigned int len, reaped = 0;
	struct cenalloc_req *req;

	while ((req = virtqueue_get_buf(cdev->ctrl_vq, &len))) {
		cdev->inflight--;
		cdev->chains_done++;
		cenalloc_latency_add(req->posted ? &cdev->lat_posted :
						   &cdev->lat_device,
				     ktime_get_ns() - req->queued_ns);
		req->used_len = min_t(u32, len, req->resp_len);
		if (req->used_len < sizeof(struct cenalloc_batch_resp))
			req->error = -EIO;
		cenalloc_req_complete(req);
		reaped++;
	}
	return reaped;
}

/* Control queue callback (interrupt context). */
void cenalloc_ctrl_done(struct virtqueue *vq)
{
	struct cenalloc_dev *cdev = vq->vdev->priv;
	unsigned long flags;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	cdev->ctrl_interrupts++;
	if (cdev->pollers) {
		/* An answer that came before they were off; the last poller
		 * turns them on again.
		 */
		virtqueue_disable_cb(vq);
		cenalloc_ctrl_reap(cdev);
	} else {
		do {
			virtqueue_disable_cb(vq);
			cenalloc_ctrl_reap(cdev);
		} while (!virtqueue_enable_cb(vq));
	}
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	wake_up_all(&cdev->ctrl_wait);
}

static int cenalloc_event_post(struct cenalloc_dev *cdev,
			       struct cenalloc_event *event)
{
	struct scatterlist sg;

	sg_init_one(&sg, event, sizeof(*event));
	return virtqueue_add_inbuf(cdev->event_vq, &sg, 1, event, GFP_ATOMIC);
}

static void cenalloc_event_handle(struct cenalloc_dev *cdev,
				  const struct cenalloc_event *event,
				  unsigned int len)
{
	if (len < sizeof(*event)) {
		atomic_inc(&cdev->events_unknown);
		return;
	}
	switch (le32_to_cpu(event->type)) {
	case CENALLOC_EVENT_MIGRATED:
		atomic_inc(&cdev->events_migrated);
		pr_info_ratelimited("cenalloc: buffer %u migrated to allocator %llu\n",
				    le32_to_cpu(event->buffer_id),
				    le64_to_cpu(event->data));
		break;
	case CENALLOC_EVENT_POOL_LOW:
		atomic_inc(&cdev->events_pool_low);
		pr_debug("cenalloc: allocator %llu is low on memory\n",
			 le64_to_cpu(event->data));
		if (cdev->event_hook)
			cdev->event_hook(cdev, event);
		break;
	case CENALLOC_EVENT_LEASE_REVOKE:
		atomic_inc(&cdev->events_lease_revoke);
		if (cdev->event_hook)
			cdev->event_hook(cdev, event);
		break;
	default:
		atomic_inc(&cdev->events_unknown);
		pr_warn_ratelimited("cenalloc: unknown event type %u\n",
				    le32_to_cpu(event->type));
	}
}

/* Event queue callback (interrupt context): handle and repost. */
void cenalloc_event_done(struct virtqueue *vq)
{
	struct cenalloc_dev *cdev = vq->vdev->priv;
	struct cenalloc_event *event;
	unsigned long flags;
	unsigned int len;
	bool posted = false;

	spin_lock_irqsave(&cdev->event_lock, flags);
	while ((event = virtqueue_get_buf(vq, &len))) {
		cenalloc_event_handle(cdev, event, len);
		memset(event, 0, sizeof(*event));
		if (!cenalloc_event_post(cdev, event))
			posted = true;
	}
	if (posted)
		virtqueue_kick(vq);
	spin_unlock_irqrestore(&cdev->event_lock, flags);
}

/* Post the event buffers; the vqs exist, the device is not ready yet. */
int cenalloc_vq_init(struct cenalloc_dev *cdev)
{
	unsigned int i;
	int ret;

	INIT_DELAYED_WORK(&cdev->post_kick, cenalloc_post_kick_work);
	cdev->event_bufs = kcalloc(CENALLOC_EVENT_BUFS,
				   sizeof(*cdev->event_bufs), GFP_KERNEL);
	if (!cdev->event_bufs)
		return -ENOMEM;
	for (i = 0; i < CENALLOC_EVENT_BUFS; i++) {
		ret = cenalloc_event_post(cdev, &cdev->event_bufs[i]);
		if (ret)
			break;
	}
	if (!i) {
		kfree(cdev->event_bufs);
		cdev->event_bufs = NULL;
		return ret;
	}
	return 0;
}

/*
 * Stop both queues after remove: refuse new requests, reset the device and
 * fail every request it did not answer. The caller then deletes the vqs.
 */
void cenalloc_vq_stop(struct cenalloc_dev *cdev)
{
	struct cenalloc_req *req;
	unsigned long flags;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	cdev->removed = true;
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	/* Nothing schedules it once removed is set. */
	cancel_delayed_work_sync(&cdev->post_kick);

	virtio_reset_device(cdev->vdev);

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	/* Answers that arrived before the reset still count. */
	cenalloc_ctrl_reap(cdev);
	while ((req = virtqueue_detach_unused_buf(cdev->ctrl_vq))) {
		cdev->inflight--;
		req->error = -ENODEV;
		cenalloc_req_complete(req);
	}
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	wake_up_all(&cdev->ctrl_wait);

	while (virtqueue_detach_unused_buf(cdev->event_vq))
		;
}

/*
 * RESET: the device drops every buffer, attachment and donated range (see
 * "Lifecycle" in cenalloc_proto.h). Waits at most CENALLOC_RESET_TIMEOUT_MS.
 * Returns 0 or -errno; whatever a previous driver instance (or a guest
 * that rebooted without this driver) left on the device is logged.
 */
int cenalloc_reset(struct cenalloc_dev *cdev)
{
	struct cenalloc_reset_resp dropped;
	struct cenalloc_reset_req *rst;
	struct cenalloc_req *req;
	u32 len;
	int ret;

	req = cenalloc_req_alloc(cdev);
	if (!req)
		return -ENOMEM;
	rst = cenalloc_req_add(req, CENALLOC_CMD_RESET, sizeof(*rst),
			       sizeof(dropped));
	if (IS_ERR(rst)) {
		ret = PTR_ERR(rst);
		goto out;
	}
	ret = cenalloc_req_submit_timeout(req,
					  msecs_to_jiffies(CENALLOC_RESET_TIMEOUT_MS));
	if (ret == -ETIMEDOUT || ret == -EINTR)
		return ret;	/* @req now belongs to the ring */
	if (ret)
		goto out;
	ret = cenalloc_req_status(req, 0);
	if (ret)
		goto out;
	memcpy(&dropped, cenalloc_req_resp(req, 0, &len), sizeof(dropped));
	if (len < sizeof(dropped)) {
		ret = -EIO;
		goto out;
	}
	if (dropped.buffers || dropped.donated)
		dev_info(&cdev->vdev->dev,
			 "reset dropped %u stale buffers and %llu bytes of stale pool memory\n",
			 le32_to_cpu(dropped.buffers),
			 le64_to_cpu(dropped.donated));
out:
	cenalloc_req_free(req);
	return ret;
}

/* GET_INFO: fills @info and up to @max_allocators allocator records.
 * Returns the number of allocator records copied, or -errno.
 */
int cenalloc_get_info(struct cenalloc_dev *cdev,
		      struct cenalloc_info_resp *info,
		      struct cenalloc_allocator_info *allocators,
		      unsigned int max_allocators)
{
	struct cenalloc_req *req;
	unsigned int num;
	u32 slot, len;
	void *resp;
	int ret;

	slot = sizeof(*info) + CENALLOC_MAX_ALLOCATORS * sizeof(*allocators);
	req = cenalloc_req_alloc(cdev);
	if (!req)
		return -ENOMEM;
	resp = cenalloc_req_add(req, CENALLOC_CMD_GET_INFO, 0, slot);
	if (IS_ERR(resp)) {
		ret = PTR_ERR(resp);
		goto out;
	}
	ret = cenalloc_req_submit(req);
	if (ret)
		goto out;
	ret = cenalloc_req_status(req, 0);
	if (ret)
		goto out;
	resp = cenalloc_req_resp(req, 0, &len);
	if (len < sizeof(*info)) {
		ret = -EIO;
		goto out;
	}
	memcpy(info, resp, sizeof(*info));
	num = le32_to_cpu(info->num_allocators);
	num = min_t(unsigned int, num,
		    (len - sizeof(*info)) / sizeof(*allocators));
	num = min(num, max_allocators);
	memcpy(allocators, resp + sizeof(*info), num * sizeof(*allocators));
	ret = num;
out:
	cenalloc_req_free(req);
	return ret;
}
