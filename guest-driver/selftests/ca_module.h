/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Reloading cenalloc.ko (and cenalloc_test.ko, which depends on it) from a
 * test: a fresh probe reads config space and donates the pools again, and
 * resets a device the driver declared broken. The module files come from
 * $CENALLOC_MODULE_DIR, else /lib/modules/cenalloc, else
 * /lib/modules/$(uname -r)/extra. Module parameters are read and written
 * through /sys/module/cenalloc/parameters.
 */
#ifndef CENALLOC_SELFTEST_MODULE_H
#define CENALLOC_SELFTEST_MODULE_H

#include <stdbool.h>
#include <stddef.h>

/* Finds the module files; false (and why in @why) if a reload is impossible. */
bool ca_module_ready(char *why, size_t len);
/*
 * Unloads cenalloc_test and cenalloc (every fd of theirs must be closed),
 * then loads cenalloc with the parameters it had at ca_module_ready() time
 * followed by @extra (may be NULL; later settings win), and cenalloc_test.
 * Returns 0 or -errno.
 */
int ca_module_reload(const char *extra);
/* A cenalloc module parameter as text (newline stripped); 0 or -errno. */
int ca_param_read(const char *name, char *buf, size_t len);
int ca_param_write(const char *name, const char *value);

#endif /* CENALLOC_SELFTEST_MODULE_H */
