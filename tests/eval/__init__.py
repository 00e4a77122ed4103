"""Tests of rfd.eval (src/rfd/eval)."""
