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
 * (-EBUSY).
 *
 * Commands nobody waits for (UNMAP, DETACH, SYNC END, FREE; their requests
 * allocated beforehand, so that teardown never fails) gather in the
 * buffer's pending batch (cenalloc_buffer_defer()): one chain for a
 * buffer's whole teardown. It goes on the ring (posted) when the buffer is
 * released, when it is full, and before any other command of that buffer,
 * so the device sees one buffer's commands in the order they were made;
 * commands of different buffers do not depend on each other. While the
 * buffer's LEASED_MAP is held (below), they are added to it instead.
 *
 * With leases (cenalloc_lease.c) the first map of a small buffer waits for
 * nothing: a leased extent backs it and one LEASED_MAP tells the device
 * everything (CREATE, every ATTACH and the MAP, with ids the driver chose),
 * as long as the device will negotiate the map types the driver did
 * (cenalloc_leased_types_hold()). The LEASED_MAP is held by the transport
 * (cenalloc_req_hold()): it goes on the ring with the buffer's UNMAP,
 * DETACH and FREE in one chain, or first of all when any other chain goes
 * on the ring before (a GET_INFO, STATS, PHYS, another buffer's MAP...),
 * so that nothing the device reports misses the map. Its answer is
 * checked as any posted one's. A map the device answers -ENOMEM
 * grows a pool and maps again once; -EAGAIN (its room is in our leased
 * stock) gives the stock back and maps again, a few times at most.
 *
 * The device is not trusted. Every answer is checked against what the
 * driver asked and what it already knows before anything of it is used;
 * a malformed or inconsistent answer fails the operation with -EIO, is
 * logged (rate limited) and counted (debugfs answers_rejected), and what
 * the device did for it is undone (FREE, DETACH, UNMAP):
 * - CREATE: a valid id, the size asked for;
 * - ATTACH: a valid id, a mapping type the importer listed and the device
 *   offered at probe;
 * - MAP: the attachment's negotiated type; the buffer's size; at most
 *   max_segments page-aligned segments that add up to the size, each
 *   inside the memory donated to the allocator named (whose kinds must meet
 *   the buffer's mask); one segment when the buffer must be contiguous (a
 *   CONTIG type, a contiguous pool, a mask of contiguous kinds only); below
 *   4 GiB when it must be (a DMA32 pool, a mask of DMA32 kinds only); and
 *   the backing already known, unchanged, while any mapping of it is
 *   outstanding (a backing nothing maps may have moved: a MAP that may
 *   migrate it disowns it while on the way, whatever became of its
 *   answer, and the next accepted answer says where it is). So
 *   buffer->backing, which mmap, vmap and the importers' scatterlists are
 *   built from, only ever holds checked memory of the right size. A leased
 *   extent that backs a first map passes the same checks (the LEASE answer
 *   was checked when it came). The backing counts as a user of the pool
 *   blocks under it (cenalloc_pools_claim()): they are not given back
 *   while it lives.
 *
 * A deferred ATTACH the device refuses is marked refused: the attachment's
 * own maps fail with that error, and it is never sent again, so it cannot
 * fail the batches of the buffer's other attachments.
 */
#include <linux/mm.h>
#include <linux/sizes.h>
#include <linux/slab.h>

#include "cenalloc_batch.h"
#include "cenalloc_lease.h"
#include "cenalloc_negotiate.h"
#include "cenalloc_pool.h"
#include "cenalloc_vq.h"

/* The well-known kinds that promise contiguity, and those below 4 GiB. */
#define CENALLOC_KINDS_CONTIG	(CENALLOC_KIND_CONTIG | \
				 CENALLOC_KIND_CONTIG_DMA32)
#define CENALLOC_KINDS_DMA32	(CENALLOC_KIND_DMA32 | \
				 CENALLOC_KIND_CONTIG_DMA32)

static bool cenalloc_id_valid(u32 id)
{
	return id && !(id & CENALLOC_BATCH_REF);
}

/* Count, log (rate limited) and refuse a device answer: -EIO. */
static __printf(2, 3) int cenalloc_bad_answer(struct cenalloc_buffer *buffer,
					      const char *fmt, ...)
{
	struct va_format vaf;
	va_list args;

	cenalloc_answer_rejected(buffer->cdev);
	va_start(args, fmt);
	vaf.fmt = fmt;
	vaf.va = &args;
	pr_warn_ratelimited("cenalloc: buffer %u: device answer rejected: %pV\n",
			    buffer->buffer_id, &vaf);
	va_end(args);
	return -EIO;
}

static bool cenalloc_type_listed(const u32 *types, u32 num, u32 type)
{
	u32 i;

	for (i = 0; i < num; i++)
		if (types[i] == type)
			return true;
	return false;
}

/* Check the device's answer to an ATTACH of @a (nothing recorded). */
static int cenalloc_attach_check(struct cenalloc_attachment *a,
				 const struct cenalloc_attach_resp *resp,
				 u32 len)
{
	struct cenalloc_dev *cdev = a->buffer->cdev;
	u32 id, type;

	if (len < sizeof(*resp))
		return cenalloc_bad_answer(a->buffer, "ATTACH answer of %u bytes",
					   len);
	id = le32_to_cpu(resp->attach_id);
	type = le32_to_cpu(resp->map_type);
	if (!cenalloc_id_valid(id))
		return cenalloc_bad_answer(a->buffer, "attachment id %#x", id);
	if (!cenalloc_type_listed(a->types, a->num_types, type) ||
	    !cenalloc_type_listed(cdev->exporter_types,
				  cdev->num_exporter_types, type))
		return cenalloc_bad_answer(a->buffer,
					   "map type %#x for %s, which listed none such",
					   type, a->dev_name);
	return 0;
}

/* Record a checked ATTACH answer. */
static void cenalloc_attach_record(struct cenalloc_attachment *a,
				   const struct cenalloc_attach_resp *resp)
{
	u32 type = le32_to_cpu(resp->map_type);

	a->attach_id = le32_to_cpu(resp->attach_id);
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
	cenalloc_buffer_flush(buffer);
	/*
	 * UNMAPs in front: a request given up on still runs on the device,
	 * and undo knows only the ATTACH, so a fatal signal must not leave
	 * the driver blind to revocations the device made.
	 */
	ret = idx ? cenalloc_req_submit_unkillable(req) :
		    cenalloc_req_submit(req);
	for (i = 0; !ret && i <= idx; i++)
		ret = cenalloc_req_status(req, i);
	if (ret)
		return ret;
	resp = cenalloc_req_resp(req, idx, &len);
	ret = cenalloc_attach_check(a, resp, len);
	if (ret)
		cenalloc_req_undo(req);	/* DETACH what the device attached */
	else
		cenalloc_attach_record(a, resp);
	return ret;
}

/*
 * Put the buffer's pending batch on the ring (buffer->lock held), behind
 * its held LEASED_MAP (in it, when it fits).
 */
void cenalloc_buffer_flush(struct cenalloc_buffer *buffer)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	struct cenalloc_req *pending = buffer->pending;

	lockdep_assert_held(&buffer->lock);
	buffer->pending = NULL;
	if (READ_ONCE(buffer->held) && pending &&
	    cenalloc_req_held_append(cdev, &buffer->held, pending)) {
		cenalloc_req_free(pending);
		pending = NULL;
	}
	/* Behind the buffer's held LEASED_MAP, if it is still held. */
	if (pending || READ_ONCE(buffer->held))
		cenalloc_req_post_own(cdev, pending, &buffer->held);
}

/*
 * Queue @req, filled with commands nobody waits for, behind the buffer's
 * other such commands (buffer->lock held); it is the buffer's now. Merged
 * into the pending batch when it fits, else the pending batch goes on the
 * ring and @req waits in its place.
 */
void cenalloc_buffer_defer(struct cenalloc_buffer *buffer,
			   struct cenalloc_req *req)
{
	lockdep_assert_held(&buffer->lock);
	/* Nothing pending while the LEASED_MAP is held: into it. */
	if (!buffer->pending && READ_ONCE(buffer->held) &&
	    cenalloc_req_held_append(buffer->cdev, &buffer->held, req)) {
		cenalloc_req_free(req);
		return;
	}
	if (buffer->pending && cenalloc_req_append(buffer->pending, req)) {
		cenalloc_req_free(req);
		return;
	}
	cenalloc_buffer_flush(buffer);
	buffer->pending = req;
}

/*
 * Add a command that only informs the device (SYNC END) to the buffer's
 * pending batch: its zeroed payload, or an ERR_PTR when there is no memory
 * for it (the caller skips the command). The pending batch may carry
 * teardown (UNMAP, DETACH) that must never fail: it grows only within its
 * preallocated command buffer and inline answer, so that posting it needs
 * no allocation (beyond them a fresh request takes the command).
 */
void *cenalloc_buffer_post_cmd(struct cenalloc_buffer *buffer, u16 opcode,
			       u32 len)
{
	struct cenalloc_req *pending = buffer->pending;
	struct cenalloc_req *req;
	void *payload;

	lockdep_assert_held(&buffer->lock);
	if (pending &&
	    pending->cmd_len + sizeof(struct cenalloc_cmd_hdr) + len <=
	    pending->cmd_cap &&
	    pending->resp_len + sizeof(struct cenalloc_resp_hdr) <=
	    CENALLOC_REQ_INLINE_RESP) {
		payload = cenalloc_req_add(pending, opcode, len, 0);
		if (!IS_ERR(payload))
			return payload;
	}
	req = cenalloc_req_alloc(buffer->cdev);
	if (!req)
		return ERR_PTR(-ENOMEM);
	payload = cenalloc_req_add(req, opcode, len, 0);
	if (IS_ERR(payload)) {
		cenalloc_req_free(req);
		return payload;
	}
	cenalloc_buffer_flush(buffer);	/* full */
	buffer->pending = req;
	return payload;
}

/*
 * Fill the UNMAP of one outstanding device map of @a into the request
 * prepared for it (*@reqp) and hand that request over: posting it is the
 * caller's. NULL (and *@reqp freed) when the device holds no map of @a.
 */
struct cenalloc_req *cenalloc_unmap_take(struct cenalloc_attachment *a,
					 u32 direction,
					 struct cenalloc_req **reqp)
{
	struct cenalloc_req *req = *reqp;

	*reqp = NULL;
	if (!req)
		return NULL;
	if (!a->attach_id ||
	    WARN_ON_ONCE(cenalloc_req_add_unmap(req, a, direction))) {
		cenalloc_req_free(req);
		return NULL;
	}
	return req;
}

/* Post the UNMAP of one outstanding device map of @a (buffer lock held),
 * behind the buffer's other posted commands.
 */
void cenalloc_post_unmap(struct cenalloc_attachment *a, u32 direction,
			 struct cenalloc_req **reqp)
{
	struct cenalloc_req *req = cenalloc_unmap_take(a, direction, reqp);

	if (req)
		cenalloc_buffer_defer(a->buffer, req);
}

static unsigned int cenalloc_pending_commands(struct cenalloc_buffer *buffer)
{
	struct cenalloc_attachment *a;
	unsigned int n = buffer->buffer_id ? 0 : 1;

	list_for_each_entry(a, &buffer->attachments, node)
		if (!a->attach_id && !a->refused)
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
		if (a->attach_id || a->refused)
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

/* An attachment the device refused no longer narrows the buffer's mask. */
static void cenalloc_attachment_refuse(struct cenalloc_attachment *a, int err)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_attachment *other;
	u32 mask = buffer->initial_mask ? buffer->initial_mask :
					  CENALLOC_MASK_ANY;

	a->refused = err;
	pr_debug("cenalloc: buffer %u: device refused the attach of %s: %d\n",
		 buffer->buffer_id, a->dev_name, err);
	list_for_each_entry(other, &buffer->attachments, node)
		if (!other->refused)
			mask &= other->mask;
	buffer->access_mask = mask;
}

/*
 * Check, then record, the CREATE/ATTACH answers of the first @num commands.
 * Answers are checked before anything is recorded: one rejected answer
 * undoes the whole batch on the device and records nothing (-EIO). Commands
 * up to the first one the device refused are recorded; an ATTACH it refused
 * marks its attachment refused. Returns 0, the first refusal's status, or
 * -EIO; *@refused is the refused attachment, if any.
 */
static int cenalloc_batch_record(struct cenalloc_buffer *buffer,
				 struct cenalloc_req *req,
				 struct cenalloc_attachment **sent,
				 unsigned int num,
				 struct cenalloc_attachment **refused)
{
	const struct cenalloc_create_resp *cresp;
	unsigned int i, done;
	int ret = 0, status = 0;
	void *resp;
	u32 len, id;

	*refused = NULL;
	for (done = 0; done < num; done++) {
		if (!cenalloc_req_answered(req, done)) {
			ret = cenalloc_bad_answer(buffer, "malformed answer to command %u",
						  done);
			goto undo;
		}
		status = cenalloc_req_status(req, done);
		if (status)
			break;
		resp = cenalloc_req_resp(req, done, &len);
		if (sent[done]) {
			ret = cenalloc_attach_check(sent[done], resp, len);
			if (ret)
				goto undo;
			continue;
		}
		cresp = resp;
		if (len < sizeof(*cresp)) {
			ret = cenalloc_bad_answer(buffer, "CREATE answer of %u bytes",
						  len);
			goto undo;
		}
		id = le32_to_cpu(cresp->buffer_id);
		if (!cenalloc_id_valid(id) ||
		    le64_to_cpu(cresp->size) != buffer->size) {
			ret = cenalloc_bad_answer(buffer, "CREATE answer: id %#x, size %llu",
						  id, le64_to_cpu(cresp->size));
			goto undo;
		}
	}

	for (i = 0; i < done; i++) {
		resp = cenalloc_req_resp(req, i, &len);
		if (sent[i]) {
			cenalloc_attach_record(sent[i], resp);
		} else {
			cresp = resp;
			buffer->buffer_id = le32_to_cpu(cresp->buffer_id);
		}
	}
	if (done < num && status != -ECANCELED && sent[done]) {
		cenalloc_attachment_refuse(sent[done], status);
		*refused = sent[done];
	}
	return status;

undo:
	cenalloc_req_undo(req);
	return ret;
}

/* Bring the buffer and every pending attachment to the device, leaving
 * room for @keep more commands in the last batch; returns that batch.
 * Sets *@retry when the device refused an attachment other than @a (the
 * caller tries again without it).
 */
static struct cenalloc_req *
cenalloc_batch_begin(struct cenalloc_buffer *buffer,
		     struct cenalloc_attachment *a,
		     struct cenalloc_attachment **sent, unsigned int keep,
		     bool *retry)
{
	u32 max_batch = buffer->cdev->max_batch;
	struct cenalloc_attachment *refused;
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
						    req->num_cmds, &refused);
		cenalloc_req_free(req);
		if (ret && refused && refused != a)
			*retry = true;
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

/* Does any attachment hold a device mapping of the buffer? */
static bool cenalloc_buffer_mapped(struct cenalloc_buffer *buffer)
{
	struct cenalloc_attachment *a;

	list_for_each_entry(a, &buffer->attachments, node)
		if (a->num_maps)
			return true;
	return false;
}

/* Must the buffer be one contiguous range, whatever the device says? */
static bool cenalloc_buffer_must_be_contig(struct cenalloc_attachment *a,
					   u32 placement)
{
	struct cenalloc_buffer *buffer = a->buffer;
	u32 mask = buffer->access_mask;
	struct cenalloc_attachment *other;

	if (a->map_type == CENALLOC_MAP_CONTIG ||
	    (placement & CENALLOC_PLACE_CONTIG) ||
	    (mask && !(mask & ~CENALLOC_KINDS_CONTIG)))
		return true;
	list_for_each_entry(other, &buffer->attachments, node)
		if (!other->refused && other->map_type == CENALLOC_MAP_CONTIG)
			return true;
	return false;
}

/*
 * Check segments @seg (@n of them, from allocator @alloc, MAP flags @flags)
 * against everything the driver knows (see the top of this file) and make
 * them the buffer's backing, counted on the pool blocks under them.
 * Nothing changes on error.
 */
static int cenalloc_backing_accept(struct cenalloc_attachment *a, u32 alloc,
				   u32 flags, const struct cenalloc_range *seg,
				   u32 n)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_dev *cdev = buffer->cdev;
	u64 total = 0, addr, seg_len, size = buffer->size;
	struct cenalloc_zombie *zombie = NULL;
	const struct cenalloc_pool *pool;
	struct cenalloc_range *copy;
	u32 i, placement;
	bool contig, below_4g;
	int ret;

	if (alloc >= cdev->num_pools)
		return cenalloc_bad_answer(buffer, "allocator %u has no pool", alloc);
	pool = &cdev->pools[alloc];
	if (!(le32_to_cpu(pool->config.kinds) & buffer->access_mask))
		return cenalloc_bad_answer(buffer, "allocator %u serves no kind of mask %#x",
					   alloc, buffer->access_mask);
	placement = le32_to_cpu(pool->config.placement);
	contig = cenalloc_buffer_must_be_contig(a, placement);
	below_4g = (placement & CENALLOC_PLACE_DMA32) ||
		   (buffer->access_mask &&
		    !(buffer->access_mask & ~CENALLOC_KINDS_DMA32));
	if (contig && n != 1)
		return cenalloc_bad_answer(buffer, "%u segments for a contiguous buffer",
					   n);

	for (i = 0; i < n; i++) {
		addr = le64_to_cpu(seg[i].addr);
		seg_len = le64_to_cpu(seg[i].len);
		if (!seg_len || !PAGE_ALIGNED(addr) || !PAGE_ALIGNED(seg_len) ||
		    seg_len > size - total)
			return cenalloc_bad_answer(buffer,
						   "segment %u [%#llx +%#llx] of a %llu-byte buffer",
						   i, addr, seg_len, size);
		if (below_4g && (addr >= SZ_4G || seg_len > SZ_4G - addr))
			return cenalloc_bad_answer(buffer, "segment %u [%#llx +%#llx] above 4 GiB",
						   i, addr, seg_len);
		if (!cenalloc_pool_contains(cdev, alloc, addr, seg_len))
			return cenalloc_bad_answer(buffer,
						   "segment %u [%#llx +%#llx] outside pool %.16s",
						   i, addr, seg_len,
						   pool->config.name);
		total += seg_len;
	}
	if (total != size)
		return cenalloc_bad_answer(buffer, "segments of %llu bytes for %llu",
					   total, size);

	/*
	 * A backing moves only when nothing maps it. The MIGRATED flag is
	 * not required: the answer that carried it may never have been taken
	 * (more segments than its slot held, a submitter killed on the way,
	 * a rejected batch), and the device answers the next MAP of the moved
	 * backing without it.
	 */
	if (buffer->backing && cenalloc_buffer_mapped(buffer)) {
		if (n != buffer->num_backing ||
		    memcmp(seg, buffer->backing, n * sizeof(*seg)))
			return cenalloc_bad_answer(buffer,
						   "%u segments that differ from the %u already known",
						   n, buffer->num_backing);
	} else if (!buffer->backing || n != buffer->num_backing ||
		   memcmp(seg, buffer->backing, n * sizeof(*seg))) {
		copy = kvmalloc_array(n, sizeof(*seg), GFP_KERNEL);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, seg, n * sizeof(*seg));
		/* Revoked mappings of the old backing live: it stays ours. */
		if (buffer->backing && cenalloc_buffer_revoked_live(buffer)) {
			zombie = kzalloc(sizeof(*zombie), GFP_KERNEL);
			if (!zombie) {
				kvfree(copy);
				return -ENOMEM;
			}
		}
		/*
		 * Its blocks are not given back while it is the backing, and
		 * no other buffer's backing may share a page with it.
		 */
		ret = cenalloc_pools_own(cdev, copy, n, alloc,
					 zombie ? NULL : buffer->backing,
					 zombie ? 0 : buffer->num_backing);
		if (ret) {
			kfree(zombie);
			kvfree(copy);
			return cenalloc_bad_answer(buffer,
						   "segments pool %u no longer has, or that back another buffer",
						   alloc);
		}
		if (zombie)
			cenalloc_zombie_add(buffer, zombie);
		kvfree(buffer->backing);
		buffer->backing = copy;
		buffer->num_backing = n;
		buffer->backing_loose = false;
	}
	if (flags & CENALLOC_MAP_F_MIGRATED)
		pr_debug("cenalloc: buffer %u migrated to allocator %u\n",
			 buffer->buffer_id, alloc);
	buffer->backed = true;
	buffer->allocator_id = alloc;
	return 0;
}

/* Check a MAP answer and make it the buffer's backing (see above). */
static int cenalloc_map_accept(struct cenalloc_attachment *a, const void *resp,
			       u32 len)
{
	const struct cenalloc_map_resp *mr = resp;
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_dev *cdev = buffer->cdev;
	u32 n, type;

	if (len < sizeof(*mr))
		return cenalloc_bad_answer(buffer, "MAP answer of %u bytes", len);
	n = le32_to_cpu(mr->num_segments);
	type = le32_to_cpu(mr->map_type);
	if (!n || n > (len - sizeof(*mr)) / sizeof(struct cenalloc_range) ||
	    n > cdev->max_segments)
		return cenalloc_bad_answer(buffer, "%u segments in a %u-byte MAP answer",
					   n, len);
	if (le64_to_cpu(mr->size) != buffer->size)
		return cenalloc_bad_answer(buffer, "MAP of size %llu, not %llu",
					   le64_to_cpu(mr->size), buffer->size);
	if (type != a->map_type)
		return cenalloc_bad_answer(buffer, "map type %#x, %s negotiated %#x",
					   type, a->dev_name, a->map_type);
	return cenalloc_backing_accept(a, le32_to_cpu(mr->allocator_id),
				       le32_to_cpu(mr->flags),
				       (const struct cenalloc_range *)(mr + 1),
				       n);
}

/* One MAP of an attachment that is on the device, slot of @slot bytes. */
static int cenalloc_map_once(struct cenalloc_attachment *a, u32 direction,
			     u32 slot, struct cenalloc_req **out)
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
	if (ret) {
		cenalloc_req_free(req);
		return ret;
	}
	*out = req;
	return 0;
}

/*
 * The slot a MAP that answered -ENOSPC asks for: -EIO for a malformed
 * request, -E2BIG when it needs more segments than the driver accepts.
 */
static int cenalloc_map_retry_slot(struct cenalloc_buffer *buffer,
				   struct cenalloc_req *req, unsigned int i,
				   u32 *slot)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	u32 needed = cenalloc_req_needed(req, i);
	u64 segments;

	if (needed <= sizeof(struct cenalloc_map_resp) ||
	    !IS_ALIGNED(needed, 8) || needed > CENALLOC_MAX_SLOT)
		return cenalloc_bad_answer(buffer, "MAP needs a %u-byte answer",
					   needed);
	segments = (needed - sizeof(struct cenalloc_map_resp)) /
		   sizeof(struct cenalloc_range);
	if (segments > le32_to_cpu(cdev->config.max_segments))
		return cenalloc_bad_answer(buffer,
					   "MAP needs %llu segments, the device's limit is %u",
					   segments,
					   le32_to_cpu(cdev->config.max_segments));
	if (segments > cdev->max_segments) {
		pr_warn_ratelimited("cenalloc: buffer %u has %llu segments, more than max_segments %u\n",
				    buffer->buffer_id, segments,
				    cdev->max_segments);
		return -E2BIG;
	}
	*slot = needed;
	return 0;
}

/* The batch of cenalloc_attachment_map_try(), sent and checked. */
static int cenalloc_attachment_map_send(struct cenalloc_attachment *a,
					u32 direction,
					struct cenalloc_req **unmap_req,
					bool *retry)
{
	struct cenalloc_attachment *sent[CENALLOC_MAX_BATCH];
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_attachment *refused;
	struct cenalloc_map_req *mr;
	struct cenalloc_req *req;
	unsigned int i, map_idx;
	u32 len, slot;
	void *resp;
	int ret;

	req = cenalloc_batch_begin(buffer, a, sent, 1, retry);
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
	ret = cenalloc_batch_record(buffer, req, sent, map_idx, &refused);
	if (ret) {
		if (refused && refused != a)
			*retry = true;
		goto out_free;
	}
	if (!cenalloc_req_answered(req, map_idx))
		goto bad_map;
	ret = cenalloc_req_status(req, map_idx);
	if (ret == -ENOSPC) {
		/* More segments than the slot holds: ask again, exactly. */
		ret = cenalloc_map_retry_slot(buffer, req, map_idx, &slot);
		cenalloc_req_free(req);
		req = NULL;
		if (ret)
			return ret;
		ret = cenalloc_map_once(a, direction, slot, &req);
		if (ret)
			return ret;
		map_idx = 0;
		if (!cenalloc_req_answered(req, map_idx))
			goto bad_map;
		ret = cenalloc_req_status(req, map_idx);
	}
	if (ret)
		goto out_free;

	resp = cenalloc_req_resp(req, map_idx, &len);
	ret = cenalloc_map_accept(a, resp, len);
	if (ret)
		goto unmap;
	a->num_maps++;
	if (a->revocable)
		buffer->revocable_maps++;	/* cenalloc_make_room() */
	goto out_free;

bad_map:
	ret = cenalloc_bad_answer(buffer, "malformed MAP answer");
unmap:
	/* The device may have mapped: take that back, use nothing of it. */
	cenalloc_post_unmap(a, direction, unmap_req);
out_free:
	cenalloc_req_free(req);
	return ret;
}

/*
 * One try of cenalloc_attachment_map() on the device; sets *@retry when an
 * attachment other than @a was refused (the next try goes without it).
 *
 * A MAP of a backing nothing maps may migrate it, and the device may give
 * the old pages to another buffer before this answer is read: they are
 * disowned while the MAP is on the way (buffer->backing_loose), and owned
 * again when an answer names them as the backing (a device that handed
 * them out meanwhile fails this map). Without an accepted answer they stay
 * loose: the device may have moved the backing and freed them. While
 * revoked mappings of the backing live they stay owned instead (struct
 * cenalloc_zombie): no other buffer may get them.
 */
static int cenalloc_attachment_map_try(struct cenalloc_attachment *a,
				       u32 direction,
				       struct cenalloc_req **unmap_req,
				       bool *retry)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_range *loose = NULL;
	u32 num = buffer->num_backing;
	int ret;

	if (buffer->backing && !cenalloc_buffer_mapped(buffer) &&
	    (buffer->backing_loose || !cenalloc_buffer_revoked_live(buffer))) {
		loose = buffer->backing;
		if (!buffer->backing_loose)
			cenalloc_pools_disown(buffer->cdev, loose, num);
		buffer->backing_loose = true;
	}
	ret = cenalloc_attachment_map_send(a, direction, unmap_req, retry);
	/* No loose backing, or an accepted answer moved it. */
	if (!loose || buffer->backing != loose || ret)
		return ret;
	if (!cenalloc_pools_reown(buffer->cdev, loose, num)) {
		buffer->backing_loose = false;
		return 0;
	}
	ret = cenalloc_bad_answer(buffer, "its backing now backs another buffer too");
	a->num_maps--;
	cenalloc_post_unmap(a, direction, unmap_req);
	return ret;
}

/*
 * Does the device agree with every map type the driver negotiated? It
 * negotiates each record of a LEASED_MAP against the kinds of the records
 * before it and its own, and refuses a record whose type differs; the
 * driver negotiated at attach time, against attachments that may have gone
 * since (a CONTIG-only importer that detached). When it does not agree,
 * the map goes to the device, which negotiates in the ATTACH answers.
 */
static bool cenalloc_leased_types_hold(struct cenalloc_buffer *buffer)
{
	u32 mask = buffer->initial_mask ? buffer->initial_mask :
					  CENALLOC_MASK_ANY;
	struct cenalloc_attachment *each;
	u32 type;

	list_for_each_entry(each, &buffer->attachments, node) {
		mask &= each->mask;
		if (cenalloc_negotiate(buffer, mask, each->types,
				       each->num_types, &type) ||
		    type != each->map_type)
			return false;
	}
	return true;
}

/*
 * The first map of a buffer no command has reached yet, from a leased
 * extent: one LEASED_MAP, posted, creates the buffer and its attachments
 * with ids chosen here and maps @a. Returns -EAGAIN (nothing changed) when
 * no lease applies: no stock for the allocator the rule picks, too many
 * attachments, a buffer too large, or an extent that fails the checks of a
 * MAP answer (logged, dropped from the stock: the device maps instead).
 */
static int cenalloc_map_leased(struct cenalloc_attachment *a, u32 direction)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_dev *cdev = buffer->cdev;
	struct cenalloc_leased_attach *rec;
	struct cenalloc_leased_map_req *lm;
	struct cenalloc_attachment *each;
	struct cenalloc_range ext, seg;
	struct cenalloc_lease_id *ids;
	u32 allocator, index = 0, i;
	unsigned int num_ids = 0;
	struct cenalloc_req *req;
	u64 addr, len;
	int ret;

	if (!cdev->leases || buffer->buffer_id || buffer->backed ||
	    !buffer->num_attachments ||
	    buffer->num_attachments > CENALLOC_MAX_LEASED_ATTACH)
		return -EAGAIN;
	list_for_each_entry(each, &buffer->attachments, node)
		if (each->refused || each->attach_id)
			return -EAGAIN;
	if (!cenalloc_leased_types_hold(buffer))
		return -EAGAIN;
	/* The buffer's id, then one per attachment: none in use (F4). */
	if (buffer->num_attachments < ARRAY_SIZE(buffer->lease_ids_inline))
		ids = buffer->lease_ids_inline;
	else
		ids = kmalloc_array(buffer->num_attachments + 1,
				    sizeof(*ids), GFP_KERNEL);
	if (!ids)
		return -EAGAIN;
	while (num_ids <= buffer->num_attachments &&
	       !cenalloc_lease_id_get(cdev, &ids[num_ids]))
		num_ids++;
	req = num_ids > buffer->num_attachments ? cenalloc_req_alloc(cdev) : NULL;
	if (!req)
		goto err_ids;
	lm = cenalloc_req_add(req, CENALLOC_CMD_LEASED_MAP,
			      sizeof(*lm) + buffer->num_attachments *
			      sizeof(*rec), 0);
	if (IS_ERR(lm))
		goto err_req;
	/* From the take until the post: a map giving the stock back waits. */
	cenalloc_lease_taking(cdev);
	if (!cenalloc_lease_take(cdev, buffer->access_mask, buffer->size,
				 &allocator, &addr, &len))
		goto err_taking;
	/*
	 * The checks of a MAP answer; the backing (its first size bytes)
	 * counts on its blocks from now on, instead of the leased extent.
	 */
	ext.addr = cpu_to_le64(addr);
	ext.len = cpu_to_le64(len);
	seg.addr = ext.addr;
	seg.len = cpu_to_le64(buffer->size);
	ret = cenalloc_backing_accept(a, allocator, CENALLOC_MAP_F_ALLOCATED,
				      &seg, 1);
	/* backing_accept counted the backing itself: drop the lease's count. */
	cenalloc_pools_unclaim(cdev, &ext, 1);
	if (ret) {
		/* Not usable, not in the stock: the device's again. */
		cenalloc_lease_give_back(cdev, allocator, &ext, 1);
		goto err_taking;
	}

	lm->buffer_id = cpu_to_le32(ids[0].id);
	lm->initial_mask = cpu_to_le32(buffer->initial_mask);
	lm->size = cpu_to_le64(buffer->size);
	lm->extent = cpu_to_le64(addr);
	lm->direction = cpu_to_le32(direction);
	lm->num_attachments = cpu_to_le32(buffer->num_attachments);
	rec = (struct cenalloc_leased_attach *)(lm + 1);
	list_for_each_entry(each, &buffer->attachments, node) {
		if (each == a)
			lm->map_index = cpu_to_le32(index);
		rec[index].attach_id = cpu_to_le32(ids[index + 1].id);
		rec[index].mask = cpu_to_le32(each->mask);
		rec[index].map_type = cpu_to_le32(each->map_type);
		rec[index].num_types = cpu_to_le32(each->num_types);
		for (i = 0; i < each->num_types; i++)
			rec[index].types[i] = cpu_to_le32(each->types[i]);
		each->attach_id = le32_to_cpu(rec[index].attach_id);
		index++;
	}
	buffer->buffer_id = le32_to_cpu(lm->buffer_id);
	buffer->lease_ids = ids;
	buffer->num_lease_ids = num_ids;
	a->num_maps++;
	/*
	 * Nothing of the buffer waits in its pending batch yet. Held, it
	 * goes on the ring with the buffer's teardown, or before any other
	 * chain: GET_INFO, which comes after, sees the buffer.
	 */
	WARN_ON_ONCE(buffer->pending);
	cenalloc_req_hold(req, &buffer->held);
	cenalloc_lease_taken(cdev);
	return 0;

err_taking:
	cenalloc_lease_taken(cdev);
err_req:
	cenalloc_req_free(req);
err_ids:
	cenalloc_lease_ids_put(cdev, ids, num_ids);
	if (ids != buffer->lease_ids_inline)
		kfree(ids);
	return -EAGAIN;
}

/*
 * How often one map gives the leased stock back and maps again. Refills
 * are held off from the first return to the end of the map, and a LEASE on
 * its way is waited for before the stock goes back (cenalloc_lease_hold()),
 * so one return normally suffices; another finds what a refused
 * LEASE_RETURN put back in the stock, or a revoke that raced.
 */
#define CENALLOC_MAP_STOCK_RETURNS	3

/* Whether a map of @buffer must be one contiguous range. */
static bool cenalloc_map_contiguous(struct cenalloc_buffer *buffer)
{
	return buffer->contiguous_promised ||
	       cenalloc_contig_possible(buffer, buffer->access_mask);
}

/*
 * Map @a: from a leased extent when the buffer is new and small enough
 * (cenalloc_map_leased()), else on the device, where the pending CREATE and
 * ATTACHes travel with the MAP in one batch; growing a pool once when the
 * device has no room (-ENOMEM), and giving the leased stock back when the
 * room it found is in that stock (-EAGAIN; refills held off until the map
 * is done, up to CENALLOC_MAP_STOCK_RETURNS times). On success the
 * backing is buffer->backing (valid while the buffer lock is held) and @a
 * counts one more outstanding device map. *@unmap_req is the request prepared for that
 * map's UNMAP: used (and set to NULL) when a rejected answer must be taken
 * back.
 */
int cenalloc_attachment_map(struct cenalloc_attachment *a, u32 direction,
			    struct cenalloc_req **unmap_req)
{
	struct cenalloc_buffer *buffer = a->buffer;
	struct cenalloc_dev *cdev = buffer->cdev;
	bool grown = false, held = false, retry;
	unsigned int returned = 0;
	int ret;

	lockdep_assert_held(&buffer->lock);
	ret = cenalloc_map_leased(a, direction);
	if (ret != -EAGAIN)
		return ret;
	for (;;) {
		/* Each retry follows one more refused attachment: bounded. */
		if (a->refused) {
			ret = a->refused;
			break;
		}
		retry = false;
		ret = cenalloc_attachment_map_try(a, direction, unmap_req,
						  &retry);
		if (retry)
			continue;
		/*
		 * The room is in our stock: no refill may take it again
		 * before this map is done, and a LEASE already on its way
		 * goes back with the stock.
		 */
		if (ret == -EAGAIN && returned < CENALLOC_MAP_STOCK_RETURNS) {
			if (!held) {
				ret = cenalloc_lease_hold(cdev);
				if (ret)
					break;
				held = true;
			}
			returned++;
			cenalloc_lease_return_mask(cdev, buffer->access_mask);
			continue;
		}
		if (ret == -ENOMEM && !grown && !cenalloc_dev_usable(cdev)) {
			grown = true;
			if (!cenalloc_pools_grow_for(cdev, buffer->access_mask,
						     buffer->size,
						     cenalloc_map_contiguous(buffer)))
				continue;
		}
		/*
		 * remove() resets the device before it stops the queue: a MAP
		 * answered after that RESET finds no pool (-ENOMEM) or no
		 * buffer. The device is going away: say so.
		 */
		if (ret < 0 && READ_ONCE(cdev->quiesced))
			ret = -ENODEV;
		break;
	}
	if (held)
		cenalloc_lease_unhold(cdev);
	return ret;
}
