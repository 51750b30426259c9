// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc request transport: one batch of commands per control-queue chain,
 * and the event queue.
 *
 * A request is built with cenalloc_req_add() (one call per command,
 * cenalloc_req.c), then either submitted (the caller waits until the device answers) or posted
 * (fire-and-forget: the completion logs a failure and frees the request).
 * After remove every new request fails with -ENODEV and every request still
 * on the ring is completed with -ENODEV.
 *
 * Ownership: a request belongs to whoever built it and, from the moment it
 * is queued, to the ring too (a reference each); the last one frees it. The
 * device may write into a request's answer until it returns the chain or
 * is reset, so a request the device has not returned is never freed: a
 * submitter that stops waiting leaves it to the ring (see below), and
 * remove frees what is left after resetting the device.
 *
 * Bounded waits: the device runs chains in ring order, so a request may
 * queue behind others for longer than any one of them takes (several
 * large first maps, each zeroing its buffer). What is bounded is the
 * device's silence: a submitter (killable) waits for room on the ring and
 * for its answer as long as the device answers some chain at least every
 * timeout_ms (cdev->progress: the last answer reaped, or the moment an
 * idle device got work; before judging, the waiter reaps the used ring
 * itself, since a device may notify only after a run of chains). When the
 * device has been silent for timeout_ms it is
 * declared broken (logged once): every new request fails at once with
 * -EIO, posted requests are dropped (the device state they would change
 * goes with the next reset), and the submitter gets -ETIMEDOUT. A request
 * that waits CENALLOC_QUEUE_FACTOR times timeout_ms while the device
 * answers others gives up with -ETIMEDOUT without breaking the device. A
 * fatal signal ends the wait with -EINTR, except for the requests whose
 * outcome the pools must know (cenalloc_req_submit_unkillable()). Either
 * way the abandoned request stays on the ring; if the device still answers
 * it and is not broken, what the answered batch did (CREATE, ATTACH, MAP)
 * is undone with FREE, DETACH and UNMAP from a work item, because its
 * submitter recorded none of it.
 *
 * Teardown never waits: a posted request that finds the ring full goes to a
 * backlog that is moved onto the ring as answers free room, and a submitted
 * request queues behind that backlog, so posted chains keep their order.
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
 * A posted request may also be held (cenalloc_req_hold(): the LEASED_MAP
 * of a leased first map): it stays in the driver, where its owner may add
 * more commands to it (cenalloc_req_held_append(): the buffer's UNMAP,
 * DETACH and FREE), until any other chain goes on the ring. Every path
 * that puts a chain on the ring (submitted or posted) first moves all held
 * requests behind the backlog, in the order they were held, under the same
 * lock: so whatever the device answers or reports after that (GET_INFO,
 * STATS, PHYS, a MAP, LEASE_RETURN, RESET) comes after every held command,
 * and no observer sees the device without a map the driver already made.
 * The one exception is a buffer's own posted commands (its teardown:
 * cenalloc_req_post_own()), which only need that buffer's held request
 * before them: the other buffers' stay held, so that buffers released
 * together (a burst) still cost one chain each.
 * Held requests nobody follows go on the ring from a delayed work, hold_ms
 * after the first of them was held, and are kicked at once. Moving them
 * needs no memory
 * (their answers fit in the request); a broken or removed device drops
 * them with the backlog.
 *
 * A submitter polls the used ring for its answer, with the queue's
 * callbacks off, for up to poll_us microseconds (as virtio-net does for its
 * control queue): an ordinary answer comes in well under that, and then no
 * interrupt, no wake-up and no reschedule happen at all. A slow answer
 * (a large MAP zeroes the whole buffer) turns the callbacks back on and
 * sleeps until the interrupt.
 *
 * Building a request and reading its answer: cenalloc_req.c.
 */
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "cenalloc_req.h"

static unsigned int cenalloc_poll_us = 200;
module_param_named(poll_us, cenalloc_poll_us, uint, 0644);
MODULE_PARM_DESC(poll_us,
		 "Microseconds a waiting request polls for its answer before sleeping until the interrupt (0: never poll)");

/*
 * How long a held request (a leased first map's LEASED_MAP) waits for
 * the next chain before it goes on the ring alone: a cycle of a small
 * buffer takes some tens of microseconds, so it leaves with the buffer's
 * teardown; a buffer that lives longer shows on the device (for the
 * host's views of it) at most this much later. Every chain the driver
 * sends carries the held ones first, so nothing the guest asks the device
 * sees them missing.
 */
#define CENALLOC_HOLD_MS_MAX	1000
static unsigned int cenalloc_hold_ms = 4;
module_param_named(hold_ms, cenalloc_hold_ms, uint, 0644);
MODULE_PARM_DESC(hold_ms,
		 "Milliseconds a leased first map's LEASED_MAP waits at most for the next chain to ride with (1..1000)");

static unsigned long cenalloc_hold_jiffies(void)
{
	return max(1UL,
		   msecs_to_jiffies(clamp_t(unsigned int,
					    READ_ONCE(cenalloc_hold_ms), 1,
					    CENALLOC_HOLD_MS_MAX)));
}

/*
 * 10 s: the slowest legitimate chain is the first MAP of a buffer of the
 * device's largest size (1 GiB by default), which the device zeroes; when
 * that guest memory was never touched the host allocates it on the way:
 * zeroing 1 GiB of a fresh memfd took 1.8 s on the 2-core build machine
 * under load (5x margin). A dead back-end is reported within 10 s, and no
 * task waits long enough for the hung-task watchdog (120 s).
 */
unsigned int cenalloc_timeout_ms = 10000;
module_param_named(timeout_ms, cenalloc_timeout_ms, uint, 0644);
MODULE_PARM_DESC(timeout_ms,
		 "Milliseconds the device may stay silent (requests on the ring, none answered) before it is declared broken (100..600000, default 10000)");

#define CENALLOC_TIMEOUT_MIN_MS		100
#define CENALLOC_TIMEOUT_MAX_MS		600000

/*
 * A request waits at most this many times timeout_ms behind a device that
 * keeps answering other chains (80 s by default: below the hung-task
 * watchdog's 120 s). Only a device silent for timeout_ms is broken.
 */
#define CENALLOC_QUEUE_FACTOR		8

#define CENALLOC_POST_MAX_UNKICKED	16

static unsigned long cenalloc_timeout_jiffies(void)
{
	return msecs_to_jiffies(clamp_t(unsigned int,
					READ_ONCE(cenalloc_timeout_ms),
					CENALLOC_TIMEOUT_MIN_MS,
					CENALLOC_TIMEOUT_MAX_MS));
}

/* 0, or why no request can be sent (ctrl_lock held). */
static int cenalloc_usable_locked(struct cenalloc_dev *cdev)
{
	if (cdev->removed)
		return -ENODEV;
	if (cdev->broken)
		return -EIO;
	return 0;
}

/* 0 if requests can be sent: -ENODEV after remove, -EIO once broken. */
int cenalloc_dev_usable(struct cenalloc_dev *cdev)
{
	if (READ_ONCE(cdev->removed))
		return -ENODEV;
	if (READ_ONCE(cdev->broken))
		return -EIO;
	return 0;
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

static bool cenalloc_backlog_flush(struct cenalloc_dev *cdev, bool *kick);

/*
 * Move every held request behind the backlog, in order (ctrl_lock held,
 * device usable); the caller then flushes the backlog. No allocation: a
 * held request's answer fits in the request (cenalloc_req_hold()).
 */
static void cenalloc_held_release_one_locked(struct cenalloc_dev *cdev,
					     struct cenalloc_req *req)
{
	list_del_init(&req->node);
	cdev->num_held--;
	WRITE_ONCE(*req->held_by, NULL);
	req->held_by = NULL;
	if (WARN_ON_ONCE(cenalloc_req_prepare(req))) {
		cenalloc_req_put(req);
		return;
	}
	atomic64_inc(&cdev->posted);
	list_add_tail(&req->node, &cdev->backlog);
	cdev->backlogged++;
}

static void cenalloc_held_release_locked(struct cenalloc_dev *cdev)
{
	struct cenalloc_req *req, *tmp;

	list_for_each_entry_safe(req, tmp, &cdev->held, node)
		cenalloc_held_release_one_locked(cdev, req);
}

/* Take every held request off the held list into @drop (ctrl_lock held). */
static void cenalloc_held_drop_locked(struct cenalloc_dev *cdev,
				      struct list_head *drop)
{
	struct cenalloc_req *req, *tmp;

	list_for_each_entry_safe(req, tmp, &cdev->held, node) {
		WRITE_ONCE(*req->held_by, NULL);
		req->held_by = NULL;
		list_move_tail(&req->node, drop);
	}
	cdev->num_held = 0;
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

/*
 * Put @req on the ring (ctrl_lock held, device usable). From here on the
 * ring owns a reference: a posted request's only one, handed over by its
 * poster. *@kick is set when the device must be notified.
 */
static int cenalloc_vq_add_locked(struct cenalloc_dev *cdev,
				  struct cenalloc_req *req, bool *kick)
{
	struct scatterlist out, in, *sgs[2] = { &out, &in };
	int ret;

	sg_init_one(&out, req->cmd_buf, req->cmd_len);
	if (req->resp_pages)
		sgs[1] = req->resp_sgt.sgl;
	else
		sg_init_one(&in, req->resp_buf, req->resp_len);
	ret = virtqueue_add_sgs(cdev->ctrl_vq, sgs, 1, 1, req, GFP_ATOMIC);
	if (ret) {
		/* A full ring drains only if the device hears of it. */
		if (ret == -ENOSPC && cdev->unkicked)
			*kick |= cenalloc_kick_prepare(cdev);
		return ret;
	}
	if (!req->posted)
		refcount_inc(&req->ref);
	req->queued = true;
	/* An idle device starts work now: its silence counts from here. */
	if (!cdev->inflight++)
		WRITE_ONCE(cdev->progress, jiffies);
	cdev->chains_sent++;
	req->queued_ns = ktime_get_ns();
	/* Before the kick, so that the answer raises no interrupt. */
	if (req->polling && !cdev->pollers++)
		virtqueue_disable_cb(cdev->ctrl_vq);
	if (req->posted && ++cdev->unkicked < CENALLOC_POST_MAX_UNKICKED) {
		if (cdev->unkicked == 1)
			schedule_delayed_work(&cdev->post_kick, 1);
	} else {
		*kick |= cenalloc_kick_prepare(cdev);
	}
	return 0;
}

/* Move posted requests from the backlog to the ring while it has room
 * (ctrl_lock held). True when the backlog is empty.
 */
static bool cenalloc_backlog_flush(struct cenalloc_dev *cdev, bool *kick)
{
	struct cenalloc_req *req;

	while (!list_empty(&cdev->backlog)) {
		if (cenalloc_usable_locked(cdev))
			return false;
		req = list_first_entry(&cdev->backlog, struct cenalloc_req,
				       node);
		if (cenalloc_vq_add_locked(cdev, req, kick))
			return false;
		list_del_init(&req->node);
		cdev->backlogged--;
	}
	return true;
}

static int cenalloc_vq_try_add(struct cenalloc_dev *cdev,
			       struct cenalloc_req *req)
{
	unsigned long flags;
	bool kick = false;
	int ret;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	ret = cenalloc_usable_locked(cdev);
	if (ret)
		goto out_unlock;
	/* Behind the held and posted chains: ring order holds. */
	cenalloc_held_release_locked(cdev);
	if (!cenalloc_backlog_flush(cdev, &kick)) {
		ret = -ENOSPC;
		goto out_unlock;
	}
	ret = cenalloc_vq_add_locked(cdev, req, &kick);
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

static unsigned int cenalloc_ctrl_reap(struct cenalloc_dev *cdev, bool *kick);

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
	bool kick = false, expired = false;
	unsigned long flags;

	for (;;) {
		spin_lock_irqsave(&cdev->ctrl_lock, flags);
		if (!cdev->removed) {
			reaped += cenalloc_ctrl_reap(cdev, &kick);
			if (kick)
				virtqueue_notify(cdev->ctrl_vq);
			kick = false;
		}
		spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
		if (READ_ONCE(req->answered) || READ_ONCE(cdev->broken))
			break;
		expired = ktime_get_ns() > deadline;
		if (expired || need_resched())
			break;
		cpu_relax();
	}

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	/* Callbacks are still off: an answer here came without an interrupt. */
	cdev->polls++;
	if (req->answered)
		cdev->polled++;
	else if (expired)
		cdev->poll_expired++;
	else if (!cdev->broken)
		cdev->poll_yielded++;
	if (!--cdev->pollers && !cdev->removed) {
		while (!virtqueue_enable_cb(cdev->ctrl_vq)) {
			virtqueue_disable_cb(cdev->ctrl_vq);
			reaped += cenalloc_ctrl_reap(cdev, &kick);
		}
		if (kick)
			virtqueue_notify(cdev->ctrl_vq);
	}
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	if (reaped)
		wake_up_all(&cdev->ctrl_wait);
}

/*
 * Declare the device broken: it did not answer in time. New requests fail
 * with -EIO, the posted requests still waiting for room are dropped, every
 * waiter wakes up. Logged once.
 */
void cenalloc_dev_break(struct cenalloc_dev *cdev, const char *why)
{
	struct cenalloc_req *req, *tmp;
	unsigned long flags;
	LIST_HEAD(drop);

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (cdev->broken || cdev->removed) {
		spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
		return;
	}
	WRITE_ONCE(cdev->broken, true);
	list_splice_init(&cdev->backlog, &drop);
	cdev->backlogged = 0;
	cenalloc_held_drop_locked(cdev, &drop);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);

	pr_err("cenalloc: %s: device marked broken; new operations fail with -EIO, buffers can still be closed, reload the driver to reset the device\n",
	       why);
	list_for_each_entry_safe(req, tmp, &drop, node) {
		list_del_init(&req->node);
		cenalloc_req_put(req);
	}
	wake_up_all(&cdev->ctrl_wait);
}

/* Count an answer the driver refused to use (the caller logs why). */
void cenalloc_answer_rejected(struct cenalloc_dev *cdev)
{
	atomic64_inc(&cdev->answers_rejected);
}

/*
 * After the wait (@waited: cenalloc_wait_device()'s result): a request the
 * device answered is the caller's again; one it did not answer is left to
 * the ring (marked abandoned, under the lock the reaper takes).
 */
static int cenalloc_req_settle(struct cenalloc_req *req, long waited,
			       unsigned long timeout)
{
	struct cenalloc_dev *cdev = req->cdev;
	unsigned long flags;
	bool broken;
	char why[64];

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (req->answered) {
		cenalloc_latency_add(&cdev->lat_wake,
				     ktime_get_ns() - req->queued_ns);
		spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
		return req->error;
	}
	req->abandoned = true;
	cdev->abandoned_reqs++;
	broken = cdev->broken;
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);

	if (waited == -ETIMEDOUT) {
		/* The device answers others: late, not dead. */
		pr_warn_ratelimited("cenalloc: no answer after %u ms of queueing while the device answers other requests\n",
				    jiffies_to_msecs(CENALLOC_QUEUE_FACTOR *
						     timeout));
		return -ETIMEDOUT;
	}
	if (waited < 0)
		return -EINTR;
	if (broken)
		return -EIO;
	snprintf(why, sizeof(why), "no answer within %u ms",
		 jiffies_to_msecs(timeout));
	cenalloc_dev_break(cdev, why);
	return -ETIMEDOUT;
}

/*
 * Reap what the device put on the used ring without notifying (a device
 * may signal once per run of chains): cdev->progress moves if any came.
 */
static void cenalloc_ctrl_look(struct cenalloc_dev *cdev)
{
	unsigned int reaped = 0;
	unsigned long flags;
	bool kick = false;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (!cdev->removed) {
		reaped = cenalloc_ctrl_reap(cdev, &kick);
		if (kick)
			virtqueue_notify(cdev->ctrl_vq);
	}
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	if (reaped)
		wake_up_all(&cdev->ctrl_wait);
}

/* What a submitter waits for. */
enum cenalloc_wait_for {
	CENALLOC_WAIT_ROOM,	/* room on the ring: @req is then queued */
	CENALLOC_WAIT_ANSWER,	/* the answer to @req, or a broken device */
};

static bool cenalloc_wait_done(struct cenalloc_req *req,
			       enum cenalloc_wait_for what, int *ret)
{
	if (what == CENALLOC_WAIT_ROOM) {
		*ret = cenalloc_vq_try_add(req->cdev, req);
		return *ret != -ENOSPC;
	}
	return READ_ONCE(req->answered) || READ_ONCE(req->cdev->broken);
}

/*
 * Wait for @what as long as the device makes progress: until it has been
 * silent (chains on the ring, none answered) for @timeout, or, while it
 * keeps answering other chains, until CENALLOC_QUEUE_FACTOR * @timeout
 * after @start. Killable unless @unkillable. Returns 1 when done, 0 when
 * the device fell silent, -ETIMEDOUT when the request waited too long
 * behind a device that answers others, -ERESTARTSYS on a fatal signal.
 */
static long cenalloc_wait_device(struct cenalloc_req *req,
				 enum cenalloc_wait_for what, int *ret,
				 unsigned long start, unsigned long timeout,
				 bool unkillable)
{
	struct cenalloc_dev *cdev = req->cdev;
	unsigned long end = start + CENALLOC_QUEUE_FACTOR * timeout;
	unsigned long now, quiet;
	long left, slice;

	for (;;) {
		now = jiffies;
		quiet = READ_ONCE(cdev->progress) + timeout;
		if (!time_before(now, quiet)) {
			/*
			 * Progress is what the used ring shows, notified or
			 * not; another waiter may just have reaped it.
			 */
			cenalloc_ctrl_look(cdev);
			if (time_before(jiffies,
					READ_ONCE(cdev->progress) + timeout))
				continue;
			return cenalloc_wait_done(req, what, ret) ? 1 : 0;
		}
		if (!time_before(now, end))
			return cenalloc_wait_done(req, what, ret) ? 1 :
								     -ETIMEDOUT;
		slice = time_before(quiet, end) ? quiet - now : end - now;
		if (unkillable)
			left = wait_event_timeout(cdev->ctrl_wait,
						  cenalloc_wait_done(req, what,
								     ret),
						  slice);
		else
			left = wait_event_killable_timeout(cdev->ctrl_wait,
							   cenalloc_wait_done(req, what,
									      ret),
							   slice);
		if (left)
			return left < 0 ? left : 1;
	}
}

/* How a submitter waits (cenalloc_req_submit_wait()). */
#define CENALLOC_SUBMIT_UNKILLABLE	BIT(0)	/* no fatal signal cuts it */
#define CENALLOC_SUBMIT_NO_POLL		BIT(1)	/* sleeps until the interrupt */

static int cenalloc_req_submit_wait(struct cenalloc_req *req,
				    unsigned long timeout, unsigned int how)
{
	bool unkillable = how & CENALLOC_SUBMIT_UNKILLABLE;
	struct cenalloc_dev *cdev = req->cdev;
	unsigned long start = jiffies;
	long waited;
	int ret;

	ret = cenalloc_dev_usable(cdev);
	if (ret)
		return ret;
	req->polling = !(how & CENALLOC_SUBMIT_NO_POLL) &&
		       READ_ONCE(cenalloc_poll_us) != 0;
	ret = cenalloc_req_prepare(req);
	if (ret)
		return ret;

	waited = cenalloc_wait_device(req, CENALLOC_WAIT_ROOM, &ret, start,
				      timeout, unkillable);
	if (waited == -ETIMEDOUT)
		return -ETIMEDOUT;	/* never queued: nothing to abandon */
	if (waited < 0)
		return -EINTR;
	if (!waited) {
		cenalloc_dev_break(cdev, "no room on the control queue");
		return -ETIMEDOUT;
	}
	if (ret)
		return ret;

	atomic64_inc(&cdev->round_trips);
	if (req->polling)
		cenalloc_req_poll(req);
	waited = cenalloc_wait_device(req, CENALLOC_WAIT_ANSWER, &ret, start,
				      timeout, unkillable);
	return cenalloc_req_settle(req, waited, timeout);
}

/*
 * Send the batch and wait until the device answers: killable, and bounded
 * by the device's silence (see the top of this file). Returns a transport
 * error: -ETIMEDOUT (the device fell silent and is now broken, or answered
 * others for too long), -EINTR (fatal signal), -EIO (the device is broken),
 * -ENODEV (removed), -ENOMEM; the status of each command is
 * cenalloc_req_status(). The caller frees @req in every case (the ring
 * keeps what it still needs).
 */
int cenalloc_req_submit(struct cenalloc_req *req)
{
	return cenalloc_req_submit_wait(req, cenalloc_timeout_jiffies(), 0);
}

/* cenalloc_req_submit() with a bound of its own (RESET waits less). */
int cenalloc_req_submit_timeout(struct cenalloc_req *req, unsigned long timeout)
{
	return cenalloc_req_submit_wait(req, timeout, 0);
}

/*
 * cenalloc_req_submit() that a fatal signal does not cut short, for
 * requests whose outcome the pools must know (POOL_ADD, POOL_REMOVE,
 * LEASE_RETURN: the device's answer is the only proof of who owns the
 * memory), or the revocations of a late ATTACH (its UNMAPs). As bounded
 * as the killable wait; the shrinker of a dying task (an OOM victim in
 * direct reclaim) finishes the round trip it is in.
 */
int cenalloc_req_submit_unkillable(struct cenalloc_req *req)
{
	return cenalloc_req_submit_wait(req, cenalloc_timeout_jiffies(),
					CENALLOC_SUBMIT_UNKILLABLE);
}

/*
 * cenalloc_req_submit() for a request nobody waits on (a work item's: the
 * lease stock's refill): it sleeps until the answer's interrupt instead of
 * polling for it. A poller keeps its CPU busy for up to poll_us, and here
 * that CPU is one the task it works for could use (under TCG, a host core
 * the device's back-end needs to answer it). Killable, as
 * cenalloc_req_submit() (a work item gets no signals).
 */
int cenalloc_req_submit_background(struct cenalloc_req *req)
{
	return cenalloc_req_submit_wait(req, cenalloc_timeout_jiffies(),
					CENALLOC_SUBMIT_NO_POLL);
}

/* Completion of a posted request (ctrl_lock held): log what failed. */
static void cenalloc_req_posted_done(struct cenalloc_req *req)
{
	unsigned int i;
	u16 opcode;
	int status;
	u32 len;

	/* Never answered before remove: the device reset drops its state. */
	if (req->error == -ENODEV)
		return;
	for (i = 0; i < req->num_cmds; i++) {
		status = cenalloc_answer_status(req, i);
		if (!status || status == -ECANCELED)
			continue;
		cenalloc_req_cmd(req, i, &opcode, &len);
		atomic64_inc(&req->cdev->posted_errors);
		pr_warn_ratelimited("cenalloc: posted %s failed: %d\n",
				    cenalloc_opcode_name(opcode), status);
	}
}

/*
 * Send the batch without waiting; the ring owns @req from here on (the
 * caller must not touch it again) and frees it once answered, logging a
 * failed command. Used for UNMAP, DETACH, FREE and SYNC END. Never waits:
 * a full ring puts it in the backlog. A removed or broken device drops it
 * (the reset that follows drops the device state it would change).
 */
static void cenalloc_req_post_behind(struct cenalloc_dev *cdev,
				     struct cenalloc_req *req,
				     struct cenalloc_req **owner)
{
	unsigned long flags;
	bool kick = false;
	int ret;

	if (req) {
		req->posted = true;
		ret = cenalloc_req_prepare(req);
		if (ret) {
			pr_warn_ratelimited("cenalloc: cannot post request: %d\n",
					    ret);
			cenalloc_req_put(req);
			req = NULL;
		}
	}
	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (cenalloc_usable_locked(cdev)) {
		spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
		if (req)
			cenalloc_req_put(req);
		return;
	}
	if (!owner)
		cenalloc_held_release_locked(cdev);
	else if (*owner)
		cenalloc_held_release_one_locked(cdev, *owner);
	ret = -ENOSPC;
	if (cenalloc_backlog_flush(cdev, &kick) && req)
		ret = cenalloc_vq_add_locked(cdev, req, &kick);
	if (req && ret) {
		/* No room (or no memory for an indirect table): later. */
		list_add_tail(&req->node, &cdev->backlog);
		cdev->backlogged++;
		if (cdev->unkicked)
			kick |= cenalloc_kick_prepare(cdev);
	}
	if (req)
		atomic64_inc(&cdev->posted);
	if (kick)
		virtqueue_notify(cdev->ctrl_vq);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
}

void cenalloc_req_post(struct cenalloc_req *req)
{
	cenalloc_req_post_behind(req->cdev, req, NULL);
}

/*
 * Post @req (or nothing, when NULL) behind the held request *@owner only,
 * if that is still held: one buffer's commands, which need to follow that
 * buffer's LEASED_MAP and nothing else; the other buffers' held requests
 * stay held (they leave with their own buffer's teardown, before any chain
 * that waits for an answer, or after hold_ms), so that buffers released
 * together cost one chain each.
 */
void cenalloc_req_post_own(struct cenalloc_dev *cdev, struct cenalloc_req *req,
			   struct cenalloc_req **owner)
{
	cenalloc_req_post_behind(cdev, req, owner);
}

/*
 * Post the requests of @reqs (NULL entries skipped) in order, each merged
 * into the one before when the device's max_batch allows, behind the held
 * request *@owner only (cenalloc_req_post_own()), or behind every held
 * request when @owner is NULL.
 */
void cenalloc_req_post_seq_own(struct cenalloc_dev *cdev,
			       struct cenalloc_req **reqs, unsigned int n,
			       struct cenalloc_req **owner)
{
	struct cenalloc_req *cur = NULL;
	unsigned int i;

	for (i = 0; i < n; i++) {
		if (!reqs[i])
			continue;
		if (cur && cenalloc_req_append(cur, reqs[i])) {
			cenalloc_req_free(reqs[i]);
			continue;
		}
		if (cur)
			cenalloc_req_post_behind(cur->cdev, cur, owner);
		cur = reqs[i];
	}
	if (cur)
		cenalloc_req_post_behind(cur->cdev, cur, owner);
	else if (owner)
		cenalloc_req_post_behind(cdev, NULL, owner);
}

/*
 * Post @req later: it waits in the driver, where cenalloc_req_held_append()
 * may add commands to it, until the next chain goes on the ring (or the
 * delayed work, a jiffy from now), and goes first. *@owner points to it
 * while it is held and is cleared (under ctrl_lock) when it leaves; the
 * owner must send it (cenalloc_req_post_own()) before *@owner goes away. The ring
 * owns @req from here on, as with cenalloc_req_post(). A request whose
 * answer would need memory of its own is posted at once.
 */
void cenalloc_req_hold(struct cenalloc_req *req, struct cenalloc_req **owner)
{
	struct cenalloc_dev *cdev = req->cdev;
	unsigned long flags;

	if (req->resp_len > sizeof(req->inline_resp) || req->resp_buf) {
		cenalloc_req_post(req);
		return;
	}
	req->posted = true;
	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (cenalloc_usable_locked(cdev)) {
		/* Dropped as a posted request would be. */
		spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
		cenalloc_req_put(req);
		return;
	}
	req->held_by = owner;
	WRITE_ONCE(*owner, req);
	list_add_tail(&req->node, &cdev->held);
	/* Usable: remove has not cancelled the work yet. */
	if (!cdev->num_held++)
		mod_delayed_work(system_wq, &cdev->held_work,
				 cenalloc_hold_jiffies());
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
}

/*
 * Move the commands of @req (built, not sent) to the end of the request
 * *@owner if that is still held and they fit without any allocation (see
 * cenalloc_req_append(); the answers stay within the request). True if
 * they did: the caller frees @req. False when the held request went on the
 * ring already (then @req comes after it whatever the caller does with it)
 * or has no room.
 */
bool cenalloc_req_held_append(struct cenalloc_dev *cdev,
			      struct cenalloc_req **owner,
			      const struct cenalloc_req *req)
{
	struct cenalloc_req *held;
	unsigned long flags;
	bool done = false;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	held = *owner;
	if (held)
		done = cenalloc_req_append(held, req);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	return done;
}

/*
 * cenalloc_req_held_append() of each request of @reqs in order (NULL
 * entries skipped) under one hold of the lock, until one does not fit.
 * Returns how many entries of @reqs it went through: the caller frees the
 * requests among those and posts the rest.
 */
unsigned int cenalloc_req_held_append_seq(struct cenalloc_dev *cdev,
					  struct cenalloc_req **owner,
					  struct cenalloc_req **reqs,
					  unsigned int n)
{
	struct cenalloc_req *held;
	unsigned long flags;
	unsigned int i;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	held = *owner;
	for (i = 0; held && i < n; i++)
		if (reqs[i] && !cenalloc_req_append(held, reqs[i]))
			break;
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	return held ? i : 0;
}

/*
 * Put every held request on the ring (or behind its backlog) now; with
 * @kick, notify the device at once (the delayed work: nobody else will).
 */
static void cenalloc_held_send(struct cenalloc_dev *cdev, bool kick_now)
{
	unsigned long flags;
	bool kick = false;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	if (!list_empty(&cdev->held) && !cenalloc_usable_locked(cdev)) {
		cenalloc_held_release_locked(cdev);
		if ((!cenalloc_backlog_flush(cdev, &kick) || kick_now) &&
		    cdev->unkicked)
			kick |= cenalloc_kick_prepare(cdev);
	}
	if (kick)
		virtqueue_notify(cdev->ctrl_vq);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
}

/* Held requests that no other chain followed within hold_ms. */
static void cenalloc_held_work(struct work_struct *work)
{
	cenalloc_held_send(container_of(to_delayed_work(work),
					struct cenalloc_dev, held_work),
			   true);
}

/* The device returned @req (or remove took it back): ctrl_lock held. */
static void cenalloc_req_complete(struct cenalloc_dev *cdev,
				  struct cenalloc_req *req)
{
	if (req->posted) {
		cenalloc_req_posted_done(req);
		/* Small answer (no paged buffer): freed here, in any context. */
		cenalloc_req_put(req);
	} else if (req->abandoned) {
		/* Its submitter is gone: undo from process context. */
		list_add_tail(&req->node, &cdev->abandoned);
		if (!cdev->removed)
			schedule_work(&cdev->abandoned_work);
	} else {
		/* The submitter holds the other reference and frees it. */
		req->answered = true;
		refcount_dec(&req->ref);
	}
}

/* Complete every chain the device has used (ctrl_lock held); the posted
 * chains waiting in the backlog then take the room.
 */
static unsigned int cenalloc_ctrl_reap(struct cenalloc_dev *cdev, bool *kick)
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
		cenalloc_req_complete(cdev, req);
		reaped++;
	}
	if (reaped)
		WRITE_ONCE(cdev->progress, jiffies);
	if (reaped && !cdev->removed)
		cenalloc_backlog_flush(cdev, kick);
	return reaped;
}

/* Control queue callback (interrupt context). */
void cenalloc_ctrl_done(struct virtqueue *vq)
{
	struct cenalloc_dev *cdev = vq->vdev->priv;
	unsigned long flags;
	bool kick = false;

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	cdev->ctrl_interrupts++;
	if (cdev->pollers) {
		/* An answer that came before they were off; the last poller
		 * turns them on again.
		 */
		virtqueue_disable_cb(vq);
		cenalloc_ctrl_reap(cdev, &kick);
	} else {
		do {
			virtqueue_disable_cb(vq);
			cenalloc_ctrl_reap(cdev, &kick);
		} while (!virtqueue_enable_cb(vq));
	}
	if (kick)
		virtqueue_notify(vq);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	wake_up_all(&cdev->ctrl_wait);
}

/* Queue one undo command, starting a new request when one is full. */
static void cenalloc_undo_add(struct cenalloc_dev *cdev,
			      struct cenalloc_req **cur, u16 opcode,
			      u32 id, u32 arg)
{
	__le32 *payload;

	if (!*cur)
		*cur = cenalloc_req_alloc(cdev);
	if (!*cur)
		goto leak;
	payload = cenalloc_req_add(*cur, opcode, 8, 0);
	if (PTR_ERR_OR_ZERO(payload) == -E2BIG) {
		cenalloc_req_post(*cur);
		*cur = cenalloc_req_alloc(cdev);
		if (!*cur)
			goto leak;
		payload = cenalloc_req_add(*cur, opcode, 8, 0);
	}
	if (IS_ERR(payload))
		goto leak;
	payload[0] = cpu_to_le32(id);
	payload[1] = cpu_to_le32(arg);
	return;
leak:
	pr_warn_ratelimited("cenalloc: cannot undo an abandoned %s of %u: it stays on the device until reset\n",
			    cenalloc_opcode_name(opcode), id);
}

/*
 * Undo what an answered batch did on the device, for a batch whose
 * submitter records none of it (abandoned, or answers rejected): UNMAP its
 * successful MAPs, then DETACH its ATTACHes, then FREE its CREATEs, posted.
 * Only the commands of the batch itself are read (batch references
 * resolved against its own answers), nothing of the driver's buffer state.
 */
void cenalloc_req_undo(struct cenalloc_req *req)
{
	u32 attach_ids[CENALLOC_MAX_BATCH] = {}, buffer_ids[CENALLOC_MAX_BATCH] = {};
	struct cenalloc_dev *cdev = req->cdev;
	struct cenalloc_req *cur = NULL;
	const struct cenalloc_map_req *map;
	const __le32 *resp;
	unsigned int i, undone = 0;
	u32 len, id;
	u16 opcode;

	for (i = 0; i < req->num_cmds; i++) {
		if (cenalloc_answer_status(req, i))
			continue;
		resp = cenalloc_answer_resp(req, i, &len);
		if (len < sizeof(*resp))
			continue;
		cenalloc_req_cmd(req, i, &opcode, &id);
		id = le32_to_cpu(resp[0]);
		if (!id || (id & CENALLOC_BATCH_REF))
			continue;
		if (opcode == CENALLOC_CMD_CREATE)
			buffer_ids[i] = id;
		else if (opcode == CENALLOC_CMD_ATTACH)
			attach_ids[i] = id;
	}
	for (i = 0; i < req->num_cmds; i++) {
		map = cenalloc_req_cmd(req, i, &opcode, &len);
		if (opcode != CENALLOC_CMD_MAP || cenalloc_answer_status(req, i))
			continue;
		id = le32_to_cpu(map->attach_id);
		if (id & CENALLOC_BATCH_REF) {
			id &= ~CENALLOC_BATCH_REF;
			id = id < i ? attach_ids[id] : 0;
		}
		if (!id)
			continue;
		cenalloc_undo_add(cdev, &cur, CENALLOC_CMD_UNMAP, id,
				  le32_to_cpu(map->direction));
		undone++;
	}
	for (i = 0; i < req->num_cmds; i++) {
		if (attach_ids[i]) {
			cenalloc_undo_add(cdev, &cur, CENALLOC_CMD_DETACH,
					  attach_ids[i], 0);
			undone++;
		}
	}
	for (i = 0; i < req->num_cmds; i++) {
		if (buffer_ids[i]) {
			cenalloc_undo_add(cdev, &cur, CENALLOC_CMD_FREE,
					  buffer_ids[i], 0);
			undone++;
		}
	}
	if (cur && cur->num_cmds)
		cenalloc_req_post(cur);
	else
		cenalloc_req_free(cur);
	if (undone)
		pr_info_ratelimited("cenalloc: undid %u commands of an abandoned request\n",
				    undone);
}

/* Answered requests whose submitter had stopped waiting. */
static void cenalloc_abandoned_work(struct work_struct *work)
{
	struct cenalloc_dev *cdev = container_of(work, struct cenalloc_dev,
						 abandoned_work);
	struct cenalloc_req *req, *tmp;
	unsigned long flags;
	LIST_HEAD(list);

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	list_splice_init(&cdev->abandoned, &list);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	list_for_each_entry_safe(req, tmp, &list, node) {
		list_del_init(&req->node);
		if (cenalloc_dev_usable(cdev) == 0 && !req->error)
			cenalloc_req_undo(req);
		cenalloc_req_put(req);
	}
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
	unsigned long flags;
	unsigned int i;
	int ret = 0;

	cdev->progress = jiffies;
	INIT_DELAYED_WORK(&cdev->post_kick, cenalloc_post_kick_work);
	INIT_DELAYED_WORK(&cdev->held_work, cenalloc_held_work);
	INIT_WORK(&cdev->abandoned_work, cenalloc_abandoned_work);
	cdev->event_bufs = kcalloc(CENALLOC_EVENT_BUFS,
				   sizeof(*cdev->event_bufs), GFP_KERNEL);
	if (!cdev->event_bufs)
		return -ENOMEM;
	spin_lock_irqsave(&cdev->event_lock, flags);
	for (i = 0; i < CENALLOC_EVENT_BUFS; i++) {
		ret = cenalloc_event_post(cdev, &cdev->event_bufs[i]);
		if (ret)
			break;
	}
	spin_unlock_irqrestore(&cdev->event_lock, flags);
	if (!i) {
		kfree(cdev->event_bufs);
		cdev->event_bufs = NULL;
		return ret;
	}
	return 0;
}

/* Tell the device about the event buffers (once it is ready). */
void cenalloc_event_kick(struct cenalloc_dev *cdev)
{
	unsigned long flags;

	spin_lock_irqsave(&cdev->event_lock, flags);
	virtqueue_kick(cdev->event_vq);
	spin_unlock_irqrestore(&cdev->event_lock, flags);
}

/*
 * Stop both queues after remove: refuse new requests, reset the device and
 * free every request it did not answer (a reset device writes nothing
 * more). The caller then deletes the vqs.
 */
void cenalloc_vq_stop(struct cenalloc_dev *cdev)
{
	struct cenalloc_req *req, *tmp;
	unsigned long flags;
	LIST_HEAD(drop);

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	WRITE_ONCE(cdev->removed, true);
	list_splice_init(&cdev->backlog, &drop);
	cdev->backlogged = 0;
	cenalloc_held_drop_locked(cdev, &drop);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	/* Nothing schedules them once removed is set. */
	cancel_delayed_work_sync(&cdev->post_kick);
	cancel_delayed_work_sync(&cdev->held_work);
	cancel_work_sync(&cdev->abandoned_work);

	virtio_reset_device(cdev->vdev);

	spin_lock_irqsave(&cdev->ctrl_lock, flags);
	/* Answers that arrived before the reset still count. */
	cenalloc_ctrl_reap(cdev, NULL);
	while ((req = virtqueue_detach_unused_buf(cdev->ctrl_vq))) {
		cdev->inflight--;
		req->error = -ENODEV;
		cenalloc_req_complete(cdev, req);
	}
	list_splice_init(&cdev->abandoned, &drop);
	spin_unlock_irqrestore(&cdev->ctrl_lock, flags);
	wake_up_all(&cdev->ctrl_wait);

	list_for_each_entry_safe(req, tmp, &drop, node) {
		list_del_init(&req->node);
		cenalloc_req_put(req);
	}
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
	void *resp;
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
	if (ret)
		goto out;
	ret = cenalloc_req_status(req, 0);
	if (ret)
		goto out;
	resp = cenalloc_req_resp(req, 0, &len);
	if (len < sizeof(dropped)) {
		cenalloc_answer_rejected(cdev);
		ret = -EIO;
		goto out;
	}
	memcpy(&dropped, resp, sizeof(dropped));
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
		cenalloc_answer_rejected(cdev);
		ret = -EIO;
		goto out;
	}
	memcpy(info, resp, sizeof(*info));
	num = le32_to_cpu(info->num_allocators);
	/* Every allocator it counts, the answer describes. */
	if (num > CENALLOC_MAX_ALLOCATORS ||
	    num > (len - sizeof(*info)) / sizeof(*allocators)) {
		cenalloc_answer_rejected(cdev);
		ret = -EIO;
		goto out;
	}
	num = min(num, max_allocators);
	memcpy(allocators, resp + sizeof(*info), num * sizeof(*allocators));
	ret = num;
out:
	cenalloc_req_free(req);
	return ret;
}
