// SPDX-License-Identifier: GPL-2.0
/* Guest buffers seen from the host (host_view.h). */
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "host_view.h"
#include "sysfs_util.h"

#define FRAME_BUFS	2
#define FRAME_WAIT_MS	30000
/* Pages added to each frame buffer, so that its size is its name. */
#define FRAME_TAG_PAGES	37

int ca_buffer_id_by_size(uint64_t size, uint32_t *id)
{
	unsigned long long buf_size;
	unsigned int buf_id;
	int found = 0;
	char line[256];
	FILE *f;

	if (!debugfs_ready())
		return -ENOENT;
	f = fopen("/sys/kernel/debug/cenalloc/buffers", "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%u %llu", &buf_id, &buf_size) != 2 || buf_size != size)
			continue;
		*id = buf_id;
		found++;
	}
	fclose(f);
	if (!found)
		return -ENOENT;
	return found == 1 ? 0 : -EEXIST;
}

static void say(char *why, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void say(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
}

int ca_open_vivid(char *name, size_t len)
{
	int i;

	for (i = 0; i < 64; i++) {
		struct v4l2_capability cap = { 0 };
		char path[64], node[16];
		int fd;

		snprintf(path, sizeof(path), "/dev/video%d", i);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (!ca_ioctl(fd, VIDIOC_QUERYCAP, &cap) &&
		    !strcmp((char *)cap.driver, "vivid") &&
		    (cap.device_caps & V4L2_CAP_VIDEO_CAPTURE) &&
		    (cap.device_caps & V4L2_CAP_STREAMING)) {
			snprintf(node, sizeof(node), "video%d", i);
			if (!sysfs_device_name("video4linux", node, name, len))
				return fd;
		}
		close(fd);
	}
	return -ENODEV;
}

/* FNV-1a 64 of the frame's rows, read through a CPU mapping. */
static int hash_rows(struct ca_frame *frame)
{
	const uint64_t row = (uint64_t)frame->width * 3;
	uint64_t hash = 0xcbf29ce484222325ull, r, i;
	const uint8_t *bytes;
	int ret;

	bytes = mmap(NULL, frame->buf_size, PROT_READ, MAP_SHARED, frame->fd, 0);
	if (bytes == MAP_FAILED)
		return -errno;
	ret = ca_cpu_access(frame->fd, true);
	if (!ret) {
		for (r = 0; r < frame->height; r++)
			for (i = 0; i < row; i++) {
				hash ^= bytes[r * frame->stride + i];
				hash *= 0x100000001b3ull;
			}
		ret = ca_cpu_access(frame->fd, false);
	}
	munmap((void *)bytes, frame->buf_size);
	frame->pixel_hash = hash;
	return ret;
}

int ca_vivid_capture(int ca, uint32_t width, uint32_t height,
		     struct ca_frame *frame, char *why, size_t why_len)
{
	struct v4l2_format fmt = { .type = V4L2_BUF_TYPE_VIDEO_CAPTURE };
	struct v4l2_requestbuffers req = {
		.count = FRAME_BUFS,
		.type = V4L2_BUF_TYPE_VIDEO_CAPTURE,
		.memory = V4L2_MEMORY_DMABUF,
	};
	struct v4l2_buffer vb = {
		.type = V4L2_BUF_TYPE_VIDEO_CAPTURE,
		.memory = V4L2_MEMORY_DMABUF,
	};
	int fds[FRAME_BUFS] = { -1, -1 };
	int type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
	bool streaming = false, masked = false;
	struct pollfd pfd = { .events = POLLIN };
	uint64_t sizes[FRAME_BUFS];
	int vid, ret, i;

	memset(frame, 0, sizeof(*frame));
	frame->fd = -1;
	vid = ca_open_vivid(frame->device, sizeof(frame->device));
	if (vid < 0) {
		say(why, why_len, "no vivid capture device");
		return 1;
	}
	fmt.fmt.pix.width = width;
	fmt.fmt.pix.height = height;
	fmt.fmt.pix.pixelformat = V4L2_PIX_FMT_RGB24;
	fmt.fmt.pix.field = V4L2_FIELD_NONE;
	ret = ca_ioctl(vid, VIDIOC_S_FMT, &fmt);
	if (ret || fmt.fmt.pix.pixelformat != V4L2_PIX_FMT_RGB24) {
		say(why, why_len, "S_FMT RGB24 %ux%u: %s", width, height,
		    ret ? strerror(-ret) : "another format");
		ret = ret ? ret : -EINVAL;
		goto out;
	}
	frame->width = fmt.fmt.pix.width;
	frame->height = fmt.fmt.pix.height;
	frame->stride = fmt.fmt.pix.bytesperline;
	/*
	 * vivid with allocators=1 attaches like a 32-bit DMA device that
	 * knows nothing of cenalloc: its mask decides the allocator.
	 */
	ret = ca_set_device_mask(ca, frame->device, CENALLOC_KIND_CONTIG_DMA32);
	if (ret) {
		say(why, why_len, "SET_DEVICE_MASK %s: %s", frame->device, strerror(-ret));
		goto out;
	}
	masked = true;
	ret = ca_ioctl(vid, VIDIOC_REQBUFS, &req);
	if (ret || req.count < FRAME_BUFS) {
		say(why, why_len, "REQBUFS DMABUF: %s, count %u",
		    ret ? strerror(-ret) : "too few", req.count);
		ret = ret ? ret : -ENOMEM;
		goto out;
	}
	for (i = 0; i < FRAME_BUFS; i++) {
		sizes[i] = ((fmt.fmt.pix.sizeimage + CA_PAGE_SIZE - 1) & ~(CA_PAGE_SIZE - 1)) +
			   (FRAME_TAG_PAGES + i) * CA_PAGE_SIZE;
		fds[i] = ca_create(ca, sizes[i], 0);
		if (fds[i] < 0) {
			ret = fds[i];
			say(why, why_len, "create %llu bytes: %s",
			    (unsigned long long)sizes[i], strerror(-ret));
			goto out;
		}
		vb.index = i;
		vb.m.fd = fds[i];
		vb.length = sizes[i];
		ret = ca_ioctl(vid, VIDIOC_QBUF, &vb);
		if (ret) {
			say(why, why_len, "QBUF %d: %s", i, strerror(-ret));
			goto out;
		}
	}
	ret = ca_ioctl(vid, VIDIOC_STREAMON, &type);
	if (ret) {
		say(why, why_len, "STREAMON: %s", strerror(-ret));
		goto out;
	}
	streaming = true;
	pfd.fd = vid;
	ret = poll(&pfd, 1, FRAME_WAIT_MS);
	if (ret <= 0) {
		ret = ret ? -errno : -ETIMEDOUT;
		say(why, why_len, "no frame within %d ms", FRAME_WAIT_MS);
		goto out;
	}
	memset(&vb, 0, sizeof(vb));
	vb.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
	vb.memory = V4L2_MEMORY_DMABUF;
	ret = ca_ioctl(vid, VIDIOC_DQBUF, &vb);
	if (ret || vb.index >= FRAME_BUFS) {
		say(why, why_len, "DQBUF: %s", ret ? strerror(-ret) : "bad index");
		ret = ret ? ret : -EINVAL;
		goto out;
	}
	frame->fd = fds[vb.index];
	frame->buf_size = sizes[vb.index];
	fds[vb.index] = -1;
out:
	if (streaming)
		ca_ioctl(vid, VIDIOC_STREAMOFF, &type);
	req.count = 0;
	ca_ioctl(vid, VIDIOC_REQBUFS, &req);	/* vivid lets go of the buffers */
	if (masked)
		ca_set_device_mask(ca, frame->device, 0);
	for (i = 0; i < FRAME_BUFS; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	close(vid);
	if (!ret && frame->fd >= 0) {
		ret = hash_rows(frame);
		if (ret)
			say(why, why_len, "reading the frame: %s", strerror(-ret));
	}
	if (!ret) {
		ret = ca_buffer_id_by_size(frame->buf_size, &frame->buffer_id);
		if (ret)
			say(why, why_len, "the frame buffer's id in debugfs: %s", strerror(-ret));
	}
	if (ret && frame->fd >= 0) {
		close(frame->fd);
		frame->fd = -1;
	}
	return ret;
}
