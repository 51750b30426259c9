// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc pool donation: at probe, for every pool of config space, allocate
 * guest memory that fits its placement and hand it to the device with
 * POOL_ADD.
 *
 * Contiguous pools are built from blocks of the largest order the buddy
 * allocator gives a module (MAX_PAGE_ORDER: 4 MiB; this kernel has no CMA
 * and alloc_contig_pages() is not exported); blocks that happen to be
 * adjacent merge into longer extents, and each range sent is one extent.
 * DMA32 pools come from ZONE_DMA32. Other pools take any pages, large
 * blocks first so that fewer ranges are needed.
 *
 * The memory belongs to the device until the last reference to the device
 * state drops (cenalloc_pools_free()): only then can no buffer reach it.
 */
#include <linux/atomic.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/sort.h>

#include "cenalloc_dev.h"
#include "cenalloc_pool.h"
#include "cenalloc_vq.h"

/*
 * A boot-time reservation (e.g. memmap=256M$0x40000000 on the kernel
 * command line) handed to the module as contig_reserve=256M@0x40000000:
 * one physically contiguous extent larger than the buddy allocator's 4 MiB
 * blocks, given to the first contiguous pool whose placement it fits. It
 * must not be System RAM (the page allocator does not own it) and must have
 * struct pages (mapped with pfn_to_page()).
 */
static char contig_reserve[64];
module_param_string(contig_reserve, contig_reserve, sizeof(contig_reserve),
		    0444);
MODULE_PARM_DESC(contig_reserve,
		 "SIZE@ADDR of a memmap= reservation for a contiguous pool");

/*
 * The reservation has one owner at a time: a device removed with buffers
 * still alive keeps its pools (and so the reservation) until the last buffer
 * goes, and a device probed meanwhile must not donate the same memory again.
 */
static atomic_t contig_reserve_owned = ATOMIC_INIT(0);

/*
 * The device asks for pool sizes in config space; the guest decides what it
 * can spare. Each pool gets at most pool_ram_percent of the RAM (and at most
 * pool_limit_mb), all pools together at most pools_ram_percent, in pool
 * order.
 */
static unsigned int pool_limit_mb;
module_param(pool_limit_mb, uint, 0444);
MODULE_PARM_DESC(pool_limit_mb,
		 "Largest donation per pool in MiB (0: only the RAM fractions limit it)");

static unsigned int pool_ram_percent = 25;
module_param(pool_ram_percent, uint, 0444);
MODULE_PARM_DESC(pool_ram_percent,
		 "Largest donation per pool in percent of the RAM (1..100, default 25)");

static unsigned int pools_ram_percent = 50;
module_param(pools_ram_percent, uint, 0444);
MODULE_PARM_DESC(pools_ram_percent,
		 "Largest donation of all pools together in percent of the RAM (1..100, default 50)");

/* POOL_ADD commands per batch: keeps one request under 20 KiB. */
#define CENALLOC_POOL_ADD_BATCH		4

/* Smallest block a contiguous pool accepts (64 KiB). */
#define CENALLOC_CONTIG_MIN_ORDER	4

static int cenalloc_chunk_cmp(const void *a, const void *b)
{
	unsigned long pa = page_to_pfn(((const struct cenalloc_chunk *)a)->page);
	unsigned long pb = page_to_pfn(((const struct cenalloc_chunk *)b)->page);

	if (pa < pb)
		return -1;
	return pa > pb;
}

static int cenalloc_range_cmp(const void *a, const void *b)
{
	u64 pa = le64_to_cpu(((const struct cenalloc_range *)a)->addr);
	u64 pb = le64_to_cpu(((const struct cenalloc_range *)b)->addr);

	if (pa < pb)
		return -1;
	return pa > pb;
}

static u64 cenalloc_ram_percent(unsigned int percent)
{
	return div_u64((u64)totalram_pages() * PAGE_SIZE *
		       clamp_t(unsigned int, percent, 1, 100), 100);
}

/* What the guest gives pool @config, @budget bytes being left for all. */
static u64 cenalloc_pool_target(const struct cenalloc_config_pool *config,
				u64 budget)
{
	u64 limit = min(cenalloc_ram_percent(pool_ram_percent), budget);
	u64 size = le64_to_cpu(config->size);

	if (pool_limit_mb)
		limit = min_t(u64, limit, (u64)pool_limit_mb * SZ_1M);
	if (size > limit) {
		pr_warn("cenalloc: pool %.16s asks %llu bytes, donating %llu\n",
			config->name, size, limit);
		size = limit;
	}
	return round_down(size, PAGE_SIZE);
}

/* Parse and check contig_reserve; 0 and *len 0 when there is none. */
static int cenalloc_reserve_parse(u64 *addr, u64 *len)
{
	char *end;

	*addr = 0;
	*len = 0;
	if (!contig_reserve[0])
		return 0;
	*len = memparse(contig_reserve, &end);
	if (*end != '@')
		return -EINVAL;
	*addr = memparse(end + 1, &end);
	if (*end && *end != '\n')
		return -EINVAL;
	if (!*len || !PAGE_ALIGNED(*addr) || !PAGE_ALIGNED(*len) ||
	    *addr + *len < *addr)
		return -EINVAL;
	if (region_intersects(*addr, *len, IORESOURCE_SYSTEM_RAM,
			      IORES_DESC_NONE) != REGION_DISJOINT)
		return -EBUSY;
	if (!pfn_valid(PHYS_PFN(*addr)) ||
	    !pfn_valid(PHYS_PFN(*addr + *len - 1)))
		return -EINVAL;
	return 0;
}

/* Give the reservation to the first contiguous pool it fits. */
static void cenalloc_reserve_assign(struct cenalloc_dev *cdev)
{
	struct cenalloc_pool *pool;
	u64 addr, len;
	unsigned int i;
	u32 placement;
	int ret;

	ret = cenalloc_reserve_parse(&addr, &len);
	if (ret) {
		pr_warn("cenalloc: contig_reserve=%s ignored: %d\n",
			contig_reserve, ret);
		return;
	}
	if (!len)
		return;
	for (i = 0; i < cdev->num_pools; i++) {
		pool = &cdev->pools[i];
		placement = le32_to_cpu(pool->config.placement);
		if (!(placement & CENALLOC_PLACE_CONTIG))
			continue;
		if ((placement & CENALLOC_PLACE_DMA32) && addr + len > SZ_4G)
			continue;
		if (atomic_cmpxchg(&contig_reserve_owned, 0, 1)) {
			pr_warn("cenalloc: contig_reserve=%s ignored: another cenalloc device still owns it\n",
				contig_reserve);
			return;
		}
		pool->reserve_addr = addr;
		pool->reserve_len = len;
		pr_info("cenalloc: pool %.16s gets the reservation %llu MiB at %#llx\n",
			pool->config.name, len >> 20, addr);
		return;
	}
	pr_warn("cenalloc: no contiguous pool fits contig_reserve=%s\n",
		contig_reserve);
}

/* Allocate the blocks of one pool into pool->chunks, at most @budget. */
static int cenalloc_pool_alloc(struct cenalloc_pool *pool, u64 budget)
{
	u32 placement = le32_to_cpu(pool->config.placement);
	u32 align = le32_to_cpu(pool->config.align);
	gfp_t gfp = GFP_KERNEL | __GFP_NOWARN | __GFP_NORETRY;
	unsigned int order, min_order = 0;
	u64 target, done = 0;
	struct page *page;

	target = cenalloc_pool_target(&pool->config, budget);
	target -= min(target, pool->reserve_len);
	if (!target)
		return 0;
	if (align < PAGE_SIZE)
		align = PAGE_SIZE;
	if (!is_power_of_2(align))
		return -EINVAL;
	min_order = get_order(align);
	if (placement & CENALLOC_PLACE_CONTIG)
		min_order = max(min_order, CENALLOC_CONTIG_MIN_ORDER);
	if (min_order > MAX_PAGE_ORDER)
		min_order = MAX_PAGE_ORDER;
	if (placement & CENALLOC_PLACE_DMA32)
		gfp |= GFP_DMA32;

	pool->chunks = kvcalloc((target >> (PAGE_SHIFT + min_order)) + 1,
				sizeof(*pool->chunks), GFP_KERNEL);
	if (!pool->chunks)
		return -ENOMEM;

	order = MAX_PAGE_ORDER;
	while (done < target) {
		while (order > min_order && (PAGE_SIZE << order) > target - done)
			order--;
		if ((PAGE_SIZE << order) > target - done)
			break;
		page = alloc_pages(gfp, order);
		if (!page) {
			if (order == min_order)
				break;
			order--;
			continue;
		}
		if ((placement & CENALLOC_PLACE_DMA32) &&
		    page_to_phys(page) + (PAGE_SIZE << order) > SZ_4G) {
			__free_pages(page, order);
			break;
		}
		pool->chunks[pool->num_chunks].page = page;
		pool->chunks[pool->num_chunks].order = order;
		pool->num_chunks++;
		done += PAGE_SIZE << order;
		cond_resched();
	}
	if (done < target)
		pr_warn("cenalloc: pool %.16s: got %llu of %llu bytes\n",
			pool->config.name, done, target);
	pool->allocated = done;
	return 0;
}

/* Sort the blocks and merge adjacent ones into extents, each starting at
 * the pool's alignment.
 */
static int cenalloc_pool_merge(struct cenalloc_pool *pool)
{
	u64 align = max_t(u64, le32_to_cpu(pool->config.align), PAGE_SIZE);
	struct cenalloc_range *ext;
	unsigned int i, n = 0;
	u64 addr, end, start;

	if (!pool->num_chunks && !pool->reserve_len)
		return 0;
	sort(pool->chunks, pool->num_chunks, sizeof(*pool->chunks),
	     cenalloc_chunk_cmp, NULL);
	pool->extents = kvcalloc(pool->num_chunks + 1, sizeof(*pool->extents),
				 GFP_KERNEL);
	if (!pool->extents)
		return -ENOMEM;

	for (i = 0; i < pool->num_chunks; i++) {
		addr = page_to_phys(pool->chunks[i].page);
		end = addr + (PAGE_SIZE << pool->chunks[i].order);
		if (n && le64_to_cpu(pool->extents[n - 1].addr) +
			 le64_to_cpu(pool->extents[n - 1].len) == addr) {
			le64_add_cpu(&pool->extents[n - 1].len, end - addr);
			continue;
		}
		pool->extents[n].addr = cpu_to_le64(addr);
		pool->extents[n].len = cpu_to_le64(end - addr);
		n++;
	}
	if (pool->reserve_len) {
		pool->extents[n].addr = cpu_to_le64(pool->reserve_addr);
		pool->extents[n].len = cpu_to_le64(pool->reserve_len);
		n++;
		sort(pool->extents, n, sizeof(*pool->extents),
		     cenalloc_range_cmp, NULL);
	}

	/* Trim each extent's head to the alignment; drop what is left empty. */
	pool->num_extents = 0;
	for (i = 0; i < n; i++) {
		ext = &pool->extents[i];
		addr = le64_to_cpu(ext->addr);
		end = addr + le64_to_cpu(ext->len);
		start = ALIGN(addr, align);
		if (start >= end)
			continue;
		pool->extents[pool->num_extents].addr = cpu_to_le64(start);
		pool->extents[pool->num_extents].len = cpu_to_le64(end - start);
		pool->longest_extent = max(pool->longest_extent, end - start);
		pool->num_extents++;
	}
	return 0;
}

/*
 * POOL_ADD every extent, CENALLOC_MAX_POOL_RANGES per command, a few
 * commands per batch. A command the device refused (a well-formed error)
 * stops the donation. One whose outcome is unknown (no answer in time, a
 * short or malformed answer) may have been accepted: its memory is held
 * for the device (pool->held) and never given back before the device is
 * reset, because the device may be using it.
 */
static int cenalloc_pool_send(struct cenalloc_dev *cdev,
			      struct cenalloc_pool *pool, u32 index)
{
	struct cenalloc_pool_add_req *add;
	unsigned int sent, i, n, cmd;
	struct cenalloc_req *req;
	unsigned int ranges[CENALLOC_POOL_ADD_BATCH];
	u64 bytes[CENALLOC_POOL_ADD_BATCH];
	unsigned int batch_cmds;
	bool stopped = false;
	int ret, status;

	batch_cmds = min_t(u32, cdev->max_batch, CENALLOC_POOL_ADD_BATCH);

	while (pool->num_donated < pool->num_extents) {
		req = cenalloc_req_alloc(cdev);
		if (!req)
			return -ENOMEM;
		sent = pool->num_donated;
		for (cmd = 0;
		     cmd < batch_cmds && sent < pool->num_extents;
		     cmd++) {
			n = min_t(unsigned int, pool->num_extents - sent,
				  CENALLOC_MAX_POOL_RANGES);
			add = cenalloc_req_add(req, CENALLOC_CMD_POOL_ADD,
					       sizeof(*add) +
					       n * sizeof(struct cenalloc_range),
					       0);
			if (IS_ERR(add)) {
				cenalloc_req_free(req);
				return PTR_ERR(add);
			}
			add->pool_index = cpu_to_le32(index);
			add->num_ranges = cpu_to_le32(n);
			memcpy(add + 1, &pool->extents[sent],
			       n * sizeof(struct cenalloc_range));
			ranges[cmd] = n;
			bytes[cmd] = 0;
			for (i = 0; i < n; i++)
				bytes[cmd] += le64_to_cpu(pool->extents[sent + i].len);
			sent += n;
		}
		ret = cenalloc_req_submit(req);
		if (ret && !req->queued) {
			/* Never reached the device. */
			cenalloc_req_free(req);
			return ret;
		}
		for (i = 0; i < cmd; i++) {
			if (ret || !cenalloc_req_answered(req, i)) {
				/* Sent, outcome unknown: the device may use it. */
				pool->held += bytes[i];
				stopped = true;
				continue;
			}
			status = cenalloc_req_status(req, i);
			if (status || stopped) {
				/* Refused; a success after that is a lie. */
				if (!status)
					pool->held += bytes[i];
				else if (!ret)
					ret = status;
				stopped = true;
				continue;
			}
			pool->donated += bytes[i];
			pool->num_donated += ranges[i];
		}
		cenalloc_req_free(req);
		if (pool->held) {
			cenalloc_answer_rejected(cdev);
			pr_warn("cenalloc: pool %.16s: no usable answer to POOL_ADD of %llu bytes: they stay with the device until it is reset\n",
				pool->config.name, pool->held);
			return ret ? ret : -EIO;
		}
		if (ret)
			return ret;
	}
	return 0;
}

static void cenalloc_pool_release(struct cenalloc_pool *pool);

/* Donate every pool of config space. A pool that fails is reported and
 * keeps status != 0; the others still work.
 */
int cenalloc_pools_donate(struct cenalloc_dev *cdev)
{
	u64 budget = cenalloc_ram_percent(pools_ram_percent);
	struct cenalloc_pool *pool;
	unsigned int i;
	int ret;

	cenalloc_reserve_assign(cdev);
	for (i = 0; i < cdev->num_pools; i++) {
		pool = &cdev->pools[i];
		ret = cenalloc_pool_alloc(pool, budget);
		budget -= min(budget, pool->allocated);
		if (!ret)
			ret = cenalloc_pool_merge(pool);
		if (!ret)
			ret = cenalloc_pool_send(cdev, pool, i);
		pool->status = ret;
		/* Nothing the device may hold: the memory goes back now. */
		if (ret && !pool->num_donated && !pool->held)
			cenalloc_pool_release(pool);
		if (ret == -ENODEV || ret == -ETIMEDOUT || ret == -EINTR)
			return ret;
		if (ret)
			pr_warn("cenalloc: pool %.16s: donation failed: %d\n",
				pool->config.name, ret);
		else
			pr_info("cenalloc: pool %.16s: donated %llu MiB in %u ranges, longest extent %llu KiB\n",
				pool->config.name, pool->donated >> 20,
				pool->num_extents, pool->longest_extent >> 10);
	}
	return 0;
}

/* Give a pool's memory back to the kernel. */
static void cenalloc_pool_release(struct cenalloc_pool *pool)
{
	unsigned int c;

	for (c = 0; c < pool->num_chunks; c++)
		__free_pages(pool->chunks[c].page, pool->chunks[c].order);
	kvfree(pool->chunks);
	kvfree(pool->extents);
	if (pool->reserve_len) {
		pool->reserve_addr = 0;
		pool->reserve_len = 0;
		atomic_set(&contig_reserve_owned, 0);
	}
	pool->chunks = NULL;
	pool->extents = NULL;
	pool->num_chunks = 0;
	pool->num_extents = 0;
	pool->num_donated = 0;
	pool->longest_extent = 0;
	pool->allocated = 0;
	pool->donated = 0;
	pool->held = 0;
}

void cenalloc_pools_free(struct cenalloc_dev *cdev)
{
	unsigned int i;

	for (i = 0; i < cdev->num_pools; i++)
		cenalloc_pool_release(&cdev->pools[i]);
}

/* The donated extent of @pool that contains @addr, or NULL. */
static const struct cenalloc_range *
cenalloc_pool_find(const struct cenalloc_pool *pool, u64 addr)
{
	const struct cenalloc_range *ext = pool->extents;
	unsigned int lo = 0, hi = pool->num_donated, mid;
	u64 start;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		start = le64_to_cpu(ext[mid].addr);
		if (addr < start)
			hi = mid;
		else if (addr - start >= le64_to_cpu(ext[mid].len))
			lo = mid + 1;
		else
			return &ext[mid];
	}
	return NULL;
}

/* True if [addr, addr + len) lies entirely in memory donated to @pool: a
 * device answer can never make the driver map memory it did not give away.
 */
bool cenalloc_pool_contains(const struct cenalloc_pool *pool, u64 addr,
			    u64 len)
{
	const struct cenalloc_range *ext;
	u64 end, ext_end;

	if (!len || check_add_overflow(addr, len, &end))
		return false;
	while (addr < end) {
		ext = cenalloc_pool_find(pool, addr);
		if (!ext)
			return false;
		ext_end = le64_to_cpu(ext->addr) + le64_to_cpu(ext->len);
		addr = min(end, ext_end);
	}
	return true;
}

/* True if [addr, addr + len) lies entirely in the memory of one pool. */
bool cenalloc_pools_contain(struct cenalloc_dev *cdev, u64 addr, u64 len)
{
	unsigned int i;

	for (i = 0; i < cdev->num_pools; i++)
		if (cenalloc_pool_contains(&cdev->pools[i], addr, len))
			return true;
	return false;
}
