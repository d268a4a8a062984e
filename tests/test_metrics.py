"""Metrics pinned on hand-computed cases (book/methods.md, "Protocol")."""

import math

import numpy as np
import pytest
import torch

from fitmm.data.dataset import Interactions
from fitmm.metrics import evaluate, rank_metrics


def test_rank_metrics_hand_computed():
    # user 0: 3 relevant, hits at ranks 1 and 3; user 1: 1 relevant, hit at rank 4.
    hits = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.float64)
    n_rel = torch.tensor([3.0, 1.0], dtype=torch.float64)
    m = rank_metrics(hits, n_rel, (2, 5))
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["recall@5"].tolist() == pytest.approx([2 / 3, 1.0])
    assert m["precision@5"].tolist() == pytest.approx([2 / 5, 1 / 5])
    assert m["ndcg@5"].tolist() == pytest.approx([(1 + 1 / math.log2(4)) / idcg3, 1 / math.log2(5)])
    assert m["map@5"].tolist() == pytest.approx([(1 + 2 / 3) / 3, 1 / 4])
    # K = 2: user 0 has more relevant items than K, so IDCG and MAP use min(|rel|, K) = 2.
    assert m["recall@2"].tolist() == pytest.approx([1 / 3, 0.0])
    assert m["precision@2"].tolist() == pytest.approx([1 / 2, 0.0])
    assert m["ndcg@2"].tolist() == pytest.approx([1 / (1 + 1 / math.log2(3)), 0.0])
    assert m["map@2"].tolist() == pytest.approx([1 / 2, 0.0])


def test_perfect_ranking_scores_one():
    hits = torch.tensor([[1, 1, 0, 0]], dtype=torch.float64)
    m = rank_metrics(hits, torch.tensor([2.0], dtype=torch.float64), (4,))
    for name in ("recall@4", "ndcg@4", "map@4"):
        assert m[name].item() == pytest.approx(1.0)


def _toy() -> Interactions:
    # 3 users, 6 items. User 2 has no test item and is not evaluated.
    train = np.array([[0, 0], [0, 1], [1, 2], [2, 3]])
    valid = np.array([[0, 2], [1, 3]])
    test = np.array([[0, 3], [0, 5], [1, 0]])
    return Interactions("toy", 3, 6, train, valid, test)


def test_evaluate_masks_train_not_valid_items():
    data = _toy()
    # Item scores identical for all users: item 0 > 1 > 2 > 3 > 4 > 5.
    scores = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    summary, per_user = evaluate(lambda users: scores.repeat(len(users), 1), data, "test", topk=(1, 2, 3))
    assert per_user["users"].tolist() == [0, 1]
    # user 0: items 0, 1 masked (train); ranking 2 (valid, not masked), 3 (hit), 4, 5 (hit).
    # user 1: item 2 masked; ranking 0 (hit), 1, 3 (valid), ...
    assert per_user["recall@1"].tolist() == pytest.approx([0.0, 1.0])
    assert per_user["recall@2"].tolist() == pytest.approx([0.5, 1.0])
    assert per_user["ndcg@2"].tolist() == pytest.approx([(1 / math.log2(3)) / (1 + 1 / math.log2(3)), 1.0])
    assert summary["recall@2"] == pytest.approx(0.75)


def test_evaluate_batches_agree():
    data = _toy()
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(3, 6, generator=gen)
    one, _ = evaluate(lambda u: table[u], data, "test", topk=(1, 2, 5), batch_users=1)
    all_, _ = evaluate(lambda u: table[u], data, "test", topk=(1, 2, 5), batch_users=100)
    assert one == pytest.approx(all_)
