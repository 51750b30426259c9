/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few DRM UAPI definitions the vgem test needs. The build host has no
 * DRM headers (they come with libdrm-dev, not linux-libc-dev), so they are
 * copied here from include/uapi/drm/drm.h (stable UAPI, same layout).
 */
#ifndef CENALLOC_SELFTEST_DRM_MIN_H
#define CENALLOC_SELFTEST_DRM_MIN_H

#include <linux/ioctl.h>
#include <linux/types.h>
#include <stddef.h>

struct drm_version {
	int version_major;
	int version_minor;
	int version_patchlevel;
	size_t name_len;
	char *name;
	size_t date_len;
	char *date;
	size_t desc_len;
	char *desc;
};

struct drm_gem_close {
	__u32 handle;
	__u32 pad;
};

struct drm_prime_handle {
	__u32 handle;
	__u32 flags;	/* DRM_CLOEXEC | DRM_RDWR, only for HANDLE_TO_FD */
	__s32 fd;
};

struct drm_mode_create_dumb {
	__u32 height;
	__u32 width;
	__u32 bpp;
	__u32 flags;
	__u32 handle;
	__u32 pitch;
	__u64 size;
};

/* vgem's fences (include/uapi/drm/vgem_drm.h). */
struct drm_vgem_fence_attach {
	__u32 handle;
	__u32 flags;
#define VGEM_FENCE_WRITE	0x1
	__u32 out_fence;
	__u32 pad;
};

struct drm_vgem_fence_signal {
	__u32 fence;
	__u32 flags;
};

#define DRM_CLOEXEC			02000000
#define DRM_RDWR			02
#define DRM_COMMAND_BASE		0x40
#define DRM_IOCTL_BASE			'd'
#define DRM_IOCTL_VERSION		_IOWR(DRM_IOCTL_BASE, 0x00, struct drm_version)
#define DRM_IOCTL_GEM_CLOSE		_IOW(DRM_IOCTL_BASE, 0x09, struct drm_gem_close)
#define DRM_IOCTL_PRIME_HANDLE_TO_FD	_IOWR(DRM_IOCTL_BASE, 0x2d, struct drm_prime_handle)
#define DRM_IOCTL_PRIME_FD_TO_HANDLE	_IOWR(DRM_IOCTL_BASE, 0x2e, struct drm_prime_handle)
#define DRM_IOCTL_MODE_CREATE_DUMB	_IOWR(DRM_IOCTL_BASE, 0xb2, struct drm_mode_create_dumb)
#define DRM_IOCTL_VGEM_FENCE_ATTACH \
	_IOWR(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x1, struct drm_vgem_fence_attach)
#define DRM_IOCTL_VGEM_FENCE_SIGNAL \
	_IOW(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x2, struct drm_vgem_fence_signal)

#endif /* CENALLOC_SELFTEST_DRM_MIN_H */
