"""onestep-bench: one-step generative models, their baselines, one metric and timing protocol."""

__version__ = "0.1.0"
