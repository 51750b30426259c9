// SPDX-License-Identifier: GPL-2.0
/*
 * VM pause and resume keep the device state. The launcher stops the VM over
 * QMP and continues it (host request "pause"): QEMU stops the vhost-user
 * rings (GET_VRING_BASE) and starts them again from the saved bases. Every
 * buffer, attachment, mapping and donated pool must survive that: each
 * buffer checksums on the device as the guest wrote it, the pools look
 * exactly as before, new buffers can be created and mapped, and closing
 * everything gives the pools their starting free bytes back.
 *
 * Skipped when the VM was not started by run-vm (no host request channel).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "host_channel.h"
#include "tap.h"

#define DEV_SG		0	/* any memory, scatter-gather */
#define DEV_CONTIG	1	/* contiguous memory, CONTIG mapping */
#define PAUSE_S		2
#define HOST_TIMEOUT_S	60

enum buf_kind {
	IMPORTER_SG,		/* attached and mapped by /dev/cenalloc_test */
	IMPORTER_CONTIG,
	CPU_SG,			/* only mmap()ed by this process */
	CPU_CONTIG,
};

struct pause_buf {
	const char *name;
	enum buf_kind kind;
	uint64_t size;
	struct ca_buf b;	/* fd, importer handle and mapping */
	uint8_t *cpu;		/* mmap() kept across the pause (CPU_*) */
	uint64_t expected;	/* FNV-1a of what the guest wrote */
};

static struct pause_buf bufs[] = {
	{ .name = "importer scatter", .kind = IMPORTER_SG, .size = 1 * CA_MIB + 12 * CA_KIB },
	{ .name = "importer contiguous", .kind = IMPORTER_CONTIG, .size = 256 * CA_KIB },
	{ .name = "cpu scatter", .kind = CPU_SG, .size = 68 * CA_KIB },
	{ .name = "cpu contiguous", .kind = CPU_CONTIG, .size = 128 * CA_KIB },
};

static void pause_buf_release(int ct, struct pause_buf *p)
{
	if (p->cpu) {
		munmap(p->cpu, p->size);
		p->cpu = NULL;
	}
	ca_buf_free(ct, &p->b);
}

/* Creates and maps @p, writes a pattern (seed @seed) and records its hash. */
static int pause_buf_make(int ca, int ct, struct pause_buf *p, uint64_t seed)
{
	uint8_t *data;
	int ret;

	p->b.fd = -1;
	p->cpu = NULL;
	switch (p->kind) {
	case IMPORTER_SG:
	case IMPORTER_CONTIG:
		ret = ca_buf_alloc(ca, ct, p->size,
				   p->kind == IMPORTER_SG ? DEV_SG : DEV_CONTIG,
				   &p->b);
		if (ret)
			return ret;
		data = malloc(p->size);
		if (!data)
			return -ENOMEM;
		ca_pattern_fill(data, p->size, seed);
		/* Written through the exporter's kernel mapping. */
		ret = ct_rw(ct, p->b.fd, true, 0, data, p->size);
		p->expected = ca_fnv1a64(data, p->size);
		free(data);
		return ret;
	case CPU_SG:
	case CPU_CONTIG:
		p->b.fd = ca_create(ca, p->size,
				    p->kind == CPU_SG ? 0 : CENALLOC_KIND_CONTIG);
		if (p->b.fd < 0)
			return p->b.fd;
		p->b.size = p->size;
		p->cpu = ca_mmap(p->b.fd, p->size);
		if (!p->cpu)
			return -errno;
		ret = ca_cpu_access(p->b.fd, true);
		if (ret)
			return ret;
		ca_pattern_fill(p->cpu, p->size, seed);
		p->cpu[p->size - 1] ^= 0x5a;
		p->expected = ca_fnv1a64(p->cpu, p->size);
		return ca_cpu_access(p->b.fd, false);
	}
	return -EINVAL;
}

/* The device's checksum of @p equals what the guest wrote. */
static bool pause_buf_intact(int ca, const struct pause_buf *p, const char *when)
{
	uint64_t sum = 0, len = 0;
	int ret;

	ret = ca_checksum(ca, p->b.fd, &sum, &len);
	if (!CHECK(ret == 0, "%s, %s: CHECKSUM: %s", when, p->name, strerror(-ret)))
		return false;
	if (!CHECK(len == p->size, "%s, %s: device hashed %llu of %llu bytes",
		   when, p->name, (unsigned long long)len,
		   (unsigned long long)p->size))
		return false;
	if (p->cpu && !CHECK(ca_fnv1a64(p->cpu, p->size) == p->expected,
			     "%s, %s: the guest's own mapping changed", when,
			     p->name))
		return false;
	return CHECK(sum == p->expected, "%s, %s: device %016llx, guest %016llx",
		     when, p->name, (unsigned long long)sum,
		     (unsigned long long)p->expected);
}

static bool set_devices(int ct)
{
	return CHECK(ct_set_device1(ct, DEV_SG, CENALLOC_MASK_ANY,
				    CENALLOC_MAP_SG) == 0, "SET_DEVICE sg") &&
	       CHECK(ct_set_device1(ct, DEV_CONTIG, CENALLOC_KIND_CONTIG,
				    CENALLOC_MAP_CONTIG) == 0,
		     "SET_DEVICE contig");
}

static enum tap_result test_pause_keeps_buffers(void)
{
	struct ca_pool start = { 0 }, before, after;
	struct pause_buf fresh[2] = {
		{ .name = "new scatter after resume", .kind = IMPORTER_SG, .size = 512 * CA_KIB },
		{ .name = "new contiguous after resume", .kind = CPU_CONTIG, .size = 64 * CA_KIB },
	};
	char reply[256] = "";
	unsigned int i;
	int ca, ct, ret;

	if (!ca_host_available())
		return tap_skip("no host request channel (not started by run-vm)");
	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	for (i = 0; i < TAP_ARRAY_SIZE(bufs); i++)
		bufs[i].b.fd = -1;
	for (i = 0; i < TAP_ARRAY_SIZE(fresh); i++)
		fresh[i].b.fd = -1;
	if (!set_devices(ct))
		goto out;
	ret = ca_pool_read(ca, &start);
	if (!CHECK(ret == 0, "INFO: %s", strerror(-ret)))
		goto out;

	for (i = 0; i < TAP_ARRAY_SIZE(bufs); i++) {
		ret = pause_buf_make(ca, ct, &bufs[i], 0x9a05e000ull + i);
		if (!CHECK(ret == 0, "%s: %s", bufs[i].name, strerror(-ret)))
			goto out;
		if (!pause_buf_intact(ca, &bufs[i], "before the pause"))
			goto out;
	}
	ret = ca_pool_read(ca, &before);
	if (!CHECK(ret == 0, "INFO: %s", strerror(-ret)))
		goto out;

	ret = ca_host_request(reply, sizeof(reply), HOST_TIMEOUT_S, "pause %d",
			      PAUSE_S);
	if (!CHECK(ret == 0, "host pause: %d (%s)", ret, reply))
		goto out;
	tap_diag("host: %s", reply);

	for (i = 0; i < TAP_ARRAY_SIZE(bufs); i++)
		pause_buf_intact(ca, &bufs[i], "after the pause");
	ret = ca_pool_read(ca, &after);
	if (CHECK(ret == 0, "INFO: %s", strerror(-ret)))
		CHECK(ca_pool_same(&before, &after),
		      "the pools changed across the pause");

	for (i = 0; i < TAP_ARRAY_SIZE(fresh); i++) {
		ret = pause_buf_make(ca, ct, &fresh[i], 0xf7e5e000ull + i);
		if (CHECK(ret == 0, "%s: %s", fresh[i].name, strerror(-ret)))
			pause_buf_intact(ca, &fresh[i], "after the pause");
	}
out:
	for (i = 0; i < TAP_ARRAY_SIZE(fresh); i++)
		pause_buf_release(ct, &fresh[i]);
	for (i = 0; i < TAP_ARRAY_SIZE(bufs); i++)
		pause_buf_release(ct, &bufs[i]);
	/* Everything closed: the pools are where they started. */
	if (ca_pool_read(ca, &after) == 0 && start.count)
		CHECK(ca_pool_same(&start, &after),
		      "closing everything did not return the pools");
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST_TIMEOUT("pause/resume keeps every buffer, mapping and pool",
			 test_pause_keeps_buffers, 150),
};

TAP_MAIN(tests)
