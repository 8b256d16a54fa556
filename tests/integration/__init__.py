"""Integration tier: real kernel headers, real toolchain, dkms in a mount-namespace sandbox."""
