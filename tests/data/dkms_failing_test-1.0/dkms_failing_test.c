// SPDX-License-Identifier: GPL-2.0
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

#error "this module fails to build on purpose"

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("A dkms test module that never builds");
MODULE_VERSION("1.0");

static int __init dkms_failing_test_init(void)
{
	return 0;
}

module_init(dkms_failing_test_init);
