"""Training: one loop for stage 1 (projector) and stage 2 (projector + LLM), plain torch or DeepSpeed."""
