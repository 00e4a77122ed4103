"""Tests of rfd.models (src/rfd/models)."""
