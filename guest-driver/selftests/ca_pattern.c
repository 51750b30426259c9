// SPDX-License-Identifier: GPL-2.0
/*
 * The data helpers, in their own file because the wire protocol header
 * (the one definition of the FILL pattern and of FNV-1a's constants) and
 * the UAPI header both define struct cenalloc_allocator_info.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../cenalloc_proto.h"

uint64_t ca_fnv1a64(const void *data, size_t len);
void ca_pattern_fill(void *data, size_t len, uint64_t seed);
size_t ca_pattern_check(const void *data, size_t len, uint64_t seed);
size_t ca_pattern_check_at(const void *data, size_t len, uint64_t seed,
			   uint64_t offset);
size_t ca_first_nonzero(const void *data, size_t len);

uint64_t ca_fnv1a64(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t hash = CENALLOC_FNV1A64_OFFSET;
	size_t i;

	for (i = 0; i < len; i++) {
		hash ^= p[i];
		hash *= CENALLOC_FNV1A64_PRIME;
	}
	return hash;
}

/* x86-64 is little-endian: a u64 store is the wire's __le64. */
void ca_pattern_fill(void *data, size_t len, uint64_t seed)
{
	unsigned char *p = data;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t word = cenalloc_pattern(seed, i / 8);

		memcpy(p + i, &word, 8);
	}
}

size_t ca_pattern_check(const void *data, size_t len, uint64_t seed)
{
	const unsigned char *p = data;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t word;

		memcpy(&word, p + i, 8);
		if (word != cenalloc_pattern(seed, i / 8))
			return i;
	}
	return len;
}

size_t ca_pattern_check_at(const void *data, size_t len, uint64_t seed,
			   uint64_t offset)
{
	const unsigned char *p = data;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t word;

		memcpy(&word, p + i, 8);
		if (word != cenalloc_pattern(seed, (offset + i) / 8))
			return i;
	}
	return len;
}

size_t ca_first_nonzero(const void *data, size_t len)
{
	const unsigned char *p = data;
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i])
			return i;
	return len;
}
