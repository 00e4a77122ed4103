"""Tests of rfd.cli (src/rfd/cli)."""
