"""rfd.defenses."""
