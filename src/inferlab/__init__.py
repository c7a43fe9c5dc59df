"""inferlab: honest latency, quality and bottleneck figures for causal language models."""

__version__ = "0.1.0"
