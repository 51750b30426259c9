// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc attachments: constraint masks, local mapping-type negotiation,
 * and the batch that brings a buffer to life on the device.
 *
 * Round trips are expensive, so nothing reaches the device before it must:
 * CREATE and every ATTACH made before the first map wait in the driver
 * (ids 0) and travel with the first MAP as one batch, the later commands
 * naming the earlier results by batch reference. An incompatible attach is
 * refused locally (mask intersection empty: -EINVAL; no mutual mapping
 * type: -EOPNOTSUPP) using the allocator and exporter lists cached at probe.
 * An attach after the backing exists goes to the device at once, because
 * only the device knows whether the backing fits or can migrate (-EBUSY).
 * UNMAP and DETACH are posted without waiting. The device validates all.
 */
#include <linux/dma-mapping.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/sched.h>
#include <linux/sizes.h>
#include <linux/slab.h>

#include <linux/cenalloc.h>
#include "cenalloc_internal.h"

/* Longest scatterlist entry built from one segment. */
#define CENALLOC_SG_MAX_LEN	SZ_1G

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

static bool cenalloc_id_valid(u32 id)
{
	return id && !(id & CENALLOC_BATCH_REF);
}

/* Can the buffer be served as one contiguous range with @access_mask? */
static bool cenalloc_contig_possible(struct cenalloc_buffer *buffer,
				     u32 access_mask)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	bool found = false;
	unsigned int i;
	u32 kinds;

	if (buffer->backed)
		return buffer->num_backing == 1;
	for (i = 0; i < cdev->num_allocators; i++) {
		kinds = le32_to_cpu(cdev->allocators[i].kinds);
		if (!(kinds & access_mask))
			continue;
		if (!(le32_to_cpu(cdev->allocators[i].placement) &
		      CENALLOC_PLACE_CONTIG))
			return false;
		found = true;
	}
	return found;
}

/* Walk the exporter's list in priority order, pick the first type the
 * importer lists that can serve the buffer.
 */
static int cenalloc_negotiate(struct cenalloc_buffer *buffer, u32 access_mask,
			      const u32 *types, u32 num_types, u32 *map_type)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	unsigned int e, i;
	u32 type;

	for (e = 0; e < cdev->num_exporter_types; e++) {
		type = cdev->exporter_types[e];
		for (i = 0; i < num_types; i++) {
			if (types[i] != type)
				continue;
			if (type == CENALLOC_MAP_CONTIG &&
			    !cenalloc_contig_possible(buffer, access_mask))
				continue;
			*map_type = type;
			return 0;
		}
	}
	return -EOPNOTSUPP;
}

static bool cenalloc_type_valid(u32 type)
{
	return type == CENALLOC_MAP_SG || type == CENALLOC_MAP_CONTIG ||
	       (type >= CENALLOC_MAP_PRIVATE_FIRST &&
		type <= CENALLOC_MAP_PRIVATE_LAST);
}

struct cenalloc_attachment *cenalloc_attachment_new(struct cenalloc_buffer *buffer,
						    struct device *dev, u32 mask,
						    const u32 *types, u32 num_types)
{
	struct cenalloc_attachment *a;

	if (!num_types || num_types > CENALLOC_MAX_MAP_TYPES)
		return ERR_PTR(-EINVAL);
	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a)
		return ERR_PTR(-ENOMEM);
	a->buffer = buffer;
	a->dev = dev;
	a->mask = mask;
	a->num_types = num_types;
	memcpy(a->types, types, num_types * sizeof(*types));
	INIT_LIST_HEAD(&a->mappings);
	INIT_LIST_HEAD(&a->node);
	strscpy(a->dev_name, dev ? dev_name(dev) : "cpu", sizeof(a->dev_name));
	return a;
}

static void cenalloc_access_mask_update(struct cenalloc_buffer *buffer)
{
	struct cenalloc_attachment *a;
	u32 mask = buffer->initial_mask ? buffer->initial_mask :
					  CENALLOC_MASK_ANY;

	list_for_each_entry(a, &buffer->attachments, node)
		mask &= a->mask;
	buffer->access_mask = mask;
}

/* Record the device's answer to an ATTACH. */
static int cenalloc_attach_record(struct cenalloc_attachment *a,
				  const struct cenalloc_attach_resp *resp,
				  u32 len)
{
	u32 id, type;

	if (len < sizeof(*resp))
		return -EIO;
	id = le32_to_cpu(resp->attach_id);
	type = le32_to_cpu(resp->map_type);
	if (!cenalloc_id_valid(id) || !cenalloc_type_valid(type))
		return -EIO;
	a->attach_id = id;
	if (type != a->map_type) {
		pr_debug("cenalloc: %s: device chose map type %u, driver %u\n",
			 a->dev_name, type, a->map_type);
		a->map_type = type;
	}
	if (type == CENALLOC_MAP_CONTIG)
		a->buffer->contiguous_promised = true;
	if (le32_to_cpu(resp->flags) & CENALLOC_ATTACH_F_MIGRATE)
		pr_debug("cenalloc: buffer %u: next map of %s migrates\n",
			 a->buffer->buffer_id, a->dev_name);
	return 0;
}

static void cenalloc_attach_fill(struct cenalloc_attach_req *ar,
				 struct cenalloc_attachment *a, u32 buffer_ref)
{
	unsigned int i;

	ar->buffer_id = cpu_to_le32(buffer_ref);
	ar->mask = cpu_to_le32(a->mask);
	ar->num_types = cpu_to_le32(a->num_types);
	for (i = 0; i < a->num_types; i++)
		ar->types[i] = cpu_to_le32(a->types[i]);
}

/* A late attach: the buffer has backing, only the device can decide. */
static int cenalloc_attach_sync(struct cenalloc_buffer *buffer,
				struct cenalloc_attachment *a)
{
	struct cenalloc_attach_req *ar;
	struct cenalloc_req *req;
	void *resp;
	u32 len;
	int ret;

	req = cenalloc_req_alloc(buffer->cdev);
	if (!req)
		return -ENOMEM;
	ar = cenalloc_req_add(req, CENALLOC_CMD_ATTACH, sizeof(*ar),
			      sizeof(struct cenalloc_attach_resp));
	if (IS_ERR(ar)) {
		ret = PTR_ERR(ar);
		goto out;
	}
	cenalloc_attach_fill(ar, a, buffer->buffer_id);
	ret = cenalloc_req_submit(req);
	if (!ret)
		ret = cenalloc_req_status(req, 0);
	if (ret)
		goto out;
	resp = cenalloc_req_resp(req, 0, &len);
	ret = cenalloc_attach_record(a, resp, len);
out:
	cenalloc_req_free(req);
	return ret;
}

/*
 * Check @a against the buffer locally and add it. With @defer, or while the
 * buffer has no backing, the device hears of it at the next map.
 */
static int cenalloc_attachment_add(struct cenalloc_buffer *buffer,
				   struct cenalloc_attachment *a, bool defer)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	u32 access_mask = buffer->access_mask & a->mask;
	int ret;

	lockdep_assert_held(&buffer->lock);
	if (READ_ONCE(cdev->removed))
		return -ENODEV;
	if (!access_mask)
		return -EINVAL;
	if (cdev->max_attachments &&
	    buffer->num_attachments >= cdev->max_attachments)
		return -ENOSPC;
	if (buffer->backed && !defer) {
		/* Only the device knows whether the backing migrates. */
		ret = cenalloc_attach_sync(buffer, a);
	} else {
		ret = cenalloc_negotiate(buffer, access_mask, a->types,
					 a->num_types, &a->map_type);
	}
	if (ret)
		return ret;
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
	struct cenalloc_attachment *a;
	int ret;

	mutex_lock(&buffer->lock);
	if (buffer->explicit_task == current &&
	    buffer->explicit_dev == attach->dev)
		a = cenalloc_attachment_new(buffer, attach->dev,
					    buffer->explicit_mask,
					    buffer->explicit_types,
					    buffer->explicit_num_types);
	else
		a = cenalloc_attachment_new(buffer, attach->dev,
					    cenalloc_device_mask(attach->dev),
					    plain_types,
					    ARRAY_SIZE(plain_types));
	if (IS_ERR(a)) {
		ret = PTR_ERR(a);
		goto out_unlock;
	}
	ret = cenalloc_attachment_add(buffer, a, false);
	if (ret) {
		kfree(a);
		goto out_unlock;
	}
	attach->priv = a;
out_unlock:
	mutex_unlock(&buffer->lock);
	return ret;
}

/* Add UNMAP of outstanding device maps and DETACH of @a to @req; unlink. */
void cenalloc_attachment_release(struct cenalloc_attachment *a,
				 struct cenalloc_req *req)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_detach_req *dr;

	lockdep_assert_held(&buffer->lock);
	list_del_init(&a->node);
	buffer->num_attachments--;
	cenalloc_access_mask_update(buffer);
	if (!req || !a->attach_id)
		return;
	dr = cenalloc_req_add(req, CENALLOC_CMD_DETACH, sizeof(*dr), 0);
	if (!IS_ERR(dr))
		dr->attach_id = cpu_to_le32(a->attach_id);
}

void cenalloc_dmabuf_detach(struct dma_buf *dmabuf,
			    struct dma_buf_attachment *attach)
{
	struct cenalloc_buffer *buffer = dmabuf->priv;
	struct cenalloc_attachment *a = attach->priv;
	struct cenalloc_req *req = NULL;

	mutex_lock(&buffer->lock);
	WARN_ONCE(!list_empty(&a->mappings),
		  "cenalloc: %s detached with mappings outstanding\n",
		  a->dev_name);
	if (a->attach_id && !READ_ONCE(buffer->cdev->removed))
		req = cenalloc_req_alloc(buffer->cdev);
	cenalloc_attachment_release(a, req);
	if (req)
		cenalloc_req_post(req);
	mutex_unlock(&buffer->lock);
	kfree(a);
}

static void cenalloc_post_unmap(struct cenalloc_attachment *a, u32 direction)
{
	struct cenalloc_unmap_req *ur;
	struct cenalloc_req *req;

	if (!a->attach_id || READ_ONCE(a->buffer->cdev->removed))
		return;
	req = cenalloc_req_alloc(a->buffer->cdev);
	if (!req) {
		pr_warn_ratelimited("cenalloc: no memory to unmap %u\n",
				    a->attach_id);
		return;
	}
	ur = cenalloc_req_add(req, CENALLOC_CMD_UNMAP, sizeof(*ur), 0);
	if (IS_ERR(ur)) {
		cenalloc_req_free(req);
		return;
	}
	ur->attach_id = cpu_to_le32(a->attach_id);
	ur->direction = cpu_to_le32(direction);
	cenalloc_req_post(req);
}

static unsigned int cenalloc_pending_commands(struct cenalloc_buffer *buffer)
{
	struct cenalloc_attachment *a;
	unsigned int n = buffer->buffer_id ? 0 : 1;

	list_for_each_entry(a, &buffer->attachments, node)
		if (!a->attach_id)
			n++;
	return n;
}

/*
 * Add CREATE (if the buffer is not on the device) and up to @room commands
 * in all of pending ATTACHes to @req; sent[i] is the attachment of command
 * i (NULL for CREATE).
 */
static int cenalloc_batch_prepare(struct cenalloc_buffer *buffer,
				  struct cenalloc_req *req,
				  struct cenalloc_attachment **sent,
				  unsigned int room)
{
	struct cenalloc_create_req *cr;
	struct cenalloc_attach_req *ar;
	struct cenalloc_attachment *a;
	u32 buffer_ref = buffer->buffer_id;

	if (!buffer->buffer_id) {
		cr = cenalloc_req_add(req, CENALLOC_CMD_CREATE, sizeof(*cr),
				      sizeof(struct cenalloc_create_resp));
		if (IS_ERR(cr))
			return PTR_ERR(cr);
		cr->size = cpu_to_le64(buffer->size);
		cr->initial_mask = cpu_to_le32(buffer->initial_mask);
		sent[req->num_cmds - 1] = NULL;
		buffer_ref = CENALLOC_BATCH_REF | (req->num_cmds - 1);
	}
	list_for_each_entry(a, &buffer->attachments, node) {
		if (a->attach_id)
			continue;
		if (req->num_cmds >= room)
			break;
		ar = cenalloc_req_add(req, CENALLOC_CMD_ATTACH, sizeof(*ar),
				      sizeof(struct cenalloc_attach_resp));
		if (IS_ERR(ar))
			return PTR_ERR(ar);
		cenalloc_attach_fill(ar, a, buffer_ref);
		sent[req->num_cmds - 1] = a;
	}
	return 0;
}

/* Record the CREATE/ATTACH answers of the first @num commands. */
static int cenalloc_batch_record(struct cenalloc_buffer *buffer,
				 struct cenalloc_req *req,
				 struct cenalloc_attachment **sent,
				 unsigned int num)
{
	const struct cenalloc_create_resp *cresp;
	unsigned int i;
	void *resp;
	u32 len, id;
	int ret;

	for (i = 0; i < num; i++) {
		ret = cenalloc_req_status(req, i);
		if (ret)
			return ret;
		resp = cenalloc_req_resp(req, i, &len);
		if (sent[i]) {
			ret = cenalloc_attach_record(sent[i], resp, len);
			if (ret)
				return ret;
			continue;
		}
		cresp = resp;
		if (len < sizeof(*cresp))
			return -EIO;
		id = le32_to_cpu(cresp->buffer_id);
		if (!cenalloc_id_valid(id) ||
		    le64_to_cpu(cresp->size) != buffer->size)
			return -EIO;
		buffer->buffer_id = id;
	}
	return 0;
}

/* Bring the buffer and every pending attachment to the device, leaving
 * room for @keep more commands in the last batch; returns that batch.
 */
static struct cenalloc_req *
cenalloc_batch_begin(struct cenalloc_buffer *buffer,
		     struct cenalloc_attachment **sent, unsigned int keep)
{
	u32 max_batch = buffer->cdev->max_batch;
	struct cenalloc_req *req;
	int ret;

	for (;;) {
		req = cenalloc_req_alloc(buffer->cdev);
		if (!req)
			return ERR_PTR(-ENOMEM);
		if (cenalloc_pending_commands(buffer) + keep <= max_batch)
			break;
		/* Too many waiting attachments for one batch: send some. */
		ret = cenalloc_batch_prepare(buffer, req, sent, max_batch);
		if (!ret)
			ret = cenalloc_req_submit(req);
		if (!ret)
			ret = cenalloc_batch_record(buffer, req, sent,
						    req->num_cmds);
		cenalloc_req_free(req);
		if (ret)
			return ERR_PTR(ret);
	}
	ret = cenalloc_batch_prepare(buffer, req, sent, max_batch - keep);
	if (ret) {
		cenalloc_req_free(req);
		return ERR_PTR(ret);
	}
	return req;
}

/* MAP response slot: room for the segments we expect. */
static u32 cenalloc_map_slot(struct cenalloc_buffer *buffer)
{
	u32 segments;

	if (buffer->backed)
		segments = buffer->num_backing;
	else if (buffer->contiguous_promised ||
		 cenalloc_contig_possible(buffer, buffer->access_mask))
		segments = 1;
	else
		segments = min_t(u64, buffer->size >> PAGE_SHIFT, 32);
	segments = clamp_t(u32, segments, 1, buffer->cdev->max_segments);
	return sizeof(struct cenalloc_map_resp) +
	       segments * sizeof(struct cenalloc_range);
}

static int cenalloc_map_parse(struct cenalloc_attachment *a, const void *resp,
			      u32 len, struct cenalloc_range **segments,
			      u32 *num)
{
	const struct cenalloc_map_resp *mr = resp;
	struct cenalloc_buffer *buffer = a->buffer;
	const struct cenalloc_range *seg;
	struct cenalloc_range *copy;
	u64 total = 0, addr, seg_len;
	u32 n, i;

	if (len < sizeof(*mr))
		return -EIO;
	n = le32_to_cpu(mr->num_segments);
	if (!n || n > (len - sizeof(*mr)) / sizeof(*seg) ||
	    le64_to_cpu(mr->size) != buffer->size)
		return -EIO;
	seg = (const struct cenalloc_range *)(mr + 1);
	for (i = 0; i < n; i++) {
		addr = le64_to_cpu(seg[i].addr);
		seg_len = le64_to_cpu(seg[i].len);
		if (!seg_len || !PAGE_ALIGNED(addr) || !PAGE_ALIGNED(seg_len) ||
		    !cenalloc_pools_contain(buffer->cdev, addr, seg_len))
			return -EIO;
		total += seg_len;
	}
	if (total != buffer->size)
		return -EIO;
	if (le32_to_cpu(mr->map_type) == CENALLOC_MAP_CONTIG && n != 1)
		return -EIO;
	copy = kmemdup(seg, n * sizeof(*seg), GFP_KERNEL);
	if (!copy)
		return -ENOMEM;

	if (le32_to_cpu(mr->flags) & CENALLOC_MAP_F_MIGRATED)
		pr_debug("cenalloc: buffer %u migrated to allocator %u\n",
			 buffer->buffer_id, le32_to_cpu(mr->allocator_id));
	buffer->backed = true;
	buffer->allocator_id = le32_to_cpu(mr->allocator_id);
	buffer->num_backing = n;
	*segments = copy;
	*num = n;
	return 0;
}

/* One MAP of an attachment that is on the device, slot of @slot bytes. */
static int cenalloc_map_once(struct cenalloc_attachment *a, u32 direction,
			     u32 slot, u32 *needed, void **resp, u32 *len,
			     struct cenalloc_req **out)
{
	struct cenalloc_map_req *mr;
	struct cenalloc_req *req;
	int ret;

	req = cenalloc_req_alloc(a->buffer->cdev);
	if (!req)
		return -ENOMEM;
	mr = cenalloc_req_add(req, CENALLOC_CMD_MAP, sizeof(*mr), slot);
	if (IS_ERR(mr)) {
		cenalloc_req_free(req);
		return PTR_ERR(mr);
	}
	mr->attach_id = cpu_to_le32(a->attach_id);
	mr->direction = cpu_to_le32(direction);
	ret = cenalloc_req_submit(req);
	if (!ret)
		ret = cenalloc_req_status(req, 0);
	if (ret == -ENOSPC)
		*needed = cenalloc_req_needed(req, 0);
	if (ret) {
		cenalloc_req_free(req);
		return ret;
	}
	*resp = cenalloc_req_resp(req, 0, len);
	*out = req;
	return 0;
}

/*
 * Map @a on the device: the pending CREATE and ATTACHes travel with the MAP
 * in one batch. Returns the backing segments (kfree them) and counts one
 * outstanding device map on @a.
 */
int cenalloc_attachment_map(struct cenalloc_attachment *a, u32 direction,
			    struct cenalloc_range **segments, u32 *num)
{
	struct cenalloc_attachment *sent[CENALLOC_MAX_BATCH];
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_map_req *mr;
	struct cenalloc_req *req;
	u32 len, needed = 0, max_slot;
	unsigned int i, map_idx;
	void *resp;
	int ret;

	lockdep_assert_held(&buffer->lock);
	req = cenalloc_batch_begin(buffer, sent, 1);
	if (IS_ERR(req))
		return PTR_ERR(req);
	mr = cenalloc_req_add(req, CENALLOC_CMD_MAP, sizeof(*mr),
			      cenalloc_map_slot(buffer));
	if (IS_ERR(mr)) {
		ret = PTR_ERR(mr);
		goto out_free;
	}
	map_idx = req->num_cmds - 1;
	mr->attach_id = cpu_to_le32(a->attach_id);
	for (i = 0; i < map_idx; i++)
		if (sent[i] == a)
			mr->attach_id = cpu_to_le32(CENALLOC_BATCH_REF | i);
	mr->direction = cpu_to_le32(direction);

	ret = cenalloc_req_submit(req);
	if (ret)
		goto out_free;
	ret = cenalloc_batch_record(buffer, req, sent, map_idx);
	if (ret)
		goto out_free;
	ret = cenalloc_req_status(req, map_idx);
	if (ret == -ENOSPC) {
		/* More segments than the slot holds: ask again, exactly. */
		needed = cenalloc_req_needed(req, map_idx);
		cenalloc_req_free(req);
		req = NULL;
		max_slot = sizeof(struct cenalloc_map_resp) +
			   buffer->cdev->max_segments *
			   sizeof(struct cenalloc_range);
		if (needed <= sizeof(struct cenalloc_map_resp) ||
		    needed > max_slot || !IS_ALIGNED(needed, 8))
			return -EIO;
		ret = cenalloc_map_once(a, direction, needed, &needed, &resp,
					&len, &req);
		if (ret)
			return ret;
	} else if (ret) {
		goto out_free;
	} else {
		resp = cenalloc_req_resp(req, map_idx, &len);
	}

	a->num_maps++;
	ret = cenalloc_map_parse(a, resp, len, segments, num);
	if (ret) {
		pr_warn_ratelimited("cenalloc: bad MAP answer for buffer %u\n",
				    buffer->buffer_id);
		a->num_maps--;
		cenalloc_post_unmap(a, direction);
	}
out_free:
	cenalloc_req_free(req);
	return ret;
}

static int cenalloc_sgt_build(struct sg_table *sgt,
			      const struct cenalloc_range *segments, u32 num)
{
	struct scatterlist *sg;
	unsigned int nents = 0, i;
	u64 addr, left, chunk;
	int ret;

	for (i = 0; i < num; i++)
		nents += DIV_ROUND_UP_ULL(le64_to_cpu(segments[i].len),
					  CENALLOC_SG_MAX_LEN);
	ret = sg_alloc_table(sgt, nents, GFP_KERNEL);
	if (ret)
		return ret;
	sg = sgt->sgl;
	for (i = 0; i < num; i++) {
		addr = le64_to_cpu(segments[i].addr);
		left = le64_to_cpu(segments[i].len);
		while (left) {
			chunk = min_t(u64, left, CENALLOC_SG_MAX_LEN);
			sg_set_page(sg, pfn_to_page(PHYS_PFN(addr)), chunk, 0);
			sg = sg_next(sg);
			addr += chunk;
			left -= chunk;
		}
	}
	return 0;
}

struct sg_table *cenalloc_map_dma_buf(struct dma_buf_attachment *attach,
				      enum dma_data_direction dir)
{
	struct cenalloc_attachment *a = attach->priv;
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_range *segments = NULL;
	struct cenalloc_mapping *m;
	u32 direction, num;
	int ret;

	ret = cenalloc_direction(dir, &direction);
	if (ret)
		return ERR_PTR(ret);
	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return ERR_PTR(-ENOMEM);
	m->dir = dir;

	mutex_lock(&buffer->lock);
	ret = cenalloc_attachment_map(a, direction, &segments, &num);
	if (ret)
		goto err_unlock;
	ret = cenalloc_sgt_build(&m->sgt, segments, num);
	if (ret)
		goto err_unmap;
	ret = dma_map_sgtable(attach->dev, &m->sgt, dir, 0);
	if (ret)
		goto err_free_sgt;
	list_add_tail(&m->node, &a->mappings);
	mutex_unlock(&buffer->lock);
	kfree(segments);
	return &m->sgt;

err_free_sgt:
	sg_free_table(&m->sgt);
err_unmap:
	a->num_maps--;
	cenalloc_post_unmap(a, direction);
err_unlock:
	mutex_unlock(&buffer->lock);
	kfree(segments);
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
	dma_unmap_sgtable(attach->dev, sgt, m->dir, 0);
	mutex_lock(&buffer->lock);
	list_del(&m->node);
	a->num_maps--;
	cenalloc_post_unmap(a, direction);
	mutex_unlock(&buffer->lock);
	sg_free_table(sgt);
	kfree(m);
}

/* ---- Exported API ---- */

/**
 * cenalloc_is_cenalloc_dmabuf - tell whether cenalloc exported a dma-buf
 * @dmabuf: any dma-buf, or NULL
 *
 * Return: true if @dmabuf is a /dev/cenalloc buffer.
 */
bool cenalloc_is_cenalloc_dmabuf(struct dma_buf *dmabuf)
{
	return dmabuf && dmabuf->ops == &cenalloc_dmabuf_ops;
}
EXPORT_SYMBOL_GPL(cenalloc_is_cenalloc_dmabuf);

/**
 * cenalloc_attach - attach a device with an explicit constraint mask
 * @dmabuf: a cenalloc dma-buf
 * @dev: the importing device
 * @mask: its constraint mask (CENALLOC_KIND_* bits), not 0
 * @types: the importer's mapping types, priority order
 * @n: entries in @types, 1..CENALLOC_MAX_MAP_TYPES
 * @map_type: where to store the negotiated type (may be NULL)
 *
 * Like dma_buf_attach(), but with @mask instead of the device mask table.
 * Before the buffer has backing nothing reaches the device: the ATTACH
 * travels with the first map. Release with dma_buf_detach().
 *
 * Return: the attachment, or ERR_PTR(-EINVAL) for bad arguments or an empty
 * mask intersection, -EOPNOTSUPP when no mapping type is mutual, -EBUSY when
 * the backing does not fit and cannot migrate, -ENODEV after remove.
 */
struct dma_buf_attachment *cenalloc_attach(struct dma_buf *dmabuf,
					   struct device *dev, u32 mask,
					   const u32 *types, unsigned int n,
					   u32 *map_type)
{
	struct dma_buf_attachment *attach;
	struct cenalloc_attachment *a;
	struct cenalloc_buffer *buffer;
	unsigned int i;

	if (!cenalloc_is_cenalloc_dmabuf(dmabuf) || !dev || !mask || !types ||
	    !n || n > CENALLOC_MAX_MAP_TYPES)
		return ERR_PTR(-EINVAL);
	for (i = 0; i < n; i++)
		if (!cenalloc_type_valid(types[i]))
			return ERR_PTR(-EINVAL);
	buffer = dmabuf->priv;

	/* The attach callback picks these up for this task and device. */
	mutex_lock(&buffer->explicit_mutex);
	mutex_lock(&buffer->lock);
	buffer->explicit_task = current;
	buffer->explicit_dev = dev;
	buffer->explicit_mask = mask;
	buffer->explicit_num_types = n;
	memcpy(buffer->explicit_types, types, n * sizeof(*types));
	mutex_unlock(&buffer->lock);

	attach = dma_buf_attach(dmabuf, dev);

	mutex_lock(&buffer->lock);
	buffer->explicit_task = NULL;
	buffer->explicit_dev = NULL;
	if (!IS_ERR(attach) && map_type) {
		a = attach->priv;
		*map_type = a->map_type;
	}
	mutex_unlock(&buffer->lock);
	mutex_unlock(&buffer->explicit_mutex);
	return attach;
}
EXPORT_SYMBOL_GPL(cenalloc_attach);

/* Pin the backing for CPU access through the internal CPU attachment
 * (mask: any kind, type SG). It stays mapped until the buffer is released,
 * so the backing cannot migrate under a user or kernel mapping.
 */
int cenalloc_buffer_cpu_map(struct cenalloc_buffer *buffer)
{
	static const u32 cpu_types[] = { CENALLOC_MAP_SG };
	struct cenalloc_attachment *a = buffer->cpu_attach;
	struct cenalloc_range *segments;
	u32 num;
	int ret;

	lockdep_assert_held(&buffer->lock);
	if (a && a->num_maps)
		return 0;
	if (!a) {
		a = cenalloc_attachment_new(buffer, NULL, CENALLOC_MASK_ANY,
					    cpu_types, ARRAY_SIZE(cpu_types));
		if (IS_ERR(a))
			return PTR_ERR(a);
		ret = cenalloc_attachment_add(buffer, a, true);
		if (ret) {
			kfree(a);
			return ret;
		}
		buffer->cpu_attach = a;
	}
	ret = cenalloc_attachment_map(a, CENALLOC_DIR_BIDIRECTIONAL,
				      &segments, &num);
	if (ret) {
		if (!a->attach_id) {
			cenalloc_attachment_release(a, NULL);
			buffer->cpu_attach = NULL;
			kfree(a);
		}
		return ret;
	}
	kfree(buffer->backing);
	buffer->backing = segments;
	buffer->num_backing = num;
	return 0;
}
