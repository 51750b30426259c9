// SPDX-License-Identifier: GPL-2.0
/*
 * /dev/cenalloc: the UAPI of include/uapi/linux/cenalloc.h. Every ioctl
 * looks the device up, so an open file survives a device remove (-ENODEV).
 * Reserved fields must be zero and unknown flags are refused (-EINVAL).
 *
 * Permissions (least privilege):
 * - the node is 0660 root:root; an administrator opens it to a group with
 *   a udev rule (docs/guest-driver.md). Whoever can open it can CREATE
 *   buffers, within the per-user limits of cenalloc_quota.c (-EDQUOT),
 *   and ask INFO;
 * - PHYS reveals guest-physical addresses (which /proc/pid/pagemap hides
 *   from unprivileged users): CAP_SYS_ADMIN, or membership of the group
 *   named by the phys_gid module parameter (-EPERM otherwise);
 * - FILL writes into the buffer: the dma-buf fd must be open for writing
 *   (-EBADF); CHECKSUM reads it: open for reading (-EBADF);
 * - SET_DEVICE_MASK: CAP_SYS_ADMIN.
 */
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include <linux/cenalloc.h>

#include "cenalloc_buffer.h"
#include "cenalloc_dev.h"
#include "cenalloc_devmask.h"
#include "cenalloc_heaps.h"
#include "cenalloc_ioctl.h"
#include "cenalloc_vq.h"

/*
 * The UAPI and the wire protocol both define struct cenalloc_allocator_info
 * (host-endian for userspace, little-endian on the wire): rename the UAPI
 * one in this file.
 */
#define cenalloc_allocator_info cenalloc_uapi_allocator_info
#include <uapi/linux/cenalloc.h>
#undef cenalloc_allocator_info

static int cenalloc_phys_gid = -1;
module_param_named(phys_gid, cenalloc_phys_gid, int, 0644);
MODULE_PARM_DESC(phys_gid,
		 "Group (in the initial user namespace) whose members may use CENALLOC_IOC_PHYS without CAP_SYS_ADMIN (-1: none, the default)");

static bool cenalloc_phys_allowed(void)
{
	int gid = READ_ONCE(cenalloc_phys_gid);
	kgid_t kgid;

	if (capable(CAP_SYS_ADMIN))
		return true;
	if (gid < 0)
		return false;
	kgid = make_kgid(&init_user_ns, gid);
	return gid_valid(kgid) && in_group_p(kgid);
}

static long cenalloc_ioctl_create(struct cenalloc_dev *cdev,
				  void __user *uarg)
{
	struct cenalloc_create_arg arg;
	struct dma_buf *dmabuf;
	int fd;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.flags & ~CENALLOC_CREATE_VALID_FLAGS || arg.reserved0 ||
	    arg.reserved[0] || arg.reserved[1])
		return -EINVAL;

	dmabuf = cenalloc_buffer_create(cdev, arg.size,
					arg.flags & CENALLOC_CREATE_RDWR,
					arg.initial_mask);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	fd = get_unused_fd_flags(arg.flags & CENALLOC_CREATE_CLOEXEC ?
				 O_CLOEXEC : 0);
	if (fd < 0) {
		dma_buf_put(dmabuf);
		return fd;
	}
	arg.fd = fd;
	if (copy_to_user(uarg, &arg, sizeof(arg))) {
		put_unused_fd(fd);
		dma_buf_put(dmabuf);
		return -EFAULT;
	}
	fd_install(fd, dmabuf->file);
	return 0;
}

#ifdef CENALLOC_HAVE_DMA_HEAPS
/*
 * DMA_HEAP_IOCTL_ALLOC of the heaps of cenalloc_heaps.ko: CREATE's path,
 * in the caller's context (its quota). The access mode is O_RDONLY or
 * O_RDWR, as CREATE's; O_WRONLY is refused (-EINVAL): a dma-buf's mmap
 * needs a readable file, and CREATE has no write-only buffer either.
 */
static struct dma_buf *cenalloc_heap_allocate(u64 len, u32 fd_flags,
					      u32 initial_mask)
{
	struct cenalloc_dev *cdev;
	struct dma_buf *dmabuf;
	bool rdwr;

	switch (fd_flags & O_ACCMODE) {
	case O_RDONLY:
		rdwr = false;
		break;
	case O_RDWR:
		rdwr = true;
		break;
	default:
		return ERR_PTR(-EINVAL);
	}
	cdev = cenalloc_dev_get_current();
	if (!cdev)
		return ERR_PTR(-ENODEV);
	dmabuf = cenalloc_buffer_create(cdev, len, rdwr, initial_mask);
	cenalloc_dev_put(cdev);
	return dmabuf;
}

static const struct cenalloc_heaps_backend cenalloc_heaps_backend = {
	.owner = THIS_MODULE,
	.allocate = cenalloc_heap_allocate,
};
#endif

/* The cenalloc buffer behind a dma-buf fd (dma_buf_put() when done). */
static struct dma_buf *cenalloc_fd_to_dmabuf(int fd)
{
	struct dma_buf *dmabuf = dma_buf_get(fd);

	if (IS_ERR(dmabuf))
		return dmabuf;
	if (!cenalloc_is_cenalloc_dmabuf(dmabuf)) {
		dma_buf_put(dmabuf);
		return ERR_PTR(-EINVAL);
	}
	return dmabuf;
}

/*
 * Copies in the @size bytes of an ioctl argument that names a cenalloc
 * dma-buf by its fd; @fd and @flags point into @arg, and the flags must be
 * 0. Returns the dma-buf (dma_buf_put() when done).
 */
static struct dma_buf *cenalloc_fd_arg_get(void *arg, const void __user *uarg,
					   size_t size, const __s32 *fd,
					   const __u32 *flags)
{
	if (copy_from_user(arg, uarg, size))
		return ERR_PTR(-EFAULT);
	if (*flags)
		return ERR_PTR(-EINVAL);
	return cenalloc_fd_to_dmabuf(*fd);
}

static long cenalloc_ioctl_phys(void __user *uarg)
{
	struct cenalloc_phys_arg arg;
	struct dma_buf *dmabuf;
	int ret;

	if (!cenalloc_phys_allowed())
		return -EPERM;
	dmabuf = cenalloc_fd_arg_get(&arg, uarg, sizeof(arg), &arg.fd,
				     &arg.flags);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	if (arg.reserved)
		ret = -EINVAL;
	else
		ret = cenalloc_buffer_phys(dmabuf->priv, &arg.addr, &arg.len);
	dma_buf_put(dmabuf);
	if (ret)
		return ret;
	return copy_to_user(uarg, &arg, sizeof(arg)) ? -EFAULT : 0;
}

static long cenalloc_ioctl_checksum(void __user *uarg)
{
	struct cenalloc_checksum_arg arg;
	struct dma_buf *dmabuf;
	int ret;

	dmabuf = cenalloc_fd_arg_get(&arg, uarg, sizeof(arg), &arg.fd,
				     &arg.flags);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	if (!(dmabuf->file->f_mode & FMODE_READ))
		ret = -EBADF;
	else
		ret = cenalloc_buffer_checksum(dmabuf->priv, &arg.checksum,
					       &arg.len);
	dma_buf_put(dmabuf);
	if (ret)
		return ret;
	return copy_to_user(uarg, &arg, sizeof(arg)) ? -EFAULT : 0;
}

static long cenalloc_ioctl_fill(void __user *uarg)
{
	struct cenalloc_fill_arg arg;
	struct dma_buf *dmabuf;
	int ret;

	dmabuf = cenalloc_fd_arg_get(&arg, uarg, sizeof(arg), &arg.fd,
				     &arg.flags);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	if (!(dmabuf->file->f_mode & FMODE_WRITE))
		ret = -EBADF;
	else
		ret = cenalloc_buffer_fill(dmabuf->priv, arg.seed);
	dma_buf_put(dmabuf);
	return ret;
}

static long cenalloc_ioctl_info(struct cenalloc_dev *cdev, void __user *uarg)
{
	struct cenalloc_uapi_allocator_info __user *uinfo;
	struct cenalloc_uapi_allocator_info out;
	const struct cenalloc_allocator_info *wire;
	struct cenalloc_info_arg arg;
	struct cenalloc_info_resp info;
	void *allocators;
	unsigned int i, n;
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.flags || arg.reserved)
		return -EINVAL;

	allocators = kcalloc(CENALLOC_MAX_ALLOCATORS,
			     sizeof(struct cenalloc_allocator_info), GFP_KERNEL);
	if (!allocators)
		return -ENOMEM;
	ret = cenalloc_get_info(cdev, &info, allocators,
				CENALLOC_MAX_ALLOCATORS);
	if (ret < 0)
		goto out;
	n = min_t(unsigned int, ret, arg.max_allocators);

	arg.version = le32_to_cpu(info.version);
	arg.num_allocators = le32_to_cpu(info.num_allocators);
	arg.max_buffer_size = le64_to_cpu(info.max_buffer_size);
	arg.max_buffers = le32_to_cpu(info.max_buffers);
	/*
	 * Live buffers as the guest sees them: a buffer reaches the device
	 * only with its first map, so the device's count lags behind.
	 */
	mutex_lock(&cdev->lock);
	arg.num_buffers = cdev->num_buffers;
	mutex_unlock(&cdev->lock);
	arg.num_exporter_types = min_t(u32, le32_to_cpu(info.num_exporter_types),
				       CENALLOC_MAX_MAP_TYPES);
	for (i = 0; i < CENALLOC_MAX_MAP_TYPES; i++)
		arg.exporter_types[i] = i < arg.num_exporter_types ?
					le32_to_cpu(info.exporter_types[i]) : 0;

	uinfo = u64_to_user_ptr(arg.allocators_ptr);
	wire = allocators;
	for (i = 0; i < n; i++) {
		memset(&out, 0, sizeof(out));
		out.id = le32_to_cpu(wire[i].id);
		out.kinds = le32_to_cpu(wire[i].kinds);
		out.placement = le32_to_cpu(wire[i].placement);
		out.fragmentation = le32_to_cpu(wire[i].fragmentation);
		out.capacity = le64_to_cpu(wire[i].capacity);
		out.free = le64_to_cpu(wire[i].free);
		out.largest_free = le64_to_cpu(wire[i].largest_free);
		out.num_buffers = le32_to_cpu(wire[i].num_buffers);
		memcpy(out.name, wire[i].name, sizeof(out.name));
		out.name[sizeof(out.name) - 1] = '\0';
		if (copy_to_user(&uinfo[i], &out, sizeof(out))) {
			ret = -EFAULT;
			goto out;
		}
	}
	ret = copy_to_user(uarg, &arg, sizeof(arg)) ? -EFAULT : 0;
out:
	kfree(allocators);
	return ret;
}

static long cenalloc_ioctl_set_device_mask(void __user *uarg)
{
	struct cenalloc_device_mask_arg arg;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.flags || !memchr(arg.name, '\0', sizeof(arg.name)))
		return -EINVAL;
	BUILD_BUG_ON(CENALLOC_DEVICE_NAME_LEN != CENALLOC_MASK_NAME_LEN);
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	return cenalloc_mask_set(arg.name, arg.mask);
}

static long cenalloc_ioctl(struct file *file, unsigned int cmd,
			   unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	struct cenalloc_dev *cdev;
	long ret;

	if (cmd == CENALLOC_IOC_SET_DEVICE_MASK)
		return cenalloc_ioctl_set_device_mask(uarg);

	cdev = cenalloc_dev_get_current();
	if (!cdev)
		return -ENODEV;
	switch (cmd) {
	case CENALLOC_IOC_CREATE:
		ret = cenalloc_ioctl_create(cdev, uarg);
		break;
	case CENALLOC_IOC_PHYS:
		ret = cenalloc_ioctl_phys(uarg);
		break;
	case CENALLOC_IOC_INFO:
		ret = cenalloc_ioctl_info(cdev, uarg);
		break;
	case CENALLOC_IOC_CHECKSUM:
		ret = cenalloc_ioctl_checksum(uarg);
		break;
	case CENALLOC_IOC_FILL:
		ret = cenalloc_ioctl_fill(uarg);
		break;
	default:
		ret = -ENOTTY;
	}
	cenalloc_dev_put(cdev);
	return ret;
}

static const struct file_operations cenalloc_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = cenalloc_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice cenalloc_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "cenalloc",
	.fops = &cenalloc_fops,
	.mode = 0660,
};

int cenalloc_misc_register(void)
{
	return misc_register(&cenalloc_misc);
}

void cenalloc_misc_deregister(void)
{
	misc_deregister(&cenalloc_misc);
}

/*
 * The dma-heaps: cenalloc_heaps.ko allocates through this module while it
 * is loaded. Without dma_heap_add exported there are none; probe says so
 * (cenalloc_heaps_note()), once per load of the module.
 */
#ifdef CENALLOC_HAVE_DMA_HEAPS
int cenalloc_heaps_register(void)
{
	return cenalloc_heaps_bind(&cenalloc_heaps_backend);
}

void cenalloc_heaps_deregister(void)
{
	cenalloc_heaps_unbind(&cenalloc_heaps_backend);
}

void cenalloc_heaps_note(struct device *dev)
{
}
#else
int cenalloc_heaps_register(void)
{
	return 0;
}

void cenalloc_heaps_deregister(void)
{
}

void cenalloc_heaps_note(struct device *dev)
{
	static bool said;

	if (!said) {
		said = true;
		dev_info(dev, "no dma-heaps: they need a kernel that exports dma_heap_add to modules\n");
	}
}
#endif
