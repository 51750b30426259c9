// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc attachments: the dma-buf attach, detach, pin, unpin, map and
 * unmap callbacks, constraint masks, revocation of dynamic importers, and
 * the CPU attachment that pins the backing for mmap and vmap.
 *
 * An attachment's mask is what the importer asked for (cenalloc_api.c) or
 * what the device table holds (cenalloc_devmask.c), narrowed to what the
 * device can address (cenalloc_reach.c). An incompatible attach is refused
 * locally (mask intersection empty: -EINVAL, or -ERANGE when the device
 * cannot address any kind the buffer may use; no mutual mapping type:
 * -EOPNOTSUPP, cenalloc_negotiate.c); what must reach the device goes
 * through cenalloc_batch.c. UNMAP and DETACH wait in the buffer's pending batch.
 * The device validates all.
 *
 * The exporter is dynamic (it has pin/unpin). Linux 6.12 then maps a
 * static importer (dma_buf_attach()) at attach, pinned until its detach;
 * a dynamic importer (dma_buf_dynamic_attach() with move_notify) maps when
 * it wants, under the reservation lock. Without CONFIG_DMABUF_MOVE_NOTIFY
 * the core also pins around each of a dynamic importer's mappings; those
 * pins belong to the mapping and are revoked with it. A pin beyond the
 * mappings (dma_buf_pin()), a static importer's mapping, the CPU
 * attachment (mmap, vmap) and a cenalloc_mapping_attach() importer without
 * move_notify pin the backing.
 *
 * A late attach whose mask the backing does not satisfy (the device would
 * migrate it): refused with -EBUSY while the backing is pinned; otherwise,
 * holding the reservation lock, the exporter calls dma_buf_move_notify()
 * (if a dynamic importer maps it), waits (bounded) for the fences of the
 * buffer (even with nothing to revoke), marks every mapping of the
 * dynamic importers revoked, and sends their UNMAPs in the batch of the
 * ATTACH, so the device sees no mapping and accepts the migration. The
 * next MAP moves the content to the new backing (the device copies it);
 * the importers map again and get the new segments. An importer that maps
 * again from its move_notify would get the old backing, and no second
 * notification: that attach fails with -EBUSY instead. A revoked mapping may
 * stay DMA-mapped until its importer unmaps it: the old backing stays the
 * buffer's until then (struct cenalloc_zombie), and that unmap does no CPU
 * sync.
 */
#include <linux/dma-mapping.h>
#include <linux/dma-resv.h>
#include <linux/jiffies.h>
#include <linux/slab.h>

#include "cenalloc_attach.h"
#include "cenalloc_compat.h"
#include "cenalloc_batch.h"
#include "cenalloc_devmask.h"
#include "cenalloc_negotiate.h"
#include "cenalloc_sg.h"
#include "cenalloc_vq.h"

/* Longest wait for the fences of a buffer before a migration. */
#define CENALLOC_FENCE_WAIT_MS	5000

/*
 * Linux 6.12 without CONFIG_DMABUF_MOVE_NOTIFY calls pin() before each
 * map_dma_buf() of a dynamic importer and unpin() after its unmap (dma-buf.c,
 * dma_buf_map_attachment()): such pins are counted with the mapping.
 */
static bool cenalloc_core_pins_per_map(void)
{
	return !IS_ENABLED(CONFIG_DMABUF_MOVE_NOTIFY);
}

static int cenalloc_direction(enum dma_data_direction dir, u32 *direction)
{
	switch (dir) {
	case DMA_BIDIRECTIONAL:
		*direction = CENALLOC_DIR_BIDIRECTIONAL;
		return 0;
	case DMA_TO_DEVICE:
		*direction = CENALLOC_DIR_TO_DEVICE;
		return 0;
	case DMA_FROM_DEVICE:
		*direction = CENALLOC_DIR_FROM_DEVICE;
		return 0;
	default:
		return -EINVAL;
	}
}

/* ---- cenalloc_mapping_attach() arguments carried through the core ---- */

static void cenalloc_import_move_notify(struct dma_buf_attachment *attach)
{
	const struct cenalloc_import *imp =
		container_of(attach->importer_ops, struct cenalloc_import, ops);

	if (imp->importer_ops)
		imp->importer_ops->CENALLOC_MOVE_NOTIFY(attach);
}

struct cenalloc_import *cenalloc_import_new(const struct dma_buf_attach_ops *ops,
					    u32 kinds, const u32 *types,
					    u32 num_types)
{
	struct cenalloc_import *imp;

	if (!num_types || num_types > CENALLOC_MAX_MAP_TYPES ||
	    (ops && !ops->CENALLOC_MOVE_NOTIFY))
		return ERR_PTR(-EINVAL);
	imp = kzalloc(sizeof(*imp), GFP_KERNEL);
	if (!imp)
		return ERR_PTR(-ENOMEM);
	imp->ops.CENALLOC_MOVE_NOTIFY = cenalloc_import_move_notify;
	imp->ops.allow_peer2peer = ops ? ops->allow_peer2peer : false;
	imp->importer_ops = ops;
	kref_init(&imp->ref);
	imp->kinds = kinds;
	imp->num_types = num_types;
	memcpy(imp->types, types, num_types * sizeof(*types));
	return imp;
}

static void cenalloc_import_free(struct kref *ref)
{
	kfree(container_of(ref, struct cenalloc_import, ref));
}

void cenalloc_import_put(struct cenalloc_import *imp)
{
	if (imp)
		kref_put(&imp->ref, cenalloc_import_free);
}

static struct cenalloc_import *cenalloc_import_of(struct dma_buf_attachment *attach)
{
	if (!attach->importer_ops ||
	    attach->importer_ops->CENALLOC_MOVE_NOTIFY != cenalloc_import_move_notify)
		return NULL;
	return container_of(attach->importer_ops, struct cenalloc_import, ops);
}

/* ---- attachments ---- */

static bool cenalloc_types_physical(const u32 *types, u32 num_types)
{
	u32 i;

	for (i = 0; i < num_types; i++)
		if (types[i] == CENALLOC_MAP_CONTIG)
			return true;
	return false;
}

static struct cenalloc_attachment *
cenalloc_attachment_new(struct cenalloc_buffer *buffer, struct device *dev,
			u32 requested, const u32 *types, u32 num_types)
{
	struct cenalloc_attachment *a;

	if (!num_types || num_types > CENALLOC_MAX_MAP_TYPES)
		return ERR_PTR(-EINVAL);
	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a)
		return ERR_PTR(-ENOMEM);
	a->detach_req = cenalloc_req_alloc(buffer->cdev);
	if (!a->detach_req) {
		kfree(a);
		return ERR_PTR(-ENOMEM);
	}
	a->buffer = buffer;
	a->dev = dev;
	a->requested = requested;
	cenalloc_reach_of(buffer->cdev, dev, &a->reach);
	a->mask = cenalloc_reach_apply(&a->reach, requested,
				       cenalloc_types_physical(types, num_types));
	a->num_types = num_types;
	memcpy(a->types, types, num_types * sizeof(*types));
	INIT_LIST_HEAD(&a->mappings);
	INIT_LIST_HEAD(&a->node);
	strscpy(a->dev_name, dev ? dev_name(dev) : "cpu", sizeof(a->dev_name));
	return a;
}

/* Free an attachment that is not (or no longer) in the buffer's list. */
void cenalloc_attachment_free(struct cenalloc_attachment *a)
{
	cenalloc_req_free(a->detach_req);
	kfree(a);
}

static void cenalloc_access_mask_update(struct cenalloc_buffer *buffer)
{
	struct cenalloc_attachment *a;
	u32 mask = buffer->initial_mask ? buffer->initial_mask :
					  CENALLOC_MASK_ANY;

	list_for_each_entry(a, &buffer->attachments, node)
		if (!a->refused)
			mask &= a->mask;
	buffer->access_mask = mask;
}

/* Does the current backing satisfy @mask (its allocator serves a kind)? */
static bool cenalloc_backing_fits(struct cenalloc_buffer *buffer, u32 mask)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	unsigned int i;

	for (i = 0; i < cdev->num_allocators; i++)
		if (le32_to_cpu(cdev->allocators[i].id) == buffer->allocator_id)
			return le32_to_cpu(cdev->allocators[i].kinds) & mask;
	return true;	/* unknown allocator: the device decides */
}

static bool cenalloc_attachment_pins(struct cenalloc_attachment *a)
{
	unsigned int core_pins = cenalloc_core_pins_per_map() ? a->num_sgts : 0;

	if (!a->revocable && (a->num_maps || a->num_sgts))
		return true;
	return a->pins > core_pins;
}

static bool cenalloc_buffer_pinned(struct cenalloc_buffer *buffer)
{
	struct cenalloc_attachment *a;

	list_for_each_entry(a, &buffer->attachments, node)
		if (cenalloc_attachment_pins(a))
			return true;
	return false;
}

static unsigned int cenalloc_revocable_count(struct cenalloc_buffer *buffer)
{
	struct cenalloc_attachment *a;
	unsigned int n = 0;

	list_for_each_entry(a, &buffer->attachments, node)
		if (a->revocable)
			n += a->num_maps;
	return n;
}

/*
 * A late attach with @mask that the backing does not satisfy: make the
 * device's migration possible (see the top of this file). Called with the
 * reservation lock and buffer->lock held; drops and retakes buffer->lock
 * around move_notify, whose handlers may unmap.
 */
static int cenalloc_make_room(struct cenalloc_buffer *buffer, u32 mask)
{
	struct dma_buf *dmabuf = buffer->dmabuf;
	unsigned int maps;
	bool revoke;
	long left;

	dma_resv_assert_held(dmabuf->resv);
	if (!buffer->backed || !mask || cenalloc_backing_fits(buffer, mask))
		return 0;
	if (cenalloc_buffer_pinned(buffer) ||
	    cenalloc_revocable_count(buffer) >= buffer->cdev->max_batch)
		return -EBUSY;	/* pinned, or more UNMAPs than one batch */
	revoke = cenalloc_revocable_count(buffer);

	/*
	 * The fences are waited for even with nothing to revoke: an importer
	 * may have unmapped while its job still runs, and the migration
	 * copies and then frees the old pages.
	 */
	maps = buffer->revocable_maps;
	mutex_unlock(&buffer->lock);
	if (revoke)
		cenalloc_dma_buf_move_notify(dmabuf);
	left = dma_resv_wait_timeout(dmabuf->resv, DMA_RESV_USAGE_BOOKKEEP,
				     true,
				     msecs_to_jiffies(CENALLOC_FENCE_WAIT_MS));
	mutex_lock(&buffer->lock);
	if (left < 0)
		return left;
	if (!left)
		return -ETIMEDOUT;
	/*
	 * A dynamic importer mapped while we held the reservation lock: from
	 * its move_notify (allowed, the lock is held), so after it was told.
	 * That mapping is of the backing about to go, and no notification
	 * would follow its revocation: the importer would keep using pages
	 * the migration frees. Migrate nothing; its mapping stays good.
	 */
	if (buffer->revocable_maps != maps)
		return -EBUSY;
	/* mmap and vmap do not take the reservation lock: look again. */
	if (cenalloc_buffer_pinned(buffer))
		return -EBUSY;
	return 0;
}

/* A mapping whose UNMAP travels in the batch of a late ATTACH. */
struct cenalloc_revoke {
	struct cenalloc_attachment *a;
	struct cenalloc_mapping *m;
};

/*
 * Add an UNMAP of every device mapping of the dynamic importers to @req;
 * @rv[] records them. They count as revoked only once the device has
 * run their UNMAP (cenalloc_revoke_commit()).
 */
static int cenalloc_revoke_prepare(struct cenalloc_buffer *buffer,
				   struct cenalloc_req *req,
				   struct cenalloc_revoke *rv, unsigned int max,
				   unsigned int *n)
{
	struct cenalloc_attachment *a;
	struct cenalloc_mapping *m;
	u32 direction;
	int ret;

	*n = 0;
	list_for_each_entry(a, &buffer->attachments, node) {
		if (!a->revocable)
			continue;
		list_for_each_entry(m, &a->mappings, node) {
			if (m->revoked)
				continue;
			if (*n == max)
				return -EBUSY;
			direction = CENALLOC_DIR_BIDIRECTIONAL;
			cenalloc_direction(m->dir, &direction);
			ret = cenalloc_req_add_unmap(req, a, direction);
			if (ret)
				return ret;
			rv[(*n)++] = (struct cenalloc_revoke){ .a = a, .m = m };
		}
	}
	return 0;
}

/* Mark revoked the mappings whose UNMAP (command i of @req) succeeded. */
static void cenalloc_revoke_commit(struct cenalloc_req *req,
				   struct cenalloc_revoke *rv, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		if (cenalloc_req_status(req, i))
			continue;
		rv[i].m->revoked = true;
		rv[i].a->num_maps--;
		rv[i].a->revoked++;
	}
}

/*
 * ATTACH @a to a buffer with backing; when the backing must move, the
 * UNMAPs of the revoked mappings run first in the same batch.
 */
static int cenalloc_attach_late(struct cenalloc_buffer *buffer,
				struct cenalloc_attachment *a)
{
	u32 max = buffer->cdev->max_batch - 1;
	struct cenalloc_revoke *rv = NULL;
	struct cenalloc_req *req;
	unsigned int n = 0;
	int ret = 0;

	req = cenalloc_req_alloc(buffer->cdev);
	if (!req)
		return -ENOMEM;
	if (!cenalloc_backing_fits(buffer, buffer->access_mask & a->mask) &&
	    cenalloc_revocable_count(buffer)) {
		rv = kmalloc_array(max, sizeof(*rv), GFP_KERNEL);
		ret = rv ? cenalloc_revoke_prepare(buffer, req, rv, max, &n) :
			   -ENOMEM;
	}
	if (!ret)
		ret = cenalloc_attach_sync(buffer, a, req);
	cenalloc_revoke_commit(req, rv, n);
	cenalloc_req_free(req);
	kfree(rv);
	return ret;
}

/*
 * Check @a against the buffer locally and add it. With @defer, or while the
 * buffer has no backing, the device hears of it at the next map. Called
 * with buffer->lock held, and the reservation lock unless @defer.
 */
static int cenalloc_attachment_add(struct cenalloc_buffer *buffer,
				   struct cenalloc_attachment *a, bool defer)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	u32 access_mask;
	int ret;

	lockdep_assert_held(&buffer->lock);
	ret = cenalloc_dev_usable(cdev);
	if (ret)
		return ret;
	if (!(buffer->access_mask &
	      cenalloc_reach_wanted(&a->reach, a->requested,
				    cenalloc_types_physical(a->types,
							    a->num_types))))
		return -EINVAL;
	if (!(buffer->access_mask & a->mask)) {
		dev_info_ratelimited(a->dev,
				     "cenalloc: buffer %u: kinds 0x%x, device reaches 0x%x (DMA limit 0x%llx): cannot attach\n",
				     buffer->buffer_id, buffer->access_mask,
				     a->reach.kinds, a->reach.dma_limit);
		return -ERANGE;
	}
	if (cdev->max_attachments &&
	    buffer->num_attachments >= cdev->max_attachments)
		return -ENOSPC;
	if (buffer->backed && !defer) {
		/* Only the device knows whether the backing migrates. */
		ret = cenalloc_make_room(buffer, buffer->access_mask & a->mask);
		if (!ret)
			ret = cenalloc_dev_usable(cdev);
		if (ret)
			return ret;
		ret = cenalloc_attach_late(buffer, a);
		if (ret)
			return ret;
	} else {
		ret = cenalloc_negotiate(buffer, buffer->access_mask & a->mask,
					 a->types, a->num_types, &a->map_type);
		if (ret)
			return ret;
	}
	access_mask = buffer->access_mask & a->mask;
	if (a->map_type == CENALLOC_MAP_CONTIG)
		buffer->contiguous_promised = true;
	list_add_tail(&a->node, &buffer->attachments);
	buffer->num_attachments++;
	buffer->access_mask = access_mask;
	return 0;
}

int cenalloc_dmabuf_attach(struct dma_buf *dmabuf,
			   struct dma_buf_attachment *attach)
{
	static const u32 plain_types[] = { CENALLOC_MAP_SG };
	struct cenalloc_buffer *buffer = dmabuf->priv;
	struct cenalloc_import *imp = cenalloc_import_of(attach);
	struct cenalloc_attachment *a;
	u32 requested;
	bool resv;
	int ret;

	if (imp) {
		requested = imp->kinds ? imp->kinds :
					 cenalloc_device_mask(attach->dev);
		a = cenalloc_attachment_new(buffer, attach->dev, requested,
					    imp->types, imp->num_types);
	} else {
		a = cenalloc_attachment_new(buffer, attach->dev,
					    cenalloc_device_mask(attach->dev),
					    plain_types,
					    ARRAY_SIZE(plain_types));
	}
	if (IS_ERR(a))
		return PTR_ERR(a);
	a->api = imp;
	a->revocable = imp ? !!imp->importer_ops :
			     cenalloc_attachment_revocable(attach);

	/*
	 * Only a late attach (the buffer has backing) may revoke mappings and
	 * needs the reservation lock, which comes before buffer->lock.
	 */
	resv = READ_ONCE(buffer->backed);
retry:
	if (resv)
		dma_resv_lock(dmabuf->resv, NULL);
	ret = mutex_lock_killable(&buffer->lock);
	if (ret)
		goto out_resv;
	if (buffer->backed && !resv) {
		mutex_unlock(&buffer->lock);
		resv = true;
		goto retry;
	}
	ret = cenalloc_attachment_add(buffer, a, false);
	if (!ret) {
		if (imp) {
			kref_get(&imp->ref);
			a->import = imp;
		}
		attach->priv = a;
	}
	mutex_unlock(&buffer->lock);
out_resv:
	if (resv)
		dma_resv_unlock(dmabuf->resv);
	if (ret)
		cenalloc_attachment_free(a);
	return ret;
}

/*
 * Unlink @a from its buffer. Returns its DETACH, ready to post (in order,
 * under the buffer lock), or NULL when the device does not know @a.
 */
struct cenalloc_req *cenalloc_attachment_release(struct cenalloc_attachment *a)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_req *req = a->detach_req;
	struct cenalloc_detach_req *dr;

	lockdep_assert_held(&buffer->lock);
	list_del_init(&a->node);
	buffer->num_attachments--;
	cenalloc_access_mask_update(buffer);
	a->detach_req = NULL;
	if (!req || !a->attach_id) {
		cenalloc_req_free(req);
		return NULL;
	}
	dr = cenalloc_req_add(req, CENALLOC_CMD_DETACH, sizeof(*dr), 0);
	if (WARN_ON_ONCE(IS_ERR(dr))) {
		cenalloc_req_free(req);
		return NULL;
	}
	dr->attach_id = cpu_to_le32(a->attach_id);
	return req;
}

void cenalloc_dmabuf_detach(struct dma_buf *dmabuf,
			    struct dma_buf_attachment *attach)
{
	struct cenalloc_buffer *buffer = dmabuf->priv;
	struct cenalloc_attachment *a = attach->priv;
	struct cenalloc_req *req;

	mutex_lock(&buffer->lock);
	WARN_ONCE(!list_empty(&a->mappings),
		  "cenalloc: %s detached with mappings outstanding\n",
		  a->dev_name);
	req = cenalloc_attachment_release(a);
	if (req)
		cenalloc_buffer_defer(buffer, req);
	mutex_unlock(&buffer->lock);
	cenalloc_import_put(a->import);
	cenalloc_attachment_free(a);
}

int cenalloc_dmabuf_pin(struct dma_buf_attachment *attach)
{
	struct cenalloc_attachment *a = attach->priv;

	dma_resv_assert_held(attach->dmabuf->resv);
	mutex_lock(&a->buffer->lock);
	a->pins++;
	mutex_unlock(&a->buffer->lock);
	return 0;
}

void cenalloc_dmabuf_unpin(struct dma_buf_attachment *attach)
{
	struct cenalloc_attachment *a = attach->priv;

	dma_resv_assert_held(attach->dmabuf->resv);
	mutex_lock(&a->buffer->lock);
	if (!WARN_ON_ONCE(!a->pins))
		a->pins--;
	mutex_unlock(&a->buffer->lock);
}

struct sg_table *cenalloc_map_dma_buf(struct dma_buf_attachment *attach,
				      enum dma_data_direction dir)
{
	struct cenalloc_attachment *a = attach->priv;
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_mapping *m;
	u32 direction;
	int ret;

	ret = cenalloc_direction(dir, &direction);
	if (ret)
		return ERR_PTR(ret);
	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return ERR_PTR(-ENOMEM);
	m->dir = dir;
	m->unmap_req = cenalloc_req_alloc(buffer->cdev);
	if (!m->unmap_req) {
		ret = -ENOMEM;
		goto err_free;
	}

	ret = mutex_lock_killable(&buffer->lock);
	if (ret)
		goto err_free;
	ret = cenalloc_attachment_map(a, direction, &m->unmap_req);
	if (ret)
		goto err_unlock;
	/* buffer->backing: the checked segments of the accepted answer. */
	ret = cenalloc_sgt_build(&m->sgt, buffer->backing, buffer->num_backing,
				 a->reach.max_seg, a->reach.seg_boundary);
	if (ret)
		goto err_unmap;
	ret = dma_map_sgtable(attach->dev, &m->sgt, dir, 0);
	if (ret)
		goto err_free_sgt;
	list_add_tail(&m->node, &a->mappings);
	a->num_sgts++;
	mutex_unlock(&buffer->lock);
	return &m->sgt;

err_free_sgt:
	sg_free_table(&m->sgt);
err_unmap:
	a->num_maps--;
	cenalloc_post_unmap(a, direction, &m->unmap_req);
err_unlock:
	mutex_unlock(&buffer->lock);
err_free:
	cenalloc_req_free(m->unmap_req);
	kfree(m);
	return ERR_PTR(ret);
}

void cenalloc_unmap_dma_buf(struct dma_buf_attachment *attach,
			    struct sg_table *sgt, enum dma_data_direction dir)
{
	struct cenalloc_mapping *m = container_of(sgt, struct cenalloc_mapping,
						  sgt);
	struct cenalloc_attachment *a = attach->priv;
	struct cenalloc_buffer *buffer = a->buffer;
	u32 direction = CENALLOC_DIR_BIDIRECTIONAL;

	cenalloc_direction(m->dir, &direction);
	/*
	 * A revoked mapping's content is stale: no CPU sync (a swiotlb bounce
	 * copy) into the pages it was made of. Revocation and unmap both run
	 * under the reservation lock, so m->revoked holds still here.
	 */
	dma_unmap_sgtable(attach->dev, sgt, m->dir,
			  m->revoked ? DMA_ATTR_SKIP_CPU_SYNC : 0);
	mutex_lock(&buffer->lock);
	list_del(&m->node);
	a->num_sgts--;
	if (!m->revoked) {	/* a revoked one is unmapped on the device */
		a->num_maps--;
		/* Posted under the lock: it reaches the device before a DETACH. */
		cenalloc_post_unmap(a, direction, &m->unmap_req);
	} else if (m->zombie) {
		/* The backing it was made of moved: let it go with the last. */
		cenalloc_zombie_put(buffer, m->zombie);
	}
	mutex_unlock(&buffer->lock);
	cenalloc_req_free(m->unmap_req);
	sg_free_table(sgt);
	kfree(m);
}

/* Pin the backing for CPU access through the internal CPU attachment
 * (mask: any kind, type SG). It stays mapped until the buffer is released,
 * so the backing cannot migrate under a user or kernel mapping (a later
 * incompatible attach gets -EBUSY); its UNMAP is allocated before the map.
 */
int cenalloc_buffer_cpu_map(struct cenalloc_buffer *buffer)
{
	static const u32 cpu_types[] = { CENALLOC_MAP_SG };
	struct cenalloc_attachment *a = buffer->cpu_attach;
	int ret;

	lockdep_assert_held(&buffer->lock);
	if (a && a->num_maps)
		return 0;
	if (!buffer->cpu_unmap_req) {
		buffer->cpu_unmap_req = cenalloc_req_alloc(buffer->cdev);
		if (!buffer->cpu_unmap_req)
			return -ENOMEM;
	}
	if (!a) {
		a = cenalloc_attachment_new(buffer, NULL, CENALLOC_MASK_ANY,
					    cpu_types, ARRAY_SIZE(cpu_types));
		if (IS_ERR(a))
			return PTR_ERR(a);
		ret = cenalloc_attachment_add(buffer, a, true);
		if (ret) {
			cenalloc_attachment_free(a);
			return ret;
		}
		buffer->cpu_attach = a;
	}
	ret = cenalloc_attachment_map(a, CENALLOC_DIR_BIDIRECTIONAL,
				      &buffer->cpu_unmap_req);
	if (ret && !a->attach_id) {
		/* Not on the device: nothing to DETACH. */
		cenalloc_attachment_release(a);
		buffer->cpu_attach = NULL;
		cenalloc_attachment_free(a);
	}
	return ret;
}
