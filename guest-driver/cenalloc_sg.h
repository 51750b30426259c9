/* SPDX-License-Identifier: GPL-2.0 */
/* cenalloc scatterlists (cenalloc_sg.c). */
#ifndef CENALLOC_SG_H
#define CENALLOC_SG_H

#include <linux/scatterlist.h>
#include <linux/types.h>

#include "cenalloc_proto.h"

int cenalloc_sgt_build(struct sg_table *sgt,
		       const struct cenalloc_range *segments, u32 num,
		       u32 max_seg, u64 seg_boundary);

#endif /* CENALLOC_SG_H */
