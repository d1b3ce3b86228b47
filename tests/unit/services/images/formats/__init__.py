"""Tests of imgstore.services.images.formats: image headers and qemu under limits."""
