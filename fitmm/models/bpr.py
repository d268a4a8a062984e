"""BPR-MF (Rendle et al., UAI 2009), as in MMRec.

    ŷ_ui = ⟨p_u, q_i⟩,  L = −mean log σ(ŷ_ui − ŷ_uj) + λ · (‖P_b‖ + ‖Q_b+‖ + ‖Q_b−‖)/B

with one sampled negative j per positive (u, i) and MMRec's EmbLoss on the batch rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fitmm.config import Config, option
from fitmm.data.dataset import Interactions
from fitmm.models.base import Recommender, bpr_loss, emb_norm_loss


@dataclass(frozen=True)
class BPRConfig(Config):
    reg_weight: float = option("weight λ of EmbLoss on the batch rows", ge=0)


class BPRMF(Recommender):
    config_class = BPRConfig

    def __init__(self, data: Interactions, config: BPRConfig):
        super().__init__(data, config)
        dim = config.embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_items, dim)))
        self.reg_weight = config.reg_weight

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_emb

    def loss_terms(self, batch):
        users, pos_items, neg_items = batch.users, batch.pos_items, batch.neg_items
        u, p, n = self.user_emb[users], self.item_emb[pos_items], self.item_emb[neg_items]
        return {
            "bpr": bpr_loss((u * p).sum(1), (u * n).sum(1)),
            "reg": self.reg_weight * emb_norm_loss(u, p, n),
        }
