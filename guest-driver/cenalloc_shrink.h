/* SPDX-License-Identifier: GPL-2.0 */
/* cenalloc memory-pressure shrinker (cenalloc_shrink.c). */
#ifndef CENALLOC_SHRINK_H
#define CENALLOC_SHRINK_H

struct cenalloc_dev;

int cenalloc_shrinker_register(struct cenalloc_dev *cdev);
void cenalloc_shrinker_unregister(struct cenalloc_dev *cdev);
unsigned long cenalloc_shrink_now(struct cenalloc_dev *cdev,
				  unsigned long pages);

#endif /* CENALLOC_SHRINK_H */
