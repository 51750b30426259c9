// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc device mask table: the constraint mask of an in-kernel device
 * that knows nothing of cenalloc and attaches with plain dma_buf_attach(),
 * keyed by dev_name(). Set by CENALLOC_IOC_SET_DEVICE_MASK or
 * cenalloc_set_device_constraints().
 */
#include <linux/cenalloc.h>
#include <linux/device.h>
#include <linux/spinlock.h>
#include <linux/string.h>

#include "cenalloc_devmask.h"

#define CENALLOC_MASK_TABLE_SIZE	32

struct cenalloc_mask_entry {
	char name[CENALLOC_MASK_NAME_LEN];
	u32 mask;
};

static DEFINE_SPINLOCK(cenalloc_mask_lock);
static struct cenalloc_mask_entry cenalloc_masks[CENALLOC_MASK_TABLE_SIZE];

int cenalloc_mask_set(const char *name, u32 mask)
{
	struct cenalloc_mask_entry *free_entry = NULL, *e;
	int ret = 0;

	if (!name[0])
		return -EINVAL;
	spin_lock(&cenalloc_mask_lock);
	for (e = cenalloc_masks; e < cenalloc_masks + CENALLOC_MASK_TABLE_SIZE; e++) {
		if (!e->name[0]) {
			if (!free_entry)
				free_entry = e;
			continue;
		}
		if (!strcmp(e->name, name))
			break;
	}
	if (e == cenalloc_masks + CENALLOC_MASK_TABLE_SIZE)
		e = NULL;
	if (!mask) {
		if (e)
			memset(e, 0, sizeof(*e));
	} else if (e) {
		e->mask = mask;
	} else if (free_entry) {
		strscpy(free_entry->name, name, sizeof(free_entry->name));
		free_entry->mask = mask;
	} else {
		ret = -ENOSPC;
	}
	spin_unlock(&cenalloc_mask_lock);
	return ret;
}

/* The mask of a device attaching with plain dma_buf_attach(). */
u32 cenalloc_device_mask(struct device *dev)
{
	u32 mask = CENALLOC_DEFAULT_MASK;
	const char *name = dev ? dev_name(dev) : NULL;
	unsigned int i;

	if (!name)
		return mask;
	spin_lock(&cenalloc_mask_lock);
	for (i = 0; i < CENALLOC_MASK_TABLE_SIZE; i++) {
		if (cenalloc_masks[i].name[0] &&
		    !strcmp(cenalloc_masks[i].name, name)) {
			mask = cenalloc_masks[i].mask;
			break;
		}
	}
	spin_unlock(&cenalloc_mask_lock);
	return mask;
}
