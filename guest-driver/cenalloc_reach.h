/* SPDX-License-Identifier: GPL-2.0 */
/* What an importing device can address (cenalloc_reach.c). */
#ifndef CENALLOC_REACH_H
#define CENALLOC_REACH_H

#include <linux/types.h>

#include "cenalloc_dev.h"

struct device;

/* What the exporter derives from an importing struct device at attach. */
struct cenalloc_reach {
	u64 dma_limit;		/* highest bus address (DMA mask, bus limit) */
	u64 seg_boundary;	/* an sg entry never crosses a (mask + 1) line */
	u32 max_seg;		/* longest sg entry, bytes */
	u32 kinds;		/* kinds whose memory the device can address */
	bool iommu;		/* DMA translated by an IOMMU domain */
	bool full;		/* the limit covers all RAM: no kind removed */
};

void cenalloc_reach_of(struct cenalloc_dev *cdev, struct device *dev,
		       struct cenalloc_reach *r);
u32 cenalloc_reach_wanted(const struct cenalloc_reach *r, u32 requested,
			  bool physical);
u32 cenalloc_reach_apply(const struct cenalloc_reach *r, u32 requested,
			 bool physical);
u32 cenalloc_kinds_below_4g(struct cenalloc_dev *cdev);

#endif /* CENALLOC_REACH_H */
