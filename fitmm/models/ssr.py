"""SSR: structured spectral reasoning (Yang et al., NeurIPS 2025,
arXiv 2512.01372; book/methods.md, "SSR").

On the DRAGON-style backbone (`backbone.py`), each node's signal is
X = [[R_u; R_i] | [H_u; H_i]] (N x 2·B·d, B = 1 + n_modalities blocks of d), split into M
graph spectral bands X_m (`fitmm.spectral.graph_bands`, path `bands`; `auto`: exact when
N ≤ 5000, Chebyshev above, as the released code). With `band_input: sum` (the released
code) each band's R half and H half are added, X_m ← X_m^R + X_m^H (D = B·d), so the
scores carry the cross terms ⟨R_u, H_i⟩ and ⟨H_u, R_i⟩ as DRAGON's `rep + h` does; with
`concat` they stay side by side (D = 2·B·d) and only ⟨R_u, R_i⟩ + ⟨H_u, H_i⟩ remain.
Per side (users, items, separate parameters), with context h:

    G-HSNO    K = Wq Wkᵀ/(√R τ),  A = softmax_m(K),  Y_m = Σ_n A_mn X_n,
              v_r = exp(0.1·tanh γ_r),  c = σ(MLP(h)),  Z_m = c ⊙ Σ_r w_r v_r ⊙ Y_m,
              reg = mean(K²) + mean(γ²)
    gating    a = 1 + γ_f·tanh(MLP([h, mean_m Z_m])),  Z'_m = a_m Z_m · ‖Σ Z‖/‖Σ a_m Z_m‖,
              e = Σ_m Z'_m,  ŷ_ui = ⟨e_u, e_i⟩

Loss: BCE + λ_reg·reg + λ_mask·L_mask + λ_c·L_contrast (0.1, 0.001, 1e-4), where
L_mask = mean over (users, positives, negatives) of MSE(e(masked bands), stop_grad(e)),
each (node, band) dropped w.p. p in training only, and L_contrast is the within-band
InfoNCE between modality blocks.

Choices the paper (arXiv 2512.01372) leaves open, made here:
- The context h of a node is its backbone representation R_u or R_i (B·d), the same
  context FITMM's gate uses (arXiv 2601.22498).
- "A = softmax over output bands" is read literally by default (`mixing_softmax: output`):
  normalised over m, each input band is distributed over the outputs and Σ_m Y_m = Σ_n X_n,
  so Σ_m Z_m = c ⊙ v̄ ⊙ X does not depend on the band split at all; the split then acts on e
  only through the gate (and the masking term). `mixing_softmax: input` is the attention
  convention (normalised over n for each output m), under which A re-weights the bands.
- Initial values and sizes (`reading`). `code`, the released code's: Wq, Wk Xavier-normal,
  γ ~ N(0, 1), the rank logits 0, the gate's last layer N(0, 1e-3) with zero bias (every gate
  starts at 1 up to ~1e-4), MLPs Linear → ReLU → Linear with B·d/4 hidden units (48 with
  B = 3), and the operator's regulariser added again for the masked pass (it counts twice).
  `paper`, this study's earlier reading: Wq, Wk Xavier-uniform, γ = 0 (all gains 1), PyTorch's
  default init of the gate, `embedding_dim` hidden units, the regulariser once.
- A "modality block" of a row of a band (viewed as halves x B x d) is the d entries of one
  modality (sum), or its 2d entries in R and in H (concat). Contrastive pairs are every pair of item
  modalities (the id block is not a modality), on the output bands Z'_m of the unique
  batch users and of the unique positive items (a duplicate would be its own negative),
  each side its own candidate set of 2·n·M blocks; the loss is the mean over sides,
  pairs and both anchor directions. (The released code contrasts the input bands, and
  keeps an anchor among its own candidates.) Its cost is quadratic in 2·n·M (about 10^4 per side
  for a batch of 2048 on TikTok, 85% of an epoch on the CPU), so by default a uniform
  sample of `contrast_anchors` anchors is scored against all candidates: an unbiased
  estimate of the same loss and gradient (`contrast_anchors: null` scores every anchor).

Ablations (config): `bands`, `n_bands`, `operator: false` (Z_m = X_m, no reg),
`gating: false` (Z' = Z), `masking: false`, `contrastive: false`. With operator and gating
off, e = Σ_m X_m = X: the backbone alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fitmm.config import Config, option
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError, TrainingError
from fitmm.models.backbone import Backbone
from fitmm.models.base import BandedRecommender, Batch, bce_loss, require_modalities
from fitmm.spectral.graph_bands import BAND_PATHS, check_dense_eigh, make_graph_bands, resolve_band_path


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class SpectralOperator(nn.Module):
    """G-HSNO: low-rank cross-band mixing, R diagonal gains and a context scale, on (n, M, D) band stacks."""

    def __init__(self, n_bands: int, width: int, context_width: int, hidden: int, rank: int, temperature: float,
                 softmax_over: str, reading: str):
        super().__init__()
        init = nn.init.xavier_normal_ if reading == "code" else nn.init.xavier_uniform_
        self.wq = nn.Parameter(init(torch.empty(n_bands, rank)))
        self.wk = nn.Parameter(init(torch.empty(n_bands, rank)))
        # log-gains γ: N(0, 1) in the released code, 0 (all gains 1) in the paper reading
        self.gamma = nn.Parameter(torch.randn(rank, width) if reading == "code" else torch.zeros(rank, width))
        self.rank_logits = nn.Parameter(torch.zeros(rank))
        self.context = mlp(context_width, hidden, width)
        self.kernel_scale = 1 / (rank**0.5 * temperature)
        self.softmax_dim = {"output": 0, "input": 1}[softmax_over]

    def kernel(self) -> torch.Tensor:
        return self.wq @ self.wk.T * self.kernel_scale

    def mixing(self) -> torch.Tensor:
        """A (M x M), A_mn = weight of input band n in output band m, normalised over m (columns sum to 1)
        or over n (rows sum to 1)."""
        return F.softmax(self.kernel(), dim=self.softmax_dim)

    def forward(self, bands: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("mk,nkd->nmd", self.mixing(), bands)
        gain = (F.softmax(self.rank_logits, 0)[:, None] * torch.exp(0.1 * torch.tanh(self.gamma))).sum(0)
        return (torch.sigmoid(self.context(h)) * gain)[:, None] * y

    def regularizer(self) -> torch.Tensor:
        return self.kernel().square().mean() + self.gamma.square().mean()


class BandGate(nn.Module):
    """Node-wise band gate a = 1 + γ_f·tanh(MLP([h, mean_m Z_m])), norm-preserving on Σ_m Z_m."""

    def __init__(self, n_bands: int, width: int, context_width: int, hidden: int, scale_init: float, reading: str):
        super().__init__()
        self.mlp = mlp(context_width + width, hidden, n_bands)
        if reading == "code":  # the released code: last layer N(0, 1e-3), zero bias, so every gate starts at ≈ 1
            nn.init.normal_(self.mlp[-1].weight, std=1e-3)
            nn.init.zeros_(self.mlp[-1].bias)
        self.scale = nn.Parameter(torch.tensor(scale_init))

    def weights(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return 1 + self.scale * torch.tanh(self.mlp(torch.cat([h, z.mean(1)], dim=-1)))

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (n, M, D) -> gated bands Z' (n, M, D) with ‖Σ Z'‖ = ‖Σ Z‖ per node, and the gates a (n, M)."""
        a = self.weights(z, h)
        gated = a[..., None] * z
        ratio = z.sum(1).norm(dim=-1) / gated.sum(1).norm(dim=-1).clamp_min(1e-12)
        return gated * ratio[:, None, None], a


def band_infonce(z: torch.Tensor, n_blocks: int, pairs: list[tuple[int, int]], temperature: float,
                 anchors: int | None = None, halves: int = 2) -> torch.Tensor:
    """Within-band InfoNCE on (n, M, halves·B·d) bands (halves: 2 for [R | H] kept apart, 1 for R + H): for each
    modality pair (a, b), block a of (node, band) has block b of the same (node, band) as positive, all other
    2nM − 2 blocks of both modalities as negatives.

    `anchors`: score only this many anchors, drawn uniformly without replacement, against the full candidate
    set. The loss is a mean of per-anchor terms, so the sampled mean is an unbiased estimate of the full loss
    and of its gradient, at anchors/(2nM) of the (2nM)² cost. None: every anchor.
    """
    n, m = z.shape[:2]
    blocks = z.reshape(n * m, halves, n_blocks, -1)
    n_cand = 2 * n * m
    target = torch.arange(n_cand, device=z.device).roll(n * m)  # block a of row r <-> block b of row r
    losses = []
    for a, b in pairs:
        cand = F.normalize(torch.cat([blocks[:, :, a].flatten(1), blocks[:, :, b].flatten(1)]), dim=-1)
        rows = (torch.randperm(n_cand, device=z.device)[:anchors] if anchors is not None and anchors < n_cand
                else torch.arange(n_cand, device=z.device))
        logits = (cand[rows] / temperature) @ cand.T
        logits = logits.scatter(1, rows[:, None], float("-inf"))  # an anchor is not its own candidate (no host sync)
        losses.append(F.cross_entropy(logits, target[rows]))
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class SSRConfig(Config):
    n_layers: int = option("propagation layers on the user-item graph", ge=0)
    item_graph_k: int = option("neighbours per item in each modality's kNN graph", ge=1)
    item_graph_weights: dict[str, float] | None = option("α_m of S = Σ_m α_m S_m by modality; null: the default split", ge=0)
    bands: str = option("graph band path (auto: exact up to 5,000 nodes, else chebyshev)", choices=BAND_PATHS)
    band_input: str = option("sum: each band's R and H halves added (released code) | concat: side by side",
                             choices=("sum", "concat"))
    reading: str = option("initial values and sizes: code (released) | paper (this study's earlier reading)",
                          choices=("code", "paper"))
    n_bands: int = option("number of bands M (SSR's range; chebyshev needs 3)", ge=2, le=5)
    scalable_order: int = option("polynomial order K of the scalable path's filters", ge=2)
    operator: bool = option("false: Z_m = X_m and no regulariser")
    rank: int = option("rank R of the operator's low-rank kernel", ge=1)
    operator_temperature: float = option("temperature τ of the band-mixing softmax", gt=0)
    mixing_softmax: str = option("A normalised over output bands (literal reading) or input bands (attention)",
                                 choices=("output", "input"))
    gating: bool = option("false: Z' = Z (no node-wise band gates)")
    gate_scale_init: float = option("initial gate scale γ_f", ge=0)
    masking: bool = option("false: no spectral band masking term")
    mask_prob: float = option("probability p of dropping a (node, band) in the masking term", ge=0, le=0.999)
    contrastive: bool = option("false: no within-band contrastive term (it needs two item modalities)")
    contrast_temperature: float = option("InfoNCE temperature of the contrastive term", gt=0)
    contrast_anchors: int | None = option("anchors sampled per side and pair (unbiased); null: all 2·n·M", ge=1)
    lambda_reg: float = option("weight of the operator's regulariser", ge=0)
    lambda_mask: float = option("weight of the masking term", ge=0)
    lambda_contrast: float = option("weight of the contrastive term", ge=0)

    def check(self) -> None:
        super().check()
        if self.bands == "chebyshev" and self.n_bands != 3:
            raise ConfigError(f"n_bands: {self.n_bands} is not allowed with bands: chebyshev (its split has 3 bands); "
                              "use bands: exact or scalable")


class SSR(BandedRecommender):
    """SSR with its ablation switches; see the module docstring and `fitmm/configs/ssr.yaml`."""

    config_class = SSRConfig
    item_id_table = "backbone.item_id"
    batch_distinct_ids = True
    version = 2  # 2: the released code's reading by default (bands summed, auto path, its initial values and sizes)

    @classmethod
    def check_data(cls, config: SSRConfig, data: Interactions) -> None:
        require_modalities("SSR (its backbone's item-item graph)", data)
        if config.contrastive:
            require_modalities("SSR's contrastive term (contrastive: true)", data, 2, hint="use --set contrastive=false")
        path = resolve_band_path(config.bands, data.n_users + data.n_items)
        if path == "exact":
            try:
                check_dense_eigh(data.n_users + data.n_items)
            except TrainingError as err:  # a refusal of this config on this data, known before any compute
                raise ConfigError(str(err)) from err
        if path == "chebyshev" and config.n_bands != 3:
            raise ConfigError(f"n_bands: {config.n_bands} is not allowed with the chebyshev path (bands: {config.bands}, "
                              f"{data.n_users + data.n_items:,} nodes): its split has 3 bands; use bands: exact or scalable")

    @classmethod
    def fallback_overrides(cls, data: Interactions) -> dict:
        """Without two item modalities there is no pair to contrast: SSR runs without its contrastive term."""
        return {"contrastive": False} if len(data.modalities) == 1 else {}

    @classmethod
    def inert_keys(cls, config: SSRConfig, data: Interactions) -> frozenset[str]:
        """Without the contrastive term its weight and temperature change nothing."""
        return frozenset() if config.contrastive else frozenset({"lambda_contrast", "contrast_temperature"})

    def __init__(self, data: Interactions, config: SSRConfig):
        super().__init__(data, config)
        c = config
        self.dim, self.n_bands = c.embedding_dim, c.n_bands
        self.use_operator, self.gated = c.operator, c.gating
        self.masking, self.contrastive = c.masking, c.contrastive
        self.mask_prob, self.temperature = c.mask_prob, c.contrast_temperature
        self.lambda_reg, self.lambda_mask = c.lambda_reg, c.lambda_mask
        self.lambda_contrast = c.lambda_contrast
        self.contrast_anchors = c.contrast_anchors
        self.band_input, self.reading = c.band_input, c.reading
        self.backbone = Backbone(data, self.dim, c.n_layers, graph=True,
                                 item_graph_k=c.item_graph_k, item_graph_weights=c.item_graph_weights)
        n_blocks = self.backbone.n_blocks
        self.pairs = list(itertools.combinations(range(1, n_blocks), 2))
        self.band_path = resolve_band_path(c.bands, self.backbone.adj.shape[0])
        self.bands = make_graph_bands(self.band_path, self.backbone.adj, self.n_bands, c.scalable_order)
        self.halves = 1 if self.band_input == "sum" else 2
        context = n_blocks * self.dim
        width = self.halves * context
        hidden = context // 4 if self.reading == "code" else self.dim  # the code: in_dim // 4 (48 with B = 3)
        # the released code runs the masked bands through the operator too and adds its regulariser again
        self.reg_passes = 2 if self.reading == "code" and self.masking else 1
        sides = ("user", "item")
        if self.use_operator:
            self.operators = nn.ModuleDict({s: SpectralOperator(self.n_bands, width, context, hidden, c.rank,
                                                                c.operator_temperature, c.mixing_softmax,
                                                                self.reading)
                                            for s in sides})
        if self.gated:
            self.gates = nn.ModuleDict({s: BandGate(self.n_bands, width, context, hidden, c.gate_scale_init,
                                                    self.reading)
                                        for s in sides})

    def encode(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bands (M, n, D) of the given graph rows (users, then items; None: all N), the band of `without_band`
        zeroed, and their contexts h (n, B·d) from [R_u; R_i].

        The bands are cut from X = [R | H]; with `band_input: sum` each band's R half and H half are then added
        (D = B·d, as the released code does), with `concat` they stay side by side (D = 2·B·d). Every split is
        linear in X given its borders, so the sum is computed as the bands of R + H cut at [R | H]'s borders."""
        v = self.backbone()
        context, graph = torch.cat([v.r_u, v.r_i]), torch.cat([v.h_u, v.h_i])
        if self.band_input == "sum":
            bands = self.bands(context + graph, rows, signal=(context, graph))
        else:
            bands = self.bands(torch.cat([context, graph], dim=1), rows)
        bands = self.drop_band(bands)
        return bands, context if rows is None else context[rows]

    def reason(self, side: str, bands: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(M, n, D) input bands -> output bands Z' (n, M, D) and the gates a (n, M) (None without gating)."""
        z = bands.transpose(0, 1)
        if self.use_operator:
            z = self.operators[side](z, h)
        return self.gates[side](z, h) if self.gated else (z, None)

    def mask(self, bands: torch.Tensor) -> torch.Tensor:
        """Drop each (band, node) of (M, n, D) w.p. p (band 1 kept where all would drop), rescale by 1/(1 − p)."""
        keep = torch.rand(bands.shape[:2], device=bands.device) >= self.mask_prob
        keep[0] |= ~keep.any(0)
        return bands * keep[..., None] / (1 - self.mask_prob)

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        # Z' is node-wise deterministic: the bands and output bands of each distinct node are computed once.
        users, items = batch.distinct_users, batch.distinct_items
        n_u = len(users.ids)
        bands, context = self.encode(torch.cat([users.ids, self.n_users + items.ids]))
        split = {"user": slice(0, n_u), "item": slice(n_u, None)}
        out = {s: self.reason(s, bands[:, r], context[r]) for s, r in split.items()}
        e_u, e_i = out["user"][0].sum(1)[users.index], out["item"][0].sum(1)[items.index]
        e_pos, e_neg = e_i.split(len(batch.pos_items))
        terms = {"bce": bce_loss((e_u * e_pos).sum(-1), (e_u * e_neg).sum(-1))}
        if self.use_operator and self.lambda_reg > 0:
            terms["reg"] = self.lambda_reg * self.reg_passes * sum(op.regularizer() for op in self.operators.values())
        if self.training and self.masking and self.lambda_mask > 0:  # a mask per batch row: each copy its own
            copies = {"user": users.index, "item": n_u + items.index}
            masked = {s: self.reason(s, self.mask(bands[:, r]), context[r])[0].sum(1) for s, r in copies.items()}
            m_pos, m_neg = masked["item"].split(len(batch.pos_items))
            mse = [F.mse_loss(m, e.detach()) for m, e in ((masked["user"], e_u), (m_pos, e_pos), (m_neg, e_neg))]
            terms["mask"] = self.lambda_mask * sum(mse) / 3
        if self.contrastive and self.lambda_contrast > 0:
            # one row per distinct user / positive item stands for all its copies
            loss = sum(band_infonce(z, self.backbone.n_blocks, self.pairs, self.temperature, self.contrast_anchors,
                                    self.halves)
                       for z in (out["user"][0], out["item"][0][batch.pos_in_items]))
            terms["contrast"] = self.lambda_contrast * loss / 2
        return terms

    def _all_bands(self) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor | None]]]:
        bands, context = self.encode()
        split = {"user": slice(0, self.n_users), "item": slice(self.n_users, None)}
        return bands, {s: self.reason(s, bands[:, r], context[r]) for s, r in split.items()}

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        _, out = self._all_bands()
        return out["user"][0].sum(1), out["item"][0].sum(1)

    @torch.no_grad()
    def band_embeddings(self) -> dict[str, torch.Tensor]:
        """The graph bands X_m of every user and item, before the cross-band operator."""
        bands, _ = self.encode()
        return dict(zip(("user", "item"), bands.split([self.n_users, self.n_items], dim=1)))

    @torch.no_grad()
    def user_gates(self) -> torch.Tensor | None:
        """(n_users, M) band gates a of every user, or None without gating."""
        return self._all_bands()[1]["user"][1] if self.gated else None

    @torch.no_grad()
    def diagnostics(self) -> dict:
        """Item graph weights α_m by modality; per side: energy fraction of the input bands, mean gate per band, mixing matrix A, and per output band
        the mean cosine between the two blocks of each modality pair; the graph band borders (λ) where signal-dependent."""
        bands, out = self._all_bands()
        n_blocks = self.backbone.n_blocks
        names = self.backbone.blocks
        result = {"bands_path": self.band_path,
                  "block_weights_mean": dict(zip(names, self.backbone.block_weights.mean(0).tolist())),
                  "item_graph_weights": self.backbone.item_graph_weights}
        if hasattr(self.bands, "borders"):
            result["band_borders"] = self.bands.borders.tolist()
        for side, part in (("user", bands[:, : self.n_users]), ("item", bands[:, self.n_users :])):
            energy = part.square().sum((1, 2))
            z, a = out[side]
            blocks = z.reshape(*z.shape[:2], self.halves, n_blocks, self.dim)  # (n, M, [R | H] or R + H, B, d)
            result[side] = {
                "band_energy": (energy / energy.sum()).tolist(),
                "mean_gate": a.mean(0).tolist() if a is not None else None,
                "mixing": self.operators[side].mixing().tolist() if self.use_operator else None,
                "modality_agreement": {
                    f"{names[i]}-{names[j]}": F.cosine_similarity(blocks[:, :, :, i].flatten(2), blocks[:, :, :, j].flatten(2),
                                                                   dim=-1).mean(0).tolist()
                    for i, j in self.pairs},
            }
        return result
