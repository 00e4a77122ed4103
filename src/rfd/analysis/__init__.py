"""rfd.analysis."""
