// SPDX-License-Identifier: GPL-2.0
/*
 * Many buffers and many threads: 10,000 live buffers at once, and 8 threads
 * creating, attaching, mapping, touching and closing buffers concurrently.
 * Afterwards the pool must be exactly as before.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define MANY_BUFFERS	10000
#define THREADS		8
#define ITERATIONS	150

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

		fds[i] = ca_create(ca, size, 0);
		if (fds[i] < 0) {
			CHECK(false, "create %u: %s", i, strerror(-fds[i]));
			break;
		}
		created++;
		/* Attach, allocate with a map, then let the buffer keep it. */
		ret = ct_attach(ct, fds[i], 0, &handle, NULL);
		if (!ret) {
			ret = ct_map(ct, handle, 0, m);
			ct_detach(ct, handle);
		}
		if (ret && errors++ < 5)
			CHECK(false, "buffer %u: attach/map: %s", i, strerror(-ret));
	}
	t1 = ca_now_ns();
	if (CHECK(ca_pool_read(ca, &full) == 0, "INFO")) {
		CHECK(full.info.num_buffers == before.info.num_buffers + created,
		      "live buffers %u, expected %u", full.info.num_buffers,
		      before.info.num_buffers + created);
		CHECK(ca_pool_free(&before) - ca_pool_free(&full) == created * size,
		      "%llu bytes allocated for %u buffers of %llu",
		      (unsigned long long)(ca_pool_free(&before) - ca_pool_free(&full)),
		      created, (unsigned long long)size);
	}
	for (i = 0; i < created; i++)
		close(fds[i]);
	created = 0;
	t2 = ca_now_ns();
	tap_diag("%u buffers: create+attach+map+detach %.1f us each, close %.1f us each",
		 MANY_BUFFERS, (t1 - t0) / 1e3 / MANY_BUFFERS,
		 (t2 - t1) / 1e3 / MANY_BUFFERS);
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

static const uint32_t thread_masks[THREADS] = {
	CENALLOC_MASK_ANY, CENALLOC_KIND_SYSTEM, CENALLOC_KIND_DMA32,
	CENALLOC_KIND_CONTIG, CENALLOC_KIND_CONTIG_DMA32, CENALLOC_MASK_ANY,
	CENALLOC_KIND_SYSTEM | CENALLOC_KIND_DMA32, CENALLOC_KIND_CONTIG,
};

struct worker {
	pthread_t thread;
	unsigned int index;
	int ca;
	atomic_uint *failures;
	unsigned int done;
};

static void worker_fail(struct worker *w, const char *what, int err)
{
	if (atomic_fetch_add(w->failures, 1) < 10)
		tap_diag("thread %u: %s: %s", w->index, what, strerror(-err));
}

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	struct ct_mapping *m = malloc(sizeof(*m));
	unsigned int seed = w->index * 7919 + 1, i;
	int ct = ct_open(), ret;

	if (ct < 0 || !m) {
		worker_fail(w, "open " CT_DEVICE_PATH, ct < 0 ? ct : -ENOMEM);
		free(m);
		if (ct >= 0)
			close(ct);
		return NULL;
	}
	for (i = 0; i < ITERATIONS; i++) {
		uint64_t size = ((rand_r(&seed) % 16) + 1) * CA_PAGE_SIZE;
		uint64_t word = ((uint64_t)w->index << 32) | i, sum, len;
		uint32_t handle;
		uint8_t *p;
		int fd;

		fd = ca_create(w->ca, size, 0);
		if (fd < 0) {
			worker_fail(w, "create", fd);
			continue;
		}
		ret = ct_attach(ct, fd, w->index, &handle, NULL);
		if (ret) {
			worker_fail(w, "attach", ret);
			goto next;
		}
		ret = ct_map(ct, handle, i % 3, m);
		if (ret) {
			worker_fail(w, "map", ret);
			goto detach;
		}
		if (ct_mapping_bytes(m) != size)
			worker_fail(w, "mapping size", -EIO);
		p = ca_mmap(fd, size);
		if (!p) {
			worker_fail(w, "mmap", -errno);
			goto unmap;
		}
		memcpy(p, &word, sizeof(word));
		memcpy(p + size - sizeof(word), &word, sizeof(word));
		if (ca_checksum(w->ca, fd, &sum, &len) || sum != ca_fnv1a64(p, size))
			worker_fail(w, "checksum", -EIO);
		munmap(p, size);
		w->done++;
unmap:
		ct_unmap(ct, handle);
detach:
		ct_detach(ct, handle);
next:
		close(fd);
	}
	close(ct);
	free(m);
	return NULL;
}

static enum tap_result test_threads(void)
{
	struct worker workers[THREADS];
	struct ca_pool before, after;
	atomic_uint failures = 0;
	unsigned int i, started = 0, done = 0;
	uint64_t t0;
	int ca, ct;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	for (i = 0; i < THREADS; i++)
		if (!CHECK(ct_set_device1(ct, i, thread_masks[i], 0) == 0, "SET_DEVICE"))
			goto out;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	t0 = ca_now_ns();
	for (i = 0; i < THREADS; i++) {
		workers[i] = (struct worker){
			.index = i, .ca = ca, .failures = &failures,
		};
		if (!CHECK(pthread_create(&workers[i].thread, NULL, worker_run,
					  &workers[i]) == 0, "pthread_create"))
			break;
		started++;
	}
	for (i = 0; i < started; i++) {
		pthread_join(workers[i].thread, NULL);
		done += workers[i].done;
	}
	tap_diag("%u threads x %u iterations: %u completed, %u failures, %.1f ms",
		 started, ITERATIONS, done, atomic_load(&failures),
		 (ca_now_ns() - t0) / 1e6);
	CHECK(atomic_load(&failures) == 0, "%u failures", atomic_load(&failures));
	CHECK(done == THREADS * ITERATIONS, "%u of %u iterations completed",
	      done, THREADS * ITERATIONS);
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "pool not back after the threads");
out:
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST_TIMEOUT("10,000 live buffers", test_ten_thousand_buffers, 1200),
	TAP_TEST_TIMEOUT("8 threads create/attach/map/close concurrently", test_threads, 900),
};

TAP_MAIN(tests)
