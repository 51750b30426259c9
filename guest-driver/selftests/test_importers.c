// SPDX-License-Identifier: GPL-2.0
/*
 * Importers: constraints the exporter derives from the importing device
 * (DMA mask, maximum segment, segment boundary), shown in debugfs; dynamic
 * importers revoked with move_notify so that a late, stricter attach can
 * migrate the backing; pinned importers (static mappings, mmap) that block
 * the migration with EBUSY.
 *
 * The placement checks read real addresses: in a guest whose RAM reaches
 * above 4 GiB (the CI guest has 6 GiB), a 32-bit device only gets memory
 * below 4 GiB, and a buffer whose kinds all lie above is refused at attach.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define FOUR_GIB		(4ull << 30)
#define ATTACHMENTS_PATH	"/sys/kernel/debug/cenalloc/attachments"
#define CA_PLACE_DMA32		2u

#define DEV_32BIT	0
#define DEV_64BIT	1
#define DEV_SMALLSEG	2
#define DEV_DYNAMIC	3
#define DEV_LATE	4
#define DEV_STATIC	5
#define DEV_PLAIN	6

/* End of the highest "System RAM" range of /proc/iomem, 0 if unknown. */
static uint64_t ram_top(void)
{
	FILE *f = fopen("/proc/iomem", "re");
	unsigned long long start, end;
	uint64_t top = 0;
	char line[256];

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == ' ' || !strstr(line, "System RAM"))
			continue;
		if (sscanf(line, "%llx-%llx", &start, &end) == 2 && end + 1 > top)
			top = end + 1;
	}
	fclose(f);
	return top;
}

/* Kinds of allocators whose memory may lie above 4 GiB, and the others. */
static void pool_kinds(const struct ca_pool *pool, uint32_t *high,
		       uint32_t *low)
{
	uint32_t i;

	*high = 0;
	*low = 0;
	for (i = 0; i < pool->count; i++) {
		if (pool->alloc[i].placement & CA_PLACE_DMA32)
			*low |= pool->alloc[i].kinds;
		else
			*high |= pool->alloc[i].kinds;
	}
}

/* The debugfs attachments line of @device, fields parsed. */
struct dbg_attach {
	uint32_t requested, reach, mask, max_seg, revoked, maps, pins;
	char why[16];
};

static bool dbg_attachment(const char *device, struct dbg_attach *d)
{
	FILE *f = fopen(ATTACHMENTS_PATH, "re");
	char line[512], name[64], dyn[8];
	unsigned int buffer, id, map_type;
	unsigned long long limit, boundary;
	bool found = false;

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%u %u %63s %x %x %x %u %u %7s %u %llx %15s %u %llx %u",
			   &buffer, &id, name, &d->requested, &d->reach,
			   &d->mask, &map_type, &d->maps, dyn, &d->pins, &limit,
			   d->why, &d->max_seg, &boundary, &d->revoked) == 15 &&
		    !strcmp(name, device)) {
			found = true;
			tap_diag("debugfs: %s", line);
		}
	}
	fclose(f);
	return found;
}

static bool segments_below(const struct ct_mapping *m, uint64_t limit)
{
	uint32_t i;

	for (i = 0; i < m->num_segments && i < CT_MAX_SEGMENTS; i++)
		if (m->seg[i].addr + m->seg[i].len > limit)
			return false;
	return true;
}

static enum tap_result test_dma32_device_gets_low_memory(void)
{
	struct ct_device_opts opts = { .dma_bits = 32 };
	const uint32_t sg = CENALLOC_MAP_SG;
	struct ct_mapping *m = calloc(1, sizeof(*m));
	uint64_t top = ram_top();
	uint32_t high, low, want, handle = 0;
	struct dbg_attach d;
	struct ca_pool pool;
	int ca, ct, fd = -1, ret;

	if (!CHECK(m, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(m);
		return TAP_FAIL;
	}
	tap_diag("guest RAM ends at %#" PRIx64 " (%s 4 GiB)", top,
		 top > FOUR_GIB ? "above" : "below");
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO") ||
	    !CHECK(ct_set_device_ex(ct, DEV_32BIT, CENALLOC_MASK_ANY, &sg, 1,
				    &opts) == 0, "SET_DEVICE"))
		goto out;
	pool_kinds(&pool, &high, &low);
	want = top > FOUR_GIB ? CENALLOC_MASK_ANY & ~high : CENALLOC_MASK_ANY;
	fd = ca_create(ca, 64 * CA_KIB, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ct_attach(ct, fd, DEV_32BIT, &handle, NULL);
	if (!CHECK(ret == 0, "attach: %s", strerror(-ret)))
		goto out;
	if (CHECK(dbg_attachment(ct_device_name(DEV_32BIT), &d),
		  "no debugfs line for %s", ct_device_name(DEV_32BIT))) {
		CHECK(d.requested == CENALLOC_MASK_ANY, "requested %#x", d.requested);
		CHECK(d.reach == want, "reach %#x, expected %#x", d.reach, want);
		CHECK(d.mask == want, "mask %#x, expected %#x", d.mask, want);
		CHECK(!strcmp(d.why, top > FOUR_GIB ? "below-4g" : "all-ram"),
		      "why %s", d.why);
	}
	ret = ct_map(ct, handle, 0, m);
	if (!CHECK(ret == 0, "map: %s", strerror(-ret)))
		goto out;
	CHECK(segments_below(m, FOUR_GIB), "a 32-bit device got memory above 4 GiB");
	tap_diag("first segment %#llx+%#llx", (unsigned long long)m->seg[0].addr,
		 (unsigned long long)m->seg[0].len);
	ct_unmap(ct, handle);
out:
	if (handle)
		ct_detach(ct, handle);
	ca_close(&fd);
	ca_close(&ct);
	ca_close(&ca);
	free(m);
	return TAP_PASS;
}

static enum tap_result test_dma32_device_refused_high_only_buffer(void)
{
	struct ct_device_opts opts32 = { .dma_bits = 32 };
	const uint32_t sg = CENALLOC_MAP_SG;
	uint32_t high, low, only_high, handle = 0, h64 = 0;
	struct ca_pool pool;
	int ca, ct, fd = -1, ret;

	if (ram_top() <= FOUR_GIB)
		return tap_skip("guest RAM ends below 4 GiB: every device reaches all of it");
	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO") ||
	    !CHECK(ct_set_device_ex(ct, DEV_32BIT, CENALLOC_MASK_ANY, &sg, 1,
				    &opts32) == 0, "SET_DEVICE") ||
	    !CHECK(ct_set_device1(ct, DEV_64BIT, CENALLOC_MASK_ANY, 0) == 0,
		   "SET_DEVICE"))
		goto out;
	/*
	 * Kinds some allocator serves from memory that may lie above 4 GiB,
	 * less the kinds that are below 4 GiB by definition: a buffer limited
	 * to them may be backed above 4 GiB, which a 32-bit device cannot
	 * reach (that another allocator could serve them below does not
	 * matter: the first in priority order wins).
	 */
	pool_kinds(&pool, &high, &low);
	only_high = high & ~(CENALLOC_KIND_DMA32 | CENALLOC_KIND_CONTIG_DMA32);
	tap_diag("kinds placed above 4 GiB %#x, below %#x: buffer mask %#x",
		 high, low, only_high);
	if (!CHECK(only_high, "no kind may be served above 4 GiB (high %#x)", high))
		goto out;
	fd = ca_create(ca, 64 * CA_KIB, only_high);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ct_attach(ct, fd, DEV_32BIT, &handle, NULL);
	CHECK(ret == -ERANGE, "32-bit device on kinds %#x: %s, expected ERANGE",
	      only_high, ret ? strerror(-ret) : "attached");
	if (!ret)
		ct_detach(ct, handle);
	handle = 0;
	ret = ct_attach(ct, fd, DEV_64BIT, &h64, NULL);
	CHECK(ret == 0, "64-bit device on the same buffer: %s", strerror(-ret));
out:
	if (h64)
		ct_detach(ct, h64);
	ca_close(&fd);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_segments_respect_device_limits(void)
{
	const uint64_t max_seg = 16 * CA_KIB, boundary = 64 * CA_KIB - 1;
	struct ct_device_opts opts = { .max_segment = max_seg,
				       .seg_boundary = boundary };
	const uint32_t sg = CENALLOC_MAP_SG;
	struct ct_mapping *m = calloc(1, sizeof(*m));
	const uint64_t size = 1 * CA_MIB;
	uint32_t handle = 0, i;
	struct dbg_attach d;
	uint64_t total = 0;
	int ca, ct, fd = -1, ret;

	if (!CHECK(m, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(m);
		return TAP_FAIL;
	}
	if (!CHECK(ct_set_device_ex(ct, DEV_SMALLSEG, CENALLOC_KIND_CONTIG, &sg,
				    1, &opts) == 0, "SET_DEVICE"))
		goto out;
	fd = ca_create(ca, size, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ct_attach(ct, fd, DEV_SMALLSEG, &handle, NULL);
	if (!CHECK(ret == 0, "attach: %s", strerror(-ret)))
		goto out;
	if (CHECK(dbg_attachment(ct_device_name(DEV_SMALLSEG), &d), "no debugfs line"))
		CHECK(d.max_seg == max_seg, "debugfs max_seg %u", d.max_seg);
	ret = ct_map_raw(ct, handle, 0, true, m);
	if (!CHECK(ret == 0, "map: %s", strerror(-ret)))
		goto out;
	CHECK(m->num_segments == size / max_seg, "%u entries, expected %llu",
	      m->num_segments, (unsigned long long)(size / max_seg));
	for (i = 0; i < m->num_segments && i < CT_MAX_SEGMENTS; i++) {
		uint64_t a = m->seg[i].addr, len = m->seg[i].len;

		total += len;
		CHECK(len <= max_seg, "entry %u is %llu bytes", i,
		      (unsigned long long)len);
		CHECK((a & ~boundary) == ((a + len - 1) & ~boundary),
		      "entry %u [%#llx, +%#llx) crosses a 64 KiB line", i,
		      (unsigned long long)a, (unsigned long long)len);
	}
	CHECK(total == size, "entries cover %llu bytes", (unsigned long long)total);
	ct_unmap(ct, handle);
	/* Merged, the contiguous backing is still one range. */
	ret = ct_map(ct, handle, 0, m);
	if (CHECK(ret == 0, "map: %s", strerror(-ret))) {
		CHECK(m->num_segments == 1, "%u merged segments", m->num_segments);
		ct_unmap(ct, handle);
	}
out:
	if (handle)
		ct_detach(ct, handle);
	ca_close(&fd);
	ca_close(&ct);
	ca_close(&ca);
	free(m);
	return TAP_PASS;
}

/*
 * A dynamic importer (mask SYSTEM|CONTIG_DMA32) maps a buffer the system
 * allocator backs; a device that needs CONTIG_DMA32 attaches late.
 */
struct migration {
	int ca, ct, fd;
	uint32_t hd, hl, hs;
	struct ct_mapping *m;
	struct ca_pool pool;
};

static bool migration_setup(struct migration *t, uint32_t static_mask)
{
	struct ct_device_opts dyn = { .flags = CENALLOC_TEST_DEV_DYNAMIC };
	const uint32_t sg = CENALLOC_MAP_SG;
	int ret;

	memset(t, 0, sizeof(*t));
	t->ca = -1;
	t->ct = -1;
	t->fd = -1;
	t->m = calloc(1, sizeof(*t->m));
	if (!CHECK(t->m, "out of memory") || !ca_env_open(&t->ca, &t->ct))
		return false;
	if (!CHECK(ca_pool_read(t->ca, &t->pool) == 0, "INFO") ||
	    !CHECK(ct_set_device_ex(t->ct, DEV_DYNAMIC,
				    CENALLOC_KIND_SYSTEM | CENALLOC_KIND_CONTIG_DMA32,
				    &sg, 1, &dyn) == 0, "SET_DEVICE dynamic") ||
	    !CHECK(ct_set_device1(t->ct, DEV_LATE, CENALLOC_KIND_CONTIG_DMA32, 0) == 0,
		   "SET_DEVICE late") ||
	    !CHECK(ct_set_device1(t->ct, DEV_STATIC, static_mask, 0) == 0,
		   "SET_DEVICE static"))
		return false;
	t->fd = ca_create(t->ca, 256 * CA_KIB, 0);
	if (!CHECK(t->fd >= 0, "create: %s", strerror(-t->fd)))
		return false;
	ret = ct_attach(t->ct, t->fd, DEV_DYNAMIC, &t->hd, NULL);
	if (!CHECK(ret == 0, "attach dynamic: %s", strerror(-ret)))
		return false;
	ret = ct_map(t->ct, t->hd, 0, t->m);
	return CHECK(ret == 0, "map dynamic: %s", strerror(-ret));
}

static void migration_teardown(struct migration *t)
{
	if (t->hd)
		ct_detach(t->ct, t->hd);
	if (t->hl)
		ct_detach(t->ct, t->hl);
	if (t->hs)
		ct_detach(t->ct, t->hs);
	ca_close(&t->fd);
	ca_close(&t->ct);
	ca_close(&t->ca);
	free(t->m);
}

static enum tap_result test_dynamic_importer_follows_migration(void)
{
	uint64_t sum1, sum2, len, old_addr;
	uint32_t flags, notifies;
	struct dbg_attach d;
	struct ca_pool after;
	struct migration t;
	int ret, used;

	if (!migration_setup(&t, CENALLOC_MASK_ANY))
		goto out;
	old_addr = t.m->seg[0].addr;
	tap_diag("dynamic importer mapped %u segment(s) at %#llx", t.m->num_segments,
		 (unsigned long long)old_addr);
	if (!CHECK(ca_fill(t.ca, t.fd, 0x5eed) == 0, "FILL") ||
	    !CHECK(ca_checksum(t.ca, t.fd, &sum1, &len) == 0, "CHECKSUM"))
		goto out;

	ret = ct_attach(t.ct, t.fd, DEV_LATE, &t.hl, NULL);
	if (!CHECK(ret == 0, "late CONTIG_DMA32 attach: %s", strerror(-ret)))
		goto out;
	if (!CHECK(ct_status(t.ct, t.hd, &flags, &notifies) == 0, "STATUS"))
		goto out;
	CHECK(notifies == 1, "dynamic importer saw %u move_notify calls", notifies);
	CHECK(flags & CENALLOC_TEST_STATUS_INVALIDATED, "mapping not invalidated");
	if (CHECK(dbg_attachment(ct_device_name(DEV_DYNAMIC), &d), "no debugfs line"))
		CHECK(d.revoked == 1, "debugfs: %u mappings revoked", d.revoked);

	/* Re-map on next use: the device migrates (copies) at this MAP. */
	ret = ct_map(t.ct, t.hd, 0, t.m);
	if (!CHECK(ret == 0, "re-map: %s", strerror(-ret)))
		goto out;
	CHECK(t.m->flags & CENALLOC_TEST_MAP_F_REMAPPED, "MAP did not re-map");
	CHECK(t.m->num_segments == 1, "new backing has %u segments",
	      t.m->num_segments);
	CHECK(t.m->seg[0].len == 256 * CA_KIB, "new range %llu bytes",
	      (unsigned long long)t.m->seg[0].len);
	CHECK(t.m->seg[0].addr != old_addr, "backing did not move");
	CHECK(segments_below(t.m, FOUR_GIB), "CONTIG_DMA32 backing above 4 GiB");
	tap_diag("after migration: one range at %#llx",
		 (unsigned long long)t.m->seg[0].addr);
	if (CHECK(ca_pool_read(t.ca, &after) == 0, "INFO")) {
		used = ca_pool_allocator_used(&t.pool, &after);
		CHECK(used >= 0 && (after.alloc[used].kinds & CENALLOC_KIND_CONTIG_DMA32),
		      "backed by allocator %d", used);
	}
	CHECK(ca_checksum(t.ca, t.fd, &sum2, &len) == 0 && sum1 == sum2,
	      "content changed by the migration (%#llx -> %#llx)",
	      (unsigned long long)sum1, (unsigned long long)sum2);
	/* The late device maps the same range. */
	ret = ct_map(t.ct, t.hl, 0, t.m);
	if (CHECK(ret == 0, "map late: %s", strerror(-ret)))
		CHECK(t.m->num_segments == 1, "late device: %u segments",
		      t.m->num_segments);
out:
	migration_teardown(&t);
	return TAP_PASS;
}

static void expect_busy_without_notify(struct migration *t, const char *why)
{
	uint32_t flags, notifies;
	int ret;

	ret = ct_attach(t->ct, t->fd, DEV_LATE, &t->hl, NULL);
	CHECK(ret == -EBUSY, "%s: late attach %s, expected EBUSY", why,
	      ret ? strerror(-ret) : "succeeded");
	if (!ret) {
		ct_detach(t->ct, t->hl);
		t->hl = 0;
	}
	if (CHECK(ct_status(t->ct, t->hd, &flags, &notifies) == 0, "STATUS"))
		CHECK(notifies == 0 && !(flags & CENALLOC_TEST_STATUS_INVALIDATED),
		      "%s: dynamic importer notified (%u) for a refused attach",
		      why, notifies);
}

/*
 * The same, but the importer keeps its revoked mapping while the late
 * device's map migrates the backing, and unmaps it only afterwards (the
 * dma-buf contract allows that delay). The migration must not wait for
 * it, and its late unmap must leave alone the memory the old backing
 * became. Buffer B, allocated after the migration, either gets memory
 * (likely A's old pages) and keeps its content across that unmap, or is
 * refused (-EIO) because the driver still holds A's old pages for the
 * revoked mapping, and then gets memory once the mapping is gone. A keeps
 * its content, and the importer then re-maps to the new backing.
 */
static enum tap_result test_revoked_mapping_outlives_migration(void)
{
	struct ct_mapping *old = calloc(1, sizeof(*old));
	uint64_t sum_a, sum_a2, sum_b, sum_b2, len;
	struct ca_buf b = { .fd = -1 };
	uint32_t flags, notifies, i, k;
	struct migration t = { .ca = -1, .ct = -1, .fd = -1 };
	struct dbg_attach d;
	bool reused = false;
	int ret;

	if (!CHECK(old, "out of memory") || !migration_setup(&t, CENALLOC_MASK_ANY) ||
	    !CHECK(ct_set_device1(t.ct, DEV_64BIT, CENALLOC_KIND_SYSTEM, 0) == 0,
		   "SET_DEVICE"))
		goto out;
	*old = *t.m;
	if (!CHECK(ca_fill(t.ca, t.fd, 0x5eed) == 0, "FILL") ||
	    !CHECK(ca_checksum(t.ca, t.fd, &sum_a, &len) == 0, "CHECKSUM"))
		goto out;
	ret = ct_attach(t.ct, t.fd, DEV_LATE, &t.hl, NULL);
	if (!CHECK(ret == 0, "late CONTIG_DMA32 attach: %s", strerror(-ret)))
		goto out;
	/* The late device maps first: the migration, the revoked one held. */
	ret = ct_map(t.ct, t.hl, 0, t.m);
	if (!CHECK(ret == 0, "migrating map of the late device: %s", strerror(-ret)))
		goto out;
	CHECK(t.m->num_segments == 1 && t.m->seg[0].addr != old->seg[0].addr,
	      "the backing did not move (%u segments at %#llx)", t.m->num_segments,
	      (unsigned long long)t.m->seg[0].addr);
	if (CHECK(ct_status(t.ct, t.hd, &flags, &notifies) == 0, "STATUS"))
		CHECK(notifies == 1 && (flags & CENALLOC_TEST_STATUS_INVALIDATED),
		      "dynamic importer: %u move_notify, flags %#x", notifies, flags);
	if (CHECK(dbg_attachment(ct_device_name(DEV_DYNAMIC), &d), "no debugfs line"))
		CHECK(d.revoked == 1, "debugfs: %u mappings revoked, want the one still held",
		      d.revoked);
	/* B, likely in A's old pages, written by the device. */
	ret = ca_buf_alloc(t.ca, t.ct, 256 * CA_KIB, DEV_64BIT, &b);
	if (ret == -EIO) {
		tap_diag("B refused while A's old pages are held for the revoked mapping");
		ret = ct_unmap(t.ct, t.hd);
		CHECK(ret == 0, "unmap of the revoked mapping: %s", strerror(-ret));
		ret = ca_buf_alloc(t.ca, t.ct, 256 * CA_KIB, DEV_64BIT, &b);
		CHECK(ret == 0, "alloc B once the revoked mapping is gone: %s",
		      strerror(-ret));
		CHECK(ca_checksum(t.ca, t.fd, &sum_a2, &len) == 0 && sum_a2 == sum_a,
		      "A's content changed (%#llx -> %#llx)", (unsigned long long)sum_a,
		      (unsigned long long)sum_a2);
		goto remap;
	}
	if (!CHECK(ret == 0, "alloc B: %s", strerror(-ret)))
		goto out;
	for (i = 0; i < b.map.num_segments && i < CT_MAX_SEGMENTS; i++)
		for (k = 0; k < old->num_segments && k < CT_MAX_SEGMENTS; k++)
			if (b.map.seg[i].addr < old->seg[k].addr + old->seg[k].len &&
			    old->seg[k].addr < b.map.seg[i].addr + b.map.seg[i].len)
				reused = true;
	tap_diag("B %s A's old pages", reused ? "reuses" : "does not reuse");
	if (!CHECK(ca_fill(t.ca, b.fd, 0xb0b) == 0, "FILL B") ||
	    !CHECK(ca_checksum(t.ca, b.fd, &sum_b, &len) == 0, "CHECKSUM B"))
		goto out;
	/* Now the importer lets its revoked mapping go. */
	ret = ct_unmap(t.ct, t.hd);
	CHECK(ret == 0, "unmap of the revoked mapping: %s", strerror(-ret));
	CHECK(ca_checksum(t.ca, b.fd, &sum_b2, &len) == 0 && sum_b2 == sum_b,
	      "B changed by the late unmap of A's revoked mapping (%#llx -> %#llx)",
	      (unsigned long long)sum_b, (unsigned long long)sum_b2);
	CHECK(ca_checksum(t.ca, t.fd, &sum_a2, &len) == 0 && sum_a2 == sum_a,
	      "A's content changed (%#llx -> %#llx)", (unsigned long long)sum_a,
	      (unsigned long long)sum_a2);
remap:
	/* Re-mapped, the importer sees the new backing. */
	ret = ct_map(t.ct, t.hd, 0, old);
	if (CHECK(ret == 0, "re-map: %s", strerror(-ret)))
		CHECK(old->num_segments == 1 && old->seg[0].addr == t.m->seg[0].addr,
		      "the importer re-maps %u segments at %#llx, not the new backing",
		      old->num_segments, (unsigned long long)old->seg[0].addr);
out:
	ca_buf_free(t.ct, &b);
	migration_teardown(&t);
	free(old);
	return TAP_PASS;
}

static enum tap_result test_pinned_importers_block_migration(void)
{
	struct ct_mapping *m2 = calloc(1, sizeof(*m2));
	struct migration t = { .ca = -1, .ct = -1, .fd = -1 };
	void *p;
	int ret;

	/* A static importer's mapping pins the backing. */
	if (CHECK(m2, "out of memory") && migration_setup(&t, CENALLOC_MASK_ANY)) {
		ret = ct_attach(t.ct, t.fd, DEV_STATIC, &t.hs, NULL);
		if (CHECK(ret == 0, "attach static: %s", strerror(-ret)) &&
		    CHECK(ct_map(t.ct, t.hs, 0, m2) == 0, "map static"))
			expect_busy_without_notify(&t, "static importer mapped");
	}
	migration_teardown(&t);

	/* So does a CPU mapping (the CPU attachment). */
	if (migration_setup(&t, CENALLOC_MASK_ANY)) {
		p = mmap(NULL, 256 * CA_KIB, PROT_READ, MAP_SHARED, t.fd, 0);
		if (CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno))) {
			expect_busy_without_notify(&t, "mmap");
			munmap(p, 256 * CA_KIB);
		}
	}
	migration_teardown(&t);

	/*
	 * And a plain static importer: Linux 6.1 and 6.12 map it at attach (the
	 * exporter is dynamic, the importer is not) and keep that mapping.
	 * 7.2 attaches it without mapping or pinning (debugfs says so): then
	 * there is nothing that could block the migration.
	 */
	if (migration_setup(&t, CENALLOC_MASK_ANY) &&
	    CHECK(ct_set_device1(t.ct, DEV_PLAIN, 0, 0) == 0, "SET_DEVICE plain")) {
		struct dbg_attach d;

		ret = ct_attach(t.ct, t.fd, DEV_PLAIN, &t.hs, NULL);
		if (CHECK(ret == 0, "attach plain: %s", strerror(-ret))) {
			if (CHECK(dbg_attachment(ct_device_name(DEV_PLAIN), &d),
				  "no debugfs line for the plain importer") &&
			    !d.maps && !d.pins) {
				/*
				 * Not mapped at attach (7.2): its first map
				 * pins (the core pins a static importer's
				 * mapping of a dynamic exporter), and that
				 * mapping must block the migration.
				 */
				tap_diag("plain static importer not mapped at attach: mapping it");
				ret = ct_map(t.ct, t.hs, 0, m2);
				if (CHECK(ret == 0, "map plain: %s", strerror(-ret)) &&
				    CHECK(dbg_attachment(ct_device_name(DEV_PLAIN), &d),
					  "no debugfs line for the plain importer") &&
				    CHECK(d.maps && d.pins,
					  "plain static importer mapped: %u maps, %u pins",
					  d.maps, d.pins))
					expect_busy_without_notify(&t, "plain static importer, mapped");
			} else {
				expect_busy_without_notify(&t, "plain static importer");
			}
		}
	}
	migration_teardown(&t);
	free(m2);
	return TAP_PASS;
}

/* Attach plain device @device to a new buffer; the debugfs mask it got. */
static bool plain_requested(int ca, int ct, const char *name, uint32_t *requested)
{
	struct dbg_attach d;
	uint32_t handle;
	int fd, ret;
	bool ok;

	fd = ca_create(ca, 64 * CA_KIB, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		return false;
	ret = ct_attach(ct, fd, DEV_PLAIN, &handle, NULL);
	ok = CHECK(ret == 0, "attach %s: %s", name, strerror(-ret));
	if (ok) {
		ok = CHECK(dbg_attachment(name, &d), "no debugfs line for %s", name);
		*requested = d.requested;
		ct_detach(ct, handle);
	}
	close(fd);
	return ok;
}

/*
 * SET_DEVICE_MASK is keyed by name; the entry binds to the device at its
 * first attach and follows it through a rename (device_rename()).
 */
static enum tap_result test_device_table_survives_rename(void)
{
	const char *renamed = "ct-renamed-6";
	const char *name = ct_device_name(DEV_PLAIN);
	uint32_t requested = 0;
	bool was_renamed = false;
	int ca, ct, ret;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	if (!CHECK(ct_set_device1(ct, DEV_PLAIN, 0, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ca_set_device_mask(ca, name, CENALLOC_KIND_CONTIG_DMA32) == 0,
		   "SET_DEVICE_MASK") ||
	    !plain_requested(ca, ct, name, &requested))
		goto out;
	CHECK(requested == CENALLOC_KIND_CONTIG_DMA32, "table mask %#x", requested);
	ret = ct_rename(ct, DEV_PLAIN, renamed);
	if (!CHECK(ret == 0, "rename: %s", strerror(-ret)))
		goto out;
	was_renamed = true;
	if (plain_requested(ca, ct, renamed, &requested))
		CHECK(requested == CENALLOC_KIND_CONTIG_DMA32,
		      "after the rename the device got %#x", requested);
	/* The entry is found by the device's new name too. */
	ret = ca_set_device_mask(ca, renamed, 0);
	CHECK(ret == 0, "SET_DEVICE_MASK %s 0: %s", renamed, strerror(-ret));
	if (plain_requested(ca, ct, renamed, &requested))
		CHECK(requested == CENALLOC_MASK_ANY, "entry not removed: %#x",
		      requested);
out:
	if (was_renamed)
		CHECK(ct_rename(ct, DEV_PLAIN, "") == 0, "rename back");
	ca_set_device_mask(ca, name, 0);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("a 32-bit device gets memory below 4 GiB; debugfs shows why",
		 test_dma32_device_gets_low_memory),
	TAP_TEST("a 32-bit device on a buffer whose kinds lie above 4 GiB: ERANGE",
		 test_dma32_device_refused_high_only_buffer),
	TAP_TEST("sg entries respect the device's max segment and boundary",
		 test_segments_respect_device_limits),
	TAP_TEST("dynamic importer: late CONTIG_DMA32 attach, move_notify, re-map, bytes kept",
		 test_dynamic_importer_follows_migration),
	TAP_TEST("dynamic importer: its revoked mapping outlives the migration, unmapped late",
		 test_revoked_mapping_outlives_migration),
	TAP_TEST("static mapping, mmap, plain static importer: EBUSY, no move_notify",
		 test_pinned_importers_block_migration),
	TAP_TEST("SET_DEVICE_MASK follows its device through a rename",
		 test_device_table_survives_rename),
};

TAP_MAIN(tests)
