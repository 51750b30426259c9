/* SPDX-License-Identifier: GPL-2.0 */
/* cenalloc debugfs files (cenalloc_debugfs.c). */
#ifndef CENALLOC_DEBUGFS_H
#define CENALLOC_DEBUGFS_H

struct cenalloc_dev;

void cenalloc_debugfs_init(struct cenalloc_dev *cdev);
void cenalloc_debugfs_exit(void);

#endif /* CENALLOC_DEBUGFS_H */
