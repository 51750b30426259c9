/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Guest buffers seen from the host (cenallocd's control socket and
 * cenallocctl, through the host request channel): a buffer's device id,
 * and a vivid frame captured into a cenalloc buffer.
 */
#ifndef HOST_VIEW_H
#define HOST_VIEW_H

#include <stdint.h>

/*
 * The device's id of the only live cenalloc buffer of @size bytes (from
 * /sys/kernel/debug/cenalloc/buffers). Returns 0, -ENOENT if none,
 * -EEXIST if several, another -errno if debugfs cannot be read.
 */
int ca_buffer_id_by_size(uint64_t size, uint32_t *id);

/*
 * The first vivid capture node with streaming, opened read-write; its
 * device name (as importers see it) in @name. Returns the fd or -ENODEV.
 */
int ca_open_vivid(char *name, size_t len);

struct ca_frame {
	int fd;			/* dma-buf holding the frame, or -1 */
	uint32_t buffer_id;	/* the device's id of that buffer */
	uint64_t buf_size;
	uint32_t width, height, stride;
	uint64_t pixel_hash;	/* FNV-1a 64 of the rows' pixels (no padding) */
	char device[64];	/* the capture device's name */
};

/*
 * vivid captures one RGB24 frame of about @width x @height into a cenalloc
 * buffer of /dev/cenalloc @ca (vivid may pick the nearest size it has).
 * Returns 0, 1 without a vivid capture device (skip), or -errno; @why
 * says what failed. On success the caller owns frame->fd.
 */
int ca_vivid_capture(int ca, uint32_t width, uint32_t height,
		     struct ca_frame *frame, char *why, size_t why_len);

#endif /* HOST_VIEW_H */
