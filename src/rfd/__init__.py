"""rfd: Randomized Feature Defense against query-based black-box attacks.

Layers (each imports only those above it): data, models, defenses, blackbox, attacks, eval,
analysis, serve, cli.
"""

__version__ = "0.1.0"
