// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc_bench: /dev/cenalloc against the kernel's own system dma-heap,
 * in the same boot and through the same importer (/dev/cenalloc_test
 * device 0, mask ANY; a heap buffer is attached with plain
 * dma_buf_attach()).
 *
 * 1. Latency of create + attach + first map + unmap + detach + close for
 *    4 KiB, 1 MiB and 64 MiB buffers: median and p90 over N runs (N is
 *    printed; it shrinks when a cell would take more than ~60 s).
 * 2. memset bandwidth through mmap of a 64 MiB buffer: the first pass
 *    (page faults included) and the best of 5 later passes.
 *
 *   cenalloc_bench [-q]     -q: fewer runs (quick check)
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/dma-heap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cenalloc_util.h"

#define HEAP_PATH	"/dev/dma_heap/system"
#define CELL_BUDGET_NS	(60ull * 1000000000ull)

enum provider { CENALLOC, HEAP, NPROVIDERS };

static const char *const provider_names[NPROVIDERS] = {
	"/dev/cenalloc", "dma_heap/system",
};

static int ca = -1, ct = -1, heap = -1;
static struct ct_mapping *mapping;

static int create_buffer(enum provider p, uint64_t size)
{
	if (p == CENALLOC)
		return ca_create(ca, size, 0);

	struct dma_heap_allocation_data alloc = {
		.len = size,
		.fd_flags = O_RDWR | O_CLOEXEC,
	};

	if (ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &alloc))
		return -errno;
	return alloc.fd;
}

/* One create + attach + first map + unmap + detach + close, in ns. */
static int64_t one_cycle(enum provider p, uint64_t size)
{
	uint64_t t0 = ca_now_ns();
	uint32_t handle;
	int fd, ret;

	fd = create_buffer(p, size);
	if (fd < 0)
		return fd;
	ret = ct_attach(ct, fd, 0, &handle, NULL);
	if (!ret) {
		ret = ct_map(ct, handle, 0, mapping);
		if (!ret)
			ct_unmap(ct, handle);
		ct_detach(ct, handle);
	}
	close(fd);
	return ret ? ret : (int64_t)(ca_now_ns() - t0);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void latency_row(enum provider p, uint64_t size, const char *label,
			unsigned int runs)
{
	uint64_t *ns = calloc(runs, sizeof(*ns)), start = ca_now_ns();
	unsigned int n = 0;

	if (!ns)
		return;
	while (n < runs) {
		int64_t t = one_cycle(p, size);

		if (t < 0) {
			printf("%-8s %-17s failed: %s\n", label, provider_names[p],
			       strerror((int)-t));
			free(ns);
			return;
		}
		ns[n++] = t;
		/* Stop early (at least 10 runs) when the cell is too slow. */
		if (n >= 10 && ca_now_ns() - start > CELL_BUDGET_NS)
			break;
	}
	qsort(ns, n, sizeof(*ns), cmp_u64);
	printf("%-8s %-17s %6u %12.1f %12.1f %12.1f\n", label, provider_names[p], n,
	       ns[n / 2] / 1e3, ns[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1] / 1e3,
	       ns[0] / 1e3);
	free(ns);
}

static void bandwidth_row(enum provider p, uint64_t size)
{
	double first = 0, best = 0;
	uint32_t handle = 0;
	unsigned int pass;
	uint8_t *mem;
	int fd;

	fd = create_buffer(p, size);
	if (fd < 0) {
		printf("%-17s failed: %s\n", provider_names[p], strerror(-fd));
		return;
	}
	/* cenalloc allocates at the first map: do it before timing. */
	if (ct_attach(ct, fd, 0, &handle, NULL) == 0)
		ct_map(ct, handle, 0, mapping);
	mem = ca_mmap(fd, size);
	if (!mem) {
		printf("%-17s mmap failed: %s\n", provider_names[p], strerror(errno));
		goto out;
	}
	for (pass = 0; pass < 6; pass++) {
		uint64_t t0 = ca_now_ns(), dt;
		double gbs;

		ca_cpu_access(fd, true);
		memset(mem, pass + 1, size);
		ca_cpu_access(fd, false);
		dt = ca_now_ns() - t0;
		gbs = (double)size / dt;	/* bytes per ns = GB/s */
		if (pass == 0)
			first = gbs;
		else if (gbs > best)
			best = gbs;
	}
	printf("%-17s %16.2f %16.2f\n", provider_names[p], first, best);
	munmap(mem, size);
out:
	if (handle) {
		ct_unmap(ct, handle);
		ct_detach(ct, handle);
	}
	close(fd);
}

int main(int argc, char **argv)
{
	static const struct {
		uint64_t size;
		const char *label;
		unsigned int runs, quick_runs;
	} sizes[] = {
		{ 4 * CA_KIB, "4 KiB", 500, 50 },
		{ 1 * CA_MIB, "1 MiB", 300, 30 },
		{ 64 * CA_MIB, "64 MiB", 30, 5 },
	};
	bool quick = argc > 1 && !strcmp(argv[1], "-q");
	unsigned int i;
	int p;

	setvbuf(stdout, NULL, _IOLBF, 0);
	mapping = calloc(1, sizeof(*mapping));
	ca = ca_open();
	ct_load_module();
	ct = ct_open();
	heap = open(HEAP_PATH, O_RDONLY | O_CLOEXEC);
	if (ca < 0 || ct < 0 || !mapping) {
		fprintf(stderr, "cenalloc_bench: needs %s and %s\n", CA_DEVICE_PATH, CT_DEVICE_PATH);
		return 1;
	}
	if (heap < 0)
		fprintf(stderr, "cenalloc_bench: no %s, cenalloc only\n", HEAP_PATH);
	if (ct_set_device1(ct, 0, CENALLOC_MASK_ANY, 0)) {
		fprintf(stderr, "cenalloc_bench: SET_DEVICE failed\n");
		return 1;
	}

	printf("create + attach + first map + unmap + detach + close (microseconds)\n");
	printf("%-8s %-17s %6s %12s %12s %12s\n", "size", "provider", "runs", "median", "p90", "min");
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		for (p = 0; p < NPROVIDERS; p++)
			if (p == CENALLOC || heap >= 0)
				latency_row(p, sizes[i].size, sizes[i].label,
					    quick ? sizes[i].quick_runs : sizes[i].runs);

	printf("\nmemset through mmap of a 64 MiB buffer (GB/s)\n");
	printf("%-17s %16s %16s\n", "provider", "first pass", "best of 5 more");
	for (p = 0; p < NPROVIDERS; p++)
		if (p == CENALLOC || heap >= 0)
			bandwidth_row(p, 64 * CA_MIB);
	close(ca);
	close(ct);
	if (heap >= 0)
		close(heap);
	free(mapping);
	return 0;
}
