/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Between cenalloc_req.c (a request and its answer) and cenalloc_vq.c (the
 * ring it travels on); the rest of the driver uses cenalloc_vq.h.
 */
#ifndef CENALLOC_REQ_H
#define CENALLOC_REQ_H

#include "cenalloc_vq.h"

/* Batch header and a zeroed answer buffer, before the request is queued. */
int cenalloc_req_prepare(struct cenalloc_req *req);
/* Drop one owner's reference (the builder's or the ring's). */
void cenalloc_req_put(struct cenalloc_req *req);
const char *cenalloc_opcode_name(u16 opcode);

/*
 * The answer as the ring left it, for the ring side (posted completions,
 * the undo of abandoned requests); submitters use cenalloc_req_status().
 */
bool cenalloc_answer_ok(struct cenalloc_req *req, unsigned int i);
int cenalloc_answer_status(struct cenalloc_req *req, unsigned int i);
void *cenalloc_answer_resp(struct cenalloc_req *req, unsigned int i,
			   u32 *len);

#endif /* CENALLOC_REQ_H */
