// SPDX-License-Identifier: GPL-2.0
/*
 * This guest's buffers seen from the host: the launcher (run-vm) asks
 * cenallocd's control socket about them with cenallocctl, through the host
 * request channel.
 *
 * 1. The host lists the VMs, the buffers and the allocators: this VM is
 *    there, connected, with the buffer it just made (the launcher keeps the
 *    tables in cenallocctl.log next to the run's logs).
 * 2. The host exports a buffer the guest wrote, zero-copy: the checksum of
 *    the host's view equals the guest's own hash of its bytes.
 * 3. vivid captures a frame into a cenalloc buffer; the host writes it as a
 *    PNG next to the logs (cenallocctl snapshot), decodes that PNG on its
 *    own and hashes the pixels: they equal the guest's frame bytes.
 *
 * Skipped when the VM was not started by run-vm (no host request channel).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cenalloc_util.h"
#include "host_channel.h"
#include "host_view.h"
#include "tap.h"

#define HOST_TIMEOUT_S	120
/* Odd sizes, so that debugfs names the buffer by its size. */
#define EXPORT_SIZE	(76 * CA_KIB)
#define FRAME_WIDTH	320
#define FRAME_HEIGHT	180

static enum tap_result skip_without_host(void)
{
	return tap_skip("no host request channel (not started by run-vm)");
}

/* Asks the host; the reply in @reply. 0 ok, 1 error, -errno. */
static int ask(char *reply, size_t len, const char *what)
{
	int ret = ca_host_request(reply, len, HOST_TIMEOUT_S, "%s", what);

	tap_diag("host %s: %d %s", what, ret, reply);
	return ret;
}

/* A buffer of EXPORT_SIZE written with a pattern by the CPU; its hash. */
static int written_buffer(int ca, uint64_t *hash)
{
	uint8_t *bytes;
	int fd, ret;

	fd = ca_create(ca, EXPORT_SIZE, 0);
	if (fd < 0)
		return fd;
	bytes = ca_mmap(fd, EXPORT_SIZE);
	if (!bytes) {
		ret = -errno;
		close(fd);
		return ret;
	}
	ret = ca_cpu_access(fd, true);
	if (!ret) {
		ca_pattern_fill(bytes, EXPORT_SIZE, 0x1234abcdull);
		*hash = ca_fnv1a64(bytes, EXPORT_SIZE);
		ret = ca_cpu_access(fd, false);
	}
	munmap(bytes, EXPORT_SIZE);
	if (ret) {
		close(fd);
		return ret;
	}
	return fd;
}

static enum tap_result test_host_lists_and_exports(void)
{
	char reply[512], request[64], vm[64] = "";
	uint64_t hash = 0, host = 0;
	int ca = -1, fd = -1, ret;
	uint32_t id;

	if (!ca_host_available())
		return skip_without_host();
	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	fd = written_buffer(ca, &hash);
	if (!CHECK(fd >= 0, "buffer: %s", strerror(-fd)))
		goto out;
	ret = ca_buffer_id_by_size(EXPORT_SIZE, &id);
	if (!CHECK(ret == 0, "its id in debugfs: %s", strerror(-ret)))
		goto out;

	/*
	 * Next to another guest of the same daemon (run-two-vms), wait a
	 * little for it to hold a buffer too, so that the host's tables show
	 * both; alone, this returns at once. Not a test: only a diagnostic.
	 */
	ask(reply, sizeof(reply), "together 20");

	/* "VM <name>: <the rows of this VM>" */
	ret = ask(reply, sizeof(reply), "ctl vms");
	if (!CHECK(ret == 0 && sscanf(reply, "VM %63[^:]", vm) == 1, "ctl vms: %s", reply))
		goto out;
	CHECK(strstr(reply, "connected"), "this VM is not connected: %s", reply);
	ret = ask(reply, sizeof(reply), "ctl buffers");
	snprintf(request, sizeof(request), " %u ", id);
	CHECK(ret == 0 && strstr(reply, request), "buffer %u not listed: %s", id, reply);
	ret = ask(reply, sizeof(reply), "ctl allocators");
	CHECK(ret == 0 && strstr(reply, "system"), "allocators: %s", reply);

	snprintf(request, sizeof(request), "export %u", id);
	ret = ask(reply, sizeof(reply), request);
	if (!CHECK(ret == 0 && sscanf(reply, "checksum=%" SCNx64, &host) == 1,
		   "export: %s", reply))
		goto out;
	CHECK(host == hash, "host view %#018" PRIx64 ", guest wrote %#018" PRIx64,
	      host, hash);
out:
	if (fd >= 0)
		close(fd);
	ca_close(&ca);
	return TAP_PASS;
}

static enum tap_result test_vivid_frame_as_png(void)
{
	char reply[512], request[128], why[160] = "";
	struct ca_frame frame;
	uint64_t pixels = 0;
	unsigned int w = 0, h = 0;
	int ca = -1, ret;

	if (!ca_host_available())
		return skip_without_host();
	if (!ca_env_open(&ca, NULL))
		return TAP_FAIL;
	ret = ca_vivid_capture(ca, FRAME_WIDTH, FRAME_HEIGHT, &frame, why, sizeof(why));
	if (ret == 1) {
		ca_close(&ca);
		return tap_skip("%s", why);
	}
	if (!CHECK(ret == 0, "capture: %s", why))
		goto out;
	tap_diag("vivid (%s) captured %ux%u RGB24, stride %u, into buffer %u (%llu bytes)",
		 frame.device, frame.width, frame.height, frame.stride, frame.buffer_id,
		 (unsigned long long)frame.buf_size);
	tap_diag("guest's FNV-1a of the frame's pixels: %#018llx",
		 (unsigned long long)frame.pixel_hash);
	snprintf(request, sizeof(request), "snapshot %u rgb24 %u %u %u vivid-frame",
		 frame.buffer_id, frame.width, frame.height, frame.stride);
	ret = ask(reply, sizeof(reply), request);
	/* "png=PATH pixels=WIDTH HEIGHT CHANNELS FNV" */
	if (!CHECK(ret == 0, "snapshot: %s", reply))
		goto out;
	if (!CHECK(sscanf(strstr(reply, "pixels=") ? strstr(reply, "pixels=") : "",
			  "pixels=%u %u 3 %" SCNx64, &w, &h, &pixels) == 3,
		   "no decoded pixels in: %s", reply))
		goto out;
	CHECK(w == frame.width && h == frame.height, "PNG %ux%u, frame %ux%u",
	      w, h, frame.width, frame.height);
	CHECK(pixels == frame.pixel_hash, "PNG pixels %#018" PRIx64 ", guest frame %#018" PRIx64,
	      pixels, frame.pixel_hash);
out:
	if (frame.fd >= 0)
		close(frame.fd);
	ca_close(&ca);
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("the host lists this VM and exports a buffer zero-copy",
		 test_host_lists_and_exports),
	TAP_TEST_TIMEOUT("a vivid frame becomes a PNG on the host, pixel for pixel",
			 test_vivid_frame_as_png, 200),
};

TAP_MAIN(tests)
