"""The Python client of imgstore's API and its catalogue of ZStack APIs."""
