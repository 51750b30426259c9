/* SPDX-License-Identifier: GPL-2.0 */
/* cenalloc attachment commands to the device (cenalloc_batch.c). */
#ifndef CENALLOC_BATCH_H
#define CENALLOC_BATCH_H

#include <linux/types.h>

#include "cenalloc_buffer.h"

struct cenalloc_req;

int cenalloc_req_add_unmap(struct cenalloc_req *req,
			   struct cenalloc_attachment *a, u32 direction);
int cenalloc_attach_sync(struct cenalloc_buffer *buffer,
			 struct cenalloc_attachment *a,
			 struct cenalloc_req *req);
int cenalloc_attachment_map(struct cenalloc_attachment *a, u32 direction,
			    struct cenalloc_req **unmap_req);
struct cenalloc_req *cenalloc_unmap_take(struct cenalloc_attachment *a,
					 u32 direction,
					 struct cenalloc_req **reqp);
void cenalloc_post_unmap(struct cenalloc_attachment *a, u32 direction,
			 struct cenalloc_req **reqp);
void cenalloc_buffer_defer(struct cenalloc_buffer *buffer,
			   struct cenalloc_req *req);
void *cenalloc_buffer_post_cmd(struct cenalloc_buffer *buffer, u16 opcode,
			       u32 len);
void cenalloc_buffer_flush(struct cenalloc_buffer *buffer);

#endif /* CENALLOC_BATCH_H */
