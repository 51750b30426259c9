// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * libcenalloc: the dma-buf heap path (linux/dma-heap.h), the one way
 * software written for any heap allocates, including cenalloc's heaps on
 * kernels that let modules add heaps.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/dma-heap.h>

#include <cenalloc.h>

#include "internal.h"

int cenalloc_heap_open(const char *name)
{
	char path[sizeof(CENALLOC_HEAP_DIR) + NAME_MAX + 1];
	int fd;

	/* A name, not a path: nothing outside the heap directory. */
	if (!name || !name[0] || strchr(name, '/') || !strcmp(name, ".") ||
	    !strcmp(name, ".."))
		return -EINVAL;
	if (strnlen(name, NAME_MAX + 1) > NAME_MAX)
		return -ENAMETOOLONG;
	snprintf(path, sizeof(path), "%s/%s", CENALLOC_HEAP_DIR, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int cenalloc_heap_alloc(int heap, uint64_t size, uint32_t fd_flags,
			uint64_t heap_flags)
{
	struct dma_heap_allocation_data data;
	int ret;

	memset(&data, 0, sizeof(data));
	data.len = size;
	data.fd_flags = fd_flags;
	data.heap_flags = heap_flags;
	ret = cenalloc_ioctl_retry(heap, DMA_HEAP_IOCTL_ALLOC, &data);
	return ret < 0 ? ret : (int)data.fd;
}
