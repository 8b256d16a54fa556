// SPDX-License-Identifier: GPL-2.0
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

#define DKMS_MULTI_TEST_VER "1.0"

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("dkms multi-module test, module b");
MODULE_VERSION(DKMS_MULTI_TEST_VER);

static int __init dkms_multi_b_init(void)
{
	pr_info("dkms_multi_b: loaded version " DKMS_MULTI_TEST_VER "\n");
	return 0;
}

static void __exit dkms_multi_b_exit(void)
{
	pr_info("dkms_multi_b: unloaded\n");
}

module_init(dkms_multi_b_init);
module_exit(dkms_multi_b_exit);
