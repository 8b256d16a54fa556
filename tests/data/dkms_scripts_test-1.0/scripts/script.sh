#!/bin/sh
# dkms runs this as "scripts/script.sh <phase>" for each PRE_*/POST_* directive of dkms.conf:
# post_add, pre_install, post_install and post_remove in the source tree, pre_build and
# post_build in the build tree.
set -eu
phase=${1:?usage: script.sh <phase>}

if [ "$phase" = pre_build ]; then
    # dkms applies PATCH[] before PRE_BUILD, in the directory PRE_BUILD runs in.
    if ! grep -q 'patched by PATCH\[0\]' dkms_scripts_test.c; then
        echo "dkms_scripts_test: pre_build: PATCH[0] is not applied in $(pwd)" >&2
        exit 1
    fi
fi

echo "dkms_scripts_test: $phase script ran"
