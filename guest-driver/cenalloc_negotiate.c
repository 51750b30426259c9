// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc local decisions: which mapping type an attachment gets, and
 * whether a buffer can be one contiguous range, decided from the allocator
 * and exporter lists the device gave at probe, without a round trip. The
 * device decides again and has the last word.
 */
#include "cenalloc_negotiate.h"

/* Can the buffer be served as one contiguous range with @access_mask? */
bool cenalloc_contig_possible(struct cenalloc_buffer *buffer, u32 access_mask)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	bool found = false;
	unsigned int i;
	u32 kinds;

	if (buffer->backed)
		return buffer->num_backing == 1;
	for (i = 0; i < cdev->num_allocators; i++) {
		kinds = le32_to_cpu(cdev->allocators[i].kinds);
		if (!(kinds & access_mask))
			continue;
		if (!(le32_to_cpu(cdev->allocators[i].placement) &
		      CENALLOC_PLACE_CONTIG))
			return false;
		found = true;
	}
	return found;
}

/* Walk the exporter's list in priority order, pick the first type the
 * importer lists that can serve the buffer.
 */
int cenalloc_negotiate(struct cenalloc_buffer *buffer, u32 access_mask,
		       const u32 *types, u32 num_types, u32 *map_type)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	unsigned int e, i;
	u32 type;

	for (e = 0; e < cdev->num_exporter_types; e++) {
		type = cdev->exporter_types[e];
		for (i = 0; i < num_types; i++) {
			if (types[i] != type)
				continue;
			if (type == CENALLOC_MAP_CONTIG &&
			    !cenalloc_contig_possible(buffer, access_mask))
				continue;
			*map_type = type;
			return 0;
		}
	}
	return -EOPNOTSUPP;
}

bool cenalloc_type_valid(u32 type)
{
	return type == CENALLOC_MAP_SG || type == CENALLOC_MAP_CONTIG ||
	       (type >= CENALLOC_MAP_PRIVATE_FIRST &&
		type <= CENALLOC_MAP_PRIVATE_LAST);
}
