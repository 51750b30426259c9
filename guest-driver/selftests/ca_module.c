// SPDX-License-Identifier: GPL-2.0
#include "ca_module.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "cenalloc_util.h"

#define PARAM_DIR	"/sys/module/cenalloc/parameters"

static char module_dir[256];
static char saved_params[1024];

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

static bool modules_in(const char *dir)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/cenalloc.ko", dir);
	if (!exists(path))
		return false;
	snprintf(path, sizeof(path), "%s/cenalloc_test.ko", dir);
	if (!exists(path))
		return false;
	snprintf(module_dir, sizeof(module_dir), "%s", dir);
	return true;
}

int ca_param_read(const char *name, char *buf, size_t len)
{
	char path[256];
	FILE *f;
	bool ok;

	snprintf(path, sizeof(path), PARAM_DIR "/%s", name);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	ok = fgets(buf, (int)len, f) != NULL;
	fclose(f);
	if (!ok)
		return -EIO;
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

int ca_param_write(const char *name, const char *value)
{
	char path[256];
	ssize_t n;
	int fd, ret = 0;

	snprintf(path, sizeof(path), PARAM_DIR "/%s", name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = write(fd, value, strlen(value));
	if (n < 0)
		ret = -errno;
	close(fd);
	return ret;
}

/* "name=value ..." of every readable parameter of the loaded module. */
static void save_params(void)
{
	size_t used = 0;
	struct dirent *e;
	char value[128];
	DIR *d;

	saved_params[0] = '\0';
	d = opendir(PARAM_DIR);
	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' ||
		    ca_param_read(e->d_name, value, sizeof(value)))
			continue;
		/* An unset string reads "(null)": leave it unset. */
		if (!value[0] || strchr(value, ' ') || !strcmp(value, "(null)"))
			continue;
		used += snprintf(saved_params + used, sizeof(saved_params) - used,
				 "%s%s=%s", used ? " " : "", e->d_name, value);
		if (used >= sizeof(saved_params)) {
			saved_params[0] = '\0';
			break;
		}
	}
	closedir(d);
}

bool ca_module_ready(char *why, size_t len)
{
	const char *env = getenv("CENALLOC_MODULE_DIR");
	char extra[300] = "/lib/modules/unknown/extra";
	struct utsname uts;

	if (!uname(&uts))
		snprintf(extra, sizeof(extra), "/lib/modules/%s/extra",
			 uts.release);
	if (!(env && env[0] && modules_in(env)) &&
	    !modules_in("/lib/modules/cenalloc") && !modules_in(extra)) {
		snprintf(why, len, "no cenalloc.ko and cenalloc_test.ko to reload");
		return false;
	}
	if (!exists("/sys/module/cenalloc") ||
	    !exists("/sys/module/cenalloc_test")) {
		snprintf(why, len, "cenalloc and cenalloc_test are not both loaded");
		return false;
	}
	if (!saved_params[0])
		save_params();
	return true;
}

static int unload(const char *name)
{
	char path[128];
	int tries;

	snprintf(path, sizeof(path), "/sys/module/%s", name);
	if (!exists(path))
		return 0;
	/* The last close of a file may still be finishing: retry. */
	for (tries = 0; tries < 50; tries++) {
		if (syscall(SYS_delete_module, name, O_NONBLOCK) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EBUSY)
			return -errno;
		usleep(100000);
	}
	return -errno;
}

static int load(const char *name, const char *params, const char *node)
{
	char path[512];
	int fd, ret = 0, waited;

	snprintf(path, sizeof(path), "%s/%s.ko", module_dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (syscall(SYS_finit_module, fd, params, 0))
		ret = -errno;
	close(fd);
	for (waited = 0; !ret && !exists(node); waited += 20) {
		if (waited > 10000)
			return -ETIMEDOUT;
		usleep(20000);
	}
	return ret;
}

int ca_module_reload(const char *extra)
{
	char params[1400];
	int ret;

	ret = unload("cenalloc_test");
	if (!ret)
		ret = unload("cenalloc");
	if (ret)
		return ret;
	snprintf(params, sizeof(params), "%s%s%s", saved_params,
		 extra && saved_params[0] ? " " : "", extra ? extra : "");
	ret = load("cenalloc", params, CA_DEVICE_PATH);
	if (!ret)
		ret = load("cenalloc_test", "", CT_DEVICE_PATH);
	return ret;
}
