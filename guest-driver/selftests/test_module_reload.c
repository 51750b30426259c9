// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc.ko unload and reload: refused while a buffer is alive; after
 * several unload/reload cycles with work in between, the pool statistics
 * and the slab caches are back where they started (no leak).
 *
 * The module files cenalloc.ko and cenalloc_test.ko come from
 * $CENALLOC_MODULE_DIR, else /lib/modules/cenalloc, else
 * /lib/modules/$(uname -r)/extra (where the guest image puts them). cenalloc.ko is
 * reloaded with the parameters it had (read back from sysfs). Reloading
 * re-probes the virtio device, so the pool is donated again.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "sysfs_util.h"
#include "tap.h"

#define CYCLES			3
#define WORK_BUFFERS		1000
/*
 * A leak of one object per buffer shows as CYCLES * WORK_BUFFERS = 3000
 * objects. SLUB counts the free objects of per-CPU slabs as active, so a
 * cache may look larger without any leak: by up to its per-CPU partial
 * capacity plus one slab on every CPU (/sys/kernel/slab/NAME/cpu_partial
 * and objs_per_slab). The limit is the largest of SLAB_GROWTH_LIMIT
 * objects, SLAB_NOISE_SLABS slabs and that per-CPU capacity.
 */
#define SLAB_GROWTH_LIMIT	150
/*
 * Debug kernels keep two caches of bookkeeping for objects of every
 * subsystem: kmemleak_object (one per tracked allocation anywhere, freed
 * through RCU) and debug_objects_cache (a pool of tracking objects that
 * debugobjects refills ahead of need and trims in batches from a worker).
 * They trail the objects they describe by hundreds (a CI run on the debug
 * kernel saw +384 and +284 with no leak: kmemleak's own scan after the
 * tests found nothing, every other cache was within its limit). A leaked
 * driver object still shows in the cache that holds it, checked with the
 * ordinary limit, and kmemleak reports it; these two only fail on growth
 * of half an object per buffer.
 */
#define SLAB_DEBUG_CACHE_LIMIT	(CYCLES * WORK_BUFFERS / 2)
#define SLAB_NOISE_SLABS	4
#define MAX_CACHES		512
#define SLAB_SETTLE_TRIES	20
#define SLAB_SETTLE_US		250000

static char module_dir[256];
static char cenalloc_params[512];

static const char *module_path(const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s.ko", module_dir, name);
	return buf;
}

static bool module_loaded(const char *name)
{
	char path[128];
	struct stat st;

	snprintf(path, sizeof(path), "/sys/module/%s", name);
	return stat(path, &st) == 0;
}

static int unload(const char *name)
{
	int tries;

	/* The last close of a file may still be finishing: retry EAGAIN. */
	for (tries = 0; tries < 50; tries++) {
		if (syscall(SYS_delete_module, name, O_NONBLOCK) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EBUSY)
			return -errno;
		usleep(100000);
	}
	return -errno;
}

static bool wait_for(const char *path, unsigned int ms)
{
	struct stat st;
	unsigned int waited;

	for (waited = 0; waited <= ms; waited += 20) {
		if (stat(path, &st) == 0)
			return true;
		usleep(20000);
	}
	return false;
}

static int load(const char *name, const char *params, const char *node)
{
	char path[512];
	int fd, ret = 0;

	fd = open(module_path(name, path, sizeof(path)), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (syscall(SYS_finit_module, fd, params, 0))
		ret = -errno;
	close(fd);
	if (!ret && !wait_for(node, 10000))
		ret = -ETIMEDOUT;
	return ret;
}

/* After a probe, every pool must have been donated (POOL_ADD status 0). */
static void check_donations(const char *when)
{
	int bad;

	if (!debugfs_ready()) {
		tap_diag("no debugfs: donations %s not checked", when);
		return;
	}
	bad = cenalloc_pools_not_donated();
	CHECK(bad == 0, "%s: %d pool donation(s) refused by the device (see dmesg)",
	      when, bad);
}

/* "name=value ..." from /sys/module/cenalloc/parameters. */
static void read_params(void)
{
	const char *dir = "/sys/module/cenalloc/parameters";
	size_t used = 0;
	struct dirent *e;
	DIR *d = opendir(dir);

	cenalloc_params[0] = '\0';
	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[512], value[128];
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(value, sizeof(value), f)) {
			value[strcspn(value, "\n")] = '\0';
			/* An unset charp reads "(null)": leave it unset. */
			if (value[0] && !strchr(value, ' ') && strcmp(value, "(null)"))
				used += snprintf(cenalloc_params + used,
						 sizeof(cenalloc_params) - used,
						 "%s%s=%s", used ? " " : "",
						 e->d_name, value);
		}
		fclose(f);
		if (used >= sizeof(cenalloc_params))
			break;
	}
	closedir(d);
}

static bool modules_in(const char *dir)
{
	char path[512];
	struct stat st;

	snprintf(module_dir, sizeof(module_dir), "%s", dir);
	return !stat(module_path("cenalloc", path, sizeof(path)), &st) &&
	       !stat(module_path("cenalloc_test", path, sizeof(path)), &st);
}

static enum tap_result setup(void)
{
	const char *env = getenv("CENALLOC_MODULE_DIR");
	char extra[300] = "/lib/modules/unknown/extra";
	struct utsname uts;

	if (!uname(&uts))
		snprintf(extra, sizeof(extra), "/lib/modules/%s/extra", uts.release);
	if (env && env[0]) {
		if (!modules_in(env))
			return tap_skip("no cenalloc.ko / cenalloc_test.ko in %s", env);
	} else if (!modules_in("/lib/modules/cenalloc") && !modules_in(extra)) {
		return tap_skip("no cenalloc.ko / cenalloc_test.ko in /lib/modules/cenalloc or %s",
				extra);
	}
	if (!module_loaded("cenalloc") || !module_loaded("cenalloc_test"))
		return tap_skip("cenalloc and cenalloc_test are not both loaded");
	read_params();
	tap_diag("modules from %s, cenalloc parameters \"%s\"", module_dir, cenalloc_params);
	return TAP_PASS;
}

static int unload_both(void)
{
	int ret = unload("cenalloc_test");

	return ret ? ret : unload("cenalloc");
}

static int load_both(void)
{
	int ret = 0;

	if (!module_loaded("cenalloc"))
		ret = load("cenalloc", cenalloc_params, CA_DEVICE_PATH);
	if (!ret && !module_loaded("cenalloc_test"))
		ret = load("cenalloc_test", "", CT_DEVICE_PATH);
	return ret;
}

/* Buffers created, allocated, filled, checked and freed. */
static bool workload(void)
{
	struct ca_buf b = { .fd = -1 };
	unsigned int i;
	uint64_t sum, len;
	int ca, ct, ret;
	bool ok = true;

	if (!ca_env_open(&ca, &ct))
		return false;
	ok = CHECK(ct_set_device1(ct, 0, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE");
	for (i = 0; ok && i < WORK_BUFFERS; i++) {
		ret = ca_buf_alloc(ca, ct, (i % 8 + 1) * 16 * CA_KIB, 0, &b);
		ok = CHECK(ret == 0, "work buffer %u: %s", i, strerror(-ret));
		if (ok)
			ok = CHECK(ca_fill(ca, b.fd, i) == 0 &&
				   ca_checksum(ca, b.fd, &sum, &len) == 0,
				   "FILL/CHECKSUM");
		ca_buf_free(ct, &b);
	}
	ca_close(&ct);
	ca_close(&ca);
	return ok;
}

struct slab_count {
	char name[64];
	long active;
	long per_slab;
};

static int write_attr(const char *path, const char *value);

/*
 * Shrinks every slab cache (/sys/kernel/slab/NAME/shrink): frees its empty
 * slabs and, under generic KASAN (the debug guest kernel), flushes its
 * quarantine, whose freed objects slabinfo still counts as active: without
 * this, thousands of freed files, dentries and inodes look like growth.
 */
static void shrink_slab_caches(void)
{
	DIR *dir = opendir("/sys/kernel/slab");
	char path[300];
	struct dirent *e;

	if (!dir)
		return;
	while ((e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/kernel/slab/%s/shrink", e->d_name);
		write_attr(path, "1");
	}
	closedir(dir);
}

/*
 * Reads /proc/slabinfo after dropping the reclaimable dentry and inode
 * caches: a sysfs file the test opened keeps its inode, and the inode keeps
 * its kernfs node, long after the file is gone, so those caches would count
 * what the VFS chose to keep as a leak of the module. Then every cache is
 * shrunk (see shrink_slab_caches()).
 */
static int read_slabinfo(struct slab_count *caches, unsigned int max)
{
	char line[512];
	unsigned int n = 0;
	FILE *f;

	sync();
	if (write_attr("/proc/sys/vm/drop_caches", "3"))
		tap_diag("could not drop caches; slab counts include them");
	shrink_slab_caches();
	f = fopen("/proc/slabinfo", "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f) && n < max) {
		if (line[0] == '#' || !strncmp(line, "slabinfo", 8))
			continue;
		long total, size;

		if (sscanf(line, "%63s %ld %ld %ld %ld", caches[n].name, &caches[n].active,
			   &total, &size, &caches[n].per_slab) == 5)
			n++;
	}
	fclose(f);
	return n;
}

static long slab_active(const struct slab_count *caches, int n, const char *name)
{
	int i;

	for (i = 0; i < n; i++)
		if (!strcmp(caches[i].name, name))
			return caches[i].active;
	return 0;
}

static enum tap_result test_unload_refused_while_buffer_alive(void)
{
	enum tap_result result = setup();
	struct ca_buf b = { .fd = -1 };
	uint64_t sum, len;
	int ca = -1, ct = -1, ret;

	if (result != TAP_PASS)
		return result;
	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	ret = ct_set_device1(ct, 0, CENALLOC_MASK_ANY, 0);
	ret = ret ? ret : ca_buf_alloc(ca, ct, 64 * CA_KIB, 0, &b);
	if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)))
		goto out;
	/* Only the buffer's fd remains. */
	ct_unmap(ct, b.handle);
	ct_detach(ct, b.handle);
	b.handle = 0;
	ca_close(&ct);
	ca_close(&ca);
	ret = unload("cenalloc_test");
	if (!CHECK(ret == 0, "unload cenalloc_test: %s", strerror(-ret)))
		goto out;
	ret = syscall(SYS_delete_module, "cenalloc", O_NONBLOCK) ? -errno : 0;
	CHECK(ret == -EWOULDBLOCK || ret == -EBUSY || ret == -EAGAIN,
	      "unload cenalloc with a live buffer: %s, expected it refused",
	      ret ? strerror(-ret) : "success");
	if (ret)
		tap_diag("unload refused: %s", strerror(-ret));
	if (!ret)
		goto out;
	ca = ca_open();
	if (CHECK(ca >= 0, "reopen: %s", strerror(-ca)))
		CHECK(ca_fill(ca, b.fd, 3) == 0 && ca_checksum(ca, b.fd, &sum, &len) == 0,
		      "the live buffer no longer works");
	ca_close(&ca);
	ca_close(&b.fd);
	ret = unload("cenalloc");
	CHECK(ret == 0, "unload after the last buffer is gone: %s", strerror(-ret));
out:
	ca_buf_free(ct, &b);
	ca_close(&ct);
	ca_close(&ca);
	ret = load_both();
	CHECK(ret == 0, "reload: %s", strerror(-ret));
	return TAP_PASS;
}

/* A number from /sys/kernel/slab/NAME/ATTR, 0 if it cannot be read. */
static long slab_sysfs_value(const char *name, const char *attr)
{
	char path[192];
	long value = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/kernel/slab/%s/%s", name, attr);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (fscanf(f, "%ld", &value) != 1)
		value = 0;
	fclose(f);
	return value;
}

/* Growth of a cache that is noise, not a leak (see SLAB_GROWTH_LIMIT). */
static long slab_growth_limit(const struct slab_count *cache)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	long limit = SLAB_NOISE_SLABS * cache->per_slab;
	long per_cpu = slab_sysfs_value(cache->name, "cpu_partial") +
		       slab_sysfs_value(cache->name, "objs_per_slab");

	if (cpus > 0 && per_cpu * cpus > limit)
		limit = per_cpu * cpus;
	if (!strcmp(cache->name, "kmemleak_object") ||
	    !strcmp(cache->name, "debug_objects_cache"))
		return SLAB_DEBUG_CACHE_LIMIT;
	return limit < SLAB_GROWTH_LIMIT ? SLAB_GROWTH_LIMIT : limit;
}

static enum tap_result test_reload_without_leak(void)
{
	struct slab_count *s0 = calloc(MAX_CACHES, sizeof(*s0));
	struct slab_count *s1 = calloc(MAX_CACHES, sizeof(*s1));
	enum tap_result result = setup();
	struct ca_pool before, after;
	long worst = 0, worst_limit = SLAB_GROWTH_LIMIT;
	int ca = -1, n0, n1 = 0, i, cycle, ret, settle;
	const char *worst_name = "-";
	bool leaked = false;

	if (result != TAP_PASS || !CHECK(s0 && s1, "out of memory"))
		goto out;
	/* Warm the caches with one full cycle, then take the starting point. */
	ret = unload_both();
	ret = ret ? ret : load_both();
	if (!CHECK(ret == 0, "warm-up reload: %s", strerror(-ret)) || !workload())
		goto out;
	if (!ca_env_open(&ca, NULL) || !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	ca_close(&ca);
	n0 = read_slabinfo(s0, MAX_CACHES);
	if (!CHECK(n0 > 0, "/proc/slabinfo: %s", strerror(-n0)))
		goto out;

	for (cycle = 0; cycle < CYCLES; cycle++) {
		ret = unload_both();
		if (!CHECK(ret == 0, "cycle %d: unload: %s", cycle, strerror(-ret)))
			goto out;
		CHECK(access(CA_DEVICE_PATH, F_OK) != 0, "%s still there after unload",
		      CA_DEVICE_PATH);
		ret = load_both();
		if (!CHECK(ret == 0, "cycle %d: load: %s", cycle, strerror(-ret)))
			goto out;
		check_donations("after reload");
		if (!workload())
			goto out;
	}

	if (!ca_env_open(&ca, NULL) || !CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		goto out;
	CHECK(ca_pool_same(&before, &after), "pool statistics differ after %d reloads", CYCLES);
	/*
	 * Objects freed through RCU (kernfs nodes of the module's sysfs
	 * directory, for example) reach their slab some time after the
	 * unload: give deferred frees up to SLAB_SETTLE_TRIES readings to
	 * come back before calling anything a leak. A leak does not settle.
	 */
	for (settle = 0; settle < SLAB_SETTLE_TRIES; settle++) {
		if (settle)
			usleep(SLAB_SETTLE_US);
		n1 = read_slabinfo(s1, MAX_CACHES);
		worst = 0;
		worst_name = "-";
		worst_limit = SLAB_GROWTH_LIMIT;
		leaked = false;
		for (i = 0; i < n1; i++) {
			long growth = s1[i].active - slab_active(s0, n0, s1[i].name);
			long limit = slab_growth_limit(&s1[i]);

			if (growth > worst) {
				worst = growth;
				worst_name = s1[i].name;
				worst_limit = limit;
			}
			if (growth >= limit)
				leaked = true;
		}
		if (!leaked)
			break;
	}
	for (i = 0; leaked && i < n1; i++) {
		long growth = s1[i].active - slab_active(s0, n0, s1[i].name);
		long limit = slab_growth_limit(&s1[i]);

		if (growth >= limit)
			tap_diag("slab %s: %+ld active objects (limit %ld)", s1[i].name,
				 growth, limit);
	}
	tap_diag("slab readings taken: %d (every %d ms)", settle + (settle < SLAB_SETTLE_TRIES),
		 SLAB_SETTLE_US / 1000);
	tap_diag("%d reload cycles with %d buffers each: largest slab growth %ld (%s, limit %ld)",
		 CYCLES, WORK_BUFFERS, worst, worst_name, worst_limit);
	CHECK(!leaked, "slab caches grew beyond noise");
out:
	ca_close(&ca);
	if (result == TAP_PASS) {
		ret = load_both();
		CHECK(ret == 0, "final reload: %s", strerror(-ret));
	}
	free(s0);
	free(s1);
	return result;
}

#define VIRTIO_DRIVER_DIR	"/sys/bus/virtio/drivers/cenalloc"

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

static int write_attr(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, value, strlen(value)) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

/*
 * The virtio device goes away (unbind) while a buffer is alive and mapped
 * by an importer: the buffer's operations fail cleanly, releasing it later
 * is safe, and after bind the device works with the pool as it was.
 */
static enum tap_result test_device_removal_with_live_buffer(void)
{
	struct ca_buf b = { .fd = -1 };
	struct ca_pool before, after;
	char dev[256], path[384];
	uint64_t sum, len;
	int ca = -1, ct = -1, ret;
	bool unbound = false;

	if (!bound_device(dev, sizeof(dev)))
		return tap_skip("no virtio device bound to cenalloc");
	if (!ca_env_open(&ca, &ct))
		return TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	ret = ct_set_device1(ct, 0, CENALLOC_MASK_ANY, 0);
	ret = ret ? ret : ca_buf_alloc(ca, ct, 64 * CA_KIB, 0, &b);
	if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)))
		goto out;

	ret = write_attr(VIRTIO_DRIVER_DIR "/unbind", dev);
	if (!CHECK(ret == 0, "unbind %s: %s", dev, strerror(-ret)))
		goto out;
	unbound = true;
	ret = ca_checksum(ca, b.fd, &sum, &len);
	CHECK(ret < 0, "CHECKSUM without a device succeeded");
	tap_diag("CHECKSUM with the device gone: %s", strerror(-ret));
	ret = ca_create(ca, CA_PAGE_SIZE, 0);
	CHECK(ret < 0, "CREATE without a device succeeded");
	if (ret >= 0)
		close(ret);
	/* Unmap, detach and close with the device gone. */
	ca_buf_free(ct, &b);

	ret = write_attr("/sys/bus/virtio/drivers_probe", dev);
	if (ret)
		ret = write_attr(VIRTIO_DRIVER_DIR "/bind", dev);
	snprintf(path, sizeof(path), VIRTIO_DRIVER_DIR "/%s", dev);
	if (!CHECK(ret == 0 && wait_for(path, 10000), "bind %s again: %s", dev,
		   strerror(-ret)))
		goto out;
	unbound = false;
	check_donations("after bind");
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO after bind"))
		CHECK(ca_pool_same(&before, &after), "pool differs after unbind/bind");
	ret = ca_buf_alloc(ca, ct, 64 * CA_KIB, 0, &b);
	CHECK(ret == 0, "alloc after bind: %s", strerror(-ret));
out:
	ca_buf_free(ct, &b);
	if (unbound)
		write_attr(VIRTIO_DRIVER_DIR "/bind", dev);
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST_TIMEOUT("unload is refused while a buffer is alive", test_unload_refused_while_buffer_alive, 60),
	TAP_TEST_TIMEOUT("unload/reload cycles leak no pool memory and no slab objects", test_reload_without_leak, 200),
	TAP_TEST_TIMEOUT("device removal with a live buffer, then bind again", test_device_removal_with_live_buffer, 60),
};

TAP_MAIN(tests)
