// SPDX-License-Identifier: GPL-2.0
#include "cenalloc_util.h"
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/dma-buf.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

int ca_ioctl(int fd, unsigned long request, void *arg)
{
	int ret;

	do {
		ret = ioctl(fd, request, arg);
	} while (ret < 0 && errno == EINTR);
	return ret < 0 ? -errno : ret;
}

int ca_open(void)
{
	int fd = open(CA_DEVICE_PATH, O_RDWR | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

int ca_create(int ca, uint64_t size, uint32_t initial_mask)
{
	struct cenalloc_create_arg arg = {
		.size = size,
		.flags = CENALLOC_CREATE_CLOEXEC | CENALLOC_CREATE_RDWR,
		.initial_mask = initial_mask,
	};
	int ret = ca_ioctl(ca, CENALLOC_IOC_CREATE, &arg);

	return ret < 0 ? ret : arg.fd;
}

int ca_phys(int ca, int buf, uint64_t *addr, uint64_t *len)
{
	struct cenalloc_phys_arg arg = { .fd = buf };
	int ret = ca_ioctl(ca, CENALLOC_IOC_PHYS, &arg);

	if (ret)
		return ret;
	*addr = arg.addr;
	*len = arg.len;
	return 0;
}

int ca_checksum(int ca, int buf, uint64_t *checksum, uint64_t *len)
{
	struct cenalloc_checksum_arg arg = { .fd = buf };
	int ret = ca_ioctl(ca, CENALLOC_IOC_CHECKSUM, &arg);

	if (ret)
		return ret;
	*checksum = arg.checksum;
	*len = arg.len;
	return 0;
}

int ca_fill(int ca, int buf, uint64_t seed)
{
	struct cenalloc_fill_arg arg = { .fd = buf, .seed = seed };

	return ca_ioctl(ca, CENALLOC_IOC_FILL, &arg);
}

int ca_set_device_mask(int ca, const char *dev_name, uint32_t mask)
{
	struct cenalloc_device_mask_arg arg = { .mask = mask };

	if (strlen(dev_name) >= sizeof(arg.name))
		return -ENAMETOOLONG;
	strcpy(arg.name, dev_name);
	return ca_ioctl(ca, CENALLOC_IOC_SET_DEVICE_MASK, &arg);
}

int64_t ca_buf_size(int buf)
{
	off_t end = lseek(buf, 0, SEEK_END);

	return end < 0 ? -errno : (int64_t)end;
}

void *ca_mmap(int buf, size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, buf, 0);

	return p == MAP_FAILED ? NULL : p;
}

int ca_pool_read(int ca, struct ca_pool *pool)
{
	int ret;

	memset(pool, 0, sizeof(*pool));
	pool->info.max_allocators = CA_MAX_ALLOCATORS;
	pool->info.allocators_ptr = (uintptr_t)pool->alloc;
	ret = ca_ioctl(ca, CENALLOC_IOC_INFO, &pool->info);
	if (ret)
		return ret;
	pool->count = pool->info.num_allocators < CA_MAX_ALLOCATORS ?
		      pool->info.num_allocators : CA_MAX_ALLOCATORS;
	return 0;
}

uint64_t ca_pool_free(const struct ca_pool *pool)
{
	uint64_t sum = 0;
	uint32_t i;

	for (i = 0; i < pool->count; i++)
		sum += pool->alloc[i].free;
	return sum;
}

uint64_t ca_pool_used(const struct ca_pool *pool)
{
	uint64_t sum = 0;
	uint32_t i;

	for (i = 0; i < pool->count; i++)
		sum += pool->alloc[i].capacity - pool->alloc[i].free;
	return sum;
}

bool ca_pool_same(const struct ca_pool *before, const struct ca_pool *after)
{
	bool same = before->count == after->count;
	uint32_t i;

	if (!same)
		tap_diag("allocator count %u -> %u", before->count, after->count);
	for (i = 0; same && i < before->count; i++) {
		const struct cenalloc_allocator_info *a = &before->alloc[i];
		const struct cenalloc_allocator_info *b = &after->alloc[i];

		/* An elastic pool may have grown meanwhile: compare use. */
		if (a->capacity - a->free != b->capacity - b->free ||
		    a->num_buffers != b->num_buffers) {
			tap_diag("allocator %u (%.16s): free %llu -> %llu, buffers %u -> %u, capacity %llu -> %llu",
				 a->id, a->name, (unsigned long long)a->free,
				 (unsigned long long)b->free, a->num_buffers,
				 b->num_buffers,
				 (unsigned long long)a->capacity,
				 (unsigned long long)b->capacity);
			same = false;
		} else if (a->capacity != b->capacity) {
			tap_diag("allocator %u (%.16s): capacity %llu -> %llu, as much in use",
				 a->id, a->name,
				 (unsigned long long)a->capacity,
				 (unsigned long long)b->capacity);
		}
	}
	if (before->info.num_buffers != after->info.num_buffers) {
		tap_diag("live buffers %u -> %u", before->info.num_buffers,
			 after->info.num_buffers);
		same = false;
	}
	return same;
}

static int pool_changed(const struct ca_pool *before,
			const struct ca_pool *after, bool dropped)
{
	int found = -1;
	uint32_t i;

	/* Bytes in use, not free bytes: an elastic pool may have grown. */
	for (i = 0; i < before->count && i < after->count; i++) {
		uint64_t b = before->alloc[i].capacity - before->alloc[i].free;
		uint64_t a = after->alloc[i].capacity - after->alloc[i].free;

		if (dropped ? a > b : a < b) {
			if (found >= 0)
				return -2;
			found = i;
		}
	}
	return found;
}

int ca_pool_allocator_used(const struct ca_pool *before,
			   const struct ca_pool *after)
{
	return pool_changed(before, after, true);
}

int ca_pool_allocator_released(const struct ca_pool *before,
			       const struct ca_pool *after)
{
	return pool_changed(before, after, false);
}

bool ca_allocator_contiguous(const struct cenalloc_allocator_info *a)
{
	return a->placement & 1u;	/* CENALLOC_PLACE_CONTIG */
}

int ca_pool_expected_allocator(const struct ca_pool *pool, uint32_t mask,
			       uint64_t size)
{
	uint32_t i;

	size = (size + CA_PAGE_SIZE - 1) & ~(CA_PAGE_SIZE - 1);
	for (i = 0; i < pool->count; i++) {
		const struct cenalloc_allocator_info *a = &pool->alloc[i];
		uint64_t room = ca_allocator_contiguous(a) ? a->largest_free :
							      a->free;

		if ((a->kinds & mask) && room >= size)
			return i;
	}
	return -1;
}

int ca_pool_find_kind(const struct ca_pool *pool, uint32_t kind)
{
	uint32_t i;

	for (i = 0; i < pool->count; i++)
		if (pool->alloc[i].kinds & kind)
			return i;
	return -1;
}

bool ca_pool_has_exporter_type(const struct ca_pool *pool, uint32_t type)
{
	uint32_t i;

	for (i = 0; i < pool->info.num_exporter_types &&
		    i < CENALLOC_MAX_MAP_TYPES; i++)
		if (pool->info.exporter_types[i] == type)
			return true;
	return false;
}

int ct_load_module(void)
{
	char path[384];
	struct utsname uts;
	int fd, ret = 0, tries;

	if (access(CT_DEVICE_PATH, F_OK) == 0)
		return 0;
	if (uname(&uts))
		return -errno;
	snprintf(path, sizeof(path), "/lib/modules/%s/extra/cenalloc_test.ko", uts.release);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (syscall(SYS_finit_module, fd, "", 0))
		ret = -errno;
	close(fd);
	for (tries = 0; !ret && tries < 100 && access(CT_DEVICE_PATH, F_OK); tries++)
		usleep(20000);
	return ret;
}

int ct_open(void)
{
	int fd = open(CT_DEVICE_PATH, O_RDWR | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

int ct_set_device_ex(int ct, uint32_t device, uint32_t mask,
		     const uint32_t *types, uint32_t num_types,
		     const struct ct_device_opts *opts)
{
	struct cenalloc_test_device_arg arg = {
		.device = device,
		.mask = mask,
		.num_types = num_types,
	};

	if (num_types > CENALLOC_TEST_MAX_TYPES)
		return -EINVAL;
	memcpy(arg.types, types, num_types * sizeof(*types));
	if (opts) {
		arg.flags = opts->flags;
		arg.dma_bits = opts->dma_bits;
		arg.max_segment = opts->max_segment;
		arg.seg_boundary = opts->seg_boundary;
	}
	return ca_ioctl(ct, CENALLOC_TEST_IOC_SET_DEVICE, &arg);
}

int ct_set_device(int ct, uint32_t device, uint32_t mask,
		  const uint32_t *types, uint32_t num_types)
{
	return ct_set_device_ex(ct, device, mask, types, num_types, NULL);
}

int ct_set_device1(int ct, uint32_t device, uint32_t mask, uint32_t type)
{
	uint32_t types[1] = { type ? type : CENALLOC_MAP_SG };

	return ct_set_device(ct, device, mask, types, 1);
}

int ct_attach(int ct, int buf, uint32_t device, uint32_t *handle,
	      uint32_t *map_type)
{
	struct cenalloc_test_attach_arg arg = {
		.dmabuf_fd = buf,
		.device = device,
	};
	int ret = ca_ioctl(ct, CENALLOC_TEST_IOC_ATTACH, &arg);

	if (ret)
		return ret;
	*handle = arg.handle;
	if (map_type)
		*map_type = arg.map_type;
	return 0;
}

int ct_detach(int ct, uint32_t handle)
{
	struct cenalloc_test_handle_arg arg = { .handle = handle };

	return ca_ioctl(ct, CENALLOC_TEST_IOC_DETACH, &arg);
}

int ct_map_raw(int ct, uint32_t handle, uint32_t direction, bool raw,
	       struct ct_mapping *m)
{
	struct cenalloc_test_map_arg arg = {
		.handle = handle,
		.direction = direction,
		.max_segments = CT_MAX_SEGMENTS,
		.segments_ptr = (uintptr_t)m->seg,
		.raw = raw,
	};
	int ret = ca_ioctl(ct, CENALLOC_TEST_IOC_MAP, &arg);

	if (ret)
		return ret;
	m->map_type = arg.map_type;
	m->num_segments = arg.num_segments;
	m->flags = arg.flags;
	m->move_notifies = arg.move_notifies;
	return 0;
}

int ct_map(int ct, uint32_t handle, uint32_t direction, struct ct_mapping *m)
{
	return ct_map_raw(ct, handle, direction, false, m);
}

int ct_rename(int ct, uint32_t device, const char *name)
{
	struct cenalloc_test_rename_arg arg = { .device = device };

	if (strlen(name) >= sizeof(arg.name))
		return -EINVAL;
	strcpy(arg.name, name);
	return ca_ioctl(ct, CENALLOC_TEST_IOC_RENAME, &arg);
}

int ct_status(int ct, uint32_t handle, uint32_t *flags,
	      uint32_t *move_notifies)
{
	struct cenalloc_test_status_arg arg = { .handle = handle };
	int ret = ca_ioctl(ct, CENALLOC_TEST_IOC_STATUS, &arg);

	if (ret)
		return ret;
	*flags = arg.flags;
	*move_notifies = arg.move_notifies;
	return 0;
}

int ct_unmap(int ct, uint32_t handle)
{
	struct cenalloc_test_handle_arg arg = { .handle = handle };

	return ca_ioctl(ct, CENALLOC_TEST_IOC_UNMAP, &arg);
}

int ct_rw(int ct, int buf, bool write, uint64_t offset, void *data,
	  uint64_t len)
{
	struct cenalloc_test_rw_arg arg = {
		.dmabuf_fd = buf,
		.write = write,
		.offset = offset,
		.len = len,
		.data_ptr = (uintptr_t)data,
	};

	return ca_ioctl(ct, CENALLOC_TEST_IOC_RW, &arg);
}

const char *ct_device_name(uint32_t device)
{
	static char names[CENALLOC_TEST_MAX_DEVICES][32];

	if (device >= CENALLOC_TEST_MAX_DEVICES)
		return "?";
	snprintf(names[device], sizeof(names[device]), "cenalloc_test.%u",
		 device);
	return names[device];
}

uint64_t ca_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static struct ca_stall_kind *stall_kind(struct ca_stall *s, const char *what)
{
	unsigned int i;

	for (i = 0; i < CA_STALL_KINDS; i++) {
		if (s->kind[i].what && !strcmp(s->kind[i].what, what))
			return &s->kind[i];
		if (!s->kind[i].what) {
			s->kind[i].what = what;
			return &s->kind[i];
		}
	}
	return &s->kind[CA_STALL_KINDS - 1];	/* too many kinds: pooled */
}

static void stall_add(struct ca_stall_kind *k, uint64_t took, unsigned int index,
		      unsigned long calls, unsigned long slow)
{
	k->calls += calls;
	k->slow += slow;
	if (took > k->worst_ns || (calls && !k->worst_ns)) {
		k->worst_ns = took;
		k->worst_index = index;
	}
}

void ca_stall_note(struct ca_stall *s, uint64_t start_ns, const char *what,
		   unsigned int index)
{
	uint64_t took = ca_now_ns() - start_ns;

	stall_add(stall_kind(s, what), took, index, 1, took >= CA_STALL_SLOW_NS);
}

void ca_stall_merge(struct ca_stall *into, const struct ca_stall *from)
{
	unsigned int i;

	for (i = 0; i < CA_STALL_KINDS && from->kind[i].what; i++) {
		const struct ca_stall_kind *k = &from->kind[i];

		stall_add(stall_kind(into, k->what), k->worst_ns, k->worst_index,
			  k->calls, k->slow);
	}
}

void ca_stall_print(const struct ca_stall *s, const char *test)
{
	const struct ca_stall_kind *worst = NULL;
	unsigned long calls = 0, slow = 0;
	unsigned int i;

	for (i = 0; i < CA_STALL_KINDS && s->kind[i].what; i++) {
		calls += s->kind[i].calls;
		slow += s->kind[i].slow;
		if (!worst || s->kind[i].worst_ns > worst->worst_ns)
			worst = &s->kind[i];
	}
	tap_diag("stall: %s: slowest call %.1f ms (%s %u), %lu calls, %lu of %llu ms or more",
		 test, worst ? worst->worst_ns / 1e6 : 0.0, worst ? worst->what : "none",
		 worst ? worst->worst_index : 0, calls, slow, CA_STALL_SLOW_NS / 1000000);
	for (i = 0; i < CA_STALL_KINDS && s->kind[i].what; i++)
		tap_diag("stall: %s: %s: slowest %.1f ms (%u), %lu calls, %lu of %llu ms or more",
			 test, s->kind[i].what, s->kind[i].worst_ns / 1e6,
			 s->kind[i].worst_index, s->kind[i].calls, s->kind[i].slow,
			 CA_STALL_SLOW_NS / 1000000);
}

const char *ca_mask_str(uint32_t mask, char *buf, size_t len)
{
	static const char *const names[] = {
		"SYSTEM", "CONTIG", "DMA32", "CONTIG_DMA32",
	};
	size_t used = 0;
	unsigned int bit;

	if (mask == CENALLOC_MASK_ANY) {
		snprintf(buf, len, "ANY");
		return buf;
	}
	buf[0] = '\0';
	for (bit = 0; bit < 32 && used < len; bit++) {
		if (!(mask & (1u << bit)))
			continue;
		if (bit < 4)
			used += snprintf(buf + used, len - used, "%s%s",
					 used ? "|" : "", names[bit]);
		else
			used += snprintf(buf + used, len - used, "%sbit%u",
					 used ? "|" : "", bit);
	}
	if (!mask)
		snprintf(buf, len, "0");
	return buf;
}

const char *ca_map_type_str(uint32_t type)
{
	switch (type) {
	case 0:
		return "none";
	case CENALLOC_MAP_SG:
		return "SG";
	case CENALLOC_MAP_CONTIG:
		return "CONTIG";
	default:
		if (type >= CENALLOC_MAP_PRIVATE_FIRST &&
		    type <= CENALLOC_MAP_PRIVATE_LAST)
			return "PRIVATE";
		return "UNKNOWN";
	}
}

bool ca_env_open(int *ca, int *ct)
{
	if (ca) {
		*ca = ca_open();
		if (!CHECK(*ca >= 0, "open %s: %s", CA_DEVICE_PATH,
			   strerror(-*ca)))
			return false;
	}
	if (ct) {
		*ct = ct_open();
		if (!CHECK(*ct >= 0, "open %s: %s (cenalloc_test.ko loaded?)",
			   CT_DEVICE_PATH, strerror(-*ct))) {
			if (ca)
				ca_close(ca);
			return false;
		}
	}
	return true;
}

bool ca_env_open_device(int *ca, int *ct, uint32_t device, uint32_t mask)
{
	if (!ca_env_open(ca, ct))
		return false;
	if (!CHECK(ct_set_device1(*ct, device, mask, 0) == 0, "SET_DEVICE")) {
		ca_close(ct);
		ca_close(ca);
		return false;
	}
	return true;
}

void ca_env_close(int *ca, int *ct, struct ca_buf *b)
{
	if (b)
		ca_buf_free(*ct, b);
	ca_close(ct);
	ca_close(ca);
}

void ca_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

int ca_cpu_access(int buf, bool start)
{
	struct dma_buf_sync sync = {
		.flags = (start ? DMA_BUF_SYNC_START : DMA_BUF_SYNC_END) |
			 DMA_BUF_SYNC_RW,
	};

	return ca_ioctl(buf, DMA_BUF_IOCTL_SYNC, &sync);
}

int ca_buf_alloc(int ca, int ct, uint64_t size, uint32_t device,
		 struct ca_buf *b)
{
	int ret;

	memset(b, 0, sizeof(*b));
	b->fd = ca_create(ca, size, 0);
	if (b->fd < 0)
		return b->fd;
	b->size = (size + CA_PAGE_SIZE - 1) & ~(CA_PAGE_SIZE - 1);
	ret = ct_attach(ct, b->fd, device, &b->handle, NULL);
	if (ret)
		goto err_close;
	ret = ct_map(ct, b->handle, 0, &b->map);
	if (ret)
		goto err_detach;
	return 0;

err_detach:
	ct_detach(ct, b->handle);
err_close:
	ca_close(&b->fd);
	b->handle = 0;
	return ret;
}

void ca_buf_free(int ct, struct ca_buf *b)
{
	if (b->handle) {
		ct_unmap(ct, b->handle);
		ct_detach(ct, b->handle);
		b->handle = 0;
	}
	ca_close(&b->fd);
}

uint64_t ct_mapping_bytes(const struct ct_mapping *m)
{
	uint64_t sum = 0;
	uint32_t i;

	if (m->num_segments > CT_MAX_SEGMENTS)
		return 0;
	for (i = 0; i < m->num_segments; i++)
		sum += m->seg[i].len;
	return sum;
}

/* Allocates the next fragmenting buffer and checks it came from @index. */
static int frag_take(int ca, int ct, uint32_t device, int index,
		     uint64_t size, struct ca_frag *frag)
{
	struct ca_pool before, after;
	int ret, used;

	if (frag->count == CA_FRAG_MAX_BUFFERS)
		return 1;
	ret = ca_pool_read(ca, &before);
	if (ret)
		return ret;
	ret = ca_buf_alloc(ca, ct, size, device, &frag->buf[frag->count]);
	if (ret)
		return ret;
	frag->count++;
	ret = ca_pool_read(ca, &after);
	if (ret)
		return ret;
	used = ca_pool_allocator_used(&before, &after);
	if (used != index) {
		tap_diag("fragmenting buffer of %llu bytes went to allocator %d, not %d",
			 (unsigned long long)size, used, index);
		return -EXDEV;
	}
	return 0;
}

int ca_fragment(int ca, int ct, uint32_t device, int index,
		struct ca_frag *frag)
{
	struct ca_pool pool;
	uint64_t total = 0;
	unsigned int i;
	int ret;

	memset(frag, 0, sizeof(*frag));
	for (i = 0; i < CA_FRAG_MAX_BUFFERS; i++)
		frag->buf[i].fd = -1;

	/* P1 S1 P2 S2, in allocation order. */
	for (i = 0; i < 4; i++) {
		ret = frag_take(ca, ct, device, index, CA_FRAG_HOLE, frag);
		if (ret)
			return ret;
	}

	/* Fill the rest (a scatter buffer may span several extents). */
	for (;;) {
		const struct cenalloc_allocator_info *a;
		uint64_t size;

		ret = ca_pool_read(ca, &pool);
		if (ret)
			return ret;
		a = &pool.alloc[index];
		if (!a->free)
			break;
		size = a->free;
		if (size > pool.info.max_buffer_size)
			size = pool.info.max_buffer_size;
		ret = frag_take(ca, ct, device, index, size, frag);
		if (ret)
			return ret;
		total += size;
	}
	tap_diag("allocator %d filled with %u buffers (%llu bytes after the holes)",
		 index, frag->count, (unsigned long long)total);

	/* Free P1 and P2: two 64 KiB holes separated by S1. */
	ca_buf_free(ct, &frag->buf[0]);
	ca_buf_free(ct, &frag->buf[2]);
	return 0;
}

void ca_fragment_release(int ct, struct ca_frag *frag)
{
	unsigned int i;

	for (i = 0; i < frag->count; i++)
		ca_buf_free(ct, &frag->buf[i]);
	frag->count = 0;
}

long long ca_text_value(const char *text, const char *name)
{
	size_t len = strlen(name);
	const char *p = text;

	while ((p = strstr(p, name))) {
		if ((p == text || p[-1] == '\n') && p[len] == ' ')
			return strtoll(p + len + 1, NULL, 10);
		p += len;
	}
	return -1;
}

bool ca_transport_reset(void)
{
	int fd = open(CA_TRANSPORT_PATH, O_WRONLY | O_CLOEXEC);
	bool ok;

	if (fd < 0)
		return false;
	ok = write(fd, "0\n", 2) == 2;
	close(fd);
	return ok;
}

long long ca_transport_value(const char *name)
{
	char text[4096];
	ssize_t n;
	int fd;

	fd = open(CA_TRANSPORT_PATH, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	text[n] = 0;
	return ca_text_value(text, name);
}

char *ca_read_text(const char *path)
{
	size_t size = 16384, got = 0;
	char *text = malloc(size), *bigger;
	ssize_t n = 0;
	int fd;

	if (!text)
		return NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		free(text);
		return NULL;
	}
	for (;;) {
		if (got + 1 == size) {
			bigger = realloc(text, size * 2);
			if (!bigger)
				break;
			text = bigger;
			size *= 2;
		}
		n = read(fd, text + got, size - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (n < 0 || got + 1 == size) {
		free(text);
		return NULL;
	}
	text[got] = 0;
	return text;
}

long long ca_file_value(const char *path, const char *name)
{
	char *text = ca_read_text(path);
	long long value;

	if (!text)
		return -1;
	value = ca_text_value(text, name);
	free(text);
	return value;
}

long long ca_pool_value(int index, const char *name)
{
	char key[64];

	snprintf(key, sizeof(key), "pool%d_%s", index, name);
	return ca_file_value(CA_ALLOCATORS_PATH, key);
}

int ca_kmsg_count(const char *needle)
{
	int size = klogctl(10, NULL, 0);	/* SYSLOG_ACTION_SIZE_BUFFER */
	char *buf, *line, *end;
	int n, count = 0;

	if (size <= 0)
		return size < 0 ? -errno : 0;
	buf = malloc((size_t)size + 1);
	if (!buf)
		return -ENOMEM;
	n = klogctl(3, buf, size);		/* SYSLOG_ACTION_READ_ALL */
	if (n < 0) {
		free(buf);
		return -errno;
	}
	buf[n] = 0;
	for (line = buf; line < buf + n; line = end + 1) {
		end = strchr(line, '\n');
		if (!end)
			end = buf + n;
		*end = 0;
		if (strstr(line, needle))
			count++;
	}
	free(buf);
	return count;
}
