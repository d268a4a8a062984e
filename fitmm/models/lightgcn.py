"""LightGCN (He et al., SIGIR 2020), as in MMRec.

    E^(0) = [P; Q],  E^(l+1) = Â E^(l),  E = 1/(L+1) Σ_{l=0..L} E^(l)
    ŷ_ui = ⟨e_u, e_i⟩,  L = BPR + λ · EmbLoss(E^(0) rows of the batch)

Â = D^{-1/2} A D^{-1/2} is the normalised bipartite train graph (CSR, built once). P and Q are two
separate Xavier-uniform tables (MMRec's LightGCN), so each one's bound is √(6/(N_u + d)), √(6/(N_i + d)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fitmm.config import Config, option
from fitmm.data.dataset import Interactions
from fitmm.graphs import normalized_adjacency
from fitmm.models.base import Recommender, bpr_loss, emb_norm_loss, propagate_mean


@dataclass(frozen=True)
class LightGCNConfig(Config):
    n_layers: int = option("propagation layers L", ge=0)
    reg_weight: float = option("weight λ of EmbLoss on the batch rows of E^(0)", ge=0)


class LightGCN(Recommender):
    config_class = LightGCNConfig
    version = 2  # 2: two Xavier-uniform tables (user, item), as MMRec's LightGCN

    def __init__(self, data: Interactions, config: LightGCNConfig):
        super().__init__(data, config)
        dim = config.embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_items, dim)))
        self.register_buffer("adj", normalized_adjacency(data), persistent=False)
        self.n_layers = config.n_layers
        self.reg_weight = config.reg_weight

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return propagate_mean(self.adj, self.n_layers, self.user_emb, self.item_emb)

    def loss_terms(self, batch):
        users, pos_items, neg_items = batch.users, batch.pos_items, batch.neg_items
        user_out, item_out = self.embeddings()
        u, p, n = user_out[users], item_out[pos_items], item_out[neg_items]
        ego_u, ego_p, ego_n = self.user_emb[users], self.item_emb[pos_items], self.item_emb[neg_items]
        return {
            "bpr": bpr_loss((u * p).sum(1), (u * n).sum(1)),
            "reg": self.reg_weight * emb_norm_loss(ego_u, ego_p, ego_n),
        }
