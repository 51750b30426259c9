// SPDX-License-Identifier: GPL-2.0
/*
 * A real DRM importer: vgem imports a cenalloc buffer with PRIME
 * (DRM_IOCTL_PRIME_FD_TO_HANDLE attaches and maps it), the attachment shows
 * in debugfs with vgem's device name, the allocation follows the mask given
 * to vgem's device with SET_DEVICE_MASK, the bytes are right through the
 * exporter's mmap, and DRM_IOCTL_GEM_CLOSE detaches.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/dma-buf.h>

#include "cenalloc_util.h"
#include "drm_min.h"
#include "sysfs_util.h"
#include "tap.h"

#define SIZE	(1 * CA_MIB)
#define SEED	0x76656d31ull

/* Opens the vgem card node; its sysfs device name goes to @dev_name. */
static int open_vgem(char *dev_name, size_t len)
{
	int i;

	for (i = 0; i < 16; i++) {
		char path[64], name[32] = "", node[16];
		struct drm_version v = { .name = name, .name_len = sizeof(name) - 1 };
		int fd;

		snprintf(path, sizeof(path), "/dev/dri/card%d", i);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (ioctl(fd, DRM_IOCTL_VERSION, &v) == 0 && !strcmp(name, "vgem")) {
			snprintf(node, sizeof(node), "card%d", i);
			if (sysfs_device_name("drm", node, dev_name, len) == 0)
				return fd;
		}
		close(fd);
	}
	return -1;
}

static enum tap_result test_vgem_prime_import(void)
{
	enum tap_result result = TAP_PASS;
	struct drm_prime_handle prime = { 0 };
	struct ca_pool before, imported, closed, after;
	char dev_name[64], text[32];
	const uint32_t mask = CENALLOC_KIND_CONTIG;
	int ca = -1, drm, buf = -1, ret, used, expected, n;
	bool handle_open = false;
	uint8_t *p;

	drm = open_vgem(dev_name, sizeof(dev_name));
	if (drm < 0)
		return tap_skip("no vgem DRM device (modprobe vgem)");
	if (!CHECK(debugfs_ready(), "no debugfs %s", CENALLOC_DEBUGFS_ATTACHMENTS) ||
	    !ca_env_open(&ca, NULL))
		goto out;
	tap_diag("vgem device %s", dev_name);
	ret = ca_set_device_mask(ca, dev_name, mask);
	if (!CHECK(ret == 0, "SET_DEVICE_MASK %s: %s", dev_name, strerror(-ret)) ||
	    !CHECK(ca_pool_read(ca, &before) == 0, "INFO"))
		goto out;
	expected = ca_pool_expected_allocator(&before, mask, SIZE);

	buf = ca_create(ca, SIZE, 0);
	if (!CHECK(buf >= 0, "create: %s", strerror(-buf)))
		goto out;
	CHECK(file_count_word(CENALLOC_DEBUGFS_ATTACHMENTS, dev_name) == 0,
	      "%s attached before the import", dev_name);

	prime.fd = buf;
	ret = ioctl(drm, DRM_IOCTL_PRIME_FD_TO_HANDLE, &prime) ? -errno : 0;
	if (!CHECK(ret == 0, "PRIME_FD_TO_HANDLE: %s", strerror(-ret)))
		goto out;
	handle_open = true;
	n = file_count_word(CENALLOC_DEBUGFS_ATTACHMENTS, dev_name);
	CHECK(n == 1, "debugfs lists %d attachments of %s, expected 1", n, dev_name);

	/*
	 * vgem maps at import on 6.1 and 6.12: that was the first map. Newer
	 * kernels (7.2) import shmem dma-bufs without mapping them; then the
	 * first map is a CPU map, which must follow vgem's mask all the same.
	 */
	if (!CHECK(ca_pool_read(ca, &imported) == 0, "INFO"))
		goto out;
	if (ca_pool_allocator_used(&before, &imported) < 0) {
		tap_diag("the import did not map: first map through mmap");
		p = ca_mmap(buf, SIZE);
		if (CHECK(p, "mmap: %s", strerror(errno)))
			munmap(p, SIZE);
		if (!CHECK(ca_pool_read(ca, &imported) == 0, "INFO"))
			goto out;
	}
	used = ca_pool_allocator_used(&before, &imported);
	tap_diag("vgem import (mask %s) allocated from allocator %d (%.16s)",
		 ca_mask_str(mask, text, sizeof(text)), used,
		 used >= 0 ? imported.alloc[used].name : "none");
	CHECK(used == expected, "allocator %d, expected %d", used, expected);
	ret = ca_fill(ca, buf, SEED);
	if (CHECK(ret == 0, "FILL: %s", strerror(-ret))) {
		p = ca_mmap(buf, SIZE);
		if (CHECK(p, "mmap: %s", strerror(errno))) {
			size_t bad = ca_pattern_check(p, SIZE, SEED);

			CHECK(bad == SIZE, "mmap differs from FILL at %zu", bad);
			munmap(p, SIZE);
		}
	}

	struct drm_gem_close gem_close = { .handle = prime.handle };

	ret = ioctl(drm, DRM_IOCTL_GEM_CLOSE, &gem_close) ? -errno : 0;
	handle_open = false;
	if (!CHECK(ret == 0, "GEM_CLOSE: %s", strerror(-ret)))
		goto out;
	n = file_count_word(CENALLOC_DEBUGFS_ATTACHMENTS, dev_name);
	CHECK(n == 0, "debugfs still lists %d attachments of %s after GEM_CLOSE", n, dev_name);
	/* The buffer's fd still holds the backing. */
	if (CHECK(ca_pool_read(ca, &closed) == 0, "INFO"))
		CHECK(ca_pool_same(&imported, &closed), "GEM_CLOSE released the backing");
	ca_close(&buf);
	if (CHECK(ca_pool_read(ca, &after) == 0, "INFO"))
		CHECK(ca_pool_same(&before, &after), "pool not back");
out:
	if (handle_open) {
		struct drm_gem_close c = { .handle = prime.handle };

		ioctl(drm, DRM_IOCTL_GEM_CLOSE, &c);
	}
	ca_close(&buf);
	if (ca >= 0)
		ca_set_device_mask(ca, dev_name, 0);
	ca_close(&ca);
	close(drm);
	return result;
}

/*
 * A sync_file holding an unsignalled vgem fence: a vgem buffer of its own
 * gets a write fence (VGEM_FENCE_ATTACH; vgem signals it by itself after
 * 10 s at the latest), and its dma-buf exports it. *@fence is the id for
 * VGEM_FENCE_SIGNAL. Returns the sync_file fd or -errno.
 */
static int vgem_fence_file(int drm, uint32_t *fence)
{
	struct drm_mode_create_dumb dumb = { .height = 1, .width = 1024, .bpp = 32 };
	struct drm_vgem_fence_attach attach = { .flags = VGEM_FENCE_WRITE };
	struct dma_buf_export_sync_file sync = { .flags = DMA_BUF_SYNC_RW };
	struct drm_prime_handle prime = { .flags = DRM_CLOEXEC | DRM_RDWR };
	struct drm_gem_close gem_close = { 0 };
	int ret = 0;

	if (ioctl(drm, DRM_IOCTL_MODE_CREATE_DUMB, &dumb))
		return -errno;
	attach.handle = dumb.handle;
	prime.handle = dumb.handle;
	gem_close.handle = dumb.handle;
	if (ioctl(drm, DRM_IOCTL_VGEM_FENCE_ATTACH, &attach) ||
	    ioctl(drm, DRM_IOCTL_PRIME_HANDLE_TO_FD, &prime))
		ret = -errno;
	if (!ret) {
		*fence = attach.out_fence;
		if (ca_ioctl(prime.fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &sync))
			ret = -errno;
		close(prime.fd);
	}
	ioctl(drm, DRM_IOCTL_GEM_CLOSE, &gem_close);
	return ret ? ret : sync.fd;
}

/*
 * A migration waits for the buffer's fences even when no mapping has to
 * be revoked: an importer may have unmapped while its job (a fence in the
 * reservation object) still runs, and the device would copy and free
 * pages that DMA still reaches. The buffer gets an unsignalled fence
 * (imported from vgem, which does not attach to the buffer itself), no
 * mapping is outstanding, and a stricter device attaches late: the attach
 * must wait for the fence and give up with ETIMEDOUT (5 s, vgem's fence
 * lasts up to 10 s); once the fence is signalled, it goes through and the
 * map migrates.
 */
static enum tap_result test_migration_waits_for_fences(void)
{
	struct dma_buf_import_sync_file import = { .flags = DMA_BUF_SYNC_WRITE };
	struct ca_buf b = { .fd = -1 };
	struct ct_mapping *m = calloc(1, sizeof(*m));
	struct drm_vgem_fence_signal signal = { 0 };
	uint32_t handle = 0, fence = 0;
	uint64_t start, took;
	char dev_name[64];
	int drm, ca = -1, ct = -1, sync = -1, ret;
	bool fenced = false;

	drm = open_vgem(dev_name, sizeof(dev_name));
	if (drm < 0) {
		free(m);
		return tap_skip("no vgem DRM device (modprobe vgem)");
	}
	if (!CHECK(m, "out of memory") ||
	    !ca_env_open_device(&ca, &ct, 0, CENALLOC_MASK_ANY) ||
	    !CHECK(ct_set_device1(ct, 1, CENALLOC_KIND_CONTIG_DMA32, 0) == 0, "SET_DEVICE"))
		goto out;
	ret = ca_buf_alloc(ca, ct, 256 * CA_KIB, 0, &b);
	if (!CHECK(ret == 0, "alloc: %s", strerror(-ret)) ||
	    !CHECK(ct_unmap(ct, b.handle) == 0, "unmap"))
		goto out;
	sync = vgem_fence_file(drm, &fence);
	if (!CHECK(sync >= 0, "a vgem fence: %s", strerror(-sync)))
		goto out;
	import.fd = sync;
	ret = ca_ioctl(b.fd, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &import);
	if (!CHECK(ret == 0, "IMPORT_SYNC_FILE: %s", strerror(-ret)))
		goto out;
	fenced = true;
	start = ca_now_ns();
	ret = ct_attach(ct, b.fd, 1, &handle, NULL);
	took = (ca_now_ns() - start) / 1000000;
	tap_diag("stricter attach with a fence pending: %s after %llu ms",
		 ret ? strerror(-ret) : "success", (unsigned long long)took);
	CHECK(ret == -ETIMEDOUT, "stricter attach with an unsignalled fence: %s, want ETIMEDOUT",
	      ret ? strerror(-ret) : "success");
	if (!ret) {
		ct_detach(ct, handle);
		handle = 0;
	}
	signal.fence = fence;
	CHECK(ioctl(drm, DRM_IOCTL_VGEM_FENCE_SIGNAL, &signal) == 0,
	      "VGEM_FENCE_SIGNAL: %s", strerror(errno));
	fenced = false;
	ret = ct_attach(ct, b.fd, 1, &handle, NULL);
	if (CHECK(ret == 0, "stricter attach, the fence signalled: %s", strerror(-ret))) {
		ret = ct_map(ct, handle, 0, m);
		CHECK(ret == 0 && m->num_segments == 1 && m->seg[0].addr != b.map.seg[0].addr,
		      "migrating map: %s, %u segments", strerror(-ret), m->num_segments);
		ct_unmap(ct, handle);
	}
out:
	if (fenced) {
		signal.fence = fence;
		ioctl(drm, DRM_IOCTL_VGEM_FENCE_SIGNAL, &signal);
	}
	if (handle)
		ct_detach(ct, handle);
	if (sync >= 0)
		close(sync);
	ca_env_close(&ca, &ct, &b);
	close(drm);
	free(m);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("vgem imports with PRIME, shows in debugfs, detaches on GEM_CLOSE", test_vgem_prime_import),
	TAP_TEST("a migration waits for the buffer's fences, even with nothing to revoke",
		 test_migration_waits_for_fences),
};

TAP_MAIN(tests)
