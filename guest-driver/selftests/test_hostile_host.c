// SPDX-License-Identifier: GPL-2.0
/*
 * The driver against a hostile host: cenallocd built with the test-only
 * feature fault-injection, whose fault the launcher switches on request
 * (host verb "fault SPEC", see src/fault/mod.rs for the specs). For each lie
 * the guest must fail the operation cleanly (-EIO; -ETIMEDOUT for a device
 * that stops answering), count and log the rejected answer, never map
 * memory it was not given (a CPU mapping keeps showing the buffer's own
 * data), and leak nothing: after the fault and the cleanup the pools are
 * back where they started. Faults the driver reads at probe (config space,
 * POOL_ADD) and a device the driver declared broken take a module reload.
 *
 * Skipped without the host request channel or a fault-injection daemon.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ca_module.h"
#include "cenalloc_util.h"
#include "host_channel.h"
#include "sysfs_util.h"
#include "tap.h"

#define SIZE		(64 * CA_KIB)
#define SEED		0x5eed
#define DEV_ANY		0	/* test devices, set up by env_open() */
#define DEV_ANY2	1
#define DEV_CONTIG	2
#define DEV_DMA32	3
#define DEV_REFUSED	4
#define REFUSED_MASK	0x100	/* a custom kind: the fault refuses it */
/* 1 GiB in 4 KiB pages: the largest answer the default device may need. */
#define HUGE_ANSWER	(24u + 262144u * 16u)
#define SETTLE_MS	10000

/* /dev/cenalloc, /dev/cenalloc_test and its devices, the pools now. */
static bool env_open(int *ca, int *ct, struct ca_pool *before)
{
	static const uint32_t contig[] = { CENALLOC_MAP_CONTIG };

	if (!ca_env_open_device(ca, ct, DEV_ANY, CENALLOC_MASK_ANY))
		return false;
	if (CHECK(ct_set_device1(*ct, DEV_ANY2, CENALLOC_MASK_ANY, 0) == 0 &&
		  ct_set_device(*ct, DEV_CONTIG, CENALLOC_KIND_CONTIG, contig, 1) == 0 &&
		  ct_set_device1(*ct, DEV_DMA32, CENALLOC_KIND_DMA32, 0) == 0 &&
		  ct_set_device1(*ct, DEV_REFUSED, REFUSED_MASK, 0) == 0,
		  "SET_DEVICE") &&
	    CHECK(ca_pool_read(*ca, before) == 0, "INFO"))
		return true;
	ca_env_close(ca, ct, NULL);
	return false;
}

/*
 * The pools are back where they were (an abandoned request is undone by a
 * work item, so wait a little for it).
 */
static bool settled(int ca, const struct ca_pool *before)
{
	struct ca_pool now;
	int waited;

	for (waited = 0; waited < SETTLE_MS; waited += 100) {
		if (ca_pool_read(ca, &now) == 0 &&
		    ca_pool_used(&now) == ca_pool_used(before) &&
		    now.info.num_buffers == before->info.num_buffers)
			break;
		usleep(100000);
	}
	return CHECK(ca_pool_read(ca, &now) == 0 && ca_pool_same(before, &now),
		     "the pools are back where they started");
}

static bool rejected_since(long long before)
{
	long long now = ca_transport_value("answers_rejected");

	return CHECK(now > before, "answers_rejected %lld, was %lld", now, before);
}

/* A fresh buffer with @device attached (not mapped): the buffer fd. */
static int buf_attach(int ca, int ct, uint32_t device, uint32_t *handle)
{
	int buf = ca_create(ca, SIZE, 0), ret;

	if (!CHECK(buf >= 0, "CREATE: %s", strerror(-buf)))
		return -1;
	ret = ct_attach(ct, buf, device, handle, NULL);
	if (!CHECK(ret == 0, "ATTACH device %u: %s", device, strerror(-ret))) {
		close(buf);
		return -1;
	}
	return buf;
}

/*
 * With @spec, the first map of a fresh buffer fails with @want; honest
 * again, the same attachment maps the whole buffer.
 */
static bool first_map_refused(int ca, int ct, uint32_t device,
			      const char *spec, int want)
{
	static struct ct_mapping m;
	long long rejected = ca_transport_value("answers_rejected");
	uint32_t h;
	bool ok;
	int buf, ret;

	buf = buf_attach(ca, ct, device, &h);
	if (buf < 0)
		return false;
	ok = ca_host_fault(spec);
	ret = ct_map(ct, h, 0, &m);
	ok &= CHECK(ret == want, "%s: map %d, want %d", spec, ret, want);
	if (want == -EIO)
		ok &= rejected_since(rejected);
	ok &= ca_host_fault("none");
	ret = ct_map(ct, h, 0, &m);
	ok &= CHECK(ret == 0 && ct_mapping_bytes(&m) == SIZE,
		    "%s, then honest: map %d, %llu bytes", spec, ret,
		    (unsigned long long)ct_mapping_bytes(&m));
	ct_unmap(ct, h);
	ct_detach(ct, h);
	close(buf);
	return ok;
}

static enum tap_result test_first_map_lies(void)
{
	static const char * const specs[] = {
		"extra-segment", "fewer-segments", "outside-pool", "map-type",
		"allocator-id", "status-garbage:map",
	};
	struct ca_pool before, now;
	enum tap_result skip = ca_host_need_faults();
	unsigned int i;
	int ca, ct;

	if (skip != TAP_PASS)
		return skip;
	if (!env_open(&ca, &ct, &before))
		return TAP_FAIL;
	for (i = 0; i < TAP_ARRAY_SIZE(specs); i++)
		first_map_refused(ca, ct, DEV_ANY, specs[i], -EIO);
	first_map_refused(ca, ct, DEV_CONTIG, "contig-split", -EIO);
	first_map_refused(ca, ct, DEV_DMA32, "dma32-high", -EIO);
	settled(ca, &before);
	/*
	 * A short answer (only the batch header written) to CREATE + ATTACH +
	 * MAP: refused like the others. The device did create the buffer,
	 * but its id was in the answer the driver could not read, so no FREE
	 * can name it: the device keeps that buffer (its memory stays
	 * donated, the device's own loss) until it resets. The driver keeps
	 * nothing: its live buffers are as before, and the device holds at
	 * most the one buffer more.
	 */
	if (CHECK(ca_pool_read(ca, &before) == 0, "INFO")) {
		first_map_refused(ca, ct, DEV_ANY, "short-answer:map", -EIO);
		if (CHECK(ca_pool_read(ca, &now) == 0, "INFO")) {
			CHECK(now.info.num_buffers == before.info.num_buffers,
			      "the driver's live buffers %u -> %u", before.info.num_buffers,
			      now.info.num_buffers);
			CHECK(ca_pool_used(&now) - ca_pool_used(&before) <= SIZE,
			      "the device holds %llu bytes more after one unreadable answer",
			      (unsigned long long)(ca_pool_used(&now) - ca_pool_used(&before)));
		}
	}
	ca_host_fault("none");
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * The CPU mapping pins the backing: a later MAP (of an importer) that
 * splits the same memory into more segments, or moves it, is refused, and
 * mmap keeps showing the buffer's own pages (the old driver took the split
 * answer's count with the CPU mapping's array: mmap read past it).
 */
static enum tap_result test_later_map_must_match_backing(void)
{
	static struct ct_mapping m, m2;
	struct ca_pool before;
	enum tap_result skip = ca_host_need_faults();
	uint64_t sum, len;
	long long rejected;
	uint32_t h, h2;
	int ca, ct, buf, ret;
	uint8_t *p;

	if (skip != TAP_PASS)
		return skip;
	if (!env_open(&ca, &ct, &before))
		return TAP_FAIL;
	buf = buf_attach(ca, ct, DEV_ANY, &h);
	if (buf < 0)
		goto out;
	ret = ct_attach(ct, buf, DEV_ANY2, &h2, NULL);
	CHECK(ret == 0, "second ATTACH: %s", strerror(-ret));
	p = ca_mmap(buf, SIZE);
	if (!CHECK(p, "mmap: %s", strerror(errno)))
		goto out_buf;
	ca_pattern_fill(p, SIZE, SEED);

	rejected = ca_transport_value("answers_rejected");
	ca_host_fault("split-segment");
	ret = ct_map(ct, h, 0, &m);
	CHECK(ret == -EIO, "split answer: map %d, want -EIO", ret);
	rejected_since(rejected);
	ca_host_fault("none");
	CHECK(ca_pattern_check(p, SIZE, SEED) == SIZE,
	      "the CPU mapping still shows the buffer's data");

	ret = ct_map(ct, h, 0, &m);
	CHECK(ret == 0, "honest map: %d", ret);
	rejected = ca_transport_value("answers_rejected");
	ca_host_fault("moved-backing");
	ret = ct_map(ct, h2, 0, &m2);
	CHECK(ret == -EIO, "moved backing: map %d, want -EIO", ret);
	rejected_since(rejected);
	ca_host_fault("none");
	ret = ct_map(ct, h2, 0, &m2);
	CHECK(ret == 0 && m2.num_segments == m.num_segments &&
	      !memcmp(m2.seg, m.seg, m.num_segments * sizeof(m.seg[0])),
	      "honest second map: %d, the same segments", ret);
	CHECK(ca_checksum(ca, buf, &sum, &len) == 0 &&
	      sum == ca_fnv1a64(p, SIZE) && len == SIZE,
	      "the device's checksum is the CPU mapping's");
	ct_unmap(ct, h);
	ct_unmap(ct, h2);
	munmap(p, SIZE);
out_buf:
	ct_detach(ct, h);
	ct_detach(ct, h2);
	close(buf);
	settled(ca, &before);
out:
	ca_host_fault("none");
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * A first MAP answer that names memory already backing another live buffer
 * (the fault remembers buffer A's segments and answers buffer B's first
 * map with them) is refused: two users would otherwise share pages. Honest
 * again, B gets memory of its own and A keeps its data.
 */
static enum tap_result test_shared_backing_refused(void)
{
	static struct ct_mapping ma, mb;
	struct ca_pool before;
	enum tap_result skip = ca_host_need_faults();
	uint32_t ha, hb, i, k;
	int ca, ct, a, b, ret;
	long long rejected;
	uint8_t *p;

	if (skip != TAP_PASS)
		return skip;
	if (!env_open(&ca, &ct, &before))
		return TAP_FAIL;
	a = buf_attach(ca, ct, DEV_ANY, &ha);
	if (a < 0)
		goto out;
	b = buf_attach(ca, ct, DEV_ANY, &hb);
	if (b < 0)
		goto out_a;
	ca_host_fault("shared-backing");
	ret = ct_map(ct, ha, 0, &ma);
	CHECK(ret == 0 && ct_mapping_bytes(&ma) == SIZE, "map A: %d", ret);
	p = ca_mmap(a, SIZE);
	if (CHECK(p, "mmap A: %s", strerror(errno))) {
		ca_pattern_fill(p, SIZE, SEED);
		munmap(p, SIZE);
	}
	rejected = ca_transport_value("answers_rejected");
	ret = ct_map(ct, hb, 0, &mb);
	CHECK(ret == -EIO, "B answered with A's memory: map %d, want -EIO", ret);
	rejected_since(rejected);
	ca_host_fault("none");
	ret = ct_map(ct, hb, 0, &mb);
	CHECK(ret == 0 && ct_mapping_bytes(&mb) == SIZE,
	      "honest: map B %d, %llu bytes", ret,
	      (unsigned long long)ct_mapping_bytes(&mb));
	for (i = 0; ret == 0 && i < ma.num_segments && i < CT_MAX_SEGMENTS; i++)
		for (k = 0; k < mb.num_segments && k < CT_MAX_SEGMENTS; k++)
			CHECK(ma.seg[i].addr + ma.seg[i].len <= mb.seg[k].addr ||
			      mb.seg[k].addr + mb.seg[k].len <= ma.seg[i].addr,
			      "A's segment %u and B's segment %u overlap", i, k);
	p = ca_mmap(a, SIZE);
	if (CHECK(p, "mmap A again: %s", strerror(errno))) {
		CHECK(ca_pattern_check(p, SIZE, SEED) == SIZE,
		      "A keeps its data");
		munmap(p, SIZE);
	}
	ct_unmap(ct, hb);
	ct_detach(ct, hb);
	close(b);
out_a:
	ct_unmap(ct, ha);
	ct_detach(ct, ha);
	close(a);
	settled(ca, &before);
out:
	ca_host_fault("none");
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/* An ATTACH answered with a map type the importer never listed. */
static enum tap_result test_attach_type_lie(void)
{
	static struct ct_mapping m;
	struct ca_pool before;
	enum tap_result skip = ca_host_need_faults();
	uint32_t h, h2;
	int ca, ct, buf, ret;

	if (skip != TAP_PASS)
		return skip;
	if (!env_open(&ca, &ct, &before))
		return TAP_FAIL;
	/* Late attach: the buffer is backed, the ATTACH goes at once. */
	buf = buf_attach(ca, ct, DEV_ANY, &h);
	if (buf < 0)
		goto out;
	CHECK(ct_map(ct, h, 0, &m) == 0, "first map");
	ca_host_fault("attach-type");
	ret = ct_attach(ct, buf, DEV_ANY2, &h2, NULL);
	CHECK(ret == -EIO, "late attach: %d, want -EIO", ret);
	if (!ret)
		ct_detach(ct, h2);
	ca_host_fault("none");
	ct_unmap(ct, h);
	ct_detach(ct, h);
	close(buf);

	/* Deferred attach: the ATTACH travels with the first map. */
	buf = buf_attach(ca, ct, DEV_ANY, &h);
	if (buf < 0)
		goto out;
	ca_host_fault("attach-type");
	ret = ct_map(ct, h, 0, &m);
	CHECK(ret == -EIO, "map with a deferred attach: %d, want -EIO", ret);
	ca_host_fault("none");
	ret = ct_map(ct, h, 0, &m);
	CHECK(ret == 0, "honest map: %d", ret);
	ct_unmap(ct, h);
	ct_detach(ct, h);
	close(buf);
	settled(ca, &before);
out:
	ca_host_fault("none");
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * A deferred ATTACH the device refuses is not sent again: the buffer's
 * other attachments still map (the old driver resent it in every batch).
 */
static enum tap_result test_refused_attach_is_not_resent(void)
{
	static struct ct_mapping m;
	struct ca_pool before;
	enum tap_result skip = ca_host_need_faults();
	uint32_t refused, good;
	int ca, ct, buf, ret;

	if (skip != TAP_PASS)
		return skip;
	if (!env_open(&ca, &ct, &before))
		return TAP_FAIL;
	ca_host_fault("refuse-attach:0x100");
	buf = buf_attach(ca, ct, DEV_REFUSED, &refused);
	if (buf < 0)
		goto out;
	ret = ct_attach(ct, buf, DEV_ANY, &good, NULL);
	CHECK(ret == 0, "second attach: %d", ret);
	ret = ct_map(ct, refused, 0, &m);
	CHECK(ret == -EINVAL, "map of the refused attachment: %d, want -EINVAL", ret);
	ret = ct_map(ct, good, 0, &m);
	CHECK(ret == 0 && ct_mapping_bytes(&m) == SIZE,
	      "map of the other attachment: %d", ret);
	ret = ct_map(ct, refused, 0, &m);
	CHECK(ret == -EINVAL, "the refused one again: %d", ret);
	ct_unmap(ct, good);
	ct_detach(ct, good);
	ct_detach(ct, refused);
	close(buf);
	settled(ca, &before);
out:
	ca_host_fault("none");
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/* Status garbage and short answers of commands that change nothing. */
static enum tap_result test_garbled_answers(void)
{
	static struct ct_mapping m;
	struct ca_pool before;
	enum tap_result skip = ca_host_need_faults();
	uint64_t sum, len;
	uint32_t h;
	int ca, ct, buf, ret;

	if (skip != TAP_PASS)
		return skip;
	if (!env_open(&ca, &ct, &before))
		return TAP_FAIL;
	buf = buf_attach(ca, ct, DEV_ANY, &h);
	if (buf < 0)
		goto out;
	CHECK(ct_map(ct, h, 0, &m) == 0, "map");
	ca_host_fault("status-garbage:checksum");
	ret = ca_checksum(ca, buf, &sum, &len);
	CHECK(ret == -EIO, "CHECKSUM with a garbage status: %d", ret);
	ca_host_fault("short-answer:checksum");
	ret = ca_checksum(ca, buf, &sum, &len);
	CHECK(ret == -EIO, "CHECKSUM with a short answer: %d", ret);
	/*
	 * Errnos the protocol never answers reach nobody as they are: not
	 * -ERESTARTSYS (512) or -EIOCBQUEUED (529), kernel-internal, nor
	 * -EDEADLK (35), which importers take for a ww-mutex back-off.
	 * A documented one (-ENOENT) passes.
	 */
	ca_host_fault("errno:checksum:512");
	ret = ca_checksum(ca, buf, &sum, &len);
	CHECK(ret == -EIO, "CHECKSUM answered -ERESTARTSYS: %d, want -EIO", ret);
	ca_host_fault("errno:checksum:529");
	ret = ca_checksum(ca, buf, &sum, &len);
	CHECK(ret == -EIO, "CHECKSUM answered -EIOCBQUEUED: %d, want -EIO", ret);
	ca_host_fault("errno:checksum:35");
	ret = ca_checksum(ca, buf, &sum, &len);
	CHECK(ret == -EIO, "CHECKSUM answered -EDEADLK: %d, want -EIO", ret);
	ca_host_fault("errno:checksum:2");
	ret = ca_checksum(ca, buf, &sum, &len);
	CHECK(ret == -ENOENT, "CHECKSUM answered -ENOENT: %d, want -ENOENT", ret);
	ca_host_fault("none");
	ret = ca_checksum(ca, buf, &sum, &len);
	CHECK(ret == 0 && len == SIZE, "honest CHECKSUM: %d", ret);
	ct_unmap(ct, h);
	ct_detach(ct, h);
	close(buf);
	settled(ca, &before);
out:
	ca_host_fault("none");
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * A device may ask for a large answer: the driver builds it from pages (not
 * one high-order allocation, which warns and fails beyond 4 MiB) and maps;
 * one that asks for more than any device limit is refused.
 */
static enum tap_result test_large_answers(void)
{
	static struct ct_mapping m;
	struct ca_pool before;
	enum tap_result skip = ca_host_need_faults();
	char spec[64];
	uint32_t h;
	int ca, ct, buf, ret;

	if (skip != TAP_PASS)
		return skip;
	if (!env_open(&ca, &ct, &before))
		return TAP_FAIL;
	buf = buf_attach(ca, ct, DEV_ANY, &h);
	if (buf < 0)
		goto out;
	snprintf(spec, sizeof(spec), "needed:%u", HUGE_ANSWER);
	ca_host_fault(spec);
	ret = ct_map(ct, h, 0, &m);
	CHECK(ret == 0 && ct_mapping_bytes(&m) == SIZE,
	      "map with a %u-byte answer: %d", HUGE_ANSWER, ret);
	ca_host_fault("none");
	if (!ret)
		ct_unmap(ct, h);
	ct_detach(ct, h);
	close(buf);
	first_map_refused(ca, ct, DEV_ANY, "needed:0xfffffff8", -EIO);
	settled(ca, &before);
out:
	ca_host_fault("none");
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/*
 * A fatal signal ends a wait for a slow device at once (the old driver
 * waited uninterruptibly); what the device then does for the abandoned
 * request is undone: the pools come back.
 */
static enum tap_result test_kill_during_slow_map(void)
{
	struct ca_pool before;
	enum tap_result skip = ca_host_need_faults();
	int ca, ct, pipefd[2], status;
	long long abandoned0;
	uint64_t start, took;
	pid_t pid;
	char c;

	if (skip != TAP_PASS)
		return skip;
	if (!env_open(&ca, &ct, &before))
		return TAP_FAIL;
	if (!CHECK(pipe(pipefd) == 0, "pipe"))
		goto out;
	/* A cumulative counter: this kill must add to it. */
	abandoned0 = ca_transport_value("abandoned");
	if (!CHECK(abandoned0 >= 0, "no abandoned counter in debugfs"))
		goto out;
	ca_host_fault("slow:3000");
	pid = fork();
	if (pid == 0) {
		/* Its own files: they close, and release everything, as it dies. */
		static struct ct_mapping m;
		int cca, cct, buf = -1;
		uint32_t h;

		close(pipefd[0]);
		if (ca_env_open_device(&cca, &cct, DEV_ANY, CENALLOC_MASK_ANY))
			buf = buf_attach(cca, cct, DEV_ANY, &h);
		if (write(pipefd[1], "x", 1) != 1 || buf < 0)
			_exit(1);
		ct_map(cct, h, 0, &m);
		_exit(2);
	}
	close(pipefd[1]);
	CHECK(read(pipefd[0], &c, 1) == 1, "child ready");
	close(pipefd[0]);
	usleep(500000);		/* the child waits in the MAP now */
	start = ca_now_ns();
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	took = (ca_now_ns() - start) / 1000000;
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
	      "the child died of SIGKILL (status %#x)", status);
	CHECK(took < 1500, "the killed child took %llu ms to go (the answer comes after 3000)",
	      (unsigned long long)took);
	ca_host_fault("none");
	settled(ca, &before);
	CHECK(ca_transport_value("abandoned") > abandoned0,
	      "the request was abandoned (abandoned %lld, was %lld)",
	      ca_transport_value("abandoned"), abandoned0);
out:
	ca_host_fault("none");
	ca_env_close(&ca, &ct, NULL);
	return TAP_PASS;
}

/* Reload with the device's fault in force at probe, then honestly. */
static bool reload_with(const char *spec, const char *params)
{
	int ret;

	if (!ca_host_fault(spec))
		return false;
	ret = ca_module_reload(params);
	return CHECK(ret == 0, "reload with %s: %s", spec, strerror(-ret));
}

static enum tap_result need_reload(void)
{
	enum tap_result skip = ca_host_need_faults();
	char why[128];

	if (skip != TAP_PASS)
		return skip;
	if (!ca_module_ready(why, sizeof(why)))
		return tap_skip("%s", why);
	return TAP_PASS;
}

/*
 * Teardown with a max_batch of 1 and 2 (legal in config space): releasing
 * a CPU-mapped buffer needs UNMAP, DETACH and FREE, which the old driver
 * put in one batch and dropped beyond max_batch: the backing leaked.
 */
static enum tap_result test_teardown_small_batches(void)
{
	static struct ct_mapping m;
	enum tap_result skip = need_reload();
	struct ca_pool before;
	const char *specs[] = { "max-batch:1", "max-batch:2" };
	unsigned int i;
	uint32_t h;
	int ca, ct, buf;
	uint8_t *p;

	if (skip != TAP_PASS)
		return skip;
	for (i = 0; i < TAP_ARRAY_SIZE(specs); i++) {
		if (!reload_with(specs[i], NULL))
			break;
		CHECK(ca_transport_value("max_batch") == (long long)i + 1,
		      "max_batch %lld", ca_transport_value("max_batch"));
		if (!env_open(&ca, &ct, &before))
			break;
		buf = buf_attach(ca, ct, DEV_ANY, &h);
		if (buf >= 0) {
			p = ca_mmap(buf, SIZE);
			if (CHECK(p, "mmap"))
				ca_pattern_fill(p, SIZE, SEED);
			CHECK(ct_map(ct, h, 0, &m) == 0, "importer map");
			ct_unmap(ct, h);
			ct_detach(ct, h);
			if (p)
				munmap(p, SIZE);
			close(buf);
		}
		settled(ca, &before);
		ca_env_close(&ca, &ct, NULL);
	}
	reload_with("none", NULL);
	return TAP_PASS;
}

/* Sum of the "held" column of the pools table, -1 if unreadable. */
static long long pools_held(void)
{
	FILE *f = fopen(CENALLOC_DEBUGFS_ALLOCATORS, "r");
	bool in_pools = false;
	int column = -1, k;
	char line[512], *tok, *save;
	long long sum = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "# pools donated", 15)) {
			in_pools = true;
			continue;
		}
		if (!in_pools)
			continue;
		if (line[0] == '\n' || line[0] == '#')
			break;
		/* The columns by name: the header row first. */
		for (k = 0, tok = strtok_r(line, " \t\n", &save); tok;
		     k++, tok = strtok_r(NULL, " \t\n", &save)) {
			if (column < 0 && !strcmp(tok, "held")) {
				column = k;
				break;
			}
			if (column >= 0 && k == column) {
				sum = (sum < 0 ? 0 : sum) + atoll(tok);
				break;
			}
		}
		if (column < 0)
			break;	/* a table without the column */
	}
	fclose(f);
	return sum;
}

/*
 * A POOL_ADD whose answer is unreadable may have been accepted: its memory
 * stays with the device (held) until the next reset, and is not given back
 * to the page allocator meanwhile.
 */
static enum tap_result test_ambiguous_pool_add(void)
{
	enum tap_result skip = need_reload();
	const char *specs[] = { "short-answer:pool-add", "status-garbage:pool-add" };
	unsigned int i;
	long long held;

	if (skip != TAP_PASS)
		return skip;
	for (i = 0; i < TAP_ARRAY_SIZE(specs); i++) {
		if (!reload_with(specs[i], NULL))
			break;
		held = pools_held();
		CHECK(held > 0, "%s: %lld bytes held for the device", specs[i], held);
		CHECK(cenalloc_pools_not_donated() > 0, "%s: pools marked failed",
		      specs[i]);
	}
	if (reload_with("none", NULL)) {
		CHECK(pools_held() == 0, "honest: nothing held");
		CHECK(cenalloc_pools_not_donated() == 0, "honest: every pool donated");
	}
	return TAP_PASS;
}

/*
 * Reload with @spec in force at probe: the device must be refused (the
 * module loads and /dev/cenalloc exists, but it serves no device: INFO
 * fails with -ENODEV) and the kernel log must say why (@logline; the
 * spare device of run-vm --devices 2, whose daemon lies the same way,
 * may say it too once the first is refused).
 */
static void refused_at_probe(const char *spec, const char *logline)
{
	struct ca_pool pool;
	int logged, ret, ca;

	logged = ca_kmsg_count(logline);
	if (!ca_host_fault(spec))
		return;
	ret = ca_module_reload(NULL);
	if (CHECK(ret == 0, "reload with %s: %s", spec, strerror(-ret))) {
		ca = ca_open();
		if (CHECK(ca >= 0, "open: %s", strerror(-ca))) {
			ret = ca_pool_read(ca, &pool);
			CHECK(ret == -ENODEV, "%s: INFO %s, want ENODEV (no device served)",
			      spec, ret ? strerror(-ret) : "succeeded");
			close(ca);
		}
	}
	CHECK(ca_kmsg_count(logline) > logged, "%s: no log line \"%s\"", spec, logline);
}

/*
 * A pool align in config space that is not a power of two (the spec wants
 * one): ALIGN() of it gives block starts below the block or off the page.
 * The driver refuses the device at probe, with a log line.
 */
static enum tap_result test_pool_align_not_power_of_two(void)
{
	enum tap_result skip = need_reload();

	if (skip != TAP_PASS)
		return skip;
	refused_at_probe("pool-align:0x3000", "align 0x3000 is not a power of two");
	reload_with("none", NULL);
	return TAP_PASS;
}

/*
 * GET_INFO and config space disagree on an allocator's placement: attach
 * decisions read one and answer checks the other, so the driver refuses
 * the device at probe, with a log line.
 */
static enum tap_result test_info_disagrees_with_config(void)
{
	enum tap_result skip = need_reload();

	if (skip != TAP_PASS)
		return skip;
	refused_at_probe("info-placement", "config space says");
	reload_with("none", NULL);
	return TAP_PASS;
}

/*
 * GET_INFO claims one allocator more than its answer holds: the driver
 * would report allocators nobody described (INFO's num_allocators above
 * the entries it wrote). The answer is malformed: refused at probe.
 */
static enum tap_result test_info_count_beyond_answer(void)
{
	enum tap_result skip = need_reload();

	if (skip != TAP_PASS)
		return skip;
	refused_at_probe("info-count", "GET_INFO failed: -5");
	reload_with("none", NULL);
	return TAP_PASS;
}

/* A huge max_segments in config space is capped by the driver. */
static enum tap_result test_max_segments_capped(void)
{
	enum tap_result skip = need_reload();
	struct ca_pool before;
	char cap[32] = "";
	int ca, ct;

	if (skip != TAP_PASS)
		return skip;
	if (!CHECK(ca_param_read("max_segments", cap, sizeof(cap)) == 0,
		   "max_segments parameter"))
		return TAP_FAIL;
	if (reload_with("max-segments-huge", NULL)) {
		CHECK(ca_transport_value("max_segments") == atoll(cap),
		      "max_segments %lld, the cap %s",
		      ca_transport_value("max_segments"), cap);
		if (env_open(&ca, &ct, &before)) {
			first_map_refused(ca, ct, DEV_ANY, "needed:0xfffffff8", -EIO);
			settled(ca, &before);
			ca_env_close(&ca, &ct, NULL);
		}
	}
	reload_with("none", NULL);
	return TAP_PASS;
}

/*
 * A device that stops answering: the map fails with -ETIMEDOUT within
 * timeout_ms (the old driver waited forever, uninterruptibly), the device
 * is then broken: new operations fail at once with -EIO, every fd closes,
 * the kernel log says so once, and a reload recovers.
 */
static enum tap_result test_no_answer_breaks_the_device(void)
{
	static struct ct_mapping m;
	enum tap_result skip = need_reload();
	int ca, ct, buf, buf2, ret, logged;
	struct ca_pool before;
	uint64_t start, took;
	uint32_t h, h2;

	if (skip != TAP_PASS)
		return skip;
	logged = ca_kmsg_count("device marked broken");
	/* A driver without the parameter waits forever: that is the bug. */
	CHECK(ca_param_write("timeout_ms", "1000") == 0, "timeout_ms");
	if (!env_open(&ca, &ct, &before))
		goto out_reload;
	buf = buf_attach(ca, ct, DEV_ANY, &h);
	buf2 = buf_attach(ca, ct, DEV_ANY, &h2);
	ca_host_fault("no-answer:map");
	start = ca_now_ns();
	ret = ct_map(ct, h, 0, &m);
	took = (ca_now_ns() - start) / 1000000;
	CHECK(ret == -ETIMEDOUT, "map: %d, want -ETIMEDOUT", ret);
	CHECK(took >= 900 && took < 3000, "the map gave up after %llu ms (timeout 1000)",
	      (unsigned long long)took);
	CHECK(ca_transport_value("broken") == 1, "the device is marked broken");
	ca_host_fault("none");

	start = ca_now_ns();
	ret = ct_map(ct, h2, 0, &m);
	CHECK(ret == -EIO, "a new map: %d, want -EIO", ret);
	ret = ca_create(ca, SIZE, 0);
	CHECK(ret == -EIO, "a new buffer: %d, want -EIO", ret);
	if (ret >= 0)
		close(ret);
	took = (ca_now_ns() - start) / 1000000;
	CHECK(took < 500, "failing took %llu ms", (unsigned long long)took);
	CHECK(ca_kmsg_count("device marked broken") == logged + 1,
	      "the kernel log says so once");

	start = ca_now_ns();
	ct_detach(ct, h);
	ct_detach(ct, h2);
	close(buf);
	close(buf2);
	ca_env_close(&ca, &ct, NULL);
	took = (ca_now_ns() - start) / 1000000;
	CHECK(took < 500, "closing everything took %llu ms", (unsigned long long)took);
out_reload:
	/* The reload restores timeout_ms and resets the device. */
	if (reload_with("none", NULL) && env_open(&ca, &ct, &before)) {
		buf = buf_attach(ca, ct, DEV_ANY, &h);
		CHECK(buf >= 0 && ct_map(ct, h, 0, &m) == 0,
		      "after the reload the device maps again");
		ct_unmap(ct, h);
		ct_detach(ct, h);
		if (buf >= 0)
			close(buf);
		settled(ca, &before);
		ca_env_close(&ca, &ct, NULL);
	}
	return TAP_PASS;
}

static const struct tap_test tests[] = {
	TAP_TEST("lies in a first MAP answer are refused with -EIO", test_first_map_lies),
	TAP_TEST("a later MAP must match the backing already mapped",
		 test_later_map_must_match_backing),
	TAP_TEST("a MAP answer naming another buffer's memory is refused",
		 test_shared_backing_refused),
	TAP_TEST("an ATTACH answered with an unlisted map type is refused",
		 test_attach_type_lie),
	TAP_TEST("a refused deferred ATTACH does not fail the other attachments",
		 test_refused_attach_is_not_resent),
	TAP_TEST("garbage statuses and short answers fail with -EIO", test_garbled_answers),
	TAP_TEST("large answers are built from pages; impossible ones refused",
		 test_large_answers),
	TAP_TEST("a fatal signal ends a wait for a slow device; its work is undone",
		 test_kill_during_slow_map),
	TAP_TEST("teardown frees everything with max_batch 1 and 2",
		 test_teardown_small_batches),
	TAP_TEST("an ambiguous POOL_ADD keeps its memory for the device",
		 test_ambiguous_pool_add),
	TAP_TEST("a huge max_segments in config space is capped", test_max_segments_capped),
	TAP_TEST("a pool align that is not a power of two: the device is refused",
		 test_pool_align_not_power_of_two),
	TAP_TEST("GET_INFO placement that contradicts config space: the device is refused",
		 test_info_disagrees_with_config),
	TAP_TEST("GET_INFO counting more allocators than it holds is refused at probe",
		 test_info_count_beyond_answer),
	TAP_TEST("a device that stops answering: -ETIMEDOUT, then -EIO, reload recovers",
		 test_no_answer_breaks_the_device),
};

/*
 * The lies are told in MAP answers: the first map of a small buffer must
 * reach the device as MAP, not as a leased map (cenalloc_lease.c). Leases
 * are off while this file runs (also across its reloads, which keep the
 * parameters), and back on after.
 */
int main(int argc, char **argv)
{
	char stock[32] = "";
	int ret;

	if (ca_param_read("lease_stock", stock, sizeof(stock)) == 0 &&
	    ca_param_write("lease_stock", "0"))
		stock[0] = '\0';
	ret = tap_main(tests, TAP_ARRAY_SIZE(tests), argc, argv);
	if (stock[0])
		ca_param_write("lease_stock", stock);
	return ret;
}
