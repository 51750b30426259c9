// SPDX-License-Identifier: GPL-2.0
/*
 * A back-end that dies: the launcher SIGKILLs cenallocd (host verb
 * kill-daemon, the holder of cenallocd --supervise included) while a guest
 * task waits on a map. QEMU keeps the device, but nothing answers any
 * more. The waiting map must return an error within timeout_ms, later
 * calls fail at once, and every fd closes without waiting.
 *
 * Then the recovery qemu-scripts/README.md gives, when the launcher was
 * asked for it (run-vm --replug; host verb replug): the dead device
 * hot-unplugged (the driver's remove of a broken device), a new cenallocd
 * and a new device on the same PCIe root port. The driver probes it and
 * /dev/cenalloc works again: a buffer created, attached, mapped, written
 * and read by the guest and by the device, freed. The unplug and ready
 * times are printed.
 *
 * Last, cenalloc unloads, and no task sat in uninterruptible sleep long
 * enough for the hung-task detector (set to a few seconds here) to report
 * it.
 *
 * It kills the back-end for the rest of the boot (or replaces it), so it
 * runs after every other selftest (guest-init runs test_final_* last) and
 * leaves cenalloc unloaded. Skipped without the host request channel.
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
/* Written once the back-end was killed: the hung-task reports before. */
#define KILLED_PATH	"/tmp/cenalloc-final-killed"
/* Bounds of the recovery: the host's steps, then the new device. */
#define REPLUG_HOST_S	150
#define REPLUG_READY_MS	60000
#define REPLUG_SIZE	(256 * CA_KIB)

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

/* The back-end was killed by the first test: true, and the hung-task
 * reports there were before the kill.
 */
static bool killed_before(int *hung)
{
	FILE *f = fopen(KILLED_PATH, "r");
	bool ok;

	if (!f)
		return false;
	ok = fscanf(f, "%d", hung) == 1;
	fclose(f);
	return ok;
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
	if (CHECK(ret == 0, "kill-daemon: %d (%s)", ret, reply)) {
		FILE *f = fopen(KILLED_PATH, "w");

		CHECK(f && fprintf(f, "%d\n", hung) > 0 && fclose(f) == 0,
		      "%s: %s", KILLED_PATH, strerror(errno));
	}
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
	return TAP_PASS;
out:
	if (pinned >= 0)
		close(pinned);
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * The README's recovery, done by the launcher (host verb replug): the dead
 * device unplugged while cenalloc is bound to it, a new cenallocd, a new
 * device on the same root port. Then /dev/cenalloc must serve the new
 * device within REPLUG_READY_MS, and work.
 */
static enum tap_result test_replug(void)
{
	static struct ct_mapping m;
	struct ca_pool before, after;
	uint64_t start, replugged, node, sum = 0, len = 0;
	char reply[512] = "";
	int ca = -1, ct = -1, buf = -1, ret, hung, last = 0;
	uint32_t handle;
	bool attached = false, mapped = false;
	uint8_t *p = NULL;

	if (!ca_host_available())
		return tap_skip("no host request channel (not started by run-vm)");
	if (!killed_before(&hung))
		return tap_skip("the back-end was not killed (the test before did not get there)");
	ca = ca_open();
	if (!CHECK(ca >= 0, "open %s: %s", CA_DEVICE_PATH, strerror(-ca)))
		return TAP_FAIL;
	/* The dead device still answers nothing. */
	ret = ca_create(ca, REPLUG_SIZE, 0);
	CHECK(ret == -EIO, "a buffer of the dead device: %d, want -EIO", ret);
	if (ret >= 0)
		close(ret);

	/* The new daemon reads the fault file the dead one did: no lies. */
	if (!CHECK(ca_host_request(reply, sizeof(reply), 20, "fault none") == 0,
		   "fault none: %s", reply))
		goto out;

	start = ca_now_ns();
	ret = ca_host_request(reply, sizeof(reply), REPLUG_HOST_S, "replug");
	if (ret == 1 && strstr(reply, "not enabled")) {
		close(ca);
		return tap_skip("the launcher does no hot-plug recovery here (run-vm --replug)");
	}
	if (!CHECK(ret == 0, "replug: %d (%s)", ret, reply))
		goto out;
	replugged = ms_since(start);
	tap_diag("the host's recovery: %s", reply);

	/* The new device: probed, published to /dev/cenalloc (the open file
	 * looks the device up at each call).
	 */
	start = ca_now_ns();
	for (;;) {
		ret = ca_create(ca, REPLUG_SIZE, 0);
		if (ret >= 0 || ms_since(start) > REPLUG_READY_MS)
			break;
		if (ret != last)
			tap_diag("waiting for the new device: %s", strerror(-ret));
		last = ret;
		usleep(20000);
	}
	node = ms_since(start);
	if (!CHECK(ret >= 0, "no new device within %d ms: %s", REPLUG_READY_MS,
		   strerror(-ret)))
		goto out;
	close(ret);
	tap_diag("replug: %llu ms from the request to the host's answer, the new device served a buffer %llu ms later",
		 (unsigned long long)replugged, (unsigned long long)node);
	CHECK(ca_transport_value("broken") == 0, "the new device is not broken");

	/* It works: create, attach, map, bytes both ways, free. */
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	buf = ca_create(ca, REPLUG_SIZE, 0);
	if (!CHECK(buf >= 0, "create: %s", strerror(-buf)))
		goto out;
	ct = ct_open();
	if (!CHECK(ct >= 0, "open %s: %s", CT_DEVICE_PATH, strerror(-ct)))
		goto out;
	if (!CHECK(ct_set_device1(ct, 0, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE"))
		goto out;
	ret = ct_attach(ct, buf, 0, &handle, NULL);
	if (!CHECK(ret == 0, "attach: %s", strerror(-ret)))
		goto out;
	attached = true;
	ret = ct_map(ct, handle, 0, &m);
	if (!CHECK(ret == 0, "map: %s", strerror(-ret)))
		goto out;
	mapped = true;
	CHECK(ct_mapping_bytes(&m) == REPLUG_SIZE, "mapped %llu bytes",
	      (unsigned long long)ct_mapping_bytes(&m));
	p = ca_mmap(buf, REPLUG_SIZE);
	if (!CHECK(p, "mmap: %s", strerror(errno)))
		goto out;
	CHECK(ca_first_nonzero(p, REPLUG_SIZE) == REPLUG_SIZE, "a new buffer reads as zeros");
	CHECK(ca_cpu_access(buf, true) == 0, "SYNC start");
	ca_pattern_fill(p, REPLUG_SIZE, 42);
	CHECK(ca_cpu_access(buf, false) == 0, "SYNC end");
	ret = ca_checksum(ca, buf, &sum, &len);
	CHECK(ret == 0 && len == REPLUG_SIZE && sum == ca_fnv1a64(p, REPLUG_SIZE),
	      "the device reads what the guest wrote: %s, %llu bytes",
	      strerror(-ret), (unsigned long long)len);
	ret = ca_fill(ca, buf, 43);
	CHECK(ret == 0, "FILL: %s", strerror(-ret));
	CHECK(ca_cpu_access(buf, true) == 0, "SYNC start");
	CHECK(ca_pattern_check(p, REPLUG_SIZE, 43) == REPLUG_SIZE,
	      "the guest reads what the device wrote");
	CHECK(ca_cpu_access(buf, false) == 0, "SYNC end");
out:
	if (p)
		munmap(p, REPLUG_SIZE);
	if (mapped)
		ct_unmap(ct, handle);
	if (attached)
		ct_detach(ct, handle);
	if (buf >= 0) {
		close(buf);
		/* Freed: the pools are as before it. */
		if (mapped && CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
			CHECK(ca_pool_same(&before, &after), "the pools after the buffer's free");
	}
	ca_close(&ct);
	ca_close(&ca);
	return TAP_PASS;
}

/* cenalloc unloads after all that, and nobody hung on the way. */
static enum tap_result test_unload(void)
{
	uint64_t start;
	int ret, hung;

	if (!killed_before(&hung))
		return tap_skip("the back-end was not killed (the first test did not get there)");
	/* The modules unload (remove resets the device: the dead one, or the
	 * one plugged by the recovery).
	 */
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
}

static const struct tap_test tests[] = {
	TAP_TEST_TIMEOUT("a killed back-end: errors within the timeout, fds close",
			 test_dead_daemon, 100),
	TAP_TEST_TIMEOUT("hot-plug recovery: the dead device unplugged, a new daemon's device works",
			 test_replug, REPLUG_HOST_S + 60),
	TAP_TEST_TIMEOUT("cenalloc unloads, no task hung", test_unload, 60),
};

TAP_MAIN(tests)
