// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/kernel/debug/cenalloc/: buffers, attachments and allocators tables.
 * "allocators" asks the device (GET_INFO) for fresh figures and adds what
 * the driver donated per pool and its own counters; "device_stats" is the
 * device's JSON snapshot (STATS). "transport" shows the control queue's
 * kicks, interrupts and latencies (median and p90 of the last samples);
 * writing to it starts the figures afresh.
 */
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/uaccess.h>

#include "cenalloc_buffer.h"
#include "cenalloc_debugfs.h"
#include "cenalloc_dev.h"
#include "cenalloc_lease.h"
#include "cenalloc_pool.h"
#include "cenalloc_vq.h"

static struct dentry *cenalloc_debugfs_dir;

static int cenalloc_buffers_show(struct seq_file *s, void *unused)
{
	struct cenalloc_dev *cdev = s->private;
	struct cenalloc_buffer *buffer;

	seq_printf(s, "%-8s %-12s %-10s %-10s %-6s %-9s %-8s %-7s %-5s\n",
		   "id", "size", "access", "initial", "backed", "allocator",
		   "segments", "attachs", "vmaps");
	mutex_lock(&cdev->lock);
	list_for_each_entry(buffer, &cdev->buffers, node) {
		mutex_lock(&buffer->lock);
		seq_printf(s, "%-8u %-12llu 0x%08x 0x%08x %-6s %-9d %-8u %-7u %-5u\n",
			   buffer->buffer_id, buffer->size,
			   buffer->access_mask, buffer->initial_mask,
			   buffer->backed ? "yes" : "no",
			   buffer->backed ? (int)buffer->allocator_id : -1,
			   buffer->num_backing, buffer->num_attachments,
			   buffer->vmap_count);
		mutex_unlock(&buffer->lock);
	}
	seq_printf(s, "# %u buffers, %llu bytes\n", cdev->num_buffers,
		   cdev->total_bytes);
	mutex_unlock(&cdev->lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(cenalloc_buffers);

/* Why an attachment's mask is what it is (cenalloc_reach.c). */
static const char *cenalloc_reach_why(const struct cenalloc_attachment *a)
{
	if (!a->dev)
		return "cpu";
	if (a->reach.iommu)
		return "iommu";
	if (a->reach.full)
		return "all-ram";
	if (a->reach.kinds)
		return "below-4g";
	return "unreachable";
}

/*
 * One line per attachment: the mask the importer or the device table asked
 * for, what the device reaches (derived from its DMA mask, bus limit and
 * IOMMU), the effective mask, and the sg limits.
 */
static int cenalloc_attachments_show(struct seq_file *s, void *unused)
{
	struct cenalloc_dev *cdev = s->private;
	struct cenalloc_attachment *a;
	struct cenalloc_buffer *buffer;

	seq_printf(s, "%-8s %-8s %-24s %-10s %-10s %-10s %-8s %-5s %-7s %-4s %-18s %-11s %-10s %-18s %s\n",
		   "buffer", "id", "device", "requested", "reach", "mask",
		   "map_type", "maps", "dynamic", "pins", "dma_limit",
		   "why", "max_seg", "seg_boundary", "revoked");
	mutex_lock(&cdev->lock);
	list_for_each_entry(buffer, &cdev->buffers, node) {
		mutex_lock(&buffer->lock);
		list_for_each_entry(a, &buffer->attachments, node)
			seq_printf(s, "%-8u %-8u %-24s 0x%08x 0x%08x 0x%08x %-8u %-5u %-7s %-4u 0x%016llx %-11s %-10u 0x%-16llx %u\n",
				   buffer->buffer_id, a->attach_id,
				   a->dev_name, a->requested, a->reach.kinds,
				   a->mask, a->map_type, a->num_maps,
				   a->revocable ? "yes" : "no", a->pins,
				   a->reach.dma_limit, cenalloc_reach_why(a),
				   a->reach.max_seg, a->reach.seg_boundary,
				   a->revoked);
		mutex_unlock(&buffer->lock);
	}
	mutex_unlock(&cdev->lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(cenalloc_attachments);

/* The leased stock per allocator and class, and the lease counters. */
static void cenalloc_leases_show(struct seq_file *s, struct cenalloc_dev *cdev)
{
	struct cenalloc_leases *l = cdev->leases;
	unsigned int a, c, n, kib, target;

	seq_printf(s, "leases %d\n", l ? 1 : 0);
	if (!l)
		return;
	for (a = 0; a < l->num_allocators; a++) {
		for (c = 0; c < CENALLOC_LEASE_CLASSES; c++) {
			n = cenalloc_lease_stock(cdev, a, c, &target);
			kib = cenalloc_lease_class_size(c) >> 10;
			seq_printf(s, "stock%u_%uk %u\ntarget%u_%uk %u\n", a,
				   kib, n, a, kib, target);
		}
	}
	seq_printf(s, "lease_taken %lld\nlease_missed %lld\nlease_extents %lld\nlease_returned %lld\nlease_bad_answers %lld\nlease_requests %lld\nlease_short %lld\nlease_deeper %lld\nlease_shallower %lld\n",
		   atomic64_read(&l->taken), atomic64_read(&l->missed),
		   atomic64_read(&l->leased), atomic64_read(&l->returned),
		   atomic64_read(&l->bad_answers),
		   atomic64_read(&l->requests),
		   atomic64_read(&l->short_answers),
		   atomic64_read(&l->deeper), atomic64_read(&l->shallower));
}

static int cenalloc_allocators_show(struct seq_file *s, void *unused)
{
	struct cenalloc_dev *cdev = s->private;
	struct cenalloc_allocator_info *allocators, *al;
	s64 in_use[CENALLOC_MAX_POOLS];
	struct cenalloc_info_resp info;
	struct cenalloc_pool *pool;
	unsigned int i;
	int num;

	allocators = kcalloc(CENALLOC_MAX_ALLOCATORS, sizeof(*allocators),
			     GFP_KERNEL);
	if (!allocators)
		return -ENOMEM;
	num = cenalloc_get_info(cdev, &info, allocators,
				CENALLOC_MAX_ALLOCATORS);
	seq_printf(s, "%-3s %-16s %-10s %-9s %-12s %-12s %-12s %-5s %-7s\n",
		   "id", "name", "kinds", "placement", "capacity", "free",
		   "largest_free", "frag", "buffers");
	if (num < 0)
		seq_printf(s, "# GET_INFO failed: %d\n", num);
	for (i = 0; num > 0 && i < num; i++) {
		al = &allocators[i];
		seq_printf(s, "%-3u %-16.16s 0x%08x 0x%-7x %-12llu %-12llu %-12llu %-5u %-7u\n",
			   le32_to_cpu(al->id), al->name,
			   le32_to_cpu(al->kinds), le32_to_cpu(al->placement),
			   le64_to_cpu(al->capacity), le64_to_cpu(al->free),
			   le64_to_cpu(al->largest_free),
			   le32_to_cpu(al->fragmentation),
			   le32_to_cpu(al->num_buffers));
	}

	seq_puts(s, "\n# pools donated by the driver (bytes; in_use: the device's capacity - free; held: kept for the device until it resets)\n");
	seq_printf(s, "%-3s %-16s %-10s %-9s %-12s %-12s %-12s %-12s %-12s %-12s %-12s %-6s\n",
		   "idx", "name", "kinds", "placement", "initial", "donated",
		   "in_use", "grown", "returned", "max", "held", "status");
	for (i = 0; i < cdev->num_pools; i++) {
		pool = &cdev->pools[i];
		in_use[i] = -1;
		if (num > 0 && i < num)
			in_use[i] = le64_to_cpu(allocators[i].capacity) -
				    le64_to_cpu(allocators[i].free);
		seq_printf(s, "%-3u %-16.16s 0x%08x 0x%-7x %-12llu %-12llu %-12lld %-12llu %-12llu %-12llu %-12llu %-6d\n",
			   i, pool->config.name,
			   le32_to_cpu(pool->config.kinds),
			   le32_to_cpu(pool->config.placement),
			   pool->initial, pool->donated, in_use[i],
			   pool->grown, pool->returned, pool->max,
			   pool->held, pool->status);
	}
	/* The same figures as "name value" lines, for scripts (read without
	 * pool->lock, which a growth waiting for the device holds).
	 */
	seq_puts(s, "\n# pool and lease figures\n");
	for (i = 0; i < cdev->num_pools; i++) {
		pool = &cdev->pools[i];
		seq_printf(s, "pool%u_initial %llu\npool%u_donated %llu\npool%u_in_use %lld\npool%u_grown %llu\npool%u_returned %llu\npool%u_held %llu\npool%u_grow_failures %u\npool%u_max %llu\n",
			   i, pool->initial, i, pool->donated, i, in_use[i],
			   i, pool->grown, i, pool->returned, i,
			   pool->held, i, pool->grow_failures, i, pool->max);
	}
	seq_printf(s, "pools_limit %llu\n", cenalloc_pools_limit(cdev));
	seq_printf(s, "shrink_scans %lld\nshrunk_bytes %lld\n",
		   atomic64_read(&cdev->shrink_scans),
		   atomic64_read(&cdev->shrunk_bytes));
	cenalloc_leases_show(s, cdev);

	seq_puts(s, "\n# counters\n");
	seq_printf(s, "round_trips %lld\nposted %lld\nposted_errors %lld\n",
		   atomic64_read(&cdev->round_trips),
		   atomic64_read(&cdev->posted),
		   atomic64_read(&cdev->posted_errors));
	seq_printf(s, "events_migrated %d\nevents_pool_low %d\nevents_lease_revoke %d\nevents_unknown %d\n",
		   atomic_read(&cdev->events_migrated),
		   atomic_read(&cdev->events_pool_low),
		   atomic_read(&cdev->events_lease_revoke),
		   atomic_read(&cdev->events_unknown));
	kfree(allocators);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(cenalloc_allocators);

/* The device's own JSON snapshot (STATS), asked again when it is larger. */
static int cenalloc_stats_show(struct seq_file *s, void *unused)
{
	struct cenalloc_dev *cdev = s->private;
	u32 slot = SZ_16K, len, needed;
	struct cenalloc_req *req;
	void *resp;
	int ret, tries;

	for (tries = 0; tries < 2; tries++) {
		req = cenalloc_req_alloc(cdev);
		if (!req)
			return -ENOMEM;
		resp = cenalloc_req_add(req, CENALLOC_CMD_STATS, 0, slot);
		ret = IS_ERR(resp) ? PTR_ERR(resp) : cenalloc_req_submit(req);
		if (!ret)
			ret = cenalloc_req_status(req, 0);
		if (!ret) {
			resp = cenalloc_req_resp(req, 0, &len);
			seq_write(s, resp, len);
			seq_putc(s, '\n');
		}
		needed = ret == -ENOSPC ? cenalloc_req_needed(req, 0) : 0;
		cenalloc_req_free(req);
		if (ret != -ENOSPC || needed <= slot || needed > SZ_4M)
			break;
		slot = ALIGN(needed, 8);
	}
	return ret;
}
DEFINE_SHOW_ATTRIBUTE(cenalloc_stats);

static int cenalloc_u32_cmp(const void *a, const void *b)
{
	u32 x = *(const u32 *)a, y = *(const u32 *)b;

	return x < y ? -1 : x > y;
}

static void cenalloc_latency_show(struct seq_file *s, const char *name,
				  struct cenalloc_dev *cdev,
				  const struct cenalloc_latency *lat, u32 *buf)
{
	unsigned int n;

	spin_lock_irq(&cdev->ctrl_lock);
	n = lat->count;
	memcpy(buf, lat->ns, n * sizeof(*buf));
	spin_unlock_irq(&cdev->ctrl_lock);
	if (!n) {
		seq_printf(s, "%-16s %6u\n", name, 0);
		return;
	}
	sort(buf, n, sizeof(*buf), cenalloc_u32_cmp, NULL);
	seq_printf(s, "%-16s %6u %10u %10u %10u %10u\n", name, n,
		   buf[n / 2] / 1000, buf[n * 9 / 10] / 1000, buf[0] / 1000,
		   buf[n - 1] / 1000);
}

static int cenalloc_transport_show(struct seq_file *s, void *unused)
{
	struct cenalloc_dev *cdev = s->private;
	u64 kicks, interrupts, sent, done, polls, polled, expired, yielded;
	u64 abandoned;
	unsigned int inflight, backlogged, held;
	bool broken;
	u32 *buf;

	buf = kmalloc_array(CENALLOC_LATENCY_SAMPLES, sizeof(*buf), GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	spin_lock_irq(&cdev->ctrl_lock);
	kicks = cdev->kicks;
	interrupts = cdev->ctrl_interrupts;
	sent = cdev->chains_sent;
	done = cdev->chains_done;
	polls = cdev->polls;
	polled = cdev->polled;
	expired = cdev->poll_expired;
	yielded = cdev->poll_yielded;
	abandoned = cdev->abandoned_reqs;
	inflight = cdev->inflight;
	backlogged = cdev->backlogged;
	held = cdev->num_held;
	broken = cdev->broken;
	spin_unlock_irq(&cdev->ctrl_lock);
	seq_printf(s, "kicks %llu\ninterrupts %llu\nchains_sent %llu\nchains_done %llu\n",
		   kicks, interrupts, sent, done);
	seq_printf(s, "polls %llu\npolled %llu\npoll_expired %llu\npoll_yielded %llu\n",
		   polls, polled, expired, yielded);
	seq_printf(s, "round_trips %lld\nposted %lld\nposted_errors %lld\n",
		   atomic64_read(&cdev->round_trips),
		   atomic64_read(&cdev->posted),
		   atomic64_read(&cdev->posted_errors));
	seq_printf(s, "held %u\n", held);
	seq_printf(s, "inflight %u\nbacklogged %u\nabandoned %llu\nanswers_rejected %lld\nbroken %d\nmax_segments %u\nmax_batch %u\n",
		   inflight, backlogged, abandoned,
		   atomic64_read(&cdev->answers_rejected), broken,
		   cdev->max_segments, cdev->max_batch);
	seq_printf(s, "%-16s %6s %10s %10s %10s %10s\n", "latency_us",
		   "n", "median", "p90", "min", "max");
	cenalloc_latency_show(s, "device", cdev, &cdev->lat_device, buf);
	cenalloc_latency_show(s, "posted", cdev, &cdev->lat_posted, buf);
	cenalloc_latency_show(s, "wake", cdev, &cdev->lat_wake, buf);
	kfree(buf);
	return 0;
}

static int cenalloc_transport_open(struct inode *inode, struct file *file)
{
	return single_open(file, cenalloc_transport_show, inode->i_private);
}

/* Any write starts the figures afresh (the other counters stay). */
static ssize_t cenalloc_transport_write(struct file *file,
					const char __user *ubuf, size_t len,
					loff_t *ppos)
{
	struct cenalloc_dev *cdev = file_inode(file)->i_private;

	spin_lock_irq(&cdev->ctrl_lock);
	cdev->kicks = 0;
	cdev->ctrl_interrupts = 0;
	cdev->chains_sent = 0;
	cdev->chains_done = 0;
	cdev->polls = 0;
	cdev->polled = 0;
	cdev->poll_expired = 0;
	cdev->poll_yielded = 0;
	cdev->lat_device.count = 0;
	cdev->lat_device.next = 0;
	cdev->lat_posted.count = 0;
	cdev->lat_posted.next = 0;
	cdev->lat_wake.count = 0;
	cdev->lat_wake.next = 0;
	spin_unlock_irq(&cdev->ctrl_lock);
	return len;
}

static const struct file_operations cenalloc_transport_fops = {
	.owner = THIS_MODULE,
	.open = cenalloc_transport_open,
	.read = seq_read,
	.llseek = seq_lseek,
	.release = single_release,
	.write = cenalloc_transport_write,
};

/*
 * TEST HOOK: lease_next_id (root only) reads and sets the driver-chosen id
 * the next leased map tries first (cenalloc_lease_set_next_id()).
 */
static int cenalloc_lease_next_id_get(void *data, u64 *val)
{
	*val = cenalloc_lease_next_id(data);
	return 0;
}

static int cenalloc_lease_next_id_put(void *data, u64 val)
{
	return cenalloc_lease_set_next_id(data, val);
}

DEFINE_DEBUGFS_ATTRIBUTE(cenalloc_lease_next_id_fops,
			 cenalloc_lease_next_id_get,
			 cenalloc_lease_next_id_put, "%llu\n");

void cenalloc_debugfs_init(struct cenalloc_dev *cdev)
{
	cenalloc_debugfs_dir = debugfs_create_dir("cenalloc", NULL);
	debugfs_create_file("buffers", 0444, cenalloc_debugfs_dir, cdev,
			    &cenalloc_buffers_fops);
	debugfs_create_file("attachments", 0444, cenalloc_debugfs_dir, cdev,
			    &cenalloc_attachments_fops);
	debugfs_create_file("allocators", 0444, cenalloc_debugfs_dir, cdev,
			    &cenalloc_allocators_fops);
	debugfs_create_file("device_stats", 0444, cenalloc_debugfs_dir, cdev,
			    &cenalloc_stats_fops);
	debugfs_create_file("transport", 0644, cenalloc_debugfs_dir, cdev,
			    &cenalloc_transport_fops);
	if (cdev->leases)
		debugfs_create_file_unsafe("lease_next_id", 0600,
					   cenalloc_debugfs_dir, cdev,
					   &cenalloc_lease_next_id_fops);
}

void cenalloc_debugfs_exit(void)
{
	debugfs_remove_recursive(cenalloc_debugfs_dir);
	cenalloc_debugfs_dir = NULL;
}
