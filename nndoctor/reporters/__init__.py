"""Reporters: turn a Report into console output, JSON, TensorBoard events and figures."""
