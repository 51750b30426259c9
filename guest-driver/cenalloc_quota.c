// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc per-user limits: the pools are memory the guest gives the device
 * (at probe, and as they grow), shared by everyone who may open
 * /dev/cenalloc, so one user must not be able to take all of it.
 *
 * The byte limit is a share of what the pools may hold
 * (cenalloc_pools_limit(): what each may grow to, within pools_ram_percent
 * of the RAM), not of what they hold now: elastic pools start small (8 MiB
 * in the default layout), and a share of that would cap every user near
 * 4 MiB until something privileged made the pools grow, and again after
 * every shrink.
 *
 * A buffer is charged at CREATE to the effective uid of its creator (bytes,
 * rounded to pages, and one buffer) and uncharged when its dma-buf is
 * released, whoever holds it then. Per uid rather than per open file:
 * opening /dev/cenalloc again, or passing a dma-buf fd on, must not give a
 * user more. A CREATE over the limit fails with -EDQUOT. Callers with
 * CAP_SYS_RESOURCE are not limited (like the kernel's other per-user
 * resource limits).
 */
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/hashtable.h>
#include <linux/math64.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

#include "cenalloc_dev.h"
#include "cenalloc_quota.h"

static unsigned int cenalloc_user_percent = 50;
module_param_named(user_percent, cenalloc_user_percent, uint, 0644);
MODULE_PARM_DESC(user_percent,
		 "Most bytes one user's buffers may take, in percent of the memory the pools may hold, grown (0: no limit; default 50)");

static unsigned int cenalloc_user_buffers = 4096;
module_param_named(user_buffers, cenalloc_user_buffers, uint, 0644);
MODULE_PARM_DESC(user_buffers,
		 "Most buffers one user may have alive (0: no limit; default 4096)");

/* One uid with buffers alive. */
struct cenalloc_user {
	struct hlist_node node;
	kuid_t uid;
	u64 bytes;
	unsigned int buffers;
};

static DEFINE_HASHTABLE(cenalloc_users, 6);
static DEFINE_SPINLOCK(cenalloc_users_lock);

static struct cenalloc_user *cenalloc_user_find(kuid_t uid)
{
	struct cenalloc_user *user;

	hash_for_each_possible(cenalloc_users, user, node, __kuid_val(uid))
		if (uid_eq(user->uid, uid))
			return user;
	return NULL;
}

/*
 * Charge the caller for a buffer of @size bytes. Returns the record to
 * uncharge at release, NULL for a caller that is not limited, or
 * ERR_PTR(-EDQUOT) / ERR_PTR(-ENOMEM).
 */
struct cenalloc_user *cenalloc_quota_charge(struct cenalloc_dev *cdev,
					    u64 size)
{
	unsigned int percent = READ_ONCE(cenalloc_user_percent);
	unsigned int max_buffers = READ_ONCE(cenalloc_user_buffers);
	struct cenalloc_user *user, *fresh;
	kuid_t uid = current_euid();
	u64 max_bytes = U64_MAX;

	if (capable(CAP_SYS_RESOURCE))
		return NULL;
	if (percent)
		max_bytes = div_u64(cenalloc_pools_limit(cdev) *
				    min(percent, 100u), 100);
	fresh = kzalloc(sizeof(*fresh), GFP_KERNEL);
	if (!fresh)
		return ERR_PTR(-ENOMEM);

	spin_lock(&cenalloc_users_lock);
	user = cenalloc_user_find(uid);
	if (!user) {
		user = fresh;
		fresh = NULL;
		user->uid = uid;
		hash_add(cenalloc_users, &user->node, __kuid_val(uid));
	}
	if ((max_buffers && user->buffers >= max_buffers) ||
	    size > max_bytes || user->bytes > max_bytes - size) {
		if (!user->buffers) {
			hash_del(&user->node);
			fresh = user;
		}
		user = ERR_PTR(-EDQUOT);
	} else {
		user->buffers++;
		user->bytes += size;
	}
	spin_unlock(&cenalloc_users_lock);
	kfree(fresh);
	return user;
}

void cenalloc_quota_uncharge(struct cenalloc_user *user, u64 size)
{
	if (!user)
		return;
	spin_lock(&cenalloc_users_lock);
	user->bytes -= size;
	if (--user->buffers)
		user = NULL;
	else
		hash_del(&user->node);
	spin_unlock(&cenalloc_users_lock);
	kfree(user);
}
