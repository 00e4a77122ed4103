"""Tests of rfd.blackbox (src/rfd/blackbox)."""
