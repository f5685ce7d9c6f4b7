"""Inference: segment volumes, register pairs, generate pseudo-labels in bulk."""
