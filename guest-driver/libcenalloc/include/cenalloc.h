/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * libcenalloc: the guest's /dev/cenalloc and dma-buf heaps, for programs.
 *
 * The ioctls, their structs and constants are those of the UAPI header
 * <linux/cenalloc.h> (guest-driver/include/uapi/linux/cenalloc.h, installed
 * as <cenalloc/linux/cenalloc.h> and found through pkg-config's Cflags):
 * this header includes it and defines none of them again.
 *
 * Errors: every function returns a negative errno value on failure
 * (-EINVAL, -ENOENT, ...) and a non-negative value on success; errno
 * itself is unspecified after a call. What the driver or the kernel
 * refuses comes back unchanged: the library checks only what it cannot
 * pass on (a NULL pointer it must read or write, a name too long for its
 * struct). The library has no global state, allocates no memory, prints
 * nothing and never exits: every function is thread-safe.
 *
 * See libcenalloc(7) and the page of each function.
 */
#ifndef LIBCENALLOC_CENALLOC_H
#define LIBCENALLOC_CENALLOC_H

#include <stdint.h>

#include <linux/cenalloc.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The device node cenalloc_open() opens. */
#define CENALLOC_DEVICE_PATH	"/dev/cenalloc"
/* Where the kernel puts dma-buf heap nodes (cenalloc_heap_open()). */
#define CENALLOC_HEAP_DIR	"/dev/dma_heap"

/* /dev/cenalloc: an fd (O_RDWR | O_CLOEXEC), or -errno. */
int cenalloc_open(void);
/* Closes any fd this library returned: 0 or -errno (never retry). */
int cenalloc_close(int fd);

/*
 * CENALLOC_IOC_CREATE: a buffer of @size bytes (rounded up to the page
 * size; nothing is allocated before the first map) for devices whose mask
 * is @initial_mask (0: decided by whoever attaches), @flags CENALLOC_CREATE_*.
 * Returns the dma-buf fd or -errno.
 */
int cenalloc_create(int dev, uint64_t size, uint32_t initial_mask,
		    uint32_t flags);

/*
 * CENALLOC_IOC_INFO: fills @info and up to @max_allocators entries of
 * @allocators (may be NULL when @max_allocators is 0). Returns the number
 * of entries written (info->num_allocators tells how many the device
 * has), or -errno.
 */
int cenalloc_info(int dev, struct cenalloc_info_arg *info,
		  struct cenalloc_allocator_info *allocators,
		  uint32_t max_allocators);

/*
 * CENALLOC_IOC_PHYS: the guest-physical range of a contiguous buffer's
 * backing. @addr and @len may be NULL. 0 or -errno.
 */
int cenalloc_phys(int dev, int buf, uint64_t *addr, uint64_t *len);

/*
 * CENALLOC_IOC_SET_DEVICE_MASK: the constraint mask of the in-kernel
 * device @name (its dev_name()) when it attaches with plain
 * dma_buf_attach(); @mask 0 removes the entry. 0 or -errno.
 */
int cenalloc_set_device_mask(int dev, const char *name, uint32_t mask);

/* CENALLOC_IOC_CHECKSUM: the device's FNV-1a 64 of the backing. */
int cenalloc_checksum(int dev, int buf, uint64_t *checksum, uint64_t *len);
/* CENALLOC_IOC_FILL: the device writes the pattern of @seed. */
int cenalloc_fill(int dev, int buf, uint64_t seed);

/*
 * The heap node CENALLOC_HEAP_DIR/@name: an fd (O_RDONLY | O_CLOEXEC), or
 * -errno (-ENOENT when there is no such heap).
 */
int cenalloc_heap_open(const char *name);
/*
 * DMA_HEAP_IOCTL_ALLOC on the heap fd @heap: a dma-buf of @size bytes
 * with @fd_flags (O_RDWR, O_CLOEXEC) and @heap_flags. The fd or -errno.
 */
int cenalloc_heap_alloc(int heap, uint64_t size, uint32_t fd_flags,
			uint64_t heap_flags);

#ifdef __cplusplus
}
#endif

#endif /* LIBCENALLOC_CENALLOC_H */
