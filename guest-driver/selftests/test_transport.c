// SPDX-License-Identifier: GPL-2.0
/*
 * The control queue transport (debugfs cenalloc/transport and the poll_us
 * module parameter): posted UNMAP/DETACH/FREE wait for the next kick but
 * still reach the device on their own, an answer is polled for without an
 * interrupt, and with poll_us=0 the interrupt path still serves every
 * request. Counts only, no timing. The cycles use 128 KiB buffers: above
 * the sizes the driver leases, so that every first map waits for the
 * device (test_lease covers the maps that do not).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ca_module.h"
#include "cenalloc_util.h"
#include "tap.h"

#define POLL_PARAM_PATH	"/sys/module/cenalloc/parameters/poll_us"
#define CYCLES		50
#define CYCLE_SIZE	(128 * CA_KIB)

struct transport {
	long long kicks, interrupts, chains_sent, chains_done;
	long long polls, polled, poll_expired, poll_yielded;
};

static bool transport_read(struct transport *t)
{
	char text[4096];
	ssize_t n;
	int fd;

	fd = open(CA_TRANSPORT_PATH, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n <= 0)
		return false;
	text[n] = 0;
	t->kicks = ca_text_value(text, "kicks");
	t->interrupts = ca_text_value(text, "interrupts");
	t->chains_sent = ca_text_value(text, "chains_sent");
	t->chains_done = ca_text_value(text, "chains_done");
	t->polls = ca_text_value(text, "polls");
	t->polled = ca_text_value(text, "polled");
	t->poll_expired = ca_text_value(text, "poll_expired");
	t->poll_yielded = ca_text_value(text, "poll_yielded");
	return t->kicks >= 0 && t->interrupts >= 0 && t->chains_sent >= 0 &&
	       t->chains_done >= 0 && t->polls >= 0 && t->polled >= 0 &&
	       t->poll_expired >= 0 && t->poll_yielded >= 0;
}

/* Opens the devices, device 0 with mask ANY; TAP_SKIP without debugfs. */
static enum tap_result setup(int *ca, int *ct)
{
	struct transport t;

	*ca = *ct = -1;
	if (access(CA_TRANSPORT_PATH, R_OK | W_OK) || access(POLL_PARAM_PATH, W_OK))
		return tap_skip("no %s or %s", CA_TRANSPORT_PATH, POLL_PARAM_PATH);
	if (!ca_env_open(ca, ct))
		return TAP_FAIL;
	if (!CHECK(ct_set_device1(*ct, 0, CENALLOC_MASK_ANY, 0) == 0, "SET_DEVICE") ||
	    !CHECK(ca_transport_reset(), "reset %s: %s", CA_TRANSPORT_PATH, strerror(errno)) ||
	    !CHECK(transport_read(&t), "read %s", CA_TRANSPORT_PATH))
		return TAP_FAIL;
	return TAP_PASS;
}

/* @cycles times: create, attach, map, unmap, detach, close a buffer. */
static bool cycles_run(int ca, int ct, unsigned int cycles)
{
	struct ca_buf b;
	unsigned int i;
	int ret;

	for (i = 0; i < cycles; i++) {
		ret = ca_buf_alloc(ca, ct, CYCLE_SIZE, 0, &b);
		if (!CHECK(ret == 0, "cycle %u: %s", i, strerror(-ret)))
			return false;
		ca_buf_free(ct, &b);
	}
	return true;
}

static enum tap_result test_posted_reach_device_alone(void)
{
	enum tap_result result;
	struct ca_pool before, after;
	struct transport t = {};
	unsigned int waited_ms;
	int ca, ct;

	result = setup(&ca, &ct);
	if (result != TAP_PASS)
		goto out;
	result = TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO") ||
	    !CHECK(cycles_run(ca, ct, 1), "cycle"))
		goto out;
	/* The UNMAP, DETACH and FREE were posted; nothing follows them. */
	for (waited_ms = 0; waited_ms < 2000; waited_ms += 10) {
		if (!CHECK(transport_read(&t), "read %s", CA_TRANSPORT_PATH))
			goto out;
		if (t.chains_done == t.chains_sent)
			break;
		usleep(10000);
	}
	if (!CHECK(t.chains_done == t.chains_sent,
		   "%lld chains sent, %lld answered after 2 s without a later request",
		   t.chains_sent, t.chains_done) ||
	    !CHECK(t.chains_sent >= 2, "%lld chains sent", t.chains_sent) ||
	    !CHECK(ca_pool_read(ca, &after) == 0, "INFO") ||
	    !CHECK(ca_pool_same(&before, &after), "pool differs after the free"))
		goto out;
	result = TAP_PASS;
out:
	ca_close(&ct);
	ca_close(&ca);
	return result;
}

static enum tap_result test_posted_ride_next_kick(void)
{
	enum tap_result result;
	struct ca_pool before, after;
	struct transport t;
	int ca, ct;

	result = setup(&ca, &ct);
	if (result != TAP_PASS)
		goto out;
	result = TAP_FAIL;
	if (!CHECK(ca_pool_read(ca, &before) == 0, "INFO") ||
	    !CHECK(ca_transport_reset(), "reset") ||
	    !cycles_run(ca, ct, CYCLES) ||
	    !CHECK(transport_read(&t), "read %s", CA_TRANSPORT_PATH))
		goto out;
	tap_diag("%u cycles: %lld chains, %lld kicks, %lld interrupts, %lld polled",
		 CYCLES, t.chains_sent, t.kicks, t.interrupts, t.polled);
	/* Each cycle: one waited chain (CREATE+ATTACH+MAP), one posted
	 * (UNMAP+DETACH+FREE, gathered in the buffer's pending batch).
	 */
	if (!CHECK(t.chains_sent >= 2 * CYCLES, "%lld chains", t.chains_sent) ||
	    /* One kick per waited chain, at most one more per cycle from the
	     * delayed work.
	     */
	    !CHECK(t.kicks <= 2 * CYCLES, "%lld kicks for %u cycles", t.kicks, CYCLES) ||
	    !CHECK(ca_pool_read(ca, &after) == 0, "INFO") ||
	    !CHECK(ca_pool_same(&before, &after), "pool differs after the cycles"))
		goto out;
	result = TAP_PASS;
out:
	ca_close(&ct);
	ca_close(&ca);
	return result;
}

/* Runs CYCLES cycles with poll_us = @value, restores the parameter. */
static enum tap_result cycles_with_poll(const char *value, struct transport *t)
{
	enum tap_result result;
	char saved[32] = "";
	int ca, ct, ret;

	result = setup(&ca, &ct);
	if (result != TAP_PASS)
		goto out;
	result = TAP_FAIL;
	ret = ca_param_read("poll_us", saved, sizeof(saved));
	if (!CHECK(ret == 0, "read %s: %s", POLL_PARAM_PATH, strerror(-ret)))
		goto out;
	ret = ca_param_write("poll_us", value);
	if (!CHECK(ret == 0, "write %s: %s", POLL_PARAM_PATH, strerror(-ret)))
		goto out;
	if (CHECK(ca_transport_reset(), "reset") && cycles_run(ca, ct, CYCLES) &&
	    CHECK(transport_read(t), "read %s", CA_TRANSPORT_PATH))
		result = TAP_PASS;
	CHECK(ca_param_write("poll_us", saved) == 0, "restore poll_us=%s", saved);
	tap_diag("poll_us=%s, %u cycles: %lld chains, %lld kicks, %lld interrupts",
		 value, CYCLES, t->chains_sent, t->kicks, t->interrupts);
	tap_diag("polls %lld: answered %lld, poll_us passed %lld, yielded %lld",
		 t->polls, t->polled, t->poll_expired, t->poll_yielded);
out:
	ca_close(&ct);
	ca_close(&ca);
	return result;
}

static enum tap_result test_interrupt_path(void)
{
	struct transport t = {};
	enum tap_result result = cycles_with_poll("0", &t);

	if (result != TAP_PASS)
		return result;
	if (!CHECK(t.polls == 0, "%lld requests polled with poll_us=0", t.polls) ||
	    !CHECK(t.polled == 0, "%lld answers polled with poll_us=0", t.polled) ||
	    !CHECK(t.interrupts > 0, "no interrupt for %lld chains", t.chains_sent))
		return TAP_FAIL;
	return TAP_PASS;
}

/*
 * Every waiting request polls, and each poll ends for one counted reason:
 * its answer came, poll_us passed, or the CPU was wanted elsewhere. How
 * many answers beat the deadline depends on the host's speed (a KASAN
 * kernel under TCG on a loaded host answered 15 of 50 within 5 ms), so
 * the window is 100 ms and only one polled answer is required: a driver
 * that never reaps while polling has none.
 */
static enum tap_result test_polled_answers(void)
{
	struct transport t = {};
	enum tap_result result = cycles_with_poll("100000", &t);

	if (result != TAP_PASS)
		return result;
	if (!CHECK(t.polls >= CYCLES, "%lld polls for %u waited first maps",
		   t.polls, CYCLES) ||
	    !CHECK(t.polls == t.polled + t.poll_expired + t.poll_yielded,
		   "%lld polls, %lld answered + %lld expired + %lld yielded",
		   t.polls, t.polled, t.poll_expired, t.poll_yielded) ||
	    !CHECK(t.polled >= 1, "no answer of %lld polls came by polling",
		   t.polls))
		return TAP_FAIL;
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("posted commands reach the device with no request after them",
		 test_posted_reach_device_alone),
	TAP_TEST("posted commands ride the next request's kick",
		 test_posted_ride_next_kick),
	TAP_TEST("with poll_us=0 every answer comes by interrupt",
		 test_interrupt_path),
	TAP_TEST("a waiting request polls for its answer", test_polled_answers),
};

TAP_MAIN(tests)
