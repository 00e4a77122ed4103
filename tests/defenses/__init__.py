"""Tests of rfd.defenses (src/rfd/defenses)."""
