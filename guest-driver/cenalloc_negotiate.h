/* SPDX-License-Identifier: GPL-2.0 */
/* cenalloc local mapping-type negotiation (cenalloc_negotiate.c). */
#ifndef CENALLOC_NEGOTIATE_H
#define CENALLOC_NEGOTIATE_H

#include <linux/cenalloc.h>
#include <linux/types.h>

#include "cenalloc_buffer.h"

bool cenalloc_contig_possible(struct cenalloc_buffer *buffer, u32 access_mask);
int cenalloc_negotiate(struct cenalloc_buffer *buffer, u32 access_mask,
		       const u32 *types, u32 num_types, u32 *map_type);
bool cenalloc_type_valid(u32 type);
int cenalloc_match_codes(const struct cenalloc_mapping_match *imp,
			 size_t imp_len, u32 *types);
const char *cenalloc_map_type_name(u32 type);

#endif /* CENALLOC_NEGOTIATE_H */
