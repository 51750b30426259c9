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

#define DRM_IOCTL_BASE			'd'
#define DRM_IOCTL_VERSION		_IOWR(DRM_IOCTL_BASE, 0x00, struct drm_version)
#define DRM_IOCTL_GEM_CLOSE		_IOW(DRM_IOCTL_BASE, 0x09, struct drm_gem_close)
#define DRM_IOCTL_PRIME_FD_TO_HANDLE	_IOWR(DRM_IOCTL_BASE, 0x2e, struct drm_prime_handle)

#endif /* CENALLOC_SELFTEST_DRM_MIN_H */
