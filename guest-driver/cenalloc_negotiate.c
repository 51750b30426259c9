// SPDX-License-Identifier: GPL-2.0
/*
 * cenalloc mapping types and local decisions: which mapping type an
 * attachment gets, and whether a buffer can be one contiguous range,
 * decided from the allocator and exporter lists the device gave at probe,
 * without a round trip. The device decides again and has the last word.
 *
 * The matching follows the upstream mapping-type RFC (see
 * include/linux/cenalloc.h): the exporter's list (the device's
 * exporter_types, priority order) is walked first, each entry against the
 * importer's list; a type's match() answers 0 (take it), -EOPNOTSUPP (try
 * the next pair) or another error (abort).
 */
#include <linux/export.h>

#include "cenalloc_negotiate.h"

/* Can the buffer be served as one contiguous range with @access_mask? */
bool cenalloc_contig_possible(struct cenalloc_buffer *buffer, u32 access_mask)
{
	struct cenalloc_dev *cdev = buffer->cdev;
	bool found = false;
	unsigned int i;
	u32 kinds;

	if (buffer->backed)
		return buffer->num_backing == 1;
	for (i = 0; i < cdev->num_allocators; i++) {
		kinds = le32_to_cpu(cdev->allocators[i].kinds);
		if (!(kinds & access_mask))
			continue;
		if (!(le32_to_cpu(cdev->allocators[i].placement) &
		      CENALLOC_PLACE_CONTIG))
			return false;
		found = true;
	}
	return found;
}

static int cenalloc_match_any(const struct cenalloc_match_args *args,
			      const struct cenalloc_mapping_match *exp,
			      const struct cenalloc_mapping_match *imp)
{
	return 0;
}

static int cenalloc_match_contig(const struct cenalloc_match_args *args,
				 const struct cenalloc_mapping_match *exp,
				 const struct cenalloc_mapping_match *imp)
{
	return exp->exp_possible ? 0 : -EOPNOTSUPP;
}

static int cenalloc_match_private(const struct cenalloc_match_args *args,
				  const struct cenalloc_mapping_match *exp,
				  const struct cenalloc_mapping_match *imp)
{
	return exp->code == imp->code ? 0 : -EOPNOTSUPP;
}

static void cenalloc_finish_match(struct cenalloc_match_args *args,
				  const struct cenalloc_mapping_match *exp,
				  const struct cenalloc_mapping_match *imp)
{
	args->map_type = exp->code;
}

const struct cenalloc_mapping_type cenalloc_mapping_sgt = {
	.name = "sgt",
	.match = cenalloc_match_any,
	.finish_match = cenalloc_finish_match,
};
EXPORT_SYMBOL_GPL(cenalloc_mapping_sgt);

const struct cenalloc_mapping_type cenalloc_mapping_contig = {
	.name = "contig",
	.match = cenalloc_match_contig,
	.finish_match = cenalloc_finish_match,
};
EXPORT_SYMBOL_GPL(cenalloc_mapping_contig);

const struct cenalloc_mapping_type cenalloc_mapping_private = {
	.name = "private",
	.match = cenalloc_match_private,
	.finish_match = cenalloc_finish_match,
};
EXPORT_SYMBOL_GPL(cenalloc_mapping_private);

/**
 * cenalloc_match_mapping - pick the mapping type of an attachment
 * @args: the importer's list; on success @args->map_type is set
 * @exp: the exporter's list, priority order
 * @exp_len: entries in @exp
 *
 * Return: 0, the error of a match() that is not -EOPNOTSUPP, or
 * -EOPNOTSUPP when no pair matches.
 */
int cenalloc_match_mapping(struct cenalloc_match_args *args,
			   const struct cenalloc_mapping_match *exp,
			   size_t exp_len)
{
	const struct cenalloc_mapping_match *exp_end = exp + exp_len;
	const struct cenalloc_mapping_match *imp_end =
		args->imp_matches + args->imp_len;
	const struct cenalloc_mapping_match *imp;
	int ret;

	for (; exp != exp_end; exp++) {
		for (imp = args->imp_matches; imp != imp_end; imp++) {
			if (exp->type != imp->type)
				continue;
			ret = exp->type->match ?
			      exp->type->match(args, exp, imp) : 0;
			if (ret == -EOPNOTSUPP)
				continue;
			if (ret)
				return ret;
			exp->type->finish_match(args, exp, imp);
			return 0;
		}
	}
	return -EOPNOTSUPP;
}
EXPORT_SYMBOL_GPL(cenalloc_match_mapping);

bool cenalloc_type_valid(u32 type)
{
	return type == CENALLOC_MAP_SG || type == CENALLOC_MAP_CONTIG ||
	       (type >= CENALLOC_MAP_PRIVATE_FIRST &&
		type <= CENALLOC_MAP_PRIVATE_LAST);
}

static const struct cenalloc_mapping_type *cenalloc_type_of(u32 code)
{
	if (code == CENALLOC_MAP_SG)
		return &cenalloc_mapping_sgt;
	if (code == CENALLOC_MAP_CONTIG)
		return &cenalloc_mapping_contig;
	if (cenalloc_type_valid(code))
		return &cenalloc_mapping_private;
	return NULL;
}

const char *cenalloc_map_type_name(u32 type)
{
	const struct cenalloc_mapping_type *t = cenalloc_type_of(type);

	return t ? t->name : "?";
}

/*
 * The wire codes of an importer's list, checked: each entry names one of
 * the three types with its code. Returns the count or -EINVAL.
 */
int cenalloc_match_codes(const struct cenalloc_mapping_match *imp,
			 size_t imp_len, u32 *types)
{
	size_t i;

	if (!imp || !imp_len || imp_len > CENALLOC_MAX_MAP_TYPES)
		return -EINVAL;
	for (i = 0; i < imp_len; i++) {
		if (!imp[i].type || cenalloc_type_of(imp[i].code) != imp[i].type)
			return -EINVAL;
		types[i] = imp[i].code;
	}
	return imp_len;
}

/* Walk the exporter's list in priority order against the importer's. */
int cenalloc_negotiate(struct cenalloc_buffer *buffer, u32 access_mask,
		       const u32 *types, u32 num_types, u32 *map_type)
{
	struct cenalloc_mapping_match exp[CENALLOC_MAX_MAP_TYPES];
	struct cenalloc_mapping_match imp[CENALLOC_MAX_MAP_TYPES];
	struct cenalloc_dev *cdev = buffer->cdev;
	struct cenalloc_match_args args = {
		.dmabuf = buffer->dmabuf,
		.imp_matches = imp,
		.imp_len = num_types,
	};
	bool contig = false, contig_known = false;
	unsigned int e, n = 0, i;
	int ret;

	if (!num_types || num_types > CENALLOC_MAX_MAP_TYPES)
		return -EINVAL;
	for (i = 0; i < num_types; i++) {
		imp[i].type = cenalloc_type_of(types[i]);
		imp[i].code = types[i];
		imp[i].exp_possible = false;
		if (!imp[i].type)
			return -EINVAL;
	}
	for (e = 0; e < cdev->num_exporter_types; e++) {
		if (n == CENALLOC_MAX_MAP_TYPES)
			break;
		exp[n].type = cenalloc_type_of(cdev->exporter_types[e]);
		if (!exp[n].type)
			continue;
		exp[n].code = cdev->exporter_types[e];
		exp[n].exp_possible = false;
		if (exp[n].type == &cenalloc_mapping_contig) {
			if (!contig_known)
				contig = cenalloc_contig_possible(buffer,
								  access_mask);
			contig_known = true;
			exp[n].exp_possible = contig;
		}
		n++;
	}
	ret = cenalloc_match_mapping(&args, exp, n);
	if (!ret)
		*map_type = args.map_type;
	return ret;
}
