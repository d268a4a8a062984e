"""Full-ranking evaluation: every item is ranked, the user's train items are masked
(MMRec's protocol, arXiv 2302.03497; book/methods.md, "Protocol").

Metrics at each K, averaged over users with at least one relevant item in the split:
  Recall@K    = hits@K / |rel|
  Precision@K = hits@K / K
  NDCG@K      = Σ_{hit at rank r ≤ K} 1/log2(r+1)  /  Σ_{r ≤ min(|rel|, K)} 1/log2(r+1)
  MAP@K       = Σ_{hit at rank r ≤ K} precision@r  /  min(|rel|, K)
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from fitmm.data.dataset import Interactions

METRICS = ("recall", "ndcg", "precision", "map")


def rank_metrics(hits: torch.Tensor, n_relevant: torch.Tensor, topk: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user metrics from a (users x max K) 0/1 hit matrix of the ranked lists and |rel| per user."""
    max_k = hits.shape[1]
    ranks = torch.arange(1, max_k + 1, dtype=hits.dtype, device=hits.device)
    discount = 1.0 / torch.log2(ranks + 1.0)
    ideal = torch.cumsum(discount, 0)
    precision_at_rank = torch.cumsum(hits, 1) / ranks
    out = {}
    for k in topk:
        h = hits[:, :k]
        n_hits = h.sum(1)
        capped = n_relevant.clamp(max=k)
        out[f"recall@{k}"] = n_hits / n_relevant
        out[f"precision@{k}"] = n_hits / k
        out[f"ndcg@{k}"] = (h * discount[:k]).sum(1) / ideal[capped.long() - 1]
        out[f"map@{k}"] = (h * precision_at_rank[:, :k]).sum(1) / capped
    return out


def _rows_of(matrix: sp.csr_matrix, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(row positions within the batch, column ids) of the nonzeros of `matrix[users]`."""
    sub = matrix[users]
    rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
    return torch.from_numpy(rows), torch.from_numpy(sub.indices.astype(np.int64))


@torch.no_grad()
def evaluate(
    scorer: Callable[[torch.Tensor], torch.Tensor],
    data: Interactions,
    split: str,
    topk: Sequence[int] = (5, 10, 20, 50),
    batch_users: int = 4096,
    device: torch.device | str = "cpu",
    item_hits_at: int | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Rank all items for every user with a `split` item; return mean metrics and per-user values.

    Train items are masked for valid and test alike; valid items are not masked at test time.
    The per-user dict holds `users` (ids) and one float32 array per metric, aligned with it;
    with `item_hits_at` = K (in `topk`) also `item_hits`, (n_items,) int64: how often each item is a hit in a top K.
    The user ids go to `device`; the ranking is done where the scorer's scores are (a model on a GPU scores there
    whatever `device` says).
    """
    relevant = data.matrix(split)
    n_relevant = np.diff(relevant.indptr)
    users = np.flatnonzero(n_relevant > 0)
    # (user, item) keys of the split, sorted: membership of ranked items by binary search.
    keys = torch.from_numpy(np.sort(data.pairs(split)[:, 0].astype(np.int64) * data.n_items + data.pairs(split)[:, 1]))
    max_k = max(topk)
    train = data.train_matrix
    per_user: dict[str, list[torch.Tensor]] = {}
    item_hits = torch.zeros(data.n_items, dtype=torch.long)
    for start in range(0, len(users), batch_users):
        batch = users[start : start + batch_users]
        batch_t = torch.from_numpy(batch).to(device)
        scores = scorer(batch_t).float()
        on = scores.device
        batch_t, keys, item_hits = batch_t.to(on), keys.to(on), item_hits.to(on)  # no-ops where `device` is `on`
        rows, cols = _rows_of(train, batch)
        scores[rows.to(on), cols.to(on)] = -torch.inf
        top = scores.topk(max_k, dim=1).indices
        ranked_keys = batch_t[:, None].long() * data.n_items + top
        pos = torch.searchsorted(keys, ranked_keys).clamp(max=len(keys) - 1)
        hits = (keys[pos] == ranked_keys).double()
        if item_hits_at is not None:
            hit_at_k = hits[:, :item_hits_at].bool()
            item_hits = item_hits + torch.bincount(top[:, :item_hits_at][hit_at_k], minlength=data.n_items)
        n_rel = torch.from_numpy(n_relevant[batch]).double().to(on)
        for name, values in rank_metrics(hits, n_rel, topk).items():
            per_user.setdefault(name, []).append(values.cpu())
    result = {name: torch.cat(v).numpy().astype(np.float32) for name, v in per_user.items()}
    summary = {name: float(torch.cat(per_user[name]).mean()) for name in per_user}
    result["users"] = users.astype(np.int32)
    if item_hits_at is not None:
        result["item_hits"] = item_hits.cpu().numpy()
    return summary, result
