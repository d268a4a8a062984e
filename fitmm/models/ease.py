"""EASE (Steck, WWW 2019): a closed-form item-item linear model.

    B = argmin ‖X − XB‖² + λ‖B‖²  s.t. diag(B) = 0
      = I − P · diagMat(1 / diag(P)),  P = (XᵀX + λI)^{-1}
    ŷ_u = x_u B

λ (`l2`) is chosen on the valid split by the trainer over `l2_grid`.
"""

from __future__ import annotations

import numpy as np
import torch

from fitmm.data.dataset import Interactions
from fitmm.models.base import Recommender, Scorer


class EASE(Recommender):
    trainable = False

    def __init__(self, data: Interactions, config: dict):
        super().__init__(data, config)
        self.train_matrix = data.train_matrix
        self.l2 = float(config["l2"])
        self.register_buffer("weights", torch.zeros(0))

    def fit(self) -> None:
        x = torch.from_numpy(self.train_matrix.toarray()).double()
        gram = x.T @ x
        gram.diagonal().add_(self.l2)
        precision = torch.cholesky_inverse(torch.linalg.cholesky(gram))
        weights = -precision / precision.diagonal()
        weights.diagonal().zero_()
        self.weights = weights.float()

    @torch.no_grad()
    def scorer(self) -> Scorer:
        weights = self.weights

        def score(users: torch.Tensor) -> torch.Tensor:
            rows = self.train_matrix[users.cpu().numpy()].toarray().astype(np.float32)
            return torch.from_numpy(rows).to(weights.device) @ weights

        return score
