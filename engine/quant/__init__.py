"""Quantization: configs, grids and codebooks, the layer table, the calibration pass, the methods, sizes, artifacts."""
