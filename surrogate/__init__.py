"""The surrogate tile: reads and writes of a calibrated tile in torch (see README.md)."""
