"""SSR's graph band paths: exact vs scalable agreement and time on a small graph; scalable on Clothing's graph.

    python benchmarks/bench_graph_bands.py --data-dir ../shared/data

Small graph: the train graph of the embedded synthetic benchmark (1,500 users x 800 items asked,
5-core, long-tailed item popularity), a white and a smooth ((2 − λ)² response,
like the backbone's propagation) random signal of 64 columns, M = 3. For each order K of
the scalable path: the largest absolute difference of per-band energy fractions and of band
borders (λ) from the exact path, the relative Frobenius error of each band, and seconds per
forward. Large graph: Clothing's train graph (39,387 + 23,033 nodes), a random signal of
64·3 columns, seconds per forward (no gradient) and per forward + backward; then SSR's sum input
(`band_input: sum`), R and H of 64·3 columns each, split as [R | H] with its halves summed against
R + H cut at [R | H]'s borders (what `SSR` does), forward + backward, on the exact path (small graph)
and the scalable path (the released Chebyshev split does not depend on the signal: SSR always gave it R + H).
Without --data-dir the large-graph part is skipped. Prints the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from fitmm.data import synthetic_dataset
from fitmm.graphs import normalized_adjacency, scipy_to_torch_csr, user_item_adjacency
from fitmm.spectral.graph_bands import ChebyshevBands, ExactBands, ScalableBands


def timed(fn, repeats: int = 1) -> tuple[object, float]:
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.perf_counter() - start) / repeats


def fmt(values: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values.tolist()) + "]"


def agreement(orders: list[int], n_bands: int) -> None:
    adj = normalized_adjacency(synthetic_dataset(1500, 800))
    x = torch.randn(adj.shape[0], 64, generator=torch.Generator().manual_seed(0))
    ax = torch.sparse.mm(adj, x)
    signals = {"white": x, "smooth": x + 2 * ax + torch.sparse.mm(adj, ax)}
    exact, seconds = timed(lambda: ExactBands(adj, n_bands))
    print(f"small graph: N = {adj.shape[0]:,}, {adj._nnz():,} non-zeros; dense eigh {seconds:.2f} s (cached afterwards)")
    for name, s in signals.items():
        reference, seconds = timed(lambda: exact(s), 3)
        ref_energy = reference.square().sum((1, 2)) / s.square().sum()
        print(f"\n{name} signal, M = {n_bands}: exact forward {seconds * 1e3:.1f} ms, energy fractions "
              f"{fmt(ref_energy)}, borders λ {fmt(exact.borders)}")
        print(f"{'K':>5} {'|Δ energy|':>11} {'|Δ border|':>11}  {'relative Frobenius error per band':<36} {'ms/forward':>10}")
        for order in orders:
            scalable = ScalableBands(adj, n_bands, order)
            bands, seconds = timed(lambda: scalable(s), 3)
            energy = bands.square().sum((1, 2)) / s.square().sum()
            error = (bands - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
            print(f"{order:>5} {(energy - ref_energy).abs().max():>11.4f} {(scalable.borders - exact.borders).abs().max():>11.4f}"
                  f"  {fmt(error):<36} {seconds * 1e3:>10.1f}")
    sum_input({"exact": exact} | {f"scalable K={k}": ScalableBands(adj, n_bands, k) for k in orders[:1]},
              torch.randn(adj.shape[0], 64 * 3, generator=torch.Generator().manual_seed(1)))


def clothing(data_dir: Path, orders: list[int], n_bands: int) -> None:
    table = pd.read_csv(data_dir / "clothing" / "clothing.inter", sep="\t", usecols=["userID", "itemID", "x_label"])
    n_users, n_items = int(table.userID.max()) + 1, int(table.itemID.max()) + 1
    train = table.loc[table.x_label == 0, ["userID", "itemID"]].to_numpy()
    adj = scipy_to_torch_csr(user_item_adjacency(train, n_users, n_items))
    x = torch.randn(adj.shape[0], 64 * 3, generator=torch.Generator().manual_seed(0))
    print(f"\nClothing train graph: {n_users:,} users + {n_items:,} items = {adj.shape[0]:,} nodes, "
          f"{adj._nnz():,} non-zeros, D = {x.shape[1]}, M = {n_bands}, {torch.get_num_threads()} threads")
    print(f"{'path':>14} {'s/forward':>10} {'s/forward+backward':>19}")
    paths = {"chebyshev": ChebyshevBands(adj, 3)} | {f"scalable K={k}": ScalableBands(adj, n_bands, k) for k in orders}
    for name, bands in paths.items():
        with torch.no_grad():
            _, forward = timed(lambda: bands(x))
        leaf = x.clone().requires_grad_()
        _, both = timed(lambda: bands(leaf).square().sum().backward())
        print(f"{name:>14} {forward:>10.2f} {both:>19.2f}")
    sum_input({n: b for n, b in paths.items() if n != "chebyshev"}, x)  # fixed filters: always R + H


def sum_input(paths: dict[str, object], x: torch.Tensor) -> None:
    """SSR's band_input: sum: the bands of [R | H] with their halves summed, as computed before (the split of the
    2D-column [R | H]) and now (R + H, D columns, cut at [R | H]'s borders); forward + backward as in training."""
    r, h = (x.clone().requires_grad_() for _ in range(2))
    print(f"\nSSR's sum input (R, H of {x.shape[1]} columns each), s/forward+backward:")
    print(f"{'path':>14} {'[R | H], halves summed':>23} {'R + H at [R | H] borders':>25}")
    for name, bands in paths.items():
        def halves() -> None:
            both = bands(torch.cat([r, h], dim=1))
            (both[..., : x.shape[1]] + both[..., x.shape[1] :]).square().sum().backward()
        _, before = timed(halves, 3)
        _, now = timed(lambda: bands(r + h, signal=(r, h)).square().sum().backward(), 3)
        print(f"{name:>14} {before:>23.3f} {now:>25.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--orders", type=int, nargs="+", default=[25, 50, 100, 200, 300])
    parser.add_argument("--large-orders", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--n-bands", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("FITMM_CACHE", tempfile.mkdtemp(prefix="fitmm-bench-"))
    agreement(args.orders, args.n_bands)
    if args.data_dir is not None:
        clothing(args.data_dir, args.large_orders, args.n_bands)


if __name__ == "__main__":
    main()
