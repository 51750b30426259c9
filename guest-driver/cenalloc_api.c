// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc in-kernel API (include/linux/cenalloc.h) for importers that know
 * their constraints.
 */
#include <linux/cenalloc.h>
#include <linux/dma-buf.h>
#include <linux/mutex.h>
#include <linux/sched.h>

#include "cenalloc_attach.h"
#include "cenalloc_buffer.h"
#include "cenalloc_devmask.h"
#include "cenalloc_negotiate.h"

/**
 * cenalloc_is_cenalloc_dmabuf - tell whether cenalloc exported a dma-buf
 * @dmabuf: any dma-buf, or NULL
 *
 * Return: true if @dmabuf is a /dev/cenalloc buffer.
 */
bool cenalloc_is_cenalloc_dmabuf(struct dma_buf *dmabuf)
{
	return dmabuf && dmabuf->ops == &cenalloc_dmabuf_ops;
}
EXPORT_SYMBOL_GPL(cenalloc_is_cenalloc_dmabuf);

/**
 * cenalloc_attach - attach a device with an explicit constraint mask
 * @dmabuf: a cenalloc dma-buf
 * @dev: the importing device
 * @mask: its constraint mask (CENALLOC_KIND_* bits), not 0
 * @types: the importer's mapping types, priority order
 * @n: entries in @types, 1..CENALLOC_MAX_MAP_TYPES
 * @map_type: where to store the negotiated type (may be NULL)
 *
 * Like dma_buf_attach(), but with @mask instead of the device mask table.
 * Before the buffer has backing nothing reaches the device: the ATTACH
 * travels with the first map. Release with dma_buf_detach().
 *
 * Return: the attachment, or ERR_PTR(-EINVAL) for bad arguments or an empty
 * mask intersection, -EOPNOTSUPP when no mapping type is mutual, -EBUSY when
 * the backing does not fit and cannot migrate, -ENODEV after remove.
 */
struct dma_buf_attachment *cenalloc_attach(struct dma_buf *dmabuf,
					   struct device *dev, u32 mask,
					   const u32 *types, unsigned int n,
					   u32 *map_type)
{
	struct dma_buf_attachment *attach;
	struct cenalloc_attachment *a;
	struct cenalloc_buffer *buffer;
	unsigned int i;

	if (!cenalloc_is_cenalloc_dmabuf(dmabuf) || !dev || !mask || !types ||
	    !n || n > CENALLOC_MAX_MAP_TYPES)
		return ERR_PTR(-EINVAL);
	for (i = 0; i < n; i++)
		if (!cenalloc_type_valid(types[i]))
			return ERR_PTR(-EINVAL);
	buffer = dmabuf->priv;

	/* The attach callback picks these up for this task and device. */
	mutex_lock(&buffer->explicit_mutex);
	mutex_lock(&buffer->lock);
	buffer->explicit_task = current;
	buffer->explicit_dev = dev;
	buffer->explicit_mask = mask;
	buffer->explicit_num_types = n;
	memcpy(buffer->explicit_types, types, n * sizeof(*types));
	mutex_unlock(&buffer->lock);

	attach = dma_buf_attach(dmabuf, dev);

	mutex_lock(&buffer->lock);
	buffer->explicit_task = NULL;
	buffer->explicit_dev = NULL;
	if (!IS_ERR(attach) && map_type) {
		a = attach->priv;
		*map_type = a->map_type;
	}
	mutex_unlock(&buffer->lock);
	mutex_unlock(&buffer->explicit_mutex);
	return attach;
}
EXPORT_SYMBOL_GPL(cenalloc_attach);

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
