"""Evaluation: sampling task problems, accuracy, PRM quality, the demo table."""
