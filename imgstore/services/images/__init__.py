"""Images on Ceph backup storages: adding (sources, upload, intake), deleting, exporting, metadata."""
