// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc blocks: the tree of memory donated to the device (by address,
 * under cdev->block_lock), the users each block counts (the backing of
 * every buffer and every leased extent the driver holds) and the pages
 * owned by buffer backings, so that no page backs two buffers.
 *
 * The device is not trusted: every range it names is looked up here
 * before the driver uses it (cenalloc_pool_contains(),
 * cenalloc_pools_claim(), cenalloc_pools_own()); cenalloc_pool.c grows and
 * shrinks the pools these blocks belong to.
 */
#include <linux/bitmap.h>
#include <linux/rbtree.h>
#include <linux/spinlock.h>

#include "cenalloc_dev.h"
#include "cenalloc_pool.h"

/* ---------------------------------------------------------------------- */
/* The block tree.                                                         */

/* The block containing @addr, or NULL (block_lock held). */
static struct cenalloc_block *cenalloc_block_find(struct cenalloc_dev *cdev,
						  u64 addr)
{
	struct rb_node *n = cdev->blocks.rb_node;
	struct cenalloc_block *b;

	while (n) {
		b = rb_entry(n, struct cenalloc_block, node);
		if (addr < b->addr)
			n = n->rb_left;
		else if (addr - b->addr >= b->len)
			n = n->rb_right;
		else
			return b;
	}
	return NULL;
}

/* Insert @nb; -EEXIST if it overlaps a block (block_lock held for write). */
int cenalloc_block_insert(struct cenalloc_dev *cdev,
			  struct cenalloc_block *nb)
{
	struct rb_node **p = &cdev->blocks.rb_node, *parent = NULL;
	struct cenalloc_block *b;

	while (*p) {
		parent = *p;
		b = rb_entry(parent, struct cenalloc_block, node);
		if (nb->addr + nb->len <= b->addr)
			p = &parent->rb_left;
		else if (nb->addr >= b->addr + b->len)
			p = &parent->rb_right;
		else
			return -EEXIST;
	}
	rb_link_node(&nb->node, parent, p);
	rb_insert_color(&nb->node, &cdev->blocks);
	return 0;
}

/*
 * Walk the blocks covering [addr, addr + len): calls @fn on each while it
 * returns true. False if some byte lies in no block (block_lock held).
 */
static bool cenalloc_blocks_walk(struct cenalloc_dev *cdev, u64 addr, u64 len,
				 bool (*fn)(struct cenalloc_block *, void *),
				 void *arg)
{
	struct cenalloc_block *b;
	u64 end;

	if (!len || check_add_overflow(addr, len, &end))
		return false;
	while (addr < end) {
		b = cenalloc_block_find(cdev, addr);
		if (!b || !fn(b, arg))
			return false;
		addr = b->addr + b->len;
	}
	return true;
}

static bool cenalloc_block_named(struct cenalloc_block *b, void *arg)
{
	if (b->state != CENALLOC_BLOCK_ACTIVE)
		WRITE_ONCE(b->hit, true);
	return true;
}

/* Every block in pool *arg (or any pool if it is negative). */
static bool cenalloc_block_in_pool(struct cenalloc_block *b, void *arg)
{
	int pool = *(int *)arg;

	return pool < 0 || b->pool == pool;
}

static bool cenalloc_block_named_in_pool(struct cenalloc_block *b, void *arg)
{
	return cenalloc_block_in_pool(b, arg) &&
	       cenalloc_block_named(b, NULL);
}

/* True if [addr, addr + len) lies entirely in memory donated to pool
 * @index: the check of every segment a MAP or LEASE answer names.
 */
bool cenalloc_pool_contains(struct cenalloc_dev *cdev, unsigned int index,
			    u64 addr, u64 len)
{
	int pool = index;
	bool ok;

	read_lock(&cdev->block_lock);
	ok = cenalloc_blocks_walk(cdev, addr, len,
				  cenalloc_block_named_in_pool, &pool);
	read_unlock(&cdev->block_lock);
	return ok;
}

static bool cenalloc_block_count(struct cenalloc_block *b, void *arg)
{
	int delta = *(int *)arg;

	if (b->state != CENALLOC_BLOCK_ACTIVE)
		WRITE_ONCE(b->hit, true);
	if (delta < 0 && WARN_ON_ONCE(!b->users))
		return true;
	b->users += delta;
	return true;
}

/*
 * Count @segments (leased extents; a backing goes through
 * cenalloc_pools_own()) as users of the blocks under them: those are then
 * never offered back. -EIO, counting nothing, if some byte is not memory
 * donated to pool @pool (any pool if @pool is negative).
 */
int cenalloc_pools_claim(struct cenalloc_dev *cdev,
			 const struct cenalloc_range *segments, u32 num,
			 int pool)
{
	int delta = 1;
	u32 i;

	write_lock(&cdev->block_lock);
	for (i = 0; i < num; i++) {
		if (!cenalloc_blocks_walk(cdev, le64_to_cpu(segments[i].addr),
					  le64_to_cpu(segments[i].len),
					  cenalloc_block_in_pool, &pool)) {
			write_unlock(&cdev->block_lock);
			return -EIO;
		}
	}
	for (i = 0; i < num; i++)
		cenalloc_blocks_walk(cdev, le64_to_cpu(segments[i].addr),
				     le64_to_cpu(segments[i].len),
				     cenalloc_block_count, &delta);
	write_unlock(&cdev->block_lock);
	return 0;
}

/* The reverse of a successful cenalloc_pools_claim(). */
void cenalloc_pools_unclaim(struct cenalloc_dev *cdev,
			    const struct cenalloc_range *segments, u32 num)
{
	int delta = -1;
	u32 i;

	write_lock(&cdev->block_lock);
	for (i = 0; i < num; i++)
		cenalloc_blocks_walk(cdev, le64_to_cpu(segments[i].addr),
				     le64_to_cpu(segments[i].len),
				     cenalloc_block_count, &delta);
	write_unlock(&cdev->block_lock);
}

/* ---------------------------------------------------------------------- */
/* Pages owned by buffer backings.                                         */

enum cenalloc_own_op { CENALLOC_OWN_TEST, CENALLOC_OWN_SET, CENALLOC_OWN_CLEAR };

struct cenalloc_own_walk {
	u64 addr, end;
	enum cenalloc_own_op op;
};

static bool cenalloc_block_own(struct cenalloc_block *b, void *arg)
{
	struct cenalloc_own_walk *w = arg;
	u64 start = max(w->addr, b->addr);
	u64 stop = min(w->end, b->addr + b->len);
	unsigned long first = (start - b->addr) >> PAGE_SHIFT;
	unsigned long n = (stop - start) >> PAGE_SHIFT;

	switch (w->op) {
	case CENALLOC_OWN_TEST:
		return find_next_bit(b->owned, first + n, first) >= first + n;
	case CENALLOC_OWN_SET:
		bitmap_set(b->owned, first, n);
		return true;
	default:
		bitmap_clear(b->owned, first, n);
		return true;
	}
}

/*
 * @op on the owner bits of @num page-aligned @segments (block_lock held
 * for writing; the blocks under them exist). TEST is true if no page of
 * them is owned.
 */
static bool cenalloc_segments_own(struct cenalloc_dev *cdev,
				  const struct cenalloc_range *segments,
				  u32 num, enum cenalloc_own_op op)
{
	struct cenalloc_own_walk w = { .op = op };
	u64 len;
	u32 i;

	for (i = 0; i < num; i++) {
		w.addr = le64_to_cpu(segments[i].addr);
		len = le64_to_cpu(segments[i].len);
		if (check_add_overflow(w.addr, len, &w.end) ||
		    !cenalloc_blocks_walk(cdev, w.addr, len,
					  cenalloc_block_own, &w))
			return false;
	}
	return true;
}

/*
 * Set the owner bits of @segments, one at a time: false, with none of
 * them set, if a page is owned already (by another buffer, or twice in
 * @segments).
 */
static bool cenalloc_segments_take(struct cenalloc_dev *cdev,
				   const struct cenalloc_range *segments,
				   u32 num)
{
	u32 i;

	for (i = 0; i < num; i++) {
		if (!cenalloc_segments_own(cdev, &segments[i], 1,
					   CENALLOC_OWN_TEST)) {
			cenalloc_segments_own(cdev, segments, i,
					      CENALLOC_OWN_CLEAR);
			return false;
		}
		cenalloc_segments_own(cdev, &segments[i], 1, CENALLOC_OWN_SET);
	}
	return true;
}

/*
 * Make @segments a buffer's backing, in place of @old (NULL for none):
 * counted as users of their blocks and owned; @old, disowned already
 * (cenalloc_pools_disown(): its pages may back another buffer by now, so
 * its owner bits are not touched), no longer counts as a user. -EIO,
 * changing nothing, if some byte is not memory donated to pool @pool or
 * some page already backs a buffer.
 */
int cenalloc_pools_own(struct cenalloc_dev *cdev,
		       const struct cenalloc_range *segments, u32 num, int pool,
		       const struct cenalloc_range *old, u32 old_num)
{
	int up = 1, down = -1;
	u32 i;

	write_lock(&cdev->block_lock);
	for (i = 0; i < num; i++) {
		if (!cenalloc_blocks_walk(cdev, le64_to_cpu(segments[i].addr),
					  le64_to_cpu(segments[i].len),
					  cenalloc_block_in_pool, &pool))
			goto refused;
	}
	if (!cenalloc_segments_take(cdev, segments, num))
		goto refused;
	for (i = 0; i < num; i++)
		cenalloc_blocks_walk(cdev, le64_to_cpu(segments[i].addr),
				     le64_to_cpu(segments[i].len),
				     cenalloc_block_count, &up);
	for (i = 0; old && i < old_num; i++)
		cenalloc_blocks_walk(cdev, le64_to_cpu(old[i].addr),
				     le64_to_cpu(old[i].len),
				     cenalloc_block_count, &down);
	write_unlock(&cdev->block_lock);
	return 0;
refused:
	write_unlock(&cdev->block_lock);
	return -EIO;
}

/*
 * A backing cenalloc_pools_disown() let go of stays the buffer's: owned
 * again, or -EIO (nothing changed) if some page of it now backs another.
 */
int cenalloc_pools_reown(struct cenalloc_dev *cdev,
			 const struct cenalloc_range *segments, u32 num)
{
	bool ok;

	write_lock(&cdev->block_lock);
	ok = cenalloc_segments_take(cdev, segments, num);
	write_unlock(&cdev->block_lock);
	return ok ? 0 : -EIO;
}

/*
 * The device may give the pages of this backing (still counted as users
 * of their blocks) to another buffer from now on.
 */
void cenalloc_pools_disown(struct cenalloc_dev *cdev,
			   const struct cenalloc_range *segments, u32 num)
{
	write_lock(&cdev->block_lock);
	cenalloc_segments_own(cdev, segments, num, CENALLOC_OWN_CLEAR);
	write_unlock(&cdev->block_lock);
}
