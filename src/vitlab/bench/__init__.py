"""Measurement: FLOPs, parameters, throughput, memory."""
