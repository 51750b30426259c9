// SPDX-License-Identifier: GPL-2.0
/*
 * Driver and device must keep one view of the pools, the backing and the
 * negotiated types when a wait is cut short, a migration's answer is not
 * taken, a mapping outlives the backing it was made of, or answers queue
 * up (the guest driver's third review, F1, F2, F3, F6, F7, F10, F11):
 *
 * - a shrinker running in a task that gets SIGKILLed hands no block over
 *   to "held": each block it offered back is either the device's or the
 *   guest's again (F1);
 * - a migrating MAP whose first answer is not taken (more segments than
 *   the slot, or a submitter killed on the way) leaves a buffer that maps
 *   again, and its old pages usable by other buffers (F2);
 * - the pages of a backing a migration left stay the buffer's while a
 *   revoked mapping of them is still DMA-mapped: no other buffer gets them,
 *   and the late unmap (a swiotlb bounce copy with swiotlb=force) writes
 *   into no other buffer (F3);
 * - answers that come one after another, each within timeout_ms of the one
 *   before, do not break the device however long the queue (F6);
 * - a first map from a leased extent after an attachment went away carries
 *   the map types the device will negotiate: the buffer exists on the
 *   device afterwards (F7);
 * - a late attach whose batch revokes the dynamic importers' mappings,
 *   killed while the device works, leaves the driver knowing what the
 *   device revoked (F10);
 * - a dynamic importer that maps again from its move_notify does not have
 *   that mapping revoked without being told again: the attach is refused
 *   (F11).
 *
 * Needs the host request channel and a fault-injection cenallocd (F1, F2's
 * killed variant, F6, F10), the elastic pool of cenallocd-selftests.toml (F1),
 * leases (F7) and debugfs; skips what it lacks.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ca_module.h"
#include "cenalloc_util.h"
#include "host_channel.h"
#include "sysfs_util.h"
#include "tap.h"

#define ALLOCATORS_PATH		CA_ALLOCATORS_PATH
#define KIND_ELASTIC		(1u << 8)

#define DEV_ANY			0
#define DEV_DMA32		1
#define DEV_CONTIG_DMA32	2
#define DEV_DYNAMIC		3
#define DEV_CONTIG_ONLY		4
#define DEV_CONTIG_OR_SG	5
#define DEV_ELASTIC		6
#define DEV_REMAP		7

/* Value of a line "name N" of debugfs allocators, -1 if missing. */
static long long alloc_value(const char *name)
{
	return ca_file_value(ALLOCATORS_PATH, name);
}

static long long pool_value(int index, const char *name)
{
	char key[64];

	snprintf(key, sizeof(key), "pool%d_%s", index, name);
	return alloc_value(key);
}

/* Waits up to @ms for the driver to have no chain on the ring. */
static bool ring_idle(int ms)
{
	int waited;

	for (waited = 0; waited < ms; waited += 50) {
		if (ca_transport_value("inflight") == 0 &&
		    ca_transport_value("backlogged") == 0)
			return true;
		usleep(50000);
	}
	return false;
}

/* A device that the F6 or F1 test broke is reset for the tests after it. */
static void reload_if_broken(void)
{
	char why[128];
	int ret;

	if (ca_transport_value("broken") != 1)
		return;
	if (!CHECK(ca_module_ready(why, sizeof(why)), "cannot reload: %s", why))
		return;
	ret = ca_module_reload(NULL);
	CHECK(ret == 0, "reload after the device broke: %s", strerror(-ret));
}

static bool write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return false;
	n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text);
}

/* ---------------------------------------------------------------------- */
/* F6: a queue of slow answers is not a dead device.                       */

#define F6_THREADS	8
#define F6_SIZE		(512 * CA_KIB)	/* above the leased sizes: one chain */
#define F6_TIMEOUT	"1000"
#define F6_SLOW		"slow:400"	/* 8 chains: 3.2 s in all */

struct f6_map {
	int ct;
	uint32_t handle;
	pthread_barrier_t *start;
	struct ct_mapping *m;
	int ret;
	uint64_t took_ms;
};

static void *f6_map_thread(void *arg)
{
	struct f6_map *t = arg;
	uint64_t start;

	pthread_barrier_wait(t->start);
	start = ca_now_ns();
	t->ret = ct_map(t->ct, t->handle, 0, t->m);
	t->took_ms = (ca_now_ns() - start) / 1000000;
	return NULL;
}

/*
 * Eight first maps at once with every answer 400 ms late and timeout_ms
 * 1000: the last one waits about 3.2 s in the queue, but the device
 * answers a chain every 400 ms. All succeed and the device stays usable
 * (the old driver timed out the third one and broke the device).
 */
static enum tap_result test_queued_answers_do_not_break_the_device(void)
{
	struct f6_map t[F6_THREADS];
	pthread_t tid[F6_THREADS];
	pthread_barrier_t start;
	enum tap_result skip = ca_host_need_faults();
	int ca, ct, fd[F6_THREADS], i, ret, ok = 0, started = 0;
	char saved[32] = "";
	struct ca_buf b = { .fd = -1 };
	uint64_t longest = 0;

	if (skip != TAP_PASS)
		return skip;
	for (i = 0; i < F6_THREADS; i++) {
		fd[i] = -1;
		t[i].ct = -1;
		t[i].handle = 0;
		t[i].ret = -EINPROGRESS;
		t[i].m = NULL;
	}
	if (!CHECK(ca_param_read("timeout_ms", saved, sizeof(saved)) == 0,
		   "timeout_ms") ||
	    !CHECK(ca_param_write("timeout_ms", F6_TIMEOUT) == 0, "timeout_ms"))
		return TAP_FAIL;
	if (!ca_env_open_device(&ca, &ct, DEV_ANY, CENALLOC_MASK_ANY))
		goto out_param;
	for (i = 0; i < F6_THREADS; i++) {
		fd[i] = ca_create(ca, F6_SIZE, 0);
		if (!CHECK(fd[i] >= 0, "CREATE: %s", strerror(-fd[i])))
			goto out;
		/* A file of its own: the test module serialises one file's maps. */
		t[i].ct = ct_open();
		if (!CHECK(t[i].ct >= 0, "open %s: %s", CT_DEVICE_PATH,
			   strerror(-t[i].ct)))
			goto out;
		ret = ct_attach(t[i].ct, fd[i], DEV_ANY, &t[i].handle, NULL);
		if (!CHECK(ret == 0, "ATTACH: %s", strerror(-ret)))
			goto out;
		t[i].m = calloc(1, sizeof(*t[i].m));
		if (!CHECK(t[i].m, "calloc"))
			goto out;
		t[i].start = &start;
	}
	if (!ring_idle(5000) || !ca_host_fault(F6_SLOW))
		goto out;
	pthread_barrier_init(&start, NULL, F6_THREADS);
	for (i = 0; i < F6_THREADS; i++) {
		if (pthread_create(&tid[i], NULL, f6_map_thread, &t[i]))
			break;
		started++;
	}
	CHECK(started == F6_THREADS, "started %d threads", started);
	/* A barrier that never fills would hang: the threads only start
	 * together when all exist.
	 */
	for (i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	pthread_barrier_destroy(&start);
	ca_host_fault("none");
	for (i = 0; i < started; i++) {
		if (t[i].ret == 0)
			ok++;
		else
			tap_diag("map %d: %s after %llu ms", i,
				 strerror(-t[i].ret),
				 (unsigned long long)t[i].took_ms);
		if (t[i].took_ms > longest)
			longest = t[i].took_ms;
	}
	tap_diag("%d of %d maps succeeded; the longest took %llu ms", ok,
		 started, (unsigned long long)longest);
	CHECK(ok == F6_THREADS, "every queued map succeeds");
	CHECK(longest > 1000, "the queue was longer than timeout_ms (%llu ms): the test tests nothing",
	      (unsigned long long)longest);
	CHECK(ca_transport_value("broken") == 0, "the device is not marked broken");
	ret = ca_buf_alloc(ca, ct, 64 * CA_KIB, DEV_ANY, &b);
	CHECK(ret == 0, "a new buffer maps: %s", strerror(-ret));
	ca_buf_free(ct, &b);
out:
	ca_host_fault("none");
	for (i = 0; i < F6_THREADS; i++) {
		if (t[i].ct >= 0) {
			if (t[i].m && t[i].ret == 0)
				ct_unmap(t[i].ct, t[i].handle);
			ct_detach(t[i].ct, t[i].handle);
			close(t[i].ct);
		}
		if (fd[i] >= 0)
			close(fd[i]);
		free(t[i].m);
	}
	ca_env_close(&ca, &ct, NULL);
out_param:
	ca_param_write("timeout_ms", saved);
	reload_if_broken();
	return TAP_PASS;
}

/* ---------------------------------------------------------------------- */
/* F1: the shrinker of a killed task.                                      */

#define F1_GROW		(16 * CA_MIB)

/*
 * A task that writes drop_caches runs the driver's shrinker; SIGKILLed
 * while its POOL_REMOVE waits for a slow device (every answer 1 s late),
 * it must not leave blocks "held" (the old driver abandoned every
 * POOL_REMOVE of the scan and quarantined the blocks the device had taken
 * back: held until the driver is unbound).
 */
static enum tap_result test_killed_shrinker_holds_nothing(void)
{
	enum tap_result skip = ca_host_need_faults();
	long long held0, held1, donated, scans0, returned0, returned1;
	struct ca_buf b = { .fd = -1 };
	int ca, ct, index, ret, status, waited;
	char saved_poll[32] = "";
	struct ca_pool pool;
	uint64_t start, took;
	pid_t pid;

	if (skip != TAP_PASS)
		return skip;
	if (!ca_env_open_device(&ca, &ct, DEV_ELASTIC, KIND_ELASTIC))
		return TAP_FAIL;
	if (ca_pool_read(ca, &pool) ||
	    (index = ca_pool_find_kind(&pool, KIND_ELASTIC)) < 0) {
		ca_env_close(&ca, &ct, NULL);
		return tap_skip("no pool of the elastic kind (bit 8)");
	}
	held0 = pool_value(index, "held");
	ret = ca_buf_alloc(ca, ct, F1_GROW, DEV_ELASTIC, &b);
	if (!CHECK(ret == 0, "16 MiB in the elastic pool: %s", strerror(-ret)))
		goto out;
	ca_buf_free(ct, &b);
	donated = pool_value(index, "donated");
	if (!CHECK(donated > pool_value(index, "initial"),
		   "the pool grew (donated %lld)", donated))
		goto out;
	returned0 = pool_value(index, "returned");
	if (!CHECK(ca_param_read("poll_us", saved_poll, sizeof(saved_poll)) == 0 &&
		   ca_param_write("poll_us", "0") == 0, "poll_us"))
		goto out;
	if (!ring_idle(5000) || !ca_host_fault("slow:1000"))
		goto out_param;
	scans0 = alloc_value("shrink_scans");
	pid = fork();
	if (pid == 0) {
		write_text("/proc/sys/vm/drop_caches", "2");
		_exit(0);
	}
	if (!CHECK(pid > 0, "fork"))
		goto out_fault;
	/* Kill it once its scan has started (the round trip takes 1 s). */
	for (waited = 0; waited < 5000; waited += 10) {
		if (alloc_value("shrink_scans") > scans0)
			break;
		usleep(10000);
	}
	CHECK(waited < 5000, "the child's shrinker ran (shrink_scans %lld)",
	      alloc_value("shrink_scans"));
	usleep(200000);
	start = ca_now_ns();
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	took = (ca_now_ns() - start) / 1000000;
	tap_diag("the killed child took %llu ms to go", (unsigned long long)took);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
	      "the child died of SIGKILL (status %#x)", status);
	/* Bounded: at most the round trip it was in (1 s) and a little. */
	CHECK(took < 5000, "the killed child took %llu ms", (unsigned long long)took);
out_fault:
	ca_host_fault("none");
	CHECK(ring_idle(20000), "the device answered everything");
	held1 = pool_value(index, "held");
	returned1 = pool_value(index, "returned");
	tap_diag("pool %d: held %lld -> %lld, returned %lld -> %lld", index,
		 held0, held1, returned0, returned1);
	CHECK(held1 == held0, "no block is held: %lld bytes, was %lld", held1,
	      held0);
	if (CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		CHECK((long long)pool.alloc[index].capacity ==
		      pool_value(index, "donated"),
		      "the device's capacity %llu is the driver's donated %lld",
		      (unsigned long long)pool.alloc[index].capacity,
		      pool_value(index, "donated"));
out_param:
	ca_param_write("poll_us", saved_poll);
out:
	ca_host_fault("none");
	ca_env_close(&ca, &ct, NULL);
	reload_if_broken();
	return TAP_PASS;
}

/* ---------------------------------------------------------------------- */
/* F2: a migration whose answer is not taken.                              */

#define F2_SIZE		(128 * CA_KIB)	/* two 64 KiB holes: two segments */
#define F2_SEED		0xf2f2

static bool env_devices(int *ca, int *ct)
{
	static const uint32_t sg[] = { CENALLOC_MAP_SG };
	static const uint32_t contig_or_sg[] = { CENALLOC_MAP_CONTIG,
						 CENALLOC_MAP_SG };
	struct ct_device_opts dyn = { .flags = CENALLOC_TEST_DEV_DYNAMIC };

	if (!ca_env_open_device(ca, ct, DEV_ANY, CENALLOC_MASK_ANY))
		return false;
	if (CHECK(ct_set_device1(*ct, DEV_DMA32, CENALLOC_KIND_DMA32, 0) == 0 &&
		  ct_set_device1(*ct, DEV_CONTIG_DMA32,
				 CENALLOC_KIND_CONTIG_DMA32,
				 CENALLOC_MAP_CONTIG) == 0 &&
		  ct_set_device_ex(*ct, DEV_DYNAMIC, CENALLOC_MASK_ANY, sg, 1,
				   &dyn) == 0 &&
		  ct_set_device(*ct, DEV_CONTIG_ONLY, CENALLOC_KIND_CONTIG,
				sg, 1) == 0 &&
		  ct_set_device(*ct, DEV_CONTIG_OR_SG, CENALLOC_MASK_ANY,
				contig_or_sg, 2) == 0,
		  "SET_DEVICE"))
		return true;
	ca_env_close(ca, ct, NULL);
	return false;
}

/*
 * An honest device migrates a one-segment buffer into a fragmented DMA32
 * pool: two segments, more than the MAP slot sized for the old backing
 * holds, so the answer is -ENOSPC and the driver asks again; the device
 * has migrated already and answers the new segments without the MIGRATED
 * flag. The map must succeed with the buffer's data, and another buffer
 * that gets the old pages must map too (the old driver answered -EIO to
 * both, for good).
 */
static enum tap_result test_migration_into_more_segments(void)
{
	static struct ca_frag frag;
	static struct ct_mapping m;
	struct ca_buf a = { .fd = -1 }, b = { .fd = -1 };
	uint64_t sum0, sum1, len;
	struct ca_pool pool;
	int ca, ct, index, ret;
	char stock[32] = "";
	uint32_t h;
	bool attached = false, mapped = false;

	if (!env_devices(&ca, &ct))
		return TAP_FAIL;
	/*
	 * No lease refills while the allocator is filled: room left only in
	 * a refilled stock fails a map with -EAGAIN twice.
	 */
	if (ca_param_read("lease_stock", stock, sizeof(stock)) ||
	    ca_param_write("lease_stock", "0"))
		stock[0] = '\0';
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&pool, CENALLOC_KIND_DMA32);
	if (index < 0 || ca_allocator_contiguous(&pool.alloc[index])) {
		ca_env_close(&ca, &ct, NULL);
		if (stock[0])
			ca_param_write("lease_stock", stock);
		return tap_skip("no scatter DMA32 allocator");
	}
	/* A pool that may grow does so in the background (POOL_LOW): no holes. */
	if (!CHECK(pool_value(index, "max") > 0, "no pool%d_max in debugfs", index))
		goto out;
	if (pool_value(index, "max") > pool_value(index, "donated")) {
		long long donated = pool_value(index, "donated");
		long long max = pool_value(index, "max");

		ca_env_close(&ca, &ct, NULL);
		if (stock[0])
			ca_param_write("lease_stock", stock);
		return tap_skip("the DMA32 pool may grow (%lld of at most %lld bytes): it cannot be fragmented",
				donated, max);
	}
	ret = ca_fragment(ca, ct, DEV_DMA32, index, &frag);
	if (ret == 1) {
		ca_fragment_release(ct, &frag);
		ca_env_close(&ca, &ct, NULL);
		if (stock[0])
			ca_param_write("lease_stock", stock);
		return tap_skip("the DMA32 allocator takes too many buffers to fragment");
	}
	if (!CHECK(ret == 0, "fragment allocator %d: %s", index, strerror(-ret)))
		goto out;

	ret = ca_buf_alloc(ca, ct, F2_SIZE, DEV_ANY, &a);
	if (!CHECK(ret == 0, "A: %s", strerror(-ret)))
		goto out;
	CHECK(a.map.num_segments == 1, "A starts in %u segments", a.map.num_segments);
	/* Unmapped before FILL: a bounced mapping's unmap would copy back. */
	ret = ct_unmap(ct, a.handle);
	CHECK(ret == 0, "unmap A: %s", strerror(-ret));
	ret = ca_fill(ca, a.fd, F2_SEED);
	CHECK(ret == 0, "FILL A: %s", strerror(-ret));
	ret = ca_checksum(ca, a.fd, &sum0, &len);
	CHECK(ret == 0, "CHECKSUM A: %s", strerror(-ret));

	ret = ct_attach(ct, a.fd, DEV_DMA32, &h, NULL);
	if (!CHECK(ret == 0, "late attach of a DMA32 device: %s", strerror(-ret)))
		goto out;
	attached = true;
	/* One segment per sg entry: DMA addresses may merge (swiotlb). */
	ret = ct_map_raw(ct, h, 0, true, &m);
	mapped = ret == 0;
	CHECK(ret == 0, "the migrating map: %s", strerror(-ret));
	if (mapped) {
		CHECK(m.num_segments >= 2, "A moved into %u sg entries",
		      m.num_segments);
		ret = ca_checksum(ca, a.fd, &sum1, &len);
		CHECK(ret == 0 && sum1 == sum0,
		      "A kept its data: %s, %#llx, was %#llx", strerror(-ret),
		      (unsigned long long)sum1, (unsigned long long)sum0);
	}
	/* First fit: B likely gets the pages A left. */
	ret = ca_buf_alloc(ca, ct, F2_SIZE, DEV_ANY, &b);
	CHECK(ret == 0, "B after A's migration: %s", strerror(-ret));
	ret = ct_map(ct, a.handle, 0, &a.map);
	CHECK(ret == 0, "A maps again for the first device: %s", strerror(-ret));
out:
	if (mapped)
		ct_unmap(ct, h);
	if (attached)
		ct_detach(ct, h);
	ca_buf_free(ct, &b);
	ca_buf_free(ct, &a);
	ca_fragment_release(ct, &frag);
	ca_env_close(&ca, &ct, NULL);
	if (stock[0])
		ca_param_write("lease_stock", stock);
	return TAP_PASS;
}

/*
 * The submitter of a migrating MAP is SIGKILLed while the (slow) device
 * works: the device migrates, the driver never reads the answer. The next
 * map must take the new backing, and the old pages must serve other
 * buffers (the old driver kept the old backing owned: -EIO for both).
 */
static enum tap_result test_killed_migrating_map(void)
{
	static struct ct_mapping m;
	struct ca_buf a = { .fd = -1 }, b = { .fd = -1 };
	enum tap_result skip = ca_host_need_faults();
	int ca, ct, ret, status;
	uint64_t sum0, sum1, len;
	bool attached = false;
	uint32_t h;
	pid_t pid;

	if (skip != TAP_PASS)
		return skip;
	if (!env_devices(&ca, &ct))
		return TAP_FAIL;
	ret = ca_buf_alloc(ca, ct, F2_SIZE, DEV_ANY, &a);
	if (!CHECK(ret == 0, "A: %s", strerror(-ret)))
		goto out;
	/* Unmapped before FILL: a bounced mapping's unmap would copy back. */
	ct_unmap(ct, a.handle);
	ret = ca_fill(ca, a.fd, F2_SEED);
	CHECK(ret == 0, "FILL A: %s", strerror(-ret));
	ret = ca_checksum(ca, a.fd, &sum0, &len);
	CHECK(ret == 0, "CHECKSUM A: %s", strerror(-ret));
	ret = ct_attach(ct, a.fd, DEV_DMA32, &h, NULL);
	if (!CHECK(ret == 0, "late attach of a DMA32 device: %s", strerror(-ret)))
		goto out;
	attached = true;
	if (!ring_idle(5000) || !ca_host_fault("slow:2000"))
		goto out;
	pid = fork();
	if (pid == 0) {
		ct_map(ct, h, 0, &m);
		_exit(0);
	}
	if (!CHECK(pid > 0, "fork"))
		goto out;
	usleep(500000);		/* the child waits in the MAP */
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
	      "the child died of SIGKILL (status %#x)", status);
	ca_host_fault("none");
	CHECK(ring_idle(20000), "the device answered everything");

	ret = ct_map(ct, h, 0, &m);
	CHECK(ret == 0, "A maps for the DMA32 device after the killed map: %s",
	      strerror(-ret));
	if (ret == 0) {
		ret = ca_checksum(ca, a.fd, &sum1, &len);
		CHECK(ret == 0 && sum1 == sum0,
		      "A kept its data: %s, %#llx, was %#llx", strerror(-ret),
		      (unsigned long long)sum1, (unsigned long long)sum0);
		ct_unmap(ct, h);
	}
	ret = ca_buf_alloc(ca, ct, F2_SIZE, DEV_ANY, &b);
	CHECK(ret == 0, "B after A's migration: %s", strerror(-ret));
out:
	ca_host_fault("none");
	if (attached)
		ct_detach(ct, h);
	ca_buf_free(ct, &b);
	ca_buf_free(ct, &a);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/* ---------------------------------------------------------------------- */
/* F3: a revoked mapping outlives the migration.                           */

#define F3_SIZE		(128 * CA_KIB)
#define F3_SEED_A	0xa3a3
#define F3_SEED_B	0xb3b3

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/*
 * A dynamic importer D maps A and is told to move (a late attach of a
 * CONTIG_DMA32 device L), but does not unmap yet; L's map migrates A. While
 * D's revoked mapping lives, A's old pages must not back another buffer B;
 * D's late unmap must not change B's content (with swiotlb=force it copies
 * the bounce buffer back into A's old pages); once D unmapped, B maps, and
 * nothing stays counted.
 */
static enum tap_result test_revoked_mapping_keeps_old_pages(void)
{
	static struct ct_mapping m;
	struct ca_buf a = { .fd = -1 }, b = { .fd = -1 };
	uint64_t old_addr, old_len, addr, len, q0, q1;
	long long in_use0 = -1, in_use1;
	struct ca_pool pool;
	int ca, ct, ret, sys = -1;
	uint32_t hl, flags, notes;
	bool attached = false, mapped = false;

	if (!env_devices(&ca, &ct))
		return TAP_FAIL;
	if (CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		sys = ca_pool_find_kind(&pool, CENALLOC_KIND_SYSTEM);
	if (sys >= 0)
		in_use0 = pool_value(sys, "in_use");
	ret = ca_buf_alloc(ca, ct, F3_SIZE, DEV_DYNAMIC, &a);
	if (!CHECK(ret == 0, "A mapped by the dynamic importer: %s",
		   strerror(-ret)))
		goto out;
	ret = ca_fill(ca, a.fd, F3_SEED_A);
	CHECK(ret == 0, "FILL A: %s", strerror(-ret));
	ret = ca_phys(ca, a.fd, &old_addr, &old_len);
	if (ret == -EIO || ret == -EINVAL) {
		/* Not one segment: PHYS cannot tell where A was. */
		ca_env_close(&ca, &ct, &a);
		return tap_skip("A is not one segment (PHYS: %s)", strerror(-ret));
	}
	if (!CHECK(ret == 0, "PHYS A: %s", strerror(-ret)))
		goto out;

	ret = ct_attach(ct, a.fd, DEV_CONTIG_DMA32, &hl, NULL);
	if (!CHECK(ret == 0, "late attach of a CONTIG_DMA32 device: %s",
		   strerror(-ret)))
		goto out;
	attached = true;
	ret = ct_status(ct, a.handle, &flags, &notes);
	CHECK(ret == 0 && (flags & CENALLOC_TEST_STATUS_INVALIDATED),
	      "the dynamic importer was told to move (flags %#x)", flags);
	ret = ct_map(ct, hl, 0, &m);
	mapped = ret == 0;
	if (!CHECK(ret == 0, "the migrating map: %s", strerror(-ret)))
		goto out;
	ret = ca_phys(ca, a.fd, &addr, &len);
	if (!CHECK(ret == 0 && !overlaps(addr, len, old_addr, old_len),
		   "A moved: PHYS %s, [%#llx +%#llx], was [%#llx +%#llx]",
		   strerror(-ret), (unsigned long long)addr,
		   (unsigned long long)len, (unsigned long long)old_addr,
		   (unsigned long long)old_len))
		goto out;

	/* B, in A's old allocator: first fit hands out A's old pages. */
	ret = ca_buf_alloc(ca, ct, F3_SIZE, DEV_ANY, &b);
	CHECK(ret == 0 || ret == -EIO, "B while D's revoked mapping lives: %s",
	      strerror(-ret));
	if (ret == 0) {
		ret = ca_phys(ca, b.fd, &addr, &len);
		CHECK(ret != 0 || !overlaps(addr, len, old_addr, old_len),
		      "B got A's old pages [%#llx +%#llx] while D still maps them",
		      (unsigned long long)addr, (unsigned long long)len);
		ret = ca_fill(ca, b.fd, F3_SEED_B);
		CHECK(ret == 0, "FILL B: %s", strerror(-ret));
		ret = ca_checksum(ca, b.fd, &q0, &len);
		CHECK(ret == 0, "CHECKSUM B: %s", strerror(-ret));
	}

	ret = ct_unmap(ct, a.handle);
	CHECK(ret == 0, "D's late unmap: %s", strerror(-ret));

	if (b.fd >= 0) {
		ret = ca_checksum(ca, b.fd, &q1, &len);
		CHECK(ret == 0 && q1 == q0,
		      "B's content after D's unmap: %#llx, was %#llx",
		      (unsigned long long)q1, (unsigned long long)q0);
	} else {
		ret = ca_buf_alloc(ca, ct, F3_SIZE, DEV_ANY, &b);
		CHECK(ret == 0, "B once D unmapped: %s", strerror(-ret));
	}
out:
	if (mapped)
		ct_unmap(ct, hl);
	if (attached)
		ct_detach(ct, hl);
	ca_buf_free(ct, &b);
	ca_buf_free(ct, &a);
	if (in_use0 >= 0) {
		in_use1 = pool_value(sys, "in_use");
		CHECK(in_use1 == in_use0, "pool %d: %lld bytes in use, was %lld",
		      sys, in_use1, in_use0);
	}
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/* ---------------------------------------------------------------------- */
/* F7: a leased first map after a detach.                                  */

/* Waits up to 5 s for the 4 KiB stock of @allocator to hold one extent. */
static bool stock_filled(int allocator)
{
	char name[32];
	int i;

	snprintf(name, sizeof(name), "stock%d_4k", allocator);
	for (i = 0; i < 500; i++) {
		if (alloc_value(name) >= 1)
			return true;
		usleep(10000);
	}
	return false;
}

/*
 * C (mask CONTIG) and A (any mask, [CONTIG, SG]) attach: A gets CONTIG;
 * C detaches; A's first map is a LEASED_MAP. The device negotiates A
 * against the attachments it is given (any kind: SG); the driver must send
 * what the device will agree to, or map on the device instead: the buffer
 * then exists on the device (the old driver's LEASED_MAP was refused,
 * only logged: CHECKSUM -ENOENT, the extent leaked).
 */
static enum tap_result test_leased_map_after_detach(void)
{
	static struct ct_mapping m;
	struct ca_buf warm = { .fd = -1 };
	long long errors0, errors1, taken0;
	int ca, ct, ret, buf = -1, sys, logged;
	uint32_t hc, ha, type;
	uint64_t sum, len;
	struct ca_pool pool;
	bool a_attached = false, a_mapped = false;

	if (!debugfs_ready())
		return tap_skip("no debugfs");
	if (!env_devices(&ca, &ct))
		return TAP_FAIL;
	if (alloc_value("leases") != 1) {
		ca_env_close(&ca, &ct, NULL);
		return tap_skip("the driver has no leases");
	}
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	sys = ca_pool_find_kind(&pool, CENALLOC_KIND_SYSTEM);
	if (!CHECK(sys >= 0, "a system allocator"))
		goto out;
	ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV_ANY, &warm);
	CHECK(ret == 0, "warming buffer: %s", strerror(-ret));
	ca_buf_free(ct, &warm);
	if (!CHECK(stock_filled(sys), "allocator %d has 4 KiB stock", sys) ||
	    !CHECK(ring_idle(5000), "ring idle"))
		goto out;

	errors0 = ca_transport_value("posted_errors");
	logged = ca_kmsg_count("posted LEASED_MAP failed");
	taken0 = alloc_value("lease_taken");
	buf = ca_create(ca, 4 * CA_KIB, 0);
	if (!CHECK(buf >= 0, "CREATE: %s", strerror(-buf)))
		goto out;
	ret = ct_attach(ct, buf, DEV_CONTIG_ONLY, &hc, NULL);
	if (!CHECK(ret == 0, "attach C: %s", strerror(-ret)))
		goto out;
	ret = ct_attach(ct, buf, DEV_CONTIG_OR_SG, &ha, &type);
	a_attached = ret == 0;
	CHECK(ret == 0 && type == CENALLOC_MAP_CONTIG,
	      "attach A: %s, type %#x (the scenario needs CONTIG)",
	      strerror(-ret), type);
	ret = ct_detach(ct, hc);
	CHECK(ret == 0, "detach C: %s", strerror(-ret));
	if (!a_attached)
		goto out;
	ret = ct_map(ct, ha, 0, &m);
	a_mapped = ret == 0;
	CHECK(ret == 0, "map A: %s", strerror(-ret));
	tap_diag("lease_taken %lld -> %lld, map type %#x", taken0,
		 alloc_value("lease_taken"), m.map_type);
	ret = ca_checksum(ca, buf, &sum, &len);
	CHECK(ret == 0 && len == 4 * CA_KIB,
	      "CHECKSUM: %s (the device knows the buffer)", strerror(-ret));
	ring_idle(5000);
	errors1 = ca_transport_value("posted_errors");
	CHECK(errors1 == errors0, "posted_errors %lld, was %lld", errors1, errors0);
	CHECK(ca_kmsg_count("posted LEASED_MAP failed") == logged,
	      "no refused LEASED_MAP in the kernel log");
out:
	if (a_mapped)
		ct_unmap(ct, ha);
	if (a_attached)
		ct_detach(ct, ha);
	if (buf >= 0)
		close(buf);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/* ---------------------------------------------------------------------- */
/* F10: a late attach that revokes, SIGKILLed while the device works.      */

#define F10_SIZE	(128 * CA_KIB)

/*
 * The dynamic importer maps A; a child attaches a DMA32 device late, so
 * the batch UNMAPs the importer's mapping before its ATTACH, and is
 * SIGKILLed while the (slow) device works. The device runs the UNMAP
 * whatever the child does: the driver must know it, so the importer's
 * unmap posts nothing the device refuses, and a new DMA32 attach (whose
 * batch would carry that UNMAP again) succeeds and maps (the old driver
 * gave up the answer: posted_errors +1 and -ECANCELED for good).
 */
static enum tap_result test_killed_revoking_attach(void)
{
	static struct ct_mapping m;
	struct ca_buf a = { .fd = -1 };
	enum tap_result skip = ca_host_need_faults();
	long long errors0, errors1;
	int ca, ct, ret, status;
	bool attached = false;
	uint32_t h, hc;
	pid_t pid;

	if (skip != TAP_PASS)
		return skip;
	if (!env_devices(&ca, &ct))
		return TAP_FAIL;
	ret = ca_buf_alloc(ca, ct, F10_SIZE, DEV_DYNAMIC, &a);
	if (!CHECK(ret == 0, "A mapped by the dynamic importer: %s",
		   strerror(-ret)))
		goto out;
	if (!ring_idle(5000) || !ca_host_fault("slow:2000"))
		goto out;
	errors0 = ca_transport_value("posted_errors");
	pid = fork();
	if (pid == 0) {
		ct_attach(ct, a.fd, DEV_DMA32, &hc, NULL);
		_exit(0);
	}
	if (!CHECK(pid > 0, "fork"))
		goto out;
	usleep(500000);		/* the child waits in the ATTACH */
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
	      "the child died of SIGKILL (status %#x)", status);
	ca_host_fault("none");
	CHECK(ring_idle(20000), "the device answered everything");

	ret = ct_attach(ct, a.fd, DEV_DMA32, &h, NULL);
	attached = ret == 0;
	CHECK(ret == 0, "a DMA32 attach after the killed one: %s",
	      strerror(-ret));
	if (attached) {
		ret = ct_map(ct, h, 0, &m);
		CHECK(ret == 0, "the DMA32 device maps A: %s", strerror(-ret));
		if (ret == 0)
			ct_unmap(ct, h);
	}
	ret = ct_unmap(ct, a.handle);
	CHECK(ret == 0, "the dynamic importer unmaps: %s", strerror(-ret));
	/* Its UNMAP is posted, behind a DETACH that goes with it. */
	if (attached)
		ct_detach(ct, h);
	attached = false;
	ca_buf_free(ct, &a);
	CHECK(ring_idle(20000), "the device answered everything");
	errors1 = ca_transport_value("posted_errors");
	CHECK(errors1 == errors0, "posted_errors %lld, was %lld", errors1,
	      errors0);
out:
	ca_host_fault("none");
	if (attached)
		ct_detach(ct, h);
	ca_buf_free(ct, &a);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/* ---------------------------------------------------------------------- */
/* F11: a dynamic importer that maps again from its move_notify.          */

#define F11_SIZE	(128 * CA_KIB)

/*
 * Its new mapping is of the backing about to go, made after it was told:
 * revoking it as well, with no second notification, would leave it using
 * pages the migration frees. The late attach must be refused (-EBUSY), or
 * the importer told again.
 */
static enum tap_result test_remap_in_move_notify(void)
{
	static const uint32_t sg[] = { CENALLOC_MAP_SG };
	struct ct_device_opts remap = {
		.flags = CENALLOC_TEST_DEV_DYNAMIC |
			 CENALLOC_TEST_DEV_REMAP_IN_NOTIFY,
	};
	struct ca_buf a = { .fd = -1 };
	uint32_t h, flags = 0, notes = 0;
	bool attached = false;
	int ca, ct, ret, st;

	if (!env_devices(&ca, &ct))
		return TAP_FAIL;
	if (!CHECK(ct_set_device_ex(ct, DEV_REMAP, CENALLOC_MASK_ANY, sg, 1,
				    &remap) == 0, "SET_DEVICE remap"))
		goto out;
	ret = ca_buf_alloc(ca, ct, F11_SIZE, DEV_REMAP, &a);
	if (!CHECK(ret == 0, "A mapped by the re-mapping importer: %s",
		   strerror(-ret)))
		goto out;
	ret = ct_attach(ct, a.fd, DEV_CONTIG_DMA32, &h, NULL);
	attached = ret == 0;
	st = ct_status(ct, a.handle, &flags, &notes);
	CHECK(st == 0 && notes >= 1, "the importer was told to move: %s, %u",
	      strerror(-st), notes);
	CHECK(flags & CENALLOC_TEST_STATUS_NOTIFY_MAPPED,
	      "the importer mapped again in move_notify (flags %#x)", flags);
	tap_diag("late attach: %s, %u notifications", strerror(-ret), notes);
	CHECK(ret == -EBUSY || notes >= 2,
	      "the attach (%s) revoked the mapping made in move_notify after %u notification(s)",
	      strerror(-ret), notes);
out:
	if (attached)
		ct_detach(ct, h);
	ca_buf_free(ct, &a);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("F7: a leased first map after a detach exists on the device",
		 test_leased_map_after_detach),
	TAP_TEST("F2: a migration into more segments than the slot maps",
		 test_migration_into_more_segments),
	TAP_TEST("F2: a killed migrating map leaves the buffer mappable",
		 test_killed_migrating_map),
	TAP_TEST("F3: A's old pages stay A's while a revoked mapping lives",
		 test_revoked_mapping_keeps_old_pages),
	TAP_TEST("F1: a killed shrinker leaves no block held",
		 test_killed_shrinker_holds_nothing),
	TAP_TEST("F10: a killed revoking attach leaves driver and device agreed",
		 test_killed_revoking_attach),
	TAP_TEST("F11: a mapping made in move_notify is not revoked silently",
		 test_remap_in_move_notify),
	TAP_TEST("F6: queued slow answers do not break the device",
		 test_queued_answers_do_not_break_the_device),
};

TAP_MAIN(tests)
