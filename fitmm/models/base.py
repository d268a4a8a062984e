"""The interface every model implements; the trainer and evaluator rely on nothing else.

A model is built as `Model(data, config)` from an `Interactions` dataset and its typed
config (`config_class`: the protocol fields of `fitmm.config.Config` plus its own, with
defaults in `fitmm/configs/<name>.yaml`). `check_data` says, before anything is built,
whether the dataset can feed the model. Trainable models implement `loss_terms` and
`embeddings`; closed-form models (EASE) set `trainable = False` and implement `fit` and
`scorer`. `version` is bumped whenever a change alters what the model computes for the
same config: it enters the run id, so records of an older version are not reused.
FITMM and SSR, whose embeddings fuse M bands, are `BandedRecommender`s: the spectral
checks read their bands and gates and drop one band at a time through that interface alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fitmm.config import Config
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError, TrainingError
from fitmm.graphs import csr_mm, spmm
from fitmm.settings import as_typed

Scorer = Callable[[torch.Tensor], torch.Tensor]


class Distinct(NamedTuple):
    """The distinct values of an id vector x: `ids` sorted, x == ids[index], and `counts` copies of each."""

    ids: torch.Tensor
    index: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def of(cls, x: np.ndarray) -> "Distinct":
        ids, index, counts = np.unique(x, return_inverse=True, return_counts=True)
        return cls(*(torch.from_numpy(a.astype(np.int64, copy=False)) for a in (ids, index, counts)))


@dataclass(frozen=True)
class Batch:
    """One training batch: users[j] interacted with pos_items[j] and not with neg_items[j], and (with `distinct`)
    the distinct ids that FITMM, SMORE and SSR compute each node once for. These are found on the host, before the
    batch moves to the device: `torch.unique` on a GPU waits for the device, its output size being data-dependent."""

    users: torch.Tensor
    pos_items: torch.Tensor
    neg_items: torch.Tensor
    distinct_users: Distinct | None = None
    distinct_items: Distinct | None = None  # of pos_items followed by neg_items
    distinct_pos: Distinct | None = None
    pos_in_items: torch.Tensor | None = None  # distinct_items.ids[pos_in_items] == distinct_pos.ids

    @classmethod
    def of(cls, users, pos_items, neg_items, distinct: bool = True) -> "Batch":
        """From int id vectors (numpy arrays or CPU tensors); `distinct`: find the distinct ids too."""
        users, pos, neg = (np.asarray(x, dtype=np.int64) for x in (users, pos_items, neg_items))
        ids = [torch.from_numpy(x) for x in (users, pos, neg)]
        if not distinct:
            return cls(*ids)
        items, positives = Distinct.of(np.concatenate([pos, neg])), Distinct.of(pos)
        pos_in_items = torch.from_numpy(np.searchsorted(items.ids.numpy(), positives.ids.numpy()))
        return cls(*ids, Distinct.of(users), items, positives, pos_in_items)

    def to(self, device: torch.device) -> "Batch":
        def move(x):
            if isinstance(x, Distinct):
                return Distinct(*(t.to(device, non_blocking=True) for t in x))
            return None if x is None else x.to(device, non_blocking=True)
        return Batch(*(move(getattr(self, f.name)) for f in fields(self)))


class Recommender(nn.Module):
    """Base class: user/item embeddings scored by inner product, losses as named terms."""

    trainable: bool = True
    config_class: type[Config] = Config
    version: int = 1
    batch_distinct_ids: bool = False  # whether loss_terms reads the batch's distinct ids (Batch)
    # The free per-item id table (a dotted parameter name) of a model that also scores items through their content:
    # zeroed for some items, it leaves them their content alone (`content_only`); None for id-only models.
    item_id_table: str | None = None

    @classmethod
    def check_data(cls, config: Config, data: Interactions) -> None:
        """Raise ConfigError when `data` cannot feed this model under `config` (called before any compute)."""

    @classmethod
    def fallback_overrides(cls, data: Interactions) -> dict:
        """The config overrides this study runs the model with on `data` where its defaults cannot run there
        (SSR's contrastive term on a dataset with one content modality); {}: none."""
        return {}

    @classmethod
    def inert_keys(cls, config: Config, data: Interactions) -> frozenset[str]:
        """Config keys whose value changes nothing this model computes on `data` under `config` (SMORE's image
        slot on a dataset without images): a search (`fitmm.tune`) trains one value of each; none by default."""
        return frozenset()

    def __init__(self, data: Interactions, config: Config):
        super().__init__()
        self.n_users = data.n_users
        self.n_items = data.n_items
        self.config = config

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Weighted scalar loss terms of one batch, by name; the trainer minimises their sum."""
        raise NotImplementedError

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (n_users x d, n_items x d) embeddings used for ranking."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer at each epoch start, after it seeds torch from (seed, epoch)."""

    def fit(self) -> None:
        """Closed-form models compute their parameters here."""
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient descent, not fit()")

    @torch.no_grad()
    def scorer(self) -> Scorer:
        """A function from a batch of user ids to their scores over all items."""
        users_emb, items_emb = self.embeddings()
        return lambda users: users_emb[users] @ items_emb.T

    @property
    def scores_content(self) -> bool:
        """Whether the model can score an item through its content alone (`content_only`)."""
        return self.item_id_table is not None

    @contextlib.contextmanager
    def content_only(self, items: np.ndarray) -> Iterator[None]:
        """Inside the block, the id embeddings of `items` (0-based ids) are zero, so every forward represents them by
        their content features alone (through the model's encoders and graphs, as trained); restored on exit."""
        if not self.scores_content:
            raise TrainingError(f"{type(self).__name__} has no item content: it cannot score an item without its id")
        table = self.get_parameter(self.item_id_table)
        rows = torch.as_tensor(np.asarray(items, dtype=np.int64), device=table.device)
        saved = table.data[rows].clone()
        table.data[rows] = 0.0
        try:
            yield
        finally:
            table.data[rows] = saved

    def diagnostics(self) -> dict:
        """Optional model-specific values recorded with each run (band weights, ...)."""
        return {}

    @torch.no_grad()
    def analysis(self, data: Interactions) -> dict:
        """What the book's chapters use from the trained model, computed once when its run finishes and stored
        beside the record (`analysis.json`), so that no chapter needs a checkpoint: test metrics per item
        popularity group, on items without train interactions, and those items ranked among themselves
        (`fitmm.experiments.groups.item_analysis`)."""
        from fitmm.experiments.groups import item_analysis  # the experiments build on the models

        return item_analysis(self.eval(), data)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by role, for the per-epoch gradient norms the trainer records; one group by default."""
        return {"all": list(self.parameters())}

    def epoch_diagnostics(self) -> dict:
        """Cheap model values recorded in each epoch's history entry (band weights, gate scale, ...)."""
        return {}


def require_modalities(model: str, data: Interactions, n: int = 1, hint: str = "") -> None:
    """ConfigError unless `data` has at least `n` item feature files (`<modality>_feat.npy`)."""
    if len(data.modalities) < n:
        where = f" in {as_typed(data.path)}" if data.path else ""  # as a reader of the book types it
        raise ConfigError(f"{model} needs {n} item modalit{'y' if n == 1 else 'ies'} (a <modality>_feat.npy file{where}); "
                          f"dataset {data.name!r} has {len(data.modalities)}" + (f"; {hint}" if hint else ""))
class BandedRecommender(Recommender):
    """A recommender whose user and item embeddings fuse `n_bands` bands.

    `spectral` is False for a model built without its band module (FITMM's `spectral: false`
    ablation): it then has no bands, no gates and no band to drop.
    """

    n_bands: int
    spectral: bool = True

    def __init__(self, data: Interactions, config: dict):
        super().__init__(data, config)
        self._dropped_band: int | None = None

    def band_embeddings(self) -> dict[str, torch.Tensor] | None:
        """{"user": (M, n_users, D), "item": (M, n_items, D)}: the bands fused into the embeddings
        (with the band of `without_band` zeroed), or None without a band module."""
        raise NotImplementedError

    def user_gates(self) -> torch.Tensor | None:
        """(n_users, M) per-user band gates, or None when the model has no gate."""
        raise NotImplementedError

    @torch.no_grad()
    def analysis(self, data: Interactions) -> dict:
        """`Recommender.analysis`, plus with a band module: mean gate per user group and band, band reliance
        (Δ test Recall@20 per user group when one band is zeroed) and the energy share of each graph band of the
        trained backbone signal (`fitmm.experiments.spectral_checks.band_analysis`)."""
        from fitmm.experiments.spectral_checks import band_analysis  # the experiments build on the models

        out = super().analysis(data)
        if self.spectral:
            out.update(band_analysis(self, data))
        return out

    @contextlib.contextmanager
    def without_band(self, band: int) -> Iterator[None]:
        """Inside the block, band `band` (0-based) is zeroed before fusion, in every forward; nothing is retrained."""
        if not self.spectral:
            raise TrainingError(f"{type(self).__name__} with spectral: false has no bands to drop")
        if not 0 <= band < self.n_bands:
            raise ValueError(f"band must be in [0, {self.n_bands}), got {band}")
        self._dropped_band = band
        try:
            yield
        finally:
            self._dropped_band = None

    def drop_band(self, bands: torch.Tensor) -> torch.Tensor:
        """(M, n, D) bands with the band of `without_band` zeroed; unchanged outside it."""
        if self._dropped_band is None:
            return bands
        keep = torch.ones(self.n_bands, dtype=bands.dtype, device=bands.device)
        keep[self._dropped_band] = 0
        return bands * keep[:, None, None]


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: mean softplus(neg - pos) = -mean log σ(pos - neg)."""
    return F.softplus(neg_scores - pos_scores).mean()


def bce_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, label 1 on positives and 0 on negatives (mean of both)."""
    scores = torch.cat([pos_scores, neg_scores])
    labels = torch.cat([torch.ones_like(pos_scores), torch.zeros_like(neg_scores)])
    return F.binary_cross_entropy_with_logits(scores, labels)


def emb_norm_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec's EmbLoss: sum of the Frobenius norms of the batch embeddings, over the batch size."""
    return sum(torch.linalg.norm(e) for e in embeddings) / embeddings[-1].shape[0]


def _layer_mean(adj: torch.Tensor, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """1/(L+1) Σ_{l=0..L} Â^l x, summed in layer order ((x + Âx) + Â²x ...) into the buffer of Âx."""
    if n_layers == 0:
        return x.clone()
    out = layer = csr_mm(adj, x)
    for step in range(n_layers):
        following = csr_mm(adj, layer) if step + 1 < n_layers else None  # read Â^l x before `out` changes
        if step == 0:
            out.add_(x)  # Âx + x: the same sum as x + Âx
        if following is not None:
            out.add_(following)
            layer = following
    return out.div_(n_layers + 1)


class _PropagateMean(torch.autograd.Function):
    """`propagate_mean` with a hand-written backward: the layer mean is linear in x with a symmetric operator, so
    its gradient is the layer mean of the output gradient. Autograd would keep the L layer outputs, and build a
    zero-filled full-size gradient for each row slice of the output (users, items) and add them up."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, n_layers: int, *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.adj, ctx.n_layers, ctx.sizes = adj, n_layers, [len(p) for p in parts]
        return _layer_mean(adj, torch.cat(parts) if len(parts) > 1 else parts[0], n_layers).split(ctx.sizes)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        grad = torch.cat(grads) if len(grads) > 1 else grads[0].contiguous()
        return None, None, *_layer_mean(ctx.adj, grad, ctx.n_layers).split(ctx.sizes)


def propagate_mean(adj: torch.Tensor, n_layers: int, *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """1/(L+1) Σ_{l=0..L} Â^l x on a symmetric sparse graph Â (LightGCN's layer mean) for x the row-wise
    concatenation of `parts` (e.g. the user and the item table), returned split the same way. The same value as
    stacking the L+1 layer outputs and taking their mean, without keeping them (`_PropagateMean`)."""
    return _PropagateMean.apply(adj, n_layers, *parts)
