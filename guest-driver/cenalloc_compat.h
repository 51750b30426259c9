/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel version differences cenalloc.ko and cenalloc_test.ko build across:
 * Debian's 6.1 LTS, 6.12 and the newest kernel of Debian testing, 7.2 (the
 * matrix of qemu-scripts/test-all). This header, and only this header, knows
 * them; each shim names the release that changed the API.
 */
#ifndef CENALLOC_COMPAT_H
#define CENALLOC_COMPAT_H

#include <linux/atomic.h>
#include <linux/dma-buf.h>
#include <linux/iosys-map.h>
#include <linux/mmzone.h>
#include <linux/module.h>
#include <linux/shrinker.h>
#include <linux/slab.h>
#include <linux/version.h>
#include <linux/virtio_config.h>

/*
 * Symbol namespaces: since 6.13 MODULE_IMPORT_NS() takes a string literal;
 * before, a bare identifier it stringified itself.
 *
 *	MODULE_IMPORT_NS(CENALLOC_NS_DMA_BUF);
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 13, 0)
#define CENALLOC_NS_DMA_BUF "DMA_BUF"
#define CENALLOC_NS_DMA_BUF_HEAP "DMA_BUF_HEAP"
#else
#define CENALLOC_NS_DMA_BUF DMA_BUF
#define CENALLOC_NS_DMA_BUF_HEAP DMA_BUF_HEAP
#endif

/*
 * dma-heaps from a module: dma_heap_add(), dma_heap_get_drvdata() and
 * dma_heap_get_name() exported (namespace DMA_BUF_HEAP) by some kernels
 * only (Debian testing's 7.2; not 6.1 or 6.12). No release number tells:
 * Kbuild looks for dma_heap_add in the kernel's Module.symvers and defines
 * CENALLOC_HAVE_DMA_HEAPS when it is there (cenalloc_heaps.h).
 */

/*
 * The largest order the page allocator hands out, inclusive: MAX_PAGE_ORDER
 * since 6.8. From 6.4 to 6.7 it was MAX_ORDER (inclusive); before 6.4,
 * MAX_ORDER was an exclusive bound (orders 0 .. MAX_ORDER - 1).
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 4, 0)
#define MAX_PAGE_ORDER (MAX_ORDER - 1)
#elif LINUX_VERSION_CODE < KERNEL_VERSION(6, 8, 0)
#define MAX_PAGE_ORDER MAX_ORDER
#endif

/*
 * virtio_find_vqs(): since 6.11 one struct virtqueue_info per queue (name,
 * callback, ctx); before, parallel arrays of callbacks and names.
 * cenalloc_find_vqs() takes the 6.11 form on every kernel.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
static inline int cenalloc_find_vqs(struct virtio_device *vdev,
				    unsigned int nvqs, struct virtqueue *vqs[],
				    struct virtqueue_info vqs_info[])
{
	return virtio_find_vqs(vdev, nvqs, vqs, vqs_info, NULL);
}
#else
struct virtqueue_info {
	const char *name;
	vq_callback_t *callback;
	bool ctx;
};

#define CENALLOC_COMPAT_MAX_VQS 8

static inline int cenalloc_find_vqs(struct virtio_device *vdev,
				    unsigned int nvqs, struct virtqueue *vqs[],
				    struct virtqueue_info vqs_info[])
{
	vq_callback_t *callbacks[CENALLOC_COMPAT_MAX_VQS];
	const char *names[CENALLOC_COMPAT_MAX_VQS];
	unsigned int i;

	if (nvqs > CENALLOC_COMPAT_MAX_VQS)
		return -EINVAL;
	for (i = 0; i < nvqs; i++) {
		if (vqs_info[i].ctx)
			return -EINVAL;
		callbacks[i] = vqs_info[i].callback;
		names[i] = vqs_info[i].name;
	}
	return virtio_find_vqs(vdev, nvqs, vqs, callbacks, names, NULL);
}
#endif

/*
 * The importer's notice that its mappings must go (dma_buf_attach_ops):
 * move_notify, raised by dma_buf_move_notify(), before 7.1;
 * invalidate_mappings, raised by dma_buf_invalidate_mappings(), since (and
 * optional even for dynamic importers). The driver names the member
 * CENALLOC_MOVE_NOTIFY and raises it with cenalloc_dma_buf_move_notify();
 * cenalloc_attachment_revocable() tells whether an attachment's importer
 * has it (before 7.1 every dynamic importer had to).
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(7, 1, 0)
#define CENALLOC_MOVE_NOTIFY invalidate_mappings

static inline void cenalloc_dma_buf_move_notify(struct dma_buf *dmabuf)
{
	dma_buf_invalidate_mappings(dmabuf);
}
#else
#define CENALLOC_MOVE_NOTIFY move_notify

static inline void cenalloc_dma_buf_move_notify(struct dma_buf *dmabuf)
{
	dma_buf_move_notify(dmabuf);
}
#endif

static inline bool
cenalloc_attachment_revocable(const struct dma_buf_attachment *attach)
{
	return attach->importer_ops && attach->importer_ops->CENALLOC_MOVE_NOTIFY;
}

/*
 * Importer-side dma-buf locking: since 6.2 an importer calls the _unlocked
 * forms, which take the reservation lock around the exporter's callback (or
 * the plain forms with the lock held). Before, the plain forms were the only
 * ones; for a non-dynamic importer (cenalloc_test.ko) they took what they
 * needed themselves and did not require the reservation lock, so they stand
 * in for the _unlocked forms. 6.1.55 got the attachment-mapping ones
 * backported (taking the reservation lock like 6.2), not the vmap ones.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 55)
static inline struct sg_table *
dma_buf_map_attachment_unlocked(struct dma_buf_attachment *attach,
				enum dma_data_direction direction)
{
	return dma_buf_map_attachment(attach, direction);
}

static inline void
dma_buf_unmap_attachment_unlocked(struct dma_buf_attachment *attach,
				  struct sg_table *sg_table,
				  enum dma_data_direction direction)
{
	dma_buf_unmap_attachment(attach, sg_table, direction);
}
#endif

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 2, 0)
static inline int dma_buf_vmap_unlocked(struct dma_buf *dmabuf,
					struct iosys_map *map)
{
	return dma_buf_vmap(dmabuf, map);
}

static inline void dma_buf_vunmap_unlocked(struct dma_buf *dmabuf,
					   struct iosys_map *map)
{
	dma_buf_vunmap(dmabuf, map);
}
#endif

/*
 * Shrinkers: since 6.7 allocated by the kernel (shrinker_alloc(),
 * shrinker_register(), shrinker_free()) with a private_data pointer; before,
 * embedded by their owner and registered with register_shrinker() (a name
 * since 6.0), unregistered with unregister_shrinker() (a no-op for one never
 * registered). cenalloc_compat_shrinker_alloc() and friends take the 6.7 form.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
static inline struct shrinker *
cenalloc_compat_shrinker_alloc(const char *name, void *private_data)
{
	struct shrinker *s = shrinker_alloc(0, "%s", name);

	if (s)
		s->private_data = private_data;
	return s;
}

static inline void *cenalloc_compat_shrinker_private(struct shrinker *s)
{
	return s->private_data;
}

static inline void cenalloc_compat_shrinker_register(struct shrinker *s,
						     const char *name)
{
	shrinker_register(s);
}

static inline void cenalloc_compat_shrinker_free(struct shrinker *s)
{
	shrinker_free(s);
}
#else
struct cenalloc_compat_shrinker {
	struct shrinker shrinker;
	void *private_data;
};

static inline struct shrinker *
cenalloc_compat_shrinker_alloc(const char *name, void *private_data)
{
	struct cenalloc_compat_shrinker *cs = kzalloc(sizeof(*cs), GFP_KERNEL);

	if (!cs)
		return NULL;
	cs->private_data = private_data;
	return &cs->shrinker;
}

static inline void *cenalloc_compat_shrinker_private(struct shrinker *s)
{
	return container_of(s, struct cenalloc_compat_shrinker, shrinker)->private_data;
}

static inline void cenalloc_compat_shrinker_register(struct shrinker *s,
						     const char *name)
{
	/* Without it memory pressure only gives nothing back. */
	if (register_shrinker(s, "%s", name))
		pr_warn("cenalloc: no shrinker: pool memory is not given back under pressure\n");
}

static inline void cenalloc_compat_shrinker_free(struct shrinker *s)
{
	if (!s)
		return;
	unregister_shrinker(s);
	kfree(container_of(s, struct cenalloc_compat_shrinker, shrinker));
}
#endif

/*
 * The unbound system workqueue: system_dfl_wq where the kernel has it
 * (Kbuild looks), else its old name, which 7.x warns about.
 */
#ifdef CENALLOC_HAVE_SYSTEM_DFL_WQ
#define cenalloc_unbound_wq system_dfl_wq
#else
#define cenalloc_unbound_wq system_unbound_wq
#endif

#endif /* CENALLOC_COMPAT_H */
