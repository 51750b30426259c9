/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Between cenalloc_heaps.ko (the dma-heaps /dev/dma_heap/cenalloc*,
 * cenalloc_heaps.c) and cenalloc.ko, which allocates for them. Built only
 * where the kernel exports dma_heap_add() to modules (Kbuild defines
 * CENALLOC_HAVE_DMA_HEAPS then).
 *
 * A dma-heap cannot be removed once added, and its device node calls the
 * heap's allocate() in whichever module registered it: the heaps live in a
 * module of their own that is never unloaded, so cenalloc.ko can be. It
 * binds itself at load and unbinds at unload; in between, an allocation
 * holds a reference on cenalloc.ko for its duration.
 */
#ifndef CENALLOC_HEAPS_H
#define CENALLOC_HEAPS_H

#include <linux/types.h>

struct dma_buf;
struct module;

struct cenalloc_heaps_backend {
	struct module *owner;
	/*
	 * A cenalloc dma-buf of @len bytes (page aligned, not 0) for the
	 * caller (its quota), with @initial_mask as CENALLOC_IOC_CREATE's
	 * (0: none); @fd_flags are DMA_HEAP_IOCTL_ALLOC's (access mode,
	 * O_CLOEXEC). ERR_PTR(-ENODEV) when no device is served.
	 */
	struct dma_buf *(*allocate)(u64 len, u32 fd_flags, u32 initial_mask);
};

/* -EBUSY when another backend is bound. */
int cenalloc_heaps_bind(const struct cenalloc_heaps_backend *backend);
/* After it, no allocation reaches @backend. */
void cenalloc_heaps_unbind(const struct cenalloc_heaps_backend *backend);

#endif /* CENALLOC_HEAPS_H */
