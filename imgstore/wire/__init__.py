"""ZStack's vocabulary, no I/O: dates, numbers, the query grammar, masking of secrets in URLs."""
