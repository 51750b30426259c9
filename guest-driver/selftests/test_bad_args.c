// SPDX-License-Identifier: GPL-2.0
/*
 * Bad ioctl arguments are refused with the right errno and change nothing:
 * non-zero reserved fields, unknown flags, bad and foreign fds, size 0,
 * sizes beyond the device's limit, bad pointers, unknown commands.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/dma-heap.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

static int raw_ioctl(int fd, unsigned long request, void *arg)
{
	return ioctl(fd, request, arg) < 0 ? -errno : 0;
}

static const char *err_name(int ret)
{
	return ret ? strerror(-ret) : "success";
}

#define EXPECT_ERR(call, err, what) do {				\
	int __ret = (call);						\
	CHECK(__ret == (err), "%s: %s, expected %s", (what),		\
	      err_name(__ret), strerror(-(err)));			\
	if (__ret == 0 && create.fd > 0) {				\
		close(create.fd);					\
		create.fd = -1;						\
	}								\
} while (0)

static enum tap_result test_create_bad_args(void)
{
	struct cenalloc_create_arg create;
	struct ca_pool before, after;
	int ca, ret;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;

#define RESET() do {							\
	memset(&create, 0, sizeof(create));				\
	create.size = CA_PAGE_SIZE;					\
	create.flags = CENALLOC_CREATE_RDWR;				\
	create.fd = -1;							\
} while (0)

	RESET();
	create.reserved0 = 1;
	EXPECT_ERR(raw_ioctl(ca, CENALLOC_IOC_CREATE, &create), -EINVAL, "reserved0 != 0");
	RESET();
	create.reserved[1] = 1;
	EXPECT_ERR(raw_ioctl(ca, CENALLOC_IOC_CREATE, &create), -EINVAL, "reserved[1] != 0");
	RESET();
	create.flags |= 1u << 7;
	EXPECT_ERR(raw_ioctl(ca, CENALLOC_IOC_CREATE, &create), -EINVAL, "unknown flag");
	RESET();
	create.size = 0;
	EXPECT_ERR(raw_ioctl(ca, CENALLOC_IOC_CREATE, &create), -EINVAL, "size 0");
	RESET();
	create.size = before.info.max_buffer_size + CA_PAGE_SIZE;
	ret = raw_ioctl(ca, CENALLOC_IOC_CREATE, &create);
	CHECK(ret == -E2BIG || ret == -EINVAL,
	      "size max_buffer_size + 4 KiB: %s, expected E2BIG or EINVAL", err_name(ret));
	if (!ret)
		close(create.fd);
	RESET();
	create.size = UINT64_MAX;	/* rounding up would overflow */
	ret = raw_ioctl(ca, CENALLOC_IOC_CREATE, &create);
	CHECK(ret == -E2BIG || ret == -EINVAL, "size 2^64-1: %s, expected E2BIG or EINVAL",
	      err_name(ret));
	if (!ret)
		close(create.fd);
	RESET();
	create.size = UINT64_MAX - CA_PAGE_SIZE + 2;
	ret = raw_ioctl(ca, CENALLOC_IOC_CREATE, &create);
	CHECK(ret == -E2BIG || ret == -EINVAL, "size 2^64-4095: %s, expected E2BIG or EINVAL",
	      err_name(ret));
	if (!ret)
		close(create.fd);
	/* A bad pointer. */
	ret = raw_ioctl(ca, CENALLOC_IOC_CREATE, (void *)16);
	CHECK(ret == -EFAULT, "argument pointer 16: %s, expected EFAULT", err_name(ret));
	/* Unknown command, and a known one with a different struct size. */
	ret = raw_ioctl(ca, _IOWR(CENALLOC_IOC_MAGIC, 0x3f, struct cenalloc_create_arg), &create);
	CHECK(ret == -ENOTTY, "unknown command: %s, expected ENOTTY", err_name(ret));
	ret = raw_ioctl(ca, _IOWR(CENALLOC_IOC_MAGIC, 0, uint64_t), &create);
	CHECK(ret == -ENOTTY, "CREATE with another size: %s, expected ENOTTY", err_name(ret));

	/* Read-only buffer: mmap for writing is refused. */
	RESET();
	create.flags = 0;
	ret = raw_ioctl(ca, CENALLOC_IOC_CREATE, &create);
	if (CHECK(ret == 0, "read-only create: %s", err_name(ret))) {
		void *p = mmap(NULL, CA_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
			       create.fd, 0);

		CHECK(p == MAP_FAILED, "writable mmap of an O_RDONLY dma-buf succeeded");
		if (p != MAP_FAILED)
			munmap(p, CA_PAGE_SIZE);
		CHECK((fcntl(create.fd, F_GETFL) & O_ACCMODE) == O_RDONLY, "fd not O_RDONLY");
		close(create.fd);
	}
	RESET();
	create.flags = CENALLOC_CREATE_CLOEXEC;
	if (CHECK(raw_ioctl(ca, CENALLOC_IOC_CREATE, &create) == 0, "CLOEXEC create")) {
		CHECK(fcntl(create.fd, F_GETFD) & FD_CLOEXEC, "FD_CLOEXEC not set");
		close(create.fd);
	}
#undef RESET
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "refused creates changed the pool");
out:
	ca_close(&ca);
	return TAP_PASS;
}

/* A dma-buf fd exported by someone else (the system heap), or -1. */
static int foreign_dmabuf(void)
{
	struct dma_heap_allocation_data alloc = {
		.len = CA_PAGE_SIZE,
		.fd_flags = O_RDWR | O_CLOEXEC,
	};
	int heap = open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC);
	int ret;

	if (heap < 0)
		return -1;
	ret = ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &alloc);
	close(heap);
	return ret < 0 ? -1 : (int)alloc.fd;
}

static enum tap_result test_fd_args(void)
{
	struct cenalloc_phys_arg phys;
	struct cenalloc_checksum_arg sum;
	struct cenalloc_fill_arg fill;
	int ca, ct, buf = -1, foreign = -1, plain = -1, ret;
	struct ca_buf b = { .fd = -1 };
	int fds[4];
	const char *fd_names[4] = { "fd -1", "closed fd", "/dev/null", "system-heap dma-buf" };
	unsigned int i, nfds;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	plain = open("/dev/null", O_RDWR | O_CLOEXEC);
	foreign = foreign_dmabuf();
	ret = ct_set_device1(ct, 0, CENALLOC_MASK_ANY, 0);
	ret = ret ? ret : ca_buf_alloc(ca, ct, 64 * CA_KIB, 0, &b);
	if (!CHECK(ret == 0, "alloc: %s", err_name(ret)))
		goto out;
	buf = b.fd;
	fds[0] = -1;
	fds[1] = 1000;	/* not open */
	fds[2] = plain;
	fds[3] = foreign;
	nfds = foreign >= 0 ? 4 : 3;
	if (foreign < 0)
		tap_diag("no /dev/dma_heap/system: foreign dma-buf case not run");

	for (i = 0; i < nfds; i++) {
		int expected = i < 2 ? -EBADF : -EINVAL;

		memset(&phys, 0, sizeof(phys));
		phys.fd = fds[i];
		ret = raw_ioctl(ca, CENALLOC_IOC_PHYS, &phys);
		CHECK(ret == expected, "PHYS of %s: %s, expected %s", fd_names[i],
		      err_name(ret), strerror(-expected));
		memset(&sum, 0, sizeof(sum));
		sum.fd = fds[i];
		ret = raw_ioctl(ca, CENALLOC_IOC_CHECKSUM, &sum);
		CHECK(ret == expected, "CHECKSUM of %s: %s, expected %s", fd_names[i],
		      err_name(ret), strerror(-expected));
		memset(&fill, 0, sizeof(fill));
		fill.fd = fds[i];
		ret = raw_ioctl(ca, CENALLOC_IOC_FILL, &fill);
		CHECK(ret == expected, "FILL of %s: %s, expected %s", fd_names[i],
		      err_name(ret), strerror(-expected));
	}

	/* Flags and reserved fields on a good fd. */
	memset(&phys, 0, sizeof(phys));
	phys.fd = buf;
	phys.flags = 1;
	CHECK(raw_ioctl(ca, CENALLOC_IOC_PHYS, &phys) == -EINVAL, "PHYS flags != 0");
	phys.flags = 0;
	phys.reserved = 1;
	CHECK(raw_ioctl(ca, CENALLOC_IOC_PHYS, &phys) == -EINVAL, "PHYS reserved != 0");
	memset(&sum, 0, sizeof(sum));
	sum.fd = buf;
	sum.flags = 2;
	CHECK(raw_ioctl(ca, CENALLOC_IOC_CHECKSUM, &sum) == -EINVAL, "CHECKSUM flags != 0");
	memset(&fill, 0, sizeof(fill));
	fill.fd = buf;
	fill.flags = 4;
	CHECK(raw_ioctl(ca, CENALLOC_IOC_FILL, &fill) == -EINVAL, "FILL flags != 0");
out:
	ca_buf_free(ct, &b);
	ca_close(&plain);
	ca_close(&foreign);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_info_and_mask_args(void)
{
	struct cenalloc_device_mask_arg mask;
	struct cenalloc_info_arg info;
	int ca, ret;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	memset(&info, 0, sizeof(info));
	info.flags = 1;
	CHECK(raw_ioctl(ca, CENALLOC_IOC_INFO, &info) == -EINVAL, "INFO flags != 0");
	memset(&info, 0, sizeof(info));
	info.reserved = 1;
	CHECK(raw_ioctl(ca, CENALLOC_IOC_INFO, &info) == -EINVAL, "INFO reserved != 0");
	/* No room for allocators: the counts still come back. */
	memset(&info, 0, sizeof(info));
	ret = raw_ioctl(ca, CENALLOC_IOC_INFO, &info);
	CHECK(ret == 0 && info.num_allocators >= 1, "INFO with max_allocators 0: %s, %u allocators",
	      err_name(ret), info.num_allocators);
	memset(&info, 0, sizeof(info));
	info.max_allocators = 4;
	info.allocators_ptr = 16;
	ret = raw_ioctl(ca, CENALLOC_IOC_INFO, &info);
	CHECK(ret == -EFAULT, "INFO with a bad allocators pointer: %s, expected EFAULT",
	      err_name(ret));

	memset(&mask, 'x', sizeof(mask));	/* name not NUL-terminated */
	mask.mask = 1;
	mask.flags = 0;
	CHECK(raw_ioctl(ca, CENALLOC_IOC_SET_DEVICE_MASK, &mask) == -EINVAL,
	      "SET_DEVICE_MASK name without NUL");
	memset(&mask, 0, sizeof(mask));
	strcpy(mask.name, "cenalloc_test.7");
	mask.mask = 1;
	mask.flags = 1;
	CHECK(raw_ioctl(ca, CENALLOC_IOC_SET_DEVICE_MASK, &mask) == -EINVAL,
	      "SET_DEVICE_MASK flags != 0");
	memset(&mask, 0, sizeof(mask));
	mask.mask = 1;
	CHECK(raw_ioctl(ca, CENALLOC_IOC_SET_DEVICE_MASK, &mask) == -EINVAL,
	      "SET_DEVICE_MASK empty name");
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_importer_bad_args(void)
{
	struct cenalloc_test_attach_arg attach;
	struct cenalloc_test_device_arg dev;
	struct cenalloc_test_handle_arg h;
	struct cenalloc_test_rename_arg rename;
	struct cenalloc_test_status_arg status;
	struct cenalloc_test_map_arg map;
	struct cenalloc_test_rw_arg rw;
	struct ca_buf b = { .fd = -1 };
	uint32_t handle;
	char data[16];
	int ca, ct, ret;

	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	memset(&dev, 0, sizeof(dev));
	dev.device = CENALLOC_TEST_MAX_DEVICES;
	dev.num_types = 1;
	dev.types[0] = CENALLOC_MAP_SG;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL, "device out of range");
	dev.device = 0;
	dev.num_types = 0;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL, "0 types");
	dev.num_types = CENALLOC_TEST_MAX_TYPES + 1;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL, "too many types");
	dev.num_types = 1;
	dev.flags = ~CENALLOC_TEST_DEV_FLAGS;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL, "unknown flags");
	dev.flags = 0;
	dev.dma_bits = 65;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL, "dma_bits 65");
	dev.dma_bits = 0;
	dev.max_segment = 512;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL,
	      "max_segment below a page");
	dev.max_segment = 0;
	dev.seg_boundary = 0x12fff;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL,
	      "seg_boundary not a power of 2 minus 1");
	dev.seg_boundary = 0;
	dev.types[1] = CENALLOC_MAP_CONTIG;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL,
	      "type past num_types != 0");
	dev.types[1] = 0;
	dev.types[CENALLOC_TEST_MAX_TYPES - 1] = CENALLOC_MAP_CONTIG;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL,
	      "last type past num_types != 0");
	dev.num_types = 2;
	dev.types[CENALLOC_TEST_MAX_TYPES - 1] = 0;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &dev) == -EINVAL,
	      "listed type 0");

	ret = ct_attach(ct, -1, 0, &handle, NULL);
	CHECK(ret == -EBADF, "attach fd -1: %s", err_name(ret));
	ret = ct_attach(ct, 0, CENALLOC_TEST_MAX_DEVICES, &handle, NULL);
	CHECK(ret == -EINVAL, "attach device out of range: %s", err_name(ret));

	memset(&attach, 0, sizeof(attach));
	attach.dmabuf_fd = -1;
	attach.reserved = 1;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_ATTACH, &attach) == -EINVAL,
	      "attach reserved != 0");

	memset(&h, 0, sizeof(h));
	h.handle = 12345;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_DETACH, &h) == -ENOENT, "detach unknown handle");
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_UNMAP, &h) == -ENOENT, "unmap unknown handle");
	h.reserved = 1;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_DETACH, &h) == -EINVAL, "detach reserved != 0");
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_UNMAP, &h) == -EINVAL, "unmap reserved != 0");
	memset(&status, 0, sizeof(status));
	status.handle = 12345;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_STATUS, &status) == -ENOENT,
	      "status unknown handle");
	status.reserved = 1;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_STATUS, &status) == -EINVAL,
	      "status reserved != 0");
	memset(&rename, 'x', sizeof(rename));
	rename.device = 0;
	rename.reserved = 0;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_RENAME, &rename) == -EINVAL,
	      "rename without NUL");
	rename.name[0] = '\0';
	rename.device = CENALLOC_TEST_MAX_DEVICES;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_RENAME, &rename) == -EINVAL,
	      "rename device out of range");
	rename.device = 0;
	rename.reserved = 1;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_RENAME, &rename) == -EINVAL,
	      "rename reserved != 0");

	if (!CHECK(ct_set_device1(ct, 0, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE"))
		goto out;
	ret = ca_buf_alloc(ca, ct, 2 * CA_PAGE_SIZE, 0, &b);
	if (!CHECK(ret == 0, "alloc: %s", err_name(ret)))
		goto out;
	memset(&map, 0, sizeof(map));
	map.handle = b.handle;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_MAP, &map) == -EBUSY, "map twice");
	CHECK(ct_unmap(ct, b.handle) == 0, "unmap");
	CHECK(ct_unmap(ct, b.handle) == -EINVAL, "unmap twice");
	map.direction = 3;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_MAP, &map) == -EINVAL, "bad direction");
	map.direction = 0;
	map.raw = 2;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_MAP, &map) == -EINVAL, "map raw > 1");
	map.raw = 0;
	map.max_segments = 4;
	map.segments_ptr = 16;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_MAP, &map) == -EFAULT, "bad segments pointer");
	/* The failed map left nothing mapped. */
	CHECK(ct_unmap(ct, b.handle) == -EINVAL, "failed map left a mapping");

	memset(&rw, 0, sizeof(rw));
	rw.dmabuf_fd = b.fd;
	rw.data_ptr = (uintptr_t)data;
	rw.offset = 2 * CA_PAGE_SIZE - 8;
	rw.len = 16;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_RW, &rw) == -EINVAL, "RW past the end");
	rw.offset = UINT64_MAX - 4;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_RW, &rw) == -EINVAL, "RW offset overflow");
	rw.offset = 0;
	rw.write = 2;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_RW, &rw) == -EINVAL, "RW write = 2");
	rw.write = 0;
	rw.data_ptr = 16;
	CHECK(raw_ioctl(ct, CENALLOC_TEST_IOC_RW, &rw) == -EFAULT, "RW bad data pointer");
out:
	ca_buf_free(ct, &b);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("CREATE refuses reserved, flags, size 0 and huge sizes", test_create_bad_args),
	TAP_TEST("PHYS, CHECKSUM, FILL refuse bad and foreign fds and flags", test_fd_args),
	TAP_TEST("INFO and SET_DEVICE_MASK refuse bad arguments", test_info_and_mask_args),
	TAP_TEST("the test importer refuses bad arguments", test_importer_bad_args),
};

TAP_MAIN(tests)
