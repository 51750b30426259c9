// SPDX-License-Identifier: GPL-2.0
/*
 * The host request channel itself (host_channel.h): the launcher answers
 * "hello" and refuses an unknown verb with an error. Skipped when the VM
 * was not started by run-vm. (The verbs that act on the VM are exercised
 * by the tests that need them, e.g. pause by the pause/resume test.)
 */
#include <string.h>

#include "host_channel.h"
#include "tap.h"

static enum tap_result test_hello(void)
{
	char reply[256] = "";
	int ret;

	if (!ca_host_available())
		return tap_skip("no host request channel (not started by run-vm)");
	ret = ca_host_request(reply, sizeof(reply), 20, "hello");
	CHECK(ret == 0, "hello: %d (%s)", ret, reply);
	CHECK(strstr(reply, "run-vm"), "hello answered '%s'", reply);
	return TAP_PASS;
}

static enum tap_result test_unknown_verb(void)
{
	char reply[256] = "";
	int ret;

	if (!ca_host_available())
		return tap_skip("no host request channel (not started by run-vm)");
	ret = ca_host_request(reply, sizeof(reply), 20, "no-such-verb 1 2");
	CHECK(ret == 1, "an unknown verb: %d (%s), expected an error", ret, reply);
	CHECK(strstr(reply, "unknown verb"), "the error says '%s'", reply);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("the launcher answers hello", test_hello),
	TAP_TEST("an unknown verb gets an error reply", test_unknown_verb),
};

TAP_MAIN(tests)
