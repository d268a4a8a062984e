"""Why FITMM stops learning (book chapter 09): the ablation variants, their learning curves, gradient norms,
band weights and gate scale per epoch, and the valid metric split by user and item group over the epochs.

Every variant is FITMM (arXiv 2601.22498) with the released settings and one change, all of them config
switches of `fitmm/configs/fitmm.yaml`; runs are traced (`fitmm.trace`) so the decline can be located.
"""

from __future__ import annotations

from pathlib import Path

from fitmm.config import load_config
from fitmm.data.dataset import Interactions
from fitmm.trainer import train

DRAGON_REG_WEIGHT = 1e-3  # DRAGON's reg_weight on Baby and Sports (hongyurain/DRAGON README)
BACKBONE_EPOCHS = 50      # the backbone keeps improving for tens of epochs: its run is capped here

# name -> overrides of the released configuration (in the order of the chapter's table)
VARIANTS: dict[str, dict] = {
    "released": {},
    "backbone": {"spectral": False, "epochs": BACKBONE_EPOCHS},
    "train_features false": {"train_features": False},
    "detach_bands": {"detach_bands": True},
    "lambda_emb DRAGON": {"lambda_emb": DRAGON_REG_WEIGHT},
    "lambda_ib 0": {"lambda_ib": 0.0},
    "gate false": {"gate": False},
    "lambda_c 0": {"lambda_c": 0.0},
    "three terms off": {"lambda_ib": 0.0, "gate": False, "lambda_c": 0.0},
    "lr 5e-4": {"lr": 5e-4},
    "lr 1e-3": {"lr": 1e-3},
    "weight_decay 1e-4": {"weight_decay": 1e-4},
    "weight_decay 1e-3": {"weight_decay": 1e-3},
}


def run_variant(name: str, data: Interactions, seed: int, results_dir: str | Path | None,
                overrides: dict | None = None, progress: bool = False) -> dict:
    """Train (or read back) variant `name` with `seed`, traced; `overrides` (a profile's epochs, ...) apply on top."""
    config = load_config("fitmm", {**VARIANTS[name], **(overrides or {}), "seed": seed})
    return train(data, config, results_dir, progress=progress, trace=True)
