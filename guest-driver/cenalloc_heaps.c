// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc_heaps.ko: cenalloc's dma-heaps, /dev/dma_heap/<name>, for the
 * software that allocates shared buffers from heaps (gralloc, libcamera,
 * GStreamer, compositors). DMA_HEAP_IOCTL_ALLOC returns a cenalloc dma-buf
 * made by cenalloc.ko exactly as CENALLOC_IOC_CREATE makes it: the same
 * exporter, limits and per-user quota (charged to the caller's effective
 * uid), and the same delayed allocation (memory is taken at the first
 * map, mmap or CPU access, not at ALLOC). One heap per initial mask:
 *
 *   cenalloc              none: whoever attaches first constrains it
 *   cenalloc-contig       physically contiguous (CONTIG, CONTIG_DMA32)
 *   cenalloc-dma32        below 4 GiB (DMA32, CONTIG_DMA32)
 *   cenalloc-contig-dma32 both (CONTIG_DMA32)
 *
 * The dma-heap core offers no way to remove a heap, and its nodes call
 * the registering module's code: this module registers the heaps once, at
 * load, and has no exit (it cannot be unloaded). cenalloc.ko binds itself
 * as the backend at load and unbinds at unload (cenalloc_heaps.h); an
 * ALLOC while no cenalloc.ko is loaded, or while no device is bound to it,
 * fails with -ENODEV.
 */
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/err.h>
#include <linux/fcntl.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/mutex.h>

#include <uapi/linux/cenalloc.h>
#include <uapi/linux/dma-heap.h>

#include "cenalloc_compat.h"
#include "cenalloc_heaps.h"

struct cenalloc_heap_kind {
	const char *name;
	u32 mask;
};

static const struct cenalloc_heap_kind cenalloc_heap_kinds[] = {
	{ "cenalloc", 0 },
	{ "cenalloc-contig", CENALLOC_KIND_CONTIG | CENALLOC_KIND_CONTIG_DMA32 },
	{ "cenalloc-dma32", CENALLOC_KIND_DMA32 | CENALLOC_KIND_CONTIG_DMA32 },
	{ "cenalloc-contig-dma32", CENALLOC_KIND_CONTIG_DMA32 },
};

static DEFINE_MUTEX(cenalloc_heaps_lock);
static const struct cenalloc_heaps_backend *cenalloc_heaps_backend;

int cenalloc_heaps_bind(const struct cenalloc_heaps_backend *backend)
{
	int ret = 0;

	mutex_lock(&cenalloc_heaps_lock);
	if (cenalloc_heaps_backend)
		ret = -EBUSY;
	else
		cenalloc_heaps_backend = backend;
	mutex_unlock(&cenalloc_heaps_lock);
	return ret;
}
EXPORT_SYMBOL_GPL(cenalloc_heaps_bind);

void cenalloc_heaps_unbind(const struct cenalloc_heaps_backend *backend)
{
	mutex_lock(&cenalloc_heaps_lock);
	if (cenalloc_heaps_backend == backend)
		cenalloc_heaps_backend = NULL;
	mutex_unlock(&cenalloc_heaps_lock);
}
EXPORT_SYMBOL_GPL(cenalloc_heaps_unbind);

static struct dma_buf *cenalloc_heap_allocate(struct dma_heap *heap,
					      unsigned long len, u32 fd_flags,
					      u64 heap_flags)
{
	const struct cenalloc_heap_kind *kind = dma_heap_get_drvdata(heap);
	const struct cenalloc_heaps_backend *backend;
	struct dma_buf *dmabuf;

	/* The core checks these too: unknown bits never reach cenalloc. */
	if (fd_flags & ~DMA_HEAP_VALID_FD_FLAGS ||
	    heap_flags & ~DMA_HEAP_VALID_HEAP_FLAGS || !len)
		return ERR_PTR(-EINVAL);

	mutex_lock(&cenalloc_heaps_lock);
	backend = cenalloc_heaps_backend;
	/* cenalloc.ko is going away: unbind follows. */
	if (backend && !try_module_get(backend->owner))
		backend = NULL;
	mutex_unlock(&cenalloc_heaps_lock);
	if (!backend)
		return ERR_PTR(-ENODEV);

	dmabuf = backend->allocate(len, fd_flags, kind->mask);
	module_put(backend->owner);
	return dmabuf;
}

static const struct dma_heap_ops cenalloc_heap_ops = {
	.allocate = cenalloc_heap_allocate,
};

static int __init cenalloc_heaps_init(void)
{
	struct dma_heap_export_info exp_info = { .ops = &cenalloc_heap_ops };
	unsigned int i, added = 0;
	struct dma_heap *heap;

	for (i = 0; i < ARRAY_SIZE(cenalloc_heap_kinds); i++) {
		exp_info.name = cenalloc_heap_kinds[i].name;
		exp_info.priv = (void *)&cenalloc_heap_kinds[i];
		heap = dma_heap_add(&exp_info);
		if (IS_ERR(heap)) {
			pr_warn("cenalloc_heaps: no heap %s: %ld\n",
				exp_info.name, PTR_ERR(heap));
			continue;
		}
		added++;
	}
	/* With a heap added, this module must stay: it has no exit. */
	return added ? 0 : -ENODEV;
}

module_init(cenalloc_heaps_init);

MODULE_DESCRIPTION("dma-heaps of cenalloc (stays loaded: heaps cannot be removed)");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(CENALLOC_NS_DMA_BUF_HEAP);
