"""The DRAGON-style backbone shared by FITMM and SSR (DRAGON, Zhou et al., ECAI 2023,
arXiv 2301.12097; book/methods.md, "Shared backbone").

Per block m ∈ {id} ∪ item modalities: an item input x^m (id: a free embedding;
content: MLP d_m -> 4d -> d with LeakyReLU over the raw feature table, itself
trainable as in FITMM's released code unless `train_features=False`) and a free user preference P^m. Each block propagates on the train graph
Â from the row-L2-normalised stack [P^m; x^m]:

    X̂^m = Σ_{l=0..L} Â^l normalize([P^m; x^m]).

All blocks are concatenated along the feature dim, so a layer is one sparse mm.
Outputs, with [·]_m concatenation over blocks:
    R_u = [w_{u,m} X̂^m_u]_m   (learnable per-user block weights, DRAGON's init)
    R_i = [X̂^m_i]_m
    H_u = [P^m]_m              (the raw preferences)
    H_i = S R_i                (S = Σ_m α_m S_m, the kNN item-item graph, one hop; α by modality name)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from fitmm.data.dataset import Interactions
from fitmm.graphs import item_graph, normalized_adjacency, resolve_item_graph_weights, spmm, transpose_csr


class Views(NamedTuple):
    """Backbone outputs; h_u and h_i are None for a backbone built without the item graph."""

    r_u: torch.Tensor
    r_i: torch.Tensor
    h_u: torch.Tensor | None
    h_i: torch.Tensor | None


class BlockNormalize(torch.autograd.Function):
    """Row-L2-normalise the last dim, y = x / max(‖x‖, 1e-12) (as F.normalize), with the backward
    x̄ = (ȳ − y ⟨y, ȳ⟩) / ‖x‖ in three passes (where the floor holds, x̄ = ȳ / 1e-12)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        squared = x.square().sum(-1, keepdim=True)
        inv = squared.clamp_min(1e-24).rsqrt_()
        y = x * inv
        ctx.save_for_backward(y, inv, squared > 1e-24)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        y, inv, above = ctx.saved_tensors
        along = (y * grad).sum(-1, keepdim=True).mul_(above)
        return (grad - y * along).mul_(inv)


class Backbone(nn.Module):
    """Multi-block graph encoder; `forward()` returns `Views` for all users and items."""

    def __init__(self, data: Interactions, dim: int = 64, n_layers: int = 2, graph: bool = True,
                 item_graph_k: int = 10, item_graph_weights: dict[str, float] | None = None,
                 train_features: bool = True):
        super().__init__()
        self.n_users, self.n_items = data.n_users, data.n_items
        self.dim, self.n_layers = dim, n_layers
        self.blocks = ["id", *data.modalities]
        n_blocks = len(self.blocks)

        self.item_id = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        self.features = nn.ParameterDict(
            {m: nn.Parameter(torch.as_tensor(f, dtype=torch.float32).clone(), requires_grad=train_features)
             for m, f in data.features.items()})
        self.encoders = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(f.shape[1], 4 * dim), nn.LeakyReLU(), nn.Linear(4 * dim, dim))
            for m, f in data.features.items()})
        # [P^m]_m as one (N_u, B·d) table; each block drawn as xavier_normal of an (N_u, d) matrix.
        std = (2.0 / (self.n_users + dim)) ** 0.5
        self.preference = nn.Parameter(torch.randn(self.n_users, n_blocks * dim) * std)
        # DRAGON: softmax over the blocks of xavier-normal logits (std ≈ sqrt(2/N_u), so ≈ 1/B),
        # after which the weights are free parameters (no softmax in the forward).
        logits = nn.init.xavier_normal_(torch.empty(self.n_users, n_blocks, 1))
        self.block_weights = nn.Parameter(F.softmax(logits, dim=1).squeeze(-1))

        self.register_buffer("adj", normalized_adjacency(data), persistent=False)
        # Â is symmetric; S (directed kNN) is not, so its transpose is kept for the backward.
        # α_m by modality name, recorded in the run's diagnostics (None without the item graph)
        self.item_graph_weights = resolve_item_graph_weights(data.modalities, item_graph_weights) if graph else None
        s = item_graph(data, self.item_graph_weights, item_graph_k) if graph else None
        self.register_buffer("item_adj", s, persistent=False)
        self.register_buffer("item_adj_t", None if s is None else transpose_csr(s), persistent=False)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by role: item id table, raw feature tables, MLP encoders, preferences P, block weights w_u."""
        return {"item_id": [self.item_id], "features": list(self.features.values()),
                "encoders": list(self.encoders.parameters()), "preference": [self.preference],
                "block_weights": [self.block_weights]}

    def item_inputs(self) -> torch.Tensor:
        """[x^m]_m, (N_i, B·d)."""
        return torch.cat([self.item_id] + [self.encoders[m](self.features[m]) for m in self.blocks[1:]], dim=1)

    def forward(self) -> Views:
        x = torch.cat([self.preference, self.item_inputs()])
        x = BlockNormalize.apply(x.view(-1, self.n_blocks, self.dim)).view(x.shape)
        x_hat = h = x
        for _ in range(self.n_layers):
            h = spmm(self.adj, h)
            x_hat = x_hat + h
        users, r_i = x_hat.split([self.n_users, self.n_items])
        r_u = (users.view(self.n_users, self.n_blocks, self.dim) * self.block_weights[..., None]).view(users.shape)
        if self.item_adj is None:
            return Views(r_u, r_i, None, None)
        return Views(r_u, r_i, self.preference, spmm(self.item_adj, r_i, self.item_adj_t))
