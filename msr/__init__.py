"""msr: MS-Resampler and its baselines, and the pipeline that reproduces the paper."""

__version__ = "0.1.0"
