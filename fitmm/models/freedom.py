"""FREEDOM (Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation", ACM MM 2023), as in its MMRec code.

Frozen item-item graph, built once from the raw features:

    S = Σ_m α_m S_m,   S_m = D^{-1/2} A_m D^{-1/2},   A_m the binary cosine kNN graph of modality m

(α by modality name, `item_graph_weights`: by default image 0.1, MMRec's `mm_image_weight`, the others share 0.9). Denoised user-item
graph: at each training epoch, keep ⌊(1 − ρ)|E|⌋ train edges sampled without replacement
with probability ∝ 1/√(d_u d_i) (degree-sensitive pruning, ρ = `prune_ratio`), and renormalise the kept
graph Ã_ρ by its own degrees; evaluation uses the full graph Â. With E^(0) = [P; Q]:

    h_i = (S^{L_m} Q)_i,   [E_u; E_i] = 1/(L+1) Σ_{l=0..L} Ã^l E^(0),   e_u = E_u,   e_i = E_i + h_i
    L = BPR(e) + λ Σ_m BPR(e_u, W_m x_i^m + b_m)

where x^m are the raw features (trainable, as in the code) and the second term ranks the
projected features of the positive above the negative item for each modality.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fitmm.config import Config, option
from fitmm.data.dataset import Interactions
from fitmm.graphs import item_graph, normalized_adjacency, resolve_item_graph_weights, spmm, transpose_csr
from fitmm.models.base import Recommender, bpr_loss, propagate_mean, require_modalities


@dataclass(frozen=True)
class FREEDOMConfig(Config):
    knn_k: int = option("neighbours per item in each modality's kNN graph", ge=1)
    item_graph_weights: dict[str, float] | None = option("α_m of S = Σ_m α_m S_m by modality; null: image 0.1, the rest share 0.9", ge=0)
    n_mm_layers: int = option("layers L_m on the item-item graph", ge=0)
    n_ui_layers: int = option("layers L on the user-item graph", ge=0)
    prune_ratio: float = option("share ρ of train edges dropped each epoch (degree-sensitive)", ge=0, le=1)
    reg_weight: float = option("weight λ of the modality BPR terms", ge=0)


class FREEDOM(Recommender):
    config_class = FREEDOMConfig
    item_id_table = "item_emb"
    version = 2  # 2: item-graph weights by modality name (image 0.1), not by sort order

    @classmethod
    def check_data(cls, config: FREEDOMConfig, data: Interactions) -> None:
        require_modalities("FREEDOM", data)

    def __init__(self, data: Interactions, config: FREEDOMConfig):
        super().__init__(data, config)
        mods = data.modalities
        dim = config.embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_items, dim)))
        self.features = nn.ParameterDict({m: nn.Parameter(torch.from_numpy(data.features[m].copy())) for m in mods})
        self.proj = nn.ModuleDict({m: nn.Linear(data.features[m].shape[1], dim) for m in mods})
        self.n_ui_layers = config.n_ui_layers
        self.n_mm_layers = config.n_mm_layers
        self.reg_weight = config.reg_weight
        self.prune_ratio = config.prune_ratio

        self.item_graph_weights = resolve_item_graph_weights(mods, config.item_graph_weights)
        item_adj = item_graph(data, self.item_graph_weights, config.knn_k)
        self.register_buffer("item_adj", item_adj, persistent=False)
        self.register_buffer("item_adj_t", transpose_csr(item_adj), persistent=False)
        self.register_buffer("adj", normalized_adjacency(data), persistent=False)
        # replaced by a pruned graph at each epoch start (`on_epoch_start`)
        self.register_buffer("train_adj", self.adj, persistent=False)
        edges = torch.from_numpy(data.train.T.copy())
        degree_u = torch.from_numpy(data.user_degree).float()
        degree_i = torch.from_numpy(data.item_degree).float()
        self.register_buffer("edges", edges, persistent=False)
        self.register_buffer("edge_weight", (degree_u[edges[0]] * degree_i[edges[1]]).rsqrt(), persistent=False)

    def pruned_adjacency(self) -> torch.Tensor:
        """Ã_ρ: a degree-sensitive sample of (1 − ρ) of the train edges, symmetric, renormalised by its degrees."""
        n_keep = int(self.edges.shape[1] * (1.0 - self.prune_ratio))
        users, items = self.edges[:, torch.multinomial(self.edge_weight, n_keep)]
        degree_u = torch.bincount(users, minlength=self.n_users).float()
        degree_i = torch.bincount(items, minlength=self.n_items).float()
        values = (degree_u[users] * degree_i[items]).rsqrt()
        items = items + self.n_users
        index = torch.stack([torch.cat([users, items]), torch.cat([items, users])])
        n = self.n_users + self.n_items
        return torch.sparse_coo_tensor(index, torch.cat([values, values]), (n, n)).coalesce().to_sparse_csr()

    def on_epoch_start(self, epoch: int) -> None:
        if self.prune_ratio > 0:
            self.train_adj = self.pruned_adjacency()

    def propagate(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.item_emb
        for _ in range(self.n_mm_layers):
            h = spmm(self.item_adj, h, self.item_adj_t)
        user_out, item_out = propagate_mean(adj, self.n_ui_layers, self.user_emb, self.item_emb)
        return user_out, item_out + h

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.adj)

    def loss_terms(self, batch):
        users, pos_items, neg_items = batch.users, batch.pos_items, batch.neg_items
        user_out, item_out = self.propagate(self.train_adj)
        u = user_out[users]
        modal = sum(bpr_loss((u * self.proj[m](x[pos_items])).sum(1), (u * self.proj[m](x[neg_items])).sum(1))
                    for m, x in self.features.items())
        return {
            "bpr": bpr_loss((u * item_out[pos_items]).sum(1), (u * item_out[neg_items]).sum(1)),
            "modal_bpr": self.reg_weight * modal,
        }

    def diagnostics(self) -> dict:
        """The item graph's weight α_m of each modality."""
        return {"item_graph_weights": self.item_graph_weights}
