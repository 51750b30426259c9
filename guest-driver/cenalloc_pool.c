// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc pools: guest memory donated to the device, grown when a map
 * needs it and given back under memory pressure.
 *
 * At probe each pool of config space gets a small donation (its size in
 * config space, or initial_mb): the guest does not lose memory it never
 * uses. A pool grows (POOL_ADD) when a map finds no room anywhere
 * (cenalloc_pools_grow_for(), called by the map path, which then maps
 * again once) or when the device reports it low (POOL_LOW, from a work
 * item), up to its maximum: the device's max_mb, pool_limit_mb and
 * pool_ram_percent of the guest's RAM, whichever is smallest, and all pools
 * together at most pools_ram_percent of it (the guest decides what it can
 * spare, whatever the device asks). Under memory pressure the
 * shrinker (cenalloc_shrink.c) gives back (POOL_REMOVE) blocks donated
 * after probe that nothing uses.
 *
 * Memory comes in blocks from the page allocator, the largest it can
 * still find first (MAX_PAGE_ORDER: 4 MiB; this kernel has no CMA and
 * alloc_contig_pages() is not exported): a contiguous pool needs one block
 * that holds the whole buffer, so a contiguous buffer above 4 MiB needs the
 * contig_reserve region (a memmap= reservation given to the first
 * contiguous pool it fits). DMA32 pools take ZONE_DMA32 pages.
 *
 * The host is not trusted: every address the device names must lie in a
 * block of the pool it names (cenalloc_pool_contains()), and memory is
 * freed only when the driver itself knows nothing uses it. Each block
 * counts its users: the backing of every buffer and every leased extent
 * the driver holds (cenalloc_pools_claim()). A block is offered back only with no
 * user; while its POOL_REMOVE (or POOL_ADD) is on the way, an answer that
 * names it is still accepted but marks it, and a marked block is never
 * freed (held until the device state goes). A POOL_ADD with no usable
 * answer (none in time, short, malformed, or a success after a refusal in
 * the same batch) may have been accepted: its blocks are held too (answers
 * may name them) and never given back before the device is reset (debugfs
 * "held").
 *
 * No page backs two buffers: each block has a bit per page set while the
 * page is part of a buffer's backing (cenalloc_pools_own()); an answer that
 * names an owned page for another buffer is refused. A backing is disowned
 * before the device may reuse it: before its FREE is posted, and while a
 * MAP that may migrate it is on the way (cenalloc_pools_reown() takes it
 * back if it stayed). Leased extents count as users but are not owned.
 * The block tree, users and page ownership live in cenalloc_blocks.c.
 *
 * Locks: pool->lock (mutex) serializes growth and shrinking of one pool;
 * cdev->block_lock (rwlock) protects the block tree and each block's
 * state, users and mark. Map paths take only the latter, for reading or
 * briefly for writing. Shrinking never waits for a pool->lock.
 */
#include <linux/atomic.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/rbtree.h>
#include <linux/sched/signal.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/sort.h>

#include "cenalloc_compat.h"
#include "cenalloc_dev.h"
#include "cenalloc_pool.h"
#include "cenalloc_vq.h"

/*
 * A boot-time reservation (e.g. memmap=256M$0x40000000 on the kernel
 * command line) handed to the module as contig_reserve=256M@0x40000000:
 * one physically contiguous extent larger than the buddy allocator's 4 MiB
 * blocks, given to the first contiguous pool whose placement it fits. It
 * must not be System RAM (the page allocator does not own it) and must have
 * struct pages (mapped with pfn_to_page()).
 */
static char contig_reserve[64];
module_param_string(contig_reserve, contig_reserve, sizeof(contig_reserve),
		    0444);
MODULE_PARM_DESC(contig_reserve,
		 "SIZE@ADDR of a memmap= reservation for a contiguous pool");

/*
 * The reservation has one owner at a time: a device removed with buffers
 * still alive keeps its pools (and so the reservation) until the last buffer
 * goes, and a device probed meanwhile must not donate the same memory again.
 */
static atomic_t contig_reserve_owned = ATOMIC_INIT(0);

static unsigned int pool_limit_mb;
module_param(pool_limit_mb, uint, 0444);
MODULE_PARM_DESC(pool_limit_mb,
		 "Largest size of one pool in MiB (0: only the RAM fractions limit it)");

static unsigned int pool_ram_percent = 25;
module_param(pool_ram_percent, uint, 0444);
MODULE_PARM_DESC(pool_ram_percent,
		 "Largest size of one pool in percent of the RAM (1..100, default 25)");

static unsigned int pools_ram_percent = 50;
module_param(pools_ram_percent, uint, 0444);
MODULE_PARM_DESC(pools_ram_percent,
		 "Largest size of all pools together in percent of the RAM (1..100, default 50)");

static unsigned int initial_mb;
module_param(initial_mb, uint, 0444);
MODULE_PARM_DESC(initial_mb,
		 "MiB donated to each pool at probe (0: the size the device asks)");

/* POOL_ADD/POOL_REMOVE commands per batch: keeps one request under 20 KiB. */
#define CENALLOC_POOL_CMD_BATCH		4

/* Smallest block a contiguous pool accepts (64 KiB). */
#define CENALLOC_CONTIG_MIN_ORDER	4

/* A pool grows by at least this much. */
#define CENALLOC_GROW_MIN		SZ_4M

/* Blocks the shrinker offers back per pass (each one a round trip). */
#define CENALLOC_SHRINK_MAX_BLOCKS	64

/* ---------------------------------------------------------------------- */
/* Limits and the boot-time reservation.                                   */

static u64 cenalloc_ram_percent(unsigned int percent)
{
	return div_u64((u64)totalram_pages() * PAGE_SIZE *
		       clamp_t(unsigned int, percent, 1, 100), 100);
}

/*
 * Take up to @want bytes of the budget of all pools (pools_ram_percent of
 * the RAM); returns what it got, page aligned.
 */
static u64 cenalloc_budget_take(struct cenalloc_dev *cdev, u64 want)
{
	u64 limit = cenalloc_ram_percent(pools_ram_percent), got;
	s64 old = atomic64_read(&cdev->pools_bytes);

	do {
		got = (u64)old < limit ? min(want, limit - (u64)old) : 0;
		got = round_down(got, PAGE_SIZE);
		if (!got)
			return 0;
	} while (!atomic64_try_cmpxchg(&cdev->pools_bytes, &old,
				       old + (s64)got));
	return got;
}

/* Settle a take of @taken bytes of which @kept stay with the pools. */
static void cenalloc_budget_settle(struct cenalloc_dev *cdev, u64 taken,
				   u64 kept)
{
	atomic64_add((s64)kept - (s64)taken, &cdev->pools_bytes);
}

static u64 cenalloc_pool_max(const struct cenalloc_config_pool *config)
{
	u64 limit = cenalloc_ram_percent(pool_ram_percent);
	u32 max_mb = le32_to_cpu(config->max_mb);

	if (pool_limit_mb)
		limit = min_t(u64, limit, (u64)pool_limit_mb * SZ_1M);
	if (max_mb)
		limit = min_t(u64, limit, (u64)max_mb * SZ_1M);
	return round_down(limit, PAGE_SIZE);
}

static u64 cenalloc_pool_initial(struct cenalloc_pool *pool)
{
	u64 size = le64_to_cpu(pool->config.size);

	if (initial_mb)
		size = (u64)initial_mb * SZ_1M;
	if (size > pool->max) {
		pr_warn("cenalloc: pool %.16s asks %llu bytes, donating %llu\n",
			pool->config.name, size, pool->max);
		size = pool->max;
	}
	return round_down(size, PAGE_SIZE);
}

/* Parse and check contig_reserve; 0 and *len 0 when there is none. */
static int cenalloc_reserve_parse(u64 *addr, u64 *len)
{
	char *end;

	*addr = 0;
	*len = 0;
	if (!contig_reserve[0])
		return 0;
	*len = memparse(contig_reserve, &end);
	if (*end != '@')
		return -EINVAL;
	*addr = memparse(end + 1, &end);
	if (*end && *end != '\n')
		return -EINVAL;
	if (!*len || !PAGE_ALIGNED(*addr) || !PAGE_ALIGNED(*len) ||
	    *addr + *len < *addr)
		return -EINVAL;
	if (region_intersects(*addr, *len, IORESOURCE_SYSTEM_RAM,
			      IORES_DESC_NONE) != REGION_DISJOINT)
		return -EBUSY;
	if (!pfn_valid(PHYS_PFN(*addr)) ||
	    !pfn_valid(PHYS_PFN(*addr + *len - 1)))
		return -EINVAL;
	return 0;
}

/* Give the reservation to the first contiguous pool it fits. */
static void cenalloc_reserve_assign(struct cenalloc_dev *cdev)
{
	struct cenalloc_pool *pool;
	u64 addr, len;
	unsigned int i;
	u32 placement;
	int ret;

	ret = cenalloc_reserve_parse(&addr, &len);
	if (ret) {
		pr_warn("cenalloc: contig_reserve=%s ignored: %d\n",
			contig_reserve, ret);
		return;
	}
	if (!len)
		return;
	for (i = 0; i < cdev->num_pools; i++) {
		pool = &cdev->pools[i];
		placement = le32_to_cpu(pool->config.placement);
		if (!(placement & CENALLOC_PLACE_CONTIG))
			continue;
		if ((placement & CENALLOC_PLACE_DMA32) && addr + len > SZ_4G)
			continue;
		if (atomic_cmpxchg(&contig_reserve_owned, 0, 1)) {
			pr_warn("cenalloc: contig_reserve=%s ignored: another cenalloc device still owns it\n",
				contig_reserve);
			return;
		}
		pool->reserve_addr = addr;
		pool->reserve_len = len;
		pr_info("cenalloc: pool %.16s gets the reservation %llu MiB at %#llx\n",
			pool->config.name, len >> 20, addr);
		return;
	}
	pr_warn("cenalloc: no contiguous pool fits contig_reserve=%s\n",
		contig_reserve);
}

/* ---------------------------------------------------------------------- */
/* Blocks from the page allocator.                                         */

static void cenalloc_block_free(struct cenalloc_block *b)
{
	if (b->page)
		__free_pages(b->page, b->order);
	else
		atomic_set(&contig_reserve_owned, 0);
	kvfree(b->owned);
	kfree(b);
}

/* A zeroed owner bitmap for a block of @len bytes. */
static unsigned long *cenalloc_owned_alloc(u64 len)
{
	return kvcalloc(BITS_TO_LONGS(len >> PAGE_SHIFT), sizeof(long),
			GFP_KERNEL);
}

static unsigned int cenalloc_pool_min_order(struct cenalloc_pool *pool)
{
	u32 placement = le32_to_cpu(pool->config.placement);
	u32 align = max_t(u32, le32_to_cpu(pool->config.align), PAGE_SIZE);
	unsigned int order = get_order(align);

	if (placement & CENALLOC_PLACE_CONTIG)
		order = max_t(unsigned int, order, CENALLOC_CONTIG_MIN_ORDER);
	return min_t(unsigned int, order, MAX_PAGE_ORDER);
}

/*
 * Allocate blocks for @target bytes into @list, largest first; blocks of
 * a contiguous pool are at least @min_block bytes (one must hold a whole
 * buffer). Returns the bytes allocated.
 */
static u64 cenalloc_blocks_alloc(struct cenalloc_pool *pool, unsigned int index,
				 u64 target, u64 min_block,
				 struct list_head *list)
{
	u32 placement = le32_to_cpu(pool->config.placement);
	gfp_t gfp = GFP_KERNEL | __GFP_NOWARN | __GFP_NORETRY;
	unsigned int order, min_order = cenalloc_pool_min_order(pool);
	struct cenalloc_block *b;
	struct page *page;
	u64 done = 0;

	if (placement & CENALLOC_PLACE_CONTIG)
		min_order = max_t(unsigned int, min_order,
				  min_t(unsigned int, get_order(min_block),
					MAX_PAGE_ORDER));
	if (placement & CENALLOC_PLACE_DMA32)
		gfp |= GFP_DMA32;

	order = MAX_PAGE_ORDER;
	while (done < target) {
		while (order > min_order && (PAGE_SIZE << order) > target - done &&
		       (PAGE_SIZE << (order - 1)) >= min_block)
			order--;
		b = kzalloc(sizeof(*b), GFP_KERNEL);
		if (!b)
			break;
		b->owned = cenalloc_owned_alloc(PAGE_SIZE << order);
		if (!b->owned) {
			kfree(b);
			break;
		}
		page = alloc_pages(gfp, order);
		if (!page) {
			kvfree(b->owned);
			kfree(b);
			if (order == min_order)
				break;
			order--;
			continue;
		}
		if ((placement & CENALLOC_PLACE_DMA32) &&
		    page_to_phys(page) + (PAGE_SIZE << order) > SZ_4G) {
			__free_pages(page, order);
			kvfree(b->owned);
			kfree(b);
			break;
		}
		b->page = page;
		b->order = order;
		b->addr = page_to_phys(page);
		b->len = PAGE_SIZE << order;
		b->pool = index;
		b->state = CENALLOC_BLOCK_ADDING;
		list_add_tail(&b->link, list);
		done += b->len;
		cond_resched();
	}
	return done;
}

/* The reservation as a block of @list. */
static int cenalloc_reserve_block(struct cenalloc_pool *pool,
				  unsigned int index, struct list_head *list)
{
	struct cenalloc_block *b;

	b = kzalloc(sizeof(*b), GFP_KERNEL);
	if (!b)
		return -ENOMEM;
	b->owned = cenalloc_owned_alloc(pool->reserve_len);
	if (!b->owned) {
		kfree(b);
		return -ENOMEM;
	}
	b->addr = pool->reserve_addr;
	b->len = pool->reserve_len;
	b->pool = index;
	b->state = CENALLOC_BLOCK_ADDING;
	list_add_tail(&b->link, list);
	/* The block owns the reservation from now on. */
	pool->reserve_len = 0;
	return 0;
}

/* Align each block's start to the pool's alignment (trim the head). */
static void cenalloc_blocks_align(struct cenalloc_pool *pool,
				  struct list_head *list)
{
	u64 align = max_t(u64, le32_to_cpu(pool->config.align), PAGE_SIZE);
	struct cenalloc_block *b, *tmp;
	u64 start;

	list_for_each_entry_safe(b, tmp, list, link) {
		start = ALIGN(b->addr, align);
		if (start - b->addr >= b->len) {
			list_del(&b->link);
			cenalloc_block_free(b);
			continue;
		}
		/* The pages before @start stay with the block (freed with it)
		 * but are not donated.
		 */
		b->len -= start - b->addr;
		b->addr = start;
	}
}

/* ---------------------------------------------------------------------- */
/* POOL_ADD and POOL_REMOVE.                                               */

/*
 * Merge @blocks (sorted by address here) into ranges: *@ranges (kvfree it)
 * with each block's range index in @block_range. Returns the count.
 */
static int cenalloc_blocks_ranges(struct cenalloc_block **blocks,
				  unsigned int n, struct cenalloc_range **out)
{
	struct cenalloc_range *r;
	unsigned int i, k = 0;

	r = kvcalloc(n, sizeof(*r), GFP_KERNEL);
	if (!r)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		if (k && le64_to_cpu(r[k - 1].addr) + le64_to_cpu(r[k - 1].len) ==
			 blocks[i]->addr) {
			le64_add_cpu(&r[k - 1].len, blocks[i]->len);
			continue;
		}
		r[k].addr = cpu_to_le64(blocks[i]->addr);
		r[k].len = cpu_to_le64(blocks[i]->len);
		k++;
	}
	*out = r;
	return k;
}

static int cenalloc_block_ptr_cmp(const void *a, const void *b)
{
	const struct cenalloc_block *x = *(struct cenalloc_block * const *)a;
	const struct cenalloc_block *y = *(struct cenalloc_block * const *)b;

	if (x->addr < y->addr)
		return -1;
	return x->addr > y->addr;
}

/* What became of a range sent with POOL_ADD or POOL_REMOVE. */
enum cenalloc_outcome {
	CENALLOC_REFUSED,	/* not sent, or a well-formed refusal */
	CENALLOC_ACCEPTED,
	CENALLOC_UNKNOWN,	/* no usable answer: the device may have done it */
};

/*
 * Send @ranges of pool @index with @opcode, CENALLOC_MAX_POOL_RANGES per
 * command and a few commands per batch, until the device refuses one.
 * @outcome[i] gets what became of range i. Returns 0, the first refusal,
 * the transport error, or -EIO when some outcome is unknown.
 */
static int cenalloc_pool_send(struct cenalloc_dev *cdev, u16 opcode, u32 index,
			      const struct cenalloc_range *ranges,
			      unsigned int num, u8 *outcome)
{
	unsigned int first[CENALLOC_POOL_CMD_BATCH];
	unsigned int counts[CENALLOC_POOL_CMD_BATCH];
	unsigned int sent = 0, n, cmd, i, batch_cmds;
	struct cenalloc_pool_add_req *add;
	bool stopped = false, unknown = false;
	struct cenalloc_req *req;
	int ret = 0, err, status;

	/* POOL_ADD and POOL_REMOVE requests have the same layout. */
	BUILD_BUG_ON(sizeof(struct cenalloc_pool_add_req) !=
		     sizeof(struct cenalloc_pool_remove_req));
	memset(outcome, CENALLOC_REFUSED, num);
	batch_cmds = min_t(u32, cdev->max_batch, CENALLOC_POOL_CMD_BATCH);
	while (sent < num && !stopped) {
		req = cenalloc_req_alloc(cdev);
		if (!req) {
			ret = -ENOMEM;
			break;
		}
		for (cmd = 0; cmd < batch_cmds && sent < num; cmd++) {
			n = min_t(unsigned int, num - sent,
				  CENALLOC_MAX_POOL_RANGES);
			add = cenalloc_req_add(req, opcode, sizeof(*add) +
					       n * sizeof(struct cenalloc_range),
					       0);
			if (IS_ERR(add))
				break;
			add->pool_index = cpu_to_le32(index);
			add->num_ranges = cpu_to_le32(n);
			memcpy(add + 1, &ranges[sent],
			       n * sizeof(struct cenalloc_range));
			first[cmd] = sent;
			counts[cmd] = n;
			sent += n;
		}
		if (!cmd) {
			cenalloc_req_free(req);
			ret = -ENOMEM;
			break;
		}
		/* The answer says who owns the memory: a fatal signal of the
		 * task (a dying shrinker) must not make it unknown.
		 */
		err = cenalloc_req_submit_unkillable(req);
		if (err && !req->queued) {
			/* Never reached the device. */
			cenalloc_req_free(req);
			ret = err;
			break;
		}
		for (i = 0; i < cmd; i++) {
			if (err || !cenalloc_req_answered(req, i)) {
				memset(&outcome[first[i]], CENALLOC_UNKNOWN,
				       counts[i]);
				unknown = true;
				stopped = true;
				continue;
			}
			status = cenalloc_req_status(req, i);
			if (status) {
				if (!ret)
					ret = status;
				stopped = true;
			} else if (stopped) {
				/* A success after a refusal is a lie. */
				memset(&outcome[first[i]], CENALLOC_UNKNOWN,
				       counts[i]);
				unknown = true;
			} else {
				memset(&outcome[first[i]], CENALLOC_ACCEPTED,
				       counts[i]);
			}
		}
		cenalloc_req_free(req);
		if (err)
			ret = err;
	}
	if (unknown) {
		cenalloc_answer_rejected(cdev);
		if (!ret)
			ret = -EIO;
	}
	return ret;
}

/* The range index (in the merged list) of the block at @addr. */
static unsigned int cenalloc_range_of(const struct cenalloc_range *ranges,
				      unsigned int num, u64 addr)
{
	unsigned int i;

	for (i = 0; i < num; i++)
		if (addr >= le64_to_cpu(ranges[i].addr) &&
		    addr - le64_to_cpu(ranges[i].addr) < le64_to_cpu(ranges[i].len))
			return i;
	return num;
}

/*
 * Donate the blocks of @list to pool @index (pool->lock held): they enter
 * the tree first (ADDING), so that an answer naming them right after the
 * device took them is not refused. Those the device took become ACTIVE on
 * the pool's list; those it may have taken (no usable answer), or that an
 * answer named meanwhile, are held; the others are freed. *@kept gets the
 * bytes of page allocator memory that stay (given or held). Returns the
 * bytes donated, or -errno if none.
 */
static s64 cenalloc_pool_add_blocks(struct cenalloc_dev *cdev,
				    unsigned int index, struct list_head *list,
				    bool initial, u64 *kept)
{
	struct cenalloc_pool *pool = &cdev->pools[index];
	struct cenalloc_block **blocks, *b, *tmp;
	struct cenalloc_range *ranges = NULL;
	unsigned int n = 0, i;
	u8 *outcome = NULL;
	LIST_HEAD(refused);
	u64 bytes = 0;
	u8 fate;
	int num, ret;

	*kept = 0;

	list_for_each_entry(b, list, link)
		n++;
	if (!n)
		return -ENOMEM;
	blocks = kvcalloc(n, sizeof(*blocks), GFP_KERNEL);
	if (!blocks) {
		ret = -ENOMEM;
		goto out_free_list;
	}
	i = 0;
	list_for_each_entry(b, list, link)
		blocks[i++] = b;
	sort(blocks, n, sizeof(*blocks), cenalloc_block_ptr_cmp, NULL);
	num = cenalloc_blocks_ranges(blocks, n, &ranges);
	if (num < 0) {
		ret = num;
		goto out_free_blocks;
	}
	outcome = kvmalloc(num, GFP_KERNEL);
	if (!outcome) {
		ret = -ENOMEM;
		goto out_free_ranges;
	}

	write_lock(&cdev->block_lock);
	for (i = 0; i < n; i++) {
		blocks[i]->initial = initial;
		if (cenalloc_block_insert(cdev, blocks[i])) {
			/* The page allocator gave memory we already have?
			 * Undo, donate nothing.
			 */
			while (i--)
				rb_erase(&blocks[i]->node, &cdev->blocks);
			write_unlock(&cdev->block_lock);
			ret = -EEXIST;
			goto out_free_ranges;
		}
	}
	write_unlock(&cdev->block_lock);

	ret = cenalloc_pool_send(cdev, CENALLOC_CMD_POOL_ADD, index, ranges,
				 num, outcome);
	pool->status = ret;

	write_lock(&cdev->block_lock);
	for (i = 0; i < n; i++) {
		b = blocks[i];
		fate = outcome[cenalloc_range_of(ranges, num, b->addr)];
		if (fate == CENALLOC_ACCEPTED) {
			b->state = CENALLOC_BLOCK_ACTIVE;
			bytes += b->len;
			pool->longest_extent = max(pool->longest_extent, b->len);
		} else if (fate == CENALLOC_UNKNOWN || b->hit) {
			/* The device may use it: never the page allocator's. */
			b->state = CENALLOC_BLOCK_QUARANTINED;
			pool->held += b->len;
		} else {
			rb_erase(&b->node, &cdev->blocks);
			list_move_tail(&b->link, &refused);
			continue;
		}
		if (b->page)
			*kept += PAGE_SIZE << b->order;
	}
	list_splice_tail_init(list, &pool->blocks);
	write_unlock(&cdev->block_lock);
	if (ret == -EIO && pool->held)
		pr_warn("cenalloc: pool %.16s: no usable answer to POOL_ADD: %llu bytes stay with the device until it is reset\n",
			pool->config.name, pool->held);
	list_for_each_entry_safe(b, tmp, &refused, link) {
		list_del(&b->link);
		cenalloc_block_free(b);
	}
	pool->donated += bytes;
	if (initial)
		pool->initial += bytes;
	else
		pool->grown += bytes;
	kvfree(outcome);
	kvfree(ranges);
	kvfree(blocks);
	return bytes ? (s64)bytes : (ret ? ret : -ENOMEM);

out_free_ranges:
	kvfree(outcome);
	kvfree(ranges);
out_free_blocks:
	kvfree(blocks);
out_free_list:
	list_for_each_entry_safe(b, tmp, list, link) {
		list_del(&b->link);
		cenalloc_block_free(b);
	}
	return ret;
}

/*
 * Grow pool @index by @bytes (pool->lock held); a contiguous pool gets
 * blocks of at least @min_block. Returns the bytes donated or -errno.
 */
static s64 cenalloc_pool_grow(struct cenalloc_dev *cdev, unsigned int index,
			      u64 bytes, u64 min_block, bool initial)
{
	struct cenalloc_pool *pool = &cdev->pools[index];
	u64 room, got, reserved, taken = 0, kept = 0, size = pool->donated +
							   pool->held;
	LIST_HEAD(list);
	s64 ret;

	lockdep_assert_held(&pool->lock);
	if (READ_ONCE(cdev->removed) || READ_ONCE(cdev->quiesced) ||
	    cenalloc_dev_usable(cdev))
		return -ENODEV;
	room = pool->max > size ? pool->max - size : 0;
	bytes = min(round_up(bytes, PAGE_SIZE), room);
	if (initial && pool->reserve_len) {
		/* The reservation counts toward the donation at probe (it
		 * is not RAM the page allocator has: no budget).
		 */
		reserved = pool->reserve_len;
		ret = cenalloc_reserve_block(pool, index, &list);
		if (ret)
			return ret;
		bytes -= min(bytes, reserved);
	} else if (!bytes) {
		return -ENOSPC;
	}
	if (bytes) {
		taken = cenalloc_budget_take(cdev, bytes);
		if (taken < min_block) {
			cenalloc_budget_settle(cdev, taken, 0);
			return -ENOSPC;
		}
		if (taken < bytes)
			pr_warn_ratelimited("cenalloc: pool %.16s: %llu of %llu bytes within pools_ram_percent=%u\n",
					    pool->config.name, taken, bytes,
					    pools_ram_percent);
		bytes = taken;
	}
	got = cenalloc_blocks_alloc(pool, index, bytes, min_block, &list);
	cenalloc_blocks_align(pool, &list);
	if (list_empty(&list)) {
		cenalloc_budget_settle(cdev, taken, 0);
		return bytes ? -ENOMEM : -ENOSPC;
	}
	ret = cenalloc_pool_add_blocks(cdev, index, &list, initial, &kept);
	cenalloc_budget_settle(cdev, taken, kept);
	if (ret < 0)
		pool->grow_failures++;
	else if (!initial)
		pr_debug("cenalloc: pool %.16s grew by %lld KiB (%llu KiB allocated)\n",
			 pool->config.name, ret >> 10, got >> 10);
	return ret;
}

/* Donate every pool's initial size at probe. A pool that fails is reported
 * and keeps status != 0; it may still grow later.
 */
int cenalloc_pools_donate(struct cenalloc_dev *cdev)
{
	struct cenalloc_block *b;
	struct cenalloc_pool *pool;
	unsigned int i, blocks;
	u64 initial;
	s64 ret;

	cenalloc_reserve_assign(cdev);
	for (i = 0; i < cdev->num_pools; i++) {
		pool = &cdev->pools[i];
		initial = cenalloc_pool_initial(pool);
		ret = 0;
		mutex_lock(&pool->lock);
		/* Nothing at probe: it grows when a map needs it. */
		if (initial || pool->reserve_len)
			ret = cenalloc_pool_grow(cdev, i, initial, 0, true);
		if (ret < 0 && !pool->status)
			pool->status = (int)ret;
		blocks = 0;
		list_for_each_entry(b, &pool->blocks, link)
			blocks += b->state == CENALLOC_BLOCK_ACTIVE;
		mutex_unlock(&pool->lock);
		/* A device that cannot answer fails the probe. */
		if (ret == -ENODEV || ret == -ETIMEDOUT || ret == -EINTR)
			return (int)ret;
		/* One line per pool (test_second_device counts them). */
		if (ret < 0)
			pr_warn("cenalloc: pool %.16s: donation failed: %lld\n",
				pool->config.name, ret);
		else
			pr_info("cenalloc: pool %.16s: donated %llu MiB in %u blocks at probe (%llu KiB), may grow to %llu MiB\n",
				pool->config.name, pool->donated >> 20, blocks,
				pool->donated >> 10, pool->max >> 20);
	}
	return 0;
}

static bool cenalloc_pool_serves(struct cenalloc_pool *pool, u32 mask)
{
	return le32_to_cpu(pool->config.kinds) & mask;
}

/*
 * A map found no room for @size bytes with access mask @mask: grow the
 * first pool, in priority order, that serves a kind of the mask and can
 * grow by enough (a contiguous one, for a @contiguous buffer or by
 * placement, in one block holding the whole buffer). Returns 0 when a pool
 * grew (the caller maps again, once), -ENOMEM with a log line otherwise.
 */
int cenalloc_pools_grow_for(struct cenalloc_dev *cdev, u32 mask, u64 size,
			    bool contiguous)
{
	struct cenalloc_pool *pool;
	u64 bytes, min_block;
	unsigned int i;
	u32 placement;
	s64 ret;

	if (!cdev->elastic)
		return -ENOMEM;
	size = round_up(size, PAGE_SIZE);
	for (i = 0; i < cdev->num_pools; i++) {
		pool = &cdev->pools[i];
		if (!cenalloc_pool_serves(pool, mask))
			continue;
		placement = le32_to_cpu(pool->config.placement);
		if (contiguous && !(placement & CENALLOC_PLACE_CONTIG))
			continue;
		min_block = placement & CENALLOC_PLACE_CONTIG ? size : 0;
		if (min_block > (PAGE_SIZE << MAX_PAGE_ORDER)) {
			pr_warn_ratelimited("cenalloc: pool %.16s cannot grow by %llu contiguous bytes: the guest gives at most %lu (contig_reserve= gives more)\n",
					    pool->config.name, size,
					    PAGE_SIZE << MAX_PAGE_ORDER);
			continue;
		}
		mutex_lock(&pool->lock);
		bytes = max_t(u64, size, CENALLOC_GROW_MIN);
		if (pool->donated + pool->held + size > pool->max) {
			mutex_unlock(&pool->lock);
			continue;
		}
		ret = cenalloc_pool_grow(cdev, i, bytes, min_block, false);
		mutex_unlock(&pool->lock);
		if (ret >= (s64)size)
			return 0;
		if (ret == -ENODEV)
			return -ENODEV;
	}
	pr_warn_ratelimited("cenalloc: no pool can grow for %llu bytes of mask %#x: -ENOMEM\n",
			    size, mask);
	return -ENOMEM;
}

/* The device reported pool @index low: grow it in the background. */
void cenalloc_pool_low(struct cenalloc_dev *cdev, u32 index)
{
	if (index >= cdev->num_pools || !cdev->elastic ||
	    READ_ONCE(cdev->quiesced))
		return;
	set_bit(index, &cdev->pool_low_pending);
	queue_work(cenalloc_unbound_wq, &cdev->pool_low_work);
}

/* Whether the device still has less than an eighth of pool @index free. */
static bool cenalloc_pool_still_low(struct cenalloc_dev *cdev,
				    unsigned int index)
{
	struct cenalloc_allocator_info *allocators;
	struct cenalloc_info_resp info;
	bool low = false;
	int num;

	allocators = kcalloc(CENALLOC_MAX_ALLOCATORS, sizeof(*allocators),
			     GFP_KERNEL);
	if (!allocators)
		return false;
	num = cenalloc_get_info(cdev, &info, allocators,
				CENALLOC_MAX_ALLOCATORS);
	if (num > (int)index)
		low = le64_to_cpu(allocators[index].free) <
		      le64_to_cpu(allocators[index].capacity) / 8;
	kfree(allocators);
	return low;
}

/*
 * POOL_LOW came for some pools (the device sends one per allocation while
 * a pool is low): grow each by a quarter, if it is still low.
 */
static void cenalloc_pool_low_work(struct work_struct *work)
{
	struct cenalloc_dev *cdev = container_of(work, struct cenalloc_dev,
						 pool_low_work);
	struct cenalloc_pool *pool;
	unsigned int i;

	for (i = 0; i < cdev->num_pools; i++) {
		if (!test_and_clear_bit(i, &cdev->pool_low_pending))
			continue;
		pool = &cdev->pools[i];
		if (READ_ONCE(cdev->removed) || READ_ONCE(cdev->quiesced) ||
		    READ_ONCE(pool->donated) >= pool->max ||
		    !cenalloc_pool_still_low(cdev, i))
			continue;
		mutex_lock(&pool->lock);
		cenalloc_pool_grow(cdev, i,
				   max_t(u64, CENALLOC_GROW_MIN,
					 pool->donated / 4), 0, false);
		mutex_unlock(&pool->lock);
	}
}

/* ---------------------------------------------------------------------- */
/* Giving memory back.                                                     */

/*
 * Offer block @b of pool @index back (pool->lock held, @b ACTIVE, not
 * initial). Returns its bytes if the device let it go, else 0.
 */
static u64 cenalloc_block_remove(struct cenalloc_dev *cdev, unsigned int index,
				 struct cenalloc_block *b)
{
	struct cenalloc_pool *pool = &cdev->pools[index];
	struct cenalloc_range range;
	u8 outcome;
	bool keep;
	u64 len;

	write_lock(&cdev->block_lock);
	if (b->users || b->state != CENALLOC_BLOCK_ACTIVE) {
		write_unlock(&cdev->block_lock);
		return 0;
	}
	b->state = CENALLOC_BLOCK_LEAVING;
	b->hit = false;
	write_unlock(&cdev->block_lock);

	range.addr = cpu_to_le64(b->addr);
	range.len = cpu_to_le64(b->len);
	cenalloc_pool_send(cdev, CENALLOC_CMD_POOL_REMOVE, index, &range, 1,
			   &outcome);

	write_lock(&cdev->block_lock);
	if (outcome == CENALLOC_REFUSED) {
		b->state = CENALLOC_BLOCK_ACTIVE;
		write_unlock(&cdev->block_lock);
		return 0;
	}
	/* Given back, maybe (no usable answer), or while an answer named it:
	 * held.
	 */
	keep = outcome == CENALLOC_UNKNOWN || b->hit || b->users;
	if (keep) {
		b->state = CENALLOC_BLOCK_QUARANTINED;
	} else {
		rb_erase(&b->node, &cdev->blocks);
		list_del(&b->link);
	}
	write_unlock(&cdev->block_lock);

	pool->donated -= b->len;
	if (keep) {
		pool->held += b->len;
		pr_warn_ratelimited("cenalloc: pool %.16s: %llu KiB at %#llx %s: held until the device resets\n",
				    pool->config.name, b->len >> 10, b->addr,
				    outcome == CENALLOC_UNKNOWN ?
				    "may have been given back (no usable answer)" :
				    "given back while it was in use");
		return 0;
	}
	len = b->len;
	pool->returned += len;
	if (b->page)
		cenalloc_budget_settle(cdev, PAGE_SIZE << b->order, 0);
	cenalloc_block_free(b);
	return len;
}

/*
 * Give back up to @want bytes of memory of pool @index donated after probe
 * that nothing uses, newest first, unless another task is growing or
 * shrinking that pool. Returns the bytes freed.
 */
u64 cenalloc_pool_shrink(struct cenalloc_dev *cdev, unsigned int index,
			 u64 want)
{
	struct cenalloc_pool *pool = &cdev->pools[index];
	struct cenalloc_block *b, *prev;
	unsigned int tried = 0;
	u64 freed = 0;

	if (!mutex_trylock(&pool->lock))
		return 0;
	list_for_each_entry_safe_reverse(b, prev, &pool->blocks, link) {
		if (freed >= want || tried >= CENALLOC_SHRINK_MAX_BLOCKS ||
		    READ_ONCE(cdev->removed) || READ_ONCE(cdev->quiesced) ||
		    fatal_signal_pending(current))
			break;
		if (b->initial || b->state != CENALLOC_BLOCK_ACTIVE ||
		    READ_ONCE(b->users))
			continue;
		tried++;
		freed += cenalloc_block_remove(cdev, index, b);
	}
	mutex_unlock(&pool->lock);
	return freed;
}

/* Bytes of pool @index donated after probe that nothing holds now. */
u64 cenalloc_pool_freeable(struct cenalloc_dev *cdev, unsigned int index)
{
	struct cenalloc_block *b;
	struct rb_node *n;
	u64 bytes = 0;

	read_lock(&cdev->block_lock);
	for (n = rb_first(&cdev->blocks); n; n = rb_next(n)) {
		b = rb_entry(n, struct cenalloc_block, node);
		if (b->pool == index && !b->initial &&
		    b->state == CENALLOC_BLOCK_ACTIVE && !b->users)
			bytes += b->len;
	}
	read_unlock(&cdev->block_lock);
	return bytes;
}

/* Pool state before probe donates anything. */
void cenalloc_pools_init(struct cenalloc_dev *cdev)
{
	struct cenalloc_pool *pool;
	unsigned int i;

	cdev->blocks = RB_ROOT;
	rwlock_init(&cdev->block_lock);
	INIT_WORK(&cdev->pool_low_work, cenalloc_pool_low_work);
	for (i = 0; i < cdev->num_pools; i++) {
		pool = &cdev->pools[i];
		mutex_init(&pool->lock);
		INIT_LIST_HEAD(&pool->blocks);
		pool->max = cenalloc_pool_max(&pool->config);
	}
}

/*
 * The most the pools may hold: what each may grow to, within the budget of
 * all pools (pools_ram_percent of the RAM), and never less than what they
 * hold now. The per-user byte limit is a share of this (cenalloc_quota.c):
 * a share of what is donated now would follow every growth and shrink.
 */
u64 cenalloc_pools_limit(struct cenalloc_dev *cdev)
{
	u64 most = 0, now = 0, donated;
	unsigned int i;

	for (i = 0; i < cdev->num_pools; i++) {
		donated = READ_ONCE(cdev->pools[i].donated);
		now += donated;
		most += max(cdev->pools[i].max, donated);
	}
	most = min(most, cenalloc_ram_percent(pools_ram_percent));
	return max(most, now);
}

/* At remove, and again at the last put: no more growing. */
void cenalloc_pools_stop(struct cenalloc_dev *cdev)
{
	if (!cdev->pool_low_work.func)
		return;		/* probe stopped before pools_init */
	cancel_work_sync(&cdev->pool_low_work);
}

/* At the last put: every block goes back to the kernel, held ones
 * too (the device state is gone).
 */
void cenalloc_pools_free(struct cenalloc_dev *cdev)
{
	struct cenalloc_block *b, *tmp;
	struct cenalloc_pool *pool;
	unsigned int i;

	for (i = 0; i < cdev->num_pools; i++) {
		pool = &cdev->pools[i];
		if (!pool->blocks.next)
			continue;	/* probe stopped before pools_init */
		list_for_each_entry_safe(b, tmp, &pool->blocks, link) {
			list_del(&b->link);
			rb_erase(&b->node, &cdev->blocks);
			cenalloc_block_free(b);
		}
		if (pool->reserve_len) {
			pool->reserve_len = 0;
			atomic_set(&contig_reserve_owned, 0);
		}
		mutex_destroy(&pool->lock);
	}
}
