// SPDX-License-Identifier: GPL-2.0
/*
 * Many buffers: 10,000 live, allocated buffers at once. Afterwards the pool
 * must be exactly as before. Every call is timed: the slowest is printed
 * (the stall a host-side restart or upgrade of the device's serving
 * process costs the guest, qemu-scripts/run-vm --upgrade-serving).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define MANY_BUFFERS	10000

static bool raise_fd_limit(rlim_t want)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return false;
	if (rl.rlim_cur >= want)
		return true;
	rl.rlim_cur = want;
	if (rl.rlim_max < want)
		rl.rlim_max = want;
	return setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

static enum tap_result test_ten_thousand_buffers(void)
{
	const uint64_t size = 4 * CA_KIB;
	enum tap_result result = TAP_PASS;
	struct ca_pool before, full, after;
	int *fds = calloc(MANY_BUFFERS, sizeof(*fds));
	struct ct_mapping *m = calloc(1, sizeof(*m));
	unsigned int i, created = 0, errors = 0;
	struct ca_stall stall = { 0 };
	uint64_t t0, t1, t2;
	int ca, ct, ret;

	if (!CHECK(fds && m, "out of memory") || !ca_env_open(&ca, &ct)) {
		free(fds);
		free(m);
		return TAP_FAIL;
	}
	if (!CHECK(raise_fd_limit(MANY_BUFFERS + 64), "RLIMIT_NOFILE: %s", strerror(errno)) ||
	    !CHECK(ct_set_device1(ct, 0, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	if (before.info.max_buffers < before.info.num_buffers + MANY_BUFFERS) {
		result = tap_skip("the device allows %u buffers", before.info.max_buffers);
		goto out;
	}
	t0 = ca_now_ns();
	for (i = 0; i < MANY_BUFFERS; i++) {
		uint32_t handle;
		uint64_t start = ca_now_ns();

		fds[i] = ca_create(ca, size, 0);
		ca_stall_note(&stall, start, "create", i);
		if (fds[i] < 0) {
			CHECK(false, "create %u: %s", i, strerror(-fds[i]));
			break;
		}
		created++;
		/* Attach, allocate with a map, then let the buffer keep it. */
		start = ca_now_ns();
		ret = ct_attach(ct, fds[i], 0, &handle, NULL);
		ca_stall_note(&stall, start, "attach", i);
		if (!ret) {
			start = ca_now_ns();
			ret = ct_map(ct, handle, 0, m);
			ca_stall_note(&stall, start, "map", i);
			start = ca_now_ns();
			ct_detach(ct, handle);
			ca_stall_note(&stall, start, "detach", i);
		}
		if (ret && errors++ < 5)
			CHECK(false, "buffer %u: attach/map: %s", i, strerror(-ret));
	}
	t1 = ca_now_ns();
	if (CHECK(ca_pool_read(ca, &full) == 0, "INFO")) {
		CHECK(full.info.num_buffers == before.info.num_buffers + created,
		      "live buffers %u, expected %u", full.info.num_buffers,
		      before.info.num_buffers + created);
		/* In use, not free: the pools may grow meanwhile. */
		CHECK(ca_pool_used(&full) - ca_pool_used(&before) == created * size,
		      "%llu bytes allocated for %u buffers of %llu",
		      (unsigned long long)(ca_pool_used(&full) - ca_pool_used(&before)),
		      created, (unsigned long long)size);
	}
	for (i = 0; i < created; i++)
		close(fds[i]);
	created = 0;
	t2 = ca_now_ns();
	tap_diag("%u buffers: create+attach+map+detach %.1f us each, close %.1f us each",
		 MANY_BUFFERS, (t1 - t0) / 1e3 / MANY_BUFFERS,
		 (t2 - t1) / 1e3 / MANY_BUFFERS);
	ca_stall_print(&stall, "test_stress_buffers");
	CHECK(errors == 0, "%u buffers failed", errors);
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "pool not back after closing everything");
out:
	for (i = 0; i < created; i++)
		close(fds[i]);
	ca_close(&ct);
	ca_close(&ca);
	free(fds);
	free(m);
	return result;
}

static const struct tap_test tests[] = {
	TAP_TEST_TIMEOUT("10,000 live buffers", test_ten_thousand_buffers, 280),
};

TAP_MAIN(tests)
