/* SPDX-License-Identifier: GPL-2.0 */
/* cenalloc per-user limits of /dev/cenalloc buffers (cenalloc_quota.c). */
#ifndef CENALLOC_QUOTA_H
#define CENALLOC_QUOTA_H

#include <linux/types.h>

struct cenalloc_dev;
struct cenalloc_user;

struct cenalloc_user *cenalloc_quota_charge(struct cenalloc_dev *cdev,
					    u64 size);
void cenalloc_quota_uncharge(struct cenalloc_user *user, u64 size);

#endif /* CENALLOC_QUOTA_H */
