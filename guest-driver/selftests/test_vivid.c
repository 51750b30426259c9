// SPDX-License-Identifier: GPL-2.0
/*
 * A real V4L2 importer: vivid captures into cenalloc buffers queued with
 * V4L2_MEMORY_DMABUF. The frame must land in the buffer (bytes no longer
 * zero, read through the exporter's mmap, and the device's checksum of the
 * backing agrees).
 *
 * With vivid's allocators=1 (videobuf2-dma-contig, 32-bit DMA mask) vivid
 * attaches and maps like a DMA device; it knows nothing of cenalloc, so the
 * mask given to its device with SET_DEVICE_MASK decides the allocator,
 * narrowed by what the exporter derives from vivid's 32-bit DMA mask: in a
 * guest whose RAM reaches above 4 GiB, CONTIG and CONTIG|CONTIG_DMA32 get
 * contiguous memory below 4 GiB (the `contig` allocator's memory may lie
 * above), exactly as CONTIG_DMA32 does. With the default allocators=0
 * (videobuf2-vmalloc) vivid never attaches: it only vmaps, which allocates
 * for the CPU (any kind).
 *
 * Linux 6.12's videobuf2 leaks the dma-buf reference QBUF took when the
 * exporter refuses the attach: __prepare_dmabuf() jumps to err_put_vb2_buf
 * before the plane's dbuf is stored, and __vb2_buf_dmabuf_put() only puts
 * stored planes. One refused QBUF keeps one buffer alive until reboot; it
 * is not a cenalloc leak (these tests only queue buffers vivid can use).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "host_view.h"
#include "tap.h"

#define FOUR_GIB	(4ull << 30)
#define NBUF		2	/* vivid starts streaming with 2 queued */
#define FRAME_WAIT_MS	30000

static enum tap_result capture_into_dmabuf(uint32_t mask);

/* vivid's allocators= parameter for instance 0: 1 is dma-contig. */
static int vivid_allocator(void)
{
	FILE *f = fopen("/sys/module/vivid/parameters/allocators", "r");
	int value = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%d", &value) != 1)
		value = 0;
	fclose(f);
	return value;
}

/*
 * Reloads vivid with one capture-only instance using @allocator (0:
 * vmalloc, 1: dma-contig), unless it already runs that way. Returns 0, 1
 * when vivid.ko is not in the image (skip), or -errno.
 */
static int vivid_use_allocator(int allocator)
{
	char path[512], params[96];
	struct utsname uts;
	unsigned int tries;
	struct stat st;
	int fd, ret = 0;

	if (vivid_allocator() == allocator && stat("/sys/module/vivid", &st) == 0)
		return 0;
	if (uname(&uts))
		return -errno;
	snprintf(path, sizeof(path),
		 "/lib/modules/%s/kernel/drivers/media/test-drivers/vivid/vivid.ko",
		 uts.release);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 1;
	if (stat("/sys/module/vivid", &st) == 0) {
		for (tries = 0; tries < 50; tries++) {
			ret = syscall(SYS_delete_module, "vivid", O_NONBLOCK) ? -errno : 0;
			if (ret != -EAGAIN && ret != -EBUSY)
				break;
			usleep(100000);
		}
		if (ret)
			goto out;
	}
	snprintf(params, sizeof(params), "n_devs=1 node_types=0x1 allocators=%d", allocator);
	ret = syscall(SYS_finit_module, fd, params, 0) ? -errno : 0;
	/* udev-less guest: devtmpfs creates the node; give it a moment. */
	for (tries = 0; !ret && tries < 100; tries++) {
		char name[64];
		int vid = ca_open_vivid(name, sizeof(name));

		if (vid >= 0) {
			close(vid);
			break;
		}
		usleep(50000);
	}
out:
	close(fd);
	return ret;
}

static enum tap_result vivid_capture(int allocator, uint32_t mask)
{
	int reload = vivid_use_allocator(allocator);

	if (reload == 1)
		return tap_skip("vivid.ko not in the image");
	if (!CHECK(reload == 0, "loading vivid allocators=%d: %s", allocator, strerror(-reload)))
		return TAP_FAIL;
	return capture_into_dmabuf(mask);
}

static enum tap_result test_vivid_vmalloc(void)
{
	return vivid_capture(0, CENALLOC_KIND_CONTIG_DMA32);
}

static enum tap_result test_vivid_dma_contig(void)
{
	return vivid_capture(1, CENALLOC_KIND_CONTIG_DMA32);
}

static enum tap_result test_vivid_dma_contig_any_contig(void)
{
	return vivid_capture(1, CENALLOC_KIND_CONTIG | CENALLOC_KIND_CONTIG_DMA32);
}

static enum tap_result test_vivid_dma_contig_contig(void)
{
	return vivid_capture(1, CENALLOC_KIND_CONTIG);
}

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

/*
 * The mask the exporter gives vivid's 32-bit device for @mask: with RAM
 * above 4 GiB, only kinds placed below 4 GiB, SYSTEM and CONTIG standing
 * for DMA32 and CONTIG_DMA32 (cenalloc_reach.c).
 */
static uint32_t vivid_effective_mask(const struct ca_pool *pool, uint32_t mask)
{
	uint32_t high = 0, i;

	if (ram_top() <= FOUR_GIB)
		return mask;
	for (i = 0; i < pool->count; i++)
		if (!(pool->alloc[i].placement & 2u))
			high |= pool->alloc[i].kinds;
	if (mask & CENALLOC_KIND_SYSTEM)
		mask |= CENALLOC_KIND_DMA32;
	if (mask & CENALLOC_KIND_CONTIG)
		mask |= CENALLOC_KIND_CONTIG_DMA32;
	return mask & ~high;
}

static enum tap_result capture_into_dmabuf(uint32_t mask)
{
	struct v4l2_format fmt = { .type = V4L2_BUF_TYPE_VIDEO_CAPTURE };
	struct v4l2_requestbuffers req = { 0 };
	const bool dma_contig = vivid_allocator() == 1;
	enum tap_result result = TAP_PASS;
	struct ca_pool before, streaming, after;
	int fds[NBUF] = { -1, -1 };
	int ca = -1, vid, ret, used, expected, type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
	bool streaming_on = false, bufs_requested = false, have_before = false;
	char dev_name[64];
	uint64_t size, buf_size;
	unsigned int i;

	vid = ca_open_vivid(dev_name, sizeof(dev_name));
	if (vid < 0)
		return tap_skip("no vivid capture device (modprobe vivid node_types=0x1)");
	if (!ca_env_open(&ca, NULL))
		goto out;
	ret = ca_ioctl(vid, VIDIOC_G_FMT, &fmt);
	if (!CHECK(ret == 0, "G_FMT: %s", strerror(-ret)))
		goto out;
	size = fmt.fmt.pix.sizeimage;
	tap_diag("vivid device %s: %ux%u, %llu bytes per frame", dev_name,
		 fmt.fmt.pix.width, fmt.fmt.pix.height, (unsigned long long)size);
	ret = ca_set_device_mask(ca, dev_name, mask);
	if (!CHECK(ret == 0, "SET_DEVICE_MASK %s: %s", dev_name, strerror(-ret)) ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	have_before = true;
	expected = ca_pool_expected_allocator(&before, dma_contig ?
					      vivid_effective_mask(&before, mask) :
					      CENALLOC_MASK_ANY, size);
	tap_diag("vivid uses %s", dma_contig ? "dma-contig: it attaches with its device"
					     : "vmalloc: it only vmaps, no attach");

	req.count = NBUF;
	req.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
	req.memory = V4L2_MEMORY_DMABUF;
	ret = ca_ioctl(vid, VIDIOC_REQBUFS, &req);
	if (!CHECK(ret == 0 && req.count >= NBUF, "REQBUFS DMABUF: %s, count %u",
		   strerror(-ret), req.count))
		goto out;
	bufs_requested = true;
	for (i = 0; i < NBUF; i++) {
		struct v4l2_buffer vb = {
			.index = i,
			.type = V4L2_BUF_TYPE_VIDEO_CAPTURE,
			.memory = V4L2_MEMORY_DMABUF,
			.length = size,
		};

		fds[i] = ca_create(ca, size, 0);
		if (!CHECK(fds[i] >= 0, "create: %s", strerror(-fds[i])))
			goto out;
		vb.m.fd = fds[i];
		ret = ca_ioctl(vid, VIDIOC_QBUF, &vb);
		if (!CHECK(ret == 0, "QBUF %u: %s", i, strerror(-ret)))
			goto out;
	}
	ret = ca_ioctl(vid, VIDIOC_STREAMON, &type);
	if (!CHECK(ret == 0, "STREAMON: %s", strerror(-ret)))
		goto out;
	streaming_on = true;

	if (CHECK(ca_pool_read(ca, &streaming) == 0, "INFO")) {
		used = ca_pool_allocator_used(&before, &streaming);
		tap_diag("vivid buffers allocated from allocator %d (%.16s), %llu bytes",
			 used, used >= 0 ? streaming.alloc[used].name : "none",
			 (unsigned long long)(ca_pool_used(&streaming) - ca_pool_used(&before)));
		CHECK(used == expected, "allocator %d, expected %d", used, expected);
	}
	if (dma_contig) {
		uint64_t addr = 0, len = 0;

		/* Real addresses: a 32-bit device's buffer lies below 4 GiB. */
		for (i = 0; i < NBUF; i++) {
			ret = ca_phys(ca, fds[i], &addr, &len);
			if (CHECK(ret == 0, "PHYS %u: %s", i, strerror(-ret)))
				CHECK(addr + len <= FOUR_GIB,
				      "vivid buffer %u at [%#llx, +%#llx) above 4 GiB", i,
				      (unsigned long long)addr, (unsigned long long)len);
		}
		tap_diag("buffer 1 at %#llx", (unsigned long long)addr);
	}

	struct pollfd pfd = { .fd = vid, .events = POLLIN };
	struct v4l2_buffer vb = {
		.type = V4L2_BUF_TYPE_VIDEO_CAPTURE,
		.memory = V4L2_MEMORY_DMABUF,
	};

	ret = poll(&pfd, 1, FRAME_WAIT_MS);
	if (!CHECK(ret == 1, "no frame within %d ms", FRAME_WAIT_MS))
		goto out;
	ret = ca_ioctl(vid, VIDIOC_DQBUF, &vb);
	if (!CHECK(ret == 0, "DQBUF: %s", strerror(-ret)))
		goto out;
	if (!CHECK(vb.index < NBUF, "DQBUF index %u", vb.index))
		goto out;
	tap_diag("frame %u in buffer %u, %u bytes used", vb.sequence, vb.index, vb.bytesused);
	CHECK(vb.bytesused > 0 && vb.bytesused <= size, "bytesused %u", vb.bytesused);

	/* The whole buffer: sizeimage rounded up to pages. */
	buf_size = ca_buf_size(fds[vb.index]);
	uint8_t *p = ca_mmap(fds[vb.index], buf_size);

	if (CHECK(p, "mmap: %s", strerror(errno))) {
		size_t nz = ca_first_nonzero(p, vb.bytesused);
		uint64_t sum = 0, len = 0;

		CHECK(nz < vb.bytesused, "captured frame is all zeros");
		/* The device sees the same bytes as the guest. */
		ret = ca_checksum(ca, fds[vb.index], &sum, &len);
		CHECK(ret == 0 && len == buf_size && sum == ca_fnv1a64(p, buf_size),
		      "device checksum %#llx over %llu bytes, guest %#llx over %llu (%s)",
		      (unsigned long long)sum, (unsigned long long)len,
		      (unsigned long long)ca_fnv1a64(p, buf_size),
		      (unsigned long long)buf_size, strerror(-ret));
		munmap(p, buf_size);
	}
out:
	if (streaming_on)
		ca_ioctl(vid, VIDIOC_STREAMOFF, &type);
	if (bufs_requested) {
		req.count = 0;
		ca_ioctl(vid, VIDIOC_REQBUFS, &req);
	}
	close(vid);
	for (i = 0; i < NBUF; i++)
		ca_close(&fds[i]);
	if (ca >= 0) {
		if (have_before && CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
			CHECK(ca_pool_used(&after) == ca_pool_used(&before),
			      "pool not back after closing vivid and the buffers");
		ca_set_device_mask(ca, dev_name, 0);
	}
	ca_close(&ca);
	return result;
}

static const struct tap_test tests[] = {
	TAP_TEST_TIMEOUT("vivid (vmalloc, vmap only) captures into a cenalloc dma-buf", test_vivid_vmalloc, 100),
	TAP_TEST_TIMEOUT("vivid (dma-contig) attaches with its table mask and captures", test_vivid_dma_contig, 100),
	TAP_TEST_TIMEOUT("vivid (dma-contig, 32-bit) with mask CONTIG|CONTIG_DMA32 captures below 4 GiB",
			 test_vivid_dma_contig_any_contig, 100),
	TAP_TEST_TIMEOUT("vivid (dma-contig, 32-bit) with mask CONTIG captures below 4 GiB",
			 test_vivid_dma_contig_contig, 100),
};

TAP_MAIN(tests)
