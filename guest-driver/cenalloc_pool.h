/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cenalloc pools (cenalloc_pool.c): guest memory donated to the device.
 */
#ifndef CENALLOC_POOL_H
#define CENALLOC_POOL_H

#include <linux/types.h>

#include "cenalloc_proto.h"

struct cenalloc_dev;
struct page;

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
	u64 allocated;				/* bytes taken from the page allocator */
	u64 donated;				/* bytes accepted by the device */
	u64 held;				/* bytes sent, outcome unknown */
	u64 longest_extent;			/* bytes */
	int status;				/* POOL_ADD result, 0 or -errno */
};

int cenalloc_pools_donate(struct cenalloc_dev *cdev);
void cenalloc_pools_free(struct cenalloc_dev *cdev);
bool cenalloc_pools_contain(struct cenalloc_dev *cdev, u64 addr, u64 len);
bool cenalloc_pool_contains(const struct cenalloc_pool *pool, u64 addr,
			    u64 len);

#endif /* CENALLOC_POOL_H */
