// SPDX-License-Identifier: GPL-2.0
/*
 * The harness itself: a test that fails a CHECK must be reported "not ok",
 * whatever it returns afterwards (a skip must not hide the failure), and a
 * skip without a failed CHECK stays "ok ... # SKIP". Each case runs
 * tap_main() in a child whose stdout is a pipe, and reads its TAP stream.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tap.h"

static enum tap_result inner_fail_then_skip(void)
{
	CHECK(false, "deliberate failure (expected by test_tap)");
	return tap_skip("skipping after a failed check");
}

static enum tap_result inner_fail_then_pass(void)
{
	CHECK(false, "deliberate failure (expected by test_tap)");
	return TAP_PASS;
}

static enum tap_result inner_skip(void)
{
	return tap_skip("nothing to test");
}

static enum tap_result inner_pass(void)
{
	CHECK(true, "cannot fail");
	return TAP_PASS;
}

/*
 * Runs @test under a nested tap_main() and returns its TAP stream in @out
 * (the "# check failed" lines included) and its exit status in @status.
 */
static bool run_inner(enum tap_result (*fn)(void), char *out, size_t len,
		      int *status)
{
	const struct tap_test inner[] = { TAP_TEST("inner", fn) };
	size_t used = 0;
	int pipefd[2], wstatus;
	ssize_t n;
	pid_t pid;

	if (!CHECK(pipe(pipefd) == 0, "pipe: %s", strerror(errno)))
		return false;
	fflush(stdout);
	pid = fork();
	if (!CHECK(pid >= 0, "fork: %s", strerror(errno)))
		return false;
	if (pid == 0) {
		char *argv[] = { "test_tap_inner", NULL };

		close(pipefd[0]);
		dup2(pipefd[1], STDOUT_FILENO);
		_exit(tap_main(inner, 1, 1, argv));
	}
	close(pipefd[1]);
	while (used + 1 < len &&
	       (n = read(pipefd[0], out + used, len - 1 - used)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		used += n;
	}
	out[used] = '\0';
	close(pipefd[0]);
	while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR)
		;
	*status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
	return true;
}

static enum tap_result expect(enum tap_result (*fn)(void), const char *line,
			      int want_status)
{
	char out[4096];
	int status;

	if (!run_inner(fn, out, sizeof(out), &status))
		return TAP_FAIL;
	CHECK(strstr(out, line) != NULL, "no line \"%s\" in:\n%s", line, out);
	CHECK(status == want_status, "harness exit status %d, expected %d",
	      status, want_status);
	return TAP_PASS;
}

static enum tap_result test_failed_check_then_skip(void)
{
	return expect(inner_fail_then_skip, "\nnot ok 1 - inner\n", 1);
}

static enum tap_result test_failed_check_then_pass(void)
{
	return expect(inner_fail_then_pass, "\nnot ok 1 - inner\n", 1);
}

static enum tap_result test_plain_skip(void)
{
	return expect(inner_skip, "\nok 1 - inner # SKIP nothing to test\n", 0);
}

static enum tap_result test_plain_pass(void)
{
	return expect(inner_pass, "\nok 1 - inner\n", 0);
}

static const struct tap_test tests[] = {
	TAP_TEST("a failed CHECK then a skip is not ok", test_failed_check_then_skip),
	TAP_TEST("a failed CHECK then a pass is not ok", test_failed_check_then_pass),
	TAP_TEST("a skip without a failed CHECK stays ok, with a skip directive", test_plain_skip),
	TAP_TEST("a pass is ok", test_plain_pass),
};

TAP_MAIN(tests)
