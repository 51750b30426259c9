// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc leases (CENALLOC_F_LEASE): the device lends the driver a stock
 * of zeroed extents per allocator, in two sizes (4 KiB and 64 KiB), and
 * the first map of a small buffer takes one without asking (LEASED_MAP,
 * posted: cenalloc_batch.c). The stock is filled by a work item when half
 * of its target is gone (LEASE; the target follows the rate of first maps:
 * cenalloc_lease_follow()), and given back (LEASE_RETURN)
 * when the device asks (CENALLOC_EVENT_LEASE_REVOKE), when a map finds its
 * room leased (-EAGAIN: that map first holds refills off until it is done
 * and waits for a LEASE on its way, cenalloc_lease_hold()), and under
 * memory pressure.
 *
 * Constraint semantics do not change: the first map of a buffer takes an
 * extent of the first allocator, in priority order, that serves a kind of
 * its access mask, and of no other. That is the allocator the device's
 * rule picks (its room counts leased extents, and this one has one), and
 * the device checks it again. Nothing is leased at probe: an allocator's
 * stock is filled the first time a map wants it.
 *
 * Every extent of an answer is checked (page aligned, of the size asked,
 * inside memory donated to that allocator's pool, below 4 GiB for a DMA32
 * pool) and counted as a user of its blocks until it backs a buffer or
 * goes back; a buffer it backs gets the checks of a MAP answer too
 * (cenalloc_batch.c). A bad answer is counted (lease_bad_answers and
 * answers_rejected) and logged.
 */
#include <linux/bitmap.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/sizes.h>
#include <linux/slab.h>

#include "cenalloc_compat.h"
#include "cenalloc_dev.h"
#include "cenalloc_lease.h"
#include "cenalloc_pool.h"
#include "cenalloc_vq.h"

static unsigned int lease_stock = 32;
module_param(lease_stock, uint, 0644);
MODULE_PARM_DESC(lease_stock,
		 "4 KiB extents kept leased per allocator in use, half as many of 64 KiB (refilled below half; 0: no leased maps)");

static const u32 cenalloc_lease_sizes[CENALLOC_LEASE_CLASSES] = {
	SZ_4K, SZ_64K,
};

/* Bytes one LEASE asks for at most. */
#define CENALLOC_LEASE_BITE		SZ_1M

/*
 * Bytes one class of one allocator's stock holds at most: both classes
 * together (512 KiB of 4 KiB extents, 1.5 MiB of 64 KiB ones) stay within
 * the stock a device lends per allocator (cenallocd: 2 MiB), so that one
 * class never starves the other.
 */
static const u32 cenalloc_lease_class_bytes[CENALLOC_LEASE_CLASSES] = {
	SZ_512K, SZ_1M + SZ_512K,
};

u32 cenalloc_lease_class_size(unsigned int class)
{
	return class < CENALLOC_LEASE_CLASSES ? cenalloc_lease_sizes[class] : 0;
}

/* The most extents of @class one stock holds. */
static unsigned int cenalloc_lease_max(unsigned int class)
{
	return min_t(unsigned int, CENALLOC_LEASE_STOCK_MAX,
		     cenalloc_lease_class_bytes[class] /
		     cenalloc_lease_sizes[class]);
}

/* The target of a stock without misses: the module parameter's. */
static unsigned int cenalloc_lease_base(unsigned int class)
{
	unsigned int stock = READ_ONCE(lease_stock);
	unsigned int target = class ? stock / 2 : stock;

	return min(target, cenalloc_lease_max(class));
}

/* The stock's target (l->lock held, or a stale read for a refill). */
static unsigned int cenalloc_lease_target(const struct cenalloc_stock *st,
					  unsigned int class)
{
	unsigned int base = cenalloc_lease_base(class);

	if (!base)
		return 0;
	return clamp_t(unsigned int, READ_ONCE(st->target), base,
		       cenalloc_lease_max(class));
}

/*
 * The stock follows the rate of first maps, so that a steady stream of
 * them, or a burst, finds it deep enough before it runs dry, and each
 * refill brings more at once (one round trip per half stock: a deeper
 * stock refills less often). When half of it went within lease_fast_ms
 * of its last refill, its target doubles (up to the class's maximum);
 * when that took more than CENALLOC_LEASE_SLOW_MS, it halves (down to the
 * lease_stock's). A miss doubles it too.
 */
#define CENALLOC_LEASE_SLOW_MS		1000
static unsigned int lease_fast_ms = 50;
module_param(lease_fast_ms, uint, 0644);
MODULE_PARM_DESC(lease_fast_ms,
		 "A leased stock half gone within this many milliseconds of its refill doubles its depth (1..1000, default 50)");

static void cenalloc_lease_deepen(struct cenalloc_stock *st,
				  unsigned int class)
{
	st->target = min(2 * cenalloc_lease_target(st, class),
			 cenalloc_lease_max(class));
}

/* Half of @st went since its last refill (l->lock held). */
static void cenalloc_lease_follow(struct cenalloc_leases *l,
				  struct cenalloc_stock *st, unsigned int class)
{
	unsigned long since = jiffies - st->filled_at;
	unsigned int target = cenalloc_lease_target(st, class);

	if (since < msecs_to_jiffies(clamp_t(unsigned int,
					     READ_ONCE(lease_fast_ms), 1,
					     CENALLOC_LEASE_SLOW_MS))) {
		cenalloc_lease_deepen(st, class);
		if (cenalloc_lease_target(st, class) != target)
			atomic64_inc(&l->deeper);
	} else if (since > msecs_to_jiffies(CENALLOC_LEASE_SLOW_MS)) {
		st->target = target / 2;
		if (cenalloc_lease_target(st, class) != target)
			atomic64_inc(&l->shallower);
	}
}

static int cenalloc_lease_class(u64 size)
{
	unsigned int class;

	for (class = 0; class < CENALLOC_LEASE_CLASSES; class++)
		if (size <= cenalloc_lease_sizes[class] &&
		    cenalloc_lease_base(class))
			return class;
	return -1;
}

static struct cenalloc_stock *cenalloc_stock_of(struct cenalloc_leases *l,
						u32 allocator,
						unsigned int class)
{
	return &l->stock[allocator * CENALLOC_LEASE_CLASSES + class];
}

/* The first allocator, in priority order, serving a kind of @mask. */
static int cenalloc_lease_allocator(struct cenalloc_dev *cdev, u32 mask)
{
	unsigned int i;

	for (i = 0; i < cdev->num_allocators; i++)
		if (le32_to_cpu(cdev->allocators[i].kinds) & mask)
			return i;
	return -1;
}

/*
 * The first map of a buffer of @size bytes with access mask @mask: take an
 * extent of the allocator the rule picks, if its stock has one. Refills
 * the stock in the background when it runs low.
 */
bool cenalloc_lease_take(struct cenalloc_dev *cdev, u32 mask, u64 size,
			 u32 *allocator, u64 *extent, u64 *len)
{
	struct cenalloc_leases *l = cdev->leases;
	struct cenalloc_stock *st;
	bool taken = false, want;
	int a, class;

	if (!l || READ_ONCE(cdev->quiesced))
		return false;
	class = cenalloc_lease_class(size);
	a = cenalloc_lease_allocator(cdev, mask);
	if (class < 0 || a < 0 || a >= l->num_allocators)
		return false;
	spin_lock(&l->lock);
	st = cenalloc_stock_of(l, a, class);
	if (st->count) {
		*extent = st->addr[--st->count];
		*len = cenalloc_lease_sizes[class];
		*allocator = a;
		taken = true;
		/* Half gone: the stock follows the rate of first maps. */
		if (st->count == cenalloc_lease_target(st, class) / 2)
			cenalloc_lease_follow(l, st, class);
	} else {
		/* Too shallow for the rate of maps: deeper next time. */
		cenalloc_lease_deepen(st, class);
	}
	want = st->count <= cenalloc_lease_target(st, class) / 2 &&
	       !test_bit(a, &l->revoking);
	if (want)
		__set_bit(a * CENALLOC_LEASE_CLASSES + class, &l->wanted);
	spin_unlock(&l->lock);
	if (want && !READ_ONCE(cdev->removed))
		queue_work(cenalloc_unbound_wq, &l->refill_work);
	atomic64_inc(taken ? &l->taken : &l->missed);
	return taken;
}

/* Ids of the driver's range: CENALLOC_DRIVER_ID_FIRST + 0..range - 1. */
#define CENALLOC_LEASE_ID_RANGE	(CENALLOC_BATCH_REF - CENALLOC_DRIVER_ID_FIRST)

static bool cenalloc_lease_id_live(struct cenalloc_leases *l, u32 id)
{
	struct cenalloc_lease_id *each;

	hash_for_each_possible(l->live_ids, each, node, id)
		if (each->id == id)
			return true;
	return false;
}

/*
 * A fresh id from the driver's range for a leased map, in @slot: the next
 * one from the cursor that no live buffer or attachment has (the range
 * wraps every 2^30 ids, and a buffer may live through many wraps). The
 * device refuses an id in use, and such a refusal is only seen after the
 * buffer is in use: the FILL, CHECKSUM and FREE of the new buffer would
 * then reach the old one. The ids alive are hashed by id in slots their
 * buffers own: taking one costs no allocation and no lock that turns
 * interrupts off (an IDA did both, and freed its nodes through RCU, on
 * every first map: a moving cursor never reuses a bitmap). The cursor
 * skips live ids one by one (each try that fails is a live id, so the
 * tries are bounded by the ids alive), letting others in every 1024.
 * Returns 0, or -ENOSPC when the whole range is alive.
 */
int cenalloc_lease_id_get(struct cenalloc_dev *cdev,
			  struct cenalloc_lease_id *slot)
{
	struct cenalloc_leases *l = cdev->leases;
	u32 tries, id;

	BUILD_BUG_ON(CENALLOC_BATCH_REF - 1 > INT_MAX);
	spin_lock(&l->ids_lock);
	for (tries = 0; tries < CENALLOC_LEASE_ID_RANGE; tries++) {
		id = CENALLOC_DRIVER_ID_FIRST +
		     l->next_id++ % CENALLOC_LEASE_ID_RANGE;
		if (!cenalloc_lease_id_live(l, id)) {
			slot->id = id;
			hash_add(l->live_ids, &slot->node, id);
			spin_unlock(&l->ids_lock);
			return 0;
		}
		if (tries % 1024 == 1023) {
			spin_unlock(&l->ids_lock);
			cond_resched();
			spin_lock(&l->ids_lock);
		}
	}
	spin_unlock(&l->ids_lock);
	return -ENOSPC;
}

/*
 * Give back ids of cenalloc_lease_id_get(), once the commands that end
 * them on the device (FREE, DETACH) are on the ring: a later LEASED_MAP
 * that reuses one comes after them.
 */
void cenalloc_lease_ids_put(struct cenalloc_dev *cdev,
			    struct cenalloc_lease_id *ids, unsigned int num)
{
	struct cenalloc_leases *l = cdev->leases;
	unsigned int i;

	spin_lock(&l->ids_lock);
	for (i = 0; i < num; i++)
		hash_del(&ids[i].node);
	spin_unlock(&l->ids_lock);
}

/*
 * TEST HOOK (debugfs lease_next_id, root only): the id the next leased map
 * tries first, so that a selftest can reach the end of the range and the
 * reuse of live ids without 2^30 maps.
 */
u32 cenalloc_lease_next_id(struct cenalloc_dev *cdev)
{
	struct cenalloc_leases *l = cdev->leases;
	u32 id;

	spin_lock(&l->ids_lock);
	id = CENALLOC_DRIVER_ID_FIRST + l->next_id % CENALLOC_LEASE_ID_RANGE;
	spin_unlock(&l->ids_lock);
	return id;
}

int cenalloc_lease_set_next_id(struct cenalloc_dev *cdev, u64 id)
{
	struct cenalloc_leases *l = cdev->leases;

	if (id < CENALLOC_DRIVER_ID_FIRST || id >= CENALLOC_BATCH_REF)
		return -EINVAL;
	spin_lock(&l->ids_lock);
	l->next_id = id - CENALLOC_DRIVER_ID_FIRST;
	spin_unlock(&l->ids_lock);
	return 0;
}

/* A LEASE extent's own checks: page-aligned, of its class, and below 4 GiB
 * for a DMA32 allocator (where it lies is cenalloc_pools_claim()'s).
 */
static bool cenalloc_lease_extent_ok(const struct cenalloc_range *r,
				     unsigned int class, bool dma32)
{
	u64 addr = le64_to_cpu(r->addr);

	return PAGE_ALIGNED(addr) &&
	       le64_to_cpu(r->len) == cenalloc_lease_sizes[class] &&
	       (!dma32 || addr + cenalloc_lease_sizes[class] <= SZ_4G);
}

/*
 * Give @n extents of @allocator the driver will not use back to the device
 * without waiting (a posted LEASE_RETURN): the rest of a LEASE answer, an
 * extent a leased map could not use. They are counted on no block any
 * more; left leased they would stay the device's lost room.
 */
void cenalloc_lease_give_back(struct cenalloc_dev *cdev, u32 allocator,
			      const struct cenalloc_range *ranges,
			      unsigned int n)
{
	struct cenalloc_lease_return_req *rr;
	struct cenalloc_req *req;

	if (!n)
		return;
	req = cenalloc_req_alloc(cdev);
	if (!req)
		goto lost;
	rr = cenalloc_req_add(req, CENALLOC_CMD_LEASE_RETURN,
			      sizeof(*rr) + n * sizeof(ranges[0]), 0);
	if (IS_ERR(rr)) {
		cenalloc_req_free(req);
		goto lost;
	}
	rr->allocator_id = cpu_to_le32(allocator);
	rr->num_ranges = cpu_to_le32(n);
	memcpy(rr + 1, ranges, n * sizeof(ranges[0]));
	cenalloc_req_post(req);
	return;
lost:
	pr_warn_ratelimited("cenalloc: cannot give %u unused leased extents of allocator %u back\n",
			    n, allocator);
}

/*
 * Check and take the extents of a LEASE answer into the stock. Returns the
 * number taken; a bad extent stops the rest. What the stock has no room
 * for, and the well-formed extents after a bad one, go back to the device.
 */
static unsigned int cenalloc_lease_accept(struct cenalloc_dev *cdev,
					  u32 allocator, unsigned int class,
					  const void *resp, u32 len,
					  unsigned int asked)
{
	const struct cenalloc_lease_resp *lr = resp;
	struct cenalloc_leases *l = cdev->leases;
	const struct cenalloc_range *r = NULL;
	struct cenalloc_range *back = NULL;
	unsigned int n = 0, i = 0, taken = 0, k, num_back = 0, lost = 0;
	struct cenalloc_stock *st;
	bool dma32;
	u64 addr;

	dma32 = le32_to_cpu(cdev->pools[allocator].config.placement) &
		CENALLOC_PLACE_DMA32;
	if (len < sizeof(*lr))
		goto bad;
	n = le32_to_cpu(lr->num_extents);
	if (n > asked || n > (len - sizeof(*lr)) / sizeof(*r))
		goto bad;
	r = (const struct cenalloc_range *)(lr + 1);
	back = kmalloc_array(n, sizeof(*back), GFP_KERNEL);
	for (i = 0; i < n; i++) {
		addr = le64_to_cpu(r[i].addr);
		if (!cenalloc_lease_extent_ok(&r[i], class, dma32) ||
		    cenalloc_pools_claim(cdev, &r[i], 1, allocator))
			goto bad;
		spin_lock(&l->lock);
		st = cenalloc_stock_of(l, allocator, class);
		if (st->count < CENALLOC_LEASE_STOCK_MAX) {
			st->addr[st->count++] = addr;
			st->filled_at = jiffies;
			taken++;
			addr = 0;
		}
		spin_unlock(&l->lock);
		if (!addr)
			continue;
		/* No room in the stock: back to the device. */
		cenalloc_pools_unclaim(cdev, &r[i], 1);
		if (back)
			back[num_back++] = r[i];
		else
			lost++;
	}
	goto out;
bad:
	atomic64_inc(&l->bad_answers);
	cenalloc_answer_rejected(cdev);
	pr_warn_ratelimited("cenalloc: device answer rejected: LEASE for allocator %u, extent %u of %u\n",
			    allocator, i, n);
	/* The device may have leased the rest: what looks sane goes back. */
	for (k = i + 1; r && k < n; k++) {
		if (!cenalloc_lease_extent_ok(&r[k], class, dma32))
			continue;
		if (back)
			back[num_back++] = r[k];
		else
			lost++;
	}
out:
	if (lost)
		pr_warn_ratelimited("cenalloc: no memory to give %u unused leased extents of allocator %u back\n",
				    lost, allocator);
	cenalloc_lease_give_back(cdev, allocator, back, num_back);
	kfree(back);
	atomic64_add(taken, &l->leased);
	return taken;
}

/* LEASE up to @count extents of @class for @allocator; returns how many
 * came.
 */
static unsigned int cenalloc_lease_fill(struct cenalloc_dev *cdev,
					u32 allocator, unsigned int class,
					unsigned int count)
{
	struct cenalloc_lease_req *lr;
	unsigned int taken = 0;
	struct cenalloc_req *req;
	void *resp;
	u32 len;
	int ret;

	req = cenalloc_req_alloc(cdev);
	if (!req)
		return 0;
	lr = cenalloc_req_add(req, CENALLOC_CMD_LEASE, sizeof(*lr),
			      sizeof(struct cenalloc_lease_resp) +
			      count * sizeof(struct cenalloc_range));
	if (IS_ERR(lr))
		goto out;
	lr->allocator_id = cpu_to_le32(allocator);
	lr->count = cpu_to_le32(count);
	lr->size = cpu_to_le64(cenalloc_lease_sizes[class]);
	ret = cenalloc_req_submit_background(req);
	if (!ret && !cenalloc_req_answered(req, 0)) {
		cenalloc_answer_rejected(cdev);
		atomic64_inc(&cdev->leases->bad_answers);
		ret = -EIO;
	}
	if (!ret)
		ret = cenalloc_req_status(req, 0);
	if (ret) {
		pr_debug("cenalloc: LEASE for allocator %u failed: %d\n",
			 allocator, ret);
		goto out;
	}
	resp = cenalloc_req_resp(req, 0, &len);
	taken = cenalloc_lease_accept(cdev, allocator, class, resp, len, count);
	atomic64_inc(&cdev->leases->requests);
	if (taken < count)
		atomic64_inc(&cdev->leases->short_answers);
out:
	cenalloc_req_free(req);
	return taken;
}

/*
 * One LEASE for the first stock that wants one (l->move_lock held). Returns
 * false when none is left to fill, or while a map holds refills off (its
 * wanted bits stay: the last cenalloc_lease_unhold() queues the work).
 */
static bool cenalloc_lease_refill_one(struct cenalloc_leases *l)
{
	struct cenalloc_dev *cdev = l->cdev;
	unsigned int bit, a, class, have, target, bite;
	bool revoking;

	if (atomic_read(&l->holds))
		return false;
	spin_lock(&l->lock);
	bit = find_first_bit(&l->wanted, BITS_PER_LONG);
	if (bit >= BITS_PER_LONG) {
		spin_unlock(&l->lock);
		return false;
	}
	__clear_bit(bit, &l->wanted);
	a = bit / CENALLOC_LEASE_CLASSES;
	class = bit % CENALLOC_LEASE_CLASSES;
	have = cenalloc_stock_of(l, a, class)->count;
	target = cenalloc_lease_target(cenalloc_stock_of(l, a, class), class);
	revoking = test_bit(a, &l->revoking);
	spin_unlock(&l->lock);
	if (READ_ONCE(cdev->removed) || READ_ONCE(cdev->quiesced))
		return false;
	/* In bites the device zeroes quickly: a LEASE holds up every command
	 * queued behind it.
	 */
	if (revoking || have >= target)
		return true;
	bite = min3(target - have, (unsigned int)CENALLOC_MAX_LEASE,
		    CENALLOC_LEASE_BITE / cenalloc_lease_sizes[class]);
	/* A full bite and still short: another round, after what else is
	 * waiting.
	 */
	if (cenalloc_lease_fill(cdev, a, class, bite) == bite &&
	    have + bite < target) {
		spin_lock(&l->lock);
		__set_bit(bit, &l->wanted);
		spin_unlock(&l->lock);
	}
	return true;
}

static void cenalloc_lease_refill_work(struct work_struct *work)
{
	struct cenalloc_leases *l = container_of(work, struct cenalloc_leases,
						 refill_work);
	bool more;

	do {
		mutex_lock(&l->move_lock);
		more = cenalloc_lease_refill_one(l);
		mutex_unlock(&l->move_lock);
	} while (more);
}

/*
 * A map found its room in the stock (-EAGAIN) and is about to give the
 * stock back: no LEASE may take the room again until it is done
 * (cenalloc_lease_unhold()). Waits for a LEASE already on its way, whose
 * extents must be in the stock to go back with it, for a LEASE_RETURN on
 * its way (a revoke's: it emptied the stock, and the device has not seen
 * it yet), and for leased maps between the take of their extent and their
 * LEASED_MAP on the ring.
 * Returns 0, or -EINTR when a fatal signal cut a wait short (nothing held
 * then). The waits are bounded by the one request the refill work has on
 * the ring and by a leased map's local steps.
 */
int cenalloc_lease_hold(struct cenalloc_dev *cdev)
{
	struct cenalloc_leases *l = cdev->leases;

	if (!l)
		return 0;
	atomic_inc(&l->holds);
	if (mutex_lock_killable(&l->move_lock))
		goto killed;
	mutex_unlock(&l->move_lock);
	if (down_write_killable(&l->taking))
		goto killed;
	up_write(&l->taking);
	return 0;
killed:
	cenalloc_lease_unhold(cdev);
	return -EINTR;
}

/* A leased map takes an extent: see struct cenalloc_leases, taking. */
void cenalloc_lease_taking(struct cenalloc_dev *cdev)
{
	down_read(&cdev->leases->taking);
}

/* ... and its LEASED_MAP is on the ring, or the extent went back. */
void cenalloc_lease_taken(struct cenalloc_dev *cdev)
{
	up_read(&cdev->leases->taking);
}

/* The map that held refills off is done: the stocks that want one refill. */
void cenalloc_lease_unhold(struct cenalloc_dev *cdev)
{
	struct cenalloc_leases *l = cdev->leases;

	if (!l || !atomic_dec_and_test(&l->holds))
		return;
	if (READ_ONCE(l->wanted) && !READ_ONCE(cdev->removed) &&
	    !READ_ONCE(cdev->quiesced))
		queue_work(cenalloc_unbound_wq, &l->refill_work);
}

/*
 * Put back into the stock the extents of a LEASE_RETURN that never reached
 * the device: they are still the driver's, counted on their blocks.
 * Returns how many found no room (a refill that raced with the return).
 */
static unsigned int cenalloc_lease_restock(struct cenalloc_leases *l,
					   u32 allocator,
					   const struct cenalloc_range *ranges,
					   unsigned int n)
{
	struct cenalloc_stock *st;
	unsigned int i, class, left = 0;

	spin_lock(&l->lock);
	for (i = 0; i < n; i++) {
		for (class = 0; class < CENALLOC_LEASE_CLASSES; class++)
			if (le64_to_cpu(ranges[i].len) ==
			    cenalloc_lease_sizes[class])
				break;
		st = class < CENALLOC_LEASE_CLASSES ?
		     cenalloc_stock_of(l, allocator, class) : NULL;
		if (st && st->count < CENALLOC_LEASE_STOCK_MAX)
			st->addr[st->count++] = le64_to_cpu(ranges[i].addr);
		else
			left++;
	}
	spin_unlock(&l->lock);
	return left;
}

/*
 * Give every unused extent of @allocator back (LEASE_RETURN) and wait for
 * the answer (l->move_lock held; @ranges has room for a whole stock). When
 * the request never reached the device, the extents go back into the
 * stock; an extent the device will not take back is dropped from the stock
 * and stays counted on its blocks.
 */
static int cenalloc_lease_return_locked(struct cenalloc_dev *cdev,
					u32 allocator,
					struct cenalloc_range *ranges)
{
	struct cenalloc_leases *l = cdev->leases;
	struct cenalloc_lease_return_req *rr;
	struct cenalloc_stock *st;
	unsigned int n = 0, class, i;
	struct cenalloc_req *req;
	bool sent;
	int ret;

	lockdep_assert_held(&l->move_lock);
	spin_lock(&l->lock);
	set_bit(allocator, &l->revoking);
	for (class = 0; class < CENALLOC_LEASE_CLASSES; class++) {
		st = cenalloc_stock_of(l, allocator, class);
		for (i = 0; i < st->count; i++, n++) {
			ranges[n].addr = cpu_to_le64(st->addr[i]);
			ranges[n].len = cpu_to_le64(cenalloc_lease_sizes[class]);
		}
		st->count = 0;
		st->target = 0;		/* back to the parameter's */
	}
	spin_unlock(&l->lock);

	ret = 0;
	if (!n)
		goto out;
	req = cenalloc_req_alloc(cdev);
	if (!req) {
		ret = -ENOMEM;
		goto out_keep;
	}
	rr = cenalloc_req_add(req, CENALLOC_CMD_LEASE_RETURN,
			      sizeof(*rr) + n * sizeof(ranges[0]), 0);
	if (IS_ERR(rr)) {
		ret = PTR_ERR(rr);
		cenalloc_req_free(req);
		goto out_keep;
	}
	rr->allocator_id = cpu_to_le32(allocator);
	rr->num_ranges = cpu_to_le32(n);
	memcpy(rr + 1, ranges, n * sizeof(ranges[0]));
	/* The answer says whether the extents stay leased. */
	ret = cenalloc_req_submit_unkillable(req);
	sent = READ_ONCE(req->queued);
	if (!ret)
		ret = cenalloc_req_status(req, 0);
	cenalloc_req_free(req);
	if (ret && !sent)
		goto out_keep;
	if (ret)
		goto out_drop;
	cenalloc_pools_unclaim(cdev, ranges, n);
	atomic64_add(n, &l->returned);
	goto out;
out_keep:
	/* Never on the ring: still ours, in use by no buffer. */
	n = cenalloc_lease_restock(l, allocator, ranges, n);
	if (!n)
		goto out;
out_drop:
	if (ret != -ENODEV)
		pr_warn_ratelimited("cenalloc: giving back %u leased extents of allocator %u failed: %d\n",
				    n, allocator, ret);
out:
	clear_bit(allocator, &l->revoking);
	return ret;
}

static int cenalloc_lease_return(struct cenalloc_dev *cdev, u32 allocator,
				 bool try)
{
	struct cenalloc_leases *l = cdev->leases;
	struct cenalloc_range *ranges;
	int ret;

	if (!l || allocator >= l->num_allocators)
		return 0;
	ranges = kmalloc_array(CENALLOC_LEASE_CLASSES * CENALLOC_LEASE_STOCK_MAX,
			       sizeof(*ranges), GFP_KERNEL);
	if (!ranges)
		return -ENOMEM;
	if (!try) {
		mutex_lock(&l->move_lock);
	} else if (!mutex_trylock(&l->move_lock)) {
		kfree(ranges);
		return -EBUSY;
	}
	ret = cenalloc_lease_return_locked(cdev, allocator, ranges);
	mutex_unlock(&l->move_lock);
	kfree(ranges);
	return ret;
}

/*
 * Give every unused extent of @allocator back (LEASE_RETURN) and wait for
 * the answer, after a LEASE or LEASE_RETURN on its way: when this returns,
 * the device holds leased to us only what our stock holds and what leased
 * maps took. An extent the device will not take back is dropped from the
 * stock and stays counted on its blocks.
 */
int cenalloc_lease_return_all(struct cenalloc_dev *cdev, u32 allocator)
{
	return cenalloc_lease_return(cdev, allocator, false);
}

/*
 * The same from the shrinker, which may run inside an allocation of a
 * LEASE or LEASE_RETURN under way: -EBUSY then (that one moves the stock).
 */
int cenalloc_lease_try_return_all(struct cenalloc_dev *cdev, u32 allocator)
{
	return cenalloc_lease_return(cdev, allocator, true);
}

/* Give back the stock of every allocator that serves a kind of @mask. */
void cenalloc_lease_return_mask(struct cenalloc_dev *cdev, u32 mask)
{
	unsigned int i;

	for (i = 0; i < cdev->num_allocators; i++)
		if (le32_to_cpu(cdev->allocators[i].kinds) & mask)
			cenalloc_lease_return_all(cdev, i);
}

/* The device asks for the stock of @allocator (event, any context). */
void cenalloc_lease_revoke(struct cenalloc_dev *cdev, u32 allocator)
{
	struct cenalloc_leases *l = cdev->leases;

	if (!l || allocator >= l->num_allocators || READ_ONCE(cdev->quiesced))
		return;
	set_bit(allocator, &l->revoke_pending);
	queue_work(cenalloc_unbound_wq, &l->revoke_work);
}

static void cenalloc_lease_revoke_work(struct work_struct *work)
{
	struct cenalloc_leases *l = container_of(work, struct cenalloc_leases,
						 revoke_work);
	unsigned int a;

	for (a = 0; a < l->num_allocators; a++)
		if (test_and_clear_bit(a, &l->revoke_pending) &&
		    !READ_ONCE(l->cdev->removed) && !READ_ONCE(l->cdev->quiesced))
			cenalloc_lease_return_all(l->cdev, a);
}

unsigned int cenalloc_lease_stock(struct cenalloc_dev *cdev, u32 allocator,
				  unsigned int class, unsigned int *target)
{
	struct cenalloc_leases *l = cdev->leases;
	struct cenalloc_stock *st;
	unsigned int n;

	*target = 0;
	if (!l || allocator >= l->num_allocators ||
	    class >= CENALLOC_LEASE_CLASSES)
		return 0;
	spin_lock(&l->lock);
	st = cenalloc_stock_of(l, allocator, class);
	n = st->count;
	*target = cenalloc_lease_target(st, class);
	spin_unlock(&l->lock);
	return n;
}

/* Set up the (empty) stock after GET_INFO, when the device leases. */
int cenalloc_lease_init(struct cenalloc_dev *cdev)
{
	struct cenalloc_leases *l;
	unsigned int num;

	BUILD_BUG_ON(CENALLOC_MAX_ALLOCATORS * CENALLOC_LEASE_CLASSES >
		     BITS_PER_LONG);
	num = min_t(unsigned int, cdev->num_allocators, cdev->num_pools);
	if (!cdev->lease_feature || !num)
		return 0;
	/* Freed with the device state (cenalloc_dev.c). */
	l = kzalloc(struct_size(l, stock, num * CENALLOC_LEASE_CLASSES),
		    GFP_KERNEL);
	if (!l)
		return -ENOMEM;
	l->cdev = cdev;
	l->num_allocators = num;
	spin_lock_init(&l->lock);
	mutex_init(&l->move_lock);
	atomic_set(&l->holds, 0);
	init_rwsem(&l->taking);
	spin_lock_init(&l->ids_lock);
	hash_init(l->live_ids);
	INIT_WORK(&l->refill_work, cenalloc_lease_refill_work);
	INIT_WORK(&l->revoke_work, cenalloc_lease_revoke_work);
	cdev->leases = l;
	return 0;
}

/* With the device state, after the last buffer. */
void cenalloc_lease_free(struct cenalloc_dev *cdev)
{
	if (!cdev->leases)
		return;
	mutex_destroy(&cdev->leases->move_lock);
	WARN_ON(!hash_empty(cdev->leases->live_ids));
	kfree(cdev->leases);
	cdev->leases = NULL;
}

/* At remove, and again at the last put: no more refills or returns. */
void cenalloc_lease_stop(struct cenalloc_dev *cdev)
{
	struct cenalloc_leases *l = cdev->leases;

	if (!l)
		return;
	cancel_work_sync(&l->refill_work);
	cancel_work_sync(&l->revoke_work);
}
