"""Image files: their format, their header checks, qemu-img/qemu-nbd under limits."""
