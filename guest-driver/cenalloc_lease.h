/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cenalloc leases (cenalloc_lease.c): a stock of zeroed extents per
 * allocator, leased from the device, that backs the first map of a small
 * buffer without a round trip.
 */
#ifndef CENALLOC_LEASE_H
#define CENALLOC_LEASE_H

#include <linux/atomic.h>
#include <linux/hashtable.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/workqueue.h>

struct cenalloc_dev;
struct cenalloc_range;

/* Extent sizes leased: a buffer takes the smallest class it fits. */
#define CENALLOC_LEASE_CLASSES		2
#define CENALLOC_LEASE_STOCK_MAX	128

/* A driver-chosen id of a live buffer or attachment (LEASED_MAP). */
struct cenalloc_lease_id {
	struct hlist_node node;			/* leases->live_ids */
	u32 id;
};

#define CENALLOC_LEASE_ID_BITS		8	/* 256 buckets */

struct cenalloc_stock {
	u64 addr[CENALLOC_LEASE_STOCK_MAX];
	unsigned int count;
	unsigned int target;		/* 0: the module parameter's */
	unsigned long filled_at;	/* jiffies: a refill's extents came */
};

struct cenalloc_leases {
	struct cenalloc_dev *cdev;
	spinlock_t lock;			/* stock, wanted, revoking */
	unsigned int num_allocators;
	unsigned long wanted;			/* bit per allocator and class */
	unsigned long revoking;			/* bit per allocator: giving back */
	unsigned long revoke_pending;		/* bit per allocator: device asked */
	struct work_struct refill_work;
	struct work_struct revoke_work;
	/*
	 * Held around each LEASE (from the stock's check until its answer is
	 * in the stock) and each LEASE_RETURN (from emptying the stock until
	 * the answer): a map that gives the stock back waits for both. Only
	 * tried from the shrinker: the holder may allocate.
	 */
	struct mutex move_lock;
	atomic_t holds;				/* maps giving the stock back */
	/*
	 * Read by a leased map from the take of its extent until its
	 * LEASED_MAP is on the ring (before, the device counts the extent
	 * as stock, and no LEASE_RETURN can name it); written once by a map
	 * that gives the stock back, to wait for those.
	 */
	struct rw_semaphore taking;
	/* Driver-chosen ids: the cursor, and those alive (by id). */
	spinlock_t ids_lock;
	u32 next_id;
	DECLARE_HASHTABLE(live_ids, CENALLOC_LEASE_ID_BITS);
	/* Counters (debugfs). */
	atomic64_t taken;			/* first maps from the stock */
	atomic64_t missed;			/* small first maps with no stock */
	atomic64_t leased;			/* extents received */
	atomic64_t requests;			/* LEASE requests answered */
	atomic64_t short_answers;		/* ... with fewer than asked */
	atomic64_t deeper;			/* targets doubled ahead of need */
	atomic64_t shallower;			/* ... halved: the stock lasted */
	atomic64_t returned;			/* extents given back */
	atomic64_t bad_answers;			/* LEASE answers refused */
	struct cenalloc_stock stock[];		/* [allocator][class] */
};

int cenalloc_lease_init(struct cenalloc_dev *cdev);
void cenalloc_lease_stop(struct cenalloc_dev *cdev);
u32 cenalloc_lease_class_size(unsigned int class);
bool cenalloc_lease_take(struct cenalloc_dev *cdev, u32 mask, u64 size,
			 u32 *allocator, u64 *extent, u64 *len);
void cenalloc_lease_free(struct cenalloc_dev *cdev);
int cenalloc_lease_id_get(struct cenalloc_dev *cdev,
			  struct cenalloc_lease_id *slot);
void cenalloc_lease_ids_put(struct cenalloc_dev *cdev,
			    struct cenalloc_lease_id *ids, unsigned int num);
u32 cenalloc_lease_next_id(struct cenalloc_dev *cdev);
int cenalloc_lease_set_next_id(struct cenalloc_dev *cdev, u64 id);
void cenalloc_lease_revoke(struct cenalloc_dev *cdev, u32 allocator);
int cenalloc_lease_return_all(struct cenalloc_dev *cdev, u32 allocator);
int cenalloc_lease_try_return_all(struct cenalloc_dev *cdev, u32 allocator);
void cenalloc_lease_give_back(struct cenalloc_dev *cdev, u32 allocator,
			      const struct cenalloc_range *ranges,
			      unsigned int n);
void cenalloc_lease_return_mask(struct cenalloc_dev *cdev, u32 mask);
int cenalloc_lease_hold(struct cenalloc_dev *cdev);
void cenalloc_lease_taking(struct cenalloc_dev *cdev);
void cenalloc_lease_taken(struct cenalloc_dev *cdev);
void cenalloc_lease_unhold(struct cenalloc_dev *cdev);
unsigned int cenalloc_lease_stock(struct cenalloc_dev *cdev, u32 allocator,
				  unsigned int class, unsigned int *target);

#endif /* CENALLOC_LEASE_H */
