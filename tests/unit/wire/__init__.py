"""Tests of imgstore.wire: ZStack's vocabulary (dates, the query grammar, masking)."""
