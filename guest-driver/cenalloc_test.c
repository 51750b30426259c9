// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc_test: a test importer for dma-bufs (like vgem for DRM tests).
 *
 * The module owns CENALLOC_TEST_MAX_DEVICES virtual platform devices. Each
 * has a constraint mask and a list of mapping types, set from userspace with
 * CENALLOC_TEST_IOC_SET_DEVICE. Userspace then attaches a device to any
 * dma-buf fd through /dev/cenalloc_test, maps the attachment (and reads back
 * the DMA segments), unmaps, detaches, and reads or writes the buffer
 * through the exporter's kernel mapping.
 *
 * A device with a non-zero mask attaches to cenalloc buffers with
 * cenalloc_mapping_attach() (its mask and mapping types); a device with
 * mask 0 (or any device and a foreign dma-buf) attaches with plain
 * dma_buf_attach(), or dma_buf_dynamic_attach() when dynamic, as an
 * importer that knows nothing of cenalloc would. A dynamic device's
 * attachments have a move_notify that counts calls and marks the mapping
 * invalid; the next MAP of the handle unmaps it and maps again (re-map on
 * next use), under the reservation lock after waiting for its fences.
 *
 * Attachments are handles of the open file that made them; closing the file
 * unmaps and detaches whatever is left.
 *
 * TEST ONLY: it attaches to any dma-buf and writes into it through the
 * exporter's kernel mapping, whatever the fd's access mode, so its node is
 * 0600 (root) and it is loaded only by the selftest images, never by a
 * production system.
 */

#include <linux/cenalloc.h>
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/dma-resv.h>
#include <linux/fs.h>
#include <linux/iosys-map.h>
#include <linux/jiffies.h>
#include <linux/log2.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/nospec.h>
#include <linux/platform_device.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/xarray.h>
#include <uapi/linux/cenalloc.h>
#include <uapi/linux/cenalloc_test.h>

#include "cenalloc_compat.h"

#define CENALLOC_TEST_NAME	"cenalloc_test"

/* Kinds that only a device limited to 32-bit DMA addresses would list. */
#define CENALLOC_TEST_DMA32_KINDS	(CENALLOC_KIND_DMA32 | CENALLOC_KIND_CONTIG_DMA32)

/* Longest wait for a buffer's fences before a dynamic map. */
#define CENALLOC_TEST_FENCE_WAIT_MS	5000

struct cenalloc_test_device {
	struct platform_device *pdev;
	u32 mask;
	u32 flags;
	u32 num_types;
	u32 types[CENALLOC_TEST_MAX_TYPES];
};

/* One attachment made through an open file. */
struct cenalloc_test_handle {
	struct dma_buf *dmabuf;
	struct dma_buf_attachment *attach;
	struct sg_table *sgt;		/* NULL while not mapped */
	enum dma_data_direction dir;
	u32 map_type;
	bool dynamic;
	bool remap_in_notify;		/* CENALLOC_TEST_DEV_REMAP_IN_NOTIFY */
	struct sg_table *notify_sgt;	/* its mapping (resv held) */
	atomic_t move_notifies;
	bool invalidated;		/* set by move_notify (resv held) */
};

struct cenalloc_test_file {
	struct mutex lock;		/* serialises map/unmap/detach */
	struct xarray handles;		/* u32 handle -> cenalloc_test_handle */
};

static struct cenalloc_test_device test_devices[CENALLOC_TEST_MAX_DEVICES];
static DEFINE_MUTEX(test_devices_lock);	/* protects mask and types */

static int cenalloc_test_set_dma(struct device *dev,
				 const struct cenalloc_test_device_arg *arg)
{
	bool dma32_only = arg->mask && !(arg->mask & ~CENALLOC_TEST_DMA32_KINDS);
	u32 bits = arg->dma_bits ? arg->dma_bits : dma32_only ? 32 : 64;
	int ret;

	ret = dma_coerce_mask_and_coherent(dev, DMA_BIT_MASK(bits));
	if (ret)
		return ret;
	dma_set_max_seg_size(dev, arg->max_segment ? arg->max_segment :
						     UINT_MAX);
	dma_set_seg_boundary(dev, arg->seg_boundary ? arg->seg_boundary :
						      ULONG_MAX);
	return 0;
}

/* Called with the reservation lock held: no lock of ours may be taken. */
static void cenalloc_test_move_notify(struct dma_buf_attachment *attach)
{
	struct cenalloc_test_handle *h = attach->importer_priv;

	struct sg_table *sgt;

	atomic_inc(&h->move_notifies);
	WRITE_ONCE(h->invalidated, true);
	/*
	 * An importer that maps again at once (allowed: the reservation
	 * lock is held): the exporter must not revoke that mapping silently.
	 */
	if (h->remap_in_notify && !READ_ONCE(h->notify_sgt)) {
		sgt = dma_buf_map_attachment(attach, DMA_BIDIRECTIONAL);
		if (!IS_ERR(sgt))
			WRITE_ONCE(h->notify_sgt, sgt);
	}
}

static const struct dma_buf_attach_ops cenalloc_test_importer_ops = {
	.CENALLOC_MOVE_NOTIFY = cenalloc_test_move_notify,
};

static int cenalloc_test_open(struct inode *inode, struct file *file)
{
	struct cenalloc_test_file *tf;

	tf = kzalloc(sizeof(*tf), GFP_KERNEL);
	if (!tf)
		return -ENOMEM;
	mutex_init(&tf->lock);
	xa_init_flags(&tf->handles, XA_FLAGS_ALLOC1);
	file->private_data = tf;
	return 0;
}

static void cenalloc_test_handle_destroy(struct cenalloc_test_handle *h)
{
	if (h->sgt)
		dma_buf_unmap_attachment_unlocked(h->attach, h->sgt, h->dir);
	if (h->notify_sgt)
		dma_buf_unmap_attachment_unlocked(h->attach, h->notify_sgt,
						  DMA_BIDIRECTIONAL);
	dma_buf_detach(h->dmabuf, h->attach);
	dma_buf_put(h->dmabuf);
	kfree(h);
}

static int cenalloc_test_release(struct inode *inode, struct file *file)
{
	struct cenalloc_test_file *tf = file->private_data;
	struct cenalloc_test_handle *h;
	unsigned long index;

	xa_for_each(&tf->handles, index, h)
		cenalloc_test_handle_destroy(h);
	xa_destroy(&tf->handles);
	mutex_destroy(&tf->lock);
	kfree(tf);
	return 0;
}

static long cenalloc_test_set_device(void __user *uarg)
{
	struct cenalloc_test_device_arg arg;
	struct cenalloc_test_device *td;
	unsigned int i;
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.device >= CENALLOC_TEST_MAX_DEVICES ||
	    arg.num_types < 1 || arg.num_types > CENALLOC_TEST_MAX_TYPES ||
	    (arg.flags & ~CENALLOC_TEST_DEV_FLAGS) ||
	    (arg.dma_bits && (arg.dma_bits < 24 || arg.dma_bits > 64)) ||
	    (arg.max_segment && arg.max_segment < PAGE_SIZE) ||
	    (arg.seg_boundary && (arg.seg_boundary < PAGE_SIZE - 1 ||
				  !is_power_of_2(arg.seg_boundary + 1))))
		return -EINVAL;
	/* Listed types are non-zero; the unused entries are reserved: zero. */
	for (i = 0; i < CENALLOC_TEST_MAX_TYPES; i++) {
		bool listed = i < arg.num_types;

		if (listed != !!arg.types[i])
			return -EINVAL;
	}

	td = &test_devices[array_index_nospec(arg.device,
					      CENALLOC_TEST_MAX_DEVICES)];
	mutex_lock(&test_devices_lock);
	ret = cenalloc_test_set_dma(&td->pdev->dev, &arg);
	if (!ret) {
		td->mask = arg.mask;
		td->flags = arg.flags;
		td->num_types = arg.num_types;
		memcpy(td->types, arg.types, sizeof(td->types));
	}
	mutex_unlock(&test_devices_lock);
	return ret;
}

/* Attach as the device is configured (see the top of this file). */
static struct dma_buf_attachment *
cenalloc_test_do_attach(struct cenalloc_test_handle *h, struct device *dev,
			u32 mask, const u32 *types, unsigned int num_types)
{
	const struct dma_buf_attach_ops *ops =
		h->dynamic ? &cenalloc_test_importer_ops : NULL;
	struct cenalloc_mapping_match imp[CENALLOC_TEST_MAX_TYPES];
	unsigned int i;

	if (!mask || !cenalloc_is_cenalloc_dmabuf(h->dmabuf))
		return h->dynamic ? dma_buf_dynamic_attach(h->dmabuf, dev, ops, h) :
				    dma_buf_attach(h->dmabuf, dev);
	for (i = 0; i < num_types; i++) {
		if (types[i] == CENALLOC_MAP_SG)
			imp[i] = CENALLOC_IMAPPING_SGT();
		else if (types[i] == CENALLOC_MAP_CONTIG)
			imp[i] = CENALLOC_IMAPPING_CONTIG();
		else
			imp[i] = CENALLOC_IMAPPING_PRIVATE(types[i]);
	}
	return cenalloc_mapping_attach(h->dmabuf, dev, imp, num_types, mask,
				       ops, h);
}

static long cenalloc_test_attach(struct cenalloc_test_file *tf,
				 void __user *uarg)
{
	u32 types[CENALLOC_TEST_MAX_TYPES];
	struct cenalloc_test_attach_arg arg;
	struct cenalloc_test_device *td;
	struct cenalloc_test_handle *h;
	unsigned int num_types;
	u32 mask, flags, handle;
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.reserved || arg.device >= CENALLOC_TEST_MAX_DEVICES)
		return -EINVAL;

	td = &test_devices[array_index_nospec(arg.device,
					      CENALLOC_TEST_MAX_DEVICES)];
	mutex_lock(&test_devices_lock);
	mask = td->mask;
	flags = td->flags;
	num_types = td->num_types;
	memcpy(types, td->types, sizeof(types));
	mutex_unlock(&test_devices_lock);

	h = kzalloc(sizeof(*h), GFP_KERNEL);
	if (!h)
		return -ENOMEM;
	h->dynamic = flags & CENALLOC_TEST_DEV_DYNAMIC;
	h->remap_in_notify = h->dynamic &&
			     (flags & CENALLOC_TEST_DEV_REMAP_IN_NOTIFY);
	atomic_set(&h->move_notifies, 0);

	h->dmabuf = dma_buf_get(arg.dmabuf_fd);
	if (IS_ERR(h->dmabuf)) {
		ret = PTR_ERR(h->dmabuf);
		goto err_free;
	}

	h->attach = cenalloc_test_do_attach(h, &td->pdev->dev, mask, types,
					    num_types);
	if (IS_ERR(h->attach)) {
		ret = PTR_ERR(h->attach);
		goto err_put;
	}
	/* Plain attaches report 0 (the UAPI promise), whoever exports. */
	if (mask && cenalloc_is_cenalloc_dmabuf(h->dmabuf))
		h->map_type = cenalloc_attachment_map_type(h->attach);

	ret = xa_alloc(&tf->handles, &handle, h, xa_limit_32b, GFP_KERNEL);
	if (ret)
		goto err_detach;

	arg.handle = handle;
	arg.map_type = h->map_type;
	if (copy_to_user(uarg, &arg, sizeof(arg))) {
		ret = -EFAULT;
		goto err_erase;
	}
	return 0;

err_erase:
	/*
	 * Other threads of this file could use the handle since xa_alloc():
	 * a DETACH may have destroyed @h already (and the index be reused),
	 * a MAP may have mapped it. Only undo what is still ours.
	 */
	mutex_lock(&tf->lock);
	if (xa_cmpxchg(&tf->handles, handle, h, NULL, 0) != h)
		h = NULL;
	mutex_unlock(&tf->lock);
	if (h)
		cenalloc_test_handle_destroy(h);
	return ret;
err_detach:
	dma_buf_detach(h->dmabuf, h->attach);
err_put:
	dma_buf_put(h->dmabuf);
err_free:
	kfree(h);
	return ret;
}

static long cenalloc_test_detach(struct cenalloc_test_file *tf,
				 void __user *uarg)
{
	struct cenalloc_test_handle_arg arg;
	struct cenalloc_test_handle *h;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.reserved)
		return -EINVAL;

	mutex_lock(&tf->lock);
	h = xa_erase(&tf->handles, arg.handle);
	mutex_unlock(&tf->lock);
	if (!h)
		return -ENOENT;
	cenalloc_test_handle_destroy(h);
	return 0;
}

/*
 * Copy the mapping's DMA segments to userspace, merging neighbours that are
 * contiguous in DMA address space unless @raw. Returns the number of merged segments
 * (which may exceed @max; only the first @max are copied) or -EFAULT.
 */
static long cenalloc_test_copy_segments(struct sg_table *sgt,
					struct cenalloc_test_segment __user *useg,
					u32 max, bool raw)
{
	struct cenalloc_test_segment seg = { 0 };
	struct scatterlist *sg;
	long count = 0;
	unsigned int i;

	for_each_sgtable_dma_sg(sgt, sg, i) {
		dma_addr_t addr = sg_dma_address(sg);
		u64 len = sg_dma_len(sg);

		if (count && !raw && seg.addr + seg.len == addr) {
			seg.len += len;
			continue;
		}
		if (count && count <= max &&
		    copy_to_user(&useg[count - 1], &seg, sizeof(seg)))
			return -EFAULT;
		seg.addr = addr;
		seg.len = len;
		count++;
	}
	if (count && count <= max &&
	    copy_to_user(&useg[count - 1], &seg, sizeof(seg)))
		return -EFAULT;
	return count;
}

/* Map @h; a dynamic importer maps under the reservation lock, after the
 * buffer's fences (bounded wait).
 */
static struct sg_table *cenalloc_test_map_attach(struct cenalloc_test_handle *h,
						 enum dma_data_direction dir)
{
	struct dma_resv *resv = h->dmabuf->resv;
	struct sg_table *sgt;
	long left;

	if (!h->dynamic)
		return dma_buf_map_attachment_unlocked(h->attach, dir);
	dma_resv_lock(resv, NULL);
	left = dma_resv_wait_timeout(resv, DMA_RESV_USAGE_KERNEL, true,
				     msecs_to_jiffies(CENALLOC_TEST_FENCE_WAIT_MS));
	if (left <= 0)
		sgt = ERR_PTR(left ? left : -ETIMEDOUT);
	else
		sgt = dma_buf_map_attachment(h->attach, dir);
	if (!IS_ERR(sgt))
		WRITE_ONCE(h->invalidated, false);
	dma_resv_unlock(resv);
	return sgt;
}

static long cenalloc_test_map(struct cenalloc_test_file *tf, void __user *uarg)
{
	static const enum dma_data_direction dirs[] = {
		DMA_BIDIRECTIONAL, DMA_TO_DEVICE, DMA_FROM_DEVICE,
	};
	struct cenalloc_test_map_arg arg;
	struct cenalloc_test_handle *h;
	struct sg_table *sgt;
	u32 flags = 0;
	long count;
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.raw > 1 || arg.direction >= ARRAY_SIZE(dirs))
		return -EINVAL;

	mutex_lock(&tf->lock);
	h = xa_load(&tf->handles, arg.handle);
	if (!h) {
		ret = -ENOENT;
		goto out_unlock;
	}
	if (h->sgt) {
		if (!h->dynamic || !READ_ONCE(h->invalidated)) {
			ret = -EBUSY;
			goto out_unlock;
		}
		/* Re-map on next use: drop the invalidated mapping first. */
		dma_buf_unmap_attachment_unlocked(h->attach, h->sgt, h->dir);
		h->sgt = NULL;
		flags |= CENALLOC_TEST_MAP_F_REMAPPED;
	}

	sgt = cenalloc_test_map_attach(h, dirs[arg.direction]);
	if (IS_ERR(sgt)) {
		ret = PTR_ERR(sgt);
		goto out_unlock;
	}

	count = cenalloc_test_copy_segments(sgt, u64_to_user_ptr(arg.segments_ptr),
					    arg.max_segments, arg.raw);
	if (count < 0) {
		ret = count;
		goto err_unmap;
	}
	arg.num_segments = count;
	arg.map_type = h->map_type;
	arg.flags = flags;
	arg.move_notifies = atomic_read(&h->move_notifies);
	if (copy_to_user(uarg, &arg, sizeof(arg))) {
		ret = -EFAULT;
		goto err_unmap;
	}
	h->sgt = sgt;
	h->dir = dirs[arg.direction];
	mutex_unlock(&tf->lock);
	return 0;

err_unmap:
	dma_buf_unmap_attachment_unlocked(h->attach, sgt, dirs[arg.direction]);
out_unlock:
	mutex_unlock(&tf->lock);
	return ret;
}

static long cenalloc_test_status(struct cenalloc_test_file *tf,
				 void __user *uarg)
{
	struct cenalloc_test_status_arg arg;
	struct cenalloc_test_handle *h;
	int ret = 0;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.reserved)
		return -EINVAL;
	mutex_lock(&tf->lock);
	h = xa_load(&tf->handles, arg.handle);
	if (!h) {
		ret = -ENOENT;
	} else {
		arg.flags = (h->sgt ? CENALLOC_TEST_STATUS_MAPPED : 0) |
			    (h->sgt && READ_ONCE(h->invalidated) ?
			     CENALLOC_TEST_STATUS_INVALIDATED : 0) |
			    (h->dynamic ? CENALLOC_TEST_STATUS_DYNAMIC : 0) |
			    (READ_ONCE(h->notify_sgt) ?
			     CENALLOC_TEST_STATUS_NOTIFY_MAPPED : 0);
		arg.move_notifies = atomic_read(&h->move_notifies);
	}
	mutex_unlock(&tf->lock);
	if (!ret && copy_to_user(uarg, &arg, sizeof(arg)))
		ret = -EFAULT;
	return ret;
}

static long cenalloc_test_unmap(struct cenalloc_test_file *tf,
				void __user *uarg)
{
	struct cenalloc_test_handle_arg arg;
	struct cenalloc_test_handle *h;
	int ret = 0;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.reserved)
		return -EINVAL;

	mutex_lock(&tf->lock);
	h = xa_load(&tf->handles, arg.handle);
	if (!h) {
		ret = -ENOENT;
	} else if (!h->sgt) {
		ret = -EINVAL;
	} else {
		dma_buf_unmap_attachment_unlocked(h->attach, h->sgt, h->dir);
		h->sgt = NULL;
	}
	mutex_unlock(&tf->lock);
	return ret;
}

static long cenalloc_test_rw(void __user *uarg)
{
	struct cenalloc_test_rw_arg arg;
	enum dma_data_direction dir;
	struct iosys_map map;
	struct dma_buf *dmabuf;
	void __user *udata;
	unsigned long left;
	u64 end;
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.write > 1 || check_add_overflow(arg.offset, arg.len, &end))
		return -EINVAL;
	udata = u64_to_user_ptr(arg.data_ptr);
	dir = arg.write ? DMA_BIDIRECTIONAL : DMA_FROM_DEVICE;

	dmabuf = dma_buf_get(arg.dmabuf_fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	if (end > dmabuf->size) {
		ret = -EINVAL;
		goto out_put;
	}

	ret = dma_buf_begin_cpu_access(dmabuf, dir);
	if (ret)
		goto out_put;
	ret = dma_buf_vmap_unlocked(dmabuf, &map);
	if (ret)
		goto out_end_access;
	if (map.is_iomem) {
		ret = -EOPNOTSUPP;
		goto out_vunmap;
	}

	if (arg.write)
		left = copy_from_user(map.vaddr + arg.offset, udata, arg.len);
	else
		left = copy_to_user(udata, map.vaddr + arg.offset, arg.len);
	if (left)
		ret = -EFAULT;

out_vunmap:
	dma_buf_vunmap_unlocked(dmabuf, &map);
out_end_access:
	dma_buf_end_cpu_access(dmabuf, dir);
out_put:
	dma_buf_put(dmabuf);
	return ret;
}

static long cenalloc_test_rename(void __user *uarg)
{
	struct cenalloc_test_rename_arg arg;
	struct cenalloc_test_device *td;
	char name[40];
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.reserved || arg.device >= CENALLOC_TEST_MAX_DEVICES ||
	    strnlen(arg.name, sizeof(arg.name)) == sizeof(arg.name))
		return -EINVAL;
	td = &test_devices[array_index_nospec(arg.device,
					      CENALLOC_TEST_MAX_DEVICES)];
	if (arg.name[0])
		strscpy(name, arg.name, sizeof(name));
	else
		snprintf(name, sizeof(name), "%s.%u", CENALLOC_TEST_NAME,
			 arg.device);
	mutex_lock(&test_devices_lock);
	ret = device_rename(&td->pdev->dev, name);
	mutex_unlock(&test_devices_lock);
	return ret;
}

static long cenalloc_test_ioctl(struct file *file, unsigned int cmd,
				unsigned long arg)
{
	struct cenalloc_test_file *tf = file->private_data;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case CENALLOC_TEST_IOC_SET_DEVICE:
		return cenalloc_test_set_device(uarg);
	case CENALLOC_TEST_IOC_ATTACH:
		return cenalloc_test_attach(tf, uarg);
	case CENALLOC_TEST_IOC_DETACH:
		return cenalloc_test_detach(tf, uarg);
	case CENALLOC_TEST_IOC_MAP:
		return cenalloc_test_map(tf, uarg);
	case CENALLOC_TEST_IOC_UNMAP:
		return cenalloc_test_unmap(tf, uarg);
	case CENALLOC_TEST_IOC_RW:
		return cenalloc_test_rw(uarg);
	case CENALLOC_TEST_IOC_STATUS:
		return cenalloc_test_status(tf, uarg);
	case CENALLOC_TEST_IOC_RENAME:
		return cenalloc_test_rename(uarg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations cenalloc_test_fops = {
	.owner = THIS_MODULE,
	.open = cenalloc_test_open,
	.release = cenalloc_test_release,
	.unlocked_ioctl = cenalloc_test_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice cenalloc_test_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = CENALLOC_TEST_NAME,
	.fops = &cenalloc_test_fops,
	.mode = 0600,	/* test only: root */
};

static void cenalloc_test_remove_devices(void)
{
	unsigned int i;

	for (i = 0; i < CENALLOC_TEST_MAX_DEVICES; i++) {
		if (!test_devices[i].pdev)
			continue;
		platform_device_unregister(test_devices[i].pdev);
		test_devices[i].pdev = NULL;
	}
}

static int __init cenalloc_test_init(void)
{
	struct platform_device_info info = {
		.name = CENALLOC_TEST_NAME,
		.dma_mask = DMA_BIT_MASK(64),
	};
	struct platform_device *pdev;
	unsigned int i;
	int ret;

	/* Every device starts as "any memory, scatter-gather". */
	for (i = 0; i < CENALLOC_TEST_MAX_DEVICES; i++) {
		info.id = i;
		pdev = platform_device_register_full(&info);
		if (IS_ERR(pdev)) {
			ret = PTR_ERR(pdev);
			goto err_remove;
		}
		test_devices[i].pdev = pdev;
		dma_set_max_seg_size(&pdev->dev, UINT_MAX);
		test_devices[i].mask = CENALLOC_DEFAULT_MASK;
		test_devices[i].num_types = 1;
		test_devices[i].types[0] = CENALLOC_MAP_SG;
	}

	ret = misc_register(&cenalloc_test_misc);
	if (ret)
		goto err_remove;
	return 0;

err_remove:
	cenalloc_test_remove_devices();
	return ret;
}

static void __exit cenalloc_test_exit(void)
{
	misc_deregister(&cenalloc_test_misc);
	cenalloc_test_remove_devices();
}

module_init(cenalloc_test_init);
module_exit(cenalloc_test_exit);

MODULE_DESCRIPTION("cenalloc test importer: virtual devices that attach to dma-bufs");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(CENALLOC_NS_DMA_BUF);
