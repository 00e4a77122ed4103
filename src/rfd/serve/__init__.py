"""rfd.serve."""
