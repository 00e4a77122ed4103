"""Tests of rfd.serve (src/rfd/serve)."""
