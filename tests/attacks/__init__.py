"""Tests of rfd.attacks (src/rfd/attacks)."""
