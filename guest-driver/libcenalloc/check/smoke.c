// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * Host-side check of an installed libcenalloc (qemu-scripts/check-libcenalloc):
 * compiled with `pkg-config --cflags --libs cenalloc` only, it proves that
 * the installed headers (the library's and the UAPI one) and library are
 * found, and checks the errors the library gives where no /dev/cenalloc
 * exists: its own (-EINVAL, -ENAMETOOLONG) and the kernel's, unchanged
 * (-EBADF, -ENOTTY, -ENOENT). TAP output; exit status 1 on a failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cenalloc.h>

static int tests, failures;

static void expect(int got, int want, const char *what)
{
	bool ok = got == want;

	tests++;
	if (!ok)
		failures++;
	printf("%s %d - %s: %d (%s)", ok ? "ok" : "not ok", tests, what, got,
	       got < 0 ? strerror(-got) : "success");
	if (!ok)
		printf(", expected %d (%s)", want, want < 0 ? strerror(-want) : "success");
	printf("\n");
}

int main(void)
{
	struct cenalloc_allocator_info allocators[2];
	struct cenalloc_info_arg info;
	char long_name[CENALLOC_DEVICE_NAME_LEN + 1];
	char long_heap[300];
	int null_fd, want;

	memset(long_name, 'x', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	memset(long_heap, 'h', sizeof(long_heap) - 1);
	long_heap[sizeof(long_heap) - 1] = '\0';
	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null_fd < 0) {
		perror("/dev/null");
		return 1;
	}

	/* The device node: what open(2) says, unchanged. */
	want = access(CENALLOC_DEVICE_PATH, F_OK) ? -errno : 0;
	if (want) {
		expect(cenalloc_open(), want, "cenalloc_open without " CENALLOC_DEVICE_PATH);
	} else {
		int fd = cenalloc_open();

		expect(fd >= 0 || fd == -EACCES ? 0 : fd, 0, "cenalloc_open");
		if (fd >= 0)
			expect(cenalloc_close(fd), 0, "cenalloc_close");
	}

	/* The kernel's errors pass through. */
	expect(cenalloc_create(-1, 4096, 0, CENALLOC_CREATE_RDWR), -EBADF,
	       "cenalloc_create on fd -1");
	expect(cenalloc_create(null_fd, 4096, 0, CENALLOC_CREATE_RDWR), -ENOTTY,
	       "cenalloc_create on /dev/null");
	expect(cenalloc_info(-1, &info, allocators, 2), -EBADF, "cenalloc_info on fd -1");
	expect(cenalloc_info(null_fd, &info, NULL, 0), -ENOTTY, "cenalloc_info on /dev/null");
	expect(cenalloc_phys(-1, 0, NULL, NULL), -EBADF, "cenalloc_phys on fd -1");
	expect(cenalloc_checksum(null_fd, 0, NULL, NULL), -ENOTTY,
	       "cenalloc_checksum on /dev/null");
	expect(cenalloc_fill(-1, 0, 1), -EBADF, "cenalloc_fill on fd -1");
	expect(cenalloc_set_device_mask(-1, "vgem", CENALLOC_KIND_SYSTEM), -EBADF,
	       "cenalloc_set_device_mask on fd -1");
	expect(cenalloc_heap_alloc(-1, 4096, O_RDWR | O_CLOEXEC, 0), -EBADF,
	       "cenalloc_heap_alloc on fd -1");
	expect(cenalloc_heap_alloc(null_fd, 4096, O_RDWR | O_CLOEXEC, 0), -ENOTTY,
	       "cenalloc_heap_alloc on /dev/null");
	expect(cenalloc_heap_open("cenalloc-no-such-heap"), -ENOENT,
	       "cenalloc_heap_open of a missing heap");
	expect(cenalloc_close(-1), -EBADF, "cenalloc_close(-1)");

	/* What the library refuses itself. */
	expect(cenalloc_info(null_fd, NULL, NULL, 0), -EINVAL, "cenalloc_info(NULL)");
	expect(cenalloc_set_device_mask(null_fd, NULL, 1), -EINVAL,
	       "cenalloc_set_device_mask(NULL)");
	expect(cenalloc_set_device_mask(null_fd, long_name, 1), -ENAMETOOLONG,
	       "cenalloc_set_device_mask of a 64-byte name");
	expect(cenalloc_heap_open(NULL), -EINVAL, "cenalloc_heap_open(NULL)");
	expect(cenalloc_heap_open(""), -EINVAL, "cenalloc_heap_open(\"\")");
	expect(cenalloc_heap_open("."), -EINVAL, "cenalloc_heap_open(\".\")");
	expect(cenalloc_heap_open(".."), -EINVAL, "cenalloc_heap_open(\"..\")");
	expect(cenalloc_heap_open("../null"), -EINVAL, "cenalloc_heap_open(\"../null\")");
	expect(cenalloc_heap_open(long_heap), -ENAMETOOLONG,
	       "cenalloc_heap_open of a 299-byte name");

	close(null_fd);
	printf("1..%d\n", tests);
	return failures ? 1 : 0;
}
