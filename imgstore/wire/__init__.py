"""ZStack's vocabulary, no I/O: dates, numbers, the query grammar, masking of secrets in URLs,
the image inventories (API replies and bs_ceph_info.json)."""
