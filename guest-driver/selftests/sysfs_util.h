/* SPDX-License-Identifier: GPL-2.0 */
/* Small sysfs/debugfs helpers for the real-importer tests and the demo. */
#ifndef CENALLOC_SELFTEST_SYSFS_UTIL_H
#define CENALLOC_SELFTEST_SYSFS_UTIL_H

#include <stdbool.h>
#include <stddef.h>

/* dev_name() of the device behind /sys/class/<cls>/<node>/device. */
int sysfs_device_name(const char *cls, const char *node, char *buf, size_t len);
/* Mounts debugfs on /sys/kernel/debug if it is not yet; false on failure. */
bool debugfs_ready(void);
/* Lines of a text file that contain @word as a whole word; -errno. */
int file_count_word(const char *path, const char *word);

#define CENALLOC_DEBUGFS_ATTACHMENTS	"/sys/kernel/debug/cenalloc/attachments"
#define CENALLOC_DEBUGFS_ALLOCATORS	"/sys/kernel/debug/cenalloc/allocators"

/*
 * Pools of the debugfs "allocators" file whose POOL_ADD status is not 0
 * (the device refused the driver's donation), or -errno.
 */
int cenalloc_pools_not_donated(void);

#endif
