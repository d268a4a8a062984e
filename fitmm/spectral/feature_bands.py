"""Modality-wise spectral bands of a representation matrix (FITMM, arXiv 2601.22498;
book/methods.md, "FITMM").

A representation Z (N x B·d) is split into its B modality blocks Z^b (N x d). For
each block, the d right singular vectors V (strongest first) are split into M
contiguous groups G_1..G_M and band k of the block is the projection

    B_k(Z^b) = Z^b V_{G_k} V_{G_k}ᵀ = Z^b P_k^b.

Band k of Z concatenates B_k(Z^b) over blocks. Σ_k P_k^b = I, so the bands sum to
Z; within each block B_jᵀB_k = P_j (Z^bᵀZ^b) P_k = 0 for j ≠ k, so the bands are
mutually orthogonal (block by block, hence also as N x B·d matrices).

Why the d x d Gram matrix instead of FITMM's thin SVD: the right singular vectors
of Z are the eigenvectors of ZᵀZ, with eigenvalues σ². Only the group projectors
P_k are used, never the individual vectors, and P_k is unique whenever the group's
eigenvalues are separated from the other groups', even where the eigenvectors
inside a group are not (repeated values). So `eigh(ZᵀZ)` (O(N d²) + O(d³)) gives the
same bands as `svd(Z)` (O(N d²) with a much larger constant, and an O(N d) U).

Gradients: eigenvector derivatives divide by eigenvalue gaps λ_j − λ_i, which is
why SVD/eigh backward blows up at repeated values. A projector's derivative only
involves gaps between different groups (within-group terms cancel), so
`BandProjectors` differentiates the projectors directly and regularises those
gaps as gap / (gap² + ε²), bounded by 1/(2ε); ε is relative to the largest
eigenvalue. The d x d eigenproblems are solved in float64.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator, Literal

import torch

Borders = Literal["equal", "energy"]


def group_sizes(dim: int, n_bands: int) -> list[int]:
    """Contiguous group sizes, as even as possible, larger first (64, 3 -> [22, 21, 21])."""
    if not 1 <= n_bands <= dim:
        raise ValueError(f"n_bands must be in [1, {dim}], got {n_bands}")
    base, extra = divmod(dim, n_bands)
    return [base + (k < extra) for k in range(n_bands)]


def equal_membership(dim: int, n_bands: int, batch: int = 1, device: torch.device | None = None) -> torch.Tensor:
    """(batch, M, d) one-hot group membership of the d directions (strongest first), made on `device` (no copy
    from the host, so no wait for a GPU)."""
    ends = list(itertools.accumulate(group_sizes(dim, n_bands)))
    index = torch.arange(dim, device=device)
    mask = torch.stack([(index >= start) & (index < end) for start, end in zip([0, *ends], ends)])
    return mask.to(torch.float64).expand(batch, n_bands, dim)


def energy_membership(eigenvalues: torch.Tensor, n_bands: int) -> torch.Tensor:
    """Membership with each band carrying ≈ 1/M of the eigenvalue mass (energy).

    `eigenvalues`: (batch, d), descending. Border k sits after the direction where
    the cumulative energy fraction is closest to k/M, kept so that every group
    has at least one direction.
    """
    batch, dim = eigenvalues.shape
    if not 1 <= n_bands <= dim:
        raise ValueError(f"n_bands must be in [1, {dim}], got {n_bands}")
    lam = eigenvalues.clamp_min(0)
    cum = lam.cumsum(-1) / lam.sum(-1, keepdim=True).clamp_min(torch.finfo(lam.dtype).tiny)
    index = torch.arange(dim, device=lam.device)
    group = torch.zeros(batch, dim, dtype=torch.long, device=lam.device)
    end = torch.zeros(batch, dtype=torch.long, device=lam.device)  # directions in groups 1..k
    for k in range(1, n_bands):
        closest = (cum - k / n_bands).abs().argmin(-1) + 1
        end = torch.maximum(closest, end + 1).clamp_max(dim - (n_bands - k))
        group += index >= end[:, None]
    return torch.nn.functional.one_hot(group, n_bands).transpose(1, 2).to(torch.float64)


@contextlib.contextmanager
def single_threaded(device: torch.device) -> Iterator[None]:
    """Run a tiny CPU LAPACK call on one thread: MKL's threaded eigh of a 64 x 64 matrix is
    ~100x slower than the single-threaded one when the cores are busy (measured: 170 ms vs 1.6 ms)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class BandProjectors(torch.autograd.Function):
    """P_k^b = V diag(mask_k) Vᵀ from the Gram matrix G = Z^bᵀ Z^b = V Λ Vᵀ of each block, with a
    gap-regularised backward.

    dP_k = V (Ω ∘ K_k) Vᵀ with Ω = Vᵀ dG V and K_k,ij = (e_kj − e_ki)/(λ_j − λ_i): zero unless i and j
    lie in different groups. So Ḡ = V sym(Σ_k (VᵀP̄_k V) ∘ K_k) Vᵀ and, as dG = dZᵀZ + ZᵀdZ, Z̄ = 2 Z Ḡ.
    The Gram matrix is accumulated in Z's dtype; the eigendecomposition runs in float64.
    """

    @staticmethod
    def forward(ctx, blocks: torch.Tensor, n_bands: int, borders: str, eps: float) -> torch.Tensor:
        gram = torch.einsum("nbi,nbj->bij", blocks, blocks).double()
        with single_threaded(gram.device):
            lam, vec = torch.linalg.eigh(gram)  # ascending
        lam, vec = lam.flip(-1), vec.flip(-1)
        if borders == "equal":
            mask = equal_membership(gram.shape[-1], n_bands, gram.shape[0], gram.device)
        elif borders == "energy":
            mask = energy_membership(lam, n_bands)
        else:
            raise ValueError(f"band_borders must be 'equal' or 'energy', got {borders!r}")
        ctx.save_for_backward(blocks, lam, vec, mask)
        ctx.eps = eps
        return (vec[:, None] * mask[:, :, None, :]) @ vec.transpose(-1, -2)[:, None]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        blocks, lam, vec, mask = ctx.saved_tensors
        gap = lam[:, None, :] - lam[:, :, None]  # gap_ij = λ_j − λ_i
        eps = ctx.eps * lam.abs().amax(-1, keepdim=True)[..., None].clamp_min(torch.finfo(lam.dtype).tiny)
        inv_gap = gap / (gap.square() + eps.square())
        k = (mask[:, :, None, :] - mask[:, :, :, None]) * inv_gap[:, None]  # (B, M, i, j)
        rotated = vec.transpose(-1, -2)[:, None] @ grad.double() @ vec[:, None]
        a = (rotated * k).sum(1)
        grad_gram = vec @ (a + a.transpose(-1, -2)) @ vec.transpose(-1, -2)  # = 2 Ḡ
        return torch.einsum("nbi,bij->nbj", blocks, grad_gram.to(blocks.dtype)), None, None, None


def band_projectors(z: torch.Tensor, block_dim: int, n_bands: int, borders: Borders = "equal",
                    eps: float = 1e-6) -> torch.Tensor:
    """(B, M, d, d) float64 band projectors of the B blocks of z (N x B·d), from the full matrix."""
    n, width = z.shape
    if width % block_dim:
        raise ValueError(f"width {width} is not a multiple of the block size {block_dim}")
    return BandProjectors.apply(z.reshape(n, width // block_dim, block_dim), n_bands, borders, eps)


def apply_bands(z: torch.Tensor, projectors: torch.Tensor) -> torch.Tensor:
    """(M, n, B·d) bands of the rows z (n x B·d) under `projectors` (B, M, d, d)."""
    return band_sum((z, projectors))


def band_sum(*pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(M, n, B·d) Σ over `pairs` (z, P) of the bands of the rows z (n x B·d) under P (B, M, d, d), as one batched
    product per block: the inputs side by side (n, S·d) times the projectors stacked (S·d, M·d)."""
    n = pairs[0][0].shape[0]
    n_blocks, n_bands, block_dim, _ = pairs[0][1].shape
    dtype = pairs[0][0].dtype
    blocks = torch.cat([z.reshape(n, n_blocks, block_dim) for z, _ in pairs], dim=-1).transpose(0, 1)
    stacked = torch.cat([p.to(dtype) for _, p in pairs], dim=2)  # (B, M, S·d, d)
    stacked = stacked.permute(0, 2, 1, 3).reshape(n_blocks, len(pairs) * block_dim, n_bands * block_dim)
    bands = torch.bmm(blocks, stacked).view(n_blocks, n, n_bands, block_dim)
    return bands.permute(2, 1, 0, 3).reshape(n_bands, n, n_blocks * block_dim)


def feature_bands(z: torch.Tensor, block_dim: int, n_bands: int, borders: Borders = "equal") -> torch.Tensor:
    """(M, N, B·d) modality-wise spectral bands of z (N x B·d); they sum to z and are orthogonal."""
    return apply_bands(z, band_projectors(z, block_dim, n_bands, borders))
