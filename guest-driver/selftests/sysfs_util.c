// SPDX-License-Identifier: GPL-2.0
#include "sysfs_util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

int sysfs_device_name(const char *cls, const char *node, char *buf, size_t len)
{
	char path[256], target[512];
	const char *base;
	ssize_t n;

	snprintf(path, sizeof(path), "/sys/class/%s/%s/device", cls, node);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return -errno;
	target[n] = '\0';
	base = strrchr(target, '/');
	base = base ? base + 1 : target;
	if (strlen(base) >= len)
		return -ENAMETOOLONG;
	strcpy(buf, base);
	return 0;
}

bool debugfs_ready(void)
{
	struct stat st;

	if (stat("/sys/kernel/debug/cenalloc", &st) == 0)
		return true;
	mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	return stat("/sys/kernel/debug/cenalloc", &st) == 0;
}

static bool word_at(const char *line, const char *hit, size_t wlen)
{
	bool start = hit == line || isspace((unsigned char)hit[-1]);
	bool end = !hit[wlen] || isspace((unsigned char)hit[wlen]);

	return start && end;
}

int file_count_word(const char *path, const char *word)
{
	FILE *f = fopen(path, "r");
	size_t wlen = strlen(word);
	char line[512];
	int count = 0;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		const char *hit = line;

		while ((hit = strstr(hit, word))) {
			if (word_at(line, hit, wlen)) {
				count++;
				break;
			}
			hit += wlen;
		}
	}
	fclose(f);
	return count;
}

int cenalloc_pools_not_donated(void)
{
	FILE *f = fopen(CENALLOC_DEBUGFS_ALLOCATORS, "r");
	bool in_pools = false, header = false;
	char line[512];
	int bad = 0, rows = 0;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char *last;

		if (!strncmp(line, "# pools donated", 15)) {
			in_pools = true;
			header = true;
			continue;
		}
		if (!in_pools)
			continue;
		if (header) {		/* the column names */
			header = false;
			continue;
		}
		line[strcspn(line, "\n")] = '\0';
		while (strlen(line) && isspace((unsigned char)line[strlen(line) - 1]))
			line[strlen(line) - 1] = '\0';
		if (!line[0] || line[0] == '#')
			break;
		last = strrchr(line, ' ');
		rows++;
		if (!last || atoi(last + 1) != 0)
			bad++;
	}
	fclose(f);
	return rows ? bad : -ENODATA;
}
