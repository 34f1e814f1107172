"""Data: sources -> robust decode -> uint8 tensors -> loaders. See vitlab.data.build_data."""
