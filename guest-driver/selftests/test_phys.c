// SPDX-License-Identifier: GPL-2.0
/*
 * CENALLOC_IOC_PHYS: the physical range of a contiguous backing; -ENODATA
 * before the first map (PHYS never allocates); -ENODEV when the backing is
 * more than one range.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define DEV_ANY		0
#define DEV_CONTIG	1
#define DEV_SYSTEM	2

static enum tap_result test_phys_before_first_map(void)
{
	struct ca_pool before, after;
	uint32_t handle = 0;
	uint64_t addr, len;
	int ca, ct, fd = -1, ret;

	if (!ca_env_open_device(&ca, &ct, DEV_CONTIG, CENALLOC_KIND_CONTIG))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	fd = ca_create(ca, 64 * CA_KIB, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ca_phys(ca, fd, &addr, &len);
	CHECK(ret == -ENODATA, "PHYS of a new buffer: %s, expected ENODATA",
	      ret ? strerror(-ret) : "success");
	ret = ct_attach(ct, fd, DEV_CONTIG, &handle, NULL);
	if (!CHECK(ret == 0, "attach: %s", strerror(-ret)))
		goto out;
	ret = ca_phys(ca, fd, &addr, &len);
	CHECK(ret == -ENODATA, "PHYS attached, not mapped: %s, expected ENODATA",
	      ret ? strerror(-ret) : "success");
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_used(&before) == ca_pool_used(&after),
		      "PHYS allocated backing");
out:
	if (handle)
		ct_detach(ct, handle);
	ca_close(&fd);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_phys_contiguous(void)
{
	static const uint64_t sizes[] = { 4 * CA_KIB, 1 * CA_MIB, 3 * CA_MIB + 8 * CA_KIB };
	struct ca_buf b = { .fd = -1 };
	unsigned int i;
	uint64_t addr, len;
	int ca, ct, ret;

	if (!ca_env_open_device(&ca, &ct, DEV_CONTIG, CENALLOC_KIND_CONTIG))
		return TAP_FAIL;
	for (i = 0; i < TAP_ARRAY_SIZE(sizes); i++) {
		ret = ca_buf_alloc(ca, ct, sizes[i], DEV_CONTIG, &b);
		if (!CHECK(ret == 0, "alloc %llu: %s",
			   (unsigned long long)sizes[i], strerror(-ret)))
			goto out;
		ret = ca_phys(ca, b.fd, &addr, &len);
		if (CHECK(ret == 0, "PHYS of a contiguous buffer: %s",
			  strerror(-ret))) {
			tap_diag("%llu bytes: phys %#llx+%#llx",
				 (unsigned long long)sizes[i],
				 (unsigned long long)addr,
				 (unsigned long long)len);
			CHECK(len == sizes[i], "PHYS len %llu, size %llu",
			      (unsigned long long)len,
			      (unsigned long long)sizes[i]);
			CHECK(addr % CA_PAGE_SIZE == 0, "PHYS addr %#llx unaligned",
			      (unsigned long long)addr);
			/* dma-direct, 64-bit device: DMA address == physical. */
			CHECK(b.map.num_segments == 1 && b.map.seg[0].addr == addr &&
			      b.map.seg[0].len == len,
			      "mapping (%u segments, first %#llx+%#llx) differs from PHYS",
			      b.map.num_segments,
			      (unsigned long long)b.map.seg[0].addr,
			      (unsigned long long)b.map.seg[0].len);
		}
		ca_buf_free(ct, &b);
	}
out:
	ca_env_close(&ca, &ct, &b);
	return TAP_PASS;
}

static enum tap_result test_phys_scatter_enodev(void)
{
	struct ca_frag *frag = calloc(1, sizeof(*frag));
	enum tap_result result = TAP_PASS;
	struct ca_buf b = { .fd = -1 };
	struct ca_pool pool, after;
	uint64_t addr, len;
	int ca, ct, ret, index, used;

	if (!CHECK(frag, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(frag);
		return TAP_FAIL;
	}
	if (!CHECK(ct_set_device1(ct, DEV_SYSTEM, CENALLOC_KIND_SYSTEM, 0) == 0,
		   "SET_DEVICE") ||
	    !CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	index = ca_pool_expected_allocator(&pool, CENALLOC_KIND_SYSTEM,
					   2 * CA_FRAG_HOLE);
	if (index < 0 || ca_allocator_contiguous(&pool.alloc[index])) {
		result = tap_skip("the first SYSTEM allocator is not a scatter one");
		goto out;
	}
	ret = ca_fragment(ca, ct, DEV_SYSTEM, index, frag);
	if (ret == 1 || ret == -ENOSPC || ret == -E2BIG) {
		result = tap_skip("allocator %d too large to fragment within the pool limits (%s)",
				  index, ret == 1 ? "buffer count" : strerror(-ret));
		goto out;
	}
	if (!CHECK(ret == 0, "fragmenting allocator %d: %s", index, strerror(-ret)))
		goto out;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	tap_diag("allocator %d: free %llu, largest free extent %llu", index,
		 (unsigned long long)pool.alloc[index].free,
		 (unsigned long long)pool.alloc[index].largest_free);

	ret = ca_buf_alloc(ca, ct, 2 * CA_FRAG_HOLE, DEV_SYSTEM, &b);
	if (!CHECK(ret == 0, "alloc into the holes: %s", strerror(-ret)))
		goto out;
	if (!CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		goto out;
	used = ca_pool_allocator_used(&pool, &after);
	CHECK(used == index, "went to allocator %d, not %d", used, index);
	/*
	 * An elastic pool grows in the background once filled (POOL_LOW):
	 * the new room may hold the buffer in one piece, not in the holes.
	 */
	if (b.map.num_segments == 1 &&
	    (after.alloc[index].capacity > pool.alloc[index].capacity ||
	     pool.alloc[index].largest_free >= 2 * CA_FRAG_HOLE)) {
		result = tap_skip("allocator %d grew (%llu -> %llu bytes, largest free %llu): no holes to scatter into",
				  index,
				  (unsigned long long)pool.alloc[index].capacity,
				  (unsigned long long)after.alloc[index].capacity,
				  (unsigned long long)pool.alloc[index].largest_free);
		goto out;
	}
	CHECK(b.map.num_segments == 2, "%u segments, expected the two holes",
	      b.map.num_segments);
	ret = ca_phys(ca, b.fd, &addr, &len);
	CHECK(ret == -ENODEV, "PHYS of a scattered buffer: %s, expected ENODEV",
	      ret ? strerror(-ret) : "success");
out:
	ca_buf_free(ct, &b);
	ca_fragment_release(ct, frag);
	ca_close(&ct);
	ca_close(&ca);
	free(frag);
	return result;
}

static const struct tap_test tests[] = {
	TAP_TEST("PHYS gives ENODATA before the first map", test_phys_before_first_map),
	TAP_TEST("PHYS gives the range of a contiguous buffer", test_phys_contiguous),
	TAP_TEST_TIMEOUT("PHYS gives ENODEV for a scattered buffer", test_phys_scatter_enodev, 200),
};

TAP_MAIN(tests)
