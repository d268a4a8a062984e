"""Time FITMM's band decomposition: our Gram-eigh projectors vs the released code's thin SVD per block.

    python benchmarks/bench_decomposition.py [--threads 2] [--repeats 5]

Input: a random N x (3·64) matrix with Baby's node count (N = 19,445 users + 7,050 items)
and a spread spectrum, split into 3 bands per 64-d block. "bands" rows time the whole
decomposition into N x 192 bands; "factors" rows only the factorisation (our 3 x 3 x 64 x 64
projectors vs U, S, Vh). Forward+backward adds the backward pass for fixed random output
gradients. Prints a table (median seconds over the repeats) and the largest difference
between the two decompositions' bands.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fitmm.spectral.feature_bands import band_projectors, feature_bands, group_sizes

N_NODES = 19_445 + 7_050


def svd_bands(z: torch.Tensor, block_dim: int, n_bands: int) -> torch.Tensor:
    """The released code's path: thin SVD of each block, band k = U_Gk diag(S_Gk) Vh_Gk."""
    out = []
    for block in z.split(block_dim, dim=1):
        u, s, vh = torch.linalg.svd(block, full_matrices=False)
        parts = [(u[:, g] * s[g]) @ vh[g] for g in torch.arange(block_dim).split(group_sizes(block_dim, n_bands))]
        out.append(torch.stack(parts))
    return torch.cat(out, dim=2)


def svd_factors(z: torch.Tensor, block_dim: int) -> tuple[torch.Tensor, ...]:
    return tuple(t for block in z.split(block_dim, dim=1) for t in torch.linalg.svd(block, full_matrices=False))


def timed(fn, z: torch.Tensor, backward: bool, repeats: int) -> float:
    with torch.no_grad():
        outputs = fn(z)
    gen = torch.Generator().manual_seed(1)
    upstream = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outputs]  # fixed output gradients
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        x = z.detach().requires_grad_(backward)
        t0 = time.perf_counter()
        outputs = fn(x)
        if backward:
            torch.autograd.backward(list(outputs), upstream)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=N_NODES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(args.nodes, 3 * 64, generator=gen) * torch.logspace(0, -2, 64).repeat(3)
    methods = {  # each returns a tuple of outputs
        "bands: Gram-eigh (ours)": lambda x: (feature_bands(x, 64, 3),),
        "bands: thin SVD (code)": lambda x: (svd_bands(x, 64, 3),),
        "factors: projectors (ours)": lambda x: (band_projectors(x, 64, 3),),
        "factors: U, S, Vh (code)": lambda x: svd_factors(x, 64),
    }
    with torch.no_grad():
        diff = (feature_bands(z, 64, 3) - svd_bands(z, 64, 3)).abs().max().item()
    print(f"N = {args.nodes} x 3 blocks of 64, 3 bands, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'method':<30}{'forward s':>12}{'fwd+bwd s':>12}")
    for name, fn in methods.items():
        print(f"{name:<30}{timed(fn, z, False, args.repeats):>12.4f}{timed(fn, z, True, args.repeats):>12.4f}")
    print(f"max |bands_eigh - bands_svd| = {diff:.2e} (max |z| = {z.abs().max().item():.2f})")


if __name__ == "__main__":
    main()
