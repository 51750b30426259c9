/* SPDX-License-Identifier: GPL-2.0 */
/*
 * In-kernel API of cenalloc.ko for importers that know their constraints,
 * shaped like the upstream dma-buf mapping-type RFC (Jason Gunthorpe,
 * "Add DMA-buf mapping types and convert vfio/iommufd to use them"):
 *
 *   upstream (RFC)                      cenalloc on Linux 6.12
 *   struct dma_buf_mapping_type         struct cenalloc_mapping_type
 *   struct dma_buf_mapping_match        struct cenalloc_mapping_match
 *   DMA_BUF_IMAPPING_SGT(dev, p2p)      CENALLOC_IMAPPING_SGT() (the device
 *                                       is cenalloc_mapping_attach()'s)
 *   DMA_BUF_IMAPPING_PAL / EMAPPING_PAL CENALLOC_IMAPPING_CONTIG()
 *                                       (a physical address list of one entry)
 *   driver-private types                CENALLOC_IMAPPING_PRIVATE(code)
 *   struct dma_buf_match_args           struct cenalloc_match_args
 *   dma_buf_match_mapping()             cenalloc_match_mapping()
 *   dma_buf_mapping_attach()            cenalloc_mapping_attach()
 *   attach->map_type                    cenalloc_attachment_map_type()
 *
 * Matching walks the exporter's list in priority order and, for each entry,
 * the importer's list; a pair of the same type is offered to the type's
 * match(): 0 takes it (finish_match() records it), -EOPNOTSUPP tries the
 * next pair, any other error aborts the attach with that error. When no
 * pair matches the attach fails with -EOPNOTSUPP (the RFC's core returns
 * -EINVAL there; cenalloc keeps the errno its device protocol uses).
 *
 * Constraints: the importer gives the memory kinds its device can use
 * (CENALLOC_KIND_* bits). The exporter narrows them further with what it
 * derives from the struct device (DMA mask and bus limit, IOMMU, maximum
 * segment size and boundary); neither the importer nor the device table
 * can widen them past what the device addresses.
 *
 * Importers that know nothing of cenalloc use dma_buf_attach() or
 * dma_buf_dynamic_attach() and get the mask of the device table
 * (cenalloc_set_device_constraints(), CENALLOC_IOC_SET_DEVICE_MASK), or
 * CENALLOC_DEFAULT_MASK, narrowed the same way.
 */
#ifndef _LINUX_CENALLOC_H
#define _LINUX_CENALLOC_H

#include <linux/types.h>

struct device;
struct dma_buf;
struct dma_buf_attach_ops;
struct dma_buf_attachment;
struct seq_file;

/* Mask of a device absent from the table: any kind. */
#define CENALLOC_DEFAULT_MASK	0xffffffffu

struct cenalloc_mapping_match;
struct cenalloc_match_args;

/**
 * struct cenalloc_mapping_type - one mapping type (upstream:
 * struct dma_buf_mapping_type)
 * @name: for debugfs
 * @match: may @exp and @imp (both of this type) be used together for
 *	@args? 0: yes; -EOPNOTSUPP: try the next pair; other: abort
 * @finish_match: record the match in @args
 * @debugfs_dump: optional, one line about an attachment of this type
 */
struct cenalloc_mapping_type {
	const char *name;
	int (*match)(const struct cenalloc_match_args *args,
		     const struct cenalloc_mapping_match *exp,
		     const struct cenalloc_mapping_match *imp);
	void (*finish_match)(struct cenalloc_match_args *args,
			     const struct cenalloc_mapping_match *exp,
			     const struct cenalloc_mapping_match *imp);
	void (*debugfs_dump)(struct seq_file *s,
			     const struct cenalloc_mapping_match *match);
};

/* Scatter-gather table, DMA-mapped for the attaching device (SGT). */
extern const struct cenalloc_mapping_type cenalloc_mapping_sgt;
/* One contiguous physical range (a physical address list of one entry). */
extern const struct cenalloc_mapping_type cenalloc_mapping_contig;
/* Opaque driver-private types (codes 0x8000-0xffff), mapped like SGT. */
extern const struct cenalloc_mapping_type cenalloc_mapping_private;

/**
 * struct cenalloc_mapping_match - an entry of an importer's or exporter's
 * list (upstream: struct dma_buf_mapping_match)
 * @type: the mapping type
 * @code: the wire code of the type (CENALLOC_MAP_*), set by the macros
 * @exp_possible: exporter entries of cenalloc_mapping_contig only: the
 *	buffer is or can only become one contiguous range
 */
struct cenalloc_mapping_match {
	const struct cenalloc_mapping_type *type;
	u32 code;
	bool exp_possible;
};

#define CENALLOC_IMAPPING_SGT()						\
	((struct cenalloc_mapping_match){ .type = &cenalloc_mapping_sgt,	\
					  .code = 1 })
#define CENALLOC_IMAPPING_CONTIG()					\
	((struct cenalloc_mapping_match){ .type = &cenalloc_mapping_contig, \
					  .code = 2 })
#define CENALLOC_IMAPPING_PRIVATE(_code)				\
	((struct cenalloc_mapping_match){ .type = &cenalloc_mapping_private, \
					  .code = (_code) })

/**
 * struct cenalloc_match_args - one negotiation (upstream:
 * struct dma_buf_match_args)
 * @dmabuf: the buffer
 * @imp_matches: the importer's list, priority order
 * @imp_len: entries in @imp_matches
 * @map_type: out: the wire code of the matched type
 */
struct cenalloc_match_args {
	struct dma_buf *dmabuf;
	const struct cenalloc_mapping_match *imp_matches;
	size_t imp_len;
	u32 map_type;
};

int cenalloc_match_mapping(struct cenalloc_match_args *args,
			   const struct cenalloc_mapping_match *exp,
			   size_t exp_len);

/*
 * Attach @dev to the cenalloc buffer @dmabuf with the importer's mapping
 * types @imp (priority order, 1..8 entries) and the memory kinds @kinds its
 * device can use (0: the device table's mask). @importer_ops (may be NULL)
 * and @importer_priv are handed to dma_buf_dynamic_attach() unchanged in
 * meaning: with a move_notify the importer is dynamic and its mappings can
 * be revoked for a migration; without, every mapping it holds pins the
 * backing. Map with dma_buf_map_attachment() under the reservation lock
 * (or the _unlocked variant), release with dma_buf_detach().
 *
 * Returns the attachment or an ERR_PTR: -EINVAL for bad arguments or when
 * the masks leave no kind in common, -ERANGE when the device cannot address
 * any kind the buffer may use, -EOPNOTSUPP when no mapping type matches,
 * -EBUSY when the backing does not fit and cannot migrate (it is pinned,
 * or a dynamic importer mapped it again from its move_notify), -ENODEV
 * after remove.
 */
struct dma_buf_attachment *
cenalloc_mapping_attach(struct dma_buf *dmabuf, struct device *dev,
			const struct cenalloc_mapping_match *imp, size_t imp_len,
			u32 kinds, const struct dma_buf_attach_ops *importer_ops,
			void *importer_priv);

/* The negotiated CENALLOC_MAP_* code of a cenalloc attachment, 0 if none. */
u32 cenalloc_attachment_map_type(struct dma_buf_attachment *attach);

/* Record @dev's constraint mask for plain attaches (0 removes it). */
int cenalloc_set_device_constraints(struct device *dev, u32 mask);

/* True if @dmabuf was exported by cenalloc. */
bool cenalloc_is_cenalloc_dmabuf(struct dma_buf *dmabuf);

#endif /* _LINUX_CENALLOC_H */
