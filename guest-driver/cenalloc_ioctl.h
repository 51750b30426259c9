/* SPDX-License-Identifier: GPL-2.0 */
/* /dev/cenalloc (cenalloc_ioctl.c). */
#ifndef CENALLOC_IOCTL_H
#define CENALLOC_IOCTL_H

int cenalloc_misc_register(void);
void cenalloc_misc_deregister(void);

#endif /* CENALLOC_IOCTL_H */
