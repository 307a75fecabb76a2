"""Efficiency measurement: timing protocol, MAC counting, the projector benchmark."""
