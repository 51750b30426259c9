// SPDX-License-Identifier: GPL-2.0
/*
 * Mapping-type negotiation at attach: the exporter's list (INFO
 * exporter_types) is walked in priority order and the first type the
 * importer also lists and that can serve the buffer wins. CONTIG only
 * serves a buffer that is, or can only become, one contiguous range; a
 * driver-private type is opaque and passes through; with nothing mutual the
 * attach fails with -EOPNOTSUPP.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define DEV_IMPORTER	0
#define PRIVATE_TYPE	0x8001u

/* Every allocator that could back @mask is a contiguous one. */
static bool only_contiguous(const struct ca_pool *pool, uint32_t mask)
{
	bool any = false;
	uint32_t i;

	for (i = 0; i < pool->count; i++) {
		if (!(pool->alloc[i].kinds & mask))
			continue;
		any = true;
		if (!ca_allocator_contiguous(&pool->alloc[i]))
			return false;
	}
	return any;
}

/* The rule, written independently of the driver: type or -EOPNOTSUPP. */
static int expected_type(const struct ca_pool *pool, const uint32_t *types,
			 uint32_t num_types, uint32_t mask)
{
	uint32_t i, j;

	for (i = 0; i < pool->info.num_exporter_types; i++) {
		uint32_t t = pool->info.exporter_types[i];

		for (j = 0; j < num_types; j++) {
			if (types[j] != t)
				continue;
			if (t == CENALLOC_MAP_CONTIG && !only_contiguous(pool, mask))
				break;
			return t;
		}
	}
	return -EOPNOTSUPP;
}

struct negotiation_case {
	uint32_t mask;
	uint32_t num_types;
	uint32_t types[3];
};

static const struct negotiation_case cases[] = {
	{ CENALLOC_KIND_SYSTEM, 1, { CENALLOC_MAP_SG } },
	{ CENALLOC_KIND_CONTIG, 1, { CENALLOC_MAP_CONTIG } },
	{ CENALLOC_KIND_CONTIG_DMA32, 1, { CENALLOC_MAP_CONTIG } },
	{ CENALLOC_KIND_SYSTEM, 1, { CENALLOC_MAP_CONTIG } },
	{ CENALLOC_MASK_ANY, 1, { CENALLOC_MAP_CONTIG } },
	{ CENALLOC_KIND_CONTIG, 2, { CENALLOC_MAP_SG, CENALLOC_MAP_CONTIG } },
	{ CENALLOC_KIND_SYSTEM, 2, { CENALLOC_MAP_CONTIG, CENALLOC_MAP_SG } },
	{ CENALLOC_MASK_ANY, 1, { PRIVATE_TYPE } },
	{ CENALLOC_MASK_ANY, 2, { PRIVATE_TYPE, CENALLOC_MAP_SG } },
	{ CENALLOC_KIND_CONTIG, 3, { PRIVATE_TYPE, CENALLOC_MAP_SG, CENALLOC_MAP_CONTIG } },
};

/* Attaches with @c, checks the type against @expected, maps, checks shape. */
static void run_case(int ca, int ct, const struct ca_pool *pool,
		     uint32_t mask, const uint32_t *types, uint32_t num_types,
		     struct ct_mapping *m)
{
	int expected = expected_type(pool, types, num_types, mask);
	const uint64_t size = 128 * CA_KIB;
	uint32_t handle = 0, map_type = 0, i;
	char text[64], list[64] = "";
	size_t used = 0;
	int fd, ret;

	for (i = 0; i < num_types; i++)
		used += snprintf(list + used, sizeof(list) - used, "%s%s",
				 i ? "," : "", ca_map_type_str(types[i]));
	ca_mask_str(mask, text, sizeof(text));

	if (!CHECK(ct_set_device(ct, DEV_IMPORTER, mask, types, num_types) == 0,
		   "SET_DEVICE"))
		return;
	fd = ca_create(ca, size, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		return;
	ret = ct_attach(ct, fd, DEV_IMPORTER, &handle, &map_type);
	tap_diag("mask %-20s importer [%s] -> %s (expected %s)", text, list,
		 ret ? strerror(-ret) : ca_map_type_str(map_type),
		 expected < 0 ? strerror(-expected) : ca_map_type_str(expected));
	if (expected < 0) {
		CHECK(ret == expected, "mask %s [%s]: attach %s, expected %s",
		      text, list, ret ? strerror(-ret) : "succeeded",
		      strerror(-expected));
		goto out;
	}
	if (!CHECK(ret == 0, "mask %s [%s]: attach: %s", text, list,
		   strerror(-ret)))
		goto out;
	CHECK(map_type == (uint32_t)expected, "mask %s [%s]: type %#x, expected %#x",
	      text, list, map_type, expected);
	ret = ct_map(ct, handle, 0, m);
	if (!CHECK(ret == 0, "map: %s", strerror(-ret)))
		goto out;
	CHECK(m->map_type == map_type, "map reports type %#x, attach %#x",
	      m->map_type, map_type);
	CHECK(ct_mapping_bytes(m) == size, "mapping covers %llu bytes",
	      (unsigned long long)ct_mapping_bytes(m));
	if (map_type == CENALLOC_MAP_CONTIG)
		CHECK(m->num_segments == 1, "CONTIG mapping with %u segments",
		      m->num_segments);
out:
	if (handle)
		ct_detach(ct, handle);
	close(fd);
}

static enum tap_result test_negotiation(void)
{
	struct ct_mapping *m = calloc(1, sizeof(*m));
	struct ca_pool pool;
	unsigned int i;
	int ca, ct;

	if (!CHECK(m, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(m);
		return TAP_FAIL;
	}
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	for (i = 0; i < TAP_ARRAY_SIZE(cases); i++)
		run_case(ca, ct, &pool, cases[i].mask, cases[i].types,
			 cases[i].num_types, m);
out:
	ca_close(&ct);
	ca_close(&ca);
	free(m);
	return TAP_PASS;
}

/* The properties the rule must have, asserted directly. */
static enum tap_result test_negotiation_properties(void)
{
	static const uint32_t contig[] = { CENALLOC_MAP_CONTIG };
	static const uint32_t sg[] = { CENALLOC_MAP_SG };
	static const uint32_t priv[] = { PRIVATE_TYPE };
	static const uint32_t both[] = { CENALLOC_MAP_SG, CENALLOC_MAP_CONTIG };
	uint32_t handle = 0, type = 0;
	struct ca_pool pool;
	int ca, ct, fd = -1, ret;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;

	/* An SG-only importer of any buffer gets SG if the exporter has it. */
	if (ca_pool_has_exporter_type(&pool, CENALLOC_MAP_SG)) {
		ct_set_device(ct, DEV_IMPORTER, CENALLOC_MASK_ANY, sg, 1);
		fd = ca_create(ca, CA_PAGE_SIZE, 0);
		ret = ct_attach(ct, fd, DEV_IMPORTER, &handle, &type);
		CHECK(ret == 0 && type == CENALLOC_MAP_SG, "SG importer: %s type %#x",
		      strerror(-ret), type);
		if (!ret)
			ct_detach(ct, handle);
		ca_close(&fd);
	}
	/* A CONTIG-only importer of a CONTIG-only device gets CONTIG. */
	if (ca_pool_has_exporter_type(&pool, CENALLOC_MAP_CONTIG) &&
	    ca_pool_find_kind(&pool, CENALLOC_KIND_CONTIG) >= 0) {
		ct_set_device(ct, DEV_IMPORTER, CENALLOC_KIND_CONTIG, contig, 1);
		fd = ca_create(ca, CA_PAGE_SIZE, 0);
		ret = ct_attach(ct, fd, DEV_IMPORTER, &handle, &type);
		CHECK(ret == 0 && type == CENALLOC_MAP_CONTIG,
		      "CONTIG importer, CONTIG mask: %s type %#x", strerror(-ret), type);
		if (!ret)
			ct_detach(ct, handle);
		ca_close(&fd);

		/* Both listed: the exporter's order decides, not the importer's. */
		ct_set_device(ct, DEV_IMPORTER, CENALLOC_KIND_CONTIG, both, 2);
		fd = ca_create(ca, CA_PAGE_SIZE, 0);
		ret = ct_attach(ct, fd, DEV_IMPORTER, &handle, &type);
		CHECK(ret == 0 && type == pool.info.exporter_types[0],
		      "[SG,CONTIG] importer: %s type %#x, exporter's first %#x",
		      strerror(-ret), type, pool.info.exporter_types[0]);
		if (!ret)
			ct_detach(ct, handle);
		ca_close(&fd);
	}
	/* A private type the exporter does not list is never negotiated. */
	if (!ca_pool_has_exporter_type(&pool, PRIVATE_TYPE)) {
		ct_set_device(ct, DEV_IMPORTER, CENALLOC_MASK_ANY, priv, 1);
		fd = ca_create(ca, CA_PAGE_SIZE, 0);
		ret = ct_attach(ct, fd, DEV_IMPORTER, &handle, &type);
		CHECK(ret == -EOPNOTSUPP, "private-only importer: %s, expected EOPNOTSUPP",
		      ret ? strerror(-ret) : "success");
		if (!ret)
			ct_detach(ct, handle);
		ca_close(&fd);
	}
out:
	ca_close(&fd);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

/* Every private type the exporter lists is negotiated and maps. */
static enum tap_result test_exporter_private_types(void)
{
	struct ct_mapping *m = calloc(1, sizeof(*m));
	enum tap_result result = TAP_PASS;
	struct ca_pool pool;
	unsigned int i, found = 0;
	int ca, ct;

	if (!CHECK(m, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(m);
		return TAP_FAIL;
	}
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	for (i = 0; i < pool.info.num_exporter_types; i++) {
		uint32_t t = pool.info.exporter_types[i];

		if (t < CENALLOC_MAP_PRIVATE_FIRST || t > CENALLOC_MAP_PRIVATE_LAST)
			continue;
		found++;
		run_case(ca, ct, &pool, CENALLOC_MASK_ANY, &t, 1, m);
	}
	if (!found)
		result = tap_skip("the exporter lists no private mapping type");
out:
	ca_close(&ct);
	ca_close(&ca);
	free(m);
	return result;
}

static const struct tap_test tests[] = {
	TAP_TEST("negotiation follows the exporter's priority list", test_negotiation),
	TAP_TEST("SG, CONTIG and unknown private types negotiate as specified", test_negotiation_properties),
	TAP_TEST("private types the exporter lists are negotiated", test_exporter_private_types),
};

TAP_MAIN(tests)
