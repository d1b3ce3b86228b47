"""Tests of imgstore.services.images: adding, uploading, exporting, deleting images."""
