"""Time one full-ranking evaluation of every test user (target: Baby, 19,445 x 7,050, < 2 s on 2 CPU cores).

    python benchmarks/bench_eval.py --data-dir ../shared/data --dataset baby

Without --data-dir, a random dataset of Baby's size stands in. Prints the figures.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fitmm.data import get_dataset
from fitmm.data.dataset import Interactions
from fitmm.metrics import evaluate


def random_like_baby(seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    n_users, n_items = 19_445, 7_050
    per_user = 8
    users = np.repeat(np.arange(n_users), per_user)
    items = rng.integers(0, n_items, size=len(users))
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    label = rng.choice(3, size=len(pairs), p=[0.74, 0.13, 0.13])
    return Interactions("random-baby", n_users, n_items, pairs[label == 0], pairs[label == 1], pairs[label == 2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="baby")
    parser.add_argument("--batch-users", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = get_dataset(args.dataset, args.data_dir) if args.data_dir else random_like_baby()
    gen = torch.Generator().manual_seed(0)
    users_emb = torch.randn(data.n_users, 64, generator=gen)
    items_emb = torch.randn(data.n_items, 64, generator=gen)
    scorer = lambda users: users_emb[users] @ items_emb.T  # noqa: E731
    evaluate(scorer, data, "test", batch_users=args.batch_users)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        summary, per_user = evaluate(scorer, data, "test", batch_users=args.batch_users)
        times.append(time.perf_counter() - t0)
    print(f"dataset {data.name}: {data.n_users} users x {data.n_items} items, {len(per_user['users'])} evaluated, "
          f"batch {args.batch_users}, {torch.get_num_threads()} threads")
    print(f"full evaluation (16 metrics, K = 5/10/20/50): median {np.median(times):.3f} s, min {min(times):.3f} s "
          f"over {args.repeats} runs")


if __name__ == "__main__":
    main()
