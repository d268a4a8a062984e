"""fitmm: a reproducibility study of frequency-aware multimodal recommendation (FITMM, SSR)."""

__version__ = "0.1.0"
