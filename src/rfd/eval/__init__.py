"""rfd.eval."""
