/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the cenalloc selftests, demo and bench: thin wrappers
 * of the /dev/cenalloc and /dev/cenalloc_test ioctls (returning 0 or a
 * negative errno, never printing), pool snapshots from CENALLOC_IOC_INFO,
 * and the FNV-1a / FILL pattern helpers that mirror the device's.
 */
#ifndef CENALLOC_SELFTEST_UTIL_H
#define CENALLOC_SELFTEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uapi/linux/cenalloc.h>
#include <uapi/linux/cenalloc_test.h>

#define CA_DEVICE_PATH		"/dev/cenalloc"
#define CT_DEVICE_PATH		"/dev/cenalloc_test"
#define CA_PAGE_SIZE		4096ull
#define CA_MAX_ALLOCATORS	8

#define CA_KIB			1024ull
#define CA_MIB			(1024ull * 1024ull)

/* ---- /dev/cenalloc ---- */

/* ioctl() retried on EINTR; its result, or -errno. */
int ca_ioctl(int fd, unsigned long request, void *arg);

int ca_open(void);
/* Returns the dma-buf fd (O_RDWR | O_CLOEXEC) or -errno. */
int ca_create(int ca, uint64_t size, uint32_t initial_mask);
int ca_phys(int ca, int buf, uint64_t *addr, uint64_t *len);
int ca_checksum(int ca, int buf, uint64_t *checksum, uint64_t *len);
int ca_fill(int ca, int buf, uint64_t seed);
int ca_set_device_mask(int ca, const char *dev_name, uint32_t mask);
/* Size of a dma-buf (lseek SEEK_END), or -errno. */
int64_t ca_buf_size(int buf);
/* MAP_SHARED read/write mapping of a dma-buf, or NULL (errno set). */
void *ca_mmap(int buf, size_t len);

struct ca_pool {
	struct cenalloc_info_arg info;
	uint32_t count;		/* entries of alloc[] */
	struct cenalloc_allocator_info alloc[CA_MAX_ALLOCATORS];
};

int ca_pool_read(int ca, struct ca_pool *pool);
uint64_t ca_pool_free(const struct ca_pool *pool);
/* Bytes of all allocators in use (capacity - free): pools may grow. */
uint64_t ca_pool_used(const struct ca_pool *pool);
/*
 * True when every allocator has the same bytes in use (capacity - free:
 * an elastic pool grows on demand and shrinks only under memory pressure)
 * and buffer count in both snapshots; otherwise prints the differences as
 * TAP diagnostics.
 */
bool ca_pool_same(const struct ca_pool *before, const struct ca_pool *after);
/*
 * The allocator whose bytes in use (capacity - free) grew between the
 * snapshots: its index in pool->alloc[], -1 if none changed, -2 if several
 * did.
 */
int ca_pool_allocator_used(const struct ca_pool *before,
			   const struct ca_pool *after);
/* Index of the allocator whose bytes in use went down, as above. */
int ca_pool_allocator_released(const struct ca_pool *before,
			       const struct ca_pool *after);
/*
 * The allocator the pool rules pick for a buffer of @size with access mask
 * @mask: the first, in priority order, that shares a kind with @mask and
 * has room (a contiguous one needs a free extent of @size). -1 if none.
 */
int ca_pool_expected_allocator(const struct ca_pool *pool, uint32_t mask,
			       uint64_t size);
/* Index in alloc[] of the first allocator with @kind among its kinds. */
int ca_pool_find_kind(const struct ca_pool *pool, uint32_t kind);
bool ca_pool_has_exporter_type(const struct ca_pool *pool, uint32_t type);
bool ca_allocator_contiguous(const struct cenalloc_allocator_info *a);

/* ---- /dev/cenalloc_test ---- */

int ct_open(void);
/*
 * Loads /lib/modules/$(uname -r)/extra/cenalloc_test.ko if
 * /dev/cenalloc_test is missing (the demo VM does not load it at boot).
 */
int ct_load_module(void);
int ct_set_device(int ct, uint32_t device, uint32_t mask,
		  const uint32_t *types, uint32_t num_types);

/* SET_DEVICE options beyond the mask and types (0: the defaults). */
struct ct_device_opts {
	uint32_t flags;		/* CENALLOC_TEST_DEV_* */
	uint32_t dma_bits;
	uint32_t max_segment;
	uint64_t seg_boundary;
};

int ct_set_device_ex(int ct, uint32_t device, uint32_t mask,
		     const uint32_t *types, uint32_t num_types,
		     const struct ct_device_opts *opts);
/* Shorthand: a device listing only @type (0: CENALLOC_MAP_SG). */
int ct_set_device1(int ct, uint32_t device, uint32_t mask, uint32_t type);
int ct_attach(int ct, int buf, uint32_t device, uint32_t *handle,
	      uint32_t *map_type);
int ct_detach(int ct, uint32_t handle);

#define CT_MAX_SEGMENTS		512

struct ct_mapping {
	uint32_t map_type;
	uint32_t num_segments;	/* may exceed CT_MAX_SEGMENTS */
	uint32_t flags;		/* CENALLOC_TEST_MAP_F_* */
	uint32_t move_notifies;
	struct cenalloc_test_segment seg[CT_MAX_SEGMENTS];
};

int ct_map(int ct, uint32_t handle, uint32_t direction, struct ct_mapping *m);
/* With @raw, one segment per sg entry (no merging of DMA neighbours). */
int ct_map_raw(int ct, uint32_t handle, uint32_t direction, bool raw,
	       struct ct_mapping *m);
int ct_unmap(int ct, uint32_t handle);
/* Renames test device @device ("" restores cenalloc_test.N). */
int ct_rename(int ct, uint32_t device, const char *name);
/* CENALLOC_TEST_STATUS_* flags and the move_notify count of a handle. */
int ct_status(int ct, uint32_t handle, uint32_t *flags,
	      uint32_t *move_notifies);
int ct_rw(int ct, int buf, bool write, uint64_t offset, void *data,
	  uint64_t len);
/* Name of virtual device @device, as the kernel's dev_name() gives it. */
const char *ct_device_name(uint32_t device);

/* ---- test scaffolding (reports failures with CHECK) ---- */

/* Opens the devices that are not NULL; false if one is missing. */
bool ca_env_open(int *ca, int *ct);
/* close() if >= 0, then -1. */
void ca_close(int *fd);
/* DMA_BUF_IOCTL_SYNC: start or end of CPU read/write access. */
int ca_cpu_access(int buf, bool start);

/* A buffer attached through the test device and mapped once. */
struct ca_buf {
	int fd;
	uint32_t handle;
	uint64_t size;
	struct ct_mapping map;
};

/*
 * Creates a buffer of @size, attaches @device to it and maps it (the first
 * map allocates). Returns 0 or -errno (nothing left behind on failure).
 */
int ca_buf_alloc(int ca, int ct, uint64_t size, uint32_t device,
		 struct ca_buf *b);
/* Unmaps (if mapped), detaches and closes. */
void ca_buf_free(int ct, struct ca_buf *b);
/*
 * ca_env_open() of both devices, then test device @device set to @mask with
 * scatter-gather. On failure (reported with CHECK) nothing is left open.
 */
bool ca_env_open_device(int *ca, int *ct, uint32_t device, uint32_t mask);
/* The common end of a test: frees @b (may be NULL), closes @ct and @ca. */
void ca_env_close(int *ca, int *ct, struct ca_buf *b);
/* Sum of the segment lengths of a mapping; 0 if it had too many. */
uint64_t ct_mapping_bytes(const struct ct_mapping *m);

/*
 * Fragments allocator @index (a scatter allocator, the first that
 * @device's mask picks): allocates 64 KiB buffers P1 S1 P2 S2, fills the rest of the
 * allocator, then frees P1 and P2, leaving two separated 64 KiB holes.
 * The next buffer of 128 KiB for @device can then only be two segments.
 * Returns 0, -errno, or 1 when it needs more than CA_FRAG_MAX_BUFFERS
 * buffers (the caller skips). The caller releases @frag in every case.
 */
#define CA_FRAG_MAX_BUFFERS	72
#define CA_FRAG_HOLE		(64 * CA_KIB)

struct ca_frag {
	unsigned int count;
	struct ca_buf buf[CA_FRAG_MAX_BUFFERS];
};

int ca_fragment(int ca, int ct, uint32_t device, int index,
		struct ca_frag *frag);
void ca_fragment_release(int ct, struct ca_frag *frag);

/* ---- data helpers ---- */

uint64_t ca_fnv1a64(const void *data, size_t len);
/* Word i (little-endian u64 at byte 8 * i) = cenalloc_pattern(seed, i). */
void ca_pattern_fill(void *data, size_t len, uint64_t seed);
/* Byte offset of the first word that differs from the pattern, or len. */
size_t ca_pattern_check(const void *data, size_t len, uint64_t seed);
/* The same for @len bytes that start at byte @offset (a multiple of 8) of
 * the patterned buffer.
 */
size_t ca_pattern_check_at(const void *data, size_t len, uint64_t seed,
			   uint64_t offset);
/* Offset of the first non-zero byte, or len. */
size_t ca_first_nonzero(const void *data, size_t len);

/* Monotonic clock in nanoseconds. */
uint64_t ca_now_ns(void);

/*
 * The slowest of a series of timed device calls, by kind of call: the
 * longest the guest waited on the device (a stall, e.g. while the host
 * upgrades or restarts its serving process; a map may also wait for a
 * pool to grow). Zero-initialise; ca_stall_note() after each call, with a
 * string that outlives @s for @what.
 */
#define CA_STALL_SLOW_NS	(100 * 1000000ull)
#define CA_STALL_KINDS		6
struct ca_stall_kind {
	const char *what;
	uint64_t worst_ns;
	unsigned int worst_index;
	unsigned long calls;
	unsigned long slow;		/* calls that took CA_STALL_SLOW_NS or more */
};

struct ca_stall {
	struct ca_stall_kind kind[CA_STALL_KINDS];
};

/* One call, started at @start_ns: @what of item @index. */
void ca_stall_note(struct ca_stall *s, uint64_t start_ns, const char *what,
		   unsigned int index);
/* Adds @from's calls to @into. */
void ca_stall_merge(struct ca_stall *into, const struct ca_stall *from);
/*
 * The TAP diagnostics launchers read (qemu-scripts/run-vm), the slowest
 * call of all, then each kind's:
 * "# stall: TEST: slowest call X.X ms (WHAT INDEX), N calls, M of 100 ms or more"
 * "# stall: TEST: WHAT: slowest X.X ms (INDEX), N calls, M of 100 ms or more"
 */
void ca_stall_print(const struct ca_stall *s, const char *test);
/* "SYSTEM|DMA32"-style text for a mask (static buffer per call site). */
const char *ca_mask_str(uint32_t mask, char *buf, size_t len);
const char *ca_map_type_str(uint32_t type);
/* The driver's transport counters (debugfs); writing resets them. */
#define CA_TRANSPORT_PATH "/sys/kernel/debug/cenalloc/transport"
#define CA_ALLOCATORS_PATH "/sys/kernel/debug/cenalloc/allocators"
bool ca_transport_reset(void);
/* Value N of a line "name N" in a debugfs text, -1 if missing. */
long long ca_text_value(const char *text, const char *name);
/* Value of a line "name N" of CA_TRANSPORT_PATH, -1 if missing. */
long long ca_transport_value(const char *name);
/*
 * The whole text of @path (a debugfs or sysfs file, however long),
 * NUL-terminated, to free(); NULL (errno set) if it cannot be read.
 */
char *ca_read_text(const char *path);
/* Value of a line "name N" of @path, -1 if unreadable or missing. */
long long ca_file_value(const char *path, const char *name);
/* Value of "pool<index>_<name> N" in CA_ALLOCATORS_PATH, -1 if missing. */
long long ca_pool_value(int index, const char *name);
/* Lines of the kernel log (dmesg) that contain @needle, or -errno. */
int ca_kmsg_count(const char *needle);

#endif /* CENALLOC_SELFTEST_UTIL_H */
