// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * libcenalloc: /dev/cenalloc. One function per ioctl of the UAPI header;
 * each fills the ioctl's struct (reserved fields and flags zero), and
 * returns the driver's answer unchanged.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cenalloc.h>

#include "internal.h"

int cenalloc_ioctl_retry(int fd, unsigned long request, void *arg)
{
	int ret;

	do {
		ret = ioctl(fd, request, arg);
	} while (ret < 0 && errno == EINTR);
	return ret < 0 ? -errno : ret;
}

int cenalloc_open(void)
{
	int fd = open(CENALLOC_DEVICE_PATH, O_RDWR | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

int cenalloc_close(int fd)
{
	/* Linux releases the fd even when close() fails with EINTR. */
	if (close(fd) && errno != EINTR)
		return -errno;
	return 0;
}

int cenalloc_create(int dev, uint64_t size, uint32_t initial_mask,
		    uint32_t flags)
{
	struct cenalloc_create_arg arg;
	int ret;

	memset(&arg, 0, sizeof(arg));
	arg.size = size;
	arg.flags = flags;
	arg.initial_mask = initial_mask;
	arg.fd = -1;
	ret = cenalloc_ioctl_retry(dev, CENALLOC_IOC_CREATE, &arg);
	return ret < 0 ? ret : arg.fd;
}

int cenalloc_info(int dev, struct cenalloc_info_arg *info,
		  struct cenalloc_allocator_info *allocators,
		  uint32_t max_allocators)
{
	unsigned int n;
	int ret;

	if (!info)
		return -EINVAL;
	memset(info, 0, sizeof(*info));
	info->max_allocators = max_allocators;
	info->allocators_ptr = (uintptr_t)allocators;
	ret = cenalloc_ioctl_retry(dev, CENALLOC_IOC_INFO, info);
	if (ret < 0)
		return ret;
	n = info->num_allocators < max_allocators ? info->num_allocators :
						     max_allocators;
	return n > INT_MAX ? INT_MAX : (int)n;
}

int cenalloc_phys(int dev, int buf, uint64_t *addr, uint64_t *len)
{
	struct cenalloc_phys_arg arg;
	int ret;

	memset(&arg, 0, sizeof(arg));
	arg.fd = buf;
	ret = cenalloc_ioctl_retry(dev, CENALLOC_IOC_PHYS, &arg);
	if (ret < 0)
		return ret;
	if (addr)
		*addr = arg.addr;
	if (len)
		*len = arg.len;
	return 0;
}

int cenalloc_set_device_mask(int dev, const char *name, uint32_t mask)
{
	struct cenalloc_device_mask_arg arg;
	size_t n;
	int ret;

	if (!name)
		return -EINVAL;
	n = strnlen(name, sizeof(arg.name));
	if (n == sizeof(arg.name))
		return -ENAMETOOLONG;
	memset(&arg, 0, sizeof(arg));
	memcpy(arg.name, name, n);
	arg.mask = mask;
	ret = cenalloc_ioctl_retry(dev, CENALLOC_IOC_SET_DEVICE_MASK, &arg);
	return ret < 0 ? ret : 0;
}

int cenalloc_checksum(int dev, int buf, uint64_t *checksum, uint64_t *len)
{
	struct cenalloc_checksum_arg arg;
	int ret;

	memset(&arg, 0, sizeof(arg));
	arg.fd = buf;
	ret = cenalloc_ioctl_retry(dev, CENALLOC_IOC_CHECKSUM, &arg);
	if (ret < 0)
		return ret;
	if (checksum)
		*checksum = arg.checksum;
	if (len)
		*len = arg.len;
	return 0;
}

int cenalloc_fill(int dev, int buf, uint64_t seed)
{
	struct cenalloc_fill_arg arg;
	int ret;

	memset(&arg, 0, sizeof(arg));
	arg.fd = buf;
	arg.seed = seed;
	ret = cenalloc_ioctl_retry(dev, CENALLOC_IOC_FILL, &arg);
	return ret < 0 ? ret : 0;
}
