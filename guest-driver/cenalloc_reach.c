// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc device reach: the constraints the exporter derives from the
 * importing struct device at attach, whatever the importer or the device
 * table says.
 *
 * - Address limit: min(DMA mask, bus DMA limit). Where it covers all RAM
 *   (dma_get_required_mask()) every kind is reachable. Where it covers
 *   4 GiB but not all RAM, only the kinds every allocator of which places
 *   its memory below 4 GiB (CENALLOC_PLACE_DMA32, from GET_INFO): any other
 *   kind may be served from above the limit, and the DMA API would bounce
 *   it through swiotlb, which a shared buffer cannot live with. Below
 *   4 GiB no placement is known to fit: no kind. A device that does not
 *   reach all RAM and asks for SYSTEM or CONTIG also accepts DMA32 or
 *   CONTIG_DMA32 (same contiguity, below 4 GiB): a 32-bit device with the
 *   mask CONTIG gets contiguous memory below 4 GiB.
 * - IOMMU: a device whose DMA an IOMMU translates (a paging domain, not
 *   identity) addresses all RAM through it, and its IOVA range is
 *   contiguous whatever the pages are: for an importer that maps through
 *   the DMA API (SGT, private types) the well-known kinds become
 *   interchangeable, so one of them in its mask admits all four. An
 *   importer of physical ranges (CONTIG) bypasses the IOMMU and keeps its
 *   mask as is. Custom kinds (carve-outs) are never widened.
 * - Segments: dma_get_max_seg_size(), dma_max_mapping_size() (swiotlb
 *   bounces at most 256 KiB at once) and dma_get_seg_boundary() bound the
 *   entries of the sg_table built for the device (cenalloc_sg.c).
 *
 * There is no DMA offset on x86: bus address and guest-physical address
 * are the same for a device without an IOMMU.
 */
#include <linux/device.h>
#include <linux/dma-mapping.h>
#include <linux/iommu.h>
#include <linux/minmax.h>

#include "cenalloc_reach.h"
#include "cenalloc_reach_rules.h"

/* Kinds no allocator serves from memory that may lie above 4 GiB. */
u32 cenalloc_kinds_below_4g(struct cenalloc_dev *cdev)
{
	u32 kinds[CENALLOC_MAX_ALLOCATORS], placement[CENALLOC_MAX_ALLOCATORS];
	unsigned int i, n = min_t(u32, cdev->num_allocators,
				  CENALLOC_MAX_ALLOCATORS);

	for (i = 0; i < n; i++) {
		kinds[i] = le32_to_cpu(cdev->allocators[i].kinds);
		placement[i] = le32_to_cpu(cdev->allocators[i].placement);
	}
	return cenalloc_rule_kinds_below_4g(kinds, placement, n);
}

static bool cenalloc_dev_translated(struct device *dev)
{
	struct iommu_domain *domain;

	if (!device_iommu_mapped(dev))
		return false;
	domain = iommu_get_domain_for_dev(dev);
	return domain && (domain->type & __IOMMU_DOMAIN_PAGING);
}

void cenalloc_reach_of(struct cenalloc_dev *cdev, struct device *dev,
		       struct cenalloc_reach *r)
{
	memset(r, 0, sizeof(*r));
	r->kinds = CENALLOC_MASK_ANY;
	r->full = true;
	r->dma_limit = U64_MAX;
	r->seg_boundary = U64_MAX;
	r->max_seg = UINT_MAX;
	if (!dev)	/* the CPU attachment */
		return;

	r->dma_limit = min_not_zero(dma_get_mask(dev), dev->bus_dma_limit);
	/* swiotlb (bounce buffers) maps at most a few hundred KiB at once. */
	r->max_seg = min_t(size_t, dma_get_max_seg_size(dev),
			   dma_max_mapping_size(dev));
	r->seg_boundary = dma_get_seg_boundary(dev);
	r->iommu = cenalloc_dev_translated(dev);
	r->full = r->iommu || r->dma_limit >= dma_get_required_mask(dev);
	r->kinds = cenalloc_rule_reach(r->iommu, r->full,
				       r->dma_limit >= U32_MAX,
				       cenalloc_kinds_below_4g(cdev));
}

/* What @requested means for the device (cenalloc_reach_rules.h). */
u32 cenalloc_reach_wanted(const struct cenalloc_reach *r, u32 requested,
			  bool physical)
{
	return cenalloc_rule_wanted(requested, r->iommu, r->full, physical);
}

/* The mask an attachment gets: what it wants, within the device's reach. */
u32 cenalloc_reach_apply(const struct cenalloc_reach *r, u32 requested,
			 bool physical)
{
	return cenalloc_reach_wanted(r, requested, physical) & r->kinds;
}
