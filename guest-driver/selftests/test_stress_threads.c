// SPDX-License-Identifier: GPL-2.0
/*
 * 8 threads creating, attaching, mapping, touching through mmap, checking
 * with the device's CHECKSUM, and closing buffers concurrently, each through
 * its own /dev/cenalloc_test file and device (with different masks).
 * Afterwards the pool must be exactly as before. The slowest device call
 * is printed (see test_stress_buffers).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define THREADS		8
#define ITERATIONS	150

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
	struct ca_stall stall;
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
		uint64_t word = ((uint64_t)w->index << 32) | i, sum, len, start;
		uint32_t handle;
		uint8_t *p;
		int fd;

		start = ca_now_ns();
		fd = ca_create(w->ca, size, 0);
		ca_stall_note(&w->stall, start, "create", i);
		if (fd < 0) {
			worker_fail(w, "create", fd);
			continue;
		}
		start = ca_now_ns();
		ret = ct_attach(ct, fd, w->index, &handle, NULL);
		ca_stall_note(&w->stall, start, "attach", i);
		if (ret) {
			worker_fail(w, "attach", ret);
			goto next;
		}
		start = ca_now_ns();
		ret = ct_map(ct, handle, i % 3, m);
		ca_stall_note(&w->stall, start, "map", i);
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
		start = ca_now_ns();
		ret = ca_checksum(w->ca, fd, &sum, &len);
		ca_stall_note(&w->stall, start, "checksum", i);
		if (ret || sum != ca_fnv1a64(p, size))
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
	struct ca_stall stall = { 0 };
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
		ca_stall_merge(&stall, &workers[i].stall);
	}
	tap_diag("%u threads x %u iterations: %u completed, %u failures, %.1f ms",
		 started, ITERATIONS, done, atomic_load(&failures),
		 (ca_now_ns() - t0) / 1e6);
	ca_stall_print(&stall, "test_stress_threads");
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
	TAP_TEST_TIMEOUT("8 threads create/attach/map/close concurrently", test_threads, 280),
};

TAP_MAIN(tests)
