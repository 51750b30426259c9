// SPDX-License-Identifier: GPL-2.0
/*
 * A back-end that dies: the launcher SIGKILLs cenallocd (host verb
 * kill-daemon) while a guest task waits on a map. QEMU keeps the device,
 * but nothing answers any more. The waiting map must return an error
 * within timeout_ms, later calls fail at once, every fd closes without
 * waiting, cenalloc unloads, and no task sits in uninterruptible sleep
 * long enough for the hung-task detector (set to a few seconds here) to
 * report it.
 *
 * It kills the back-end for the rest of the boot, so it runs after every
 * other selftest (guest-init runs test_final_* last) and leaves cenalloc
 * unloaded. Skipped without the host request channel.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ca_module.h"
#include "cenalloc_util.h"
#include "host_channel.h"
#include "tap.h"

#define SIZE		(64 * CA_KIB)
#define TIMEOUT_MS	2000
#define HUNG_TASK_S	"3"
#define HUNG_TASK_PATH	"/proc/sys/kernel/hung_task_timeout_secs"

static bool write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	bool ok;

	if (fd < 0)
		return false;
	ok = write(fd, value, strlen(value)) == (ssize_t)strlen(value);
	close(fd);
	return ok;
}

static int unload(const char *name)
{
	int tries;

	for (tries = 0; tries < 50; tries++) {
		if (syscall(SYS_delete_module, name, O_NONBLOCK) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EBUSY)
			return -errno;
		usleep(100000);
	}
	return -errno;
}

static uint64_t ms_since(uint64_t start)
{
	return (ca_now_ns() - start) / 1000000;
}

static enum tap_result test_dead_daemon(void)
{
	static struct ct_mapping m;
	int ca, ct, pinned, waiting, later, pipefd[2], status, ret, hung;
	char reply[256] = "", c;
	uint32_t hp, hw, hl;
	uint64_t start, took, sum, len;
	uint8_t *p;
	pid_t pid;

	if (!ca_host_available())
		return tap_skip("no host request channel (not started by run-vm)");
	if (ca_host_request(reply, sizeof(reply), 20, "fault none"))
		return tap_skip("no fault injection to hold a map: %s", reply);
	/* A driver without the parameter waits forever: that is the bug. */
	CHECK(ca_param_write("timeout_ms", "2000") == 0, "timeout_ms");
	/* The maps here must wait for the device: no leased first maps
	 * (cenalloc is unloaded at the end, nothing to restore).
	 */
	if (ca_param_write("lease_stock", "0"))
		tap_diag("no lease_stock parameter: a leased map would not wait");
	if (!write_file(HUNG_TASK_PATH, HUNG_TASK_S))
		tap_diag("no hung-task detector (%s): D state not watched", HUNG_TASK_PATH);
	hung = ca_kmsg_count("blocked for more than");
	if (!ca_env_open_device(&ca, &ct, 0, CENALLOC_MASK_ANY))
		return TAP_FAIL;

	/* A buffer mapped by the CPU and an importer before the death. */
	pinned = ca_create(ca, SIZE, 0);
	if (!CHECK(pinned >= 0 && ct_attach(ct, pinned, 0, &hp, NULL) == 0 &&
		   ct_map(ct, hp, 0, &m) == 0, "a mapped buffer"))
		goto out;
	p = ca_mmap(pinned, SIZE);
	if (!CHECK(p, "mmap"))
		goto out;
	ca_pattern_fill(p, SIZE, 7);

	/* A map that the device holds (slow) when it dies. */
	if (!CHECK(pipe(pipefd) == 0, "pipe"))
		goto out;
	if (!CHECK(ca_host_request(reply, sizeof(reply), 20, "fault slow:10000") == 0,
		   "fault slow: %s", reply))
		goto out;
	pid = fork();
	if (pid == 0) {
		uint64_t t0;

		close(pipefd[0]);
		waiting = ca_create(ca, SIZE, 0);
		if (waiting < 0 || ct_attach(ct, waiting, 0, &hw, NULL))
			_exit(100);
		if (write(pipefd[1], "x", 1) != 1)
			_exit(101);
		t0 = ca_now_ns();
		ret = ct_map(ct, hw, 0, &m);
		printf("# the waiting map returned %d (%s) after %llu ms\n", ret,
		       strerror(-ret), (unsigned long long)ms_since(t0));
		fflush(stdout);
		/* An error, within the timeout (and some slack for TCG). */
		_exit(ret < 0 && ms_since(t0) < TIMEOUT_MS + 2000 ? 0 : 1);
	}
	close(pipefd[1]);
	CHECK(read(pipefd[0], &c, 1) == 1, "the child is about to map");
	close(pipefd[0]);
	usleep(300000);
	ret = ca_host_request(reply, sizeof(reply), 20, "kill-daemon");
	CHECK(ret == 0, "kill-daemon: %d (%s)", ret, reply);
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "the waiting map failed within the timeout (status %#x)", status);

	/* Later calls fail at once. */
	start = ca_now_ns();
	later = ca_create(ca, SIZE, 0);
	CHECK(later == -EIO, "a new buffer: %d, want -EIO", later);
	if (later >= 0)
		close(later);
	ret = ct_attach(ct, pinned, 1, &hl, NULL);
	CHECK(ret == -EIO, "a late attach: %d, want -EIO", ret);
	if (!ret)
		ct_detach(ct, hl);
	ret = ca_checksum(ca, pinned, &sum, &len);
	CHECK(ret == -EIO, "CHECKSUM: %d, want -EIO", ret);
	took = ms_since(start);
	CHECK(took < 500, "failing took %llu ms", (unsigned long long)took);
	CHECK(ca_transport_value("broken") == 1, "the device is marked broken");
	/* The CPU mapping made before still shows the buffer. */
	CHECK(ca_pattern_check(p, SIZE, 7) == SIZE, "the CPU mapping survives");

	/* Every fd closes, without waiting for the device. */
	start = ca_now_ns();
	munmap(p, SIZE);
	ct_unmap(ct, hp);
	ct_detach(ct, hp);
	close(pinned);
	pinned = -1;
	ca_env_close(&ca, &ct, NULL);
	took = ms_since(start);
	CHECK(took < 1000, "closing everything took %llu ms", (unsigned long long)took);

	/* The modules unload (remove resets the dead device). */
	start = ca_now_ns();
	ret = unload("cenalloc_test");
	CHECK(ret == 0, "rmmod cenalloc_test: %s", strerror(-ret));
	ret = unload("cenalloc");
	CHECK(ret == 0, "rmmod cenalloc: %s", strerror(-ret));
	tap_diag("unloading took %llu ms", (unsigned long long)ms_since(start));

	/* Nobody sat in D state past the hung-task timeout. */
	sleep(atoi(HUNG_TASK_S) + 1);
	CHECK(ca_kmsg_count("blocked for more than") == hung, "no hung-task report");
	CHECK(ca_kmsg_count("device marked broken") >= 1, "the kernel log says why");
	return TAP_PASS;
out:
	if (pinned >= 0)
		close(pinned);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST_TIMEOUT("a killed back-end: errors within the timeout, fds close, rmmod works",
			 test_dead_daemon, 100),
};

TAP_MAIN(tests)
