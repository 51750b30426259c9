// SPDX-License-Identifier: GPL-2.0
/*
 * Posted requests racing the answers: with poll_us=0 every answer is reaped
 * by the control queue's interrupt, on whichever CPU takes it, while other
 * threads post UNMAPs, DETACHes and FREEs. The old driver read a posted
 * request after handing it to the ring (cenalloc_req_post), which another
 * CPU may already have reaped and freed: a use-after-free that a KASAN
 * kernel reports here. On any kernel, every posted command must reach the
 * device and succeed there: no UNMAP, DETACH or FREE fails locally, the
 * driver's posted_errors (posted commands the device refused) does not
 * grow, and afterwards the pools are exactly as before.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "ca_module.h"
#include "cenalloc_util.h"
#include "tap.h"

#define THREADS		4
#define BUFFERS		40
#define MAPS		10

struct racer {
	pthread_t thread;
	unsigned int index;
	int ca;
	atomic_uint *failures;
};

static void *race(void *arg)
{
	static struct ct_mapping maps[THREADS];
	struct racer *r = arg;
	struct ct_mapping *m = &maps[r->index];
	unsigned int b, i;
	uint32_t h;
	int ct, buf;

	ct = ct_open();
	if (ct < 0 || ct_set_device1(ct, r->index, CENALLOC_MASK_ANY, 0)) {
		atomic_fetch_add(r->failures, 1);
		return NULL;
	}
	for (b = 0; b < BUFFERS; b++) {
		buf = ca_create(r->ca, (b % 4 + 1) * 16 * CA_KIB, 0);
		if (buf < 0 || ct_attach(ct, buf, r->index, &h, NULL)) {
			atomic_fetch_add(r->failures, 1);
			if (buf >= 0)
				close(buf);
			continue;
		}
		for (i = 0; i < MAPS; i++) {
			if (ct_map(ct, h, 0, m)) {
				atomic_fetch_add(r->failures, 1);
				break;
			}
			if (ct_unmap(ct, h))	/* posted */
				atomic_fetch_add(r->failures, 1);
		}
		if (ct_detach(ct, h))		/* posted */
			atomic_fetch_add(r->failures, 1);
		if (close(buf))			/* posted FREE */
			atomic_fetch_add(r->failures, 1);
	}
	close(ct);
	return NULL;
}

static enum tap_result test_posts_race_interrupts(void)
{
	struct racer racers[THREADS];
	struct ca_pool before, after;
	atomic_uint failures = 0;
	long long posted0, errors0, posted, errors;
	char poll_us[32] = "";
	unsigned int i;
	int ca;

	if (ca_param_read("poll_us", poll_us, sizeof(poll_us)))
		return tap_skip("no poll_us parameter");
	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	posted0 = ca_transport_value("posted");
	errors0 = ca_transport_value("posted_errors");
	if (!CHECK(posted0 >= 0 && errors0 >= 0,
		   "no posted counters in " CA_TRANSPORT_PATH) ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO") ||
	    !CHECK(ca_param_write("poll_us", "0") == 0, "poll_us=0"))
		goto out;
	for (i = 0; i < THREADS; i++) {
		racers[i] = (struct racer){ .index = i, .ca = ca,
					    .failures = &failures };
		pthread_create(&racers[i].thread, NULL, race, &racers[i]);
	}
	for (i = 0; i < THREADS; i++)
		pthread_join(racers[i].thread, NULL);
	ca_param_write("poll_us", poll_us);
	CHECK(atomic_load(&failures) == 0, "%u operations failed",
	      atomic_load(&failures));
	/*
	 * INFO is a round trip behind every posted chain (the device answers
	 * in ring order): the posted counters are final once it returns.
	 */
	CHECK(ca_pool_read(ca, &after) == 0 && ca_pool_same(&before, &after),
	      "every posted command reached the device");
	posted = ca_transport_value("posted") - posted0;
	errors = ca_transport_value("posted_errors") - errors0;
	tap_diag("%lld posted requests, %lld refused by the device", posted, errors);
	CHECK(posted > 0, "nothing was posted");
	CHECK(errors == 0, "the device refused %lld posted commands", errors);
out:
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("posted requests racing interrupt-reaped answers", test_posts_race_interrupts),
};

TAP_MAIN(tests)
