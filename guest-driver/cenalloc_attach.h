/* SPDX-License-Identifier: GPL-2.0 */
/* cenalloc attachments (cenalloc_attach.c). */
#ifndef CENALLOC_ATTACH_H
#define CENALLOC_ATTACH_H

#include <linux/dma-buf.h>
#include <linux/types.h>

#include "cenalloc_buffer.h"

int cenalloc_dmabuf_attach(struct dma_buf *dmabuf,
			   struct dma_buf_attachment *attach);
void cenalloc_dmabuf_detach(struct dma_buf *dmabuf,
			    struct dma_buf_attachment *attach);
struct sg_table *cenalloc_map_dma_buf(struct dma_buf_attachment *attach,
				      enum dma_data_direction dir);
void cenalloc_unmap_dma_buf(struct dma_buf_attachment *attach,
			    struct sg_table *sgt, enum dma_data_direction dir);
struct cenalloc_attachment *cenalloc_attachment_new(struct cenalloc_buffer *buffer,
						    struct device *dev, u32 mask,
						    const u32 *types, u32 num_types);
void cenalloc_attachment_release(struct cenalloc_attachment *a,
				 bool tell_device);
int cenalloc_buffer_cpu_map(struct cenalloc_buffer *buffer);

#endif /* CENALLOC_ATTACH_H */
