"""Evaluation: benchmark adapters, official-equivalent scorers, batched generation with a cache."""
