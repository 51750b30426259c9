// SPDX-License-Identifier: GPL-2.0
/*
 * Buffer life cycle: create -> attach -> map -> unmap -> detach -> free,
 * and every way of letting go of a buffer returns the pool to where it was.
 */
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define DEV_ANY		0

static enum tap_result test_info(void)
{
	struct ca_pool pool;
	char kinds[64];
	uint32_t i;
	int ca, ret;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	ret = ca_pool_read(ca, &pool);
	if (!CHECK(ret == 0, "INFO: %s", strerror(-ret)))
		goto out;
	/* CENALLOC_PROTOCOL_VERSION of cenalloc_proto.h (2: RESET). */
	CHECK(pool.info.version == 2, "protocol version %u", pool.info.version);
	CHECK(pool.info.num_allocators >= 1 &&
	      pool.info.num_allocators <= CA_MAX_ALLOCATORS,
	      "%u allocators", pool.info.num_allocators);
	CHECK(pool.info.num_exporter_types >= 1 &&
	      pool.info.num_exporter_types <= CENALLOC_MAX_MAP_TYPES,
	      "%u exporter types", pool.info.num_exporter_types);
	CHECK(pool.info.max_buffer_size >= CA_PAGE_SIZE,
	      "max buffer size %llu",
	      (unsigned long long)pool.info.max_buffer_size);
	for (i = 0; i < pool.count; i++) {
		const struct cenalloc_allocator_info *a = &pool.alloc[i];

		tap_diag("allocator %u %-10.16s kinds %-28s placement %#x capacity %llu free %llu largest %llu buffers %u",
			 a->id, a->name, ca_mask_str(a->kinds, kinds, sizeof(kinds)),
			 a->placement, (unsigned long long)a->capacity,
			 (unsigned long long)a->free,
			 (unsigned long long)a->largest_free, a->num_buffers);
		CHECK(a->id == i, "allocator %u has id %u", i, a->id);
		CHECK(a->kinds != 0, "allocator %u serves no kind", i);
		CHECK(a->capacity > 0, "allocator %u has no memory", i);
		CHECK(a->free <= a->capacity && a->largest_free <= a->free,
		      "allocator %u: capacity %llu free %llu largest %llu", i,
		      (unsigned long long)a->capacity,
		      (unsigned long long)a->free,
		      (unsigned long long)a->largest_free);
		CHECK(memchr(a->name, '\0', sizeof(a->name)) != NULL,
		      "allocator %u name not NUL-terminated", i);
	}
	for (i = 0; i < pool.info.num_exporter_types; i++)
		tap_diag("exporter type %u: %#x (%s)", i,
			 pool.info.exporter_types[i],
			 ca_map_type_str(pool.info.exporter_types[i]));
out:
	ca_close(&ca);
	return TAP_PASS;
}

static bool fdinfo_has(int fd, const char *needle)
{
	char path[64], text[4096];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f)
		return false;
	n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = '\0';
	return strstr(text, needle) != NULL;
}

static enum tap_result test_create_rounds_size(void)
{
	static const struct {
		uint64_t asked, expected;
	} cases[] = {
		{ 1, 4096 },
		{ 4096, 4096 },
		{ 4097, 8192 },
		{ 3 * CA_MIB + 1, 3 * CA_MIB + 4096 },
	};
	unsigned int i;
	int ca, fd;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	for (i = 0; i < TAP_ARRAY_SIZE(cases); i++) {
		int64_t size;

		fd = ca_create(ca, cases[i].asked, 0);
		if (!CHECK(fd >= 0, "create %llu: %s",
			   (unsigned long long)cases[i].asked, strerror(-fd)))
			continue;
		size = ca_buf_size(fd);
		CHECK(size == (int64_t)cases[i].expected,
		      "create %llu: dma-buf size %lld, expected %llu",
		      (unsigned long long)cases[i].asked, (long long)size,
		      (unsigned long long)cases[i].expected);
		CHECK(fdinfo_has(fd, "exp_name:"),
		      "fd %d is not a dma-buf (no exp_name in fdinfo)", fd);
		close(fd);
	}
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_create_close_allocates_nothing(void)
{
	struct ca_pool before, created, after;
	int ca, fd = -1;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	fd = ca_create(ca, CA_MIB, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	if (!CHECK(ca_pool_read(ca, &created) == 0, "INFO"))
		goto out;
	/* INFO counts the guest's live buffers, created on the device or not. */
	CHECK(created.info.num_buffers == before.info.num_buffers + 1,
	      "live buffers %u -> %u after one create", before.info.num_buffers,
	      created.info.num_buffers);
	CHECK(ca_pool_used(&created) == ca_pool_used(&before),
	      "create took %llu bytes from the pool",
	      (unsigned long long)(ca_pool_used(&created) -
				   ca_pool_used(&before)));
	ca_close(&fd);
	if (!CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		goto out;
	CHECK(ca_pool_same(&before, &after), "pool changed by create+close");
out:
	ca_close(&fd);
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_full_cycle(void)
{
	struct ca_pool before, after;
	struct ct_mapping *m = NULL;
	uint32_t handle = 0;
	int ca, ct, fd = -1, ret;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	m = calloc(1, sizeof(*m));
	if (!CHECK(m, "out of memory"))
		goto out;
	if (!CHECK(ct_set_device1(ct, DEV_ANY, CENALLOC_MASK_ANY, 0) == 0,
		   "SET_DEVICE") ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;

	fd = ca_create(ca, 256 * CA_KIB, 0);
	if (!CHECK(fd >= 0, "create: %s", strerror(-fd)))
		goto out;
	ret = ct_attach(ct, fd, DEV_ANY, &handle, NULL);
	if (!CHECK(ret == 0, "attach: %s", strerror(-ret)))
		goto out;
	ret = ct_map(ct, handle, 0, m);
	if (!CHECK(ret == 0, "map: %s", strerror(-ret)))
		goto out;
	CHECK(m->num_segments >= 1, "map returned no segment");
	CHECK(ct_mapping_bytes(m) == 256 * CA_KIB,
	      "segments cover %llu bytes",
	      (unsigned long long)ct_mapping_bytes(m));
	ret = ct_unmap(ct, handle);
	CHECK(ret == 0, "unmap: %s", strerror(-ret));
	/* Map again after unmap: the same backing. */
	ret = ct_map(ct, handle, 1, m);
	CHECK(ret == 0, "second map: %s", strerror(-ret));
	ret = ct_unmap(ct, handle);
	CHECK(ret == 0, "second unmap: %s", strerror(-ret));
	ret = ct_detach(ct, handle);
	CHECK(ret == 0, "detach: %s", strerror(-ret));
	handle = 0;
	ca_close(&fd);
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "pool not back after free");
out:
	if (handle)
		ct_detach(ct, handle);
	ca_close(&fd);
	ca_close(&ct);
	ca_close(&ca);
	free(m);
	return TAP_PASS;
}

/* The importer's reference keeps the buffer alive after its fd is closed. */
static enum tap_result test_attachment_outlives_fd(void)
{
	struct ca_pool before, during, after;
	struct ca_buf b = { .fd = -1 };
	int ca, ct, ret;

	if (!ca_env_open_device(&ca, &ct, DEV_ANY, CENALLOC_MASK_ANY))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	ret = ca_buf_alloc(ca, ct, 64 * CA_KIB, DEV_ANY, &b);
	if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)))
		goto out;
	ca_close(&b.fd);
	if (!CHECK(ca_pool_read(ca, &during) == 0, "INFO"))
		goto out;
	CHECK(during.info.num_buffers == before.info.num_buffers + 1,
	      "buffer gone while still attached (%u -> %u live)",
	      before.info.num_buffers, during.info.num_buffers);
	CHECK(ca_pool_used(&during) - ca_pool_used(&before) == 64 * CA_KIB,
	      "backing released while still attached");
	ret = ct_unmap(ct, b.handle);
	CHECK(ret == 0, "unmap after close: %s", strerror(-ret));
	ret = ct_map(ct, b.handle, 0, &b.map);
	CHECK(ret == 0, "map after close: %s", strerror(-ret));
	ca_buf_free(ct, &b);
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after),
		      "pool not back after the last detach");
out:
	ca_env_close(&ca, &ct, &b);
	return TAP_PASS;
}

/* Closing the importer's file unmaps and detaches what it left behind. */
static enum tap_result test_importer_close_cleans_up(void)
{
	struct ca_pool before, after;
	struct ca_buf b[4];
	unsigned int i;
	int ca, ct, ret;

	for (i = 0; i < 4; i++)
		b[i].fd = -1;
	if (!ca_env_open_device(&ca, &ct, DEV_ANY, CENALLOC_MASK_ANY))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	for (i = 0; i < 4; i++) {
		ret = ca_buf_alloc(ca, ct, (i + 1) * 16 * CA_KIB, DEV_ANY,
				   &b[i]);
		if (!CHECK(ret == 0, "alloc %u: %s", i, strerror(-ret)))
			goto out;
	}
	/* Unmapped-but-attached and mapped attachments, both left behind. */
	CHECK(ct_unmap(ct, b[0].handle) == 0, "unmap");
	ca_close(&ct);
	for (i = 0; i < 4; i++) {
		b[i].handle = 0;
		ca_close(&b[i].fd);
	}
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after),
		      "pool not back after closing the importer and the buffers");
out:
	for (i = 0; i < 4; i++)
		ca_buf_free(ct, &b[i]);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("info describes the pool", test_info),
	TAP_TEST("create rounds the size up to pages and returns a dma-buf", test_create_rounds_size),
	TAP_TEST("create then close allocates nothing and frees the buffer", test_create_close_allocates_nothing),
	TAP_TEST("create, attach, map, unmap, map, unmap, detach, close", test_full_cycle),
	TAP_TEST("an attachment keeps the buffer alive after its fd is closed", test_attachment_outlives_fd),
	TAP_TEST("closing the importer file unmaps and detaches", test_importer_close_cleans_up),
};

TAP_MAIN(tests)
