// SPDX-License-Identifier: GPL-2.0
/*
 * Elastic pools: a pool grows when a map needs more than it has, refuses
 * to grow beyond its maximum (the map fails with ENOMEM and a log line),
 * and under memory pressure gives back what it grew, without touching a
 * live buffer that sits in grown memory.
 *
 * Needs the "elastic" pool of qemu-scripts/cenallocd-selftests.toml: a
 * custom kind (bit 8) served by one scatter pool of 1 MiB at probe that
 * may grow to 320 MiB. Skips without it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define KIND_ELASTIC		(1u << 8)
#define DEV_ELASTIC		0
#define DEV_CONTIG		1
#define BIG			(200 * CA_MIB)
#define TOO_BIG			(400 * CA_MIB)
#define ALLOCATORS_PATH		CA_ALLOCATORS_PATH


/* Index of the elastic pool, or -1 (the caller skips). */
static int elastic_index(int ca)
{
	struct ca_pool pool;

	if (ca_pool_read(ca, &pool))
		return -1;
	return ca_pool_find_kind(&pool, KIND_ELASTIC);
}

/* Checks the FILL pattern of @b: the first 4 KiB of every MiB. */
static bool pattern_sampled(const struct ca_buf *b, uint64_t seed)
{
	uint8_t *mem = ca_mmap(b->fd, b->size);
	uint64_t off;
	bool ok = true;

	if (!CHECK(mem, "mmap: %s", strerror(errno)))
		return false;
	ca_cpu_access(b->fd, true);
	for (off = 0; off < b->size && ok; off += CA_MIB)
		ok = CHECK(ca_pattern_check_at(mem + off, 4096, seed, off) == 4096,
			   "pattern differs in the page at %#llx",
			   (unsigned long long)off);
	ca_cpu_access(b->fd, false);
	munmap(mem, b->size);
	return ok;
}

static enum tap_result test_grows_on_demand(void)
{
	struct ca_buf b = { .fd = -1 };
	long long donated, grown_before, grown_after;
	int ca, ct, index, ret;
	uint64_t sum, len;

	if (!ca_env_open_device(&ca, &ct, DEV_ELASTIC, KIND_ELASTIC))
		return TAP_FAIL;
	index = elastic_index(ca);
	if (index < 0) {
		ca_env_close(&ca, &ct, NULL);
		return tap_skip("no pool of the elastic kind (bit 8)");
	}
	donated = ca_pool_value(index, "donated");
	grown_before = ca_pool_value(index, "grown");
	if (!CHECK(donated > 0 && donated < (long long)BIG,
		   "pool %d has %lld bytes before", index, donated))
		goto out;
	ret = ca_buf_alloc(ca, ct, BIG, DEV_ELASTIC, &b);
	if (!CHECK(ret == 0, "200 MiB in a pool of %lld bytes: %s", donated,
		   strerror(-ret)))
		goto out;
	grown_after = ca_pool_value(index, "grown");
	tap_diag("pool %d: %lld bytes at first, grew by %lld", index, donated,
		 grown_after - grown_before);
	CHECK(grown_after - grown_before >= (long long)BIG,
	      "grew by %lld for a 200 MiB buffer", grown_after - grown_before);
	/* The whole buffer is usable memory: the device's pattern reads
	 * back through the CPU mapping, and the device sees it all.
	 */
	ret = ca_fill(ca, b.fd, 42);
	if (CHECK(ret == 0, "FILL: %s", strerror(-ret)))
		pattern_sampled(&b, 42);
	ret = ca_checksum(ca, b.fd, &sum, &len);
	CHECK(ret == 0 && len == BIG, "CHECKSUM: %s, %llu bytes",
	      strerror(-ret), (unsigned long long)len);
out:
	ca_env_close(&ca, &ct, &b);
	return TAP_PASS;
}

/* True when the kernel log holds @text. */
static bool kernel_log_has(const char *text)
{
	int size = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	char *buf;
	bool found;
	int n;

	if (size <= 0)
		return false;
	buf = malloc(size + 1);
	if (!buf)
		return false;
	n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, size);
	buf[n > 0 ? n : 0] = 0;
	found = strstr(buf, text) != NULL;
	free(buf);
	return found;
}

static enum tap_result test_growth_failure(void)
{
	struct ca_buf b = { .fd = -1 };
	long long donated_before, donated_after;
	int ca, ct, index, ret;

	if (!ca_env_open_device(&ca, &ct, DEV_ELASTIC, KIND_ELASTIC))
		return TAP_FAIL;
	index = elastic_index(ca);
	if (index < 0) {
		ca_env_close(&ca, &ct, NULL);
		return tap_skip("no pool of the elastic kind (bit 8)");
	}
	donated_before = ca_pool_value(index, "donated");
	/* Above the pool's 320 MiB maximum: no growth, ENOMEM, a log line. */
	ret = ca_buf_alloc(ca, ct, TOO_BIG, DEV_ELASTIC, &b);
	CHECK(ret == -ENOMEM, "400 MiB in a pool of at most 320: %s",
	      ret ? strerror(-ret) : "success");
	donated_after = ca_pool_value(index, "donated");
	CHECK(donated_after == donated_before,
	      "a failed growth changed the pool: %lld -> %lld bytes",
	      donated_before, donated_after);
	CHECK(kernel_log_has("cenalloc: no pool can grow for 419430400 bytes"),
	      "no log line for the failed growth");

	/* A contiguous pool cannot grow by more than the largest block. */
	if (!CHECK(ct_set_device1(ct, DEV_CONTIG, CENALLOC_KIND_CONTIG, 0) == 0,
		   "SET_DEVICE"))
		goto out;
	ret = ca_buf_alloc(ca, ct, 64 * CA_MIB, DEV_CONTIG, &b);
	CHECK(ret == -ENOMEM, "64 MiB contiguous: %s",
	      ret ? strerror(-ret) : "success");
	CHECK(kernel_log_has("contiguous bytes: the guest gives at most"),
	      "no log line for the contiguous growth");
out:
	ca_env_close(&ca, &ct, &b);
	return TAP_PASS;
}

static long long meminfo(const char *name)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	long long kib = -1;
	size_t len = strlen(name);

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, name, len) && line[len] == ':')
			kib = strtoll(line + len + 1, NULL, 10);
	if (f)
		fclose(f);
	return kib;
}

static bool write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	bool ok;

	if (fd < 0)
		return false;
	ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
	close(fd);
	return ok;
}

/*
 * A child that takes memory 16 MiB at a time, touching every page, until
 * less than 48 MiB is available (or 2 GiB taken), then exits.
 */
static void memory_hog(void)
{
	pid_t pid = fork();
	int status;

	if (pid == 0) {
		size_t taken = 0, chunk = 16 * CA_MIB;

		while (meminfo("MemAvailable") > 48 * 1024 &&
		       taken < 2048 * CA_MIB) {
			char *p = malloc(chunk);

			if (!p)
				break;
			memset(p, 0x5a, chunk);
			taken += chunk;
		}
		_exit(0);
	}
	if (pid > 0)
		waitpid(pid, &status, 0);
}

/* Pads of the probe-time block at most (see test_shrinks_under_pressure). */
#define MAX_PADS 8

static enum tap_result test_shrinks_under_pressure(void)
{
	struct ca_buf big = { .fd = -1 }, live = { .fd = -1 };
	struct ca_buf pad[MAX_PADS];
	long long grown0, grown1, returned0, returned1, returned2, grown_pad;
	uint64_t sum_before, sum_after, len, capacity = 0;
	struct ca_pool pool;
	int ca, ct, index, ret, npad, i;

	for (i = 0; i < MAX_PADS; i++)
		pad[i] = (struct ca_buf){ .fd = -1 };
	if (!ca_env_open_device(&ca, &ct, DEV_ELASTIC, KIND_ELASTIC))
		return TAP_FAIL;
	index = elastic_index(ca);
	if (index < 0) {
		ca_env_close(&ca, &ct, NULL);
		return tap_skip("no pool of the elastic kind (bit 8)");
	}
	/* Start from the size at probe: an earlier test may have grown it. */
	CHECK(write_file("/proc/sys/vm/drop_caches", "2"), "drop_caches");
	/*
	 * The memory donated at probe is never given back: fill it with a
	 * pad, so that the live buffer can only sit in a grown block, one the
	 * shrinker could take back if it ignored the buffer.
	 */
	grown_pad = ca_pool_value(index, "grown");
	/*
	 * The pool may grow in the background (POOL_LOW once the pad leaves
	 * it low) at any time, also while a pad is allocated, which then may
	 * sit in grown memory and leave probe-time memory free. So pad what
	 * is free until one pad was allocated while the device's capacity
	 * did not change: that pad took every free byte of the memory the
	 * pool had, and whatever is free afterwards was grown since. Bounded:
	 * each round that sees growth pads what grew.
	 */
	for (npad = 0; npad < MAX_PADS; npad++) {
		if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
			goto out;
		capacity = pool.alloc[index].capacity;
		if (!pool.alloc[index].free)
			break;
		ret = ca_buf_alloc(ca, ct, pool.alloc[index].free, DEV_ELASTIC, &pad[npad]);
		if (!CHECK(ret == 0, "pad %d of %llu: %s", npad,
			   (unsigned long long)pool.alloc[index].free, strerror(-ret)))
			goto out;
		if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
			goto out;
		if (pool.alloc[index].capacity == capacity) {
			npad++;
			break;
		}
	}
	if (!CHECK(npad < MAX_PADS || pool.alloc[index].capacity == capacity,
		   "the pool grew during each of %d pads", npad))
		goto out;
	tap_diag("pool %d: %d pad(s), %llu bytes free after them", index, npad,
		 (unsigned long long)pool.alloc[index].free);
	/*
	 * A live buffer with known contents, then a big one. Only memory grown
	 * after the last pad is free: the live buffer is in memory the pool grew
	 * (for it, or in the background after the pad made it run low).
	 */
	ret = ca_buf_alloc(ca, ct, CA_MIB, DEV_ELASTIC, &live);
	if (!CHECK(ret == 0, "1 MiB: %s", strerror(-ret)))
		goto out;
	CHECK(ca_pool_value(index, "grown") > grown_pad,
	      "the pool did not grow after the pad: the live buffer is not in grown memory");
	ret = ca_fill(ca, live.fd, 7);
	if (!CHECK(ret == 0, "FILL: %s", strerror(-ret)))
		goto out;
	ret = ca_checksum(ca, live.fd, &sum_before, &len);
	if (!CHECK(ret == 0, "CHECKSUM: %s", strerror(-ret)))
		goto out;
	grown0 = ca_pool_value(index, "grown");
	returned0 = ca_pool_value(index, "returned");
	tap_diag("pool %d: %lld bytes before the big buffer", index,
		 ca_pool_value(index, "donated"));
	ret = ca_buf_alloc(ca, ct, BIG, DEV_ELASTIC, &big);
	if (!CHECK(ret == 0, "200 MiB: %s", strerror(-ret)))
		goto out;
	ca_buf_free(ct, &big);
	/* The pool may still grow in the background after a POOL_LOW. */
	usleep(500000);
	grown1 = ca_pool_value(index, "grown");
	if (!CHECK(grown1 - grown0 >= (long long)BIG - 8 * (long long)CA_MIB,
		   "grew by %lld for 200 MiB", grown1 - grown0))
		goto out;

	/* Memory pressure: the slab shrinkers first, then a hog. */
	CHECK(write_file("/proc/sys/vm/drop_caches", "3"), "drop_caches");
	returned1 = ca_pool_value(index, "returned");
	memory_hog();
	returned2 = ca_pool_value(index, "returned");
	tap_diag("pool %d grew by %lld bytes; gave back %lld after drop_caches, %lld after the hog",
		 index, grown1 - grown0, returned1 - returned0,
		 returned2 - returned0);
	CHECK((returned2 - returned0) * 10 >= (grown1 - grown0) * 9,
	      "gave back %lld of %lld bytes grown (want 90 %%)",
	      returned2 - returned0, grown1 - grown0);

	/* The live buffer kept its memory and its contents. */
	ret = ca_checksum(ca, live.fd, &sum_after, &len);
	CHECK(ret == 0 && sum_after == sum_before,
	      "live buffer after the shrink: %s, checksum %#llx, was %#llx",
	      strerror(-ret), (unsigned long long)sum_after,
	      (unsigned long long)sum_before);
	ret = ct_unmap(ct, live.handle);
	if (CHECK(ret == 0, "unmap: %s", strerror(-ret))) {
		ret = ct_map(ct, live.handle, 0, &live.map);
		CHECK(ret == 0 && ct_mapping_bytes(&live.map) == CA_MIB,
		      "map again: %s", strerror(-ret));
	}
out:
	ca_buf_free(ct, &big);
	for (i = 0; i < MAX_PADS; i++)
		ca_buf_free(ct, &pad[i]);
	ca_env_close(&ca, &ct, &live);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("a pool grows for a buffer larger than it", test_grows_on_demand),
	TAP_TEST("growth beyond the maximum fails with ENOMEM and a log line",
		 test_growth_failure),
	TAP_TEST_TIMEOUT("under memory pressure a pool gives back what it grew",
			 test_shrinks_under_pressure, 240),
};

TAP_MAIN(tests)
