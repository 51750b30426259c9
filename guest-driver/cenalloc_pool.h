/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cenalloc pools (cenalloc_pool.c): guest memory donated to the device,
 * grown on demand and given back under memory pressure.
 */
#ifndef CENALLOC_POOL_H
#define CENALLOC_POOL_H

#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rbtree.h>
#include <linux/types.h>

#include "cenalloc_proto.h"

struct cenalloc_dev;
struct page;

/* Where a block of donated memory stands. */
enum cenalloc_block_state {
	CENALLOC_BLOCK_ADDING,		/* POOL_ADD sent, no answer yet */
	CENALLOC_BLOCK_ACTIVE,		/* the device has it */
	CENALLOC_BLOCK_LEAVING,		/* POOL_REMOVE sent, no answer yet */
	CENALLOC_BLOCK_QUARANTINED,	/* never freed: see cenalloc_pool.c */
};

/*
 * One block of guest memory given to a pool: 2^order pages from the page
 * allocator (page), or the contig_reserve region (page NULL). Blocks are
 * found by address in cdev->blocks (under cdev->block_lock) and listed
 * per pool, oldest first (under pool->lock).
 */
struct cenalloc_block {
	struct rb_node node;
	struct list_head link;
	u64 addr, len;
	struct page *page;
	unsigned int order;
	unsigned int pool;
	enum cenalloc_block_state state;
	bool initial;			/* donated at probe: never shrunk */
	bool hit;			/* named by an answer while not ACTIVE */
	unsigned int users;		/* buffer backings and leased extents on it */
	unsigned long *owned;		/* a bit per page backing some buffer */
};

/* Guest memory donated to one pool of config space. */
struct cenalloc_pool {
	struct cenalloc_config_pool config;	/* as read from config space */
	struct mutex lock;			/* growth and shrinking */
	struct list_head blocks;		/* oldest first */
	u64 max;				/* bytes it may grow to */
	u64 donated;				/* bytes the device has now */
	u64 initial;				/* bytes donated at probe */
	u64 grown;				/* bytes added after probe, in all */
	u64 returned;				/* bytes given back, in all */
	/* Bytes kept from both the device and the page allocator until the
	 * device resets: sent with no usable answer, or named by an answer
	 * while on the way in or out (cenalloc_pool.c).
	 */
	u64 held;
	u64 reserve_addr, reserve_len;		/* boot-time reservation */
	u64 longest_extent;			/* bytes */
	unsigned int grow_failures;
	int status;				/* last POOL_ADD result, 0 or -errno */
};

void cenalloc_pools_init(struct cenalloc_dev *cdev);
int cenalloc_pools_donate(struct cenalloc_dev *cdev);
void cenalloc_pools_stop(struct cenalloc_dev *cdev);
u64 cenalloc_pools_limit(struct cenalloc_dev *cdev);
void cenalloc_pools_free(struct cenalloc_dev *cdev);
int cenalloc_pools_claim(struct cenalloc_dev *cdev,
			 const struct cenalloc_range *segments, u32 num,
			 int pool);
void cenalloc_pools_unclaim(struct cenalloc_dev *cdev,
			    const struct cenalloc_range *segments, u32 num);
int cenalloc_pools_own(struct cenalloc_dev *cdev,
		       const struct cenalloc_range *segments, u32 num, int pool,
		       const struct cenalloc_range *old, u32 old_num);
int cenalloc_pools_reown(struct cenalloc_dev *cdev,
			 const struct cenalloc_range *segments, u32 num);
void cenalloc_pools_disown(struct cenalloc_dev *cdev,
			   const struct cenalloc_range *segments, u32 num);
int cenalloc_pools_grow_for(struct cenalloc_dev *cdev, u32 mask, u64 size,
			    bool contiguous);
void cenalloc_pool_low(struct cenalloc_dev *cdev, u32 index);
u64 cenalloc_pool_shrink(struct cenalloc_dev *cdev, unsigned int index,
			 u64 want);
u64 cenalloc_pool_freeable(struct cenalloc_dev *cdev, unsigned int index);
bool cenalloc_pool_contains(struct cenalloc_dev *cdev, unsigned int index,
			    u64 addr, u64 len);
/* cenalloc_blocks.c, for cenalloc_pool.c: add a new block to the tree. */
int cenalloc_block_insert(struct cenalloc_dev *cdev,
			  struct cenalloc_block *nb);

#endif /* CENALLOC_POOL_H */
