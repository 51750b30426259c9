/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * libcenalloc internals, shared by device.c and heap.c; not installed.
 */
#ifndef LIBCENALLOC_INTERNAL_H
#define LIBCENALLOC_INTERNAL_H

/* ioctl() retried on EINTR: its non-negative result, or -errno. */
int cenalloc_ioctl_retry(int fd, unsigned long request, void *arg)
	__attribute__((visibility("hidden")));

#endif /* LIBCENALLOC_INTERNAL_H */
