"""A run's per-epoch valid breakdown (`trace.npz`), recorded when `train(..., trace=True)`.

For the first `TRACE_EPOCHS` epochs it keeps, beside the valid metric the trainer records anyway:
  recall     (epochs, valid users) float16: each user's valid Recall@K (K of the valid metric)
  item_hits  (epochs, n_items) uint16: how often each item is a hit in a user's valid top K
  drift      (epochs, n_items) float16: ‖e_i(t) − e_i(t_ref)‖ / ‖e_i(t_ref)‖ of the item embeddings,
             t_ref = `DRIFT_REFERENCE_EPOCH` (NaN before it)
so that the valid metric can be split by user group (train degree) and item group (popularity, items never
in train) over the epochs (`fitmm.experiments.diagnosis`). float16 keeps a 25-epoch TikTok trace under 1 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fitmm.io import atomic_path

TRACE_EPOCHS = 40           # epochs kept (FITMM peaks at epoch 3-4 on TikTok; the backbone run is capped at 50)
DRIFT_REFERENCE_EPOCH = 3   # FITMM's best epoch on TikTok (book: "Why FITMM stops learning")


def new_trace() -> dict:
    """The empty trace, kept in the trainer's checkpointed state so that a resumed run continues it."""
    return {"epochs": [], "users": None, "recall": [], "item_hits": [], "drift": [], "reference": None}


@torch.no_grad()
def add_epoch(trace: dict, epoch: int, valid_per_user: dict[str, np.ndarray], metric: str, item_embeddings: torch.Tensor) -> None:
    """Append one epoch: per-user `metric` and `item_hits` from `evaluate(..., item_hits_at=K)`, and the drift."""
    if len(trace["epochs"]) >= TRACE_EPOCHS:
        return
    items = item_embeddings.detach().float().cpu()
    if epoch == DRIFT_REFERENCE_EPOCH:
        trace["reference"] = items.clone()
    if trace["reference"] is None:
        drift = np.full(len(items), np.nan, dtype=np.float16)
    else:
        ref = trace["reference"]
        drift = ((items - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)).numpy().astype(np.float16)
    trace["epochs"].append(epoch)
    trace["users"] = valid_per_user["users"]
    trace["recall"].append(valid_per_user[metric].astype(np.float16))
    trace["item_hits"].append(valid_per_user["item_hits"].clip(max=np.iinfo(np.uint16).max).astype(np.uint16))
    trace["drift"].append(drift)


def save_trace(trace: dict, path: Path) -> None:
    """Write the trace as a compressed npz (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, epochs=np.asarray(trace["epochs"], dtype=np.int32), users=trace["users"],
                                recall=np.stack(trace["recall"]), item_hits=np.stack(trace["item_hits"]),
                                drift=np.stack(trace["drift"]))
