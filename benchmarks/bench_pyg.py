"""Our LightGCN propagation against PyTorch Geometric's, on a real train graph (needs the [test] extra).

    python benchmarks/bench_pyg.py --data-dir ../shared/data --dataset baby

Per path, seconds to build the normalised graph once, and per training step (forward and
backward of the L-layer mean propagation of a 64-d embedding table):
- ours: `user_item_adjacency` (scipy) to CSR, then `propagate` (`spmm` with Â as its own transpose);
- PyG edge_index: `torch_geometric.nn.models.LightGCN.get_embedding` on the edge list (gcn_norm and
  scatter-based message passing in every layer);
- PyG sparse: the same model (`normalize=False`) on Â as a torch sparse CSR tensor, normalised once with `gcn_norm`.
The three embeddings are checked equal first. Without --data-dir the embedded synthetic benchmark
(1,500 x 800) stands in. Prints the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from fitmm.data import get_dataset, synthetic_dataset
from fitmm.graphs import normalized_adjacency
from fitmm.models.base import propagate


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="baby")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("FITMM_CACHE", tempfile.mkdtemp(prefix="fitmm-bench-"))
    data = synthetic_dataset(1500, 800) if args.data_dir is None else get_dataset(args.dataset, args.data_dir)
    n = data.n_users + data.n_items
    users, items = torch.from_numpy(data.train).T
    edges = torch.cat([torch.stack([users, items + data.n_users]), torch.stack([items + data.n_users, users])], 1)
    ego = torch.nn.Parameter(torch.randn(n, 64) * 0.1)
    reference = PyGLightGCN(n, 64, num_layers=args.layers)
    prenormalised = PyGLightGCN(n, 64, num_layers=args.layers, normalize=False)
    with torch.no_grad():
        reference.embedding.weight.copy_(ego)
        prenormalised.embedding.weight.copy_(ego)

    def pyg_csr() -> torch.Tensor:
        index, weight = gcn_norm(edges, None, n, add_self_loops=False)
        return torch.sparse_coo_tensor(index, weight, (n, n)).coalesce().to_sparse_csr()

    adj, pyg_adj = normalized_adjacency(data), pyg_csr()
    ours = lambda: torch.stack(propagate(adj, ego, args.layers)).mean(0)  # noqa: E731
    forwards = {"ours": ours, "PyG edge_index": lambda: reference.get_embedding(edges),
                "PyG sparse": lambda: prenormalised.get_embedding(pyg_adj)}
    for name, forward in forwards.items():
        torch.testing.assert_close(forward(), ours(), atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    builds = {"ours": f"{seconds(lambda: normalized_adjacency(data), 3):.3f}", "PyG edge_index": "per layer",
              "PyG sparse": f"{seconds(pyg_csr, 3):.3f}"}
    print(f"{data.name}: {data.n_users:,} users + {data.n_items:,} items, {len(edges[0]):,} directed edges, "
          f"L = {args.layers}, d = 64, {torch.get_num_threads()} thread(s)")
    print(f"{'path':>15} {'build s':>9} {'ms/step':>8}")
    for name, forward in forwards.items():
        step = seconds(lambda: forward().square().sum().backward(), args.repeats)
        print(f"{name:>15} {builds[name]:>9} {step * 1e3:>8.1f}")


if __name__ == "__main__":
    main()
