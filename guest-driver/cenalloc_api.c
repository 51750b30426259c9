// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc in-kernel API (include/linux/cenalloc.h) for importers that know
 * their constraints, and its compat layer for Linux 6.12.
 *
 * Upstream (the mapping-type RFC), dma_buf_mapping_attach() hands the
 * importer's match list to the exporter's match op. Linux 6.12 has no such
 * path: cenalloc_mapping_attach() wraps the list, the kinds and the
 * importer's ops in a struct cenalloc_import whose dma_buf_attach_ops it
 * gives dma_buf_dynamic_attach(); the exporter's attach callback recognises
 * it by its move_notify (which forwards to the importer's) and reads the
 * arguments from it. attach->importer_priv stays the importer's. Porting to
 * the RFC replaces this file's wrapper by dma_buf_mapping_attach() and the
 * recognition by the exporter's match op; the matching itself
 * (cenalloc_match_mapping()) already has the RFC's shape.
 */
#include <linux/cenalloc.h>
#include <linux/device.h>
#include <linux/dma-buf.h>

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
 * cenalloc_mapping_attach - attach with mapping types and constraints
 * @dmabuf: a cenalloc dma-buf
 * @dev: the importing device
 * @imp: the importer's mapping types, priority order (CENALLOC_IMAPPING_*)
 * @imp_len: entries in @imp, 1..CENALLOC_MAX_MAP_TYPES
 * @kinds: CENALLOC_KIND_* its device can use; 0: the device table's mask
 * @importer_ops: dynamic importers: ops with move_notify; NULL: every
 *	mapping pins the backing
 * @importer_priv: the importer's, as for dma_buf_dynamic_attach()
 *
 * See include/linux/cenalloc.h. Before the buffer has backing nothing
 * reaches the device: the ATTACH travels with the first map.
 *
 * Return: the attachment or an ERR_PTR (see the header).
 */
struct dma_buf_attachment *
cenalloc_mapping_attach(struct dma_buf *dmabuf, struct device *dev,
			const struct cenalloc_mapping_match *imp, size_t imp_len,
			u32 kinds, const struct dma_buf_attach_ops *importer_ops,
			void *importer_priv)
{
	u32 types[CENALLOC_MAX_MAP_TYPES];
	struct dma_buf_attachment *attach;
	struct cenalloc_import *import;
	int n;

	if (!cenalloc_is_cenalloc_dmabuf(dmabuf) || !dev)
		return ERR_PTR(-EINVAL);
	n = cenalloc_match_codes(imp, imp_len, types);
	if (n < 0)
		return ERR_PTR(n);
	import = cenalloc_import_new(importer_ops, kinds, types, n);
	if (IS_ERR(import))
		return ERR_CAST(import);
	attach = dma_buf_dynamic_attach(dmabuf, dev, &import->ops,
					importer_priv);
	/* The attachment holds its own reference until detach. */
	cenalloc_import_put(import);
	return attach;
}
EXPORT_SYMBOL_GPL(cenalloc_mapping_attach);

/**
 * cenalloc_attachment_map_type - the negotiated mapping type
 * @attach: an attachment of a cenalloc dma-buf
 *
 * Return: the CENALLOC_MAP_* code, 0 for a foreign attachment.
 */
u32 cenalloc_attachment_map_type(struct dma_buf_attachment *attach)
{
	struct cenalloc_attachment *a;
	u32 type;

	if (!attach || !cenalloc_is_cenalloc_dmabuf(attach->dmabuf))
		return 0;
	a = attach->priv;
	mutex_lock(&a->buffer->lock);
	type = a->map_type;
	mutex_unlock(&a->buffer->lock);
	return type;
}
EXPORT_SYMBOL_GPL(cenalloc_attachment_map_type);

/**
 * cenalloc_set_device_constraints - record the constraint mask of a device
 * @dev: the device
 * @mask: CENALLOC_KIND_* bits; 0 removes the entry
 *
 * Used when @dev later attaches with plain dma_buf_attach() (see
 * cenalloc_devmask.c for how the entry is keyed).
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
