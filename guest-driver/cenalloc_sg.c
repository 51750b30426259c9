// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc scatterlists: the sg_table of an importer's mapping, built from
 * the backing segments the device answered, in entries the importing
 * device accepts: none longer than its maximum segment size, none crossing
 * its segment boundary (dma_get_max_seg_size(), dma_get_seg_boundary(),
 * see cenalloc_reach.c). Entries are page multiples: a limit below a page
 * counts as one page.
 */
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/sizes.h>

#include "cenalloc_sg.h"

/* Longest scatterlist entry built from one segment (sg length is 32 bits). */
#define CENALLOC_SG_MAX_LEN	SZ_1G

/* Bytes of the entry starting at @addr with @left bytes to go. */
static u64 cenalloc_sg_chunk(u64 addr, u64 left, u64 max_len, u64 boundary)
{
	u64 chunk = min(left, max_len);
	u64 to_line;

	if (boundary != U64_MAX) {
		to_line = (addr | boundary) - addr + 1;
		chunk = min(chunk, to_line);
	}
	return chunk;
}

int cenalloc_sgt_build(struct sg_table *sgt,
		       const struct cenalloc_range *segments, u32 num,
		       u32 max_seg, u64 seg_boundary)
{
	u64 max_len = clamp_t(u64, round_down((u64)max_seg, PAGE_SIZE),
			      PAGE_SIZE, CENALLOC_SG_MAX_LEN);
	u64 boundary = seg_boundary < PAGE_SIZE - 1 ? PAGE_SIZE - 1 :
						      seg_boundary;
	unsigned int nents = 0, i;
	struct scatterlist *sg;
	u64 addr, left, chunk;
	int ret;

	for (i = 0; i < num; i++) {
		addr = le64_to_cpu(segments[i].addr);
		left = le64_to_cpu(segments[i].len);
		while (left) {
			chunk = cenalloc_sg_chunk(addr, left, max_len, boundary);
			if (nents == UINT_MAX)
				return -E2BIG;
			nents++;
			addr += chunk;
			left -= chunk;
		}
	}
	ret = sg_alloc_table(sgt, nents, GFP_KERNEL);
	if (ret)
		return ret;
	sg = sgt->sgl;
	for (i = 0; i < num; i++) {
		addr = le64_to_cpu(segments[i].addr);
		left = le64_to_cpu(segments[i].len);
		while (left) {
			chunk = cenalloc_sg_chunk(addr, left, max_len, boundary);
			sg_set_page(sg, pfn_to_page(PHYS_PFN(addr)), chunk, 0);
			sg = sg_next(sg);
			addr += chunk;
			left -= chunk;
		}
	}
	return 0;
}
