"""EASE (Steck, WWW 2019): a closed-form item-item linear model.

    B = argmin ‖X − XB‖² + λ‖B‖²  s.t. diag(B) = 0
      = I − P · diagMat(1 / diag(P)),  P = (XᵀX + λI)^{-1}
    ŷ_u = x_u B

λ (`l2`) is chosen on the valid split by the trainer over `l2_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fitmm.config import Config, option
from fitmm.data.dataset import Interactions
from fitmm.graphs import scipy_to_torch_csr
from fitmm.models.base import Recommender, Scorer


@dataclass(frozen=True)
class EASEConfig(Config):
    l2: float = option("ridge weight λ (used as is when l2_grid is empty)", gt=0)
    l2_grid: list[float] = option("λ values tried; the one with the best valid metric is kept", gt=0)


class EASE(Recommender):
    trainable = False
    config_class = EASEConfig

    def __init__(self, data: Interactions, config: EASEConfig):
        super().__init__(data, config)
        self.train_matrix = data.train_matrix
        self.l2 = config.l2
        self.register_buffer("weights", torch.zeros(0))

    def fit(self) -> None:
        """B from the sparse XᵀX (integer co-counts, exact), with two dense n_items² float64 matrices alive at most."""
        x = self.train_matrix.astype(np.float64)
        gram = torch.from_numpy((x.T @ x).toarray())
        gram.diagonal().add_(self.l2)
        factor = torch.linalg.cholesky(gram)
        del gram
        weights = torch.cholesky_inverse(factor)  # P
        del factor
        weights.div_(-weights.diagonal().clone())  # B_ij = −P_ij / P_jj
        weights.diagonal().zero_()
        self.weights = weights.float()

    @torch.no_grad()
    def scorer(self) -> Scorer:
        """x_u B with the users' train rows x_u sparse: nnz · n_items multiply-adds, not n_users · n_items²."""
        weights = self.weights

        def score(users: torch.Tensor) -> torch.Tensor:
            rows = scipy_to_torch_csr(self.train_matrix[users.cpu().numpy()]).to(weights.device)
            return torch.sparse.mm(rows, weights)

        return score
