// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc_demo: the idea of cenalloc in one readable run.
 *
 * A 4 MiB buffer is created (nothing allocated), two devices with
 * different constraints attach (a "GPU" that can use any memory and a
 * "camera" that needs one contiguous range below 4 GiB), the first map
 * picks the allocator that suits both, the mapping types are negotiated per
 * device, and the daemon's checksum of the backing matches the bytes the
 * guest wrote. Then a camera (vivid) captures a frame into a cenalloc
 * buffer and, when run by run-vm, the host writes that frame as a PNG
 * straight from the buffer (cenallocd's export, cenallocctl snapshot).
 * Exit status 0 when every step behaved as described.
 *
 * /dev/cenalloc is used through libcenalloc (open, CREATE, INFO, PHYS,
 * CHECKSUM, FILL), as a program would; the importers are the test module's.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cenalloc.h>

#include "cenalloc_util.h"
#include "host_channel.h"
#include "host_view.h"
#include "tap.h"

#define SIZE		(4 * CA_MIB)
#define DEV_GPU		0
#define DEV_CAMERA	1
#define SEED		0xdeadbeefcafeull

static int failures;

static void row(const char *step, const char *what, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void row(const char *step, const char *what, const char *fmt, ...)
{
	char result[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(result, sizeof(result), fmt, ap);
	va_end(ap);
	printf("%-4s %-46s %s\n", step, what, result);
}

/* Counts an unexpected outcome; prints nothing when all is well. */
static void verdict(bool ok)
{
	if (!ok) {
		failures++;
		printf("     %-46s %s\n", "", "^ UNEXPECTED");
	}
}

static void print_pool(const struct ca_pool *pool, const char *title)
{
	char kinds[64];
	uint32_t i;

	printf("\n%s\n", title);
	printf("  %-3s %-10s %-30s %-8s %12s %12s %8s\n", "id", "allocator", "kinds",
	       "layout", "capacity", "free", "buffers");
	for (i = 0; i < pool->count; i++) {
		const struct cenalloc_allocator_info *a = &pool->alloc[i];

		printf("  %-3u %-10.16s %-30s %-8s %12llu %12llu %8u\n", a->id, a->name,
		       ca_mask_str(a->kinds, kinds, sizeof(kinds)),
		       ca_allocator_contiguous(a) ? (a->placement & 2 ? "contig32" : "contig")
						  : (a->placement & 2 ? "pages32" : "pages"),
		       (unsigned long long)a->capacity, (unsigned long long)a->free,
		       a->num_buffers);
	}
	printf("\n");
}

/* The allocator pool, from libcenalloc's cenalloc_info(). */
static int pool_read(int ca, struct ca_pool *pool)
{
	int n;

	memset(pool, 0, sizeof(*pool));
	n = cenalloc_info(ca, &pool->info, pool->alloc, CA_MAX_ALLOCATORS);
	if (n < 0)
		return n;
	pool->count = n;
	return 0;
}

/* A vivid frame into a cenalloc buffer, and out of it on the host as PNG. */
static void host_view_step(int ca)
{
	char why[160] = "", request[128], reply[512] = "";
	unsigned long long host_hash = 0;
	struct ca_frame frame;
	const char *pixels;
	bool match;
	int ret;

	ret = ca_vivid_capture(ca, 320, 180, &frame, why, sizeof(why));
	if (ret) {
		row("12", "vivid captures a frame into cenalloc", "%s", ret == 1 ? why : "FAILED");
		if (ret != 1) {
			printf("     %s\n", why);
			verdict(false);
		}
		return;
	}
	row("12", "vivid captures a frame into cenalloc",
	    "%ux%u RGB24 in buffer %u, FNV-1a %016llx", frame.width, frame.height, frame.buffer_id, (unsigned long long)frame.pixel_hash);
	if (!ca_host_available()) {
		row("13", "host writes the frame as PNG", "no host channel (not run by run-vm)");
		close(frame.fd);
		return;
	}
	snprintf(request, sizeof(request), "snapshot %u rgb24 %u %u %u vivid-frame",
		 frame.buffer_id, frame.width, frame.height, frame.stride);
	ret = ca_host_request(reply, sizeof(reply), 120, "%s", request);
	/* "png=PATH pixels=WIDTH HEIGHT CHANNELS FNV" */
	pixels = strstr(reply, "pixels=");
	match = !ret && pixels &&
		sscanf(pixels, "pixels=%*u %*u %*u %llx", &host_hash) == 1 &&
		host_hash == frame.pixel_hash;
	row("13", "host writes it as PNG (zero-copy export)", "PNG pixels %016llx: %s",
	    host_hash, match ? "MATCH" : "MISMATCH");
	printf("     host: %s\n", reply);
	verdict(match);
	close(frame.fd);
}

int main(void)
{
	static const uint32_t gpu_types[] = { CENALLOC_MAP_SG, CENALLOC_MAP_CONTIG };
	static const uint32_t camera_types[] = { CENALLOC_MAP_CONTIG };
	struct ct_mapping *m = calloc(1, sizeof(*m));
	struct ca_pool before, attached, mapped, after;
	uint32_t h_gpu = 0, h_cam = 0, t_gpu = 0, t_cam = 0;
	uint64_t addr = 0, len = 0, sum = 0, hashed = 0, guest_sum;
	int ca, ct, fd = -1, ret, used;
	char text[64];
	uint8_t *p = NULL;

	setvbuf(stdout, NULL, _IOLBF, 0);
	ca = cenalloc_open();
	ret = ct_load_module();
	if (ret)
		fprintf(stderr, "cenalloc_demo: loading cenalloc_test.ko: %s\n", strerror(-ret));
	ct = ct_open();
	if (ca < 0 || ct < 0 || !m) {
		fprintf(stderr, "cenalloc_demo: needs %s and %s (%s)\n", CA_DEVICE_PATH,
			CT_DEVICE_PATH, strerror(-(ca < 0 ? ca : ct)));
		return 1;
	}
	printf("cenalloc demo: constraint-aware allocation of a shared dma-buf\n");
	printf("==============================================================\n");
	if (pool_read(ca, &before)) {
		fprintf(stderr, "INFO failed\n");
		return 1;
	}
	print_pool(&before, "Allocator pool announced by the device (priority order):");

	ct_set_device(ct, DEV_GPU, CENALLOC_MASK_ANY, gpu_types, 2);
	ct_set_device(ct, DEV_CAMERA, CENALLOC_KIND_CONTIG_DMA32, camera_types, 1);

	printf("%-4s %-46s %s\n", "step", "action", "result");
	printf("%-4s %-46s %s\n", "----", "----------------------------------------------",
	       "------------------------------------------------");

	fd = cenalloc_create(ca, SIZE, 0, CENALLOC_CREATE_RDWR | CENALLOC_CREATE_CLOEXEC);
	if (fd < 0) {
		row("1", "create a 4 MiB buffer", "failed: %s", strerror(-fd));
		return 1;
	}
	row("1", "create a 4 MiB buffer", "dma-buf fd %d, %lld bytes, no backing yet",
	    fd, (long long)ca_buf_size(fd));

	ret = ct_attach(ct, fd, DEV_GPU, &h_gpu, &t_gpu);
	row("2", "attach \"GPU\" cenalloc_test.0, mask ANY",
	    "%s, mapping type %s (GPU lists SG,CONTIG)", ret ? strerror(-ret) : "attached",
	    ca_map_type_str(t_gpu));
	ret = ct_attach(ct, fd, DEV_CAMERA, &h_cam, &t_cam);
	row("3", "attach \"camera\" cenalloc_test.1, CONTIG_DMA32",
	    "%s, mapping type %s (camera lists CONTIG)", ret ? strerror(-ret) : "attached",
	    ca_map_type_str(t_cam));
	verdict(h_gpu && h_cam);

	pool_read(ca, &attached);
	row("4", "pool free bytes before the first map", "%llu (unchanged: %s)",
	    (unsigned long long)ca_pool_free(&attached),
	    ca_pool_free(&attached) == ca_pool_free(&before) ? "yes, nothing allocated" : "NO");
	verdict(ca_pool_free(&attached) == ca_pool_free(&before));

	ret = ct_map(ct, h_cam, 0, m);
	pool_read(ca, &mapped);
	used = ca_pool_allocator_used(&attached, &mapped);
	row("5", "first map (camera): backing allocated", "%s: allocator %d \"%.16s\", free %llu -> %llu",
	    ret ? strerror(-ret) : "mapped", used, used >= 0 ? mapped.alloc[used].name : "?",
	    (unsigned long long)ca_pool_free(&attached), (unsigned long long)ca_pool_free(&mapped));
	row("", "  access mask = ANY & CONTIG_DMA32", "%s",
	    ca_mask_str(CENALLOC_KIND_CONTIG_DMA32, text, sizeof(text)));
	verdict(!ret && used == ca_pool_expected_allocator(&attached,
							   CENALLOC_KIND_CONTIG_DMA32, SIZE));
	row("6", "camera's mapping", "type %s, %u segment(s), first %#llx + %#llx",
	    ca_map_type_str(m->map_type), m->num_segments,
	    (unsigned long long)m->seg[0].addr, (unsigned long long)m->seg[0].len);

	ret = cenalloc_phys(ca, fd, &addr, &len);
	if (ret)
		row("7", "CENALLOC_IOC_PHYS", "%s", strerror(-ret));
	else
		row("7", "CENALLOC_IOC_PHYS", "[%#llx, %#llx) below 4 GiB: %s",
		    (unsigned long long)addr, (unsigned long long)(addr + len),
		    addr + len <= (1ull << 32) ? "yes" : "NO");
	verdict(!ret && len == SIZE && addr + len <= (1ull << 32));

	ret = ct_map(ct, h_gpu, 0, m);
	row("8", "GPU's map (no new allocation)", "%s, type %s, %u segment(s)",
	    ret ? strerror(-ret) : "mapped", ca_map_type_str(m->map_type), m->num_segments);

	p = ca_mmap(fd, SIZE);
	if (p) {
		ca_cpu_access(fd, true);
		ca_pattern_fill(p, SIZE, SEED);
		ca_cpu_access(fd, false);
		guest_sum = ca_fnv1a64(p, SIZE);
		ret = cenalloc_checksum(ca, fd, &sum, &hashed);
		row("9", "guest writes 4 MiB through mmap", "guest FNV-1a %016llx", (unsigned long long)guest_sum);
		row("", "daemon CHECKSUM of the backing", "%s %016llx over %llu bytes: %s",
		    ret ? strerror(-ret) : "device", (unsigned long long)sum,
		    (unsigned long long)hashed, !ret && sum == guest_sum ? "MATCH" : "MISMATCH");
		verdict(!ret && sum == guest_sum);
		ret = cenalloc_fill(ca, fd, SEED + 1);
		row("10", "daemon FILLs the buffer (host side)", "guest sees the pattern through mmap: %s",
		    !ret && ca_pattern_check(p, SIZE, SEED + 1) == SIZE ? "yes" : "NO");
		verdict(!ret && ca_pattern_check(p, SIZE, SEED + 1) == SIZE);
		munmap(p, SIZE);
	} else {
		row("9", "mmap", "failed: %s", strerror(errno));
		failures++;
	}

	ct_detach(ct, h_gpu);
	ct_detach(ct, h_cam);
	cenalloc_close(fd);
	pool_read(ca, &after);
	/* Pools may have grown meanwhile (elastic): compare what is in use. */
	row("11", "detach both, close the fd", "pool bytes in use %llu: %s",
	    (unsigned long long)ca_pool_used(&after),
	    ca_pool_used(&after) == ca_pool_used(&before) ? "back to the start" : "NOT back");
	verdict(ca_pool_used(&after) == ca_pool_used(&before));
	host_view_step(ca);
	printf("\n%s\n", failures ? "demo: something did not behave as described" :
				    "demo: every step behaved as described");
	close(ct);
	cenalloc_close(ca);
	free(m);
	return failures ? 1 : 0;
}
