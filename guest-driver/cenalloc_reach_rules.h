/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The pure rules of cenalloc_reach.c: which kinds a device reaches and what
 * an importer's mask means for it. No kernel dependency beyond u32, bool
 * and the protocol header, so that tests/reach_rules.rs can compile them
 * on the host and check every case without a VM (the IOMMU case cannot be
 * run in the CI guest, which has no vIOMMU).
 */
#ifndef CENALLOC_REACH_RULES_H
#define CENALLOC_REACH_RULES_H

#include "cenalloc_proto.h"

/*
 * Kinds no allocator serves from memory that may lie above 4 GiB, from
 * the allocators' kinds and CENALLOC_PLACE_* placement (GET_INFO).
 */
static inline u32 cenalloc_rule_kinds_below_4g(const u32 *kinds,
					       const u32 *placement,
					       unsigned int n)
{
	u32 below = CENALLOC_MASK_ANY;
	unsigned int i;

	for (i = 0; i < n; i++)
		if (!(placement[i] & CENALLOC_PLACE_DMA32))
			below &= ~kinds[i];
	return below;
}

/*
 * The kinds a device reaches: all with an IOMMU or a DMA limit that covers
 * all RAM (@full); the kinds placed below 4 GiB with a limit of at least
 * 4 GiB; none below.
 */
static inline u32 cenalloc_rule_reach(bool iommu, bool full, bool covers_4g,
				      u32 below_4g)
{
	if (iommu || full)
		return CENALLOC_MASK_ANY;
	return covers_4g ? below_4g : 0;
}

/*
 * What @requested means for the device before its reach: behind an IOMMU,
 * for an importer that is not @physical, any well-known kind for one; for
 * a device that does not reach all RAM (!@full), SYSTEM and CONTIG also
 * admit DMA32 and CONTIG_DMA32.
 */
static inline u32 cenalloc_rule_wanted(u32 requested, bool iommu, bool full,
				       bool physical)
{
	u32 mask = requested;

	if (iommu && !physical && (mask & CENALLOC_KIND_WELL_KNOWN))
		mask |= CENALLOC_KIND_SYSTEM | CENALLOC_KIND_CONTIG |
			CENALLOC_KIND_DMA32 | CENALLOC_KIND_CONTIG_DMA32;
	if (!iommu && !full) {
		if (mask & CENALLOC_KIND_SYSTEM)
			mask |= CENALLOC_KIND_DMA32;
		if (mask & CENALLOC_KIND_CONTIG)
			mask |= CENALLOC_KIND_CONTIG_DMA32;
	}
	return mask;
}

#endif /* CENALLOC_REACH_RULES_H */
