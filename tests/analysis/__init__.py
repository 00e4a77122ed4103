"""Tests of rfd.analysis (src/rfd/analysis)."""
