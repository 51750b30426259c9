// SPDX-License-Identifier: GPL-2.0
/*
 * Races between the driver's long operations and the events that cut
 * across them:
 *  - the virtio device is unbound (removed) while threads do first maps
 *    (ordinary and leased), FILLs of large buffers and leased maps: every
 *    call ends, with success or -ENODEV/-EIO, every fd closes, the device
 *    binds again and a fresh buffer maps and fills;
 *  - the shrinker (drop_caches) runs over and over while threads do first
 *    maps, migrating late attaches and leased maps: the data stays intact,
 *    every call succeeds, and afterwards no pool holds a block and the
 *    bytes in use (less the lease stock) are back at the baseline;
 *  - the launcher stops and continues the VM (QMP) while FILL and CHECKSUM
 *    of a large buffer run in the device's resumable steps: each ends with
 *    the right content, and a buffer nobody touched, the pools and the
 *    buffer count are unchanged.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "host_channel.h"
#include "sysfs_util.h"
#include "tap.h"

#define DEV_ANY		0
#define DEV_DMA32	1

#define VIRTIO_DRIVER_DIR	"/sys/bus/virtio/drivers/cenalloc"
#define ALLOCATORS_PATH		CA_ALLOCATORS_PATH

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		ret = -errno;
	close(fd);
	return ret;
}

/* The checksum the device computes for a FILL of @size bytes with @seed. */
static bool fill_checksum(uint64_t size, uint64_t seed, uint64_t *sum)
{
	void *data = malloc(size);

	if (!data)
		return false;
	ca_pattern_fill(data, size, seed);
	*sum = ca_fnv1a64(data, size);
	free(data);
	return true;
}

/* ---------------------------------------------------------------------- */
/* Removal racing maps, FILLs and leased maps.                             */

#define RM_FILL_SIZE	(16 * CA_MIB)
#define RM_RUN_US	300000	/* work before the unbind */
#define RM_AFTER_US	500000	/* work after it */

enum rm_kind {
	RM_MAP,		/* first map of a 1 MiB buffer: a MAP round trip */
	RM_LEASED,	/* first map of a 4 KiB buffer: the lease path */
	RM_FILL,	/* FILL of a large buffer: a long resumable command */
	RM_KINDS,
};

struct rm_worker {
	pthread_t thread;
	enum rm_kind kind;
	int ca, ct;
	unsigned int calls, ok, enodev, eio;
	int unexpected;		/* first errno outside 0/ENODEV/EIO */
	const char *unexpected_call;
};

static int rm_stop;

static void rm_count(struct rm_worker *w, const char *call, int ret)
{
	w->calls++;
	if (ret >= 0)
		w->ok++;
	else if (ret == -ENODEV)
		w->enodev++;
	else if (ret == -EIO)
		w->eio++;
	else if (!w->unexpected)
		w->unexpected = ret;
	if (ret < 0 && w->unexpected == ret && !w->unexpected_call)
		w->unexpected_call = call;
}

static void *rm_thread(void *arg)
{
	struct rm_worker *w = arg;
	uint64_t sum, len;
	struct ct_mapping *m = malloc(sizeof(*m));
	uint32_t h;
	int fd, ret;

	if (!m)
		return NULL;
	while (!__atomic_load_n(&rm_stop, __ATOMIC_ACQUIRE)) {
		uint64_t size = w->kind == RM_MAP ? CA_MIB :
				w->kind == RM_LEASED ? 4 * CA_KIB : RM_FILL_SIZE;

		fd = ca_create(w->ca, size, 0);
		rm_count(w, "CREATE", fd);
		if (fd < 0) {
			usleep(1000);
			continue;
		}
		ret = ct_attach(w->ct, fd, DEV_ANY, &h, NULL);
		rm_count(w, "ATTACH", ret);
		if (ret == 0) {
			ret = ct_map(w->ct, h, 0, m);
			rm_count(w, "MAP", ret);
			if (ret == 0)
				rm_count(w, "UNMAP", ct_unmap(w->ct, h));
			rm_count(w, "DETACH", ct_detach(w->ct, h));
		}
		if (w->kind == RM_FILL) {
			rm_count(w, "FILL", ca_fill(w->ca, fd, 0x7e3a0000ull +
							w->calls));
			rm_count(w, "CHECKSUM", ca_checksum(w->ca, fd, &sum,
							    &len));
		}
		rm_count(w, "close", close(fd) ? -errno : 0);
	}
	free(m);
	return NULL;
}

/* Name of the virtio device bound to cenalloc ("virtio0"), or false. */
static bool bound_device(char *name, size_t len)
{
	DIR *d = opendir(VIRTIO_DRIVER_DIR);
	struct dirent *e;
	bool found = false;

	if (!d)
		return false;
	while (!found && (e = readdir(d))) {
		if (strncmp(e->d_name, "virtio", 6))
			continue;
		snprintf(name, len, "%s", e->d_name);
		found = true;
	}
	closedir(d);
	return found;
}

static bool wait_for(const char *path, unsigned int ms)
{
	struct stat st;
	unsigned int waited;

	for (waited = 0; waited < ms; waited += 50) {
		if (stat(path, &st) == 0)
			return true;
		usleep(50000);
	}
	return false;
}

static int bind_device(const char *dev)
{
	char path[384];
	int ret;

	ret = write_text("/sys/bus/virtio/drivers_probe", dev);
	if (ret)
		ret = write_text(VIRTIO_DRIVER_DIR "/bind", dev);
	snprintf(path, sizeof(path), VIRTIO_DRIVER_DIR "/%s", dev);
	if (ret == 0 && !wait_for(path, 10000))
		ret = -ETIMEDOUT;
	return ret;
}

static enum tap_result test_remove_racing_maps_and_fills(void)
{
	static struct rm_worker w[RM_KINDS * 2];
	static const char * const kind_name[] = { "map", "leased map", "fill" };
	struct ca_buf b = { .fd = -1 };
	unsigned int i, started = 0, failed_calls = 0;
	uint64_t sum, len, expected;
	char dev[256];
	int ca = -1, ct = -1, ret;
	bool unbound = false;

	if (!bound_device(dev, sizeof(dev)))
		return tap_skip("no virtio device bound to cenalloc");
	if (!fill_checksum(CA_MIB, 0x5eed, &expected))
		return tap_skip("no memory for the expected checksum");
	if (!ca_env_open_device(&ca, &ct, DEV_ANY, CENALLOC_MASK_ANY))
		return TAP_FAIL;

	__atomic_store_n(&rm_stop, 0, __ATOMIC_RELEASE);
	for (i = 0; i < TAP_ARRAY_SIZE(w); i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].kind = i % RM_KINDS;
		w[i].ca = ca;
		w[i].ct = ct;
		ret = pthread_create(&w[i].thread, NULL, rm_thread, &w[i]);
		if (!CHECK(ret == 0, "thread %u: %s", i, strerror(ret)))
			break;
		started++;
	}
	usleep(RM_RUN_US);
	ret = write_text(VIRTIO_DRIVER_DIR "/unbind", dev);
	unbound = ret == 0;
	CHECK(ret == 0, "unbind %s: %s", dev, strerror(-ret));
	usleep(RM_AFTER_US);
	__atomic_store_n(&rm_stop, 1, __ATOMIC_RELEASE);
	/* A call that never ends keeps its thread: the test's alarm fires. */
	for (i = 0; i < started; i++)
		pthread_join(w[i].thread, NULL);

	for (i = 0; i < started; i++) {
		tap_diag("%-10s thread %u: %u calls, %u ok, %u ENODEV, %u EIO",
			 kind_name[w[i].kind], i, w[i].calls, w[i].ok,
			 w[i].enodev, w[i].eio);
		CHECK(!w[i].unexpected, "%s thread %u: %s answered %s",
		      kind_name[w[i].kind], i, w[i].unexpected_call,
		      strerror(-w[i].unexpected));
		CHECK(w[i].ok > 0, "%s thread %u did nothing before the unbind",
		      kind_name[w[i].kind], i);
		failed_calls += w[i].calls - w[i].ok;
	}
	/* The threads ran across the unbind: calls after it failed. */
	CHECK(!unbound || failed_calls > 0,
	      "no call failed after the device went away");

	if (unbound) {
		ret = bind_device(dev);
		if (!CHECK(ret == 0, "bind %s again: %s", dev, strerror(-ret)))
			goto out;
		unbound = false;
	}
	ret = ca_buf_alloc(ca, ct, CA_MIB, DEV_ANY, &b);
	if (!CHECK(ret == 0, "a fresh buffer after bind: %s", strerror(-ret)))
		goto out;
	ret = ct_unmap(ct, b.handle);
	CHECK(ret == 0, "unmap: %s", strerror(-ret));
	ret = ca_fill(ca, b.fd, 0x5eed);
	CHECK(ret == 0, "FILL after bind: %s", strerror(-ret));
	ret = ca_checksum(ca, b.fd, &sum, &len);
	CHECK(ret == 0 && len == CA_MIB && sum == expected,
	      "CHECKSUM after bind: %s, %llu bytes, %#llx, expected %#llx",
	      strerror(-ret), (unsigned long long)len,
	      (unsigned long long)sum, (unsigned long long)expected);
	ret = ct_map(ct, b.handle, 0, &b.map);
	CHECK(ret == 0, "map after bind: %s", strerror(-ret));
out:
	ca_buf_free(ct, &b);
	if (unbound)
		bind_device(dev);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

/* ---------------------------------------------------------------------- */
/* The shrinker racing maps, migrations and leases.                        */

#define SH_ROUNDS	8
#define SH_MAP_SIZE	(1 * CA_MIB)
#define SH_MIG_SIZE	(256 * CA_KIB)
#define SH_LEASE_SIZE	(4 * CA_KIB)
#define SH_GROW_SIZE	(2 * CA_MIB)	/* beyond the elastic pool's 1 MiB */
#define DEV_ELASTIC	2
#define KIND_ELASTIC	(1u << 8)	/* cenallocd-selftests.toml */

enum sh_kind {
	SH_MAP,
	SH_MIGRATE,
	SH_LEASED,
	SH_GROW,	/* a buffer that makes an elastic pool grow */
	SH_KINDS,
};

struct sh_worker {
	pthread_t thread;
	enum sh_kind kind;
	int ca, ct;
	uint32_t device;	/* first attached test device */
	uint64_t expected;	/* checksum of a FILL of the size, seed 0x5a */
	unsigned int rounds;
	char error[160];	/* the first failure */
};

static int sh_stop;

static void sh_fail(struct sh_worker *w, const char *what, int ret)
{
	if (!w->error[0])
		snprintf(w->error, sizeof(w->error), "round %u: %s: %s",
			 w->rounds, what, strerror(-ret));
}

static bool sh_sum_ok(struct sh_worker *w, int fd, uint64_t size,
		      const char *when)
{
	uint64_t sum = 0, len = 0;
	int ret = ca_checksum(w->ca, fd, &sum, &len);

	if (ret) {
		sh_fail(w, when, ret);
		return false;
	}
	if (len != size || sum != w->expected) {
		if (!w->error[0])
			snprintf(w->error, sizeof(w->error),
				 "round %u: %s: %llu bytes, %#llx, expected %#llx",
				 w->rounds, when, (unsigned long long)len,
				 (unsigned long long)sum,
				 (unsigned long long)w->expected);
		return false;
	}
	return true;
}

/* One round: a buffer allocated by its first map, filled and checked. */
static bool sh_round(struct sh_worker *w, struct ct_mapping *m)
{
	uint64_t size = w->kind == SH_MAP ? SH_MAP_SIZE :
			w->kind == SH_MIGRATE ? SH_MIG_SIZE :
			w->kind == SH_LEASED ? SH_LEASE_SIZE : SH_GROW_SIZE;
	bool ok = false, mapped = false;
	uint32_t h, h32;
	int fd, ret;

	fd = ca_create(w->ca, size, 0);
	if (fd < 0) {
		sh_fail(w, "CREATE", fd);
		return false;
	}
	ret = ct_attach(w->ct, fd, w->device, &h, NULL);
	if (ret) {
		sh_fail(w, "ATTACH", ret);
		goto close;
	}
	ret = ct_map(w->ct, h, 0, m);
	if (ret) {
		sh_fail(w, "first MAP", ret);
		goto detach;
	}
	/* Unmapped before FILL: a bounced mapping's unmap would copy back. */
	ret = ct_unmap(w->ct, h);
	if (ret) {
		sh_fail(w, "UNMAP", ret);
		goto detach;
	}
	ret = ca_fill(w->ca, fd, 0x5a);
	if (ret) {
		sh_fail(w, "FILL", ret);
		goto detach;
	}
	if (!sh_sum_ok(w, fd, size, "after FILL"))
		goto detach;
	if (w->kind == SH_MIGRATE) {
		/* A stricter device attached late: the map migrates. */
		ret = ct_attach(w->ct, fd, DEV_DMA32, &h32, NULL);
		if (ret) {
			sh_fail(w, "late DMA32 ATTACH", ret);
			goto detach;
		}
		ret = ct_map(w->ct, h32, 0, m);
		mapped = ret == 0;
		if (!mapped)
			sh_fail(w, "migrating MAP", ret);
		else if (m->num_segments <= CT_MAX_SEGMENTS &&
			 ct_mapping_bytes(m) != size)
			sh_fail(w, "migrating MAP: wrong length", -EINVAL);
		if (mapped) {
			ok = sh_sum_ok(w, fd, size, "after migration");
			ret = ct_unmap(w->ct, h32);
			if (ret) {
				sh_fail(w, "UNMAP DMA32", ret);
				ok = false;
			}
		}
		ret = ct_detach(w->ct, h32);
		if (ret) {
			sh_fail(w, "DETACH DMA32", ret);
			ok = false;
		}
	} else {
		ok = true;
	}
detach:
	ret = ct_detach(w->ct, h);
	if (ret) {
		sh_fail(w, "DETACH", ret);
		ok = false;
	}
close:
	close(fd);
	return ok;
}

static void *sh_thread(void *arg)
{
	struct sh_worker *w = arg;
	struct ct_mapping *m = malloc(sizeof(*m));

	if (!m) {
		sh_fail(w, "malloc", -ENOMEM);
		return NULL;
	}
	for (w->rounds = 0; w->rounds < SH_ROUNDS; w->rounds++)
		if (!sh_round(w, m))
			break;
	free(m);
	return NULL;
}

static unsigned int shrinks;

static void *shrink_thread(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&sh_stop, __ATOMIC_ACQUIRE)) {
		if (write_text("/proc/sys/vm/drop_caches",
			       shrinks % 2 ? "3" : "2") == 0)
			shrinks++;
		usleep(20000);
	}
	return NULL;
}

static char debug_text[65536];

static bool read_allocators(void)
{
	ssize_t n, got = 0;
	int fd = open(ALLOCATORS_PATH, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return false;
	while ((n = read(fd, debug_text + got,
			 sizeof(debug_text) - 1 - got)) > 0)
		got += n;
	close(fd);
	debug_text[got] = '\0';
	return got > 0;
}

/* Sum of the "pool<i>_held" lines, or -1 if none. */
static long long pools_held(void)
{
	long long sum = -1, v;
	char key[32];
	int i;

	for (i = 0; i < 16; i++) {
		snprintf(key, sizeof(key), "pool%d_held", i);
		v = ca_text_value(debug_text, key);
		if (v < 0)
			break;
		sum = (sum < 0 ? 0 : sum) + v;
	}
	return sum;
}

/* The device's figures per allocator and the driver's stock and pools. */
static void dump_accounting(int ca, const char *when)
{
	const char *p = debug_text, *end;
	struct ca_pool pool;
	uint32_t i;

	if (ca_pool_read(ca, &pool) == 0)
		for (i = 0; i < pool.count; i++)
			tap_diag("%s: allocator %u %s: capacity %llu free %llu buffers %u",
				 when, i, pool.alloc[i].name,
				 (unsigned long long)pool.alloc[i].capacity,
				 (unsigned long long)pool.alloc[i].free,
				 pool.alloc[i].num_buffers);
	if (!read_allocators())
		return;
	while (p && *p) {
		end = strchr(p, '\n');
		if (!strncmp(p, "stock", 5) || !strncmp(p, "lease_", 6) ||
		    (!strncmp(p, "pool", 4) && (strstr(p, "_in_use") ||
						strstr(p, "_held") ||
						strstr(p, "_donated"))) ||
		    !strncmp(p, "shr", 3))
			tap_diag("%s: %.*s", when,
				 (int)(end ? end - p : (long)strlen(p)), p);
		p = end ? end + 1 : NULL;
	}
}

static long long shrink_scans(void)
{
	return read_allocators() ? ca_text_value(debug_text, "shrink_scans") :
				   -1;
}

static enum tap_result test_shrinker_racing_maps(void)
{
	static struct sh_worker w[SH_KINDS * 2];
	static const char * const kind_name[] = {
		"map", "migrate", "leased", "grow"
	};
	struct ca_pool before, after;
	uint64_t exp[SH_KINDS];
	long long held0, held1 = -1, scans0, scans1;
	pthread_t shrinker;
	unsigned int i, started = 0, rounds = 0;
	uint32_t grow_device = DEV_ANY;
	int ca, ct, ret, waited;
	bool shrinking = false, same = false;

	if (!debugfs_ready())
		return tap_skip("no debugfs");
	for (i = 0; i < SH_KINDS; i++) {
		uint64_t size = i == SH_MAP ? SH_MAP_SIZE :
				i == SH_MIGRATE ? SH_MIG_SIZE :
				i == SH_LEASED ? SH_LEASE_SIZE : SH_GROW_SIZE;

		if (!fill_checksum(size, 0x5a, &exp[i]))
			return tap_skip("no memory for the expected checksums");
	}
	if (!ca_env_open_device(&ca, &ct, DEV_ANY, CENALLOC_MASK_ANY))
		return TAP_FAIL;
	ret = ct_set_device1(ct, DEV_DMA32, CENALLOC_KIND_DMA32, 0);
	if (!CHECK(ret == 0, "SET_DEVICE DMA32: %s", strerror(-ret)))
		goto out;
	ret = ca_pool_read(ca, &before);
	if (!CHECK(ret == 0, "INFO: %s", strerror(-ret)))
		goto out;
	if (ca_pool_find_kind(&before, CENALLOC_KIND_DMA32) < 0) {
		ca_env_close(&ca, &ct, NULL);
		return tap_skip("no DMA32 allocator to migrate into");
	}
	/*
	 * The shrinker gives back only what a pool grew: the "grow" threads
	 * use the elastic-only pool (selftests config), whose 1 MiB start
	 * every 2 MiB buffer outgrows. The default layout has no such pool:
	 * its pools start larger and may not grow in the test's time, so the
	 * shrinker may find nothing to scan (seen: "10 drop_caches writes, 0
	 * shrinker scans").
	 */
	if (ca_pool_find_kind(&before, KIND_ELASTIC) < 0) {
		ca_env_close(&ca, &ct, NULL);
		return tap_skip("no pool of the elastic kind (bit 8) to grow and shrink");
	}
	ret = ct_set_device1(ct, DEV_ELASTIC, KIND_ELASTIC, 0);
	if (!CHECK(ret == 0, "SET_DEVICE elastic: %s", strerror(-ret)))
		goto out;
	grow_device = DEV_ELASTIC;
	if (!CHECK(read_allocators(), "read %s", ALLOCATORS_PATH))
		goto out;
	held0 = pools_held();
	scans0 = ca_text_value(debug_text, "shrink_scans");
	CHECK(held0 >= 0 && scans0 >= 0,
	      "no pool<i>_held or shrink_scans line in %s", ALLOCATORS_PATH);

	__atomic_store_n(&sh_stop, 0, __ATOMIC_RELEASE);
	shrinks = 0;
	ret = pthread_create(&shrinker, NULL, shrink_thread, NULL);
	if (!CHECK(ret == 0, "shrinker thread: %s", strerror(ret)))
		goto out;
	shrinking = true;
	for (i = 0; i < TAP_ARRAY_SIZE(w); i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].kind = i % SH_KINDS;
		w[i].ca = ca;
		w[i].ct = ct;
		w[i].device = w[i].kind == SH_GROW ? grow_device : DEV_ANY;
		w[i].expected = exp[w[i].kind];
		ret = pthread_create(&w[i].thread, NULL, sh_thread, &w[i]);
		if (!CHECK(ret == 0, "thread %u: %s", i, strerror(ret)))
			break;
		started++;
	}
	for (i = 0; i < started; i++)
		pthread_join(w[i].thread, NULL);
	__atomic_store_n(&sh_stop, 1, __ATOMIC_RELEASE);
	pthread_join(shrinker, NULL);
	shrinking = false;
	/* Once more with everything freed: what grew can go back now. */
	CHECK(write_text("/proc/sys/vm/drop_caches", "2") == 0, "drop_caches");
	scans1 = shrink_scans();
	tap_diag("%u drop_caches writes, %lld shrinker scans", shrinks,
		 scans1 - scans0);
	CHECK(shrinks > 0, "no drop_caches write went through");
	CHECK(scans1 > scans0, "the shrinker never scanned a pool");
	for (i = 0; i < started; i++) {
		CHECK(!w[i].error[0], "%s thread %u: %s", kind_name[w[i].kind],
		      i, w[i].error);
		rounds += w[i].rounds;
	}
	tap_diag("%u rounds done of %u", rounds, started * SH_ROUNDS);

	/*
	 * Everything freed: each allocator's bytes in use and buffers are
	 * back at the baseline (the device counts the lease stock as free)
	 * and no pool holds a block.
	 */
	for (waited = 0; waited < 5000 && !same; waited += 100) {
		if (ca_pool_read(ca, &after) == 0 && read_allocators()) {
			held1 = pools_held();
			same = held1 == held0 &&
			       ca_pool_used(&after) == ca_pool_used(&before);
		}
		if (!same)
			usleep(100000);
	}
	if (!same)
		dump_accounting(ca, "after");
	CHECK(held1 == held0, "pools hold %lld bytes, held %lld before", held1,
	      held0);
	CHECK(ca_pool_read(ca, &after) == 0 && ca_pool_same(&before, &after),
	      "the pools' use differs from the baseline");
out:
	if (shrinking) {
		__atomic_store_n(&sh_stop, 1, __ATOMIC_RELEASE);
		pthread_join(shrinker, NULL);
	}
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/* ---------------------------------------------------------------------- */
/* A pause inside a long resumable FILL or CHECKSUM.                       */

#define PS_SIZE		(32 * CA_MIB)	/* 512 steps of 64 KiB */
#define PS_SEEDS	2
#define PS_PAUSES	12
#define PS_PAUSE_S	1
#define PS_HOST_TIMEOUT	60

struct ps_state {
	int ca, fd;
	uint64_t expected[PS_SEEDS];
	unsigned int fills, checks;
	unsigned int started;		/* commands begun */
	uint64_t send_ns;		/* the pause request (0: none yet) */
	unsigned int spanning;		/* commands in flight when it was sent */
	char error[160];
};

static int ps_stop;

/*
 * Was a command that ran from @start to @end in flight when the pause was
 * asked for? (Whether it still ran when the VM stopped cannot be told from
 * the guest: its clock stands still while the VM is stopped, and after the
 * cont the rest of the command may end before the launcher's reply comes.
 * That the daemon suspends and resumes a batch at a ring stop is proven on
 * the host side, tests/rings.rs.)
 */
static void ps_span(struct ps_state *s, uint64_t start, uint64_t end)
{
	uint64_t send = __atomic_load_n(&s->send_ns, __ATOMIC_ACQUIRE);

	if (send && start < send && end > send)
		s->spanning++;
}

static void *ps_thread(void *arg)
{
	struct ps_state *s = arg;
	uint64_t t0, sum, len;
	unsigned int seed;
	int ret;

	while (!__atomic_load_n(&ps_stop, __ATOMIC_ACQUIRE) && !s->error[0]) {
		seed = s->fills % PS_SEEDS;
		__atomic_add_fetch(&s->started, 1, __ATOMIC_RELEASE);
		t0 = ca_now_ns();
		ret = ca_fill(s->ca, s->fd, 0x9a0500 + seed);
		ps_span(s, t0, ca_now_ns());
		if (ret) {
			snprintf(s->error, sizeof(s->error), "FILL %u: %s",
				 s->fills, strerror(-ret));
			break;
		}
		s->fills++;
		__atomic_add_fetch(&s->started, 1, __ATOMIC_RELEASE);
		t0 = ca_now_ns();
		ret = ca_checksum(s->ca, s->fd, &sum, &len);
		ps_span(s, t0, ca_now_ns());
		if (ret || len != PS_SIZE || sum != s->expected[seed]) {
			snprintf(s->error, sizeof(s->error),
				 "CHECKSUM after FILL %u: %s, %llu bytes, %#llx, expected %#llx",
				 s->fills, strerror(-ret),
				 (unsigned long long)len,
				 (unsigned long long)sum,
				 (unsigned long long)s->expected[seed]);
			break;
		}
		s->checks++;
	}
	return NULL;
}

static enum tap_result test_pause_inside_long_batch(void)
{
	static struct ps_state s;
	struct ca_buf big = { .fd = -1 }, other = { .fd = -1 };
	struct ca_pool before, after;
	uint64_t other_sum = 0, sum, len;
	char reply[256] = "";
	pthread_t thread;
	unsigned int i, pauses;
	int ca, ct, ret;
	bool running = false;

	if (!ca_host_available())
		return tap_skip("no host request channel (not started by run-vm)");
	memset(&s, 0, sizeof(s));
	for (i = 0; i < PS_SEEDS; i++)
		if (!fill_checksum(PS_SIZE, 0x9a0500 + i, &s.expected[i]))
			return tap_skip("no memory for the expected checksums");
	if (!ca_env_open_device(&ca, &ct, DEV_ANY, CENALLOC_MASK_ANY))
		return TAP_FAIL;
	ret = ca_buf_alloc(ca, ct, PS_SIZE, DEV_ANY, &big);
	if (!CHECK(ret == 0, "the %llu MiB buffer: %s",
		   (unsigned long long)(PS_SIZE / CA_MIB), strerror(-ret)))
		goto out;
	ret = ca_buf_alloc(ca, ct, CA_MIB, DEV_ANY, &other);
	if (!CHECK(ret == 0, "the untouched buffer: %s", strerror(-ret)))
		goto out;
	/* Unmapped before FILL: a bounced mapping's unmap would copy back. */
	ret = ct_unmap(ct, big.handle);
	ret = ret ? ret : ct_unmap(ct, other.handle);
	if (!CHECK(ret == 0, "unmap: %s", strerror(-ret)))
		goto out;
	ret = ca_fill(ca, other.fd, 0x07e5);
	ret = ret ? ret : ca_checksum(ca, other.fd, &other_sum, &len);
	if (!CHECK(ret == 0, "FILL and CHECKSUM the untouched buffer: %s",
		   strerror(-ret)))
		goto out;
	ret = ca_pool_read(ca, &before);
	if (!CHECK(ret == 0, "INFO: %s", strerror(-ret)))
		goto out;

	s.ca = ca;
	s.fd = big.fd;
	__atomic_store_n(&ps_stop, 0, __ATOMIC_RELEASE);
	ret = pthread_create(&thread, NULL, ps_thread, &s);
	if (!CHECK(ret == 0, "thread: %s", strerror(ret)))
		goto out;
	running = true;
	/*
	 * The thread runs FILL and CHECKSUM back to back. The pause is asked
	 * for right after a command began, so that the command has its whole
	 * length to cover the time the request takes to reach the host and
	 * stop the VM; pause again (up to PS_PAUSES times) until a command
	 * was in flight when a pause was asked for.
	 */
	for (pauses = 0; pauses < PS_PAUSES && !s.spanning; pauses++) {
		while (!s.fills && !s.error[0])
			usleep(1000);
		i = __atomic_load_n(&s.started, __ATOMIC_ACQUIRE);
		while (__atomic_load_n(&s.started, __ATOMIC_ACQUIRE) == i &&
		       !s.error[0])
			usleep(100);
		if (s.error[0])
			break;
		__atomic_store_n(&s.send_ns, ca_now_ns(), __ATOMIC_RELEASE);
		ret = ca_host_request(reply, sizeof(reply), PS_HOST_TIMEOUT,
				      "pause %d", PS_PAUSE_S);
		if (!CHECK(ret == 0, "host pause: %d (%s)", ret, reply))
			break;
		/* Let the command in flight finish (and be counted). */
		i = s.fills + s.checks;
		while (s.fills + s.checks < i + 2 && !s.error[0])
			usleep(1000);
	}
	__atomic_store_n(&ps_stop, 1, __ATOMIC_RELEASE);
	pthread_join(thread, NULL);
	running = false;
	tap_diag("%u pauses, %u commands in flight when one was asked for; %u FILLs, %u CHECKSUMs",
		 pauses, s.spanning, s.fills, s.checks);
	CHECK(!s.error[0], "%s", s.error);
	CHECK(s.spanning > 0, "no FILL or CHECKSUM was in flight when a pause was asked for");

	/* Nothing else changed. */
	ret = ca_checksum(ca, other.fd, &sum, &len);
	CHECK(ret == 0 && sum == other_sum,
	      "the untouched buffer: %s, %#llx, was %#llx", strerror(-ret),
	      (unsigned long long)sum, (unsigned long long)other_sum);
	ret = ca_pool_read(ca, &after);
	if (CHECK(ret == 0, "INFO: %s", strerror(-ret)))
		CHECK(ca_pool_same(&before, &after),
		      "the pools changed across the pauses");
out:
	if (running) {
		__atomic_store_n(&ps_stop, 1, __ATOMIC_RELEASE);
		pthread_join(thread, NULL);
	}
	ca_buf_free(ct, &other);
	ca_buf_free(ct, &big);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST_TIMEOUT("the shrinker racing first maps, migrations and leased maps",
			 test_shrinker_racing_maps, 120),
	TAP_TEST_TIMEOUT("a pause inside a long resumable FILL or CHECKSUM",
			 test_pause_inside_long_batch, 110),
	TAP_TEST_TIMEOUT("device removal racing maps, FILLs and leased maps",
			 test_remove_racing_maps_and_fills, 60),
};

TAP_MAIN(tests)
