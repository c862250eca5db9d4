"""Training with circuit-calibrated surrogate tiles (see README.md)."""
