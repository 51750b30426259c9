// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc under memory pressure: a shrinker that gives back pool memory
 * donated after probe that nothing uses (cenalloc_pool.c). A pool that
 * grew gives its leased extents back first (cenalloc_lease.c), since they
 * keep the blocks under them in use; the stock is filled again when a map
 * wants it.
 *
 * The shrinker works synchronously: each block offered back is one round
 * trip to the device, at most a few dozen per pass, and it never waits for
 * a pool another task is growing or shrinking. It runs in whatever task
 * reclaims, which may have a fatal signal pending (an OOM victim, a killed
 * writer of drop_caches): the round trip in progress is finished
 * (cenalloc_req_submit_unkillable(): an abandoned POOL_REMOVE would leave
 * the block held for good), and no new one is started.
 */
#include <linux/atomic.h>
#include <linux/moduleparam.h>
#include <linux/sched/signal.h>
#include <linux/shrinker.h>

#include "cenalloc_compat.h"
#include "cenalloc_dev.h"
#include "cenalloc_lease.h"
#include "cenalloc_pool.h"
#include "cenalloc_shrink.h"

static bool shrink = true;
module_param(shrink, bool, 0644);
MODULE_PARM_DESC(shrink, "Give pool memory back under memory pressure");

/* Give back up to @pages pages; returns the pages freed. */
unsigned long cenalloc_shrink_now(struct cenalloc_dev *cdev,
				  unsigned long pages)
{
	u64 want = (u64)pages << PAGE_SHIFT, freed = 0;
	struct cenalloc_pool *pool;
	unsigned int i;

	for (i = 0; i < cdev->num_pools && freed < want; i++) {
		pool = &cdev->pools[i];
		/* A dying task (an OOM victim) starts no more round trips. */
		if (READ_ONCE(cdev->removed) || fatal_signal_pending(current))
			break;
		if (READ_ONCE(pool->donated) <= READ_ONCE(pool->initial))
			continue;
		cenalloc_lease_try_return_all(cdev, i);
		freed += cenalloc_pool_shrink(cdev, i, want - freed);
	}
	atomic64_add(freed, &cdev->shrunk_bytes);
	return freed >> PAGE_SHIFT;
}

/* Pages donated after probe that nothing holds (leased extents aside). */
static unsigned long cenalloc_shrink_count(struct shrinker *shrinker,
					   struct shrink_control *sc)
{
	struct cenalloc_dev *cdev = cenalloc_compat_shrinker_private(shrinker);
	unsigned long pages = 0;
	unsigned int i;

	if (!READ_ONCE(shrink) || READ_ONCE(cdev->removed))
		return 0;
	for (i = 0; i < cdev->num_pools; i++)
		pages += cenalloc_pool_freeable(cdev, i) >> PAGE_SHIFT;
	return pages ? pages : SHRINK_EMPTY;
}

static unsigned long cenalloc_shrink_scan(struct shrinker *shrinker,
					  struct shrink_control *sc)
{
	struct cenalloc_dev *cdev = cenalloc_compat_shrinker_private(shrinker);
	unsigned long freed;

	if (!READ_ONCE(shrink) || READ_ONCE(cdev->removed))
		return SHRINK_STOP;
	atomic64_inc(&cdev->shrink_scans);
	freed = cenalloc_shrink_now(cdev, sc->nr_to_scan);
	return freed ? freed : SHRINK_STOP;
}

/* Register the shrinker of a device whose pools may shrink. */
int cenalloc_shrinker_register(struct cenalloc_dev *cdev)
{
	struct shrinker *s;

	if (!cdev->elastic)
		return 0;
	s = cenalloc_compat_shrinker_alloc("cenalloc", cdev);
	if (!s)
		return -ENOMEM;
	s->count_objects = cenalloc_shrink_count;
	s->scan_objects = cenalloc_shrink_scan;
	s->seeks = DEFAULT_SEEKS;
	cdev->shrinker = s;
	cenalloc_compat_shrinker_register(s, "cenalloc");
	return 0;
}

/* Before remove stops the queues: waits for a scan in progress. */
void cenalloc_shrinker_unregister(struct cenalloc_dev *cdev)
{
	cenalloc_compat_shrinker_free(cdev->shrinker);
	cdev->shrinker = NULL;
}
