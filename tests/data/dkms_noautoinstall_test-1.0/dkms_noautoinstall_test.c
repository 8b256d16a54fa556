// SPDX-License-Identifier: GPL-2.0
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

#define DKMS_NOAUTOINSTALL_TEST_VER "1.0"

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("A dkms test module that autoinstall must skip");
MODULE_VERSION(DKMS_NOAUTOINSTALL_TEST_VER);

static int __init dkms_noautoinstall_test_init(void)
{
	pr_info("dkms_noautoinstall_test: loaded version " DKMS_NOAUTOINSTALL_TEST_VER "\n");
	return 0;
}

static void __exit dkms_noautoinstall_test_exit(void)
{
	pr_info("dkms_noautoinstall_test: unloaded\n");
}

module_init(dkms_noautoinstall_test_init);
module_exit(dkms_noautoinstall_test_exit);
