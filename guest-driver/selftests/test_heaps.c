// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc's dma-heaps (/dev/dma_heap/cenalloc*, cenalloc_heaps.ko), where
 * the kernel exports dma_heap_add to modules: the nodes and their mode,
 * DMA_HEAP_IOCTL_ALLOC returning a cenalloc dma-buf (the one CREATE
 * makes: delayed allocation, the heap's initial mask, fd_flags), a heap
 * buffer shared by vivid (dma-contig) and vgem, permissions and the
 * per-user quota shared with CREATE, and ALLOC with no device or no
 * cenalloc.ko (-ENODEV). The kernel's own conformance test of heaps runs
 * as kselftest_dmabuf_heap (qemu-scripts/build-guest).
 *
 * On a kernel without the export (6.1, 6.12) the whole executable skips:
 * "kernel does not export dma_heap_add" (its __ksymtab entry is missing
 * from /proc/kallsyms).
 */
#define _GNU_SOURCE		/* setresuid, setresgid */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ca_module.h"
#include "cenalloc_util.h"
#include "drm_min.h"
#include "host_view.h"
#include "tap.h"

#define HEAP_DIR	"/dev/dma_heap"
#define FOUR_GIB	(4ull << 30)
#define USER		1000
#define VIRTIO_DRIVER_DIR	"/sys/bus/virtio/drivers/cenalloc"
#define NBUF		2
#define FRAME_WAIT_MS	30000

static const struct {
	const char *name;
	bool contig;
	bool dma32;
} heaps[] = {
	{ "cenalloc", false, false },
	{ "cenalloc-contig", true, false },
	{ "cenalloc-dma32", false, true },
	{ "cenalloc-contig-dma32", true, true },
};

#define NHEAPS	(sizeof(heaps) / sizeof(heaps[0]))

static int heap_open(const char *name)
{
	char path[128];
	int fd;

	snprintf(path, sizeof(path), HEAP_DIR "/%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* DMA_HEAP_IOCTL_ALLOC: the dma-buf fd, or -errno. */
static int heap_alloc(int heap, uint64_t len, uint32_t fd_flags, uint64_t heap_flags)
{
	struct dma_heap_allocation_data data = {
		.len = len,
		.fd_flags = fd_flags,
		.heap_flags = heap_flags,
	};
	int ret = ca_ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &data);

	return ret < 0 ? ret : (int)data.fd;
}

static int heap_alloc_rw(int heap, uint64_t len)
{
	return heap_alloc(heap, len, O_RDWR | O_CLOEXEC, 0);
}

/* Drop to @id (uid and gid, no supplementary groups, no capabilities). */
static bool drop_to(unsigned int id)
{
	return setgroups(0, NULL) == 0 && setresgid(id, id, id) == 0 &&
	       setresuid(id, id, id) == 0;
}

/* Runs @fn(@arg) in a child dropped to @id; its exit status, or -errno. */
static int as_user(unsigned int id, int (*fn)(long arg), long arg)
{
	int status;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (!drop_to(id))
			_exit(99);
		_exit(fn(arg));
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -ECHILD;
	return WEXITSTATUS(status);
}

static bool set_mode(const char *name, mode_t mode)
{
	char path[128];
	int ret;

	snprintf(path, sizeof(path), HEAP_DIR "/%s", name);
	ret = chmod(path, mode) ? -errno : 0;
	return CHECK(ret == 0, "chmod %o %s: %s", (unsigned int)mode, path,
		     strerror(-ret));
}

static enum tap_result test_nodes(void)
{
	char path[128];
	struct stat st;
	unsigned int i;
	int ret;

	for (i = 0; i < NHEAPS; i++) {
		snprintf(path, sizeof(path), HEAP_DIR "/%s", heaps[i].name);
		ret = stat(path, &st) ? -errno : 0;
		if (!CHECK(ret == 0, "stat %s: %s", path, strerror(-ret)))
			continue;
		CHECK(S_ISCHR(st.st_mode), "%s is not a character device", path);
		/* What the kernel gives (no udev rule in the test guest). */
		CHECK((st.st_mode & 0777) == 0600 && st.st_uid == 0 && st.st_gid == 0,
		      "%s mode %o owner %u:%u, want 600 root:root", path,
		      st.st_mode & 0777, st.st_uid, st.st_gid);
	}
	return TAP_PASS;
}

/*
 * Each heap: a cenalloc dma-buf (FILL and CHECKSUM of /dev/cenalloc take
 * it) with no memory until its first map (PHYS: ENODATA), then memory of
 * the heap's kinds: contiguous (PHYS of the whole buffer) for the contig
 * heaps, below 4 GiB for the dma32 ones (a 6 GiB guest has RAM above).
 */
static enum tap_result test_alloc_each_heap(void)
{
	const uint64_t size = 256 * CA_KIB;
	uint64_t addr, len, sum, glen;
	int ca, heap, buf, ret, flags;
	unsigned int i;
	uint8_t *p;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	for (i = 0; i < NHEAPS; i++) {
		heap = heap_open(heaps[i].name);
		if (!CHECK(heap >= 0, "open %s: %s", heaps[i].name, strerror(-heap)))
			continue;
		/* Contiguous in one page whatever the kind, for the dma32 check. */
		buf = heap_alloc_rw(heap, heaps[i].contig ? size : CA_PAGE_SIZE);
		close(heap);
		if (!CHECK(buf >= 0, "%s: ALLOC: %s", heaps[i].name, strerror(-buf)))
			continue;
		flags = fcntl(buf, F_GETFD);
		CHECK(flags >= 0 && (flags & FD_CLOEXEC), "%s: no FD_CLOEXEC", heaps[i].name);
		flags = fcntl(buf, F_GETFL);
		CHECK(flags >= 0 && (flags & O_ACCMODE) == O_RDWR, "%s: not O_RDWR", heaps[i].name);
		ret = ca_phys(ca, buf, &addr, &len);
		CHECK(ret == -ENODATA, "%s: PHYS before the first map: %s, want ENODATA (delayed)",
		      heaps[i].name, strerror(-ret));
		glen = heaps[i].contig ? size : CA_PAGE_SIZE;
		/* The first map allocates; then FILL writes through the device. */
		p = ca_mmap(buf, glen);
		if (!CHECK(p, "%s: mmap: %s", heaps[i].name, strerror(errno)))
			goto next;
		ret = ca_fill(ca, buf, 0x68656170ull + i);
		CHECK(ret == 0, "%s: FILL: %s", heaps[i].name, strerror(-ret));
		CHECK(ca_first_nonzero(p, glen) < glen, "%s: FILL wrote nothing the CPU sees",
		      heaps[i].name);
		ret = ca_checksum(ca, buf, &sum, &len);
		CHECK(ret == 0 && len == glen && sum == ca_fnv1a64(p, glen),
		      "%s: device checksum %#llx over %llu bytes, guest %#llx (%s)",
		      heaps[i].name, (unsigned long long)sum, (unsigned long long)len,
		      (unsigned long long)ca_fnv1a64(p, glen), strerror(-ret));
		munmap(p, glen);
		ret = ca_phys(ca, buf, &addr, &len);
		if (CHECK(ret == 0 || (!heaps[i].contig && ret == -ENODEV),
			  "%s: PHYS after the first map: %s", heaps[i].name, strerror(-ret)) &&
		    ret == 0) {
			tap_diag("%s: [%#llx, +%#llx)", heaps[i].name,
				 (unsigned long long)addr, (unsigned long long)len);
			CHECK(len == glen, "%s: contiguous %llu of %llu bytes", heaps[i].name,
			      (unsigned long long)len, (unsigned long long)glen);
			if (heaps[i].dma32)
				CHECK(addr + len <= FOUR_GIB, "%s: buffer above 4 GiB",
				      heaps[i].name);
		}
next:
		close(buf);
	}
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_flags(void)
{
	int ca, heap, buf, ret, flags;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	heap = heap_open("cenalloc");
	if (!CHECK(heap >= 0, "open: %s", strerror(-heap)))
		goto out;
	buf = heap_alloc(heap, 64 * CA_KIB, O_RDONLY, 0);
	if (CHECK(buf >= 0, "ALLOC O_RDONLY: %s", strerror(-buf))) {
		flags = fcntl(buf, F_GETFL);
		CHECK(flags >= 0 && (flags & O_ACCMODE) == O_RDONLY, "O_RDONLY buffer: flags %#x", flags);
		flags = fcntl(buf, F_GETFD);
		CHECK(flags >= 0 && !(flags & FD_CLOEXEC), "FD_CLOEXEC without O_CLOEXEC");
		ret = ca_fill(ca, buf, 1);
		CHECK(ret == -EBADF, "FILL through an O_RDONLY heap buffer: %s, want EBADF",
		      strerror(-ret));
		close(buf);
	}
	ret = heap_alloc(heap, 64 * CA_KIB, O_WRONLY, 0);
	CHECK(ret == -EINVAL, "ALLOC O_WRONLY: %s, want EINVAL", strerror(-ret));
	ret = heap_alloc(heap, 64 * CA_KIB, O_RDWR, 1);
	CHECK(ret == -EINVAL, "ALLOC heap_flags 1: %s, want EINVAL", strerror(-ret));
	ret = heap_alloc(heap, 64 * CA_KIB, O_RDWR | O_NONBLOCK, 0);
	CHECK(ret == -EINVAL, "ALLOC fd_flags O_NONBLOCK: %s, want EINVAL", strerror(-ret));
	ret = heap_alloc(heap, 0, O_RDWR, 0);
	CHECK(ret == -EINVAL, "ALLOC of 0 bytes: %s, want EINVAL", strerror(-ret));
	ret = heap_alloc(heap, 1ull << 50, O_RDWR, 0);
	CHECK(ret == -E2BIG, "ALLOC of 1 PiB: %s, want E2BIG", strerror(-ret));
	close(heap);
out:
	ca_close(&ca);
	return TAP_PASS;
}

/* Opens the vgem card node, or -1. */
static int open_vgem(void)
{
	int i;

	for (i = 0; i < 16; i++) {
		char path[64], name[32] = "";
		struct drm_version v = { .name = name, .name_len = sizeof(name) - 1 };
		int fd;

		snprintf(path, sizeof(path), "/dev/dri/card%d", i);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (ioctl(fd, DRM_IOCTL_VERSION, &v) == 0 && !strcmp(name, "vgem"))
			return fd;
		close(fd);
	}
	return -1;
}

/* vivid's allocators= parameter: 1 is dma-contig. */
static int vivid_allocator(void)
{
	FILE *f = fopen("/sys/module/vivid/parameters/allocators", "r");
	int value = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%d", &value) != 1)
		value = -1;
	fclose(f);
	return value;
}

/* Loads vivid with dma-contig (as selftests/modules.txt does) if needed. */
static int vivid_dma_contig(void)
{
	char path[512], name[64];
	struct utsname uts;
	unsigned int tries;
	int fd, ret = 0, vid;

	if (vivid_allocator() == 1)
		return 0;
	if (uname(&uts))
		return -errno;
	snprintf(path, sizeof(path),
		 "/lib/modules/%s/kernel/drivers/media/test-drivers/vivid/vivid.ko",
		 uts.release);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (tries = 0; vivid_allocator() >= 0 && tries < 50; tries++) {
		ret = syscall(SYS_delete_module, "vivid", O_NONBLOCK) ? -errno : 0;
		if (ret != -EAGAIN && ret != -EBUSY)
			break;
		usleep(100000);
	}
	if (!ret)
		ret = syscall(SYS_finit_module, fd, "n_devs=1 node_types=0x1 allocators=1", 0) ?
		      -errno : 0;
	close(fd);
	for (tries = 0; !ret && tries < 100; tries++) {
		vid = ca_open_vivid(name, sizeof(name));
		if (vid >= 0) {
			close(vid);
			break;
		}
		usleep(50000);
	}
	return ret;
}

/*
 * Buffers from the cenalloc heap (no initial mask) queued to vivid with
 * dma-contig (a 32-bit DMA device that knows nothing of cenalloc: its
 * SET_DEVICE_MASK entry says CONTIG_DMA32): vivid captures a frame into
 * one; vgem imports that buffer (PRIME) while vivid still holds it, and
 * gives back the same dma-buf; the bytes the CPU sees are the device's.
 */
static enum tap_result test_vivid_and_vgem(void)
{
	struct v4l2_format fmt = { .type = V4L2_BUF_TYPE_VIDEO_CAPTURE };
	struct v4l2_requestbuffers req = { 0 };
	int fds[NBUF] = { -1, -1 };
	int ca = -1, heap = -1, vid = -1, drm = -1, ret, type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
	bool streaming = false, requested = false;
	struct v4l2_buffer vb = {
		.type = V4L2_BUF_TYPE_VIDEO_CAPTURE,
		.memory = V4L2_MEMORY_DMABUF,
	};
	struct drm_prime_handle prime = { 0 };
	struct drm_gem_close gem_close = { 0 };
	struct pollfd pfd;
	struct stat a, b;
	uint64_t size, addr, len, sum, buf_size;
	char dev_name[64];
	unsigned int i;
	uint8_t *p;

	ret = vivid_dma_contig();
	if (!CHECK(ret == 0, "vivid with dma-contig: %s", strerror(-ret)))
		return TAP_FAIL;
	vid = ca_open_vivid(dev_name, sizeof(dev_name));
	if (!CHECK(vid >= 0, "no vivid capture device"))
		return TAP_FAIL;
	drm = open_vgem();
	if (!CHECK(drm >= 0, "no vgem card") || !ca_env_open(&ca, NULL))
		goto out;
	heap = heap_open("cenalloc");
	if (!CHECK(heap >= 0, "open cenalloc heap: %s", strerror(-heap)))
		goto out;
	ret = ca_ioctl(vid, VIDIOC_G_FMT, &fmt);
	if (!CHECK(ret == 0, "G_FMT: %s", strerror(-ret)))
		goto out;
	size = fmt.fmt.pix.sizeimage;
	ret = ca_set_device_mask(ca, dev_name, CENALLOC_KIND_CONTIG_DMA32);
	if (!CHECK(ret == 0, "SET_DEVICE_MASK %s: %s", dev_name, strerror(-ret)))
		goto out;

	req.count = NBUF;
	req.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
	req.memory = V4L2_MEMORY_DMABUF;
	ret = ca_ioctl(vid, VIDIOC_REQBUFS, &req);
	if (!CHECK(ret == 0 && req.count >= NBUF, "REQBUFS: %s", strerror(-ret)))
		goto out;
	requested = true;
	for (i = 0; i < NBUF; i++) {
		struct v4l2_buffer q = {
			.index = i,
			.type = V4L2_BUF_TYPE_VIDEO_CAPTURE,
			.memory = V4L2_MEMORY_DMABUF,
			.length = size,
		};

		fds[i] = heap_alloc_rw(heap, size);
		if (!CHECK(fds[i] >= 0, "heap ALLOC: %s", strerror(-fds[i])))
			goto out;
		q.m.fd = fds[i];
		ret = ca_ioctl(vid, VIDIOC_QBUF, &q);
		if (!CHECK(ret == 0, "QBUF %u: %s", i, strerror(-ret)))
			goto out;
	}
	ret = ca_ioctl(vid, VIDIOC_STREAMON, &type);
	if (!CHECK(ret == 0, "STREAMON: %s", strerror(-ret)))
		goto out;
	streaming = true;
	pfd.fd = vid;
	pfd.events = POLLIN;
	if (!CHECK(poll(&pfd, 1, FRAME_WAIT_MS) == 1, "no frame within %d ms", FRAME_WAIT_MS))
		goto out;
	ret = ca_ioctl(vid, VIDIOC_DQBUF, &vb);
	if (!CHECK(ret == 0 && vb.index < NBUF, "DQBUF: %s, index %u", strerror(-ret), vb.index))
		goto out;
	tap_diag("frame %u in heap buffer %u, %u bytes", vb.sequence, vb.index, vb.bytesused);
	/* vivid's mapping: contiguous and below 4 GiB (its mask). */
	ret = ca_phys(ca, fds[vb.index], &addr, &len);
	if (CHECK(ret == 0, "PHYS: %s", strerror(-ret)))
		CHECK(addr + len <= FOUR_GIB, "vivid's buffer at %#llx above 4 GiB",
		      (unsigned long long)addr);

	/* vgem imports the buffer vivid still has attached. */
	prime.fd = fds[vb.index];
	ret = ioctl(drm, DRM_IOCTL_PRIME_FD_TO_HANDLE, &prime) ? -errno : 0;
	if (!CHECK(ret == 0, "vgem PRIME_FD_TO_HANDLE: %s", strerror(-ret)))
		goto out;
	gem_close.handle = prime.handle;
	prime.fd = -1;
	prime.flags = DRM_CLOEXEC | DRM_RDWR;
	ret = ioctl(drm, DRM_IOCTL_PRIME_HANDLE_TO_FD, &prime) ? -errno : 0;
	if (CHECK(ret == 0, "vgem PRIME_HANDLE_TO_FD: %s", strerror(-ret))) {
		CHECK(fstat(prime.fd, &a) == 0 && fstat(fds[vb.index], &b) == 0 &&
		      a.st_ino == b.st_ino, "vgem gave back another dma-buf");
		close(prime.fd);
	}

	buf_size = ca_buf_size(fds[vb.index]);
	p = ca_mmap(fds[vb.index], buf_size);
	if (CHECK(p, "mmap: %s", strerror(errno))) {
		CHECK(ca_first_nonzero(p, vb.bytesused) < vb.bytesused, "captured frame is all zeros");
		ret = ca_checksum(ca, fds[vb.index], &sum, &len);
		CHECK(ret == 0 && len == buf_size && sum == ca_fnv1a64(p, buf_size),
		      "device checksum %#llx, guest %#llx (%s)", (unsigned long long)sum,
		      (unsigned long long)ca_fnv1a64(p, buf_size), strerror(-ret));
		munmap(p, buf_size);
	}
	ioctl(drm, DRM_IOCTL_GEM_CLOSE, &gem_close);
out:
	if (streaming)
		ca_ioctl(vid, VIDIOC_STREAMOFF, &type);
	if (requested) {
		req.count = 0;
		ca_ioctl(vid, VIDIOC_REQBUFS, &req);
	}
	for (i = 0; i < NBUF; i++)
		ca_close(&fds[i]);
	if (ca >= 0)
		ca_set_device_mask(ca, dev_name, 0);
	ca_close(&heap);
	ca_close(&drm);
	ca_close(&vid);
	ca_close(&ca);
	return TAP_PASS;
}

/* Exit status: 0 when the cenalloc heap opens, 1 for EACCES, 2 otherwise. */
static int open_as_user(long arg)
{
	int heap = heap_open("cenalloc");

	(void)arg;
	if (heap >= 0) {
		close(heap);
		return 0;
	}
	return heap == -EACCES ? 1 : 2;
}

static enum tap_result test_permissions(void)
{
	int ret;

	ret = as_user(USER, open_as_user, 0);
	CHECK(ret == 1, "uid %d opens the 0600 node: status %d, want EACCES", USER, ret);
	if (!set_mode("cenalloc", 0666))
		return TAP_FAIL;
	ret = as_user(USER, open_as_user, 0);
	CHECK(ret == 0, "uid %d opens the 0666 node: status %d", USER, ret);
	set_mode("cenalloc", 0600);
	ret = as_user(USER, open_as_user, 0);
	CHECK(ret == 1, "uid %d opens the node back at 0600: status %d, want EACCES", USER, ret);
	return TAP_PASS;
}

static int quota_ca = -1;

/*
 * As the user, with user_buffers 3: @arg CREATEs through /dev/cenalloc,
 * then heap ALLOCs until one fails. Exit status: the ALLOCs that worked,
 * plus 100 when the failure was EDQUOT (200 when a CREATE failed).
 */
static int create_then_alloc(long arg)
{
	int heap, fd, count = 0;
	long i;

	for (i = 0; i < arg; i++)
		if (ca_create(quota_ca, 64 * CA_KIB, 0) < 0)
			return 200;
	heap = heap_open("cenalloc");
	if (heap < 0)
		return 201;
	for (;;) {
		fd = heap_alloc_rw(heap, 64 * CA_KIB);
		if (fd < 0)
			return count + (fd == -EDQUOT ? 100 : 0);
		if (++count == 50)
			return count;
	}
}

/* As the user: heap ALLOCs of @arg buffers, then CREATEs until refused. */
static int alloc_then_create(long arg)
{
	int heap, fd, count = 0;
	long i;

	heap = heap_open("cenalloc");
	if (heap < 0)
		return 201;
	for (i = 0; i < arg; i++)
		if (heap_alloc_rw(heap, 64 * CA_KIB) < 0)
			return 200;
	for (;;) {
		fd = ca_create(quota_ca, 64 * CA_KIB, 0);
		if (fd < 0)
			return count + (fd == -EDQUOT ? 100 : 0);
		if (++count == 50)
			return count;
	}
}

static enum tap_result test_quota(void)
{
	int ret;

	if (!ca_env_open(&quota_ca, NULL))
		return TAP_FAIL;
	if (!CHECK(ca_param_write("user_buffers", "3") == 0, "user_buffers=3") ||
	    !set_mode("cenalloc", 0666))
		goto out;
	ret = as_user(USER, create_then_alloc, 2);
	CHECK(ret == 101, "uid %d: 2 CREATEs, then %d heap ALLOCs (status %d), want 1 and EDQUOT",
	      USER, ret % 100, ret);
	ret = as_user(USER, alloc_then_create, 2);
	CHECK(ret == 101, "uid %d: 2 heap ALLOCs, then %d CREATEs (status %d), want 1 and EDQUOT",
	      USER, ret % 100, ret);
	ret = as_user(USER, create_then_alloc, 0);
	CHECK(ret == 103, "uid %d: %d heap ALLOCs alone (status %d), want 3 and EDQUOT",
	      USER, ret % 100, ret);
out:
	set_mode("cenalloc", 0600);
	ca_param_write("user_buffers", "4096");
	ca_close(&quota_ca);
	return TAP_PASS;
}

static int write_attr(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, value, strlen(value)) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

static bool bound_device(char *name, size_t len)
{
	DIR *d = opendir(VIRTIO_DRIVER_DIR);
	struct dirent *e;
	bool found = false;

	if (!d)
		return false;
	while (!found && (e = readdir(d)))
		if (!strncmp(e->d_name, "virtio", 6)) {
			snprintf(name, len, "%s", e->d_name);
			found = true;
		}
	closedir(d);
	return found;
}

static bool wait_for(const char *path, unsigned int ms)
{
	struct stat st;
	unsigned int waited;

	for (waited = 0; stat(path, &st); waited += 20) {
		if (waited >= ms)
			return false;
		usleep(20000);
	}
	return true;
}

/*
 * An open heap node outlives the device and cenalloc.ko: ALLOC with no
 * device bound, and with cenalloc.ko unloaded, fails with ENODEV; with
 * both back, it allocates again.
 */
static enum tap_result test_no_device(void)
{
	char dev[256], path[384], why[128];
	int heap, ret;

	if (!CHECK(bound_device(dev, sizeof(dev)), "no virtio device bound to cenalloc") ||
	    !CHECK(ca_module_ready(why, sizeof(why)), "%s", why))
		return TAP_FAIL;
	heap = heap_open("cenalloc");
	if (!CHECK(heap >= 0, "open: %s", strerror(-heap)))
		return TAP_FAIL;
	ret = write_attr(VIRTIO_DRIVER_DIR "/unbind", dev);
	if (!CHECK(ret == 0, "unbind %s: %s", dev, strerror(-ret)))
		goto out;
	ret = heap_alloc_rw(heap, 64 * CA_KIB);
	CHECK(ret == -ENODEV, "ALLOC with no device: %s, want ENODEV", strerror(-ret));
	if (ret >= 0)
		close(ret);
	ret = write_attr(VIRTIO_DRIVER_DIR "/bind", dev);
	snprintf(path, sizeof(path), VIRTIO_DRIVER_DIR "/%s", dev);
	if (!CHECK(ret == 0 && wait_for(path, 10000), "bind %s: %s", dev, strerror(-ret)))
		goto out;

	ret = syscall(SYS_delete_module, "cenalloc_test", O_NONBLOCK) ? -errno : 0;
	if (!ret)
		ret = syscall(SYS_delete_module, "cenalloc", O_NONBLOCK) ? -errno : 0;
	if (CHECK(ret == 0, "unloading cenalloc: %s", strerror(-ret))) {
		ret = heap_alloc_rw(heap, 64 * CA_KIB);
		CHECK(ret == -ENODEV, "ALLOC with no cenalloc.ko: %s, want ENODEV",
		      strerror(-ret));
		if (ret >= 0)
			close(ret);
	}
	ret = ca_module_reload(NULL);
	if (!CHECK(ret == 0, "loading cenalloc again: %s", strerror(-ret)))
		goto out;
	ret = heap_alloc_rw(heap, 64 * CA_KIB);
	CHECK(ret >= 0, "ALLOC after reload: %s", strerror(-ret));
	if (ret >= 0)
		close(ret);
out:
	close(heap);
	return TAP_PASS;
}

/* True when the running kernel exports dma_heap_add (kallsyms). */
static bool kernel_exports_dma_heap_add(void)
{
	char line[256];
	bool found = false;
	FILE *f = fopen("/proc/kallsyms", "re");

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, " __ksymtab_dma_heap_add\n") != NULL;
	fclose(f);
	return found;
}

static const struct tap_test tests[] = {
	TAP_TEST("every cenalloc heap has a node, 0600 root:root as the kernel makes it", test_nodes),
	TAP_TEST("ALLOC: a cenalloc dma-buf, memory at the first map, of the heap's kinds",
		 test_alloc_each_heap),
	TAP_TEST("ALLOC: O_RDONLY is read-only; O_WRONLY, unknown flags and 0 bytes: EINVAL",
		 test_flags),
	TAP_TEST_TIMEOUT("a heap buffer shared by vivid (dma-contig) and vgem", test_vivid_and_vgem, 100),
	TAP_TEST("an unprivileged user opens a heap node only when its mode allows",
		 test_permissions),
	TAP_TEST("heap ALLOCs and CREATEs share the per-user quota (EDQUOT)", test_quota),
	TAP_TEST_TIMEOUT("ALLOC with no device, or no cenalloc.ko: ENODEV; then again", test_no_device, 100),
};

int main(int argc, char **argv)
{
	if (!kernel_exports_dma_heap_add()) {
		/* The runner's whole-executable skip: plan 0, status 4. */
		printf("1..0 # SKIP kernel does not export dma_heap_add\n");
		return 4;
	}
	return tap_main(tests, TAP_ARRAY_SIZE(tests), argc, argv);
}
