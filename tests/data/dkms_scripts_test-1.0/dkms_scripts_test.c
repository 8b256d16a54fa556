// SPDX-License-Identifier: GPL-2.0
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

#define DKMS_SCRIPTS_TEST_VER "1.0"

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("A dkms test module with a patch and pre/post scripts");
MODULE_VERSION(DKMS_SCRIPTS_TEST_VER);

static int __init dkms_scripts_test_init(void)
{
	pr_info("dkms_scripts_test: loaded version " DKMS_SCRIPTS_TEST_VER ", unpatched source\n");
	return 0;
}

static void __exit dkms_scripts_test_exit(void)
{
	pr_info("dkms_scripts_test: unloaded\n");
}

module_init(dkms_scripts_test_init);
module_exit(dkms_scripts_test_exit);
