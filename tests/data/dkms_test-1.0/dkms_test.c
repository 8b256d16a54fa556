// SPDX-License-Identifier: GPL-2.0
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

#define DKMS_TEST_VER "1.0"

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("A simple dkms test module");
MODULE_VERSION(DKMS_TEST_VER);

static int __init dkms_test_init(void)
{
	pr_info("dkms_test: loaded version " DKMS_TEST_VER "\n");
	return 0;
}

static void __exit dkms_test_exit(void)
{
	pr_info("dkms_test: unloaded\n");
}

module_init(dkms_test_init);
module_exit(dkms_test_exit);
