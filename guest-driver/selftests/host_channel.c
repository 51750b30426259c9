// SPDX-License-Identifier: GPL-2.0
/* The host request channel (host_channel.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "host_channel.h"
#include "sysfs_util.h"

#define HOST_CHANNEL_TTY	"/dev/ttyS2"
#define HOST_LINE_MAX		512

static pthread_mutex_t host_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned int host_next_id;

static int host_open(void)
{
	struct termios tio;
	int fd;

	fd = open(HOST_CHANNEL_TTY, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return -ENODEV;
	if (tcgetattr(fd, &tio)) {
		close(fd);
		return -ENODEV;
	}
	cfmakeraw(&tio);
	tio.c_cc[VMIN] = 0;
	tio.c_cc[VTIME] = 0;
	if (tcsetattr(fd, TCSANOW, &tio)) {
		close(fd);
		return -ENODEV;
	}
	/* Stale bytes of an earlier, timed-out request. */
	tcflush(fd, TCIFLUSH);
	return fd;
}

static long long host_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Read lines until the reply to @id; 0/1 as ca_host_request(). */
static int host_wait_reply(int fd, unsigned int id, char *reply,
			   size_t reply_len, int timeout_s)
{
	long long deadline = host_now_ms() + timeout_s * 1000LL;
	char line[HOST_LINE_MAX], prefix[64], *text;
	size_t used = 0;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	ssize_t n;
	int ret;

	snprintf(prefix, sizeof(prefix), "CENALLOC-HOST-REPLY %u ", id);
	for (;;) {
		long long left = deadline - host_now_ms();

		if (left <= 0)
			return -ETIMEDOUT;
		ret = poll(&pfd, 1, (int)left);
		if (ret < 0 && errno == EINTR)
			continue;
		if (ret < 0)
			return -errno;
		if (!ret)
			return -ETIMEDOUT;
		n = read(fd, line + used, 1);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		if (line[used] == '\r')
			continue;
		if (line[used] != '\n') {
			if (used < sizeof(line) - 1)
				used++;
			continue;
		}
		line[used] = '\0';
		used = 0;
		if (strncmp(line, prefix, strlen(prefix)))
			continue;	/* a reply to an older request */
		text = line + strlen(prefix);
		ret = 1;
		if (!strncmp(text, "ok", 2) && (text[2] == ' ' || !text[2]))
			ret = 0;
		text = strchr(text, ' ');
		if (reply && reply_len)
			snprintf(reply, reply_len, "%s", text ? text + 1 : "");
		return ret;
	}
}

int ca_host_request(char *reply, size_t reply_len, int timeout_s,
		    const char *fmt, ...)
{
	char request[HOST_LINE_MAX - 64], line[HOST_LINE_MAX];
	unsigned int id;
	va_list ap;
	int fd, len, ret;

	va_start(ap, fmt);
	vsnprintf(request, sizeof(request), fmt, ap);
	va_end(ap);
	if (strchr(request, '\n'))
		return -EINVAL;

	pthread_mutex_lock(&host_lock);
	fd = host_open();
	if (fd < 0) {
		pthread_mutex_unlock(&host_lock);
		return fd;
	}
	/* Unique across the processes of one run (every TAP test forks). */
	if (!host_next_id)
		host_next_id = (unsigned int)getpid() << 8;
	id = host_next_id++;
	len = snprintf(line, sizeof(line), "CENALLOC-HOST %u %s\n", id, request);
	if (write(fd, line, len) != len) {
		ret = -EIO;
	} else {
		tcdrain(fd);
		ret = host_wait_reply(fd, id, reply, reply_len, timeout_s);
	}
	close(fd);
	pthread_mutex_unlock(&host_lock);
	return ret;
}

bool ca_host_available(void)
{
	static int known = -1;

	if (known < 0)
		known = ca_host_request(NULL, 0, 20, "hello") == 0;
	return known;
}

bool ca_host_fault(const char *spec)
{
	char reply[256] = "";
	int ret = ca_host_request(reply, sizeof(reply), 20, "fault %s", spec);

	return CHECK(ret == 0, "fault %s: %d (%s)", spec, ret, reply);
}

enum tap_result ca_host_need_faults(void)
{
	char reply[256] = "";

	if (!ca_host_available())
		return tap_skip("no host request channel (not started by run-vm)");
	if (ca_host_request(reply, sizeof(reply), 20, "fault none"))
		return tap_skip("no fault injection: %s", reply);
	if (!debugfs_ready())
		return tap_skip("no debugfs");
	return TAP_PASS;
}
