// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc device state: creation, reference counting, and the one device
 * that /dev/cenalloc serves (published at the end of probe, withdrawn at
 * remove).
 */
#include <linux/slab.h>

#include "cenalloc_dev.h"
#include "cenalloc_lease.h"

static DEFINE_MUTEX(cenalloc_current_lock);
/* The device being probed or bound (at most one), and the one served. */
static struct cenalloc_dev *cenalloc_claimed;
static struct cenalloc_dev *cenalloc_current;

static void cenalloc_dev_release(struct kref *ref)
{
	struct cenalloc_dev *cdev = container_of(ref, struct cenalloc_dev, ref);

	WARN_ON(!list_empty(&cdev->buffers));
	/*
	 * remove cancelled these, but the event interrupt or a map could
	 * queue one between its check of quiesced/removed and that cancel:
	 * none may run once the state below is freed (no buffer and no
	 * virtqueue is left to queue another).
	 */
	cenalloc_lease_stop(cdev);
	cenalloc_pools_stop(cdev);
	/* The stock (cenalloc_lease.c): its blocks go with the pools. */
	cenalloc_lease_free(cdev);
	cenalloc_pools_free(cdev);
	mutex_destroy(&cdev->lock);
	kfree(cdev);
}

void cenalloc_dev_put(struct cenalloc_dev *cdev)
{
	kref_put(&cdev->ref, cenalloc_dev_release);
}

struct cenalloc_dev *cenalloc_dev_get_current(void)
{
	struct cenalloc_dev *cdev;

	mutex_lock(&cenalloc_current_lock);
	cdev = cenalloc_current;
	if (cdev)
		kref_get(&cdev->ref);
	mutex_unlock(&cenalloc_current_lock);
	return cdev;
}

/* A new device state with one reference (the virtio driver's). */
struct cenalloc_dev *cenalloc_dev_new(struct virtio_device *vdev)
{
	struct cenalloc_dev *cdev;

	cdev = kzalloc(sizeof(*cdev), GFP_KERNEL);
	if (!cdev)
		return NULL;
	kref_init(&cdev->ref);
	mutex_init(&cdev->lock);
	spin_lock_init(&cdev->ctrl_lock);
	spin_lock_init(&cdev->event_lock);
	init_waitqueue_head(&cdev->ctrl_wait);
	INIT_LIST_HEAD(&cdev->buffers);
	INIT_LIST_HEAD(&cdev->backlog);
	INIT_LIST_HEAD(&cdev->held);
	INIT_LIST_HEAD(&cdev->abandoned);
	cdev->vdev = vdev;
	return cdev;
}

/*
 * Reserve the one slot for @cdev at the start of probe, before it takes any
 * memory; -EBUSY if another device holds it.
 */
int cenalloc_dev_claim(struct cenalloc_dev *cdev)
{
	int ret = 0;

	mutex_lock(&cenalloc_current_lock);
	if (cenalloc_claimed)
		ret = -EBUSY;
	else
		cenalloc_claimed = cdev;
	mutex_unlock(&cenalloc_current_lock);
	return ret;
}

/* Make @cdev (claimed) the device /dev/cenalloc serves. */
void cenalloc_dev_publish(struct cenalloc_dev *cdev)
{
	mutex_lock(&cenalloc_current_lock);
	WARN_ON(cenalloc_claimed != cdev);
	cenalloc_current = cdev;
	mutex_unlock(&cenalloc_current_lock);
}

/* Withdraw @cdev and give up its claim. */
void cenalloc_dev_unpublish(struct cenalloc_dev *cdev)
{
	mutex_lock(&cenalloc_current_lock);
	if (cenalloc_current == cdev)
		cenalloc_current = NULL;
	if (cenalloc_claimed == cdev)
		cenalloc_claimed = NULL;
	mutex_unlock(&cenalloc_current_lock);
}
