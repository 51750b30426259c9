// SPDX-License-Identifier: GPL-2.0
/*
 * libcenalloc (guest-driver/libcenalloc) against the real device: each
 * function does what its ioctl does, and every error of the driver or the
 * kernel comes back unchanged (the test makes the same call with a raw
 * ioctl and compares), besides the library's own (-EINVAL, -ENAMETOOLONG).
 * The heap path: the kernel's system heap where the kernel has heaps
 * (-ENOENT where it has none), and every heap cenalloc.ko registers.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/dma-heap.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cenalloc.h>

#include "cenalloc_util.h"
#include "tap.h"

#define DEV_ANY		0
#define DEV_CONTIG	1
#define SIZE		(64 * CA_KIB)
#define SEED		0x11bca110cull

static const char *err_name(int ret)
{
	return ret < 0 ? strerror(-ret) : "success";
}

/* CREATE with a raw ioctl: the fd, or -errno. */
static int raw_create(int ca, uint64_t size, uint32_t mask, uint32_t flags)
{
	struct cenalloc_create_arg arg = {
		.size = size, .flags = flags, .initial_mask = mask, .fd = -1,
	};
	int ret = ca_ioctl(ca, CENALLOC_IOC_CREATE, &arg);

	return ret < 0 ? ret : arg.fd;
}

/*
 * The library's CREATE and the raw ioctl's give the same outcome (both
 * fail with the same errno, or both succeed); returns the library's.
 */
static int same_create(int ca, uint64_t size, uint32_t mask, uint32_t flags,
		       const char *what)
{
	int lib = cenalloc_create(ca, size, mask, flags);
	int raw = raw_create(ca, size, mask, flags);

	CHECK((lib < 0 && lib == raw) || (lib >= 0 && raw >= 0),
	      "%s: library %s, ioctl %s", what, err_name(lib), err_name(raw));
	if (lib >= 0)
		close(lib);
	if (raw >= 0)
		close(raw);
	return lib < 0 ? lib : 0;
}

static enum tap_result test_open_info(void)
{
	struct cenalloc_allocator_info lib_alloc[CA_MAX_ALLOCATORS];
	struct cenalloc_info_arg info;
	struct ca_pool raw;
	int ca, n, ret;
	uint32_t i;

	ca = cenalloc_open();
	if (!CHECK(ca >= 0, "cenalloc_open: %s", err_name(ca)))
		return TAP_FAIL;
	CHECK(fcntl(ca, F_GETFD) & FD_CLOEXEC, "device fd without FD_CLOEXEC");
	CHECK((fcntl(ca, F_GETFL) & O_ACCMODE) == O_RDWR, "device fd not O_RDWR");
	if (!CHECK(ca_pool_read(ca, &raw) == 0, "raw INFO"))
		goto out;
	memset(&info, 0xa5, sizeof(info));
	n = cenalloc_info(ca, &info, lib_alloc, CA_MAX_ALLOCATORS);
	if (!CHECK(n >= 1 && (uint32_t)n == raw.count, "cenalloc_info: %d entries, raw INFO %u",
		   n, raw.count))
		goto out;
	CHECK(info.version == raw.info.version && info.num_allocators == raw.info.num_allocators &&
	      info.max_buffer_size == raw.info.max_buffer_size &&
	      info.max_buffers == raw.info.max_buffers &&
	      info.num_exporter_types == raw.info.num_exporter_types,
	      "cenalloc_info and raw INFO disagree on the device");
	for (i = 0; i < raw.count; i++)
		CHECK(lib_alloc[i].id == raw.alloc[i].id &&
		      lib_alloc[i].kinds == raw.alloc[i].kinds &&
		      lib_alloc[i].placement == raw.alloc[i].placement &&
		      !strncmp(lib_alloc[i].name, raw.alloc[i].name, CENALLOC_NAME_LEN),
		      "allocator %u: library %.16s, raw %.16s", i, lib_alloc[i].name,
		      raw.alloc[i].name);
	/* Fewer entries than the device has: only those are written. */
	memset(lib_alloc, 0, sizeof(lib_alloc));
	n = cenalloc_info(ca, &info, lib_alloc, 1);
	CHECK(n == 1 && lib_alloc[1].id == 0 && !lib_alloc[1].name[0] &&
	      info.num_allocators == raw.info.num_allocators,
	      "cenalloc_info with room for 1: %d, %u allocators", n, info.num_allocators);
	n = cenalloc_info(ca, &info, NULL, 0);
	CHECK(n == 0 && info.num_allocators == raw.info.num_allocators,
	      "cenalloc_info with no room: %d, %u allocators", n, info.num_allocators);
	/* The library's own error, and the driver's unchanged. */
	ret = cenalloc_info(ca, NULL, NULL, 0);
	CHECK(ret == -EINVAL, "cenalloc_info(NULL): %s, expected EINVAL", err_name(ret));
	ret = cenalloc_info(ca, &info, (void *)16, 2);
	CHECK(ret == -EFAULT, "cenalloc_info with a bad array: %s, expected EFAULT",
	      err_name(ret));
	ret = cenalloc_info(-1, &info, NULL, 0);
	CHECK(ret == -EBADF, "cenalloc_info(-1): %s, expected EBADF", err_name(ret));
out:
	CHECK(cenalloc_close(ca) == 0, "cenalloc_close");
	ret = cenalloc_close(ca);
	CHECK(ret == -EBADF, "cenalloc_close twice: %s, expected EBADF", err_name(ret));
	return TAP_PASS;
}

static enum tap_result test_create(void)
{
	struct cenalloc_info_arg a, b;
	int ca, fd, ro = -1;

	ca = cenalloc_open();
	if (!CHECK(ca >= 0, "cenalloc_open: %s", err_name(ca)))
		return TAP_FAIL;
	if (!CHECK(cenalloc_info(ca, &a, NULL, 0) == 0, "INFO"))
		goto out;
	fd = cenalloc_create(ca, SIZE - 1, 0, CENALLOC_CREATE_RDWR | CENALLOC_CREATE_CLOEXEC);
	if (!CHECK(fd >= 0, "cenalloc_create: %s", err_name(fd)))
		goto out;
	CHECK(ca_buf_size(fd) == SIZE, "size %lld, expected %llu (rounded up)",
	      (long long)ca_buf_size(fd), SIZE);
	CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "CENALLOC_CREATE_CLOEXEC: no FD_CLOEXEC");
	CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR, "CENALLOC_CREATE_RDWR: not O_RDWR");
	ro = cenalloc_create(ca, SIZE, CENALLOC_KIND_SYSTEM, 0);
	if (CHECK(ro >= 0, "cenalloc_create read-only: %s", err_name(ro))) {
		CHECK(!(fcntl(ro, F_GETFD) & FD_CLOEXEC), "flags 0: FD_CLOEXEC set");
		CHECK((fcntl(ro, F_GETFL) & O_ACCMODE) == O_RDONLY, "flags 0: not O_RDONLY");
	}
	if (CHECK(cenalloc_info(ca, &b, NULL, 0) == 0, "INFO"))
		CHECK(b.num_buffers == a.num_buffers + 2, "live buffers %u -> %u, expected +2",
		      a.num_buffers, b.num_buffers);
	CHECK(cenalloc_close(fd) == 0, "cenalloc_close(buffer)");
	if (ro >= 0)
		CHECK(cenalloc_close(ro) == 0, "cenalloc_close(read-only buffer)");
	if (CHECK(cenalloc_info(ca, &b, NULL, 0) == 0, "INFO"))
		CHECK(b.num_buffers == a.num_buffers, "live buffers %u after the closes, %u before",
		      b.num_buffers, a.num_buffers);
out:
	cenalloc_close(ca);
	return TAP_PASS;
}

static enum tap_result test_create_errors(void)
{
	struct ca_pool before, after;
	int ca, buf = -1, ret;

	ca = cenalloc_open();
	if (!CHECK(ca >= 0, "cenalloc_open: %s", err_name(ca)))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	ret = same_create(ca, 0, 0, CENALLOC_CREATE_RDWR, "size 0");
	CHECK(ret == -EINVAL, "size 0: %s, expected EINVAL", err_name(ret));
	ret = same_create(ca, SIZE, 0, CENALLOC_CREATE_RDWR | (1u << 7), "unknown flag");
	CHECK(ret == -EINVAL, "unknown flag: %s, expected EINVAL", err_name(ret));
	ret = same_create(ca, before.info.max_buffer_size + CA_PAGE_SIZE, 0, 0,
			  "max_buffer_size + 4 KiB");
	CHECK(ret == -E2BIG || ret == -EINVAL, "max_buffer_size + 4 KiB: %s", err_name(ret));
	ret = same_create(ca, UINT64_MAX, 0, 0, "size 2^64-1");
	CHECK(ret < 0, "size 2^64-1: %s", err_name(ret));
	/* Mask bits no allocator serves: the library passes them on. */
	same_create(ca, SIZE, 1u << 31, CENALLOC_CREATE_RDWR, "initial mask bit 31");
	same_create(ca, SIZE, CENALLOC_MASK_ANY, CENALLOC_CREATE_RDWR, "initial mask ANY");
	ret = cenalloc_create(-1, SIZE, 0, 0);
	CHECK(ret == -EBADF, "device fd -1: %s, expected EBADF", err_name(ret));
	buf = cenalloc_create(ca, SIZE, 0, CENALLOC_CREATE_RDWR);
	if (CHECK(buf >= 0, "create: %s", err_name(buf))) {
		ret = same_create(buf, SIZE, 0, 0, "a dma-buf as the device");
		CHECK(ret == -ENOTTY, "a dma-buf as the device: %s, expected ENOTTY",
		      err_name(ret));
		close(buf);
	}
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "the creates changed the pool");
out:
	cenalloc_close(ca);
	return TAP_PASS;
}

/* PHYS through the library and through the raw ioctl agree. */
static int same_phys(int ca, int buf, uint64_t *addr, uint64_t *len, const char *what)
{
	struct cenalloc_phys_arg arg = { .fd = buf };
	int raw = ca_ioctl(ca, CENALLOC_IOC_PHYS, &arg);
	int lib = cenalloc_phys(ca, buf, addr, len);

	CHECK(lib == raw, "PHYS of %s: library %s, ioctl %s", what, err_name(lib),
	      err_name(raw));
	if (!lib && !raw)
		CHECK(*addr == arg.addr && *len == arg.len, "PHYS of %s: library and ioctl differ",
		      what);
	return lib;
}

static enum tap_result test_backing_calls(void)
{
	static struct ct_mapping ro_map;
	struct ca_buf c = { .fd = -1 };
	uint64_t addr = 0, len = 0, sum = 0, hashed = 0;
	int ca, ct, fresh = -1, cpu = -1, ro = -1, pipes[2] = { -1, -1 }, ret;
	uint32_t ro_handle = 0;
	struct ca_pool pool;
	uint8_t *p;

	if (!ca_env_open_device(&ca, &ct, DEV_ANY, CENALLOC_MASK_ANY))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	/* Before the first map: the driver's ENODATA, unchanged. */
	fresh = cenalloc_create(ca, SIZE, 0, CENALLOC_CREATE_RDWR);
	if (!CHECK(fresh >= 0, "create: %s", err_name(fresh)))
		goto out;
	ret = same_phys(ca, fresh, &addr, &len, "a new buffer");
	CHECK(ret == -ENODATA, "PHYS of a new buffer: %s, expected ENODATA", err_name(ret));
	ret = cenalloc_checksum(ca, fresh, &sum, &hashed);
	CHECK(ret == -ENODATA, "CHECKSUM of a new buffer: %s, expected ENODATA", err_name(ret));
	ret = cenalloc_fill(ca, fresh, SEED);
	CHECK(ret == -ENODATA, "FILL of a new buffer: %s, expected ENODATA", err_name(ret));

	/*
	 * Backed through the CPU (mmap allocates; no importer's mapping that
	 * swiotlb=force would bounce over the FILL): FILL, the guest's view,
	 * the device's CHECKSUM.
	 */
	cpu = cenalloc_create(ca, SIZE, 0, CENALLOC_CREATE_RDWR | CENALLOC_CREATE_CLOEXEC);
	if (!CHECK(cpu >= 0, "create: %s", err_name(cpu)))
		goto out;
	p = ca_mmap(cpu, SIZE);
	if (!CHECK(p, "mmap: %s", strerror(errno)))
		goto out;
	ca_cpu_access(cpu, true);
	memset(p, 0x5a, CA_PAGE_SIZE);
	ca_cpu_access(cpu, false);
	ret = cenalloc_fill(ca, cpu, SEED);
	if (CHECK(ret == 0, "cenalloc_fill: %s", err_name(ret))) {
		uint64_t guest;

		ca_cpu_access(cpu, true);
		CHECK(ca_pattern_check(p, SIZE, SEED) == SIZE, "the FILL pattern differs at %zu",
		      ca_pattern_check(p, SIZE, SEED));
		guest = ca_fnv1a64(p, SIZE);
		ca_cpu_access(cpu, false);
		ret = cenalloc_checksum(ca, cpu, &sum, &hashed);
		CHECK(ret == 0 && sum == guest && hashed == SIZE,
		      "cenalloc_checksum: %s, %016llx over %llu bytes, guest %016llx",
		      err_name(ret), (unsigned long long)sum, (unsigned long long)hashed,
		      (unsigned long long)guest);
	}
	munmap(p, SIZE);
	ret = cenalloc_checksum(ca, cpu, NULL, NULL);
	CHECK(ret == 0, "cenalloc_checksum without outputs: %s", err_name(ret));
	ret = same_phys(ca, cpu, &addr, &len, "a backed buffer");
	CHECK(ret == 0 || ret == -ENODEV, "PHYS of a backed buffer: %s", err_name(ret));
	if (!ret)
		CHECK(len == SIZE, "PHYS length %llu, expected %llu", (unsigned long long)len,
		      SIZE);

	/* A contiguous buffer, where the pool has contiguous memory. */
	if (ca_pool_find_kind(&pool, CENALLOC_KIND_CONTIG) >= 0) {
		if (CHECK(ct_set_device1(ct, DEV_CONTIG, CENALLOC_KIND_CONTIG, 0) == 0,
			  "SET_DEVICE")) {
			ret = ca_buf_alloc(ca, ct, SIZE, DEV_CONTIG, &c);
			if (CHECK(ret == 0, "contiguous alloc: %s", err_name(ret))) {
				ret = same_phys(ca, c.fd, &addr, &len, "a contiguous buffer");
				CHECK(ret == 0 && len == SIZE,
				      "PHYS of a contiguous buffer: %s, %llu bytes",
				      err_name(ret), (unsigned long long)len);
				CHECK(cenalloc_phys(ca, c.fd, NULL, NULL) == 0,
				      "cenalloc_phys without outputs");
			}
		}
	} else {
		tap_diag("no CONTIG allocator: PHYS of a contiguous buffer not tried");
	}

	/* The driver's errors, unchanged. */
	if (pipe(pipes) == 0) {
		ret = same_phys(ca, pipes[0], &addr, &len, "a pipe");
		CHECK(ret == -EINVAL, "PHYS of a pipe: %s, expected EINVAL", err_name(ret));
		ret = cenalloc_checksum(ca, pipes[0], &sum, &hashed);
		CHECK(ret == -EINVAL, "CHECKSUM of a pipe: %s, expected EINVAL", err_name(ret));
		ret = cenalloc_fill(ca, pipes[1], SEED);
		CHECK(ret == -EINVAL, "FILL of a pipe: %s, expected EINVAL", err_name(ret));
	}
	ret = same_phys(ca, -1, &addr, &len, "fd -1");
	CHECK(ret == -EBADF, "PHYS of fd -1: %s, expected EBADF", err_name(ret));
	ret = cenalloc_fill(ca, -1, SEED);
	CHECK(ret == -EBADF, "FILL of fd -1: %s, expected EBADF", err_name(ret));
	ret = cenalloc_checksum(-1, cpu, &sum, &hashed);
	CHECK(ret == -EBADF, "CHECKSUM on device fd -1: %s, expected EBADF", err_name(ret));
	ret = cenalloc_phys(cpu, cpu, &addr, &len);
	CHECK(ret == -ENOTTY, "PHYS with a dma-buf as the device: %s, expected ENOTTY",
	      err_name(ret));
	/* FILL needs a buffer open for writing, CHECKSUM one for reading. */
	ro = cenalloc_create(ca, SIZE, 0, 0);
	if (CHECK(ro >= 0, "read-only create: %s", err_name(ro)) &&
	    CHECK(ct_attach(ct, ro, DEV_ANY, &ro_handle, NULL) == 0, "attach") &&
	    CHECK(ct_map(ct, ro_handle, 0, &ro_map) == 0, "map")) {
		ret = cenalloc_fill(ca, ro, SEED);
		CHECK(ret == -EBADF, "FILL of a read-only buffer: %s, expected EBADF",
		      err_name(ret));
		ret = cenalloc_checksum(ca, ro, &sum, &hashed);
		CHECK(ret == 0, "CHECKSUM of a read-only buffer: %s", err_name(ret));
	}
out:
	if (ro_handle) {
		ct_unmap(ct, ro_handle);
		ct_detach(ct, ro_handle);
	}
	ca_close(&ro);
	ca_close(&pipes[0]);
	ca_close(&pipes[1]);
	ca_close(&fresh);
	ca_close(&cpu);
	ca_buf_free(ct, &c);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

static enum tap_result test_set_device_mask(void)
{
	static const char name[] = "libcenalloc-selftest";
	char longest[CENALLOC_DEVICE_NAME_LEN], too_long[CENALLOC_DEVICE_NAME_LEN + 1];
	struct cenalloc_device_mask_arg arg = { .mask = (1u << 31) | CENALLOC_KIND_SYSTEM };
	int ca, ret, raw;

	memset(longest, 'l', sizeof(longest) - 1);
	longest[sizeof(longest) - 1] = '\0';
	memset(too_long, 't', sizeof(too_long) - 1);
	too_long[sizeof(too_long) - 1] = '\0';
	ca = cenalloc_open();
	if (!CHECK(ca >= 0, "cenalloc_open: %s", err_name(ca)))
		return TAP_FAIL;
	/* Unknown mask bits reach the driver (which keeps them). */
	strcpy(arg.name, name);
	raw = ca_ioctl(ca, CENALLOC_IOC_SET_DEVICE_MASK, &arg);
	ret = cenalloc_set_device_mask(ca, name, arg.mask);
	CHECK(ret == raw && ret == 0, "mask with bit 31: library %s, ioctl %s", err_name(ret),
	      err_name(raw));
	ret = cenalloc_set_device_mask(ca, name, 0);
	CHECK(ret == 0, "remove: %s", err_name(ret));
	ret = cenalloc_set_device_mask(ca, longest, CENALLOC_KIND_DMA32);
	CHECK(ret == 0, "a 63-byte name: %s", err_name(ret));
	ret = cenalloc_set_device_mask(ca, longest, 0);
	CHECK(ret == 0, "remove the 63-byte name: %s", err_name(ret));
	/* Removing an entry that does not exist succeeds (the driver's rule). */
	memset(&arg, 0, sizeof(arg));
	strcpy(arg.name, name);
	raw = ca_ioctl(ca, CENALLOC_IOC_SET_DEVICE_MASK, &arg);
	ret = cenalloc_set_device_mask(ca, name, 0);
	CHECK(ret == raw, "removing a missing entry: library %s, ioctl %s", err_name(ret),
	      err_name(raw));
	/* The driver's EINVAL, the library's own errors. */
	ret = cenalloc_set_device_mask(ca, "", CENALLOC_KIND_SYSTEM);
	CHECK(ret == -EINVAL, "empty name: %s, expected EINVAL", err_name(ret));
	ret = cenalloc_set_device_mask(ca, NULL, CENALLOC_KIND_SYSTEM);
	CHECK(ret == -EINVAL, "NULL name: %s, expected EINVAL", err_name(ret));
	ret = cenalloc_set_device_mask(ca, too_long, CENALLOC_KIND_SYSTEM);
	CHECK(ret == -ENAMETOOLONG, "a 64-byte name: %s, expected ENAMETOOLONG", err_name(ret));
	ret = cenalloc_set_device_mask(-1, name, CENALLOC_KIND_SYSTEM);
	CHECK(ret == -EBADF, "device fd -1: %s, expected EBADF", err_name(ret));
	cenalloc_close(ca);
	return TAP_PASS;
}

/* DMA_HEAP_IOCTL_ALLOC with a raw ioctl: the fd, or -errno. */
static int raw_heap_alloc(int heap, uint64_t size, uint32_t fd_flags, uint64_t heap_flags)
{
	struct dma_heap_allocation_data data = {
		.len = size, .fd_flags = fd_flags, .heap_flags = heap_flags,
	};
	int ret = ca_ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &data);

	return ret < 0 ? ret : (int)data.fd;
}

static int same_heap_alloc(int heap, uint64_t size, uint32_t fd_flags, uint64_t heap_flags,
			   const char *what)
{
	int lib = cenalloc_heap_alloc(heap, size, fd_flags, heap_flags);
	int raw = raw_heap_alloc(heap, size, fd_flags, heap_flags);

	CHECK((lib < 0 && lib == raw) || (lib >= 0 && raw >= 0),
	      "%s: library %s, ioctl %s", what, err_name(lib), err_name(raw));
	if (lib >= 0)
		close(lib);
	if (raw >= 0)
		close(raw);
	return lib < 0 ? lib : 0;
}

static enum tap_result test_heap_system(void)
{
	struct stat st;
	int heap, buf, ca, ret;
	bool exists = stat(CENALLOC_HEAP_DIR "/system", &st) == 0;

	heap = cenalloc_heap_open("system");
	if (!exists) {
		CHECK(heap == -ENOENT, "no %s/system: cenalloc_heap_open gives %s, expected ENOENT",
		      CENALLOC_HEAP_DIR, err_name(heap));
		tap_diag("this kernel has no system heap: only the ENOENT path checked");
		return TAP_PASS;
	}
	if (!CHECK(heap >= 0, "cenalloc_heap_open(system): %s", err_name(heap)))
		return TAP_FAIL;
	CHECK(fcntl(heap, F_GETFD) & FD_CLOEXEC, "heap fd without FD_CLOEXEC");
	buf = cenalloc_heap_alloc(heap, SIZE, O_RDWR | O_CLOEXEC, 0);
	if (CHECK(buf >= 0, "cenalloc_heap_alloc: %s", err_name(buf))) {
		CHECK(ca_buf_size(buf) == SIZE, "heap buffer of %lld bytes",
		      (long long)ca_buf_size(buf));
		CHECK(fcntl(buf, F_GETFD) & FD_CLOEXEC, "O_CLOEXEC: no FD_CLOEXEC");
		CHECK((fcntl(buf, F_GETFL) & O_ACCMODE) == O_RDWR, "O_RDWR: not O_RDWR");
		/* Not a cenalloc buffer: the driver's EINVAL, unchanged. */
		ca = cenalloc_open();
		if (CHECK(ca >= 0, "cenalloc_open: %s", err_name(ca))) {
			ret = cenalloc_phys(ca, buf, NULL, NULL);
			CHECK(ret == -EINVAL, "PHYS of a system-heap buffer: %s, expected EINVAL",
			      err_name(ret));
			/* /dev/cenalloc is no heap: the kernel's ENOTTY. */
			ret = same_heap_alloc(ca, SIZE, O_RDWR, 0, "ALLOC on /dev/cenalloc");
			CHECK(ret == -ENOTTY, "ALLOC on /dev/cenalloc: %s, expected ENOTTY",
			      err_name(ret));
			cenalloc_close(ca);
		}
		cenalloc_close(buf);
	}
	/* The kernel's errors, unchanged. */
	ret = same_heap_alloc(heap, SIZE, O_RDWR | O_APPEND, 0, "fd_flags O_APPEND");
	CHECK(ret == -EINVAL, "fd_flags O_APPEND: %s, expected EINVAL", err_name(ret));
	ret = same_heap_alloc(heap, SIZE, O_RDWR, 1, "heap_flags 1");
	CHECK(ret == -EINVAL, "heap_flags 1: %s, expected EINVAL", err_name(ret));
	ret = same_heap_alloc(heap, 0, O_RDWR, 0, "size 0");
	CHECK(ret == -EINVAL, "size 0: %s, expected EINVAL", err_name(ret));
	ret = cenalloc_heap_alloc(-1, SIZE, O_RDWR, 0);
	CHECK(ret == -EBADF, "heap fd -1: %s, expected EBADF", err_name(ret));
	cenalloc_close(heap);
	return TAP_PASS;
}

static enum tap_result test_heap_names(void)
{
	static const char *const bad[] = { "", ".", "..", "../cenalloc", "system/" };
	char too_long[300];
	unsigned int i;
	int ret;

	for (i = 0; i < TAP_ARRAY_SIZE(bad); i++) {
		ret = cenalloc_heap_open(bad[i]);
		CHECK(ret == -EINVAL, "heap name \"%s\": %s, expected EINVAL", bad[i],
		      err_name(ret));
	}
	ret = cenalloc_heap_open(NULL);
	CHECK(ret == -EINVAL, "heap name NULL: %s, expected EINVAL", err_name(ret));
	memset(too_long, 'h', sizeof(too_long) - 1);
	too_long[sizeof(too_long) - 1] = '\0';
	ret = cenalloc_heap_open(too_long);
	CHECK(ret == -ENAMETOOLONG, "299-byte heap name: %s, expected ENAMETOOLONG",
	      err_name(ret));
	ret = cenalloc_heap_open("cenalloc-no-such-heap");
	CHECK(ret == -ENOENT, "a missing heap: %s, expected ENOENT", err_name(ret));
	return TAP_PASS;
}

/*
 * Every heap cenalloc.ko registers (kernels that let modules add heaps)
 * gives cenalloc dma-bufs: CHECKSUM knows them (no EINVAL).
 */
static enum tap_result test_heap_cenalloc(void)
{
	unsigned int heaps = 0;
	struct dirent *d;
	int ca, heap, buf, ret;
	DIR *dir;

	ca = cenalloc_open();
	if (!CHECK(ca >= 0, "cenalloc_open: %s", err_name(ca)))
		return TAP_FAIL;
	dir = opendir(CENALLOC_HEAP_DIR);
	while (dir && (d = readdir(dir))) {
		if (strncmp(d->d_name, "cenalloc", 8))
			continue;
		heaps++;
		heap = cenalloc_heap_open(d->d_name);
		if (!CHECK(heap >= 0, "cenalloc_heap_open(%s): %s", d->d_name, err_name(heap)))
			continue;
		buf = cenalloc_heap_alloc(heap, SIZE, O_RDWR | O_CLOEXEC, 0);
		if (CHECK(buf >= 0, "cenalloc_heap_alloc(%s): %s", d->d_name, err_name(buf))) {
			ret = cenalloc_checksum(ca, buf, NULL, NULL);
			CHECK(ret == 0 || ret == -ENODATA,
			      "CHECKSUM of a buffer of heap %s: %s, expected success or ENODATA",
			      d->d_name, err_name(ret));
			cenalloc_close(buf);
		}
		cenalloc_close(heap);
	}
	if (dir)
		closedir(dir);
	tap_diag("%u cenalloc heaps in %s", heaps, CENALLOC_HEAP_DIR);
	cenalloc_close(ca);
	return TAP_PASS;
}

#define THREADS		4
#define ROUNDS		64

struct thread_arg {
	int ca;
	int failures;
};

static void *thread_run(void *data)
{
	struct thread_arg *t = data;
	struct cenalloc_info_arg info;
	int i, fd;

	for (i = 0; i < ROUNDS; i++) {
		fd = cenalloc_create(t->ca, CA_PAGE_SIZE, 0,
				     CENALLOC_CREATE_RDWR | CENALLOC_CREATE_CLOEXEC);
		if (fd < 0 || cenalloc_info(t->ca, &info, NULL, 0) != 0 ||
		    ca_buf_size(fd) != CA_PAGE_SIZE)
			t->failures++;
		if (fd >= 0 && cenalloc_close(fd))
			t->failures++;
	}
	return NULL;
}

static enum tap_result test_threads(void)
{
	struct thread_arg args[THREADS];
	pthread_t threads[THREADS];
	struct ca_pool before, after;
	int ca, i, started = 0;

	ca = cenalloc_open();
	if (!CHECK(ca >= 0, "cenalloc_open: %s", err_name(ca)))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	for (i = 0; i < THREADS; i++) {
		args[i].ca = ca;
		args[i].failures = 0;
		if (!CHECK(pthread_create(&threads[i], NULL, thread_run, &args[i]) == 0,
			   "pthread_create"))
			break;
		started++;
	}
	for (i = 0; i < started; i++) {
		pthread_join(threads[i], NULL);
		CHECK(args[i].failures == 0, "thread %d: %d of %d rounds failed", i,
		      args[i].failures, ROUNDS);
	}
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "the pool changed");
out:
	cenalloc_close(ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("cenalloc_open and cenalloc_info agree with INFO", test_open_info),
	TAP_TEST("cenalloc_create: size, fd flags, live buffers", test_create),
	TAP_TEST("cenalloc_create passes the driver's errors on", test_create_errors),
	TAP_TEST("cenalloc_phys, _checksum, _fill on new, mapped and foreign fds",
		 test_backing_calls),
	TAP_TEST("cenalloc_set_device_mask: masks, names, errors", test_set_device_mask),
	TAP_TEST("cenalloc_heap_open and _alloc on the system heap", test_heap_system),
	TAP_TEST("cenalloc_heap_open refuses names that are not a heap's", test_heap_names),
	TAP_TEST("every cenalloc heap gives cenalloc dma-bufs", test_heap_cenalloc),
	TAP_TEST("the library from several threads at once", test_threads),
};

TAP_MAIN(tests)
