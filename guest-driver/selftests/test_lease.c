// SPDX-License-Identifier: GPL-2.0
/*
 * Leases (CENALLOC_F_LEASE): the first map of a small buffer comes from a
 * stock of zeroed extents the device leased, without a round trip, in the
 * allocator the pool rules pick; the stock runs out and refills; the
 * device takes it back when a map needs the room it holds.
 *
 * The figures come from debugfs cenalloc/allocators ("stock<A>_<K>k N",
 * "lease_taken N", ...). Skips when the driver has no leases. A report of
 * memory the device never leased is refused: tests/elastic.rs sends such
 * reports (the driver cannot be made to). A LEASE answer naming memory
 * outside the pool (the fault lease-outside-pool of a fault-injection
 * cenallocd, switched through run-vm's host channel) is refused by the
 * driver, and the extents of that answer it does not use go back: the
 * device then holds leased what the stock holds (its STATS snapshot,
 * debugfs cenalloc/device_stats).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ca_module.h"
#include "cenalloc_util.h"
#include "host_channel.h"
#include "tap.h"

#define ALLOCATORS_PATH		CA_ALLOCATORS_PATH
#define STATS_PATH		"/sys/kernel/debug/cenalloc/device_stats"
#define DEV			0
#define NBUF			40
#define EXTRA			8

static long long lease_value(const char *name)
{
	return ca_file_value(ALLOCATORS_PATH, name);
}

static long long stock(int allocator, int kib)
{
	char name[32];

	snprintf(name, sizeof(name), "stock%d_%dk", allocator, kib);
	return lease_value(name);
}

/* The sum of every "@key N" line of cenalloc/allocators starting with @key. */
static long long lease_sum(const char *key)
{
	char *text = ca_read_text(ALLOCATORS_PATH), *line;
	long long sum = 0;

	if (!text)
		return -1;
	for (line = text; line; line = strchr(line, '\n')) {
		if (*line == '\n')
			line++;
		if (!strncmp(line, key, strlen(key)))
			sum += strtoll(strchr(line, ' ') ? strchr(line, ' ') : "0",
				       NULL, 10);
	}
	free(text);
	return sum;
}

/*
 * The extents the device holds leased to this VM: the sum of its
 * allocators' "leased_extents" in its STATS snapshot (debugfs
 * cenalloc/device_stats), -1 if unreadable or absent.
 */
static long long device_leased_extents(void)
{
	static const char key[] = "\"leased\":";
	static const char next[] = ",\"leased_extents\":";
	char *text = ca_read_text(STATS_PATH), *at;
	long long sum = -1;

	if (!text)
		return -1;
	/* An allocator's "leased":BYTES,"leased_extents":N (not the counter). */
	for (at = strstr(text, key); at; at = strstr(at, key)) {
		strtoll(at + strlen(key), &at, 10);
		if (strncmp(at, next, strlen(next)))
			continue;
		at += strlen(next);
		sum = (sum < 0 ? 0 : sum) + strtoll(at, NULL, 10);
	}
	free(text);
	return sum;
}

/*
 * Waits up to 5 s for the device to hold leased exactly the extents of the
 * driver's stock and @hidden more (posted LEASED_MAPs may be on their way);
 * false, with the figures, when it never does.
 */
static bool leases_agree(long long hidden)
{
	long long dev = -1, drv = -1;
	int i;

	for (i = 0; i < 50; i++) {
		dev = device_leased_extents();
		drv = lease_sum("stock");
		if (dev >= 0 && drv >= 0 && dev == drv + hidden)
			return true;
		usleep(100000);
	}
	return CHECK(false, "the device holds %lld extents leased, the stock %lld (and %lld unknown)",
		     dev, drv, hidden);
}

/* Waits up to 5 s for the @kib KiB stock of @allocator to hold @want. */
static bool stock_reaches_kib(int allocator, int kib, long long want)
{
	int i;

	for (i = 0; i < 500; i++) {
		if (stock(allocator, kib) >= want)
			return true;
		usleep(10000);
	}
	return false;
}

static bool stock_reaches(int allocator, long long want)
{
	return stock_reaches_kib(allocator, 4, want);
}

/*
 * Whether pool @index may grow (elastic, below its maximum): filling it
 * then makes no shortage, since it grows in the background (POOL_LOW).
 */
static bool pool_may_grow(int index, long long *donated, long long *max)
{
	char name[32];

	snprintf(name, sizeof(name), "pool%d_donated", index);
	*donated = lease_value(name);
	snprintf(name, sizeof(name), "pool%d_max", index);
	*max = lease_value(name);
	return *max > *donated;
}

/* Opens the devices with device DEV of @mask; TAP_SKIP without leases. */
static enum tap_result setup(int *ca, int *ct, uint32_t mask)
{
	if (!ca_env_open_device(ca, ct, DEV, mask))
		return TAP_FAIL;
	if (lease_value("leases") != 1) {
		ca_env_close(ca, ct, NULL);
		return tap_skip("the driver has no leases (debugfs %s)",
				ALLOCATORS_PATH);
	}
	return TAP_PASS;
}

/* One 4 KiB buffer mapped and released, to make the stock fill. */
static bool warm(int ca, int ct, int allocator)
{
	struct ca_buf b;
	int ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &b);

	if (!CHECK(ret == 0, "4 KiB: %s", strerror(-ret)))
		return false;
	ca_buf_free(ct, &b);
	return CHECK(stock_reaches(allocator, 4),
		     "allocator %d: stock %lld after 5 s", allocator,
		     stock(allocator, 4));
}

static enum tap_result test_leased_maps_are_zeroed_and_counted(void)
{
	struct ca_pool before, after;
	long long taken0, taken1;
	struct ca_buf b = { .fd = -1 };
	uint8_t *mem;
	int ca, ct, ret, index;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&before, CENALLOC_KIND_SYSTEM);
	if (!warm(ca, ct, index))
		goto out;
	taken0 = lease_value("lease_taken");
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &b);
	if (!CHECK(ret == 0, "4 KiB: %s", strerror(-ret)))
		goto out;
	taken1 = lease_value("lease_taken");
	CHECK(taken1 == taken0 + 1, "lease_taken %lld -> %lld", taken0, taken1);
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_allocator_used(&before, &after) == index,
		      "the buffer is not in allocator %d", index);
	mem = ca_mmap(b.fd, 4 * CA_KIB);
	if (CHECK(mem, "mmap: %s", strerror(errno))) {
		CHECK(ca_first_nonzero(mem, 4 * CA_KIB) == 4 * CA_KIB,
		      "a leased buffer is not zeroed");
		munmap(mem, 4 * CA_KIB);
	}
out:
	ca_env_close(&ca, &ct, &b);
	return TAP_PASS;
}

static enum tap_result test_stock_runs_out_and_refills(void)
{
	static struct ca_buf bufs[NBUF];
	long long taken0, missed0, leased0, have0, taken, missed;
	struct ca_pool before, full;
	unsigned int made = 0, i;
	int ca, ct, ret, index;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&before, CENALLOC_KIND_SYSTEM);
	if (!warm(ca, ct, index) ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	taken0 = lease_value("lease_taken");
	missed0 = lease_value("lease_missed");
	leased0 = lease_value("lease_extents");
	have0 = stock(index, 4);
	/* More buffers than the stock holds, all alive at once. */
	for (made = 0; made < NBUF; made++) {
		ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &bufs[made]);
		if (!CHECK(ret == 0, "buffer %u: %s", made, strerror(-ret)))
			break;
	}
	taken = lease_value("lease_taken") - taken0;
	missed = lease_value("lease_missed") - missed0;
	tap_diag("%u buffers: %lld from the stock, %lld mapped by a round trip",
		 made, taken, missed);
	CHECK(taken > 0 && taken + missed == made,
	      "%lld leased + %lld not = %u", taken, missed, made);
	/* Every one is in the system allocator, leased or not. */
	if (CHECK(ca_pool_read(ca, &full) == 0, "INFO"))
		CHECK(ca_pool_used(&full) - ca_pool_used(&before) ==
		      made * 4 * CA_KIB,
		      "use grew by %llu for %u buffers of 4 KiB",
		      (unsigned long long)(ca_pool_used(&full) -
					   ca_pool_used(&before)), made);
	/* Every extent taken was in the stock or came with a refill. */
	CHECK(stock_reaches(index, 1), "stock %lld 5 s after the burst",
	      stock(index, 4));
	CHECK(taken <= have0 + lease_value("lease_extents") - leased0,
	      "%lld taken from a stock of %lld and %lld leased since",
	      taken, have0, lease_value("lease_extents") - leased0);
out:
	for (i = 0; i < made; i++)
		ca_buf_free(ct, &bufs[i]);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * With an allocator too full for the device to lease more (it keeps an
 * eighth free), a burst of buffers runs the stock out: each map after that
 * waits for the device instead, and succeeds. Once there is room again,
 * the stock fills again.
 */
static enum tap_result test_exhausted_stock(void)
{
	static struct ca_buf bufs[EXTRA + 2 * 128];
	struct ca_buf fill = { .fd = -1 };
	long long taken0, missed0, taken, missed, have, leased, donated, max;
	unsigned int made = 0, want, i;
	int ca, ct, ret, index;
	struct ca_pool pool;
	uint64_t size;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_DMA32);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&pool, CENALLOC_KIND_DMA32);
	if (pool_may_grow(index, &donated, &max)) {
		r = tap_skip("pool %d may grow (%lld of at most %lld bytes): no shortage to exhaust the stock",
			     index, donated, max);
		goto out;
	}
	if (!warm(ca, ct, index))
		goto out;
	usleep(200000);		/* no refill on the way */
	have = stock(index, 4);
	if (!CHECK(have > 0 && have <= 2 * 128, "stock %lld", have) ||
	    !CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	/* Fill the allocator to 6 % free: no lease beyond the stock. */
	leased = have * 4 * CA_KIB + stock(index, 64) * 64 * CA_KIB;
	size = pool.alloc[index].free - leased -
	       pool.alloc[index].capacity / 16;
	ret = ca_buf_alloc(ca, ct, size, DEV, &fill);
	if (!CHECK(ret == 0, "filler of %llu: %s", (unsigned long long)size,
		   strerror(-ret)))
		goto out;
	taken0 = lease_value("lease_taken");
	missed0 = lease_value("lease_missed");
	want = have + EXTRA;
	for (made = 0; made < want; made++) {
		ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &bufs[made]);
		if (!CHECK(ret == 0, "buffer %u: %s", made, strerror(-ret)))
			break;
	}
	taken = lease_value("lease_taken") - taken0;
	missed = lease_value("lease_missed") - missed0;
	tap_diag("%u buffers, a stock of %lld and no room to lease more: %lld leased, %lld not",
		 made, have, taken, missed);
	CHECK(taken == have && missed == EXTRA,
	      "%lld leased, %lld not, of %u", taken, missed, made);
	/* Room again: the next small map refills the stock. */
	ca_buf_free(ct, &fill);
	ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &fill);
	if (CHECK(ret == 0, "4 KiB: %s", strerror(-ret)))
		CHECK(stock_reaches(index, 1), "stock %lld 5 s after the burst",
		      stock(index, 4));
out:
	for (i = 0; i < made; i++)
		ca_buf_free(ct, &bufs[i]);
	ca_env_close(&ca, &ct, &fill);
	return r;
}

static enum tap_result test_the_device_takes_the_stock_back(void)
{
	struct ca_buf fill = { .fd = -1 }, b = { .fd = -1 };
	long long returned0, revokes0, leased_bytes, donated, max;
	struct ca_pool before, after;
	int ca, ct, ret, index;
	uint64_t free_bytes, size;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&before, CENALLOC_KIND_SYSTEM);
	if (pool_may_grow(index, &donated, &max)) {
		r = tap_skip("pool %d may grow (%lld of at most %lld bytes): filling it makes no shortage",
			     index, donated, max);
		goto out;
	}
	if (!warm(ca, ct, index) ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	/* Both sizes in stock, and settled (no refill on the way). */
	ret = ca_buf_alloc(ca, ct, 64 * CA_KIB, DEV, &b);
	if (!CHECK(ret == 0, "64 KiB: %s", strerror(-ret)))
		goto out;
	ca_buf_free(ct, &b);
	if (!CHECK(stock_reaches_kib(index, 64, 4) && stock_reaches(index, 4),
		   "stock %lld + %lld after 5 s", stock(index, 4),
		   stock(index, 64)))
		goto out;
	usleep(200000);
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	leased_bytes = stock(index, 4) * 4 * CA_KIB +
		       stock(index, 64) * 64 * CA_KIB;
	free_bytes = before.alloc[index].free;	/* free extents + stock */
	/* Fill the system allocator but 8 KiB of free extents: the rest of
	 * its room is our stock. A 128 KiB buffer (too big for a lease) then
	 * fits only if the stock comes back.
	 */
	if (!CHECK(leased_bytes >= (long long)(256 * CA_KIB),
		   "only %lld bytes leased", leased_bytes))
		goto out;
	size = free_bytes - leased_bytes - 8 * CA_KIB;
	ret = ca_buf_alloc(ca, ct, size, DEV, &fill);
	if (!CHECK(ret == 0, "filler of %llu: %s", (unsigned long long)size,
		   strerror(-ret)))
		goto out;
	returned0 = lease_value("lease_returned");
	revokes0 = lease_value("events_lease_revoke");
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	ret = ca_buf_alloc(ca, ct, 128 * CA_KIB, DEV, &b);
	if (!CHECK(ret == 0, "128 KiB: %s", strerror(-ret)))
		goto out;
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_allocator_used(&before, &after) == index,
		      "the buffer left allocator %d", index);
	CHECK(lease_value("lease_returned") > returned0,
	      "no leased extent came back");
	tap_diag("returned %lld extents, %lld revoke events",
		 lease_value("lease_returned") - returned0,
		 lease_value("events_lease_revoke") - revokes0);
out:
	ca_buf_free(ct, &b);
	ca_env_close(&ca, &ct, &fill);
	return r;
}

/*
 * A contiguous allocator whose room is almost all needed by one buffer,
 * with refills on their way all the time: a second thread maps and frees
 * 4 KiB buffers, so the stock keeps running low and LEASEs keep taking
 * extents at the start of the free room while the big buffer is not
 * there, racing with the big maps that need all of it. A big map must
 * get the room back, never fail -EAGAIN; neither may a small one. (The
 * driver gave the stock back a fixed number of times; a LEASE answered
 * but not yet taken into the stock, or the next refill, used them all
 * up: test_phys once failed so, "alloc 3153920: Resource temporarily
 * unavailable".) A small map may find no room (-ENOMEM) while the big
 * buffer holds it: the pool cannot grow.
 */
#define REFILL_ROUNDS	100

struct taker {
	int ca, ct;
	atomic_bool stop;
	unsigned int maps, again, nomem, other;
	int first_error;
};

static void *taker_thread(void *arg)
{
	struct taker *t = arg;
	struct ca_buf small;
	int ret;

	while (!atomic_load(&t->stop)) {
		ret = ca_buf_alloc(t->ca, t->ct, 4 * CA_KIB, DEV, &small);
		t->maps++;
		if (!ret) {
			ca_buf_free(t->ct, &small);
			continue;
		}
		if (ret == -EAGAIN)
			t->again++;
		else if (ret == -ENOMEM)
			t->nomem++;
		else
			t->other++;
		if (ret != -ENOMEM && !t->first_error)
			t->first_error = ret;
	}
	return NULL;
}

#define MAX_FILLERS	64

/*
 * Fills every free extent of allocator @index with a buffer (the largest
 * first: fillers[0] takes the largest extent), so that freeing fillers[0]
 * leaves one extent of free room. Returns the fillers made, 0 on failure.
 */
static unsigned int fill_extents(int ca, int ct, int index,
				 struct ca_buf *fillers)
{
	unsigned int n = 0, tries = 0;
	struct ca_pool pool;
	uint64_t largest;
	int ret;

	while (n < MAX_FILLERS && tries < 2 * MAX_FILLERS) {
		tries++;
		if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
			break;
		largest = pool.alloc[index].largest_free;
		if (largest < CA_PAGE_SIZE)
			return n;
		ret = ca_buf_alloc(ca, ct, largest, DEV, &fillers[n]);
		if (!ret)
			n++;
	}
	CHECK(false, "allocator %d not full after %u buffers", index, n);
	while (n)
		ca_buf_free(ct, &fillers[--n]);
	return 0;
}

static enum tap_result test_the_room_comes_back_past_refills(void)
{
	static struct ca_buf fillers[MAX_FILLERS];
	struct ca_buf b = { .fd = -1 };
	struct taker t = { .first_error = 0 };
	long long donated, max, returned0;
	unsigned int round, again = 0, other = 0, nfill = 0, i;
	int ca, ct, ret, index, first = 0;
	bool started = false;
	struct ca_pool pool;
	pthread_t thread;
	uint64_t size;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_CONTIG);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&pool, CENALLOC_KIND_CONTIG);
	if (!CHECK(index >= 0, "no CONTIG allocator"))
		goto out;
	if (!CHECK(ca_allocator_contiguous(&pool.alloc[index]),
		   "allocator %d is not contiguous", index))
		goto out;
	if (pool_may_grow(index, &donated, &max)) {
		r = tap_skip("pool %d may grow (%lld of at most %lld bytes): no shortage to make",
			     index, donated, max);
		goto out;
	}
	/* One free extent: what the stock and the big buffers share. */
	nfill = fill_extents(ca, ct, index, fillers);
	if (!nfill)
		goto out;
	size = fillers[0].size;
	ca_buf_free(ct, &fillers[0]);
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	tap_diag("allocator %d: %u fillers, %llu bytes free (largest %llu); big buffers of %llu",
		 index, nfill, (unsigned long long)pool.alloc[index].free,
		 (unsigned long long)pool.alloc[index].largest_free,
		 (unsigned long long)(size - 64 * CA_KIB));
	/* All of that extent but 64 KiB. */
	size -= 64 * CA_KIB;
	returned0 = lease_value("lease_returned");
	t.ca = ca;
	t.ct = ct;
	atomic_init(&t.stop, false);
	ret = pthread_create(&thread, NULL, taker_thread, &t);
	if (!CHECK(ret == 0, "pthread_create: %s", strerror(ret)))
		goto out;
	started = true;
	for (round = 0; round < REFILL_ROUNDS; round++) {
		ret = ca_buf_alloc(ca, ct, size, DEV, &b);
		if (!ret) {
			ca_buf_free(ct, &b);
			continue;
		}
		if (ret == -EAGAIN)
			again++;
		else
			other++;
		if (!first)
			first = ret;
	}
	atomic_store(&t.stop, true);
	pthread_join(thread, NULL);
	started = false;
	tap_diag("%u big maps: %u refused EAGAIN, %u another error (first: %s); %u small maps: %u EAGAIN, %u ENOMEM, %u other; %lld extents returned",
		 round, again, other, first ? strerror(-first) : "none",
		 t.maps, t.again, t.nomem, t.other,
		 lease_value("lease_returned") - returned0);
	CHECK(again == 0 && other == 0,
	      "%u of %u maps needing the leased room failed: %s",
	      again + other, round, strerror(-first));
	CHECK(t.again == 0 && t.other == 0,
	      "%u of %u small maps failed: %s", t.again + t.other, t.maps,
	      strerror(-t.first_error));
out:
	if (started) {
		atomic_store(&t.stop, true);
		pthread_join(thread, NULL);
	}
	for (i = 1; i < nfill; i++)
		ca_buf_free(ct, &fillers[i]);
	ca_buf_free(ct, &b);
	ca_env_close(&ca, &ct, NULL);
	return r;
}

static enum tap_result test_leases_follow_the_allocator_rule(void)
{
	static const uint32_t masks[] = {
		CENALLOC_KIND_SYSTEM, CENALLOC_KIND_DMA32, CENALLOC_KIND_CONTIG,
		CENALLOC_KIND_CONTIG_DMA32,
		CENALLOC_KIND_DMA32 | CENALLOC_KIND_CONTIG_DMA32,
	};
	struct ca_pool before, after;
	struct ca_buf b = { .fd = -1 };
	long long taken0;
	char text[64];
	unsigned int i;
	int ca, ct, ret, expected;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	for (i = 0; i < TAP_ARRAY_SIZE(masks); i++) {
		if (!CHECK(ct_set_device1(ct, DEV, masks[i], 0) == 0, "SET_DEVICE") ||
		    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
			break;
		/* The first allocator serving a kind of the mask, room aside. */
		for (expected = 0; expected < (int)before.count; expected++)
			if (before.alloc[expected].kinds & masks[i])
				break;
		if (!warm(ca, ct, expected) ||
		    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
			break;
		taken0 = lease_value("lease_taken");
		ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &b);
		if (!CHECK(ret == 0, "%s: %s", ca_mask_str(masks[i], text, sizeof(text)),
			   strerror(-ret)))
			break;
		CHECK(lease_value("lease_taken") == taken0 + 1,
		      "%s: not from the stock", text);
		if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
			CHECK(ca_pool_allocator_used(&before, &after) == expected,
			      "%s: allocator %d, the rules pick %d", text,
			      ca_pool_allocator_used(&before, &after), expected);
		ca_buf_free(ct, &b);
	}
	ca_env_close(&ca, &ct, &b);
	return TAP_PASS;
}

static bool set_fault(const char *spec)
{
	char reply[256] = "";
	int ret = ca_host_request(reply, sizeof(reply), 20, "fault %s", spec);

	return CHECK(ret == 0, "fault %s: %d (%s)", spec, ret, reply);
}

/*
 * A hostile LEASE answer (its first extent at guest-physical 0, outside
 * every pool) is refused: counted (lease_bad_answers, answers_rejected),
 * nothing of it enters the stock, and every buffer keeps mapping its own
 * memory (maps take the round trip meanwhile).
 */
static enum tap_result test_a_lease_outside_the_pool_is_refused(void)
{
	static struct ca_buf bufs[NBUF];
	long long bad0, rejected0;
	struct ca_pool before;
	char reply[256] = "";
	unsigned int made = 0, i;
	int ca, ct, ret, index;
	enum tap_result r;
	uint8_t *mem;

	if (!ca_host_available())
		return tap_skip("no host request channel (not started by run-vm)");
	if (ca_host_request(reply, sizeof(reply), 20, "fault none"))
		return tap_skip("no fault injection: %s", reply);
	r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);
	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&before, CENALLOC_KIND_SYSTEM);
	if (!warm(ca, ct, index))
		goto out;
	bad0 = lease_value("lease_bad_answers");
	rejected0 = ca_transport_value("answers_rejected");
	if (!set_fault("lease-outside-pool"))
		goto out;
	/* More buffers than the stock holds: its refills get the lie. */
	for (made = 0; made < NBUF; made++) {
		ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &bufs[made]);
		if (!CHECK(ret == 0, "buffer %u: %s", made, strerror(-ret)))
			break;
		mem = ca_mmap(bufs[made].fd, 4 * CA_KIB);
		if (!CHECK(mem, "mmap %u: %s", made, strerror(errno)))
			break;
		ca_pattern_fill(mem, 4 * CA_KIB, made + 1);
		munmap(mem, 4 * CA_KIB);
	}
	for (i = 0; i < 500 && lease_value("lease_bad_answers") == bad0; i++)
		usleep(10000);
	CHECK(lease_value("lease_bad_answers") > bad0,
	      "no LEASE answer refused (lease_bad_answers %lld)",
	      lease_value("lease_bad_answers"));
	CHECK(ca_transport_value("answers_rejected") > rejected0,
	      "answers_rejected %lld, was %lld",
	      ca_transport_value("answers_rejected"), rejected0);
	/* Each buffer still holds what was written into it. */
	for (i = 0; i < made; i++) {
		mem = ca_mmap(bufs[i].fd, 4 * CA_KIB);
		if (!CHECK(mem, "mmap %u again: %s", i, strerror(errno)))
			break;
		CHECK(ca_pattern_check(mem, 4 * CA_KIB, i + 1) == 4 * CA_KIB,
		      "buffer %u lost its data", i);
		munmap(mem, 4 * CA_KIB);
	}
	set_fault("none");
	/* Honest again: the stock fills. */
	CHECK(stock_reaches(index, 1) || warm(ca, ct, index),
	      "no stock after the lie");
	/*
	 * What the driver refused or had no room for went back (F18), all
	 * but the first extent of each lying answer: the lie hid its address.
	 */
	leases_agree(lease_value("lease_bad_answers") - bad0);
out:
	ca_host_request(reply, sizeof(reply), 20, "fault none");
	for (i = 0; i < made; i++)
		ca_buf_free(ct, &bufs[i]);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

#define BUFFERS_PATH		"/sys/kernel/debug/cenalloc/buffers"
#define NEXT_ID_PATH		"/sys/kernel/debug/cenalloc/lease_next_id"
#define ID_LAST			0x7fffffffu	/* driver-chosen ids end here */

/* Live buffers with @id in debugfs buffers, -1 if unreadable. */
static int buffers_with_id(uint32_t id)
{
	FILE *f = fopen(BUFFERS_PATH, "re");
	char line[256];
	unsigned long long first;
	int n = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%llu", &first) == 1 && first == id)
			n++;
	fclose(f);
	return n;
}

static bool set_next_id(uint32_t id)
{
	char text[32];
	int fd = open(NEXT_ID_PATH, O_WRONLY | O_CLOEXEC);
	bool ok;

	if (!CHECK(fd >= 0, "%s: %s", NEXT_ID_PATH, strerror(errno)))
		return false;
	snprintf(text, sizeof(text), "%u\n", id);
	ok = CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text),
		   "write %u to %s: %s", id, NEXT_ID_PATH, strerror(errno));
	close(fd);
	return ok;
}

/* A 4 KiB buffer mapped from the stock (checked: lease_taken grows). */
static bool leased_buffer(int ca, int ct, int index, struct ca_buf *b)
{
	long long taken = lease_value("lease_taken");
	int ret;

	if (!CHECK(stock_reaches(index, 1), "no stock after 5 s"))
		return false;
	ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, b);
	if (!CHECK(ret == 0, "4 KiB: %s", strerror(-ret)))
		return false;
	return CHECK(lease_value("lease_taken") == taken + 1,
		     "the map did not come from the stock");
}

/*
 * The driver chooses the ids of a leased map itself, from a range that
 * ends at 2^31 - 1 and starts again at 2^30. An id still live (a buffer,
 * or an attachment) must never be chosen again: the device would refuse
 * that LEASED_MAP, and FILL, CHECKSUM and FREE of the new buffer would
 * reach the old one. The test hook lease_next_id (debugfs, root) makes
 * the next leased map try buffer V's id first, and then the end of the
 * range.
 */
static enum tap_result test_leased_ids_never_collide(void)
{
	const uint32_t v_id = ID_LAST - 1;
	struct ca_buf v = { .fd = -1 }, w = { .fd = -1 }, more[4];
	long long errors0;
	uint64_t v0, sum, len, w_sum;
	uint8_t pattern[4096];
	unsigned int i, made = 0;
	int ca, ct, index;
	struct ca_pool pool;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	for (i = 0; i < TAP_ARRAY_SIZE(more); i++)
		more[i].fd = -1;
	errors0 = ca_transport_value("posted_errors");
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&pool, CENALLOC_KIND_SYSTEM);
	if (!warm(ca, ct, index))
		goto out;
	/* V: the buffer id 2^31 - 2, its attachment 2^31 - 1. */
	if (!set_next_id(v_id) || !leased_buffer(ca, ct, index, &v))
		goto out;
	if (!CHECK(buffers_with_id(v_id) == 1, "no buffer with id %#x", v_id) ||
	    !CHECK(ca_fill(ca, v.fd, 1) == 0, "FILL V") ||
	    !CHECK(ca_checksum(ca, v.fd, &v0, &len) == 0, "CHECKSUM V"))
		goto out;
	/* W: the next leased map tries V's id first. */
	if (!set_next_id(v_id) || !leased_buffer(ca, ct, index, &w))
		goto out;
	CHECK(buffers_with_id(v_id) == 1, "%d live buffers with id %#x",
	      buffers_with_id(v_id), v_id);
	CHECK(ca_fill(ca, w.fd, 2) == 0, "FILL W");
	CHECK(ca_checksum(ca, v.fd, &sum, &len) == 0 && sum == v0,
	      "V's content changed by FILL of W (%#llx, was %#llx)",
	      (unsigned long long)sum, (unsigned long long)v0);
	ca_pattern_fill(pattern, sizeof(pattern), 2);
	w_sum = ca_fnv1a64(pattern, sizeof(pattern));
	CHECK(ca_checksum(ca, w.fd, &sum, &len) == 0 && sum == w_sum,
	      "W's checksum %#llx, its pattern's %#llx",
	      (unsigned long long)sum, (unsigned long long)w_sum);
	/* More leased maps across the end of the range: all distinct. */
	for (made = 0; made < TAP_ARRAY_SIZE(more); made++)
		if (!leased_buffer(ca, ct, index, &more[made]))
			break;
	CHECK(ca_pool_read(ca, &pool) == 0, "INFO");	/* behind the posts */
	CHECK(ca_transport_value("posted_errors") == errors0,
	      "the device refused %lld posted commands",
	      ca_transport_value("posted_errors") - errors0);
	CHECK(ca_checksum(ca, v.fd, &sum, &len) == 0 && sum == v0,
	      "V's content changed after the wrap");
out:
	for (i = 0; i < made; i++)
		ca_buf_free(ct, &more[i]);
	ca_buf_free(ct, &w);
	ca_env_close(&ca, &ct, &v);
	return TAP_PASS;
}

#define CYCLES			12
#define BURST			8

/*
 * @cycles leased cycles of @kib KiB buffers (create, attach, first map,
 * unmap, detach, close): one chain each, the LEASED_MAP waiting in the
 * driver and leaving with the UNMAP, DETACH and FREE at close. The stock
 * is filled beforehand so that no map misses it; the chains of a refill
 * still under way (LEASE, waited for: debugfs round_trips) are not the
 * cycles', though one that goes on the ring mid-cycle takes that cycle's
 * LEASED_MAP with it (a chain or two more). hold_ms is at its largest
 * (1 s) meanwhile, so that a slow kernel's cycle (debug) keeps it too.
 */
static void leased_cycles(int ca, int ct, int index, int kib,
			  unsigned int cycles)
{
	long long taken0, taken, chains, waited0, waited;
	unsigned int i;
	struct ca_buf b;
	int ret;

	/* A stock fills the first time a map wants it. */
	ret = ca_buf_alloc(ca, ct, kib * CA_KIB, DEV, &b);
	if (!CHECK(ret == 0, "%d KiB: %s", kib, strerror(-ret)))
		return;
	ca_buf_free(ct, &b);
	if (!CHECK(stock_reaches_kib(index, kib, 2 * cycles),
		   "allocator %d: stock of %d KiB %lld", index, kib,
		   stock(index, kib)))
		return;
	taken0 = lease_value("lease_taken");
	if (!CHECK(ca_transport_reset(), "reset %s", CA_TRANSPORT_PATH))
		return;
	waited0 = ca_transport_value("round_trips");
	for (i = 0; i < cycles; i++) {
		ret = ca_buf_alloc(ca, ct, kib * CA_KIB, DEV, &b);
		if (!CHECK(ret == 0, "cycle %u: %s", i, strerror(-ret)))
			return;
		ca_buf_free(ct, &b);
	}
	/* Read before anything else sends a chain. */
	chains = ca_transport_value("chains_sent");
	waited = ca_transport_value("round_trips") - waited0;
	taken = lease_value("lease_taken") - taken0;
	tap_diag("%u leased %d KiB cycles: %lld chains (%lld of them waited for), %lld maps from the stock",
		 cycles, kib, chains, waited, taken);
	CHECK(taken == cycles, "%lld of %u first maps from the stock", taken,
	      cycles);
	/*
	 * One chain per cycle at least: its close, or a refill (waited for)
	 * that left at its close and took its records along (seen with every
	 * DMA bounced: 8 chains, 1 waited for, in 8 cycles). Of the chains
	 * nobody waited for, at most a quarter more than the cycles.
	 */
	CHECK(chains >= cycles,
	      "%lld chains in %u leased %d KiB cycles (one each at least)",
	      chains, cycles, kib);
	chains -= waited;
	CHECK(chains <= cycles + cycles / 4,
	      "%lld chains nobody waited for in %u leased %d KiB cycles (one each expected)",
	      chains, cycles, kib);
}

static enum tap_result test_a_leased_cycle_is_one_chain(void)
{
	char saved[32] = "";
	struct ca_pool pool;
	int ca, ct, index;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&pool, CENALLOC_KIND_SYSTEM);
	if (!warm(ca, ct, index) ||
	    !CHECK(ca_param_read("hold_ms", saved, sizeof(saved)) == 0,
		   "read hold_ms") ||
	    !CHECK(ca_param_write("hold_ms", "1000") == 0, "write hold_ms"))
		goto out;
	leased_cycles(ca, ct, index, 4, CYCLES);
	leased_cycles(ca, ct, index, 64, 2 * CYCLES / 3);
	CHECK(ca_param_write("hold_ms", saved) == 0, "restore hold_ms=%s", saved);
out:
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

static long long target_4k(int allocator)
{
	char name[32];

	snprintf(name, sizeof(name), "target%d_4k", allocator);
	return lease_value(name);
}

/* @n 4 KiB cycles back to back; false (checked) when one fails. */
static bool cycles_4k(int ca, int ct, unsigned int n)
{
	struct ca_buf b;
	unsigned int i;
	int ret;

	for (i = 0; i < n; i++) {
		ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &b);
		if (!CHECK(ret == 0, "cycle %u: %s", i, strerror(-ret)))
			return false;
		ca_buf_free(ct, &b);
	}
	return true;
}

/*
 * The stock follows the rate of first maps: when half of it lasts more
 * than a second it halves, down to lease_stock; when half of it goes
 * within lease_fast_ms of its refill it doubles, before it runs dry, so
 * that a stream of first maps never waits for the device and each refill
 * brings more at once.
 */
static enum tap_result test_the_stock_follows_the_rate(void)
{
	long long base, target, have, missed0, missed, taken0, taken;
	long long deeper0, deeper, shallower0;
	char param[32] = "", fast[32] = "";
	bool ok;
	struct ca_pool pool;
	unsigned int round;
	int ca, ct, index;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO") ||
	    !CHECK(ca_param_read("lease_stock", param, sizeof(param)) == 0,
		   "read lease_stock"))
		goto out;
	index = ca_pool_find_kind(&pool, CENALLOC_KIND_SYSTEM);
	base = atoll(param);
	if (base > 128)
		base = 128;
	if (!CHECK(base >= 4, "lease_stock %lld", base) ||
	    !warm(ca, ct, index))
		goto out;
	shallower0 = lease_value("lease_shallower");
	/*
	 * Slow: each round lets the stock rest, then takes it down to half
	 * its target and one more (at or below half, a refill is on its way:
	 * it is waited for).
	 */
	for (round = 0; round < 5; round++) {
		target = target_4k(index);
		have = stock(index, 4);
		tap_diag("slow round %u: target %lld, stock %lld", round,
			 target, have);
		if (target <= base)
			break;
		if (have <= target / 2) {
			if (!CHECK(stock_reaches(index, target),
				   "allocator %d: stock %lld of %lld", index,
				   stock(index, 4), target))
				goto out;
			have = stock(index, 4);
		}
		usleep(1200 * 1000);
		if (!cycles_4k(ca, ct, have - target / 2 + 1))
			goto out;
	}
	target = target_4k(index);
	if (!CHECK(target == base,
		   "a stock that lasts: target %lld, lease_stock %lld",
		   target, base) ||
	    !CHECK(lease_value("lease_shallower") >= shallower0 + round,
		   "%u slow rounds, %lld times shallower", round,
		   lease_value("lease_shallower") - shallower0))
		goto out;
	/*
	 * A fresh stock for the fast phase: down to half (a refill comes),
	 * then full again, so that its first half-way point is measured from
	 * that refill and not from the slow rounds.
	 */
	have = stock(index, 4);
	if ((have > base / 2 && !cycles_4k(ca, ct, have - base / 2)) ||
	    !CHECK(stock_reaches(index, base), "allocator %d: stock %lld of %lld",
		   index, stock(index, 4), base))
		goto out;
	/*
	 * Fast: four stocks' worth of first maps back to back, with "fast"
	 * at 500 ms (half a stock of cycles of the debug kernel take over
	 * the default 50). A miss would deepen the stock too (a refill
	 * slower than half a stock of cycles: a loaded machine), so the
	 * deepening ahead of need is counted on its own (lease_deeper).
	 */
	missed0 = lease_value("lease_missed");
	taken0 = lease_value("lease_taken");
	deeper0 = lease_value("lease_deeper");
	if (!CHECK(ca_param_read("lease_fast_ms", fast, sizeof(fast)) == 0,
		   "read lease_fast_ms") ||
	    !CHECK(ca_param_write("lease_fast_ms", "500") == 0,
		   "write lease_fast_ms"))
		goto out;
	ok = cycles_4k(ca, ct, 4 * base);
	CHECK(ca_param_write("lease_fast_ms", fast) == 0,
	      "restore lease_fast_ms=%s", fast);
	if (!ok)
		goto out;
	target = target_4k(index);
	missed = lease_value("lease_missed") - missed0;
	taken = lease_value("lease_taken") - taken0;
	deeper = lease_value("lease_deeper") - deeper0;
	tap_diag("%lld cycles back to back: target %lld -> %lld, deeper ahead of need %lld times; %lld from the stock, %lld missed it",
		 4 * base, base, target, deeper, taken, missed);
	CHECK(target > base, "a stock used fast stays at %lld", target);
	CHECK(deeper > 0, "the stock deepened only after misses (%lld)",
	      missed);
out:
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * The stock refills from a work item that nobody waits for: its LEASE
 * sleeps until the answer's interrupt instead of polling for it (a poller
 * keeps a CPU busy that the cycles it feeds could use). Leased cycles send
 * nothing that waits, so every round trip meanwhile is a refill's (or a
 * map's that found the stock empty), and the transport counts no poll for
 * the refills. Only the transport's counters are read until
 * then: debugfs allocators asks the device (GET_INFO, a round trip).
 */
static enum tap_result test_refills_do_not_poll(void)
{
	long long trips0, trips, polls, taken0, taken, missed, leased0, leased;
	long long requests0;
	unsigned int i, cycles = 0;
	char saved[32] = "";
	struct ca_pool pool;
	struct ca_buf b;
	int ca, ct, index, ret;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&pool, CENALLOC_KIND_SYSTEM);
	if (!warm(ca, ct, index) ||
	    !CHECK(ca_param_read("poll_us", saved, sizeof(saved)) == 0,
		   "read poll_us") ||
	    !CHECK(ca_param_write("poll_us", "200") == 0, "write poll_us"))
		goto out;
	taken0 = lease_value("lease_taken");
	leased0 = lease_value("lease_extents");
	requests0 = lease_value("lease_requests");
	if (!CHECK(ca_transport_reset(), "reset %s", CA_TRANSPORT_PATH))
		goto restore;
	/* round_trips counts on across a reset; polls starts at 0. */
	trips0 = ca_transport_value("round_trips");
	/* Four times the stock's default depth: it refills several times. */
	for (i = 0; i < 4 * 32; i++, cycles++) {
		ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &b);
		if (!CHECK(ret == 0, "cycle %u: %s", i, strerror(-ret)))
			break;
		ca_buf_free(ct, &b);
	}
	/* The last refill's answer, if one is still on its way. */
	usleep(200 * 1000);
	trips = ca_transport_value("round_trips") - trips0;
	polls = ca_transport_value("polls");
	taken = lease_value("lease_taken") - taken0;
	leased = lease_value("lease_extents") - leased0;
	tap_diag("%u leased 4 KiB cycles: %lld maps from the stock, %lld round trips, %lld polls; %lld extents in %lld LEASEs",
		 cycles, taken, trips, polls, leased,
		 lease_value("lease_requests") - requests0);
	/* A map the stock missed waits for the device, and may poll. */
	missed = cycles - taken;
	CHECK(trips > missed,
	      "no refill in %u cycles (%lld round trips, %lld of them maps)",
	      cycles, trips, missed);
	CHECK(polls <= missed,
	      "%lld polls for %lld round trips, %lld of them refills nobody waited for",
	      polls, trips, trips - missed);
restore:
	CHECK(ca_param_write("poll_us", saved) == 0, "restore poll_us=%s",
	      saved);
out:
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * Leased buffers alive together and then released (a burst) cost one chain
 * each, as a lone cycle does: a buffer's close sends its own held
 * LEASED_MAP with its teardown and leaves the others' held, for their own
 * closes. hold_ms is at its largest (1 s) meanwhile, and the stock full,
 * so that no refill (a chain that sends every held one) comes.
 */
static enum tap_result test_a_burst_costs_one_chain_a_buffer(void)
{
	static struct ca_buf bufs[BURST];
	long long taken0, taken, chains, waited0, waited, target, have;
	unsigned int made = 0, i;
	char saved[32] = "";
	struct ca_pool pool;
	int ca, ct, index, ret;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &pool) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&pool, CENALLOC_KIND_SYSTEM);
	/*
	 * A stock that BURST takes leave above half (of a target of at least
	 * 4 * BURST): no refill comes meanwhile.
	 */
	if (!warm(ca, ct, index))
		goto out;
	target = target_4k(index);
	have = stock(index, 4);
	if (!CHECK(target >= 4 * BURST, "allocator %d: target %lld", index,
		   target))
		goto out;
	/* Too close to half: down to half (a refill), then full. */
	if (have - BURST <= target / 2 &&
	    ((have > target / 2 && !cycles_4k(ca, ct, have - target / 2)) ||
	     !CHECK(stock_reaches(index, target),
		    "allocator %d: stock %lld of %lld", index, stock(index, 4),
		    target)))
		goto out;
	if (!CHECK(ca_param_read("hold_ms", saved, sizeof(saved)) == 0,
		   "read hold_ms") ||
	    !CHECK(ca_param_write("hold_ms", "1000") == 0, "write hold_ms"))
		goto out;
	taken0 = lease_value("lease_taken");
	if (!CHECK(ca_transport_reset(), "reset %s", CA_TRANSPORT_PATH))
		goto restore;
	waited0 = ca_transport_value("round_trips");
	for (made = 0; made < BURST; made++) {
		ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &bufs[made]);
		if (!CHECK(ret == 0, "buffer %u: %s", made, strerror(-ret)))
			break;
	}
	for (i = 0; i < made; i++)
		ca_buf_free(ct, &bufs[i]);
	/* Read before anything else sends a chain. */
	chains = ca_transport_value("chains_sent");
	waited = ca_transport_value("round_trips") - waited0;
	made = 0;
	taken = lease_value("lease_taken") - taken0;
	tap_diag("%d leased 4 KiB buffers alive together, then released: %lld chains (%lld of them waited for), %lld maps from the stock",
		 BURST, chains, waited, taken);
	CHECK(taken == BURST, "%lld of %d first maps from the stock", taken,
	      BURST);
	CHECK(waited == 0, "%lld round trips in the burst", waited);
	CHECK(chains <= BURST + BURST / 4,
	      "%lld chains for %d buffers released together (one each expected)",
	      chains, BURST);
restore:
	CHECK(ca_param_write("hold_ms", saved) == 0, "restore hold_ms=%s",
	      saved);
out:
	for (i = 0; i < made; i++)
		ca_buf_free(ct, &bufs[i]);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * Whatever reports on the device right after a leased first map sees that
 * map: the INFO ioctl (GET_INFO), debugfs allocators (GET_INFO), PHYS and
 * CHECKSUM of the buffer. Each observer runs first after its own map.
 */
static enum tap_result test_observers_see_a_leased_map(void)
{
	struct ca_buf b[4] = { { .fd = -1 }, { .fd = -1 }, { .fd = -1 },
			       { .fd = -1 } };
	long long taken0, in_use0, in_use1;
	struct ca_pool before, after;
	uint64_t addr, len, sum;
	unsigned int i;
	int ca, ct, ret, index;
	enum tap_result r = setup(&ca, &ct, CENALLOC_KIND_SYSTEM);

	if (r != TAP_PASS)
		return r;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	index = ca_pool_find_kind(&before, CENALLOC_KIND_SYSTEM);
	if (!warm(ca, ct, index) ||
	    !CHECK(stock_reaches(index, 8), "allocator %d: stock %lld", index,
		   stock(index, 4)))
		goto out;
	taken0 = lease_value("lease_taken");

	/* The INFO ioctl. */
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &b[0]);
	if (!CHECK(ret == 0, "4 KiB: %s", strerror(-ret)) ||
	    !CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		goto out;
	CHECK(ca_pool_allocator_used(&before, &after) == index,
	      "INFO right after the map: the buffer is not in allocator %d",
	      index);
	CHECK(after.alloc[index].num_buffers ==
	      before.alloc[index].num_buffers + 1,
	      "INFO right after the map: %u buffers, %u before",
	      after.alloc[index].num_buffers,
	      before.alloc[index].num_buffers);

	/* debugfs allocators. */
	in_use0 = ca_pool_value(index, "in_use");
	ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &b[1]);
	if (!CHECK(ret == 0, "4 KiB: %s", strerror(-ret)))
		goto out;
	in_use1 = ca_pool_value(index, "in_use");
	CHECK(in_use0 >= 0 && in_use1 - in_use0 == 4 * CA_KIB,
	      "debugfs right after the map: pool%d_in_use %lld -> %lld",
	      index, in_use0, in_use1);

	/* PHYS of the buffer. */
	ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &b[2]);
	if (!CHECK(ret == 0, "4 KiB: %s", strerror(-ret)))
		goto out;
	ret = ca_phys(ca, b[2].fd, &addr, &len);
	if (CHECK(ret == 0, "PHYS right after the map: %s", strerror(-ret)))
		CHECK(len == 4 * CA_KIB && addr % CA_PAGE_SIZE == 0,
		      "PHYS %#llx+%#llx", (unsigned long long)addr,
		      (unsigned long long)len);

	/* CHECKSUM of the buffer: a leased extent is zeroed. */
	ret = ca_buf_alloc(ca, ct, 4 * CA_KIB, DEV, &b[3]);
	if (!CHECK(ret == 0, "4 KiB: %s", strerror(-ret)))
		goto out;
	ret = ca_checksum(ca, b[3].fd, &sum, &len);
	CHECK(ret == 0 && len == 4 * CA_KIB,
	      "CHECKSUM right after the map: %s, %llu bytes", strerror(-ret),
	      (unsigned long long)len);

	CHECK(lease_value("lease_taken") - taken0 == 4,
	      "%lld of 4 first maps from the stock",
	      lease_value("lease_taken") - taken0);
out:
	for (i = 0; i < 4; i++)
		ca_buf_free(ct, &b[i]);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("a leased 4 KiB cycle costs one chain",
		 test_a_leased_cycle_is_one_chain),
	TAP_TEST("the stock follows the rate of first maps, both ways",
		 test_the_stock_follows_the_rate),
	TAP_TEST("the stock refills without polling for the answer",
		 test_refills_do_not_poll),
	TAP_TEST("leased buffers released together cost one chain each",
		 test_a_burst_costs_one_chain_a_buffer),
	TAP_TEST("observers right after a leased first map see it",
		 test_observers_see_a_leased_map),
	TAP_TEST("a leased first map is zeroed and counted",
		 test_leased_maps_are_zeroed_and_counted),
	TAP_TEST("a burst through the stock: every map succeeds, where the rules say",
		 test_stock_runs_out_and_refills),
	TAP_TEST("an exhausted stock: maps wait for the device, the stock refills",
		 test_exhausted_stock),
	TAP_TEST("a map that needs the leased room gets it back",
		 test_the_device_takes_the_stock_back),
	TAP_TEST("a refill racing a map that needs the leased room: the map gets it",
		 test_the_room_comes_back_past_refills),
	TAP_TEST("leased maps land where the allocator rule says",
		 test_leases_follow_the_allocator_rule),
	TAP_TEST("a LEASE answer outside the pool is refused",
		 test_a_lease_outside_the_pool_is_refused),
	TAP_TEST("leased-map ids never collide with live ones, also past the wrap",
		 test_leased_ids_never_collide),
};

TAP_MAIN(tests)
