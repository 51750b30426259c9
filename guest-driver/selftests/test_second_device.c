// SPDX-License-Identifier: GPL-2.0
/*
 * One cenalloc device is served at a time: with a second one (run-vm
 * --devices 2, as test-all boots the guest), exactly one is bound and the
 * other is refused at probe before it takes any memory. The kernel log
 * accounts for it: every probe that succeeded logs one line per pool of
 * its config space ("donated ... MiB in ..." or "donation failed"), and a
 * refused device logs none (the old driver donated the second device's
 * pools, then refused it, and that memory was gone).
 *
 * Skipped with fewer than two virtio devices of ID 37.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "tap.h"

#define VIRTIO_DEVICES	"/sys/bus/virtio/devices"

/* Devices of ID 37 and how many of them cenalloc drives. */
static void count_devices(int *devices, int *bound)
{
	char path[512], value[32], link[256];
	struct dirent *e;
	ssize_t n;
	FILE *f;
	DIR *d;

	*devices = *bound = 0;
	d = opendir(VIRTIO_DEVICES);
	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), VIRTIO_DEVICES "/%s/device", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (!fgets(value, sizeof(value), f) || strtol(value, NULL, 0) != 37) {
			fclose(f);
			continue;
		}
		fclose(f);
		(*devices)++;
		snprintf(path, sizeof(path), VIRTIO_DEVICES "/%s/driver", e->d_name);
		n = readlink(path, link, sizeof(link) - 1);
		if (n > 0) {
			link[n] = 0;
			if (!strcmp(strrchr(link, '/') ? strrchr(link, '/') + 1 : link,
				    "cenalloc"))
				(*bound)++;
		}
	}
	closedir(d);
}

/*
 * From the kernel log: the pools of the probes that succeeded
 * ("N allocators, P pools, max batch B") and the pool lines logged.
 */
static bool pool_accounting(long *expected, long *logged)
{
	int size = klogctl(10, NULL, 0);	/* SYSLOG_ACTION_SIZE_BUFFER */
	char *buf, *line, *end, *hit;
	unsigned int allocators, pools;
	int n;

	*expected = *logged = 0;
	if (size <= 0)
		return false;
	buf = malloc((size_t)size + 1);
	if (!buf)
		return false;
	n = klogctl(3, buf, size);		/* SYSLOG_ACTION_READ_ALL */
	if (n < 0) {
		free(buf);
		return false;
	}
	buf[n] = 0;
	for (line = buf; line < buf + n; line = end + 1) {
		end = strchr(line, '\n');
		if (!end)
			end = buf + n;
		*end = 0;
		hit = strstr(line, " allocators, ");
		if (hit) {
			while (hit > line && hit[-1] >= '0' && hit[-1] <= '9')
				hit--;
			if (sscanf(hit, "%u allocators, %u pools", &allocators,
				   &pools) == 2)
				*expected += pools;
		}
		if (strstr(line, "cenalloc: pool ") &&
		    (strstr(line, " MiB in ") || strstr(line, "donation failed")))
			(*logged)++;
	}
	free(buf);
	return true;
}

static enum tap_result test_one_device_served(void)
{
	long expected, logged;
	int devices, bound;

	count_devices(&devices, &bound);
	if (devices < 2)
		return tap_skip("%d cenalloc device(s): run-vm --devices 2 makes two",
				devices);
	CHECK(bound == 1, "%d of %d devices bound to cenalloc", bound, devices);
	CHECK(ca_kmsg_count("only one cenalloc device is served") >= 1,
	      "the refusal is logged");
	if (!CHECK(pool_accounting(&expected, &logged), "kernel log"))
		return TAP_FAIL;
	CHECK(logged == expected,
	      "%ld pool donations logged, the served probes account for %ld",
	      logged, expected);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("a second device is refused before it takes memory",
		 test_one_device_served),
};

TAP_MAIN(tests)
