"""Models: the vision tower, image preprocessing, the tiny offline models, and (later) the MLLM."""
