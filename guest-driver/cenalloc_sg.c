// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc scatterlists: the sg_table of an importer's mapping, built from
 * the backing segments the device answered.
 */
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/sizes.h>

#include "cenalloc_sg.h"

/* Longest scatterlist entry built from one segment. */
#define CENALLOC_SG_MAX_LEN	SZ_1G

int cenalloc_sgt_build(struct sg_table *sgt,
		       const struct cenalloc_range *segments, u32 num)
{
	struct scatterlist *sg;
	unsigned int nents = 0, i;
	u64 addr, left, chunk;
	int ret;

	for (i = 0; i < num; i++)
		nents += DIV_ROUND_UP_ULL(le64_to_cpu(segments[i].len),
					  CENALLOC_SG_MAX_LEN);
	ret = sg_alloc_table(sgt, nents, GFP_KERNEL);
	if (ret)
		return ret;
	sg = sgt->sgl;
	for (i = 0; i < num; i++) {
		addr = le64_to_cpu(segments[i].addr);
		left = le64_to_cpu(segments[i].len);
		while (left) {
			chunk = min_t(u64, left, CENALLOC_SG_MAX_LEN);
			sg_set_page(sg, pfn_to_page(PHYS_PFN(addr)), chunk, 0);
			sg = sg_next(sg);
			addr += chunk;
			left -= chunk;
		}
	}
	return 0;
}
