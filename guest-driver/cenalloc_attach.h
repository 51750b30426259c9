/* SPDX-License-Identifier: GPL-2.0 */
/* cenalloc attachments (cenalloc_attach.c). */
#ifndef CENALLOC_ATTACH_H
#define CENALLOC_ATTACH_H

#include <linux/dma-buf.h>
#include <linux/kref.h>
#include <linux/types.h>

#include "cenalloc_buffer.h"

struct cenalloc_req;

/*
 * The arguments of one cenalloc_mapping_attach() on Linux 6.12, where the
 * dma-buf core has no mapping-type list: the core sees @ops as the
 * importer's ops (its move_notify forwards to @importer_ops), so the
 * exporter's attach callback finds the list and the constraints through
 * attach->importer_ops. attach->importer_priv stays the importer's.
 * Reference counted: the caller and the attachment (until detach).
 */
struct cenalloc_import {
	struct dma_buf_attach_ops ops;
	const struct dma_buf_attach_ops *importer_ops;	/* may be NULL */
	struct kref ref;
	u32 kinds;					/* 0: device table */
	u32 num_types;
	u32 types[CENALLOC_MAX_MAP_TYPES];
};

struct cenalloc_import *cenalloc_import_new(const struct dma_buf_attach_ops *ops,
					    u32 kinds, const u32 *types,
					    u32 num_types);
void cenalloc_import_put(struct cenalloc_import *imp);

int cenalloc_dmabuf_attach(struct dma_buf *dmabuf,
			   struct dma_buf_attachment *attach);
void cenalloc_dmabuf_detach(struct dma_buf *dmabuf,
			    struct dma_buf_attachment *attach);
int cenalloc_dmabuf_pin(struct dma_buf_attachment *attach);
void cenalloc_dmabuf_unpin(struct dma_buf_attachment *attach);
struct sg_table *cenalloc_map_dma_buf(struct dma_buf_attachment *attach,
				      enum dma_data_direction dir);
void cenalloc_unmap_dma_buf(struct dma_buf_attachment *attach,
			    struct sg_table *sgt, enum dma_data_direction dir);
struct cenalloc_req *cenalloc_attachment_release(struct cenalloc_attachment *a);
void cenalloc_attachment_free(struct cenalloc_attachment *a);
int cenalloc_buffer_cpu_map(struct cenalloc_buffer *buffer);

#endif /* CENALLOC_ATTACH_H */
