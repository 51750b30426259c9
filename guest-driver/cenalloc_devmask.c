// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc device mask table: the constraint mask of an in-kernel device
 * that knows nothing of cenalloc and attaches with plain dma_buf_attach(),
 * set by CENALLOC_IOC_SET_DEVICE_MASK or cenalloc_set_device_constraints().
 *
 * Keying: userspace only knows names, so an entry is set by dev_name().
 * The first time a bus device (dev->bus set: PCI, platform, ...) of that
 * name attaches, the entry is bound to the struct device (a reference is
 * held; bus devices are released by their bus core): from then on it
 * follows that device through renames (device_rename() changes the name,
 * not the device), and SET_DEVICE_MASK finds it by its new name too. A
 * binding whose device is no longer registered (unplugged, driver module
 * unloaded with it) is dropped and the name binds the next device that
 * carries it. Class devices are matched by name only.
 * The bound device's name is copied at each of its attaches: the table
 * never reads dev_name() of a device other than the one attaching, since
 * nothing serializes that read against device_rename() freeing the old
 * name (SET_DEVICE_MASK by a new name finds the entry once the renamed
 * device attached again).
 * The table narrows what the exporter derives from the device
 * (cenalloc_reach.c), it never widens it.
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
	struct device *dev;	/* bound at first attach, holds a reference */
	char dev_name[CENALLOC_MASK_NAME_LEN];	/* dev's, at its last attach */
};

static DEFINE_SPINLOCK(cenalloc_mask_lock);
static struct cenalloc_mask_entry cenalloc_masks[CENALLOC_MASK_TABLE_SIZE];

int cenalloc_mask_set(const char *name, u32 mask)
{
	struct cenalloc_mask_entry *free_entry = NULL, *e;
	struct device *drop = NULL;
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
		if (!strcmp(e->name, name) ||
		    (e->dev && !strcmp(e->dev_name, name)))
			break;
	}
	if (e == cenalloc_masks + CENALLOC_MASK_TABLE_SIZE)
		e = NULL;
	if (!mask) {
		if (e) {
			drop = e->dev;
			memset(e, 0, sizeof(*e));
		}
	} else if (e) {
		e->mask = mask;
	} else if (free_entry) {
		strscpy(free_entry->name, name, sizeof(free_entry->name));
		free_entry->mask = mask;
	} else {
		ret = -ENOSPC;
	}
	spin_unlock(&cenalloc_mask_lock);
	put_device(drop);
	return ret;
}

/* The mask of a device attaching with plain dma_buf_attach(). */
u32 cenalloc_device_mask(struct device *dev)
{
	struct cenalloc_mask_entry *e, *by_name = NULL;
	char name[CENALLOC_MASK_NAME_LEN] = "";
	u32 mask = CENALLOC_DEFAULT_MASK;
	struct device *drop = NULL;

	if (!dev)
		return mask;
	/*
	 * The attaching device's own name, as its driver's messages read it
	 * (one longer than a table name matches no entry).
	 */
	if (dev_name(dev) && strscpy(name, dev_name(dev), sizeof(name)) < 0)
		name[0] = '\0';
	spin_lock(&cenalloc_mask_lock);
	for (e = cenalloc_masks; e < cenalloc_masks + CENALLOC_MASK_TABLE_SIZE; e++) {
		if (!e->name[0])
			continue;
		if (e->dev == dev) {
			by_name = NULL;
			mask = e->mask;
			strscpy(e->dev_name, name, sizeof(e->dev_name));
			break;
		}
		if (!by_name && name[0] && !strcmp(e->name, name) &&
		    (!e->dev || !device_is_registered(e->dev)))
			by_name = e;
	}
	if (by_name && dev->bus) {
		drop = by_name->dev;
		by_name->dev = get_device(dev);
		strscpy(by_name->dev_name, name, sizeof(by_name->dev_name));
	}
	if (by_name)
		mask = by_name->mask;
	spin_unlock(&cenalloc_mask_lock);
	put_device(drop);
	return mask;
}

/* Module exit: drop the device references. */
void cenalloc_mask_table_clear(void)
{
	struct device *drop[CENALLOC_MASK_TABLE_SIZE] = { NULL };
	unsigned int i;

	spin_lock(&cenalloc_mask_lock);
	for (i = 0; i < CENALLOC_MASK_TABLE_SIZE; i++) {
		drop[i] = cenalloc_masks[i].dev;
		memset(&cenalloc_masks[i], 0, sizeof(cenalloc_masks[i]));
	}
	spin_unlock(&cenalloc_mask_lock);
	for (i = 0; i < CENALLOC_MASK_TABLE_SIZE; i++)
		put_device(drop[i]);
}
