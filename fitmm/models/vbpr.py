"""VBPR (He & McAuley, "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback", AAAI 2016), as in MMRec.

    ŷ_ui = ⟨γ_u, γ_i⟩ + ⟨θ_u, E f_i⟩ = ⟨p_u, q_i⟩,   p_u = [γ_u; θ_u] ∈ R^{2d},   q_i = [γ_i; E f_i + b]
    L = BPR + λ · EmbLoss(p_u, q_i+, q_i−)

f_i is the concatenation of item i's content features over all modalities (fixed, not
trained) and E a learned linear map to d dimensions. As in MMRec, the paper's bias
terms β_i and β'ᵀf_i are left out, and the regulariser is MMRec's EmbLoss on the batch
rows of the final user and item vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fitmm.config import Config, option
from fitmm.data.dataset import Interactions
from fitmm.models.base import Recommender, bpr_loss, emb_norm_loss, require_modalities


@dataclass(frozen=True)
class VBPRConfig(Config):
    reg_weight: float = option("weight λ of EmbLoss on the batch rows", ge=0)


class VBPR(Recommender):
    config_class = VBPRConfig
    item_id_table = "item_emb"

    @classmethod
    def check_data(cls, config: VBPRConfig, data: Interactions) -> None:
        require_modalities("VBPR", data)

    def __init__(self, data: Interactions, config: VBPRConfig):
        super().__init__(data, config)
        dim = config.embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_users, 2 * dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_items, dim)))
        content = np.concatenate([data.features[m] for m in data.modalities], axis=1)
        self.register_buffer("content", torch.from_numpy(content), persistent=False)
        self.content_proj = nn.Linear(content.shape[1], dim)
        nn.init.xavier_normal_(self.content_proj.weight)  # MMRec's xavier_normal_initialization
        nn.init.zeros_(self.content_proj.bias)
        self.reg_weight = config.reg_weight

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, torch.cat([self.item_emb, self.content_proj(self.content)], dim=1)

    def loss_terms(self, batch):
        users, pos_items, neg_items = batch.users, batch.pos_items, batch.neg_items
        u = self.user_emb[users]
        p, n = (torch.cat([self.item_emb[i], self.content_proj(self.content[i])], dim=1) for i in (pos_items, neg_items))
        return {
            "bpr": bpr_loss((u * p).sum(1), (u * n).sum(1)),
            "reg": self.reg_weight * emb_norm_loss(u, p, n),
        }
