// SPDX-License-Identifier: GPL-2.0
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

#define DKMS_MULTI_TEST_VER "1.0"

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("dkms multi-module test, module a");
MODULE_VERSION(DKMS_MULTI_TEST_VER);

static int __init dkms_multi_a_init(void)
{
	pr_info("dkms_multi_a: loaded version " DKMS_MULTI_TEST_VER "\n");
	return 0;
}

static void __exit dkms_multi_a_exit(void)
{
	pr_info("dkms_multi_a: unloaded\n");
}

module_init(dkms_multi_a_init);
module_exit(dkms_multi_a_exit);
