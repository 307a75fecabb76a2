"""Data: the synthetic dataset, LLaVA json readers, templates and label masking, feature shards."""
