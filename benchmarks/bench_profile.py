"""Where a model's training step spends its time: the top operators of a few batches, by self time.

    python benchmarks/bench_profile.py --model ssr --data-dir ../shared/data [--dataset tiktok --batches 8 --top 10]

Builds the model as `fitmm train` would (its YAML defaults, `--set KEY=VALUE` on top), takes the first
`--batches` + 2 batches of epoch 0's sampling, runs 2 warm-up steps (loss, backward, Adam), then profiles the
others with `torch.profiler` and prints the seconds per step and the `--top` operators by self time, each with
its share of the profiled time (`--shapes`: grouped by input shape too). `--threads` torch threads (default 1);
on a shared machine the shares hold, the seconds do not.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fitmm.config import load_config, parse_overrides, resolve_device
from fitmm.data import get_dataset
from fitmm.trainer import NegativeSampler, build_model, make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", default="tiktok")
    ap.add_argument("--data-dir")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--shapes", action="store_true", help="group the operators by input shape too")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    data = get_dataset(args.dataset, args.data_dir)
    config = load_config(args.model, {**parse_overrides(args.set), "device": args.device})
    device = resolve_device(config.device)
    model = build_model(data, config, device)
    optimizer = make_optimizer(model, config)
    sampler = NegativeSampler(data, config.batch_size, config.negative_items, model.batch_distinct_ids)
    batches = [b.to(device) for b, _ in zip(sampler.epoch(np.random.default_rng([config.seed, 0])),
                                            range(args.batches + 2))]
    model.on_epoch_start(0)
    model.train()

    def step(batch) -> None:
        loss = sum(model.loss_terms(batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:2]:
        step(batch)
    steps = batches[2:]
    start = time.perf_counter()
    with torch.profiler.profile(record_shapes=args.shapes) as prof:
        for batch in steps:
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / len(steps)
    events = sorted(prof.key_averages(group_by_input_shape=args.shapes), key=lambda e: e.self_cpu_time_total,
                    reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.model} on {args.dataset}: {seconds:.3f} s per step (profiled, {len(steps)} steps of "
          f"{config.batch_size}; {len(sampler)} steps per epoch), {torch.get_num_threads()} thread(s)")
    print(f"{'operator':34s} {'share':>6s} {'ms/step':>8s} {'calls':>6s}" + ("  input shapes" if args.shapes else ""))
    for e in events[: args.top]:
        print(f"{e.key[:34]:34s} {e.self_cpu_time_total / total:6.1%} {e.self_cpu_time_total / 1e3 / len(steps):8.1f} "
              f"{e.count // len(steps):6d}" + (f"  {e.input_shapes}" if args.shapes else ""))


if __name__ == "__main__":
    main()
