/* SPDX-License-Identifier: GPL-2.0 */
/* cenalloc device mask table (cenalloc_devmask.c). */
#ifndef CENALLOC_DEVMASK_H
#define CENALLOC_DEVMASK_H

#include <linux/types.h>

struct device;

#define CENALLOC_MASK_NAME_LEN	64

int cenalloc_mask_set(const char *name, u32 mask);
u32 cenalloc_device_mask(struct device *dev);
void cenalloc_mask_table_clear(void);

#endif /* CENALLOC_DEVMASK_H */
