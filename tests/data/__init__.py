"""Tests of rfd.data (src/rfd/data)."""
