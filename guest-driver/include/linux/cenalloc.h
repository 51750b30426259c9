/* SPDX-License-Identifier: GPL-2.0 */
/*
 * In-kernel API of cenalloc.ko for importers that know their constraints.
 * Upstream struct device has no constraint mask, so cenalloc keeps one per
 * device. Importers that know nothing of cenalloc use dma_buf_attach() and
 * get the mask from that table, or CENALLOC_DEFAULT_MASK.
 */
#ifndef _LINUX_CENALLOC_H
#define _LINUX_CENALLOC_H

#include <linux/types.h>

struct device;
struct dma_buf;
struct dma_buf_attachment;

/* Mask of a device absent from the table: any kind. */
#define CENALLOC_DEFAULT_MASK	0xffffffffu

/* Record @dev's constraint mask (0 removes it). */
int cenalloc_set_device_constraints(struct device *dev, u32 mask);

/* True if @dmabuf was exported by cenalloc. */
bool cenalloc_is_cenalloc_dmabuf(struct dma_buf *dmabuf);

/*
 * Attach @dev to @dmabuf with an explicit constraint mask and the importer's
 * mapping types (priority order). Returns the attachment (release with
 * dma_buf_detach()) and the negotiated type in *@map_type, or an ERR_PTR:
 * -EINVAL when the masks leave nothing in common, -EBUSY when the buffer
 * already has backing that does not fit and cannot migrate, -EOPNOTSUPP when
 * no mapping type is mutual.
 */
struct dma_buf_attachment *cenalloc_attach(struct dma_buf *dmabuf,
					   struct device *dev, u32 mask,
					   const u32 *types, unsigned int n,
					   u32 *map_type);

#endif /* _LINUX_CENALLOC_H */
