"""Spectral band decompositions.

`feature_bands`: FITMM's modality-wise bands of a representation matrix (Gram-eigh;
FITMM, arXiv 2601.22498). `graph_bands`: SSR's bands over the user-item graph spectrum (arXiv 2512.01372).
"""

from fitmm.spectral.feature_bands import apply_bands, band_projectors, feature_bands, group_sizes

__all__ = ["apply_bands", "band_projectors", "feature_bands", "group_sizes"]
