/* SPDX-License-Identifier: GPL-2.0 */
/* /dev/cenalloc (cenalloc_ioctl.c). */
#ifndef CENALLOC_IOCTL_H
#define CENALLOC_IOCTL_H

struct device;

int cenalloc_misc_register(void);
void cenalloc_misc_deregister(void);

/* The dma-heaps' backend (cenalloc_heaps.h), where the kernel has them. */
int cenalloc_heaps_register(void);
void cenalloc_heaps_deregister(void);
/* At probe: a line saying why there are no heaps, if there are none. */
void cenalloc_heaps_note(struct device *dev);

#endif /* CENALLOC_IOCTL_H */
