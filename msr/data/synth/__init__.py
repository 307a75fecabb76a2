"""A deterministic synthetic dataset of multi-object scenes, written in LLaVA's real formats."""
