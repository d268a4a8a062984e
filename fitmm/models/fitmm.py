"""FITMM: frequency-aware multimodal recommendation (Yang et al., ACM MM 2025,
arXiv 2601.22498; book/methods.md, "FITMM").

On the DRAGON-style backbone (R_u, R_i, H_u, H_i, see `backbone.py`), every
representation matrix is split into M modality-wise spectral bands B_k
(`fitmm.spectral.feature_bands`, bases from the full node matrices), the graph view
is added band by band,

    Ũ_k = B_k(R_u) + B_k(H_u),    Ĩ_k = B_k(R_i) + B_k(H_i),

and each side is fused with global band weights ω_k = σ(w_k) and a residual
task-adaptive gate g = 1 + s·σ(W h + b) (h = R_u or R_i):

    e = Σ_k ω_k g_k Ũ_k.

As in the released code, users and items have separate fusion modules (own w, s, W, b).
A training step is one full backbone forward, the band projectors of the four full
matrices, and bands / embeddings of the batch's distinct users and items only.

Loss: BCE + λ_IB·L_IB(g) + λ_c·L_consistency (two readings, `consistency: code | paper`).
Ablations (config): `spectral: false` gives e = R + H (the backbone alone; no bands,
gates, IB or consistency); `gate: false` drops the gate and with it the IB term;
`graph_branch: false` drops H (bands of R only).
This study's diagnosis switches (book chapter "Why FITMM stops learning"; defaults = released code):
`detach_bands: true` stops the gradient through the band projectors (the Gram eigenvectors),
`train_features: false` freezes the raw feature tables, `lambda_emb > 0` adds DRAGON's L2 term
λ_emb·(Σ_m mean_batch (P^m_u)² + mean w_u²) (DRAGON, arXiv 2301.12097, its `calculate_loss`),
`detach_gate_input: true` feeds the gate sg(h) (no gradient into R through the gate, so L_IB reaches
only the gate's own W, b, s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fitmm.config import Config, option
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError
from fitmm.models.backbone import Backbone, Views
from fitmm.models.base import BandedRecommender, Batch, bce_loss, require_modalities
from fitmm.spectral.feature_bands import apply_bands, band_projectors, band_sum


INITIAL_BAND_LOGIT = 1.0  # w_k at init, so every ω_k starts at σ(1) ≈ 0.731 (the released code)


class BandFusion(nn.Module):
    """One side's fusion: ω_k = σ(w_k) (w_k init 1) and, if gated, g = 1 + s·σ(W h + b) (s init 0.5)."""

    def __init__(self, width: int, n_bands: int, gate: bool):
        super().__init__()
        self.band_logits = nn.Parameter(torch.full((n_bands,), INITIAL_BAND_LOGIT))
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
    α·mean_n ‖δ_n‖² + μ·mean_n(‖δ_n‖·Σ_k ReLU(δ_nk − φ)).
    The 1e-12 keeps ‖δ‖'s gradient finite at δ = 0 (as in the released code)."""
    delta = F.relu(gates - 1)
    sq = delta.square().sum(1)
    return alpha * sq.mean() + mu * ((sq + 1e-12).sqrt() * F.relu(delta - phi).sum(1)).mean()


def _batch_mean(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of per-distinct-row `values` (..., n) that occur `counts` (n,) times."""
    return (values * counts).sum(-1) / counts.sum()


class GramLogSumExp(torch.autograd.Function):
    """Σ_k Σ_a w_a logsumexp_b(x_ka·x_kb + log c_b) for bands X (K, n, D), row weights w (n,) and counts c (n,),
    with its gradient formed in the forward: with P_k = softmax_b(X_k X_kᵀ + log c) and G_k = diag(w) P_k,
    ∂/∂X_k = (G_k + G_kᵀ) X_k. One n×n product each way (autograd through the matmul takes two backward) and
    only the (K, n, D) gradient is kept, not the (K, n, n) logits."""

    @staticmethod
    def forward(ctx, bands: torch.Tensor, weights: torch.Tensor, log_counts: torch.Tensor) -> torch.Tensor:
        logits = torch.bmm(bands, bands.transpose(1, 2)).add_(log_counts)
        top = logits.amax(-1, keepdim=True)
        probs = logits.sub_(top).exp_()
        total = probs.sum(-1, keepdim=True)
        value = ((top + total.log()).squeeze(-1) @ weights).sum()
        if ctx.needs_input_grad[0]:
            g = probs.mul_(weights[:, None] / total)
            ctx.save_for_backward(torch.bmm(g + g.transpose(1, 2), bands))
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.saved_tensors[0], None, None


def _in_batch_contrast(bands: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Σ over the upper half of the bands (k ≥ M//2) of −mean log_softmax(X_k X_kᵀ) over the batch
    (raw dot products, temperature 1), computed on distinct rows: with duplicates weighted by
    their counts c, −mean_ab log_softmax = mean_a logsumexp_b(S_ab + log c_b) − ‖mean_b x_b‖²."""
    upper = bands[bands.shape[0] // 2:]
    mean_row = _batch_mean(upper.transpose(1, 2), counts)
    return GramLogSumExp.apply(upper, counts / counts.sum(), counts.log()) - mean_row.square().sum()


def consistency_code(user_bands: torch.Tensor, user_counts: torch.Tensor,
                     item_bands: torch.Tensor, item_counts: torch.Tensor) -> torch.Tensor:
    """The released code's loss on the (M, n, D) bands of the distinct batch users and positive items
    (each row occurring `counts` times in the batch): Σ over ordered band pairs j ≠ k of
    MSE(cos(band_j, band_k), 1), plus the in-batch contrast, over M(M−1). (At M = 1 the code divides by
    zero; here by 1.)"""
    m = user_bands.shape[0]
    j, k = torch.triu_indices(m, m, offset=1, device=user_bands.device)
    loss = user_bands.new_zeros(())
    for bands, counts in ((user_bands, user_counts), (item_bands, item_counts)):
        unit = F.normalize(bands, dim=-1)
        cos = (unit[j] * unit[k]).sum(-1)  # (pairs, n); cos is symmetric: ordered pairs count twice
        loss = loss + 2 * _batch_mean((cos - 1).square(), counts).sum() + _in_batch_contrast(bands, counts)
    return loss / max(m * (m - 1), 1)


def consistency_paper(user_bands: torch.Tensor, user_counts: torch.Tensor,
                      item_bands: torch.Tensor, item_counts: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The paper's reading: within each band, MSE(cos, 1) between every pair of modality blocks, for
    users and items, plus the in-batch contrast; over M·B(B−1) (= 6M with id + 2 modalities)."""
    m = user_bands.shape[0]
    i, j = torch.triu_indices(n_blocks, n_blocks, offset=1, device=user_bands.device)
    loss = user_bands.new_zeros(())
    for bands, counts in ((user_bands, user_counts), (item_bands, item_counts)):
        unit = F.normalize(bands.view(m, bands.shape[1], n_blocks, -1), dim=-1)
        cos = (unit[:, :, i] * unit[:, :, j]).sum(-1).transpose(1, 2)  # (M, pairs, n)
        loss = loss + _batch_mean((cos - 1).square(), counts).sum() + _in_batch_contrast(bands, counts)
    return loss / (m * n_blocks * (n_blocks - 1))


@dataclass(frozen=True)
class FITMMConfig(Config):
    n_layers: int = option("propagation layers on the user-item graph", ge=0)
    item_graph_k: int = option("neighbours per item in each modality's kNN graph", ge=1)
    item_graph_weights: dict[str, float] | None = option("α_m of S = Σ_m α_m S_m by modality; null: the default split", ge=0)
    spectral: bool = option("false: the backbone alone (e = R + H), no bands, gates, IB or consistency")
    n_bands: int = option("number of bands M (at most embedding_dim)", ge=1)
    band_borders: str = option("how the directions are grouped into bands", choices=("equal", "energy"))
    gate: bool = option("false: plain ω-weighted sum of the bands and no IB term")
    graph_branch: bool = option("false: bands of R only (no H; needs no item features)")
    lambda_ib: float = option("weight of L_IB", ge=0)
    ib_alpha: float = option("α of L_IB", ge=0)
    ib_mu: float = option("μ of L_IB", ge=0)
    ib_phi: float = option("φ of L_IB", ge=0)
    lambda_c: float = option("weight of the consistency loss", ge=0)
    consistency: str = option("code: bands of a node pulled together | paper: modality blocks within a band aligned",
                              choices=("code", "paper"))
    detach_bands: bool = option("true: no gradient through the band projectors (Gram eigenvectors); values unchanged")
    train_features: bool = option("false: the raw item feature tables are frozen (no gradient)")
    lambda_emb: float = option("weight of DRAGON's L2 term on the batch users' preferences and the block weights", ge=0)
    detach_gate_input: bool = option("true: the gate reads h without passing gradient into it (L_IB then reaches only "
                                     "the gate's own parameters); values unchanged")

    def check(self) -> None:
        super().check()
        if self.n_bands > self.embedding_dim:
            raise ConfigError(f"n_bands: {self.n_bands} is not allowed; expected at most embedding_dim = {self.embedding_dim}")


# Backbone views (R, H) of each side, by their names in `Views`.
SIDE_VIEWS = {"user": ("r_u", "h_u"), "item": ("r_i", "h_i")}


class FITMM(BandedRecommender):
    """FITMM with its ablation switches; see the module docstring and `fitmm/configs/fitmm.yaml`."""

    config_class = FITMMConfig
    item_id_table = "backbone.item_id"
    batch_distinct_ids = True

    @classmethod
    def check_data(cls, config: FITMMConfig, data: Interactions) -> None:
        if config.graph_branch:
            require_modalities("FITMM's item-item graph (graph_branch: true)", data,
                               hint="run FITMM without it with --set graph_branch=false")
        if config.spectral and config.lambda_c > 0 and config.consistency == "paper":
            require_modalities("consistency: paper (it aligns modality blocks)", data,
                               hint="use --set consistency=code")

    def __init__(self, data: Interactions, config: FITMMConfig):
        super().__init__(data, config)
        c = config
        self.spectral, self.graph_branch, self.gated = c.spectral, c.graph_branch, c.gate
        self.n_bands, self.band_borders, self.consistency = c.n_bands, c.band_borders, c.consistency
        self.lambda_ib, self.lambda_c, self.lambda_emb = c.lambda_ib, c.lambda_c, c.lambda_emb
        self.detach_bands, self.detach_gate_input = c.detach_bands, c.detach_gate_input
        self.ib_args = (c.ib_alpha, c.ib_mu, c.ib_phi)
        self.dim = c.embedding_dim
        self.backbone = Backbone(data, self.dim, c.n_layers, graph=self.graph_branch,
                                 item_graph_k=c.item_graph_k, item_graph_weights=c.item_graph_weights,
                                 train_features=c.train_features)
        n_blocks = self.backbone.n_blocks
        if self.spectral:
            self.user_fusion = BandFusion(n_blocks * self.dim, self.n_bands, self.gated)
            self.item_fusion = BandFusion(n_blocks * self.dim, self.n_bands, self.gated)

    def _encode(self) -> tuple[Views, dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
        """One full forward: backbone views, band projectors of each view (bases from all nodes), gates per side."""
        views = self.backbone()
        if not self.spectral:
            return views, {}, {}
        projectors = {name: band_projectors(z.detach() if self.detach_bands else z, self.dim, self.n_bands,
                                            self.band_borders)
                      for name, z in views._asdict().items() if z is not None}
        gate_input = {side: z.detach() if self.detach_gate_input else z for side, z in (("user", views.r_u),
                                                                                       ("item", views.r_i))}
        gates = {"user": self.user_fusion.gates(gate_input["user"]), "item": self.item_fusion.gates(gate_input["item"])}
        return views, projectors, gates

    def _side(self, state: tuple, side: str, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings e of `rows` (None: all) of side 'user' or 'item', and their bands Ũ_k / Ĩ_k (M, n, D) if spectral
        (the band of `without_band` zeroed)."""
        views, projectors, gates = state
        r_name, h_name = SIDE_VIEWS[side]
        r, h = getattr(views, r_name), getattr(views, h_name)
        if rows is not None:
            r, h = r[rows], None if h is None else h[rows]
        if not self.spectral:
            return (r if h is None else r + h), None
        pairs = [(z, projectors[name]) for z, name in ((r, r_name), (h, h_name)) if z is not None]
        bands = self.drop_band(band_sum(*pairs))
        g = gates[side]
        if g is not None and rows is not None:
            g = g[rows]
        return (self.user_fusion if side == "user" else self.item_fusion)(bands, g), bands

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        # Bands and embeddings are computed once per distinct user / item of the batch.
        users, items = batch.distinct_users, batch.distinct_items
        state = self._encode()
        e_u, user_bands = self._side(state, "user", users.ids)
        e_i, item_bands = self._side(state, "item", items.ids)
        e_u, (e_pos, e_neg) = e_u[users.index], e_i[items.index].split(len(batch.pos_items))
        terms = {"bce": bce_loss((e_u * e_pos).sum(-1), (e_u * e_neg).sum(-1))}
        gates = state[2]
        if self.spectral and self.gated and self.lambda_ib > 0:
            terms["ib"] = self.lambda_ib * sum(ib_penalty(g, *self.ib_args) for g in gates.values())
        if self.spectral and self.lambda_c > 0:
            pos_bands = item_bands[:, batch.pos_in_items]
            pos_counts = batch.distinct_pos.counts.to(pos_bands.dtype)
            args = (user_bands, users.counts.to(user_bands.dtype), pos_bands, pos_counts)
            if self.consistency == "code":
                loss = consistency_code(*args)
            else:
                loss = consistency_paper(*args, self.backbone.n_blocks)
            terms["consistency"] = self.lambda_c * loss
        if self.lambda_emb > 0:
            terms["emb"] = self.lambda_emb * self.embedding_penalty(users.ids, users.counts)
        return terms

    def embedding_penalty(self, users: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """DRAGON's L2 term (its `calculate_loss`, 'cat' construction) before its weight: Σ over blocks of the
        batch mean of (P^m_u)² plus the mean of the block weights w_u²; `users` distinct, occurring `counts` times."""
        b = self.backbone
        per_user = b.preference[users].square().view(len(users), b.n_blocks, self.dim).mean(-1).sum(-1)
        return _batch_mean(per_user, counts.to(per_user.dtype)) + b.block_weights.square().mean()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by role: the backbone's groups, then the band weights ω (logits) and the gates (W, b, s)."""
        groups = self.backbone.parameter_groups()
        if self.spectral:
            fusions = (self.user_fusion, self.item_fusion)
            groups["band_weights"] = [f.band_logits for f in fusions]
            if self.gated:
                groups["gate"] = [p for f in fusions for p in (*f.gate.parameters(), f.gate_scale)]
        return groups

    @torch.no_grad()
    def epoch_diagnostics(self) -> dict:
        """Band weights ω and gate scale s per side (read off the parameters, no forward)."""
        if not self.spectral:
            return {}
        fusions = {"user": self.user_fusion, "item": self.item_fusion}
        out = {"band_weights": {s: f.band_weights().tolist() for s, f in fusions.items()}}
        if self.gated:
            out["gate_scale"] = {s: f.gate_scale.item() for s, f in fusions.items()}
        return out

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        state = self._encode()
        return self._side(state, "user", None)[0], self._side(state, "item", None)[0]

    @torch.no_grad()
    def band_embeddings(self) -> dict[str, torch.Tensor] | None:
        """The graph-enhanced bands Ũ_k and Ĩ_k of every user and item, or None with `spectral: false`."""
        if not self.spectral:
            return None
        state = self._encode()
        return {side: self._side(state, side, None)[1] for side in SIDE_VIEWS}

    @torch.no_grad()
    def user_gates(self) -> torch.Tensor | None:
        """(n_users, M) band gates g of every user, or None (no spectral module or no gate)."""
        return self._encode()[2]["user"] if self.spectral and self.gated else None

    @torch.no_grad()
    def analysis(self, data: Interactions) -> dict:
        """`BandedRecommender.analysis`, plus per backbone view (R_u, R_i, H_u, H_i): the largest |cos| between two
        bands, each band's energy share and its cross-modal covariance share (`feature_band_checks`)."""
        from fitmm.experiments.spectral_checks import backbone_views, feature_band_checks  # built on the models

        out = super().analysis(data)
        if self.spectral:
            checks = feature_band_checks(backbone_views(self), self.n_bands, self.band_borders)
            out["feature_bands"] = json.loads(checks.to_json(orient="index"))
        return out

    @torch.no_grad()
    def diagnostics(self) -> dict:
        """Mean block weights w_u; item graph weights α_m by modality; per side: band weights ω, gate scale s, mean gate per band;
        energy fraction of each band of each view (‖B_k(Z)‖² / ‖Z‖²)."""
        out = {"block_weights_mean": dict(zip(self.backbone.blocks, self.backbone.block_weights.mean(0).tolist())),
               "item_graph_weights": self.backbone.item_graph_weights}
        if not self.spectral:
            return out
        views, projectors, gates = self._encode()
        fusions = {"user": self.user_fusion, "item": self.item_fusion}
        out["band_weights"] = {s: f.band_weights().tolist() for s, f in fusions.items()}
        if self.gated:
            out["gate_scale"] = {s: f.gate_scale.item() for s, f in fusions.items()}
            out["mean_gate"] = {side: g.mean(0).tolist() for side, g in gates.items()}
        energy = {name: apply_bands(getattr(views, name), p).square().sum((1, 2)) for name, p in projectors.items()}
        out["band_energy"] = {name: (e / e.sum()).tolist() for name, e in energy.items()}
        return out
