"""How SSR's and FITMM's training cost grows with the number of item modalities.

    python benchmarks/bench_modalities.py [--users 4000 --items 2400 --dim 128 --epochs 3]

One synthetic graph (the embedded generator, 5-core) is written three times with the same interactions and
2 and 3 modalities of `--dim` dimensions each. SSR (the released-code reading) and FITMM train `--epochs`
epochs on each, one thread; the script prints the median seconds per training epoch (epoch 0 excluded) and
each cost relative to the 2-modality one. The speed issue's target: SSR with 3 modalities at most 2x its
cost with 2.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from fitmm.config import load_config
from fitmm.data.loader import load_dataset
from fitmm.data.synthetic import generate
from fitmm.trainer import train

MODALITIES = {2: ("image", "audio"), 3: ("image", "audio", "text")}  # SSR's contrast needs two


def seconds_per_epoch(data, model: str, epochs: int) -> float:
    record = train(data, load_config(model, {"epochs": epochs, "patience": epochs, "device": "cpu"}), progress=False)
    return statistics.median(h["train_seconds"] for h in record["history"][1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--items", type=int, default=2400)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["ssr", "fitmm"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, names in MODALITIES.items():
            folder = generate(Path(tmp) / f"m{n}", "synthetic", a.users, a.items, 0,
                              modalities={m: a.dim for m in names})
            data = load_dataset(folder)
            for model in a.models:
                rows[model, n] = seconds_per_epoch(data, model, a.epochs)
                print(f"{model}, {n} modalities: {rows[model, n]:.2f} s/epoch", flush=True)
    print(f"\n{a.users} x {a.items} asked (5-core), {a.dim}-d modalities, 1 thread, median of epochs 1..{a.epochs - 1}")
    for model in a.models:
        base = rows[model, 2]
        print(f"{model}: " + ", ".join(f"{n} modalities {rows[model, n]:.2f} s ({rows[model, n] / base:.2f}x)"
                                     for n in MODALITIES))


if __name__ == "__main__":
    main()
