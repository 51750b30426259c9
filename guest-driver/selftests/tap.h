/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Minimal TAP 13 harness for the cenalloc selftests.
 *
 * Every test runs in its own child process (a crash or a leaked fd cannot
 * spill into the next test) under an alarm. CHECK() prints a diagnostic
 * line and marks the test failed; it returns the condition so that a test
 * can stop early with "if (!CHECK(...)) goto out;".
 */
#ifndef CENALLOC_SELFTEST_TAP_H
#define CENALLOC_SELFTEST_TAP_H

#include <stdbool.h>

enum tap_result {
	TAP_PASS,
	TAP_FAIL,
	TAP_SKIP,
};

struct tap_test {
	const char *name;
	enum tap_result (*run)(void);
	unsigned int timeout_s;		/* 0: TAP_DEFAULT_TIMEOUT_S */
};

/* The guest runner kills an executable after 300 s: stay below. */
#define TAP_DEFAULT_TIMEOUT_S	120

#define TAP_TEST(desc, fn)	{ .name = (desc), .run = (fn) }
#define TAP_TEST_TIMEOUT(desc, fn, seconds) \
	{ .name = (desc), .run = (fn), .timeout_s = (seconds) }

__attribute__((format(printf, 5, 6)))
bool tap_check(bool ok, const char *file, int line, const char *expr,
	       const char *fmt, ...);

#define CHECK(cond, ...) \
	tap_check(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)

/* A "# ..." diagnostic line. */
__attribute__((format(printf, 1, 2)))
void tap_diag(const char *fmt, ...);

/* Records why the running test skips; the test then returns TAP_SKIP. */
__attribute__((format(printf, 1, 2)))
enum tap_result tap_skip(const char *fmt, ...);

/*
 * Runs @tests (or, with arguments, only those named on the command line)
 * and prints the TAP stream. Returns the process exit status: 0 when no
 * test failed.
 */
int tap_main(const struct tap_test *tests, unsigned int count,
	     int argc, char **argv);

#define TAP_ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))

#define TAP_MAIN(tests) \
	int main(int argc, char **argv) \
	{ \
		return tap_main(tests, TAP_ARRAY_SIZE(tests), argc, argv); \
	}

#endif /* CENALLOC_SELFTEST_TAP_H */
