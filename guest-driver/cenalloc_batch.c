// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc attachment commands: the batch that brings a buffer to life on
 * the device, and the checks of the device's answers.
 *
 * Round trips are expensive, so nothing reaches the device before it must:
 * CREATE and every ATTACH made before the first map wait in the driver
 * (ids 0) and travel with the first MAP as one batch, the later commands
 * naming the earlier results by batch reference. An attach after the
 * backing exists goes to the device at once (cenalloc_attach_sync()),
 * because only the device knows whether the backing fits or can migrate
 * (-EBUSY). Every answer is checked before it is used.
 *
 * Commands nobody waits for (UNMAP, DETACH, SYNC END, FREE) gather in the
 * buffer's pending batch (cenalloc_buffer_post_cmd()), one chain for a
 * buffer's whole teardown: it goes on the ring (posted) when the buffer is
 * released, when it is full, and before any other command of that buffer,
 * so the device sees one buffer's commands in the order they were made.
 * Commands of different buffers do not depend on each other.
 *
 * With leases (cenalloc_lease.c) the first map of a small buffer waits for
 * nothing: a leased extent backs it and one LEASED_MAP, posted, tells the
 * device everything (CREATE, every ATTACH and the MAP, with ids the driver
 * chose). A map the device answers -ENOMEM grows a pool and maps again
 * once; -EAGAIN (its room is in our leased stock) gives the stock back and
 * maps again.
 */
#include <linux/mm.h>
#include <linux/slab.h>

#include "cenalloc_batch.h"
#include "cenalloc_lease.h"
#include "cenalloc_negotiate.h"
#include "cenalloc_pool.h"
#include "cenalloc_vq.h"

static bool cenalloc_id_valid(u32 id)
{
	return id && !(id & CENALLOC_BATCH_REF);
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

/* Add an UNMAP of one device map of @a to @req. */
int cenalloc_req_add_unmap(struct cenalloc_req *req,
			   struct cenalloc_attachment *a, u32 direction)
{
	struct cenalloc_unmap_req *ur;

	ur = cenalloc_req_add(req, CENALLOC_CMD_UNMAP, sizeof(*ur), 0);
	if (IS_ERR(ur))
		return PTR_ERR(ur);
	ur->attach_id = cpu_to_le32(a->attach_id);
	ur->direction = cpu_to_le32(direction);
	return 0;
}

/*
 * A late attach: the buffer has backing, only the device can decide. @req
 * may already hold the UNMAPs of revoked mappings; the ATTACH runs after
 * them, in the same batch.
 */
int cenalloc_attach_sync(struct cenalloc_buffer *buffer,
			 struct cenalloc_attachment *a,
			 struct cenalloc_req *req)
{
	struct cenalloc_attach_req *ar;
	unsigned int i, idx;
	void *resp;
	u32 len;
	int ret;

	ar = cenalloc_req_add(req, CENALLOC_CMD_ATTACH, sizeof(*ar),
			      sizeof(struct cenalloc_attach_resp));
	if (IS_ERR(ar))
		return PTR_ERR(ar);
	idx = req->num_cmds - 1;
	cenalloc_attach_fill(ar, a, buffer->buffer_id);
	ret = cenalloc_req_submit(req);
	for (i = 0; !ret && i <= idx; i++)
		ret = cenalloc_req_status(req, i);
	if (ret)
		return ret;
	resp = cenalloc_req_resp(req, idx, &len);
	return cenalloc_attach_record(a, resp, len);
}

/* Put the buffer's pending batch on the ring (buffer->lock held). */
void cenalloc_buffer_flush(struct cenalloc_buffer *buffer)
{
	lockdep_assert_held(&buffer->lock);
	if (buffer->pending)
		cenalloc_req_post(buffer->pending);
	buffer->pending = NULL;
}

/*
 * Add a command nobody waits for to the buffer's pending batch; returns its
 * zeroed payload, or an ERR_PTR (logged: the device keeps the state the
 * command would have changed, e.g. a mapping, until the device resets).
 */
void *cenalloc_buffer_post_cmd(struct cenalloc_buffer *buffer, u16 opcode,
			       u32 len)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	void *payload;

	lockdep_assert_held(&buffer->lock);
	if (READ_ONCE(cdev->removed))
		return ERR_PTR(-ENODEV);
	if (buffer->pending) {
		payload = cenalloc_req_add(buffer->pending, opcode, len, 0);
		if (!IS_ERR(payload))
			return payload;
		cenalloc_buffer_flush(buffer);	/* full */
	}
	buffer->pending = cenalloc_req_alloc(cdev);
	if (!buffer->pending) {
		pr_warn_ratelimited("cenalloc: no memory to post a command of buffer %u\n",
				    buffer->buffer_id);
		return ERR_PTR(-ENOMEM);
	}
	payload = cenalloc_req_add(buffer->pending, opcode, len, 0);
	if (IS_ERR(payload)) {
		cenalloc_req_free(buffer->pending);
		buffer->pending = NULL;
	}
	return payload;
}

void cenalloc_post_unmap(struct cenalloc_attachment *a, u32 direction)
{
	struct cenalloc_unmap_req *ur;

	if (!a->attach_id)
		return;
	ur = cenalloc_buffer_post_cmd(a->buffer, CENALLOC_CMD_UNMAP,
				      sizeof(*ur));
	if (IS_ERR(ur))
		return;
	ur->attach_id = cpu_to_le32(a->attach_id);
	ur->direction = cpu_to_le32(direction);
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

	cenalloc_buffer_flush(buffer);
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

/*
 * Count the buffer's backing on the pool blocks under it (they are never
 * offered back while it lives), once, and again when it moved.
 */
static int cenalloc_backing_record(struct cenalloc_buffer *buffer,
				   const struct cenalloc_range *segments,
				   u32 num)
{
	struct cenalloc_range *copy;
	int ret;

	if (buffer->claim && buffer->num_claim == num &&
	    !memcmp(buffer->claim, segments, num * sizeof(*segments)))
		return 0;
	copy = kmemdup(segments, num * sizeof(*segments), GFP_KERNEL);
	if (!copy)
		return -ENOMEM;
	ret = cenalloc_pools_claim(buffer->cdev, copy, num, -1);
	if (ret) {
		kfree(copy);
		return ret;
	}
	if (buffer->claim)
		cenalloc_pools_unclaim(buffer->cdev, buffer->claim,
				       buffer->num_claim);
	kfree(buffer->claim);
	buffer->claim = copy;
	buffer->num_claim = num;
	return 0;
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
	int ret;

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
	ret = cenalloc_backing_record(buffer, copy, n);
	if (ret) {
		kfree(copy);
		return ret;
	}

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

	cenalloc_buffer_flush(a->buffer);
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
static int cenalloc_map_device(struct cenalloc_attachment *a, u32 direction,
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

/*
 * The first map of a buffer no command has reached yet, from a leased
 * extent: one LEASED_MAP, posted, creates the buffer and its attachments
 * with ids chosen here and maps @a. Returns -EAGAIN (nothing changed) when
 * no lease applies: no stock for the allocator the rule picks, too many
 * attachments, or a buffer too large.
 */
static int cenalloc_map_leased(struct cenalloc_attachment *a, u32 direction,
			       struct cenalloc_range **segments, u32 *num)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_dev *cdev = buffer->cdev;
	struct cenalloc_leased_attach *rec;
	struct cenalloc_leased_map_req *lm;
	struct cenalloc_range *seg, *claim;
	struct cenalloc_attachment *each;
	u32 allocator, index = 0, i;
	struct cenalloc_req *req;
	u64 addr, len;

	if (!cdev->leases || buffer->buffer_id || buffer->backed ||
	    !buffer->num_attachments ||
	    buffer->num_attachments > CENALLOC_MAX_LEASED_ATTACH)
		return -EAGAIN;
	req = cenalloc_req_alloc(cdev);
	if (!req)
		return -EAGAIN;
	lm = cenalloc_req_add(req, CENALLOC_CMD_LEASED_MAP,
			      sizeof(*lm) + buffer->num_attachments *
			      sizeof(*rec), 0);
	seg = kmalloc(sizeof(*seg), GFP_KERNEL);
	claim = kmalloc(sizeof(*claim), GFP_KERNEL);
	if (IS_ERR(lm) || !seg || !claim)
		goto out_free;
	if (!cenalloc_lease_take(cdev, buffer->access_mask, buffer->size,
				 &allocator, &addr, &len))
		goto out_free;
	seg->addr = cpu_to_le64(addr);
	seg->len = cpu_to_le64(buffer->size);
	/* The extent's count on its blocks becomes the buffer's backing's. */
	*claim = *seg;
	cenalloc_pools_claim_trim(cdev, addr, len, buffer->size);
	buffer->claim = claim;
	buffer->num_claim = 1;

	lm->buffer_id = cpu_to_le32(cenalloc_lease_id(cdev));
	lm->initial_mask = cpu_to_le32(buffer->initial_mask);
	lm->size = cpu_to_le64(buffer->size);
	lm->extent = cpu_to_le64(addr);
	lm->direction = cpu_to_le32(direction);
	lm->num_attachments = cpu_to_le32(buffer->num_attachments);
	rec = (struct cenalloc_leased_attach *)(lm + 1);
	list_for_each_entry(each, &buffer->attachments, node) {
		if (each == a)
			lm->map_index = cpu_to_le32(index);
		rec[index].attach_id = cpu_to_le32(cenalloc_lease_id(cdev));
		rec[index].mask = cpu_to_le32(each->mask);
		rec[index].map_type = cpu_to_le32(each->map_type);
		rec[index].num_types = cpu_to_le32(each->num_types);
		for (i = 0; i < each->num_types; i++)
			rec[index].types[i] = cpu_to_le32(each->types[i]);
		each->attach_id = le32_to_cpu(rec[index].attach_id);
		index++;
	}
	buffer->buffer_id = le32_to_cpu(lm->buffer_id);
	buffer->backed = true;
	buffer->allocator_id = allocator;
	buffer->num_backing = 1;
	a->num_maps++;
	cenalloc_req_post(req);
	*segments = seg;
	*num = 1;
	return 0;

out_free:
	kfree(claim);
	kfree(seg);
	cenalloc_req_free(req);
	return -EAGAIN;
}

/* Whether a map of @buffer must be one contiguous range. */
static bool cenalloc_map_contiguous(struct cenalloc_buffer *buffer)
{
	return buffer->contiguous_promised ||
	       cenalloc_contig_possible(buffer, buffer->access_mask);
}

/*
 * Map @a: from a leased extent when the buffer is new and small enough,
 * else on the device, growing a pool once when the device has no room
 * (-ENOMEM), and giving the leased stock back when the room the device
 * found is in it (-EAGAIN). Returns the backing segments (kfree them) and
 * counts one outstanding device map on @a.
 */
int cenalloc_attachment_map(struct cenalloc_attachment *a, u32 direction,
			    struct cenalloc_range **segments, u32 *num)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_dev *cdev = buffer->cdev;
	bool grown = false, returned = false;
	int ret;

	lockdep_assert_held(&buffer->lock);
	if (!cenalloc_map_leased(a, direction, segments, num))
		return 0;
	for (;;) {
		ret = cenalloc_map_device(a, direction, segments, num);
		if (ret == -EAGAIN && !returned) {
			returned = true;
			cenalloc_lease_return_mask(cdev, buffer->access_mask);
			continue;
		}
		if (ret == -ENOMEM && !grown && !READ_ONCE(cdev->removed)) {
			grown = true;
			if (!cenalloc_pools_grow_for(cdev, buffer->access_mask,
						     buffer->size,
						     cenalloc_map_contiguous(buffer)))
				continue;
		}
		return ret;
	}
}
