// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc requests: one batch of commands for the control queue and its
 * answer buffer (cenalloc_vq.c puts them on the ring and waits).
 *
 * A request is built with cenalloc_req_add() (one call per command, each
 * payload zeroed), merged with cenalloc_req_append(), given its batch
 * header and a zeroed answer buffer by cenalloc_req_prepare(), and read
 * back with cenalloc_req_status() and friends, which check every answer
 * against the slot it was given: the device is not trusted.
 *
 * Answer buffers are zeroed before the device sees them. One of at most
 * CENALLOC_REQ_INLINE_RESP bytes lives in the request, one of at most a
 * page is kmalloc()ed, a larger one (a MAP of a fragmented buffer: 16 bytes
 * per segment) is built from blocks of up to 2^CENALLOC_RESP_CHUNK_ORDER
 * pages, never one high-order allocation, and mapped with vmap().
 */
#include <linux/err.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "cenalloc_req.h"

/* Largest answer buffer allocated with kmalloc(). */
#define CENALLOC_RESP_KMALLOC_MAX	PAGE_SIZE
/* Largest block of a paged answer buffer: 64 KiB. */
#define CENALLOC_RESP_CHUNK_ORDER	4

/* Not zeroed as a whole (it is 1.5 KiB): every field a request reads
 * before writing it is set here, each command is zeroed by
 * cenalloc_req_add(), the answer buffer by cenalloc_req_prepare().
 */
struct cenalloc_req *cenalloc_req_alloc(struct cenalloc_dev *cdev)
{
	struct cenalloc_req *req;

	req = kmalloc(sizeof(*req), GFP_KERNEL);
	if (!req)
		return NULL;
	req->cdev = cdev;
	refcount_set(&req->ref, 1);
	INIT_LIST_HEAD(&req->node);
	req->held_by = NULL;
	req->posted = false;
	req->queued = false;
	req->answered = false;
	req->abandoned = false;
	req->polling = false;
	req->queued_ns = 0;
	req->error = 0;
	req->num_cmds = 0;
	req->used_len = 0;
	req->cmd_buf = req->inline_cmd;
	req->cmd_cap = sizeof(req->inline_cmd);
	req->cmd_len = sizeof(struct cenalloc_batch_hdr);
	req->resp_buf = NULL;
	req->resp_pages = NULL;
	req->resp_npages = 0;
	req->resp_len = sizeof(struct cenalloc_batch_resp);
	return req;
}

static void cenalloc_resp_free_pages(struct page **pages, unsigned int n)
{
	while (n)
		__free_page(pages[--n]);
	kvfree(pages);
}

static void cenalloc_req_destroy(struct cenalloc_req *req)
{
	if (req->resp_pages) {
		vunmap(req->resp_buf);
		sg_free_table(&req->resp_sgt);
		cenalloc_resp_free_pages(req->resp_pages, req->resp_npages);
	} else if (req->resp_buf != req->inline_resp) {
		kfree(req->resp_buf);
	}
	if (req->cmd_buf != req->inline_cmd)
		kfree(req->cmd_buf);
	kfree(req);
}

/*
 * Drop one owner's reference. The last reference of a request with a paged
 * answer is never dropped in atomic context: the ring hands abandoned
 * requests to a work item, and posted requests have small answers.
 */
void cenalloc_req_put(struct cenalloc_req *req)
{
	if (refcount_dec_and_test(&req->ref))
		cenalloc_req_destroy(req);
}

/* Drop the builder's reference (the ring may still hold one). */
void cenalloc_req_free(struct cenalloc_req *req)
{
	if (req)
		cenalloc_req_put(req);
}

/*
 * Append a command with a zeroed payload of @len bytes and a response slot
 * of @resp_len bytes. Returns the payload to fill in (valid until the next
 * call), or an ERR_PTR: -E2BIG when the batch already holds max_batch
 * commands.
 */
void *cenalloc_req_add(struct cenalloc_req *req, u16 opcode, u32 len,
		       u32 resp_len)
{
	size_t need = req->cmd_len + sizeof(struct cenalloc_cmd_hdr) + len;
	struct cenalloc_cmd_hdr *hdr;
	u8 *grown;

	if (req->num_cmds >= CENALLOC_MAX_BATCH ||
	    req->num_cmds >= req->cdev->max_batch)
		return ERR_PTR(-E2BIG);
	if (!IS_ALIGNED(len, 8) || !IS_ALIGNED(resp_len, 8) ||
	    resp_len > CENALLOC_MAX_SLOT)
		return ERR_PTR(-EINVAL);
	if (need > req->cmd_cap) {
		size_t cap = max(need, req->cmd_cap * 2);

		if (req->cmd_buf == req->inline_cmd) {
			grown = kmalloc(cap, GFP_KERNEL);
			if (grown)
				memcpy(grown, req->cmd_buf, req->cmd_len);
		} else {
			grown = krealloc(req->cmd_buf, cap, GFP_KERNEL);
		}
		if (!grown)
			return ERR_PTR(-ENOMEM);
		req->cmd_buf = grown;
		req->cmd_cap = cap;
	}
	hdr = (struct cenalloc_cmd_hdr *)(req->cmd_buf + req->cmd_len);
	memset(hdr, 0, sizeof(*hdr) + len);
	hdr->opcode = cpu_to_le16(opcode);
	hdr->len = cpu_to_le32(len);
	hdr->resp_len = cpu_to_le32(resp_len);
	req->cmd_len = need;
	req->resp_off[req->num_cmds] = req->resp_len;
	req->slot_len[req->num_cmds] = resp_len;
	req->resp_len += sizeof(struct cenalloc_resp_hdr) + resp_len;
	req->num_cmds++;
	return hdr + 1;
}

/*
 * Move the commands of @src (not sent) to the end of @dst (not sent) if
 * that needs no allocation and stays within max_batch; true if it did (then
 * free @src). Used to send teardown commands prepared one per object in as
 * few chains as the device allows.
 */
bool cenalloc_req_append(struct cenalloc_req *dst,
			 const struct cenalloc_req *src)
{
	size_t hdr = sizeof(struct cenalloc_batch_hdr);
	size_t cmds = src->cmd_len - hdr;
	unsigned int i, n = dst->num_cmds;
	u32 base = dst->resp_len - sizeof(struct cenalloc_batch_resp);

	if (n + src->num_cmds > min_t(u32, CENALLOC_MAX_BATCH,
				      dst->cdev->max_batch) ||
	    dst->cmd_len + cmds > dst->cmd_cap ||
	    dst->resp_len + src->resp_len - sizeof(struct cenalloc_batch_resp) >
	    CENALLOC_REQ_INLINE_RESP)
		return false;
	memcpy(dst->cmd_buf + dst->cmd_len, src->cmd_buf + hdr, cmds);
	dst->cmd_len += cmds;
	for (i = 0; i < src->num_cmds; i++) {
		dst->resp_off[n + i] = src->resp_off[i] + base;
		dst->slot_len[n + i] = src->slot_len[i];
	}
	dst->num_cmds += src->num_cmds;
	dst->resp_len += src->resp_len - sizeof(struct cenalloc_batch_resp);
	return true;
}

/* A zeroed answer buffer of resp_len bytes built from blocks of pages. */
static int cenalloc_resp_alloc_pages(struct cenalloc_req *req)
{
	unsigned int npages = DIV_ROUND_UP(req->resp_len, PAGE_SIZE);
	unsigned int order = CENALLOC_RESP_CHUNK_ORDER, i = 0, k;
	struct page **pages, *page;
	gfp_t gfp;
	int ret;

	pages = kvmalloc_array(npages, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	while (i < npages) {
		while (order && (1u << order) > npages - i)
			order--;
		gfp = GFP_KERNEL | __GFP_ZERO;
		if (order)
			gfp |= __GFP_NORETRY | __GFP_NOWARN;
		page = alloc_pages(gfp, order);
		if (!page) {
			if (!order) {
				ret = -ENOMEM;
				goto err_free;
			}
			order--;
			continue;
		}
		if (order)
			split_page(page, order);
		for (k = 0; k < (1u << order); k++)
			pages[i++] = page + k;
	}
	ret = sg_alloc_table_from_pages(&req->resp_sgt, pages, npages, 0,
					req->resp_len, GFP_KERNEL);
	if (ret)
		goto err_free;
	req->resp_buf = vmap(pages, npages, VM_MAP, PAGE_KERNEL);
	if (!req->resp_buf) {
		ret = -ENOMEM;
		goto err_sgt;
	}
	req->resp_pages = pages;
	req->resp_npages = npages;
	return 0;

err_sgt:
	sg_free_table(&req->resp_sgt);
err_free:
	cenalloc_resp_free_pages(pages, i);
	return ret;
}

/* Batch header and a zeroed answer buffer, before the request is queued. */
int cenalloc_req_prepare(struct cenalloc_req *req)
{
	struct cenalloc_batch_hdr *bhdr;

	if (!req->num_cmds || req->resp_buf)
		return -EINVAL;
	bhdr = (struct cenalloc_batch_hdr *)req->cmd_buf;
	bhdr->num_cmds = cpu_to_le32(req->num_cmds);
	bhdr->reserved = 0;

	if (req->resp_len <= sizeof(req->inline_resp)) {
		req->resp_buf = req->inline_resp;
		memset(req->resp_buf, 0, req->resp_len);
		return 0;
	}
	if (req->resp_len <= CENALLOC_RESP_KMALLOC_MAX) {
		req->resp_buf = kzalloc(req->resp_len, GFP_KERNEL);
		return req->resp_buf ? 0 : -ENOMEM;
	}
	return cenalloc_resp_alloc_pages(req);
}

const char *cenalloc_opcode_name(u16 opcode)
{
	static const char * const names[] = {
		[CENALLOC_CMD_GET_INFO] = "GET_INFO",
		[CENALLOC_CMD_POOL_ADD] = "POOL_ADD",
		[CENALLOC_CMD_CREATE] = "CREATE",
		[CENALLOC_CMD_ATTACH] = "ATTACH",
		[CENALLOC_CMD_DETACH] = "DETACH",
		[CENALLOC_CMD_MAP] = "MAP",
		[CENALLOC_CMD_UNMAP] = "UNMAP",
		[CENALLOC_CMD_FREE] = "FREE",
		[CENALLOC_CMD_PHYS] = "PHYS",
		[CENALLOC_CMD_SYNC] = "SYNC",
		[CENALLOC_CMD_STATS] = "STATS",
		[CENALLOC_CMD_FILL] = "FILL",
		[CENALLOC_CMD_CHECKSUM] = "CHECKSUM",
		[CENALLOC_CMD_RESET] = "RESET",
		[CENALLOC_CMD_POOL_REMOVE] = "POOL_REMOVE",
		[CENALLOC_CMD_LEASE] = "LEASE",
		[CENALLOC_CMD_LEASE_RETURN] = "LEASE_RETURN",
		[CENALLOC_CMD_LEASED_MAP] = "LEASED_MAP",
	};

	if (opcode < ARRAY_SIZE(names) && names[opcode])
		return names[opcode];
	return "?";
}

/* Command @i of a built request: its payload, opcode and payload length. */
const void *cenalloc_req_cmd(const struct cenalloc_req *req, unsigned int i,
			     u16 *opcode, u32 *len)
{
	const struct cenalloc_cmd_hdr *hdr;
	size_t off = sizeof(struct cenalloc_batch_hdr);
	unsigned int k;

	for (k = 0;; k++) {
		hdr = (const struct cenalloc_cmd_hdr *)(req->cmd_buf + off);
		if (k == i)
			break;
		off += sizeof(*hdr) + le32_to_cpu(hdr->len);
	}
	*opcode = le16_to_cpu(hdr->opcode);
	*len = le32_to_cpu(hdr->len);
	return hdr + 1;
}

/*
 * The answer as the ring left it. The ring side (posted completions, the
 * undo of abandoned requests) reads these; a submitter reads them through
 * cenalloc_req_status() and friends, which see nothing of a request it
 * abandoned (the ring may be writing it).
 */
bool cenalloc_answer_ok(struct cenalloc_req *req, unsigned int i)
{
	const struct cenalloc_resp_hdr *hdr;
	s32 status;

	if (req->error || i >= req->num_cmds ||
	    req->used_len < req->resp_off[i] + sizeof(*hdr))
		return false;
	hdr = (const struct cenalloc_resp_hdr *)(req->resp_buf +
						 req->resp_off[i]);
	status = (s32)le32_to_cpu(hdr->status);
	return status <= 0 && status >= -MAX_ERRNO &&
	       le32_to_cpu(hdr->len) <= req->slot_len[i] &&
	       (status || le32_to_cpu(hdr->len) <= req->used_len -
			  req->resp_off[i] - sizeof(*hdr));
}

/*
 * A device status as the driver passes it on: one of the statuses the
 * protocol documents (docs/virtio-dmabuf.md), any other -EIO. Callers hand
 * statuses to userspace and to importers, which must never see a
 * kernel-internal code (-ERESTARTSYS, -EIOCBQUEUED) or one they act on
 * (-EDEADLK is the ww-mutex back-off), because a device said so.
 */
static int cenalloc_device_errno(s32 status)
{
	switch (status) {
	case 0:
	case -EINVAL:
	case -ENOSPC:
	case -ENOENT:
	case -EBUSY:
	case -EFAULT:
	case -EEXIST:
	case -EAGAIN:
	case -EPERM:
	case -EOPNOTSUPP:
	case -ENODATA:
	case -E2BIG:
	case -ESTALE:
	case -ERANGE:
	case -EPROTO:
	case -EOVERFLOW:
	case -ENOMEM:
	case -ENODEV:
	case -EIO:
	case -ECANCELED:
		return status;
	default:
		return -EIO;
	}
}

int cenalloc_answer_status(struct cenalloc_req *req, unsigned int i)
{
	const struct cenalloc_resp_hdr *hdr;

	if (req->error)
		return req->error;
	if (!cenalloc_answer_ok(req, i))
		return -EIO;
	hdr = (const struct cenalloc_resp_hdr *)(req->resp_buf +
						 req->resp_off[i]);
	return cenalloc_device_errno((s32)le32_to_cpu(hdr->status));
}

void *cenalloc_answer_resp(struct cenalloc_req *req, unsigned int i,
			   u32 *len)
{
	const struct cenalloc_resp_hdr *hdr;
	u32 off = req->resp_off[i] + sizeof(*hdr);

	hdr = (const struct cenalloc_resp_hdr *)(req->resp_buf +
						 req->resp_off[i]);
	*len = le32_to_cpu(hdr->len);
	if (*len > req->slot_len[i] || req->used_len < off ||
	    req->used_len - off < *len)
		*len = 0;
	return req->resp_buf + off;
}

/* True if the device answered command @i, well formed. */
bool cenalloc_req_answered(struct cenalloc_req *req, unsigned int i)
{
	return req->answered && cenalloc_answer_ok(req, i);
}

/* Status of command @i: 0, the device's -errno, the transport error, or
 * -EIO when the answer is missing or malformed.
 */
int cenalloc_req_status(struct cenalloc_req *req, unsigned int i)
{
	if (!req->answered)
		return -EIO;
	return cenalloc_answer_status(req, i);
}

/* Response payload of command @i (status 0 checked by the caller). */
void *cenalloc_req_resp(struct cenalloc_req *req, unsigned int i, u32 *len)
{
	if (!req->answered) {
		*len = 0;
		return req->inline_resp;
	}
	return cenalloc_answer_resp(req, i, len);
}

/* With status -ENOSPC: the payload bytes the answer needs. */
u32 cenalloc_req_needed(struct cenalloc_req *req, unsigned int i)
{
	const struct cenalloc_resp_hdr *hdr;

	if (!cenalloc_req_answered(req, i))
		return 0;
	hdr = (const struct cenalloc_resp_hdr *)(req->resp_buf +
						 req->resp_off[i]);
	return le32_to_cpu(hdr->needed);
}
