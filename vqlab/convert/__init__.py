"""Readers of published weight files and converters to vqlab param trees."""
