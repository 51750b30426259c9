// SPDX-License-Identifier: GPL-2.0
#include "tap.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define TAP_REASON_LEN	256

/* Shared with the test's child process: why it skipped. */
static char *skip_reason;
static bool test_failed;

bool tap_check(bool ok, const char *file, int line, const char *expr,
	       const char *fmt, ...)
{
	va_list ap;

	if (ok)
		return true;
	test_failed = true;
	printf("# %s:%d: check failed: %s: ", file, line, expr);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	return false;
}

void tap_diag(const char *fmt, ...)
{
	va_list ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

enum tap_result tap_skip(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(skip_reason, TAP_REASON_LEN, fmt, ap);
	va_end(ap);
	return TAP_SKIP;
}

static bool selected(const char *name, int argc, char **argv)
{
	int i;

	if (argc < 2)
		return true;
	for (i = 1; i < argc; i++)
		if (!strcmp(argv[i], name))
			return true;
	return false;
}

static int run_child(const struct tap_test *test)
{
	enum tap_result result;

	alarm(test->timeout_s ? test->timeout_s : TAP_DEFAULT_TIMEOUT_S);
	test_failed = false;
	result = test->run();
	fflush(stdout);
	/* A failed CHECK fails the test, whatever it returns (even a skip). */
	if (test_failed || (result != TAP_PASS && result != TAP_SKIP))
		result = TAP_FAIL;
	_exit(result);
}

int tap_main(const struct tap_test *tests, unsigned int count,
	     int argc, char **argv)
{
	unsigned int i, planned = 0, number = 0, failed = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	skip_reason = mmap(NULL, TAP_REASON_LEN, PROT_READ | PROT_WRITE,
			   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (skip_reason == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (i = 0; i < count; i++)
		planned += selected(tests[i].name, argc, argv);

	printf("TAP version 13\n1..%u\n", planned);
	for (i = 0; i < count; i++) {
		int status;
		pid_t pid;

		if (!selected(tests[i].name, argc, argv))
			continue;
		number++;
		memset(skip_reason, 0, TAP_REASON_LEN);
		fflush(stdout);
		pid = fork();
		if (pid < 0) {
			printf("not ok %u - %s # fork: %s\n", number,
			       tests[i].name, strerror(errno));
			failed++;
			continue;
		}
		if (pid == 0)
			run_child(&tests[i]);
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (WIFSIGNALED(status)) {
			printf("not ok %u - %s (killed by signal %d%s)\n",
			       number, tests[i].name, WTERMSIG(status),
			       WTERMSIG(status) == SIGALRM ? ": timeout" : "");
			failed++;
		} else if (WEXITSTATUS(status) == TAP_PASS) {
			printf("ok %u - %s\n", number, tests[i].name);
		} else if (WEXITSTATUS(status) == TAP_SKIP) {
			printf("ok %u - %s # SKIP %s\n", number, tests[i].name,
			       skip_reason[0] ? skip_reason : "no reason");
		} else {
			printf("not ok %u - %s\n", number, tests[i].name);
			failed++;
		}
	}
	printf("# %u passed or skipped, %u failed\n", planned - failed, failed);
	return failed ? 1 : 0;
}
