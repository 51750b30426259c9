// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc.ko: virtio driver for the constraint-enabled buffer allocation
 * device (virtio ID 37) and the /dev/cenalloc exporter.
 *
 * Probe reads config space, sets up the control and event queues, caches
 * the allocator and exporter lists (GET_INFO) and donates the pools. Remove
 * fails every new operation with -ENODEV; buffers still alive keep the
 * device state (and the donated memory) until their last reference drops.
 * One device is served at a time. The ioctls are in cenalloc_ioctl.c.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include <linux/cenalloc.h>
#include "cenalloc_internal.h"

unsigned int cenalloc_size_limit_mb;
module_param_named(size_limit_mb, cenalloc_size_limit_mb, uint, 0644);
MODULE_PARM_DESC(size_limit_mb,
		 "Largest buffer in MiB (0: the device's limit only)");

unsigned int cenalloc_buffer_limit;
module_param_named(buffer_limit, cenalloc_buffer_limit, uint, 0644);
MODULE_PARM_DESC(buffer_limit,
		 "Most buffers alive at once (0: the device's limit only)");

unsigned int cenalloc_poll_us = 200;
module_param_named(poll_us, cenalloc_poll_us, uint, 0644);
MODULE_PARM_DESC(poll_us,
		 "Microseconds a waiting request polls for its answer before sleeping until the interrupt (0: never poll)");

static DEFINE_MUTEX(cenalloc_current_lock);
static struct cenalloc_dev *cenalloc_current;

/* ---- Device state lifetime ---- */

static void cenalloc_dev_release(struct kref *ref)
{
	struct cenalloc_dev *cdev = container_of(ref, struct cenalloc_dev, ref);

	WARN_ON(!list_empty(&cdev->buffers));
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

/* ---- Constraint masks of devices that know nothing of cenalloc ---- */

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

/**
 * cenalloc_set_device_constraints - record the constraint mask of a device
 * @dev: the device (keyed by dev_name())
 * @mask: CENALLOC_KIND_* bits; 0 removes the entry
 *
 * Used when @dev later attaches with plain dma_buf_attach().
 *
 * Return: 0, -EINVAL without a name, -ENOSPC when the table is full.
 */
int cenalloc_set_device_constraints(struct device *dev, u32 mask)
{
	if (!dev || !dev_name(dev))
		return -EINVAL;
	return cenalloc_mask_set(dev_name(dev), mask);
}
EXPORT_SYMBOL_GPL(cenalloc_set_device_constraints);

/* ---- virtio driver ---- */

static int cenalloc_read_config(struct cenalloc_dev *cdev)
{
	struct virtio_device *vdev = cdev->vdev;
	struct cenalloc_config *config = &cdev->config;
	unsigned int i;
	u32 version;

	/* 4-byte accesses: every field is __le32 or __le64 aligned. */
	__virtio_cread_many(vdev, 0, config, sizeof(*config) / 4, 4);
	version = le32_to_cpu(config->version);
	if (version != CENALLOC_PROTOCOL_VERSION) {
		dev_err(&vdev->dev, "protocol version %u, want %u\n", version,
			CENALLOC_PROTOCOL_VERSION);
		return -ENODEV;
	}
	cdev->num_pools = min_t(u32, le32_to_cpu(config->num_pools),
				CENALLOC_MAX_POOLS);
	cdev->max_batch = clamp_t(u32, le32_to_cpu(config->max_batch), 1,
				  CENALLOC_MAX_BATCH);
	cdev->max_segments = max_t(u32, le32_to_cpu(config->max_segments), 1);
	for (i = 0; i < cdev->num_pools; i++)
		cdev->pools[i].config = config->pools[i];
	return 0;
}

/* Cache the allocator and exporter lists for local attach decisions. */
static int cenalloc_cache_info(struct cenalloc_dev *cdev)
{
	struct cenalloc_info_resp info;
	unsigned int i;
	int ret;

	ret = cenalloc_get_info(cdev, &info, cdev->allocators,
				CENALLOC_MAX_ALLOCATORS);
	if (ret < 0)
		return ret;
	cdev->num_allocators = ret;
	cdev->num_exporter_types = min_t(u32,
					 le32_to_cpu(info.num_exporter_types),
					 CENALLOC_MAX_MAP_TYPES);
	for (i = 0; i < cdev->num_exporter_types; i++)
		cdev->exporter_types[i] = le32_to_cpu(info.exporter_types[i]);
	if (!cdev->num_exporter_types) {
		/* Every device maps as a scatter-gather list. */
		cdev->exporter_types[0] = CENALLOC_MAP_SG;
		cdev->num_exporter_types = 1;
	}
	cdev->max_attachments = le32_to_cpu(info.max_attachments);
	return 0;
}

static int cenalloc_probe(struct virtio_device *vdev)
{
	struct virtqueue_info vqs_info[CENALLOC_NUM_VQS] = {
		[CENALLOC_VQ_CONTROL] = { "control", cenalloc_ctrl_done },
		[CENALLOC_VQ_EVENT] = { "event", cenalloc_event_done },
	};
	struct virtqueue *vqs[CENALLOC_NUM_VQS];
	struct cenalloc_dev *cdev;
	int ret;

	cdev = kzalloc(sizeof(*cdev), GFP_KERNEL);
	if (!cdev)
		return -ENOMEM;
	kref_init(&cdev->ref);
	mutex_init(&cdev->lock);
	spin_lock_init(&cdev->ctrl_lock);
	spin_lock_init(&cdev->event_lock);
	init_waitqueue_head(&cdev->ctrl_wait);
	INIT_LIST_HEAD(&cdev->buffers);
	cdev->vdev = vdev;
	vdev->priv = cdev;

	ret = cenalloc_read_config(cdev);
	if (ret)
		goto err_free;
	ret = cenalloc_find_vqs(vdev, CENALLOC_NUM_VQS, vqs, vqs_info);
	if (ret)
		goto err_free;
	cdev->ctrl_vq = vqs[CENALLOC_VQ_CONTROL];
	cdev->event_vq = vqs[CENALLOC_VQ_EVENT];
	ret = cenalloc_vq_init(cdev);
	if (ret)
		goto err_del_vqs;
	virtio_device_ready(vdev);
	virtqueue_kick(cdev->event_vq);

	ret = cenalloc_cache_info(cdev);
	if (ret) {
		dev_err(&vdev->dev, "GET_INFO failed: %d\n", ret);
		goto err_stop;
	}
	ret = cenalloc_pools_donate(cdev);
	if (ret)
		goto err_stop;

	mutex_lock(&cenalloc_current_lock);
	if (cenalloc_current) {
		mutex_unlock(&cenalloc_current_lock);
		dev_err(&vdev->dev, "only one cenalloc device is served\n");
		ret = -EBUSY;
		goto err_stop;
	}
	cenalloc_current = cdev;
	mutex_unlock(&cenalloc_current_lock);
	cenalloc_debugfs_init(cdev);

	dev_info(&vdev->dev, "%u allocators, %u pools, max batch %u\n",
		 cdev->num_allocators, cdev->num_pools, cdev->max_batch);
	return 0;

err_stop:
	cenalloc_vq_stop(cdev);
err_del_vqs:
	vdev->config->del_vqs(vdev);
	kfree(cdev->event_bufs);
err_free:
	vdev->priv = NULL;
	cenalloc_dev_put(cdev);
	return ret;
}

static void cenalloc_remove(struct virtio_device *vdev)
{
	struct cenalloc_dev *cdev = vdev->priv;

	mutex_lock(&cenalloc_current_lock);
	if (cenalloc_current == cdev)
		cenalloc_current = NULL;
	mutex_unlock(&cenalloc_current_lock);

	/* Fail what is in flight first, so that no debugfs reader waits. */
	cenalloc_vq_stop(cdev);
	cenalloc_debugfs_exit();
	vdev->config->del_vqs(vdev);
	kfree(cdev->event_bufs);
	cdev->event_bufs = NULL;
	/* Buffers may outlive the virtio device: none may reach it now. */
	cdev->vdev = NULL;
	vdev->priv = NULL;
	dev_info(&vdev->dev, "removed, %u buffers still alive\n",
		 cdev->num_buffers);
	cenalloc_dev_put(cdev);
}

static const struct virtio_device_id cenalloc_id_table[] = {
	{ VIRTIO_ID_DMABUF, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, cenalloc_id_table);

static struct virtio_driver cenalloc_virtio_driver = {
	.driver.name = KBUILD_MODNAME,
	.id_table = cenalloc_id_table,
	.probe = cenalloc_probe,
	.remove = cenalloc_remove,
};

static int __init cenalloc_init(void)
{
	int ret;

	ret = cenalloc_misc_register();
	if (ret)
		return ret;
	ret = register_virtio_driver(&cenalloc_virtio_driver);
	if (ret)
		goto err_misc;
	return 0;

err_misc:
	cenalloc_misc_deregister();
	return ret;
}

static void __exit cenalloc_exit(void)
{
	unregister_virtio_driver(&cenalloc_virtio_driver);
	cenalloc_misc_deregister();
}

module_init(cenalloc_init);
module_exit(cenalloc_exit);

MODULE_DESCRIPTION("Constraint-enabled dma-buf allocation over virtio");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(CENALLOC_NS_DMA_BUF);
