// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc buffers: the dma-buf exporter.
 *
 * A buffer is first only a size and a mask: CREATE reaches the device with
 * the first map (see cenalloc_attach.c). CPU access (mmap, vmap) needs
 * backing: it maps the buffer through an internal CPU attachment (mask: any
 * kind, type SG) that stays mapped until the buffer is released, so the
 * backing is allocated if it was not, and can never migrate away from under
 * a CPU mapping (a later incompatible attach gets -EBUSY).
 * The exporter is dynamic (pin/unpin): see cenalloc_attach.c for what that
 * means for static and dynamic importers and for migration.
 * begin/end_cpu_access send SYNC (END waits in the buffer's pending batch)
 * and sync every DMA mapping for the CPU or the device. PHYS, FILL and
 * CHECKSUM need backing (-ENODATA otherwise).
 *
 * mmap and vmap use buffer->backing only: the segments of the last MAP
 * answer cenalloc_batch.c accepted (inside the donated pools, exactly the
 * buffer's size, unchanged while anything maps it); PHYS and CHECKSUM
 * answers must agree with it. Release never fails and never waits for the
 * device (only, for buffer->lock, for a call on the buffer that may, within
 * timeout_ms): its UNMAP, DETACH and FREE were allocated with the objects (struct
 * cenalloc_buffer) and are posted behind the commands waiting in the
 * buffer's pending batch (cenalloc_batch.c). CREATE charges the caller's uid
 * (cenalloc_quota.c) until release.
 */
#include <linux/dma-mapping.h>
#include <linux/fcntl.h>
#include <linux/iosys-map.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "cenalloc_attach.h"
#include "cenalloc_batch.h"
#include "cenalloc_buffer.h"
#include "cenalloc_lease.h"
#include "cenalloc_pool.h"
#include "cenalloc_quota.h"
#include "cenalloc_vq.h"

static unsigned int cenalloc_size_limit_mb;
module_param_named(size_limit_mb, cenalloc_size_limit_mb, uint, 0644);
MODULE_PARM_DESC(size_limit_mb,
		 "Largest buffer in MiB (0: the device's limit only)");

static unsigned int cenalloc_buffer_limit;
module_param_named(buffer_limit, cenalloc_buffer_limit, uint, 0644);
MODULE_PARM_DESC(buffer_limit,
		 "Most buffers alive at once (0: the device's limit only)");

/* Run one command on the device and copy its answer into @resp. */
static int cenalloc_buffer_call(struct cenalloc_buffer *buffer, u16 opcode,
				const void *payload, u32 len, void *resp,
				u32 resp_len)
{
	struct cenalloc_req *req;
	u32 got;
	void *p;
	int ret;

	req = cenalloc_req_alloc(buffer->cdev);
	if (!req)
		return -ENOMEM;
	p = cenalloc_req_add(req, opcode, len, resp_len);
	if (IS_ERR(p)) {
		ret = PTR_ERR(p);
		goto out;
	}
	memcpy(p, payload, len);
	cenalloc_buffer_flush(buffer);	/* what the buffer posted goes first */
	ret = cenalloc_req_submit(req);
	if (!ret)
		ret = cenalloc_req_status(req, 0);
	if (ret || !resp_len)
		goto out;
	p = cenalloc_req_resp(req, 0, &got);
	if (got < resp_len) {
		cenalloc_answer_rejected(buffer->cdev);
		ret = -EIO;
		goto out;
	}
	memcpy(resp, p, resp_len);
out:
	cenalloc_req_free(req);
	return ret;
}

/*
 * PHYS: the answer must be the one segment of the backing the driver
 * checked and knows, so it never reveals any other address.
 */
int cenalloc_buffer_phys(struct cenalloc_buffer *buffer, u64 *addr, u64 *len)
{
	struct cenalloc_phys_req pr = {};
	struct cenalloc_phys_resp resp;
	int ret;

	ret = mutex_lock_killable(&buffer->lock);
	if (ret)
		return ret;
	if (!buffer->backed) {
		ret = -ENODATA;
		goto out;
	}
	pr.buffer_id = cpu_to_le32(buffer->buffer_id);
	ret = cenalloc_buffer_call(buffer, CENALLOC_CMD_PHYS, &pr, sizeof(pr),
				   &resp, sizeof(resp));
	if (ret)
		goto out;
	*addr = le64_to_cpu(resp.addr);
	*len = le64_to_cpu(resp.len);
	if (buffer->num_backing != 1 ||
	    *addr != le64_to_cpu(buffer->backing[0].addr) ||
	    *len != le64_to_cpu(buffer->backing[0].len)) {
		cenalloc_answer_rejected(buffer->cdev);
		pr_warn_ratelimited("cenalloc: buffer %u: device answer rejected: PHYS [%#llx +%#llx] is not its backing\n",
				    buffer->buffer_id, *addr, *len);
		ret = -EIO;
	}
out:
	mutex_unlock(&buffer->lock);
	return ret;
}

int cenalloc_buffer_fill(struct cenalloc_buffer *buffer, u64 seed)
{
	struct cenalloc_fill_req fr = {};
	int ret;

	ret = mutex_lock_killable(&buffer->lock);
	if (ret)
		return ret;
	if (!buffer->backed) {
		ret = -ENODATA;
		goto out;
	}
	fr.buffer_id = cpu_to_le32(buffer->buffer_id);
	fr.seed = cpu_to_le64(seed);
	ret = cenalloc_buffer_call(buffer, CENALLOC_CMD_FILL, &fr, sizeof(fr),
				   NULL, 0);
out:
	mutex_unlock(&buffer->lock);
	return ret;
}

int cenalloc_buffer_checksum(struct cenalloc_buffer *buffer, u64 *sum,
			     u64 *len)
{
	struct cenalloc_checksum_req cr = {};
	struct cenalloc_checksum_resp resp;
	int ret;

	ret = mutex_lock_killable(&buffer->lock);
	if (ret)
		return ret;
	if (!buffer->backed) {
		ret = -ENODATA;
		goto out;
	}
	cr.buffer_id = cpu_to_le32(buffer->buffer_id);
	ret = cenalloc_buffer_call(buffer, CENALLOC_CMD_CHECKSUM, &cr,
				   sizeof(cr), &resp, sizeof(resp));
	if (!ret && le64_to_cpu(resp.len) != buffer->size) {
		cenalloc_answer_rejected(buffer->cdev);
		pr_warn_ratelimited("cenalloc: buffer %u: device answer rejected: CHECKSUM of %llu bytes\n",
				    buffer->buffer_id, le64_to_cpu(resp.len));
		ret = -EIO;
	}
	if (!ret) {
		*sum = le64_to_cpu(resp.checksum);
		*len = le64_to_cpu(resp.len);
	}
out:
	mutex_unlock(&buffer->lock);
	return ret;
}

static int cenalloc_dmabuf_mmap(struct dma_buf *dmabuf,
				struct vm_area_struct *vma)
{
	struct cenalloc_buffer *buffer = dmabuf->priv;
	unsigned long uaddr = vma->vm_start;
	unsigned long left = vma_pages(vma);
	unsigned long skip = vma->vm_pgoff;
	unsigned long seg_pages, n;
	unsigned int i;
	u64 addr;
	int ret;

	if (skip > buffer->size >> PAGE_SHIFT ||
	    left > (buffer->size >> PAGE_SHIFT) - skip)
		return -EINVAL;

	ret = mutex_lock_killable(&buffer->lock);
	if (ret)
		return ret;
	/* buffer->backing holds checked pool memory of exactly the size. */
	ret = cenalloc_buffer_cpu_map(buffer);
	if (ret)
		goto out;
	for (i = 0; i < buffer->num_backing && left; i++) {
		addr = le64_to_cpu(buffer->backing[i].addr);
		seg_pages = le64_to_cpu(buffer->backing[i].len) >> PAGE_SHIFT;
		if (skip >= seg_pages) {
			skip -= seg_pages;
			continue;
		}
		n = min(seg_pages - skip, left);
		ret = remap_pfn_range(vma, uaddr, PHYS_PFN(addr) + skip,
				      n << PAGE_SHIFT, vma->vm_page_prot);
		if (ret)
			goto out;
		uaddr += n << PAGE_SHIFT;
		left -= n;
		skip = 0;
	}
out:
	mutex_unlock(&buffer->lock);
	return ret;
}

static int cenalloc_dmabuf_vmap(struct dma_buf *dmabuf, struct iosys_map *map)
{
	struct cenalloc_buffer *buffer = dmabuf->priv;
	unsigned long npages = buffer->size >> PAGE_SHIFT;
	unsigned long p = 0, k, seg_pages, pfn;
	struct page **pages;
	unsigned int i;
	int ret = 0;

	ret = mutex_lock_killable(&buffer->lock);
	if (ret)
		return ret;
	if (buffer->vmap_count)
		goto out_mapped;
	ret = cenalloc_buffer_cpu_map(buffer);
	if (ret)
		goto out_unlock;
	pages = kvmalloc_array(npages, sizeof(*pages), GFP_KERNEL);
	if (!pages) {
		ret = -ENOMEM;
		goto out_unlock;
	}
	for (i = 0; i < buffer->num_backing; i++) {
		pfn = PHYS_PFN(le64_to_cpu(buffer->backing[i].addr));
		seg_pages = le64_to_cpu(buffer->backing[i].len) >> PAGE_SHIFT;
		for (k = 0; k < seg_pages && p < npages; k++)
			pages[p++] = pfn_to_page(pfn + k);
	}
	if (WARN_ON_ONCE(p != npages)) {
		kvfree(pages);
		ret = -EIO;
		goto out_unlock;
	}
	buffer->vaddr = vmap(pages, npages, VM_MAP, PAGE_KERNEL);
	kvfree(pages);
	if (!buffer->vaddr) {
		ret = -ENOMEM;
		goto out_unlock;
	}
out_mapped:
	buffer->vmap_count++;
	iosys_map_set_vaddr(map, buffer->vaddr);
out_unlock:
	mutex_unlock(&buffer->lock);
	return ret;
}

static void cenalloc_dmabuf_vunmap(struct dma_buf *dmabuf,
				   struct iosys_map *map)
{
	struct cenalloc_buffer *buffer = dmabuf->priv;

	mutex_lock(&buffer->lock);
	if (!WARN_ON(!buffer->vmap_count) && !--buffer->vmap_count) {
		vunmap(buffer->vaddr);
		buffer->vaddr = NULL;
	}
	mutex_unlock(&buffer->lock);
	iosys_map_clear(map);
}

static u32 cenalloc_sync_flags(enum dma_data_direction dir)
{
	switch (dir) {
	case DMA_TO_DEVICE:
		return CENALLOC_SYNC_WRITE;
	case DMA_FROM_DEVICE:
		return CENALLOC_SYNC_READ;
	default:
		return CENALLOC_SYNC_READ | CENALLOC_SYNC_WRITE;
	}
}

/* Sync every DMA mapping of every attachment for the CPU or the device. */
static void cenalloc_sync_mappings(struct cenalloc_buffer *buffer, bool for_cpu)
{
	struct cenalloc_attachment *a;
	struct cenalloc_mapping *m;

	list_for_each_entry(a, &buffer->attachments, node) {
		if (!a->dev)
			continue;
		list_for_each_entry(m, &a->mappings, node) {
			if (m->revoked)
				continue;
			if (for_cpu)
				dma_sync_sgtable_for_cpu(a->dev, &m->sgt, m->dir);
			else
				dma_sync_sgtable_for_device(a->dev, &m->sgt,
							    m->dir);
		}
	}
}

static int cenalloc_dmabuf_begin_cpu_access(struct dma_buf *dmabuf,
					    enum dma_data_direction dir)
{
	struct cenalloc_buffer *buffer = dmabuf->priv;
	struct cenalloc_sync_req sr = {};
	int ret;

	ret = mutex_lock_killable(&buffer->lock);
	if (ret)
		return ret;
	if (!buffer->backed)
		goto out;	/* nothing was ever written: nothing to sync */
	cenalloc_sync_mappings(buffer, true);
	sr.buffer_id = cpu_to_le32(buffer->buffer_id);
	sr.flags = cpu_to_le32(CENALLOC_SYNC_BEGIN | cenalloc_sync_flags(dir));
	ret = cenalloc_buffer_call(buffer, CENALLOC_CMD_SYNC, &sr, sizeof(sr),
				   NULL, 0);
out:
	mutex_unlock(&buffer->lock);
	return ret;
}

/*
 * The end of CPU access never fails for the device's sake: SYNC END only
 * tells the device, so it joins the buffer's pending batch when the device
 * can take it, and is skipped when it cannot (removed, broken, no memory).
 */
static int cenalloc_dmabuf_end_cpu_access(struct dma_buf *dmabuf,
					  enum dma_data_direction dir)
{
	struct cenalloc_buffer *buffer = dmabuf->priv;
	struct cenalloc_sync_req *sr;

	mutex_lock(&buffer->lock);
	if (!buffer->backed)
		goto out;
	cenalloc_sync_mappings(buffer, false);
	if (cenalloc_dev_usable(buffer->cdev))
		goto out;
	sr = cenalloc_buffer_post_cmd(buffer, CENALLOC_CMD_SYNC, sizeof(*sr));
	if (IS_ERR(sr))
		goto out;
	sr->buffer_id = cpu_to_le32(buffer->buffer_id);
	sr->flags = cpu_to_le32(CENALLOC_SYNC_END | cenalloc_sync_flags(dir));
out:
	mutex_unlock(&buffer->lock);
	return 0;
}

/*
 * Revoked mappings still listed that were made of the current backing
 * (buffer->lock held): while there are some, a migration keeps the old
 * backing (struct cenalloc_zombie).
 */
unsigned int cenalloc_buffer_revoked_live(struct cenalloc_buffer *buffer)
{
	struct cenalloc_attachment *a;
	struct cenalloc_mapping *m;
	unsigned int n = 0;

	lockdep_assert_held(&buffer->lock);
	list_for_each_entry(a, &buffer->attachments, node)
		list_for_each_entry(m, &a->mappings, node)
			if (m->revoked && !m->zombie)
				n++;
	return n;
}

/*
 * The backing is moving (buffer->lock held): @z keeps the old one, still
 * owned (unless loose) and counted, for the revoked mappings made of it.
 */
void cenalloc_zombie_add(struct cenalloc_buffer *buffer,
			 struct cenalloc_zombie *z)
{
	struct cenalloc_attachment *a;
	struct cenalloc_mapping *m;

	lockdep_assert_held(&buffer->lock);
	z->ranges = buffer->backing;
	z->num = buffer->num_backing;
	z->owned = !buffer->backing_loose;
	z->mappings = 0;
	list_for_each_entry(a, &buffer->attachments, node)
		list_for_each_entry(m, &a->mappings, node)
			if (m->revoked && !m->zombie) {
				m->zombie = z;
				z->mappings++;
			}
	list_add_tail(&z->node, &buffer->zombies);
	buffer->backing = NULL;
	buffer->num_backing = 0;
}

/* Free @z and give its pages back to the pools (buffer->lock held). */
static void cenalloc_zombie_free(struct cenalloc_dev *cdev,
				 struct cenalloc_zombie *z)
{
	list_del(&z->node);
	if (z->owned)
		cenalloc_pools_disown(cdev, z->ranges, z->num);
	cenalloc_pools_unclaim(cdev, z->ranges, z->num);
	kvfree(z->ranges);
	kfree(z);
}

/* A revoked mapping made of @z is gone (buffer->lock held). */
void cenalloc_zombie_put(struct cenalloc_buffer *buffer,
			 struct cenalloc_zombie *z)
{
	lockdep_assert_held(&buffer->lock);
	if (!WARN_ON_ONCE(!z->mappings) && --z->mappings)
		return;
	cenalloc_zombie_free(buffer->cdev, z);
}

/*
 * Last reference: UNMAP and DETACH the CPU attachment and FREE, with the
 * requests allocated for them beforehand, posted behind the buffer's
 * pending batch in as few chains as max_batch allows (never waiting, never
 * failing); then the backing's pool blocks may be given back; the device
 * state reference goes last.
 */
static void cenalloc_dmabuf_release(struct dma_buf *dmabuf)
{
	struct cenalloc_buffer *buffer = dmabuf->priv;
	struct cenalloc_dev *cdev = buffer->cdev;
	struct cenalloc_req *reqs[4] = {};
	struct cenalloc_zombie *z, *ztmp;
	struct cenalloc_attachment *a;
	struct cenalloc_free_req *fr;
	unsigned int i, n;

	mutex_lock(&cdev->lock);
	list_del(&buffer->node);
	cdev->num_buffers--;
	cdev->total_bytes -= buffer->size;
	mutex_unlock(&cdev->lock);

	mutex_lock(&buffer->lock);
	if (WARN_ON(buffer->vmap_count))
		vunmap(buffer->vaddr);
	reqs[0] = buffer->pending;
	buffer->pending = NULL;
	a = buffer->cpu_attach;
	if (a) {
		if (a->num_maps)
			reqs[1] = cenalloc_unmap_take(a, CENALLOC_DIR_BIDIRECTIONAL,
						      &buffer->cpu_unmap_req);
		reqs[2] = cenalloc_attachment_release(a);
		buffer->cpu_attach = NULL;
		cenalloc_attachment_free(a);
	}
	WARN_ON(!list_empty(&buffer->attachments));
	if (buffer->buffer_id) {
		fr = cenalloc_req_add(buffer->free_req, CENALLOC_CMD_FREE,
				      sizeof(*fr), 0);
		if (!WARN_ON_ONCE(IS_ERR(fr))) {
			fr->buffer_id = cpu_to_le32(buffer->buffer_id);
			reqs[3] = buffer->free_req;
			buffer->free_req = NULL;
		}
	}
	/* Once FREE is on the ring, the device may give the pages to others. */
	if (buffer->backing && !buffer->backing_loose)
		cenalloc_pools_disown(cdev, buffer->backing,
				      buffer->num_backing);
	/* Every mapping is gone with the attachments: none is left. */
	list_for_each_entry_safe(z, ztmp, &buffer->zombies, node)
		if (!WARN_ON_ONCE(z->mappings))
			cenalloc_zombie_free(cdev, z);
	/* Into the held LEASED_MAP, in order, while they fit. */
	n = READ_ONCE(buffer->held) ?
	    cenalloc_req_held_append_seq(cdev, &buffer->held, reqs,
					 ARRAY_SIZE(reqs)) : 0;
	for (i = 0; i < n; i++) {
		cenalloc_req_free(reqs[i]);
		reqs[i] = NULL;
	}
	/*
	 * Behind its own held LEASED_MAP only (the other buffers' stay held):
	 * nothing refers to the buffer once it is freed.
	 */
	cenalloc_req_post_seq_own(cdev, reqs, ARRAY_SIZE(reqs), &buffer->held);
	WARN_ON_ONCE(READ_ONCE(buffer->held));
	mutex_unlock(&buffer->lock);

	cenalloc_req_free(buffer->cpu_unmap_req);
	cenalloc_req_free(buffer->free_req);
	/* Its FREE and every DETACH are on the ring: the ids may be reused. */
	if (buffer->num_lease_ids)
		cenalloc_lease_ids_put(cdev, buffer->lease_ids,
				       buffer->num_lease_ids);
	if (buffer->lease_ids != buffer->lease_ids_inline)
		kfree(buffer->lease_ids);
	cenalloc_quota_uncharge(buffer->user, buffer->size);
	/* The FREE is on the ring before the blocks may be offered back. */
	if (buffer->backing)
		cenalloc_pools_unclaim(cdev, buffer->backing,
				       buffer->num_backing);
	kvfree(buffer->backing);
	mutex_destroy(&buffer->lock);
	kfree(buffer);
	cenalloc_dev_put(cdev);
}

const struct dma_buf_ops cenalloc_dmabuf_ops = {
	.attach = cenalloc_dmabuf_attach,
	.detach = cenalloc_dmabuf_detach,
	.pin = cenalloc_dmabuf_pin,
	.unpin = cenalloc_dmabuf_unpin,
	.map_dma_buf = cenalloc_map_dma_buf,
	.unmap_dma_buf = cenalloc_unmap_dma_buf,
	.release = cenalloc_dmabuf_release,
	.begin_cpu_access = cenalloc_dmabuf_begin_cpu_access,
	.end_cpu_access = cenalloc_dmabuf_end_cpu_access,
	.mmap = cenalloc_dmabuf_mmap,
	.vmap = cenalloc_dmabuf_vmap,
	.vunmap = cenalloc_dmabuf_vunmap,
};

/* A new buffer: only a size and a mask until its first map. Device limits
 * are checked here, against the buffers this driver has alive, so that a
 * create the device would refuse fails at once.
 */
struct dma_buf *cenalloc_buffer_create(struct cenalloc_dev *cdev, u64 size,
				       bool rdwr, u32 initial_mask)
{
	DEFINE_DMA_BUF_EXPORT_INFO(exp_info);
	unsigned int limit_mb = READ_ONCE(cenalloc_size_limit_mb);
	unsigned int buffer_limit = READ_ONCE(cenalloc_buffer_limit);
	u64 max_size = le64_to_cpu(cdev->config.max_buffer_size);
	u64 max_total = le64_to_cpu(cdev->config.max_total_bytes);
	u32 max_buffers = le32_to_cpu(cdev->config.max_buffers);
	struct cenalloc_buffer *buffer;
	struct dma_buf *dmabuf;
	int ret;

	if (!size)
		return ERR_PTR(-EINVAL);
	if (size > SZ_1T * 64)
		return ERR_PTR(-E2BIG);
	size = PAGE_ALIGN(size);
	if ((limit_mb && size > (u64)limit_mb * SZ_1M) ||
	    (max_size && size > max_size))
		return ERR_PTR(-E2BIG);

	buffer = kzalloc(sizeof(*buffer), GFP_KERNEL);
	if (!buffer)
		return ERR_PTR(-ENOMEM);
	buffer->free_req = cenalloc_req_alloc(cdev);
	if (!buffer->free_req) {
		kfree(buffer);
		return ERR_PTR(-ENOMEM);
	}
	buffer->user = cenalloc_quota_charge(cdev, size);
	if (IS_ERR(buffer->user)) {
		ret = PTR_ERR(buffer->user);
		cenalloc_req_free(buffer->free_req);
		kfree(buffer);
		return ERR_PTR(ret);
	}
	buffer->cdev = cdev;
	buffer->size = size;
	buffer->initial_mask = initial_mask;
	buffer->access_mask = initial_mask ? initial_mask : CENALLOC_MASK_ANY;
	mutex_init(&buffer->lock);
	INIT_LIST_HEAD(&buffer->attachments);
	INIT_LIST_HEAD(&buffer->zombies);

	mutex_lock(&cdev->lock);
	ret = cenalloc_dev_usable(cdev);
	if (ret)
		goto err_unlock;
	if ((max_buffers && cdev->num_buffers >= max_buffers) ||
	    (buffer_limit && cdev->num_buffers >= buffer_limit) ||
	    (max_total && cdev->total_bytes + size > max_total)) {
		ret = -ENOSPC;
		goto err_unlock;
	}
	cdev->num_buffers++;
	cdev->total_bytes += size;
	list_add_tail(&buffer->node, &cdev->buffers);
	kref_get(&cdev->ref);
	mutex_unlock(&cdev->lock);

	exp_info.ops = &cenalloc_dmabuf_ops;
	exp_info.owner = THIS_MODULE;
	exp_info.size = size;
	exp_info.flags = rdwr ? O_RDWR : O_RDONLY;
	exp_info.priv = buffer;
	dmabuf = dma_buf_export(&exp_info);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		goto err_unlist;
	}
	buffer->dmabuf = dmabuf;
	return dmabuf;

err_unlist:
	mutex_lock(&cdev->lock);
	list_del(&buffer->node);
	cdev->num_buffers--;
	cdev->total_bytes -= size;
	mutex_unlock(&cdev->lock);
	cenalloc_dev_put(cdev);
	goto err_free;
err_unlock:
	mutex_unlock(&cdev->lock);
err_free:
	cenalloc_quota_uncharge(buffer->user, size);
	cenalloc_req_free(buffer->free_req);
	mutex_destroy(&buffer->lock);
	kfree(buffer);
	return ERR_PTR(ret);
}
