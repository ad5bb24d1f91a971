"""Capacity planning: what a study costs (memory per rank, tokens, FLOPs, GPU-hours) before it runs."""
