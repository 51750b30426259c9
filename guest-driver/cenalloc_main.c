// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc.ko: virtio driver for the constraint-enabled buffer allocation
 * device (virtio ID 37) and the /dev/cenalloc exporter.
 *
 * Probe reads config space, sets up the control and event queues, resets
 * the device state (RESET: whatever an earlier driver instance or a guest
 * that rebooted without this driver left there goes), caches the allocator
 * and exporter lists (GET_INFO), donates each pool's initial memory, and
 * (with CENALLOC_F_ELASTIC) registers the shrinker that gives grown memory
 * back under pressure; with CENALLOC_F_LEASE the first maps of small
 * buffers come from leased extents. Remove sends RESET
 * (bounded: a device that does not answer does not hold up the teardown),
 * then resets the virtio device and fails every new operation with
 * -ENODEV; buffers still alive keep the donated memory until their last
 * reference drops (the device no longer knows them, so it never touches
 * that memory again). One device is served at a time. The ioctls are in
 * cenalloc_ioctl.c.
 */
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "cenalloc_compat.h"
#include "cenalloc_debugfs.h"
#include "cenalloc_dev.h"
#include "cenalloc_devmask.h"
#include "cenalloc_ioctl.h"
#include "cenalloc_lease.h"
#include "cenalloc_negotiate.h"
#include "cenalloc_pool.h"
#include "cenalloc_shrink.h"
#include "cenalloc_vq.h"

/*
 * The device says how many segments one MAP may return, and the driver
 * sizes the answer from it (16 bytes a segment): a cap keeps a device from
 * making it allocate without bound. 262144 segments (a 4 MiB answer) is a
 * 1 GiB buffer in 4 KiB pieces; the protocol's 16 MiB slot is the ceiling.
 */
#define CENALLOC_MAX_SEGMENTS_CEILING \
	((CENALLOC_MAX_SLOT - sizeof(struct cenalloc_map_resp)) / \
	 sizeof(struct cenalloc_range))

static unsigned int cenalloc_max_segments = 262144;
module_param_named(max_segments, cenalloc_max_segments, uint, 0444);
MODULE_PARM_DESC(max_segments,
		 "Most segments the driver accepts in one MAP answer, whatever the device announces (default 262144: 1 GiB in 4 KiB pages)");

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
	cdev->max_segments = clamp_t(u32, le32_to_cpu(config->max_segments), 1,
				     clamp_t(u32, cenalloc_max_segments, 1,
					     CENALLOC_MAX_SEGMENTS_CEILING));
	if (cdev->max_segments != le32_to_cpu(config->max_segments))
		dev_info(&vdev->dev, "max_segments %u from the device, using %u\n",
			 le32_to_cpu(config->max_segments),
			 cdev->max_segments);
	if (le32_to_cpu(config->num_pools) > CENALLOC_MAX_POOLS)
		dev_warn(&vdev->dev, "%u pools in config space, using the first %u\n",
			 le32_to_cpu(config->num_pools), CENALLOC_MAX_POOLS);
	for (i = 0; i < cdev->num_pools; i++) {
		u32 align = le32_to_cpu(config->pools[i].align);

		/*
		 * A power of two (the spec's rule): ALIGN() of anything else
		 * gives a start below the block, or one off the page.
		 */
		if (align && !is_power_of_2(align)) {
			dev_err(&vdev->dev, "pool %u: align %#x is not a power of two\n",
				i, align);
			return -ENODEV;
		}
		cdev->pools[i].config = config->pools[i];
	}
	return 0;
}

/* Events that need more than a counter (interrupt context). */
static void cenalloc_event_hook(struct cenalloc_dev *cdev,
				const struct cenalloc_event *event)
{
	u64 data = le64_to_cpu(event->data);

	if (data > U32_MAX)
		return;
	switch (le32_to_cpu(event->type)) {
	case CENALLOC_EVENT_POOL_LOW:
		cenalloc_pool_low(cdev, data);
		break;
	case CENALLOC_EVENT_LEASE_REVOKE:
		cenalloc_lease_revoke(cdev, data);
		break;
	}
}

/* Cache the allocator and exporter lists for local attach decisions. */
static int cenalloc_cache_info(struct cenalloc_dev *cdev)
{
	struct cenalloc_info_resp info;
	unsigned int i, n;
	u32 type;
	int ret;

	ret = cenalloc_get_info(cdev, &info, cdev->allocators,
				CENALLOC_MAX_ALLOCATORS);
	if (ret < 0)
		return ret;
	cdev->num_allocators = ret;
	/*
	 * Allocator i is pool i. Attach decisions (reach rules, CONTIG
	 * negotiation) read the kinds and placement of GET_INFO, answer
	 * checks those of config space: a device whose two disagree would
	 * have high memory accepted for a 32-bit importer, or CONTIG
	 * negotiated that later fails.
	 */
	for (i = 0; i < min_t(u32, cdev->num_allocators, cdev->num_pools); i++) {
		const struct cenalloc_allocator_info *al = &cdev->allocators[i];
		const struct cenalloc_config_pool *pc = &cdev->pools[i].config;

		if (al->kinds != pc->kinds || al->placement != pc->placement) {
			dev_err(&cdev->vdev->dev,
				"allocator %u: kinds %#x placement %#x, config space says %#x %#x\n",
				i, le32_to_cpu(al->kinds), le32_to_cpu(al->placement),
				le32_to_cpu(pc->kinds), le32_to_cpu(pc->placement));
			return -ENODEV;
		}
	}
	n = min_t(u32, le32_to_cpu(info.num_exporter_types),
		  CENALLOC_MAX_MAP_TYPES);
	/* Types the protocol does not know are the device's mistake: skip. */
	cdev->num_exporter_types = 0;
	for (i = 0; i < n; i++) {
		type = le32_to_cpu(info.exporter_types[i]);
		if (cenalloc_type_valid(type))
			cdev->exporter_types[cdev->num_exporter_types++] = type;
	}
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

	cdev = cenalloc_dev_new(vdev);
	if (!cdev)
		return -ENOMEM;
	vdev->priv = cdev;
	/* Before the pools take any memory. */
	ret = cenalloc_dev_claim(cdev);
	if (ret) {
		dev_err(&vdev->dev, "only one cenalloc device is served\n");
		goto err_free;
	}

	ret = cenalloc_read_config(cdev);
	if (ret)
		goto err_unclaim;
	cdev->elastic = virtio_has_feature(vdev, CENALLOC_F_ELASTIC);
	cdev->lease_feature = virtio_has_feature(vdev, CENALLOC_F_LEASE);
	cenalloc_pools_init(cdev);
	ret = cenalloc_find_vqs(vdev, CENALLOC_NUM_VQS, vqs, vqs_info);
	if (ret)
		goto err_unclaim;
	cdev->ctrl_vq = vqs[CENALLOC_VQ_CONTROL];
	cdev->event_vq = vqs[CENALLOC_VQ_EVENT];
	ret = cenalloc_vq_init(cdev);
	if (ret)
		goto err_del_vqs;
	virtio_device_ready(vdev);
	cenalloc_event_kick(cdev);

	/* First command: the device state is ours alone from now on. */
	ret = cenalloc_reset(cdev);
	if (ret) {
		dev_err(&vdev->dev, "RESET failed: %d\n", ret);
		goto err_stop;
	}
	ret = cenalloc_cache_info(cdev);
	if (ret) {
		dev_err(&vdev->dev, "GET_INFO failed: %d\n", ret);
		goto err_stop;
	}
	ret = cenalloc_pools_donate(cdev);
	if (ret)
		goto err_stop;
	ret = cenalloc_lease_init(cdev);
	if (ret)
		goto err_stop;
	cdev->event_hook = cenalloc_event_hook;
	ret = cenalloc_shrinker_register(cdev);
	if (ret)
		goto err_stop;

	cenalloc_dev_publish(cdev);
	cenalloc_debugfs_init(cdev);
	cenalloc_heaps_note(&vdev->dev);

	dev_info(&vdev->dev, "%u allocators, %u pools, max batch %u%s%s\n",
		 cdev->num_allocators, cdev->num_pools, cdev->max_batch,
		 cdev->elastic ? ", elastic pools" : "",
		 cdev->leases ? ", leases" : "");
	return 0;

err_stop:
	WRITE_ONCE(cdev->quiesced, true);
	cenalloc_lease_stop(cdev);
	cenalloc_pools_stop(cdev);
	cenalloc_vq_stop(cdev);
	cdev->event_hook = NULL;
err_del_vqs:
	vdev->config->del_vqs(vdev);
	kfree(cdev->event_bufs);
err_unclaim:
	cenalloc_dev_unpublish(cdev);
err_free:
	vdev->priv = NULL;
	cenalloc_dev_put(cdev);
	return ret;
}

static void cenalloc_remove(struct virtio_device *vdev)
{
	struct cenalloc_dev *cdev = vdev->priv;
	int ret;

	cenalloc_dev_unpublish(cdev);

	/* No pool grows or shrinks and no lease moves from here on: the
	 * device is about to forget them.
	 */
	WRITE_ONCE(cdev->quiesced, true);
	cenalloc_shrinker_unregister(cdev);
	cenalloc_lease_stop(cdev);
	cenalloc_pools_stop(cdev);

	/*
	 * The device forgets this driver's buffers and pools; the memory
	 * stays with the buffers still alive. Remove never fails: a device
	 * that does not answer in time is reset below all the same.
	 */
	ret = cenalloc_reset(cdev);
	if (ret)
		dev_warn(&vdev->dev, "RESET at remove failed: %d\n", ret);

	/* Fail what is in flight first, so that no debugfs reader waits. */
	cenalloc_vq_stop(cdev);
	cdev->event_hook = NULL;
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

static unsigned int cenalloc_features[] = {
	CENALLOC_F_ELASTIC,
	CENALLOC_F_LEASE,
};

static struct virtio_driver cenalloc_virtio_driver = {
	.driver.name = KBUILD_MODNAME,
	.id_table = cenalloc_id_table,
	.feature_table = cenalloc_features,
	.feature_table_size = ARRAY_SIZE(cenalloc_features),
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
	/* The heaps allocate from the device: after its driver is there. */
	ret = cenalloc_heaps_register();
	if (ret)
		goto err_virtio;
	return 0;

err_virtio:
	unregister_virtio_driver(&cenalloc_virtio_driver);
err_misc:
	cenalloc_misc_deregister();
	return ret;
}

static void __exit cenalloc_exit(void)
{
	cenalloc_heaps_deregister();
	unregister_virtio_driver(&cenalloc_virtio_driver);
	cenalloc_misc_deregister();
	cenalloc_mask_table_clear();
}

module_init(cenalloc_init);
module_exit(cenalloc_exit);

MODULE_DESCRIPTION("Constraint-enabled dma-buf allocation over virtio");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(CENALLOC_NS_DMA_BUF);
