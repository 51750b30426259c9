// SPDX-License-Identifier: GPL-2.0
/*
 * Delayed allocation and allocator choice: nothing is allocated before the
 * first map; the first map takes the backing from the first allocator (in
 * pool priority order) that serves a kind of the buffer's access mask (the
 * intersection of every attached device's mask); a device whose mask leaves
 * nothing in common is refused with -EINVAL.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define DEV_A		0
#define DEV_B		1
#define DEV_PROBE	2	/* mask ANY, 64-bit DMA: its DMA addresses are physical */
#define DEV_PLAIN	5	/* attaches with plain dma_buf_attach() */

#define FOUR_GIB	(1ull << 32)

static enum tap_result test_allocation_delayed_to_first_map(void)
{
	struct ca_pool before, attached, mapped, second, after;
	struct ct_mapping *m = calloc(1, sizeof(*m));
	uint32_t ha = 0, hb = 0;
	int ca, ct, fd = -1, ret, used, expected;
	char name[CENALLOC_NAME_LEN + 1] = "";

	if (!CHECK(m, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(m);
		return TAP_FAIL;
	}
	if (!CHECK(ct_set_device1(ct, DEV_A, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ct_set_device1(ct, DEV_B, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	expected = ca_pool_expected_allocator(&before, CENALLOC_MASK_ANY, CA_MIB);

	fd = ca_create(ca, CA_MIB, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ct_attach(ct, fd, DEV_A, &ha, NULL);
	if (!CHECK(ret == 0, "attach: %s", strerror(-ret)))
		goto out;
	if (!CHECK(ca_pool_read(ca, &attached) == 0, "INFO"))
		goto out;
	CHECK(ca_pool_allocator_used(&before, &attached) == -1 &&
	      ca_pool_used(&before) == ca_pool_used(&attached),
	      "attach allocated %llu bytes",
	      (unsigned long long)(ca_pool_used(&attached) - ca_pool_used(&before)));

	ret = ct_map(ct, ha, 0, m);
	if (!CHECK(ret == 0, "first map: %s", strerror(-ret)))
		goto out;
	if (!CHECK(ca_pool_read(ca, &mapped) == 0, "INFO"))
		goto out;
	used = ca_pool_allocator_used(&attached, &mapped);
	if (used >= 0)
		memcpy(name, mapped.alloc[used].name, CENALLOC_NAME_LEN);
	tap_diag("free bytes: before %llu, after attach %llu, after first map %llu (allocator %d %s)",
		 (unsigned long long)ca_pool_free(&before),
		 (unsigned long long)ca_pool_free(&attached),
		 (unsigned long long)ca_pool_free(&mapped), used, name);
	CHECK(used == expected, "first map used allocator %d, expected %d",
	      used, expected);
	CHECK(ca_pool_used(&mapped) - ca_pool_used(&attached) == CA_MIB,
	      "first map took %llu bytes, expected %llu",
	      (unsigned long long)(ca_pool_used(&mapped) - ca_pool_used(&attached)),
	      CA_MIB);
	if (used >= 0)
		CHECK(mapped.alloc[used].num_buffers ==
		      attached.alloc[used].num_buffers + 1,
		      "allocator buffer count %u -> %u",
		      attached.alloc[used].num_buffers,
		      mapped.alloc[used].num_buffers);

	/* A second device and a second map allocate nothing more. */
	ret = ct_attach(ct, fd, DEV_B, &hb, NULL);
	if (!CHECK(ret == 0, "second attach: %s", strerror(-ret)))
		goto out;
	ret = ct_map(ct, hb, 0, m);
	if (!CHECK(ret == 0, "second map: %s", strerror(-ret)))
		goto out;
	if (CHECK(ca_pool_read(ca, &second) == 0, "INFO"))
		CHECK(ca_pool_same(&mapped, &second),
		      "second attach and map changed the pool");
	ct_detach(ct, ha);
	ct_detach(ct, hb);
	ha = hb = 0;
	ca_close(&fd);
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "pool not back after free");
out:
	if (ha)
		ct_detach(ct, ha);
	if (hb)
		ct_detach(ct, hb);
	ca_close(&fd);
	ca_close(&ct);
	ca_close(&ca);
	free(m);
	return TAP_PASS;
}

/*
 * Allocates a 64 KiB buffer for devices A (mask_a) and, if mask_b != 0,
 * B (mask_b), created with initial_mask, and checks the allocator, the
 * contiguity and the placement of the backing.
 */
static void check_choice(int ca, int ct, uint32_t initial_mask,
			 uint32_t mask_a, uint32_t mask_b)
{
	uint32_t access = mask_a & (mask_b ? mask_b : CENALLOC_MASK_ANY) &
			  (initial_mask ? initial_mask : CENALLOC_MASK_ANY);
	struct ca_pool before, after;
	struct ct_mapping *m = calloc(1, sizeof(*m));
	const uint64_t size = 64 * CA_KIB;
	uint32_t ha = 0, hb = 0, hp = 0, i;
	int fd = -1, ret, used, expected;
	char text[64];

	if (!CHECK(m, "out of memory"))
		return;
	ca_mask_str(access, text, sizeof(text));
	if (!CHECK(ct_set_device1(ct, DEV_A, mask_a, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ct_set_device1(ct, DEV_PROBE, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ct_set_device1(ct, DEV_B, mask_b ? mask_b : CENALLOC_MASK_ANY, 0) == 0,
		   "SET_DEVICE") ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	expected = ca_pool_expected_allocator(&before, access, size);
	if (expected < 0) {
		tap_diag("access mask %s: no allocator serves it, not checked", text);
		goto out;
	}
	fd = ca_create(ca, size, initial_mask);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ct_attach(ct, fd, DEV_A, &ha, NULL);
	if (!CHECK(ret == 0, "attach A: %s", strerror(-ret)))
		goto out;
	if (mask_b) {
		ret = ct_attach(ct, fd, DEV_B, &hb, NULL);
		if (!CHECK(ret == 0, "attach B: %s", strerror(-ret)))
			goto out;
	}
	ret = ct_map(ct, ha, 0, m);
	if (!CHECK(ret == 0, "map (access %s): %s", text, strerror(-ret)))
		goto out;
	if (!CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		goto out;
	used = ca_pool_allocator_used(&before, &after);
	tap_diag("access mask %-22s -> allocator %d (%.16s), %u segment(s)",
		 text, used, used >= 0 ? after.alloc[used].name : "?",
		 m->num_segments);
	CHECK(used == expected, "access %s: allocator %d, expected %d (%.16s)",
	      text, used, expected, before.alloc[expected].name);
	if (used < 0)
		goto out;
	/*
	 * A 32-bit device could see swiotlb bounce addresses: read the
	 * physical placement through the 64-bit probe device (mask ANY
	 * does not narrow the access mask).
	 */
	ret = ct_attach(ct, fd, DEV_PROBE, &hp, NULL);
	if (!CHECK(ret == 0, "attach probe: %s", strerror(-ret)))
		goto out;
	ret = ct_map(ct, hp, 0, m);
	if (!CHECK(ret == 0, "map probe: %s", strerror(-ret)))
		goto out;
	if (ca_allocator_contiguous(&after.alloc[used]))
		CHECK(m->num_segments == 1,
		      "contiguous allocator gave %u segments", m->num_segments);
	if (after.alloc[used].placement & 2u) {
		for (i = 0; i < m->num_segments && i < CT_MAX_SEGMENTS; i++)
			CHECK(m->seg[i].addr + m->seg[i].len <= FOUR_GIB,
			      "DMA32 allocator segment %#llx+%#llx above 4 GiB",
			      (unsigned long long)m->seg[i].addr,
			      (unsigned long long)m->seg[i].len);
	}
out:
	if (ha)
		ct_detach(ct, ha);
	if (hb)
		ct_detach(ct, hb);
	if (hp)
		ct_detach(ct, hp);
	ca_close(&fd);
	free(m);
}

static enum tap_result test_allocator_follows_mask(void)
{
	static const uint32_t masks[] = {
		CENALLOC_MASK_ANY,
		CENALLOC_KIND_SYSTEM,
		CENALLOC_KIND_DMA32,
		CENALLOC_KIND_CONTIG,
		CENALLOC_KIND_CONTIG_DMA32,
		CENALLOC_KIND_CONTIG | CENALLOC_KIND_CONTIG_DMA32,
		CENALLOC_KIND_DMA32 | CENALLOC_KIND_CONTIG_DMA32,
	};
	unsigned int i;
	int ca, ct;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	for (i = 0; i < TAP_ARRAY_SIZE(masks); i++)
		check_choice(ca, ct, 0, masks[i], 0);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_access_mask_is_intersection(void)
{
	int ca, ct;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	/* SYSTEM|DMA32 and DMA32|CONTIG_DMA32 leave DMA32. */
	check_choice(ca, ct, 0, CENALLOC_KIND_SYSTEM | CENALLOC_KIND_DMA32,
		     CENALLOC_KIND_DMA32 | CENALLOC_KIND_CONTIG_DMA32);
	/* ANY and CONTIG leave CONTIG. */
	check_choice(ca, ct, 0, CENALLOC_MASK_ANY, CENALLOC_KIND_CONTIG);
	/* The initial mask of create counts like an attachment's. */
	check_choice(ca, ct, CENALLOC_KIND_CONTIG_DMA32, CENALLOC_MASK_ANY, 0);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_incompatible_attach_einval(void)
{
	struct ca_pool before, after;
	struct ct_mapping *m = calloc(1, sizeof(*m));
	uint32_t ha = 0, hb = 0;
	int ca, ct, fd = -1, ret;

	if (!CHECK(m, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(m);
		return TAP_FAIL;
	}
	if (!CHECK(ct_set_device1(ct, DEV_A, CENALLOC_KIND_SYSTEM, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ct_set_device1(ct, DEV_B, CENALLOC_KIND_CONTIG, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;

	fd = ca_create(ca, 64 * CA_KIB, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ct_attach(ct, fd, DEV_A, &ha, NULL);
	if (!CHECK(ret == 0, "attach SYSTEM: %s", strerror(-ret)))
		goto out;
	ret = ct_attach(ct, fd, DEV_B, &hb, NULL);
	CHECK(ret == -EINVAL, "attach CONTIG to a SYSTEM buffer: %s, expected EINVAL",
	      ret ? strerror(-ret) : "success");
	if (!ret)
		ct_detach(ct, hb);
	hb = 0;
	/* The refused attach changed nothing: the first device still maps. */
	ret = ct_map(ct, ha, 0, m);
	CHECK(ret == 0, "map after refused attach: %s", strerror(-ret));
	ct_detach(ct, ha);
	ha = 0;
	ca_close(&fd);

	/* Same with the initial mask given at create. */
	fd = ca_create(ca, 64 * CA_KIB, CENALLOC_KIND_SYSTEM);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ct_attach(ct, fd, DEV_B, &hb, NULL);
	CHECK(ret == -EINVAL, "attach CONTIG to initial mask SYSTEM: %s, expected EINVAL",
	      ret ? strerror(-ret) : "success");
	if (!ret)
		ct_detach(ct, hb);
	hb = 0;
	ca_close(&fd);
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "pool not back");
out:
	if (ha)
		ct_detach(ct, ha);
	ca_close(&fd);
	ca_close(&ct);
	ca_close(&ca);
	free(m);
	return TAP_PASS;
}

/*
 * An importer that knows nothing of cenalloc (plain dma_buf_attach()) gets
 * the mask recorded for its device name with SET_DEVICE_MASK, or any kind.
 */
static enum tap_result test_plain_attach_uses_device_table(void)
{
	const char *name = ct_device_name(DEV_PLAIN);
	struct ca_pool before, after;
	struct ca_buf b = { .fd = -1 };
	uint32_t map_type = 99;
	int ca, ct, ret, used, expected;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	if (!CHECK(ct_set_device1(ct, DEV_PLAIN, 0, 0) == 0, "SET_DEVICE"))
		goto out;
	ret = ca_set_device_mask(ca, name, CENALLOC_KIND_CONTIG_DMA32);
	if (!CHECK(ret == 0, "SET_DEVICE_MASK %s: %s", name, strerror(-ret)))
		goto out;

	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	expected = ca_pool_expected_allocator(&before, CENALLOC_KIND_CONTIG_DMA32,
					      64 * CA_KIB);
	b.fd = ca_create(ca, 64 * CA_KIB, 0);
	if (!CHECK(b.fd >= 0, "create: %s", strerror(-b.fd)))
		goto out;
	ret = ct_attach(ct, b.fd, DEV_PLAIN, &b.handle, &map_type);
	if (!CHECK(ret == 0, "plain attach: %s", strerror(-ret)))
		goto out;
	CHECK(map_type == 0, "plain attach reported map type %u", map_type);
	ret = ct_map(ct, b.handle, 0, &b.map);
	if (!CHECK(ret == 0, "map: %s", strerror(-ret)))
		goto out;
	if (!CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		goto out;
	used = ca_pool_allocator_used(&before, &after);
	CHECK(used == expected && expected >= 0,
	      "table mask CONTIG_DMA32: allocator %d, expected %d", used, expected);
	CHECK(b.map.num_segments == 1, "%u segments for a contiguous kind",
	      b.map.num_segments);
	ca_buf_free(ct, &b);

	/* Mask 0 removes the entry: back to the default, any kind. */
	ret = ca_set_device_mask(ca, name, 0);
	CHECK(ret == 0, "SET_DEVICE_MASK remove: %s", strerror(-ret));
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	expected = ca_pool_expected_allocator(&before, CENALLOC_MASK_ANY,
					      64 * CA_KIB);
	ret = ca_buf_alloc(ca, ct, 64 * CA_KIB, DEV_PLAIN, &b);
	if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)))
		goto out;
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO")) {
		used = ca_pool_allocator_used(&before, &after);
		CHECK(used == expected, "default mask: allocator %d, expected %d",
		      used, expected);
	}
out:
	ca_buf_free(ct, &b);
	if (ca >= 0)
		ca_set_device_mask(ca, name, 0);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("allocation is delayed to the first map", test_allocation_delayed_to_first_map),
	TAP_TEST("the allocator chosen follows the constraint mask", test_allocator_follows_mask),
	TAP_TEST("the access mask is the intersection of all masks", test_access_mask_is_intersection),
	TAP_TEST("an attach with no kind in common fails with EINVAL", test_incompatible_attach_einval),
	TAP_TEST("a plain dma_buf_attach() importer gets its table mask", test_plain_attach_uses_device_table),
};

TAP_MAIN(tests)
