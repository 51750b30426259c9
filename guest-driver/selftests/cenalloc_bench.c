// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc_bench: /dev/cenalloc against the kernel's own system dma-heap,
 * in the same boot and through the same importer (/dev/cenalloc_test
 * device 0, mask ANY; a heap buffer is attached with plain
 * dma_buf_attach()).
 *
 * 0. The conditions: the guest CPU model and the accelerator (from the
 *    kernel command line run-vm writes: cenalloc.cpu=, cenalloc.accel=;
 *    and /proc/cpuinfo), and the guest RAM cenalloc.ko took at probe
 *    (MemFree before and after its insmod, measured by /init).
 * 1. Latency of create + attach + first map + unmap + detach + close for
 *    4 KiB, 64 KiB, 1 MiB and 64 MiB buffers: median and p90 over N runs
 *    (N is printed; it shrinks when a cell would take more than ~60 s),
 *    and the ratio of the medians (cenalloc / heap) of each size. Then a
 *    burst: 100 buffers of 4 KiB created, attached and mapped, then all
 *    unmapped, detached and closed; the time of the whole burst.
 * 2. memset bandwidth through mmap of a 64 MiB buffer: the first pass
 *    (page faults included) and the best of 5 later passes.
 * 3. Where a cenalloc cycle's time goes: per latency row, the control
 *    queue's kicks, interrupts and chains per cycle, virtio interrupts per
 *    cycle from /proc/interrupts, and the driver's latencies (debugfs
 *    cenalloc/transport: queued -> answer reaped, for waited and posted
 *    chains; queued -> the waiting task runs again).
 *
 *   cenalloc_bench [-q]     -q: fewer runs (quick check)
 *   cenalloc_bench -p cenalloc|heap [-n N]
 *                           only N (default 2000) 4 KiB cycles of one
 *                           provider, nothing else: the loop
 *                           qemu-scripts/run-vm --mode profile profiles
 *   cenalloc_bench -m [-n N]
 *                           only the memset study: N rounds (default 8) of a
 *                           fresh 64 MiB buffer of each provider, the order
 *                           alternating (cenalloc first in even rounds),
 *                           the second half with a 2 s rest before the first
 *                           pass, each pass's memset and SYNC ioctls timed
 *                           apart and the guest's page faults counted
 *
 * Both providers are reached through libcenalloc: cenalloc_create() and
 * cenalloc_heap_open()/cenalloc_heap_alloc() (one ioctl each, as before).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cenalloc.h>

#include "ca_module.h"
#include "cenalloc_util.h"

#define HEAP_NAME	"system"
#define DEVICE_STATS_PATH	"/sys/kernel/debug/cenalloc/device_stats"
#define CELL_BUDGET_NS	(60ull * 1000000000ull)
/* Written by /init (qemu-scripts/guest-init) in bench mode. */
#define PROBE_MEMORY_PATH	"/tmp/cenalloc-probe-kib"

enum provider { CENALLOC, HEAP, NPROVIDERS };

static const char *const provider_names[NPROVIDERS] = {
	"/dev/cenalloc", "dma_heap/system",
};

static int ca = -1, ct = -1, heap = -1;
static struct ct_mapping *mapping;

static int create_buffer(enum provider p, uint64_t size)
{
	if (p == CENALLOC)
		return cenalloc_create(ca, size, 0,
				       CENALLOC_CREATE_RDWR | CENALLOC_CREATE_CLOEXEC);
	return cenalloc_heap_alloc(heap, size, O_RDWR | O_CLOEXEC, 0);
}

/* Interrupts of every virtio vector in /proc/interrupts, all CPUs. */
static uint64_t virtio_interrupts(void)
{
	FILE *f = fopen("/proc/interrupts", "r");
	char line[1024];
	uint64_t total = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		char *p = strchr(line, ':');

		if (!p || !strstr(line, "virtio"))
			continue;
		for (p++;;) {
			char *end;
			unsigned long long n = strtoull(p, &end, 10);

			if (end == p)
				break;
			total += n;
			p = end;
		}
	}
	fclose(f);
	return total;
}

/* The daemon's own counters (STATS), read through debugfs. */
struct daemon_counters {
	double batches, wakeups, signals, busy_ns;
	double poll_hits, poll_misses, poll_ns;	/* -1: an older daemon */
};

static double json_number(const char *json, const char *name)
{
	char key[64];
	const char *p;

	snprintf(key, sizeof(key), "\"%s\":", name);
	p = strstr(json, key);
	return p ? strtod(p + strlen(key), NULL) : -1;
}

static bool daemon_counters_read(struct daemon_counters *c)
{
	static char json[256 * 1024];
	ssize_t n, got = 0;
	int fd;

	fd = open(DEVICE_STATS_PATH, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	while ((n = read(fd, json + got, sizeof(json) - 1 - got)) > 0)
		got += n;
	close(fd);
	json[got] = 0;
	c->batches = json_number(json, "batches");
	c->wakeups = json_number(json, "control_wakeups");
	c->signals = json_number(json, "control_signals");
	c->busy_ns = json_number(json, "control_busy_ns");
	c->poll_hits = json_number(json, "poll_hits");
	c->poll_misses = json_number(json, "poll_misses");
	c->poll_ns = json_number(json, "poll_busy_ns");
	return c->batches >= 0 && c->wakeups >= 0 && c->signals >= 0 &&
	       c->busy_ns >= 0;
}

/* The transport figures of one cenalloc latency row. */
struct breakdown {
	const char *label;
	unsigned int cycles;
	uint64_t irqs;
	bool have_daemon;
	struct daemon_counters daemon;	/* per cycle */
	char text[2048];
};

static struct breakdown breakdowns[8];
static unsigned int nbreakdowns;

static void transport_save(const char *label, unsigned int cycles,
			   uint64_t irqs, const struct daemon_counters *before)
{
	struct breakdown *b = &breakdowns[nbreakdowns];
	struct daemon_counters after;
	ssize_t n;
	int fd;

	if (nbreakdowns >= sizeof(breakdowns) / sizeof(breakdowns[0]))
		return;
	/* Reading the stats is one batch of its own: not the cycles'. */
	b->have_daemon = before && daemon_counters_read(&after);
	if (b->have_daemon) {
		b->daemon.batches = (after.batches - before->batches - 1) / cycles;
		b->daemon.wakeups = (after.wakeups - before->wakeups - 1) / cycles;
		b->daemon.signals = (after.signals - before->signals - 1) / cycles;
		b->daemon.busy_ns = (after.busy_ns - before->busy_ns) / cycles;
		b->daemon.poll_hits = (after.poll_hits - before->poll_hits) / cycles;
		b->daemon.poll_misses = (after.poll_misses - before->poll_misses) / cycles;
		b->daemon.poll_ns = (after.poll_ns - before->poll_ns) / cycles;
		if (after.poll_hits < 0 || before->poll_hits < 0)
			b->daemon.poll_hits = -1;
	}
	fd = open(CA_TRANSPORT_PATH, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	n = read(fd, b->text, sizeof(b->text) - 1);
	close(fd);
	if (n <= 0 || !cycles)
		return;
	b->text[n] = 0;
	b->label = label;
	b->cycles = cycles;
	b->irqs = irqs;
	nbreakdowns++;
}

static void transport_row(const struct breakdown *b)
{
	const char *label = b->label, *text = b->text, *line;
	unsigned int cycles = b->cycles;
	uint64_t irqs = b->irqs;

	printf("  %-6s per cycle: kicks %.2f, ctrl interrupts %.2f, chains %.2f, polled %.2f, virtio irqs %.2f\n",
	       label, ca_text_value(text, "kicks") / (double)cycles,
	       ca_text_value(text, "interrupts") / (double)cycles,
	       ca_text_value(text, "chains_done") / (double)cycles,
	       ca_text_value(text, "polled") / (double)cycles,
	       irqs / (double)cycles);
	if (b->have_daemon)
		printf("  %-6s daemon per cycle: batches %.2f, wakeups %.2f, signals %.2f, busy %.1f us\n",
		       label, b->daemon.batches, b->daemon.wakeups,
		       b->daemon.signals, b->daemon.busy_ns / 1e3);
	if (b->have_daemon && b->daemon.poll_hits >= 0)
		printf("  %-6s daemon polling per cycle: found the next request %.2f, none %.2f, polled %.1f us\n",
		       label, b->daemon.poll_hits, b->daemon.poll_misses,
		       b->daemon.poll_ns / 1e3);
	/* The latency table, from its heading to the end. */
	for (line = strstr(text, "latency_us"); line && *line;) {
		const char *end = strchr(line, '\n');

		if (!end)
			break;
		printf("    %.*s\n", (int)(end - line), line);
		line = end + 1;
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The steps of one cycle, timed apart for the phase table. */
enum phase { PH_CREATE, PH_ATTACH, PH_MAP, PH_UNMAP, PH_DETACH, PH_CLOSE, NPHASES };

static const char *const phase_names[NPHASES] = {
	"create", "attach", "map", "unmap", "detach", "close",
};

/* One create + attach + first map + unmap + detach + close, in ns;
 * phase[] gets each step's share.
 */
static int64_t one_cycle(enum provider p, uint64_t size, uint64_t *phase)
{
	uint64_t t[NPHASES + 1];
	uint32_t handle;
	int fd, ret;

	t[0] = ca_now_ns();
	fd = create_buffer(p, size);
	if (fd < 0)
		return fd;
	t[1] = ca_now_ns();
	ret = ct_attach(ct, fd, 0, &handle, NULL);
	t[2] = t[3] = t[4] = t[5] = ca_now_ns();
	if (!ret) {
		ret = ct_map(ct, handle, 0, mapping);
		t[3] = t[4] = ca_now_ns();
		if (!ret) {
			ct_unmap(ct, handle);
			t[4] = ca_now_ns();
		}
		ct_detach(ct, handle);
		t[5] = ca_now_ns();
	}
	close(fd);
	t[6] = ca_now_ns();
	for (int i = 0; i < NPHASES; i++)
		phase[i] = t[i + 1] - t[i];
	return ret ? ret : (int64_t)(t[NPHASES] - t[0]);
}


/* Median of each step, per latency row, printed after the table. */
struct phase_row {
	const char *label;
	enum provider provider;
	double median_us[NPHASES];
};

static struct phase_row phase_rows[16];
static unsigned int nphase_rows;

/* @scratch: room for @n values. */
static void phase_save(enum provider p, const char *label,
		       const uint64_t *phases, unsigned int n, uint64_t *scratch)
{
	struct phase_row *row = &phase_rows[nphase_rows];

	if (!n || nphase_rows >= sizeof(phase_rows) / sizeof(phase_rows[0]))
		return;
	row->label = label;
	row->provider = p;
	for (int ph = 0; ph < NPHASES; ph++) {
		for (unsigned int i = 0; i < n; i++)
			scratch[i] = phases[(size_t)i * NPHASES + ph];
		qsort(scratch, n, sizeof(*scratch), cmp_u64);
		row->median_us[ph] = scratch[n / 2] / 1e3;
	}
	nphase_rows++;
}

/* Prints one row; returns the median in microseconds, or -1. */
static double latency_row(enum provider p, uint64_t size, const char *label,
			  unsigned int runs, bool breakdown)
{
	uint64_t *ns = calloc(runs, sizeof(*ns)), start, irqs;
	uint64_t *phases = calloc((size_t)runs * NPHASES, sizeof(*phases));
	bool transport = breakdown && ca_transport_reset();
	struct daemon_counters daemon;
	bool have_daemon = transport && daemon_counters_read(&daemon);
	unsigned int n = 0;
	double median;

	if (!ns || !phases) {
		free(ns);
		free(phases);
		return -1;
	}
	irqs = virtio_interrupts();
	start = ca_now_ns();
	while (n < runs) {
		int64_t t = one_cycle(p, size, phases + (size_t)n * NPHASES);

		if (t < 0) {
			printf("%-8s %-17s failed: %s\n", label, provider_names[p],
			       strerror((int)-t));
			free(ns);
			free(phases);
			return -1;
		}
		ns[n++] = t;
		/* Stop early (at least 10 runs) when the cell is too slow. */
		if (n >= 10 && ca_now_ns() - start > CELL_BUDGET_NS)
			break;
	}
	irqs = virtio_interrupts() - irqs;
	qsort(ns, n, sizeof(*ns), cmp_u64);
	median = ns[n / 2] / 1e3;
	printf("%-8s %-17s %6u %12.1f %12.1f %12.1f\n", label, provider_names[p], n,
	       ns[n / 2] / 1e3, ns[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1] / 1e3,
	       ns[0] / 1e3);
	if (transport)
		transport_save(label, n, irqs, have_daemon ? &daemon : NULL);
	phase_save(p, label, phases, n, ns);
	free(ns);
	free(phases);
	return median;
}

#define BURST_BUFFERS	100

/*
 * One burst: BURST_BUFFERS buffers of @size created, attached and mapped,
 * then all unmapped, detached and closed. Returns its time in ns or -errno
 * (everything made so far is released).
 */
static int64_t one_burst(enum provider p, uint64_t size)
{
	static int fds[BURST_BUFFERS];
	static uint32_t handles[BURST_BUFFERS];
	unsigned int made = 0, i;
	uint64_t t0 = ca_now_ns();
	int ret = 0;

	for (; made < BURST_BUFFERS; made++) {
		fds[made] = create_buffer(p, size);
		if (fds[made] < 0) {
			ret = fds[made];
			break;
		}
		ret = ct_attach(ct, fds[made], 0, &handles[made], NULL);
		if (!ret) {
			ret = ct_map(ct, handles[made], 0, mapping);
			if (ret)
				ct_detach(ct, handles[made]);
		}
		if (ret) {
			close(fds[made]);
			break;
		}
	}
	for (i = 0; i < made; i++) {
		ct_unmap(ct, handles[i]);
		ct_detach(ct, handles[i]);
		close(fds[i]);
	}
	return ret ? ret : (int64_t)(ca_now_ns() - t0);
}

/* The burst row of one provider: median and p90 of the whole burst. */
static double burst_row(enum provider p, uint64_t size, const char *label,
			unsigned int runs)
{
	uint64_t *ns = calloc(runs, sizeof(*ns));
	long long taken0 = -1, missed0 = -1;
	unsigned int n;
	double median;

	if (!ns)
		return -1;
	if (p == CENALLOC) {
		taken0 = ca_file_value(CA_ALLOCATORS_PATH, "lease_taken");
		missed0 = ca_file_value(CA_ALLOCATORS_PATH, "lease_missed");
	}
	for (n = 0; n < runs; n++) {
		int64_t t = one_burst(p, size);

		if (t < 0) {
			printf("%-8s %-17s failed: %s\n", label, provider_names[p],
			       strerror((int)-t));
			free(ns);
			return -1;
		}
		ns[n] = t;
	}
	qsort(ns, n, sizeof(*ns), cmp_u64);
	median = ns[n / 2] / 1e3;
	printf("%-8s %-17s %6u %12.1f %12.1f %12.1f\n", label, provider_names[p],
	       n, median, ns[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1] / 1e3,
	       ns[0] / 1e3);
	/* Whether the stock carried the bursts or maps waited for the device. */
	if (taken0 >= 0 && missed0 >= 0)
		printf("%-8s %-17s first maps per burst: %.1f from the leased stock, %.1f missed it\n",
		       label, provider_names[p],
		       (ca_file_value(CA_ALLOCATORS_PATH, "lease_taken") - taken0) / (double)n,
		       (ca_file_value(CA_ALLOCATORS_PATH, "lease_missed") - missed0) / (double)n);
	free(ns);
	return median;
}

static void ratio_line(const char *label, double ca_us, double heap_us)
{
	if (ca_us > 0 && heap_us > 0)
		printf("%-8s %-17s %.2f x the heap's median\n", label, "ratio",
		       ca_us / heap_us);
}

/* Word @key=VALUE of the kernel command line into @buf ("?" if absent). */
static void cmdline_value(const char *key, char *buf, size_t len)
{
	char line[4096], *p;
	FILE *f = fopen("/proc/cmdline", "r");
	size_t klen = strlen(key);

	snprintf(buf, len, "?");
	if (!f)
		return;
	if (fgets(line, sizeof(line), f)) {
		for (p = strtok(line, " \n"); p; p = strtok(NULL, " \n"))
			if (!strncmp(p, key, klen) && p[klen] == '=')
				snprintf(buf, len, "%s", p + klen + 1);
	}
	fclose(f);
}

/* The CPU model, the accelerator, and what cenalloc.ko took at probe. */
static void print_conditions(void)
{
	char cpu[64], accel[64], model[256] = "?", line[256];
	FILE *f = fopen("/proc/cpuinfo", "r");
	long long kib = -1;

	cmdline_value("cenalloc.cpu", cpu, sizeof(cpu));
	cmdline_value("cenalloc.accel", accel, sizeof(accel));
	while (f && fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':');

		if (!strncmp(line, "model name", 10) && colon) {
			snprintf(model, sizeof(model), "%s", colon + 2);
			model[strcspn(model, "\n")] = 0;
			break;
		}
	}
	if (f)
		fclose(f);
	f = fopen(PROBE_MEMORY_PATH, "r");
	if (f) {
		if (fscanf(f, "%lld", &kib) != 1)
			kib = -1;
		fclose(f);
	}
	printf("conditions: accelerator %s, -cpu %s (guest sees \"%s\"), %ld vCPUs\n",
	       accel, cpu, model, sysconf(_SC_NPROCESSORS_ONLN));
	if (kib >= 0)
		printf("guest RAM taken by cenalloc.ko at probe: %lld KiB (MemFree before and after its insmod)\n\n",
		       kib);
	else
		printf("guest RAM taken by cenalloc.ko at probe: not measured (%s missing)\n\n",
		       PROBE_MEMORY_PATH);
}



static void bandwidth_row(enum provider p, uint64_t size)
{
	double first = 0, best = 0;
	uint32_t handle = 0;
	unsigned int pass;
	uint8_t *mem;
	int fd;

	fd = create_buffer(p, size);
	if (fd < 0) {
		printf("%-17s failed: %s\n", provider_names[p], strerror(-fd));
		return;
	}
	/* cenalloc allocates at the first map: do it before timing. */
	if (ct_attach(ct, fd, 0, &handle, NULL) == 0)
		ct_map(ct, handle, 0, mapping);
	mem = ca_mmap(fd, size);
	if (!mem) {
		printf("%-17s mmap failed: %s\n", provider_names[p], strerror(errno));
		goto out;
	}
	for (pass = 0; pass < 6; pass++) {
		uint64_t t0 = ca_now_ns(), dt;
		double gbs;

		ca_cpu_access(fd, true);
		memset(mem, pass + 1, size);
		ca_cpu_access(fd, false);
		dt = ca_now_ns() - t0;
		gbs = (double)size / dt;	/* bytes per ns = GB/s */
		if (pass == 0)
			first = gbs;
		else if (gbs > best)
			best = gbs;
	}
	printf("%-17s %16.2f %16.2f\n", provider_names[p], first, best);
	munmap(mem, size);
out:
	if (handle) {
		ct_unmap(ct, handle);
		ct_detach(ct, handle);
	}
	close(fd);
}

/*
 * -p: @runs 4 KiB cycles of @p and nothing else (a loop to profile).
 * Prints the runs and the median; returns the exit status.
 */
static int profile_loop(enum provider p, unsigned int runs)
{
	uint64_t *ns = calloc(runs, sizeof(*ns)), phase[NPHASES];
	unsigned int n;

	if (!ns)
		return 1;
	for (n = 0; n < runs; n++) {
		int64_t t = one_cycle(p, 4 * CA_KIB, phase);

		if (t < 0) {
			printf("profile-loop %s failed: %s\n", provider_names[p],
			       strerror((int)-t));
			free(ns);
			return 1;
		}
		ns[n] = t;
	}
	qsort(ns, runs, sizeof(*ns), cmp_u64);
	printf("profile-loop device=%s size=4096 runs=%u median_us=%.1f\n",
	       provider_names[p], runs, ns[runs / 2] / 1e3);
	free(ns);
	return 0;
}

static long minor_faults(void)
{
	struct rusage ru;

	return getrusage(RUSAGE_SELF, &ru) ? -1 : ru.ru_minflt;
}

/*
 * -m: one fresh buffer of @size of @p, mapped as bandwidth_row() does; three
 * passes, each the SYNC START ioctl, the memset and the SYNC END ioctl
 * timed apart. One line: round, provider, the time of create + attach +
 * first map + mmap, per pass the memset's GB/s and the ioctls' µs, and the
 * guest's minor faults over the whole first pass.
 */
static int memset_study_one(unsigned int round, enum provider p, uint64_t size,
			    unsigned int settle_s)
{
	double gbs[3], start_us[3], end_us[3];
	uint64_t setup = ca_now_ns();
	uint32_t handle = 0;
	long faults = -1;
	unsigned int pass;
	uint8_t *mem;
	int fd, ret = 1;

	fd = create_buffer(p, size);
	if (fd < 0) {
		printf("memset-study round=%u provider=%s failed: %s\n", round,
		       provider_names[p], strerror(-fd));
		return 1;
	}
	if (ct_attach(ct, fd, 0, &handle, NULL) == 0)
		ct_map(ct, handle, 0, mapping);
	mem = ca_mmap(fd, size);
	if (!mem) {
		printf("memset-study round=%u provider=%s mmap failed: %s\n", round,
		       provider_names[p], strerror(errno));
		goto out;
	}
	setup = ca_now_ns() - setup;
	/* Marks for a host-side observer (the console is timestamped there). */
	printf("memset-study-mark round=%u provider=%s setup-done\n", round,
	       provider_names[p]);
	if (settle_s)
		sleep(settle_s);
	for (pass = 0; pass < 3; pass++) {
		uint64_t t0, t1, t2, t3;
		long f0 = minor_faults();

		t0 = ca_now_ns();
		ca_cpu_access(fd, true);
		t1 = ca_now_ns();
		memset(mem, pass + 1, size);
		t2 = ca_now_ns();
		ca_cpu_access(fd, false);
		t3 = ca_now_ns();
		if (pass == 0)
			faults = minor_faults() - f0;
		gbs[pass] = (double)size / (t2 - t1);
		start_us[pass] = (t1 - t0) / 1e3;
		end_us[pass] = (t3 - t2) / 1e3;
	}
	printf("memset-study-mark round=%u provider=%s passes-done\n", round,
	       provider_names[p]);
	printf("memset-study round=%u provider=%s settle_s=%u setup_us=%.0f pass1_gbs=%.2f pass2_gbs=%.2f pass3_gbs=%.2f start1_us=%.1f end1_us=%.1f start2_us=%.1f end2_us=%.1f start3_us=%.1f end3_us=%.1f pass1_faults=%ld pass1_with_sync_gbs=%.2f\n",
	       round, provider_names[p], settle_s, setup / 1e3, gbs[0], gbs[1],
	       gbs[2], start_us[0], end_us[0], start_us[1], end_us[1],
	       start_us[2], end_us[2], faults,
	       (double)size / (start_us[0] * 1e3 + size / gbs[0] + end_us[0] * 1e3));
	munmap(mem, size);
	ret = 0;
out:
	if (handle) {
		ct_unmap(ct, handle);
		ct_detach(ct, handle);
	}
	close(fd);
	return ret;
}

/*
 * Rounds of one fresh 64 MiB buffer of each provider, the order
 * alternating; in the second half of the rounds each buffer rests 2 s
 * between its setup and the first pass (what the device still does in the
 * background then has finished).
 */
static int memset_study(unsigned int rounds)
{
	unsigned int r;
	int status = 0;

	for (r = 0; r < rounds; r++) {
		enum provider first = r % 2 ? HEAP : CENALLOC;
		unsigned int settle = r >= rounds / 2 ? 2 : 0;

		status |= memset_study_one(r, first, 64 * CA_MIB, settle);
		status |= memset_study_one(r, first == HEAP ? CENALLOC : HEAP,
					   64 * CA_MIB, settle);
	}
	return status;
}

int main(int argc, char **argv)
{
	static const struct {
		uint64_t size;
		const char *label;
		unsigned int runs, quick_runs;
	} sizes[] = {
		{ 4 * CA_KIB, "4 KiB", 500, 50 },
		{ 64 * CA_KIB, "64 KiB", 500, 50 },
		{ 1 * CA_MIB, "1 MiB", 300, 30 },
		{ 64 * CA_MIB, "64 MiB", 30, 5 },
	};
	bool quick = false, study = false;
	int only = -1;
	unsigned int runs = 0;
	char poll_us[32];
	unsigned int i;
	int p, opt;

	while ((opt = getopt(argc, argv, "qmp:n:")) != -1) {
		switch (opt) {
		case 'q':
			quick = true;
			break;
		case 'm':
			study = true;
			break;
		case 'p':
			if (!strcmp(optarg, "cenalloc"))
				only = CENALLOC;
			else if (!strcmp(optarg, "heap"))
				only = HEAP;
			else
				goto usage;
			break;
		case 'n':
			runs = strtoul(optarg, NULL, 0);
			if (!runs || runs > 1000000)
				goto usage;
			break;
		default:
			goto usage;
		}
	}
	if (optind != argc || (study && only >= 0)) {
usage:
		fprintf(stderr, "usage: cenalloc_bench [-q] | -p cenalloc|heap [-n N] | -m [-n N]\n");
		return 2;
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	mapping = calloc(1, sizeof(*mapping));
	ca = cenalloc_open();
	ct_load_module();
	ct = ct_open();
	heap = cenalloc_heap_open(HEAP_NAME);
	if (ca < 0 || ct < 0 || !mapping) {
		fprintf(stderr, "cenalloc_bench: needs %s and %s\n", CA_DEVICE_PATH, CT_DEVICE_PATH);
		return 1;
	}
	if (heap < 0)
		fprintf(stderr, "cenalloc_bench: no %s/%s (%s), cenalloc only\n",
			CENALLOC_HEAP_DIR, HEAP_NAME, strerror(-heap));
	if (ct_set_device1(ct, 0, CENALLOC_MASK_ANY, 0)) {
		fprintf(stderr, "cenalloc_bench: SET_DEVICE failed\n");
		return 1;
	}

	if ((only == HEAP || study) && heap < 0)
		return 1;
	if (only >= 0)
		return profile_loop(only, runs ? runs : 2000);
	if (study)
		return memset_study(runs ? runs : 8);

	print_conditions();
	printf("create + attach + first map + unmap + detach + close (microseconds)\n");
	printf("%-8s %-17s %6s %12s %12s %12s\n", "size", "provider", "runs", "median", "p90", "min");
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		double median[NPROVIDERS] = { -1, -1 };

		for (p = 0; p < NPROVIDERS; p++)
			if (p == CENALLOC || heap >= 0)
				median[p] = latency_row(p, sizes[i].size, sizes[i].label,
							quick ? sizes[i].quick_runs : sizes[i].runs,
							p == CENALLOC);
		ratio_line(sizes[i].label, median[CENALLOC], median[HEAP]);
	}
	{
		double median[NPROVIDERS] = { -1, -1 };

		printf("\nburst: %d buffers of 4 KiB created, attached and mapped, then unmapped, detached and closed (microseconds per burst)\n",
		       BURST_BUFFERS);
		printf("%-8s %-17s %6s %12s %12s %12s\n", "burst", "provider", "runs", "median", "p90", "min");
		for (p = 0; p < NPROVIDERS; p++)
			if (p == CENALLOC || heap >= 0)
				median[p] = burst_row(p, 4 * CA_KIB, "100x4K", quick ? 5 : 30);
		ratio_line("100x4K", median[CENALLOC], median[HEAP]);
	}
	/* The driver's answer polling against sleeping, in the same boot. */
	if (!ca_param_read("poll_us", poll_us, sizeof(poll_us)) &&
	    strcmp(poll_us, "0") && !ca_param_write("poll_us", "0")) {
		latency_row(CENALLOC, sizes[0].size, "4K poll0",
			    quick ? sizes[0].quick_runs : sizes[0].runs, true);
		ca_param_write("poll_us", poll_us);
		printf("(4K poll0: the 4 KiB row with the driver's poll_us=0 instead of %s)\n",
		       poll_us);
	}

	printf("\nmedian of each step (microseconds)\n%-8s %-17s", "size", "provider");
	for (i = 0; i < NPHASES; i++)
		printf(" %9s", phase_names[i]);
	printf("\n");
	for (i = 0; i < nphase_rows; i++) {
		printf("%-8s %-17s", phase_rows[i].label,
		       provider_names[phase_rows[i].provider]);
		for (p = 0; p < NPHASES; p++)
			printf(" %9.1f", phase_rows[i].median_us[p]);
		printf("\n");
	}
	if (nbreakdowns)
		printf("\n/dev/cenalloc transport (debugfs %s, latencies of the last chains)\n",
		       CA_TRANSPORT_PATH);
	for (i = 0; i < nbreakdowns; i++)
		transport_row(&breakdowns[i]);

	printf("\nmemset through mmap of a 64 MiB buffer (GB/s)\n");
	printf("%-17s %16s %16s\n", "provider", "first pass", "best of 5 more");
	for (p = 0; p < NPROVIDERS; p++)
		if (p == CENALLOC || heap >= 0)
			bandwidth_row(p, 64 * CA_MIB);
	close(ca);
	close(ct);
	if (heap >= 0)
		close(heap);
	free(mapping);
	return 0;
}
