"""Training with circuit-calibrated surrogate tiles (see README.md).

The package itself imports nothing heavy; use its modules: ``training.analog``,
``training.optim``, ``training.trainer``, ``training.models``, ``training.data``.
"""
