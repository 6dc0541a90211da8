"""Data layer: BBBC038 I/O, run-length encoding, CSV files, acquisition, synthetic data."""
