// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc attachments: the dma-buf attach, detach, map and unmap
 * callbacks, constraint masks, and the CPU attachment that pins the backing
 * for mmap and vmap.
 *
 * An incompatible attach is refused locally (mask intersection empty:
 * -EINVAL; no mutual mapping type: -EOPNOTSUPP, cenalloc_negotiate.c);
 * what must reach the device goes through cenalloc_batch.c. UNMAP and
 * DETACH wait in the buffer's pending batch. The device validates all.
 */
#include <linux/dma-mapping.h>
#include <linux/slab.h>

#include "cenalloc_attach.h"
#include "cenalloc_batch.h"
#include "cenalloc_devmask.h"
#include "cenalloc_negotiate.h"
#include "cenalloc_sg.h"
#include "cenalloc_vq.h"

static int cenalloc_direction(enum dma_data_direction dir, u32 *direction)
{
	switch (dir) {
	case DMA_BIDIRECTIONAL:
		*direction = CENALLOC_DIR_BIDIRECTIONAL;
		return 0;
	case DMA_TO_DEVICE:
		*direction = CENALLOC_DIR_TO_DEVICE;
		return 0;
	case DMA_FROM_DEVICE:
		*direction = CENALLOC_DIR_FROM_DEVICE;
		return 0;
	default:
		return -EINVAL;
	}
}

struct cenalloc_attachment *cenalloc_attachment_new(struct cenalloc_buffer *buffer,
						    struct device *dev, u32 mask,
						    const u32 *types, u32 num_types)
{
	struct cenalloc_attachment *a;

	if (!num_types || num_types > CENALLOC_MAX_MAP_TYPES)
		return ERR_PTR(-EINVAL);
	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a)
		return ERR_PTR(-ENOMEM);
	a->buffer = buffer;
	a->dev = dev;
	a->mask = mask;
	a->num_types = num_types;
	memcpy(a->types, types, num_types * sizeof(*types));
	INIT_LIST_HEAD(&a->mappings);
	INIT_LIST_HEAD(&a->node);
	strscpy(a->dev_name, dev ? dev_name(dev) : "cpu", sizeof(a->dev_name));
	return a;
}

static void cenalloc_access_mask_update(struct cenalloc_buffer *buffer)
{
	struct cenalloc_attachment *a;
	u32 mask = buffer->initial_mask ? buffer->initial_mask :
					  CENALLOC_MASK_ANY;

	list_for_each_entry(a, &buffer->attachments, node)
		mask &= a->mask;
	buffer->access_mask = mask;
}

/*
 * Check @a against the buffer locally and add it. With @defer, or while the
 * buffer has no backing, the device hears of it at the next map.
 */
static int cenalloc_attachment_add(struct cenalloc_buffer *buffer,
				   struct cenalloc_attachment *a, bool defer)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	u32 access_mask = buffer->access_mask & a->mask;
	int ret;

	lockdep_assert_held(&buffer->lock);
	if (READ_ONCE(cdev->removed))
		return -ENODEV;
	if (!access_mask)
		return -EINVAL;
	if (cdev->max_attachments &&
	    buffer->num_attachments >= cdev->max_attachments)
		return -ENOSPC;
	if (buffer->backed && !defer) {
		/* Only the device knows whether the backing migrates. */
		ret = cenalloc_attach_sync(buffer, a);
	} else {
		ret = cenalloc_negotiate(buffer, access_mask, a->types,
					 a->num_types, &a->map_type);
	}
	if (ret)
		return ret;
	if (a->map_type == CENALLOC_MAP_CONTIG)
		buffer->contiguous_promised = true;
	list_add_tail(&a->node, &buffer->attachments);
	buffer->num_attachments++;
	buffer->access_mask = access_mask;
	return 0;
}

int cenalloc_dmabuf_attach(struct dma_buf *dmabuf,
			   struct dma_buf_attachment *attach)
{
	static const u32 plain_types[] = { CENALLOC_MAP_SG };
	struct cenalloc_buffer *buffer = dmabuf->priv;
	struct cenalloc_attachment *a;
	int ret;

	mutex_lock(&buffer->lock);
	if (buffer->explicit_task == current &&
	    buffer->explicit_dev == attach->dev)
		a = cenalloc_attachment_new(buffer, attach->dev,
					    buffer->explicit_mask,
					    buffer->explicit_types,
					    buffer->explicit_num_types);
	else
		a = cenalloc_attachment_new(buffer, attach->dev,
					    cenalloc_device_mask(attach->dev),
					    plain_types,
					    ARRAY_SIZE(plain_types));
	if (IS_ERR(a)) {
		ret = PTR_ERR(a);
		goto out_unlock;
	}
	ret = cenalloc_attachment_add(buffer, a, false);
	if (ret) {
		kfree(a);
		goto out_unlock;
	}
	attach->priv = a;
out_unlock:
	mutex_unlock(&buffer->lock);
	return ret;
}

/* Unlink @a; with @tell_device, post its DETACH (buffer's pending batch). */
void cenalloc_attachment_release(struct cenalloc_attachment *a,
				 bool tell_device)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_detach_req *dr;

	lockdep_assert_held(&buffer->lock);
	list_del_init(&a->node);
	buffer->num_attachments--;
	cenalloc_access_mask_update(buffer);
	if (!tell_device || !a->attach_id)
		return;
	dr = cenalloc_buffer_post_cmd(buffer, CENALLOC_CMD_DETACH, sizeof(*dr));
	if (!IS_ERR(dr))
		dr->attach_id = cpu_to_le32(a->attach_id);
}

void cenalloc_dmabuf_detach(struct dma_buf *dmabuf,
			    struct dma_buf_attachment *attach)
{
	struct cenalloc_buffer *buffer = dmabuf->priv;
	struct cenalloc_attachment *a = attach->priv;

	mutex_lock(&buffer->lock);
	WARN_ONCE(!list_empty(&a->mappings),
		  "cenalloc: %s detached with mappings outstanding\n",
		  a->dev_name);
	cenalloc_attachment_release(a, true);
	mutex_unlock(&buffer->lock);
	kfree(a);
}

struct sg_table *cenalloc_map_dma_buf(struct dma_buf_attachment *attach,
				      enum dma_data_direction dir)
{
	struct cenalloc_attachment *a = attach->priv;
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_range *segments = NULL;
	struct cenalloc_mapping *m;
	u32 direction, num;
	int ret;

	ret = cenalloc_direction(dir, &direction);
	if (ret)
		return ERR_PTR(ret);
	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return ERR_PTR(-ENOMEM);
	m->dir = dir;

	mutex_lock(&buffer->lock);
	ret = cenalloc_attachment_map(a, direction, &segments, &num);
	if (ret)
		goto err_unlock;
	ret = cenalloc_sgt_build(&m->sgt, segments, num);
	if (ret)
		goto err_unmap;
	ret = dma_map_sgtable(attach->dev, &m->sgt, dir, 0);
	if (ret)
		goto err_free_sgt;
	list_add_tail(&m->node, &a->mappings);
	mutex_unlock(&buffer->lock);
	kfree(segments);
	return &m->sgt;

err_free_sgt:
	sg_free_table(&m->sgt);
err_unmap:
	a->num_maps--;
	cenalloc_post_unmap(a, direction);
err_unlock:
	mutex_unlock(&buffer->lock);
	kfree(segments);
	kfree(m);
	return ERR_PTR(ret);
}

void cenalloc_unmap_dma_buf(struct dma_buf_attachment *attach,
			    struct sg_table *sgt, enum dma_data_direction dir)
{
	struct cenalloc_mapping *m = container_of(sgt, struct cenalloc_mapping,
						  sgt);
	struct cenalloc_attachment *a = attach->priv;
	struct cenalloc_buffer *buffer = a->buffer;
	u32 direction = CENALLOC_DIR_BIDIRECTIONAL;

	cenalloc_direction(m->dir, &direction);
	dma_unmap_sgtable(attach->dev, sgt, m->dir, 0);
	mutex_lock(&buffer->lock);
	list_del(&m->node);
	a->num_maps--;
	cenalloc_post_unmap(a, direction);
	mutex_unlock(&buffer->lock);
	sg_free_table(sgt);
	kfree(m);
}

/* Pin the backing for CPU access through the internal CPU attachment
 * (mask: any kind, type SG). It stays mapped until the buffer is released,
 * so the backing cannot migrate under a user or kernel mapping.
 */
int cenalloc_buffer_cpu_map(struct cenalloc_buffer *buffer)
{
	static const u32 cpu_types[] = { CENALLOC_MAP_SG };
	struct cenalloc_attachment *a = buffer->cpu_attach;
	struct cenalloc_range *segments;
	u32 num;
	int ret;

	lockdep_assert_held(&buffer->lock);
	if (a && a->num_maps)
		return 0;
	if (!a) {
		a = cenalloc_attachment_new(buffer, NULL, CENALLOC_MASK_ANY,
					    cpu_types, ARRAY_SIZE(cpu_types));
		if (IS_ERR(a))
			return PTR_ERR(a);
		ret = cenalloc_attachment_add(buffer, a, true);
		if (ret) {
			kfree(a);
			return ret;
		}
		buffer->cpu_attach = a;
	}
	ret = cenalloc_attachment_map(a, CENALLOC_DIR_BIDIRECTIONAL,
				      &segments, &num);
	if (ret) {
		if (!a->attach_id) {
			cenalloc_attachment_release(a, false);
			buffer->cpu_attach = NULL;
			kfree(a);
		}
		return ret;
	}
	kfree(buffer->backing);
	buffer->backing = segments;
	buffer->num_backing = num;
	return 0;
}
