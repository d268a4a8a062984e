"""FITMM: frequency-aware multimodal recommendation (Yang et al., ACM MM 2025; SPEC §5).

On the DRAGON-style backbone (R_u, R_i, H_u, H_i, see `backbone.py`), every
representation matrix is split into M modality-wise spectral bands B_k
(`fitmm.spectral.feature_bands`, bases from the full node matrices), the graph view
is added band by band,

    Ũ_k = B_k(R_u) + B_k(H_u),    Ĩ_k = B_k(R_i) + B_k(H_i),

and each side is fused with global band weights ω_k = σ(w_k) and a residual
task-adaptive gate g = 1 + s·σ(W h + b) (h = R_u or R_i):

    e = Σ_k ω_k g_k Ũ_k.

Loss: BCE + λ_IB·L_IB(g) + λ_c·L_consistency (two readings, `consistency: code | paper`).
Ablations (config): `spectral: false` gives e = R + H (the backbone alone; no bands,
gates, IB or consistency); `gate: false` drops the gate and with it the IB term;
`graph_branch: false` drops H (bands of R only).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fitmm.data.dataset import Interactions
from fitmm.errors import TrainingError
from fitmm.models.backbone import Backbone, Views
from fitmm.models.base import Recommender, bce_loss
from fitmm.spectral.feature_bands import apply_bands, band_projectors

CONSISTENCY_TEMPERATURE = 1.0


class BandFusion(nn.Module):
    """One side's fusion: ω_k = σ(w_k) (w_k init 1) and, if gated, g = 1 + s·σ(W h + b) (s init 0.5)."""

    def __init__(self, width: int, n_bands: int, gate: bool):
        super().__init__()
        self.band_logits = nn.Parameter(torch.ones(n_bands))
        if gate:
            self.gate = nn.Linear(width, n_bands)
            self.gate_scale = nn.Parameter(torch.tensor(0.5))
        else:
            self.gate = None

    def band_weights(self) -> torch.Tensor:
        return torch.sigmoid(self.band_logits)

    def gates(self, h: torch.Tensor) -> torch.Tensor | None:
        """(N, M) residual gates, or None without a gate."""
        return None if self.gate is None else 1 + self.gate_scale * torch.sigmoid(self.gate(h))

    def forward(self, bands: torch.Tensor, gates: torch.Tensor | None) -> torch.Tensor:
        """bands (M, n, D), gates (n, M) or None -> e (n, D)."""
        w = self.band_weights()
        if gates is None:
            return torch.einsum("m,mnd->nd", w, bands)
        return torch.einsum("nm,mnd->nd", gates * w, bands)


def ib_penalty(gates: torch.Tensor, alpha: float, mu: float, phi: float) -> torch.Tensor:
    """FITMM's frequency-domain IB surrogate on (N, M) gates, δ = ReLU(g − 1):
    α·mean_n ‖δ_n‖² + μ·mean_n(‖δ_n‖·Σ_k ReLU(δ_nk − φ)). The 1e-12 keeps ‖δ‖'s gradient finite at 0 (as the code)."""
    delta = F.relu(gates - 1)
    sq = delta.square().sum(1)
    return alpha * sq.mean() + mu * ((sq + 1e-12).sqrt() * F.relu(delta - phi).sum(1)).mean()


def _in_batch_contrast(bands: torch.Tensor) -> torch.Tensor:
    """Σ over the upper half of the bands (k ≥ M//2) of −mean log_softmax(X_k X_kᵀ / τ) (raw dot products)."""
    m = bands.shape[0]
    logits = bands[m // 2:] @ bands[m // 2:].transpose(1, 2) / CONSISTENCY_TEMPERATURE
    return -F.log_softmax(logits, dim=-1).mean((1, 2)).sum()


def consistency_code(user_bands: torch.Tensor, item_bands: torch.Tensor) -> torch.Tensor:
    """The released code's loss on (M, n, D) bands of batch users and positive items: Σ over ordered
    band pairs j ≠ k of MSE(cos(band_j, band_k), 1), plus the in-batch contrast; over M(M−1).
    (At M = 1 the code divides by zero; here by 1.)"""
    m = user_bands.shape[0]
    off_diagonal = ~torch.eye(m, dtype=torch.bool, device=user_bands.device)
    loss = user_bands.new_zeros(())
    for bands in (user_bands, item_bands):
        unit = F.normalize(bands, dim=-1)
        cos = torch.einsum("jnd,knd->jkn", unit, unit)
        loss = loss + (cos - 1).square().mean(-1)[off_diagonal].sum() + _in_batch_contrast(bands)
    return loss / max(m * (m - 1), 1)


def consistency_paper(user_bands: torch.Tensor, item_bands: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The paper's reading: within each band, MSE(cos, 1) between every pair of modality blocks, for
    users and items, plus the in-batch contrast; over M·B(B−1) (= 6M with id + 2 modalities)."""
    m = user_bands.shape[0]
    i, j = torch.triu_indices(n_blocks, n_blocks, offset=1, device=user_bands.device)
    loss = user_bands.new_zeros(())
    for bands in (user_bands, item_bands):
        unit = F.normalize(bands.view(m, bands.shape[1], n_blocks, -1), dim=-1)
        cos = (unit[:, :, i] * unit[:, :, j]).sum(-1)  # (M, n, pairs)
        loss = loss + (cos - 1).square().mean(1).sum() + _in_batch_contrast(bands)
    return loss / (m * n_blocks * (n_blocks - 1))


class FITMM(Recommender):
    """FITMM with its ablation switches; see the module docstring and `fitmm/configs/fitmm.yaml`."""

    def __init__(self, data: Interactions, config: dict):
        super().__init__(data, config)
        c = config
        self.spectral, self.graph_branch, self.gated = bool(c["spectral"]), bool(c["graph_branch"]), bool(c["gate"])
        self.n_bands, self.band_borders, self.consistency = int(c["n_bands"]), c["band_borders"], c["consistency"]
        self.lambda_ib, self.lambda_c = float(c["lambda_ib"]), float(c["lambda_c"])
        self.ib_args = (float(c["ib_alpha"]), float(c["ib_mu"]), float(c["ib_phi"]))
        self.dim = int(c["embedding_dim"])
        if self.band_borders not in ("equal", "energy"):
            raise TrainingError(f"band_borders must be 'equal' or 'energy', got {self.band_borders!r}")
        if self.consistency not in ("code", "paper"):
            raise TrainingError(f"consistency must be 'code' or 'paper', got {self.consistency!r}")
        if not 1 <= self.n_bands <= self.dim:
            raise TrainingError(f"n_bands must be in [1, {self.dim}], got {self.n_bands}")
        self.backbone = Backbone(data, self.dim, int(c["n_layers"]), graph=self.graph_branch,
                                 item_graph_k=int(c["item_graph_k"]), item_graph_weights=c["item_graph_weights"])
        n_blocks = self.backbone.n_blocks
        if self.spectral and self.lambda_c > 0 and self.consistency == "paper" and n_blocks < 2:
            raise TrainingError("consistency: paper aligns modality blocks, but the dataset has no item modality")
        if self.spectral:
            self.user_fusion = BandFusion(n_blocks * self.dim, self.n_bands, self.gated)
            self.item_fusion = BandFusion(n_blocks * self.dim, self.n_bands, self.gated)

    def _encode(self) -> tuple[Views, dict[str, torch.Tensor], tuple]:
        """One full forward: backbone views, band projectors of each view (from all nodes), gates of each side."""
        views = self.backbone()
        if not self.spectral:
            return views, {}, (None, None)
        projectors = {name: band_projectors(z, self.dim, self.n_bands, self.band_borders)
                      for name, z in views._asdict().items() if z is not None}
        gates = (self.user_fusion.gates(views.r_u), self.item_fusion.gates(views.r_i))
        return views, projectors, gates

    def _bands(self, views: Views, projectors: dict, side: str, rows: torch.Tensor | None) -> torch.Tensor:
        """(M, n, D) graph-enhanced bands Ũ_k (side 'u') or Ĩ_k (side 'i') of `rows` (None: all)."""
        out = 0
        for view in (f"r_{side}", f"h_{side}"):
            z = getattr(views, view)
            if z is not None:
                out = out + apply_bands(z if rows is None else z[rows], projectors[view])
        return out

    def _embed(self, views: Views, projectors: dict, gates: torch.Tensor | None, side: str,
               rows: torch.Tensor | None, bands: torch.Tensor | None = None) -> torch.Tensor:
        if not self.spectral:
            r, h = getattr(views, f"r_{side}"), getattr(views, f"h_{side}")
            e = r if h is None else r + h
            return e if rows is None else e[rows]
        if bands is None:
            bands = self._bands(views, projectors, side, rows)
        if gates is not None and rows is not None:
            gates = gates[rows]
        return (self.user_fusion if side == "u" else self.item_fusion)(bands, gates)

    def loss_terms(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> dict[str, torch.Tensor]:
        views, projectors, (g_u, g_i) = self._encode()
        items = torch.cat([pos_items, neg_items])
        user_bands = item_bands = None
        if self.spectral:
            user_bands = self._bands(views, projectors, "u", users)
            item_bands = self._bands(views, projectors, "i", items)
        e_u = self._embed(views, projectors, g_u, "u", users, user_bands)
        e_pos, e_neg = self._embed(views, projectors, g_i, "i", items, item_bands).split(len(pos_items))
        terms = {"bce": bce_loss((e_u * e_pos).sum(-1), (e_u * e_neg).sum(-1))}
        if self.spectral and self.gated and self.lambda_ib > 0:
            terms["ib"] = self.lambda_ib * (ib_penalty(g_u, *self.ib_args) + ib_penalty(g_i, *self.ib_args))
        if self.spectral and self.lambda_c > 0:
            pos_bands = item_bands[:, : len(pos_items)]
            loss = (consistency_code(user_bands, pos_bands) if self.consistency == "code"
                    else consistency_paper(user_bands, pos_bands, self.backbone.n_blocks))
            terms["consistency"] = self.lambda_c * loss
        return terms

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        views, projectors, (g_u, g_i) = self._encode()
        return (self._embed(views, projectors, g_u, "u", None), self._embed(views, projectors, g_i, "i", None))

    @torch.no_grad()
    def diagnostics(self) -> dict:
        """Band weights ω, gate scale s and mean gate per band (per side), energy fraction per band of each view."""
        out = {"block_weights_mean": dict(zip(self.backbone.blocks, self.backbone.block_weights.mean(0).tolist()))}
        if not self.spectral:
            return out
        views, projectors, gates = self._encode()
        fusions = {"user": self.user_fusion, "item": self.item_fusion}
        out["band_weights"] = {s: f.band_weights().tolist() for s, f in fusions.items()}
        if self.gated:
            out["gate_scale"] = {s: f.gate_scale.item() for s, f in fusions.items()}
            out["mean_gate"] = {s: g.mean(0).tolist() for s, g in zip(fusions, gates)}
        out["band_energy"] = {}
        for name, p in projectors.items():
            z = getattr(views, name)
            energy = apply_bands(z, p).square().sum((1, 2))
            out["band_energy"][name] = (energy / energy.sum()).tolist()
        return out
