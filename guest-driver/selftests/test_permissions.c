// SPDX-License-Identifier: GPL-2.0
/*
 * Least privilege of the UAPI: the device nodes' modes (/dev/cenalloc 0660,
 * the test importer 0600), PHYS only for CAP_SYS_ADMIN or the phys_gid
 * group, FILL only through a writable fd and CHECKSUM through a readable
 * one, and the per-user limits of CREATE (user_buffers, user_percent:
 * -EDQUOT), which root (CAP_SYS_RESOURCE) does not have. The unprivileged
 * side runs in a child that dropped to uid/gid 1000 (or 1001) after
 * opening /dev/cenalloc as root.
 */
#define _GNU_SOURCE		/* setresuid, setresgid */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ca_module.h"
#include "cenalloc_util.h"
#include "tap.h"

#define SIZE		(64 * CA_KIB)
#define USER		1000
#define OTHER_USER	1001

/* Drop to @id (uid and gid, no supplementary groups, no capabilities). */
static bool drop_to(unsigned int id)
{
	return setgroups(0, NULL) == 0 && setresgid(id, id, id) == 0 &&
	       setresuid(id, id, id) == 0;
}

/*
 * Runs @fn(@ca, @arg) in a child dropped to user @id; the child's exit
 * status is @fn's result (0 for success).
 */
static int as_user(unsigned int id, int ca, int (*fn)(int ca, long arg), long arg)
{
	int status;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (!drop_to(id))
			_exit(99);
		_exit(fn(ca, arg));
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -ECHILD;
	return WEXITSTATUS(status);
}

static bool param(const char *name, const char *value)
{
	int ret = ca_param_write(name, value);

	return CHECK(ret == 0, "%s=%s: %s", name, value, strerror(-ret));
}

static enum tap_result test_node_modes(void)
{
	struct stat st;

	if (!CHECK(stat(CA_DEVICE_PATH, &st) == 0, "stat %s", CA_DEVICE_PATH))
		return TAP_FAIL;
	CHECK((st.st_mode & 0777) == 0660, "%s mode %o, want 660", CA_DEVICE_PATH,
	      st.st_mode & 0777);
	if (stat(CT_DEVICE_PATH, &st))
		return TAP_PASS;	/* no test importer loaded */
	CHECK((st.st_mode & 0777) == 0600, "%s mode %o, want 600 (test only)",
	      CT_DEVICE_PATH, st.st_mode & 0777);
	return TAP_PASS;
}

/* PHYS of @arg (a buffer fd): 0 when allowed, 1 for -EPERM, 2 otherwise. */
static int phys_as_user(int ca, long arg)
{
	uint64_t addr, len;
	int ret = ca_phys(ca, (int)arg, &addr, &len);

	return ret == 0 ? 0 : ret == -EPERM ? 1 : 2;
}

static enum tap_result test_phys_needs_privilege(void)
{
	char gid[16];
	uint64_t addr, len;
	int ca, buf, ret;
	void *p;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	/* A contiguous buffer with backing (the CPU mapping allocates it). */
	buf = ca_create(ca, SIZE, CENALLOC_KIND_CONTIG);
	if (!CHECK(buf >= 0, "CREATE: %s", strerror(-buf)))
		goto out;
	p = ca_mmap(buf, SIZE);
	if (!CHECK(p, "mmap: %s", strerror(errno)))
		goto out_buf;
	ret = ca_phys(ca, buf, &addr, &len);
	CHECK(ret == 0 && len == SIZE, "root: PHYS %d", ret);
	ret = as_user(USER, ca, phys_as_user, buf);
	CHECK(ret == 1, "uid %d without phys_gid: %d, want -EPERM", USER, ret);
	snprintf(gid, sizeof(gid), "%d", USER);
	if (param("phys_gid", gid)) {
		ret = as_user(USER, ca, phys_as_user, buf);
		CHECK(ret == 0, "uid %d in phys_gid %d: %d, want allowed", USER, USER, ret);
		ret = as_user(OTHER_USER, ca, phys_as_user, buf);
		CHECK(ret == 1, "uid %d not in phys_gid: %d, want -EPERM", OTHER_USER, ret);
		param("phys_gid", "-1");
	}
	munmap(p, SIZE);
out_buf:
	close(buf);
out:
	ca_close(&ca);
	return TAP_PASS;
}

/* A dma-buf fd that is read-only (CREATE without CENALLOC_CREATE_RDWR). */
static int create_read_only(int ca, uint64_t size)
{
	struct cenalloc_create_arg arg = {
		.size = size,
		.flags = CENALLOC_CREATE_CLOEXEC,
	};

	return ioctl(ca, CENALLOC_IOC_CREATE, &arg) ? -errno : arg.fd;
}

static enum tap_result test_fill_needs_a_writable_fd(void)
{
	uint64_t sum, len;
	int ca, ro, rw, ret;
	void *p;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	ro = create_read_only(ca, SIZE);
	rw = ca_create(ca, SIZE, 0);
	if (!CHECK(ro >= 0 && rw >= 0, "CREATE: %d %d", ro, rw))
		goto out;
	CHECK((fcntl(ro, F_GETFL) & O_ACCMODE) == O_RDONLY, "a read-only fd");
	/* Backing for both, through read-only CPU mappings. */
	p = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, ro, 0);
	CHECK(p != MAP_FAILED, "mmap read-only: %s", strerror(errno));
	if (p != MAP_FAILED)
		munmap(p, SIZE);
	p = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, rw, 0);
	CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
	if (p != MAP_FAILED)
		munmap(p, SIZE);
	ret = ca_fill(ca, ro, 1);
	CHECK(ret == -EBADF, "FILL through a read-only fd: %d, want -EBADF", ret);
	ret = ca_checksum(ca, ro, &sum, &len);
	CHECK(ret == 0 && len == SIZE, "CHECKSUM through a read-only fd: %d", ret);
	ret = ca_fill(ca, rw, 1);
	CHECK(ret == 0, "FILL through a writable fd: %d", ret);
out:
	if (ro >= 0)
		close(ro);
	if (rw >= 0)
		close(rw);
	ca_close(&ca);
	return TAP_PASS;
}

/*
 * Creates buffers of @arg bytes until one fails: exit status is the number
 * created (at most 50), plus 100 if the failure was -EDQUOT.
 */
static int create_until_refused(int ca, long arg)
{
	int count = 0, fd;

	for (;;) {
		fd = ca_create(ca, (uint64_t)arg, 0);
		if (fd < 0)
			return count + (fd == -EDQUOT ? 100 : 0);
		if (++count == 50)
			return count;
	}
}

#define ALLOCATORS_PATH		CA_ALLOCATORS_PATH

/* Value of the line "@name N" of debugfs allocators, -1 if missing. */
static long long allocators_value(const char *name)
{
	return ca_file_value(ALLOCATORS_PATH, name);
}

/* Sum of "pool<i>_donated" over the pools: the memory donated now. */
static long long pools_donated(void)
{
	long long sum = 0, v;
	char name[32];
	int i;

	for (i = 0; i < CA_MAX_ALLOCATORS; i++) {
		snprintf(name, sizeof(name), "pool%d_donated", i);
		v = allocators_value(name);
		if (v < 0)
			break;
		sum += v;
	}
	return i ? sum : -1;
}

static uint64_t page_round(uint64_t bytes)
{
	return bytes & ~(CA_PAGE_SIZE - 1);
}

/*
 * Creates buffers of at most 64 MiB until they hold @arg bytes in all:
 * exit status 0, or 100 + the buffers made when one got -EDQUOT, or 200 +
 * the buffers made on another error. All go when the process exits.
 */
static int create_total(int ca, long arg)
{
	uint64_t left = (uint64_t)arg, size;
	int count = 0, fd;

	while (left) {
		size = left < 64 * CA_MIB ? left : 64 * CA_MIB;
		fd = ca_create(ca, size, 0);
		if (fd < 0)
			return (fd == -EDQUOT ? 100 : 200) + (count > 50 ? 50 : count);
		count++;
		left -= size;
	}
	return 0;
}

static bool drop_caches(void)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	bool ok;

	if (fd < 0)
		return false;
	ok = write(fd, "2", 1) == 1;
	close(fd);
	return ok;
}

/*
 * The byte limit follows what the pools may grow to, not what they hold
 * now: elastic pools donate little at probe (the default layout 8 MiB),
 * and a limit of 50 % of that capped every unprivileged user near 4 MiB
 * until someone privileged made the pools grow, and again after every
 * shrink. With the default user_percent (50) an unprivileged user may now
 * create more than half of what is donated, as long as it stays within
 * half of what the pools may hold; after a shrink as well; and once its
 * buffers are gone, again.
 */
static enum tap_result test_byte_limit_follows_pool_growth(void)
{
	long long donated, limit;
	uint64_t want;
	int ca, ret;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	if (!param("user_percent", "50") || !param("user_buffers", "4096"))
		goto out;
	/* Start from the probe-time donation: an earlier test may have grown it. */
	CHECK(drop_caches(), "drop_caches");
	donated = pools_donated();
	limit = allocators_value("pools_limit");
	if (!CHECK(donated > 0 && limit > 0, "debugfs: donated %lld, pools_limit %lld",
		   donated, limit))
		goto out;
	tap_diag("pools: %lld bytes donated now, %lld at most", donated, limit);
	if (limit < donated + donated / 4) {
		ca_close(&ca);
		return tap_skip("the pools cannot grow (%lld bytes donated, %lld at most)",
				donated, limit);
	}
	/* Between half of the donation (the old limit) and half of the most. */
	want = page_round((uint64_t)(donated / 2 + limit / 2) / 2);
	ret = as_user(USER, ca, create_total, (long)want);
	CHECK(ret == 0, "uid %d: %llu bytes (%lld donated, at most %lld): status %d, want 0",
	      USER, (unsigned long long)want, donated, limit, ret);
	/* Again: the first child's buffers went with it. */
	ret = as_user(USER, ca, create_total, (long)want);
	CHECK(ret == 0, "uid %d again: status %d", USER, ret);
	/* Beyond half of the most: -EDQUOT, and it recovers. */
	ret = as_user(USER, ca, create_total, (long)page_round(limit / 2 + 64 * CA_MIB));
	CHECK(ret >= 100 && ret < 200, "uid %d: more than half of the pools' most: status %d, want -EDQUOT",
	      USER, ret);
	CHECK(drop_caches(), "drop_caches");
	ret = as_user(USER, ca, create_total, (long)want);
	CHECK(ret == 0, "uid %d after the -EDQUOT and a shrink: status %d", USER, ret);
out:
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_per_user_limits(void)
{
	int ca, ret, i, fds[5];
	long long limit;

	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	if (!param("user_buffers", "3"))
		goto out;
	ret = as_user(USER, ca, create_until_refused, SIZE);
	CHECK(ret == 103, "uid %d: %d buffers, then -EDQUOT (status %d)", USER,
	      ret % 100, ret);
	/* Its buffers went with the child: the count is free again. */
	ret = as_user(USER, ca, create_until_refused, SIZE);
	CHECK(ret == 103, "uid %d again: status %d", USER, ret);
	ret = as_user(OTHER_USER, ca, create_until_refused, SIZE);
	CHECK(ret == 103, "uid %d has its own limit: status %d", OTHER_USER, ret);
	/* Root is not limited. */
	for (i = 0; i < 5; i++) {
		fds[i] = ca_create(ca, SIZE, 0);
		CHECK(fds[i] >= 0, "root buffer %d: %s", i, strerror(-fds[i]));
	}
	for (i = 0; i < 5; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	param("user_buffers", "4096");

	/* Bytes: 1 % of what the pools may hold (debugfs pools_limit). */
	limit = allocators_value("pools_limit");
	if (CHECK(limit > 0, "no pools_limit in %s", ALLOCATORS_PATH) &&
	    param("user_percent", "1")) {
		ret = as_user(USER, ca, create_until_refused,
			      (long)page_round(limit / 50));
		CHECK(ret == 100, "uid %d: a buffer of 2 %% of the pools: status %d, want -EDQUOT",
		      USER, ret);
		ret = as_user(USER, ca, create_until_refused,
			      (long)page_round(limit / 400));
		CHECK(ret == 104 || ret == 103,
		      "uid %d: buffers of 0.25 %%: about 4, then -EDQUOT (status %d)",
		      USER, ret);
		param("user_percent", "50");
	}
out:
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("device nodes: /dev/cenalloc 0660, the test importer 0600", test_node_modes),
	TAP_TEST("PHYS needs CAP_SYS_ADMIN or the phys_gid group", test_phys_needs_privilege),
	TAP_TEST("FILL needs a writable fd, CHECKSUM a readable one",
		 test_fill_needs_a_writable_fd),
	TAP_TEST("per-user buffer and byte limits: -EDQUOT, root exempt",
		 test_per_user_limits),
	TAP_TEST("the per-user byte limit follows what the pools may grow to",
		 test_byte_limit_follows_pool_growth),
};

TAP_MAIN(tests)
