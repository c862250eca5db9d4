"""Calibration: ngspice sweeps to HDF5 lookup surfaces (see README.md)."""
