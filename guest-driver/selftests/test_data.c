// SPDX-License-Identifier: GPL-2.0
/*
 * The host and the guest see the same bytes: the guest writes through mmap
 * and the device's CHECKSUM (FNV-1a 64 over the backing) matches the one
 * computed here; the device's FILL pattern is what the guest reads through
 * mmap and through the kernel mapping; new buffers read as zeros; and
 * closing everything returns the pools to their initial free bytes.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define DEV_ANY		0
#define DEV_ZERO	1	/* CONTIG: PHYS shows the reuse */

static const uint64_t sizes[] = {
	4 * CA_KIB, 68 * CA_KIB, 1 * CA_MIB + 12 * CA_KIB, 4 * CA_MIB,
};

static enum tap_result test_checksum_of_mmap_writes(void)
{
	struct ca_buf b = { .fd = -1 };
	unsigned int i;
	int ca, ct, ret;

	if (!ca_env_open_device(&ca, &ct, DEV_ANY, CENALLOC_MASK_ANY))
		return TAP_FAIL;
	for (i = 0; i < TAP_ARRAY_SIZE(sizes); i++) {
		uint64_t sum = 0, len = 0, expected;
		uint8_t *p;

		ret = ca_buf_alloc(ca, ct, sizes[i], DEV_ANY, &b);
		if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)))
			goto out;
		p = ca_mmap(b.fd, b.size);
		if (!CHECK(p, "mmap: %s", strerror(errno)))
			goto out;
		CHECK(ca_cpu_access(b.fd, true) == 0, "SYNC start");
		ca_pattern_fill(p, b.size, 1000 + i);
		p[b.size - 1] ^= 0x5a;	/* the very last byte counts too */
		CHECK(ca_cpu_access(b.fd, false) == 0, "SYNC end");
		expected = ca_fnv1a64(p, b.size);
		munmap(p, b.size);
		ret = ca_checksum(ca, b.fd, &sum, &len);
		if (CHECK(ret == 0, "CHECKSUM: %s", strerror(-ret))) {
			tap_diag("%8llu bytes: guest %016llx device %016llx",
				 (unsigned long long)b.size,
				 (unsigned long long)expected,
				 (unsigned long long)sum);
			CHECK(len == b.size, "device hashed %llu bytes of %llu",
			      (unsigned long long)len, (unsigned long long)b.size);
			CHECK(sum == expected, "checksum mismatch");
		}
		ca_buf_free(ct, &b);
	}
out:
	ca_env_close(&ca, &ct, &b);
	return TAP_PASS;
}

static enum tap_result test_fill_seen_by_guest(void)
{
	struct ca_buf b = { .fd = -1 };
	uint8_t *copy = NULL;
	unsigned int i;
	int ca, ct, ret;

	if (!ca_env_open_device(&ca, &ct, DEV_ANY, CENALLOC_MASK_ANY))
		return TAP_FAIL;
	for (i = 0; i < TAP_ARRAY_SIZE(sizes); i++) {
		const uint64_t seed = 0xc0ffee00ull + i;
		size_t bad;
		uint8_t *p;

		ret = ca_buf_alloc(ca, ct, sizes[i], DEV_ANY, &b);
		if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)))
			goto out;
		ret = ca_fill(ca, b.fd, seed);
		if (!CHECK(ret == 0, "FILL: %s", strerror(-ret)))
			goto out;
		p = ca_mmap(b.fd, b.size);
		if (!CHECK(p, "mmap: %s", strerror(errno)))
			goto out;
		CHECK(ca_cpu_access(b.fd, true) == 0, "SYNC start");
		bad = ca_pattern_check(p, b.size, seed);
		CHECK(bad == b.size, "%llu bytes: mmap differs from FILL at offset %zu",
		      (unsigned long long)b.size, bad);
		CHECK(ca_cpu_access(b.fd, false) == 0, "SYNC end");
		munmap(p, b.size);

		copy = malloc(b.size);
		if (!CHECK(copy, "out of memory"))
			goto out;
		ret = ct_rw(ct, b.fd, false, 0, copy, b.size);
		if (CHECK(ret == 0, "RW read: %s", strerror(-ret))) {
			bad = ca_pattern_check(copy, b.size, seed);
			CHECK(bad == b.size, "kernel mapping differs from FILL at %zu", bad);
		}
		free(copy);
		copy = NULL;
		ca_buf_free(ct, &b);
	}
out:
	free(copy);
	ca_buf_free(ct, &b);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

/* Written through the kernel mapping (vmap), read by the device and mmap. */
static enum tap_result test_kernel_mapping_writes(void)
{
	const uint64_t size = 192 * CA_KIB, off = 20 * CA_KIB, len = 40 * CA_KIB;
	struct ca_buf b = { .fd = -1 };
	uint8_t *expect = calloc(1, size);
	uint64_t sum = 0, hashed;
	uint8_t *p;
	int ca, ct, ret;

	if (!CHECK(expect, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(expect);
		return TAP_FAIL;
	}
	if (!CHECK(ct_set_device1(ct, DEV_ANY, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE"))
		goto out;
	ret = ca_buf_alloc(ca, ct, size, DEV_ANY, &b);
	if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)))
		goto out;
	ca_pattern_fill(expect + off, len, 77);
	ret = ct_rw(ct, b.fd, true, off, expect + off, len);
	if (!CHECK(ret == 0, "RW write: %s", strerror(-ret)))
		goto out;
	ret = ca_checksum(ca, b.fd, &sum, &hashed);
	CHECK(ret == 0 && sum == ca_fnv1a64(expect, size),
	      "device checksum %#llx, expected %#llx (%s)", (unsigned long long)sum,
	      (unsigned long long)ca_fnv1a64(expect, size), strerror(-ret));
	p = ca_mmap(b.fd, size);
	if (CHECK(p, "mmap: %s", strerror(errno))) {
		CHECK(memcmp(p, expect, size) == 0, "mmap differs from what was written");
		munmap(p, size);
	}
out:
	ca_env_close(&ca, &ct, &b);
	free(expect);
	return TAP_PASS;
}

/* Backing is zeroed before the guest sees it, even when memory is reused. */
static enum tap_result test_new_buffers_are_zero(void)
{
	const uint64_t size = 512 * CA_KIB;
	struct ca_buf b = { .fd = -1 };
	uint64_t prev_addr = 0, addr, len;
	unsigned int round;
	int ca, ct, ret;

	/*
	 * Contiguous buffers: PHYS tells whether a round got the previous
	 * round's (dirtied) memory back, whatever DMA addresses the test
	 * device sees (swiotlb bounces them).
	 */
	if (!ca_env_open_device(&ca, &ct, DEV_ZERO, CENALLOC_KIND_CONTIG))
		return TAP_FAIL;
	for (round = 0; round < 3; round++) {
		uint64_t sum = 0;
		size_t nz;
		uint8_t *p;

		ret = ca_buf_alloc(ca, ct, size, DEV_ZERO, &b);
		if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)))
			goto out;
		ret = ca_phys(ca, b.fd, &addr, &len);
		if (!CHECK(ret == 0 && len == size, "PHYS: %s", strerror(-ret)))
			goto out;
		/* Nothing else allocates meanwhile: first fit gives it back. */
		if (round > 0)
			CHECK(addr == prev_addr,
			      "round %u: memory not reused (%#llx, was %#llx)",
			      round, (unsigned long long)addr,
			      (unsigned long long)prev_addr);
		prev_addr = addr;
		p = ca_mmap(b.fd, size);
		if (!CHECK(p, "mmap: %s", strerror(errno)))
			goto out;
		nz = ca_first_nonzero(p, size);
		CHECK(nz == size, "round %u: new buffer has data at offset %zu", round, nz);
		ret = ca_checksum(ca, b.fd, &sum, &len);
		CHECK(ret == 0 && sum == ca_fnv1a64(p, size),
		      "device checksum of a new buffer %#llx", (unsigned long long)sum);
		/* Dirty it: the next round gets the same memory back. */
		memset(p, 0xa5, size);
		munmap(p, size);
		ca_buf_free(ct, &b);
	}
out:
	ca_env_close(&ca, &ct, &b);
	return TAP_PASS;
}

static enum tap_result test_device_ops_need_backing(void)
{
	uint64_t sum, len;
	int ca, fd = -1, ret;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	fd = ca_create(ca, 64 * CA_KIB, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ca_checksum(ca, fd, &sum, &len);
	CHECK(ret == -ENODATA, "CHECKSUM without backing: %s, expected ENODATA",
	      ret ? strerror(-ret) : "success");
	ret = ca_fill(ca, fd, 1);
	CHECK(ret == -ENODATA, "FILL without backing: %s, expected ENODATA",
	      ret ? strerror(-ret) : "success");
out:
	ca_close(&fd);
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_pools_return_to_initial(void)
{
	static const uint32_t masks[] = {
		CENALLOC_MASK_ANY, CENALLOC_KIND_SYSTEM, CENALLOC_KIND_DMA32,
		CENALLOC_KIND_CONTIG, CENALLOC_KIND_CONTIG_DMA32,
	};
	enum { NBUF = 40 };
	struct ca_buf *b = calloc(NBUF, sizeof(*b));
	struct ca_pool before, during, after;
	unsigned int i, dev;
	int ca, ct, ret;

	if (!CHECK(b, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(b);
		return TAP_FAIL;
	}
	for (i = 0; i < NBUF; i++)
		b[i].fd = -1;
	for (dev = 0; dev < TAP_ARRAY_SIZE(masks); dev++)
		if (!CHECK(ct_set_device1(ct, dev, masks[dev], 0) == 0, "SET_DEVICE"))
			goto out;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	for (i = 0; i < NBUF; i++) {
		dev = i % TAP_ARRAY_SIZE(masks);
		if (ca_pool_expected_allocator(&before, masks[dev], (i + 1) * 8 * CA_KIB) < 0)
			continue;
		ret = ca_buf_alloc(ca, ct, (i + 1) * 8 * CA_KIB, dev, &b[i]);
		CHECK(ret == 0, "alloc %u (mask %#x): %s", i, masks[dev], strerror(-ret));
		/* Some unmapped, some closed early, some left to the importer. */
		if (i % 3 == 0 && b[i].handle)
			ct_unmap(ct, b[i].handle);
		if (i % 4 == 0)
			ca_close(&b[i].fd);
	}
	if (CHECK(ca_pool_read(ca, &during) == 0, "INFO"))
		tap_diag("free bytes: initial %llu, with %u buffers %llu",
			 (unsigned long long)ca_pool_free(&before), NBUF,
			 (unsigned long long)ca_pool_free(&during));
	ca_close(&ct);
	for (i = 0; i < NBUF; i++) {
		b[i].handle = 0;
		ca_close(&b[i].fd);
	}
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "pools not back to their initial state");
out:
	for (i = 0; i < NBUF; i++)
		ca_buf_free(ct, &b[i]);
	ca_close(&ct);
	ca_close(&ca);
	free(b);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("device CHECKSUM matches bytes written through mmap", test_checksum_of_mmap_writes),
	TAP_TEST("device FILL is seen through mmap and the kernel mapping", test_fill_seen_by_guest),
	TAP_TEST("writes through the kernel mapping reach the device and mmap", test_kernel_mapping_writes),
	TAP_TEST("new buffers read as zeros, also when memory is reused", test_new_buffers_are_zero),
	TAP_TEST("CHECKSUM and FILL need backing (ENODATA)", test_device_ops_need_backing),
	TAP_TEST("closing every fd returns the pools to their initial state", test_pools_return_to_initial),
};

TAP_MAIN(tests)
