// SPDX-License-Identifier: GPL-2.0
/*
 * Attach after the backing exists: accepted when the backing already suits
 * the new device; migrated at the next map (content preserved) when it does
 * not and no mapping is outstanding; refused with -EBUSY while mapped.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define DEV_FIRST	0	/* mask ANY */
#define DEV_LATE	1	/* configured per test */
#define DEV_FRAG	2	/* fragments the allocator to migrate into */
#define SIZE		(256 * CA_KIB)
#define SEED		0x5eed1234abcdull

static const uint32_t stricter_masks[] = {
	CENALLOC_KIND_CONTIG_DMA32,
	CENALLOC_KIND_CONTIG,
	CENALLOC_KIND_DMA32,
};

/*
 * A mask that the backing in allocator @a does not serve but another
 * allocator does; 0 if the pool has none.
 */
static uint32_t stricter_mask(const struct ca_pool *pool, int a)
{
	unsigned int i;

	for (i = 0; i < TAP_ARRAY_SIZE(stricter_masks); i++) {
		uint32_t mask = stricter_masks[i];

		if (!(pool->alloc[a].kinds & mask) &&
		    ca_pool_expected_allocator(pool, mask, SIZE) >= 0)
			return mask;
	}
	return 0;
}

/* Allocates a SIZE buffer for DEV_FIRST; returns its allocator or -1. */
static int first_alloc(int ca, int ct, struct ca_buf *b, struct ca_pool *after)
{
	struct ca_pool before;
	int ret, used;

	if (!CHECK(ct_set_device1(ct, DEV_FIRST, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		return -1;
	ret = ca_buf_alloc(ca, ct, SIZE, DEV_FIRST, b);
	if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)))
		return -1;
	if (!CHECK(ca_pool_read(ca, after) == 0, "INFO"))
		return -1;
	used = ca_pool_allocator_used(&before, after);
	CHECK(used >= 0, "first map used no single allocator (%d)", used);
	return used;
}

static enum tap_result test_late_attach_compatible(void)
{
	struct ct_mapping *m = calloc(1, sizeof(*m));
	struct ca_buf b = { .fd = -1 };
	struct ca_pool mapped, after;
	uint32_t handle = 0, i;
	int ca, ct, a, ret;

	if (!CHECK(m, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(m);
		return TAP_FAIL;
	}
	a = first_alloc(ca, ct, &b, &mapped);
	if (a < 0)
		goto out;
	/* The allocator's own kinds: the backing suits this device. */
	if (!CHECK(ct_set_device1(ct, DEV_LATE, mapped.alloc[a].kinds, 0) == 0,
		   "SET_DEVICE"))
		goto out;
	ret = ct_attach(ct, b.fd, DEV_LATE, &handle, NULL);
	if (!CHECK(ret == 0, "late compatible attach while mapped: %s", strerror(-ret)))
		goto out;
	ret = ct_map(ct, handle, 0, m);
	if (!CHECK(ret == 0, "map: %s", strerror(-ret)))
		goto out;
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&mapped, &after), "compatible late attach moved the backing");
	CHECK(m->num_segments == b.map.num_segments, "segments %u vs %u",
	      m->num_segments, b.map.num_segments);
	for (i = 0; i < m->num_segments && i < b.map.num_segments && i < CT_MAX_SEGMENTS; i++)
		CHECK(m->seg[i].addr == b.map.seg[i].addr && m->seg[i].len == b.map.seg[i].len,
		      "segment %u differs", i);
out:
	if (handle)
		ct_detach(ct, handle);
	ca_buf_free(ct, &b);
	ca_close(&ct);
	ca_close(&ca);
	free(m);
	return TAP_PASS;
}

static enum tap_result test_late_attach_busy_while_mapped(void)
{
	enum tap_result result = TAP_PASS;
	struct ca_buf b = { .fd = -1 };
	struct ca_pool mapped, after;
	uint64_t sum_before = 0, sum_after = 1, len;
	uint32_t handle = 0, mask;
	int ca, ct, a, ret;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	a = first_alloc(ca, ct, &b, &mapped);
	if (a < 0)
		goto out;
	mask = stricter_mask(&mapped, a);
	if (!mask) {
		result = tap_skip("no allocator serves a kind that allocator %d lacks", a);
		goto out;
	}
	CHECK(ca_fill(ca, b.fd, SEED) == 0, "FILL");
	CHECK(ca_checksum(ca, b.fd, &sum_before, &len) == 0, "CHECKSUM");
	if (!CHECK(ct_set_device1(ct, DEV_LATE, mask, 0) == 0, "SET_DEVICE"))
		goto out;
	ret = ct_attach(ct, b.fd, DEV_LATE, &handle, NULL);
	CHECK(ret == -EBUSY, "stricter attach while mapped: %s, expected EBUSY",
	      ret ? strerror(-ret) : "success");
	if (!ret)
		ct_detach(ct, handle);
	handle = 0;
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&mapped, &after), "refused attach changed the pool");
	CHECK(ca_checksum(ca, b.fd, &sum_after, &len) == 0 && sum_after == sum_before,
	      "content changed by the refused attach");
	/* The first device is unaffected. */
	CHECK(ct_unmap(ct, b.handle) == 0, "unmap");
	ret = ct_map(ct, b.handle, 0, &b.map);
	CHECK(ret == 0, "remap: %s", strerror(-ret));
out:
	ca_buf_free(ct, &b);
	ca_close(&ct);
	ca_close(&ca);
	return result;
}

/*
 * The migration itself. @cpu_map: keep an mmap of the buffer open across
 * the migration (the driver may then refuse with EBUSY, or migrate and
 * make the old mapping see the new backing).
 */
static enum tap_result late_attach_migrates(bool cpu_map)
{
	struct ct_mapping *m = calloc(1, sizeof(*m));
	uint64_t sum_before = 0, sum_after = 0, len, addr_before = 0, addr, plen;
	bool had_phys = false;
	enum tap_result result = TAP_PASS;
	struct ca_buf b = { .fd = -1 };
	struct ca_pool mapped, attached, after;
	unsigned char *data = malloc(SIZE);
	uint32_t handle = 0, mask;
	uint8_t *cpu = NULL;
	int ca, ct, a, ret, to, from, expected;

	if (!CHECK(m && data, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(m);
		free(data);
		return TAP_FAIL;
	}
	a = first_alloc(ca, ct, &b, &mapped);
	if (a < 0)
		goto out;
	mask = stricter_mask(&mapped, a);
	if (!mask) {
		result = tap_skip("no allocator serves a kind that allocator %d lacks", a);
		goto out;
	}
	expected = ca_pool_expected_allocator(&mapped, mask, SIZE);

	/* The content: written by the device itself, then checked. */
	if (!CHECK(ca_fill(ca, b.fd, SEED) == 0, "FILL") ||
	    !CHECK(ca_checksum(ca, b.fd, &sum_before, &len) == 0, "CHECKSUM"))
		goto out;
	if (ca_phys(ca, b.fd, &addr_before, &plen) == 0)
		had_phys = true;
	if (cpu_map) {
		cpu = ca_mmap(b.fd, SIZE);
		if (!CHECK(cpu, "mmap: %s", strerror(errno)))
			goto out;
		CHECK(ca_pattern_check(cpu, SIZE, SEED) == SIZE,
		      "pattern not visible through mmap before migration");
	}
	/* No device mapping may be outstanding for a migration. */
	if (!CHECK(ct_unmap(ct, b.handle) == 0, "unmap"))
		goto out;
	if (!CHECK(ct_set_device1(ct, DEV_LATE, mask, 0) == 0, "SET_DEVICE"))
		goto out;
	ret = ct_attach(ct, b.fd, DEV_LATE, &handle, NULL);
	if (cpu_map && ret == -EBUSY) {
		tap_diag("driver refuses to migrate under a live mmap (EBUSY)");
		if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
			CHECK(ca_pool_same(&mapped, &after), "refused attach changed the pool");
		goto out;
	}
	if (!CHECK(ret == 0, "stricter attach with nothing mapped: %s", strerror(-ret)))
		goto out;
	if (CHECK(ca_pool_read(ca, &attached) == 0, "INFO"))
		CHECK(ca_pool_same(&mapped, &attached), "attach itself moved the backing");

	ret = ct_map(ct, handle, 0, m);
	if (!CHECK(ret == 0, "map of the stricter device: %s", strerror(-ret)))
		goto out;
	if (!CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		goto out;
	to = ca_pool_allocator_used(&attached, &after);
	from = ca_pool_allocator_released(&attached, &after);
	tap_diag("migrated from allocator %d (%.16s) to %d (%.16s)", from,
		 from >= 0 ? after.alloc[from].name : "?", to,
		 to >= 0 ? after.alloc[to].name : "?");
	CHECK(from == a, "backing released by allocator %d, expected %d", from, a);
	CHECK(to == expected, "backing taken from allocator %d, expected %d", to, expected);

	CHECK(ca_checksum(ca, b.fd, &sum_after, &len) == 0 && sum_after == sum_before,
	      "content changed by migration: checksum %#llx -> %#llx",
	      (unsigned long long)sum_before, (unsigned long long)sum_after);
	ret = ca_phys(ca, b.fd, &addr, &plen);
	if (to >= 0 && ca_allocator_contiguous(&after.alloc[to])) {
		CHECK(ret == 0, "PHYS after migration to a contiguous allocator: %s",
		      strerror(-ret));
		CHECK(!had_phys || addr != addr_before, "PHYS unchanged (%#llx)",
		      (unsigned long long)addr);
		CHECK(m->num_segments == 1 && m->seg[0].addr == addr,
		      "stricter device's mapping differs from PHYS");
	}
	CHECK(ct_rw(ct, b.fd, false, 0, data, SIZE) == 0, "RW read");
	CHECK(ca_pattern_check(data, SIZE, SEED) == SIZE,
	      "pattern lost through the kernel mapping after migration");
	if (cpu) {
		size_t bad = ca_pattern_check(cpu, SIZE, SEED);

		CHECK(bad == SIZE, "old mmap reads stale data at %zu after migration", bad);
		/* Writes through the old mapping must land in the new backing. */
		cpu[0] ^= 0xff;
		CHECK(ca_checksum(ca, b.fd, &sum_after, &len) == 0 &&
		      sum_after != sum_before,
		      "write through the old mmap not seen by the device");
		cpu[0] ^= 0xff;
	} else {
		cpu = ca_mmap(b.fd, SIZE);
		if (CHECK(cpu, "mmap after migration: %s", strerror(errno)))
			CHECK(ca_pattern_check(cpu, SIZE, SEED) == SIZE,
			      "pattern lost through mmap after migration");
	}
	/* The first device now maps the new backing too. */
	ret = ct_map(ct, b.handle, 0, &b.map);
	if (CHECK(ret == 0, "remap of the first device: %s", strerror(-ret)))
		CHECK(b.map.num_segments == m->num_segments &&
		      b.map.seg[0].addr == m->seg[0].addr,
		      "first device maps another backing");
out:
	if (cpu)
		munmap(cpu, SIZE);
	if (handle)
		ct_detach(ct, handle);
	ca_buf_free(ct, &b);
	ca_close(&ct);
	ca_close(&ca);
	free(m);
	free(data);
	return result;
}

static enum tap_result test_late_attach_migrates(void)
{
	return late_attach_migrates(false);
}

static enum tap_result test_late_attach_migrates_under_mmap(void)
{
	return late_attach_migrates(true);
}


/*
 * A migration into several segments: the other tests' stricter masks pick
 * a contiguous allocator first, so their new backing is always one
 * segment. Here buffer A (two holes' worth) lives in one segment of the
 * SYSTEM allocator; the DMA32 allocator is fragmented so that it has only
 * two separated holes; a late DMA32 attach must then migrate A into both
 * holes at its next map, content kept, and every device maps the two.
 */
static enum tap_result test_late_attach_migrates_into_segments(void)
{
	const uint64_t size = 2 * CA_FRAG_HOLE;
	struct ca_frag *frag = calloc(1, sizeof(*frag));
	struct ct_mapping *m = calloc(1, sizeof(*m));
	unsigned char *data = malloc(size);
	enum tap_result result = TAP_PASS;
	uint64_t sum_before = 0, sum_after = 0, len;
	struct ca_buf b = { .fd = -1 };
	struct ca_pool pool, attached, after;
	int ca, ct, ret, sys, dma32, to, from;
	uint32_t handle = 0, i;

	if (!CHECK(frag && m && data, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(frag);
		free(m);
		free(data);
		return TAP_FAIL;
	}
	/* DEV_FIRST takes any kind: a DMA32 device must be able to join. */
	if (!CHECK(ct_set_device1(ct, DEV_FIRST, CENALLOC_MASK_ANY, 0) == 0 &&
		   ct_set_device1(ct, DEV_FRAG, CENALLOC_KIND_DMA32, 0) == 0 &&
		   ct_set_device1(ct, DEV_LATE, CENALLOC_KIND_DMA32, 0) == 0,
		   "SET_DEVICE") ||
	    !CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	sys = ca_pool_find_kind(&pool, CENALLOC_KIND_SYSTEM);
	dma32 = ca_pool_find_kind(&pool, CENALLOC_KIND_DMA32);
	if (sys < 0 || dma32 < 0 || sys == dma32 ||
	    ca_allocator_contiguous(&pool.alloc[dma32]) ||
	    (pool.alloc[sys].kinds & CENALLOC_KIND_DMA32) ||
	    ca_pool_expected_allocator(&pool, CENALLOC_MASK_ANY, size) != sys) {
		result = tap_skip("no scatter DMA32 allocator after the SYSTEM one");
		goto out;
	}
	/* A pool that may grow does so in the background (POOL_LOW): no holes. */
	if (!CHECK(ca_pool_value(dma32, "max") > 0, "no pool%d_max in debugfs", dma32))
		goto out;
	if (ca_pool_value(dma32, "max") > ca_pool_value(dma32, "donated")) {
		result = tap_skip("the DMA32 pool may grow (%lld of at most %lld bytes): it cannot be fragmented",
				  ca_pool_value(dma32, "donated"), ca_pool_value(dma32, "max"));
		goto out;
	}
	/* A: one fresh SYSTEM extent, written by the device. */
	ret = ca_buf_alloc(ca, ct, size, DEV_FIRST, &b);
	if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)) ||
	    !CHECK(b.map.num_segments == 1, "A has %u segments", b.map.num_segments) ||
	    !CHECK(ca_fill(ca, b.fd, SEED) == 0, "FILL") ||
	    !CHECK(ca_checksum(ca, b.fd, &sum_before, &len) == 0, "CHECKSUM") ||
	    !CHECK(ct_unmap(ct, b.handle) == 0, "unmap"))
		goto out;
	ret = ca_fragment(ca, ct, DEV_FRAG, dma32, frag);
	if (ret == 1 || ret == -ENOSPC || ret == -E2BIG) {
		result = tap_skip("allocator %d too large to fragment within the pool limits (%s)",
				  dma32, ret == 1 ? "buffer count" : strerror(-ret));
		goto out;
	}
	if (!CHECK(ret == 0, "fragmenting allocator %d: %s", dma32, strerror(-ret)))
		goto out;
	ret = ct_attach(ct, b.fd, DEV_LATE, &handle, NULL);
	if (!CHECK(ret == 0, "stricter attach with nothing mapped: %s", strerror(-ret)) ||
	    !CHECK(ca_pool_read(ca, &attached) == 0, "INFO"))
		goto out;
	ret = ct_map(ct, handle, 0, m);
	if (!CHECK(ret == 0, "migrating map into the holes: %s", strerror(-ret)) ||
	    !CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		goto out;
	to = ca_pool_allocator_used(&attached, &after);
	from = ca_pool_allocator_released(&attached, &after);
	tap_diag("migrated from allocator %d to %d, %u segments", from, to,
		 m->num_segments);
	CHECK(from == sys && to == dma32, "moved from %d to %d, expected %d to %d",
	      from, to, sys, dma32);
	CHECK(m->num_segments == 2, "%u segments, expected the two holes",
	      m->num_segments);
	CHECK(ct_mapping_bytes(m) == size, "the mapping covers %llu bytes",
	      (unsigned long long)ct_mapping_bytes(m));
	CHECK(ca_checksum(ca, b.fd, &sum_after, &len) == 0 && sum_after == sum_before,
	      "content changed by the migration: checksum %#llx -> %#llx",
	      (unsigned long long)sum_before, (unsigned long long)sum_after);
	CHECK(ct_rw(ct, b.fd, false, 0, data, size) == 0 &&
	      ca_pattern_check(data, size, SEED) == size,
	      "pattern lost through the kernel mapping after the migration");
	/* The first device now maps the same two segments. */
	ret = ct_map(ct, b.handle, 0, &b.map);
	if (CHECK(ret == 0, "remap of the first device: %s", strerror(-ret))) {
		CHECK(b.map.num_segments == m->num_segments,
		      "first device: %u segments, the migrating map %u",
		      b.map.num_segments, m->num_segments);
		for (i = 0; i < m->num_segments && i < b.map.num_segments &&
		     i < CT_MAX_SEGMENTS; i++)
			CHECK(b.map.seg[i].addr == m->seg[i].addr &&
			      b.map.seg[i].len == m->seg[i].len,
			      "segment %u differs between the devices", i);
	}
out:
	if (handle) {
		ct_unmap(ct, handle);
		ct_detach(ct, handle);
	}
	ca_buf_free(ct, &b);
	ca_fragment_release(ct, frag);
	ca_close(&ct);
	ca_close(&ca);
	free(frag);
	free(m);
	free(data);
	return result;
}

static const struct tap_test tests[] = {
	TAP_TEST("late attach that the backing suits is accepted as is", test_late_attach_compatible),
	TAP_TEST("late stricter attach while mapped fails with EBUSY", test_late_attach_busy_while_mapped),
	TAP_TEST("late stricter attach migrates at the next map, content kept", test_late_attach_migrates),
	TAP_TEST("migration with a live mmap: EBUSY, or the mmap follows", test_late_attach_migrates_under_mmap),
	TAP_TEST_TIMEOUT("late stricter attach migrates into several segments, content kept",
			 test_late_attach_migrates_into_segments, 200),
};

TAP_MAIN(tests)
