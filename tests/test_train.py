"""Trainer: sampling, determinism, early stopping, records, failures."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fitmm import allocator
from fitmm.config import load_config
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError, TrainingError
from fitmm.models.bpr import BPRMF
from fitmm.metrics import evaluate
from fitmm import trainer
from fitmm.models.lightgcn import LightGCN
from fitmm.models import MODELS
from fitmm.models.base import Batch
from fitmm.experiments.runs import trained_model
from fitmm.settings import checkpoints_dir
from fitmm.store import checkpoint_state
from fitmm.trainer import NegativeSampler, build_model, learning_rate, make_optimizer, train
from conftest import train_killed_after_first_checkpoint


def planted(n_users=120, n_items=80, rank=4, per_user=12, seed=0) -> Interactions:
    """Interactions drawn from a low-rank preference model, split 80/10/10 per user."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_users, rank)), rng.normal(size=(n_items, rank))
    logits = 2 * u @ v.T
    split = {0: [], 1: [], 2: []}
    for user in range(n_users):
        p = np.exp(logits[user] - logits[user].max())
        items = rng.choice(n_items, size=per_user, replace=False, p=p / p.sum())
        for rank_, item in enumerate(items):
            split[0 if rank_ < per_user - 2 else 1 if rank_ == per_user - 2 else 2].append((user, item))
    arr = {k: np.array(v, dtype=np.int64) for k, v in split.items()}
    return Interactions("planted", n_users, n_items, arr[0], arr[1], arr[2])


def config(model: str, **overrides) -> dict:
    return load_config(model, {"batch_size": 256, "epochs": 4, "eval_batch_users": 64, "device": "cpu", **overrides})


def test_negatives_are_never_train_positives():
    data = planted()
    sampler = NegativeSampler(data, batch_size=100)
    known = set(map(tuple, data.train.tolist()))
    for epoch in range(3):
        for b in sampler.epoch(np.random.default_rng(epoch)):
            assert not any((u, n) in known for u, n in zip(b.users.tolist(), b.neg_items.tolist()))


def test_a_batch_carries_its_distinct_ids():
    rng = np.random.default_rng(0)
    users, pos, neg = rng.integers(0, 30, 200), rng.integers(0, 20, 200), rng.integers(0, 20, 200)
    b = Batch.of(users, pos, neg)
    for x, d in ((users, b.distinct_users), (np.concatenate([pos, neg]), b.distinct_items), (pos, b.distinct_pos)):
        ids, counts = torch.from_numpy(x).unique(return_counts=True)
        assert torch.equal(d.ids, ids) and torch.equal(d.counts, counts)
        assert torch.equal(d.ids[d.index], torch.from_numpy(x))
    assert torch.equal(b.distinct_items.ids[b.pos_in_items], b.distinct_pos.ids)
    moved = b.to(torch.device("cpu"))
    assert isinstance(moved.distinct_users, type(b.distinct_users)) and torch.equal(moved.users, b.users)
    bare = Batch.of(users, pos, neg, distinct=False).to(torch.device("cpu"))  # for the models that do not read them
    assert bare.distinct_users is None and bare.pos_in_items is None and torch.equal(bare.neg_items, b.neg_items)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/device_batch.sh runs it)")
@pytest.mark.parametrize("name", [m for m, c in MODELS.items() if c.trainable])
def test_a_training_step_never_waits_for_the_device(synthetic, name, monkeypatch):
    """Nothing in a step (loss, backward, the recorded gradient norms, Adam) copies to the host or waits for the GPU,
    but FITMM's eigendecomposition (torch.linalg reads its error code on the host; the released code's SVD too).
    SSR takes the Chebyshev path of every dataset of the study: the exact one (graphs up to 5,000 nodes, like this
    one) cuts its bands at host-side borders."""
    device = torch.device("cuda")
    eigh = torch.linalg.eigh

    def eigh_may_wait(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("default")
        try:
            return eigh(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(torch.linalg, "eigh", eigh_may_wait)
    overrides = {"bands": "chebyshev"} if name == "ssr" else {}
    run_config = config(name, device="cuda", **overrides)
    model = build_model(synthetic, run_config, device)
    optimizer = make_optimizer(model, run_config)
    groups = [list(ps) for ps in model.parameter_groups().values()]
    model.on_epoch_start(0)
    model.train()
    batches = [b.to(device) for b in NegativeSampler(synthetic, 128).epoch(np.random.default_rng(0))][:3]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autograd.detect_anomaly(check_nan=False):  # a backward that waits names the forward op behind it
            for batch in batches:
                loss = sum(model.loss_terms(batch).values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                trainer._squared_norms(groups, device)
                optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def with_untrained_items(data: Interactions, n_new: int = 5) -> Interactions:
    """`data` plus `n_new` items that occur only in valid and test."""
    n_items = data.n_items + n_new
    extra = np.array([[u, data.n_items + u % n_new] for u in range(2 * n_new)], dtype=np.int64)
    return Interactions("planted", data.n_users, n_items, data.train, np.vstack([data.valid, extra[:n_new]]),
                        np.vstack([data.test, extra[n_new:]]))


def test_train_negatives_never_draw_an_untrained_item():
    data = with_untrained_items(planted())
    users = np.repeat(np.arange(data.n_users), 500)
    untrained = np.arange(data.n_items - 5, data.n_items)
    drawn = NegativeSampler(data, 100, "train").sample_negatives(users, np.random.default_rng(0))
    assert not np.isin(drawn, untrained).any()
    assert set(np.unique(drawn)) == set(np.unique(data.train[:, 1]))
    drawn = NegativeSampler(data, 100, "all").sample_negatives(users, np.random.default_rng(0))
    assert np.isin(untrained, drawn).all()


def test_unknown_negative_items_and_bad_schedules_are_errors():
    with pytest.raises(ConfigError, match="negative_items: 'test' is not allowed; expected one of: train, all"):
        config("bpr", negative_items="test")
    with pytest.raises(ConfigError, match="lr_decay_every: 0 is not allowed; expected a number > 0"):
        config("bpr", lr_decay_every=0)


def test_stops_when_epochs_since_best_exceed_patience(monkeypatch):
    """MMRec's rule: with patience 3 and the best at epoch 1, epochs 2-5 pass without a gain and epoch 6 is not run."""
    scripted = iter([0.1, 0.2] + [0.1] * 20)

    def fake_evaluate(model, data, split, config, device, item_hits=False):
        return {"recall@20": next(scripted) if split == "valid" else 0.0}, {}

    monkeypatch.setattr(trainer, "_evaluate", fake_evaluate)
    record = train(planted(), config("bpr", epochs=20, patience=3), progress=False)
    assert (record["best_epoch"], record["epochs"], record["stopped_early"]) == (1, 6, True)


def test_learning_rate_schedule_is_per_epoch_and_exact_on_resume(tmp_path, monkeypatch):
    cfg = config("bpr", epochs=5, lr=0.01, lr_decay=0.5, lr_decay_every=2)
    expected = [0.01 * 0.5 ** (e / 2) for e in range(5)]
    assert [learning_rate(cfg, e) for e in range(5)] == pytest.approx(expected)
    used = []

    class Spy(torch.optim.Adam):
        def step(self, *args, **kwargs):
            used.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", Spy)
    whole = train(planted(), cfg, progress=False)
    assert list(dict.fromkeys(used)) == pytest.approx(expected)

    killed = []

    def kill_once(self, epoch):
        if epoch == 3 and not killed:
            killed.append(epoch)
            raise KeyboardInterrupt

    monkeypatch.setattr(BPRMF, "on_epoch_start", kill_once)
    with pytest.raises(KeyboardInterrupt):
        train(planted(), cfg, results_dir=tmp_path, progress=False)
    used.clear()
    resumed = train(planted(), cfg, results_dir=tmp_path, progress=False)
    assert resumed["resumed_at_epoch"] == 3
    assert list(dict.fromkeys(used)) == pytest.approx(expected[3:])
    assert [h["losses"] for h in resumed["history"]] == [h["losses"] for h in whole["history"]]


def test_checkpoints_go_under_fitmm_checkpoints_and_a_run_resumes_from_there(tmp_path, monkeypatch):
    """With $FITMM_CHECKPOINTS (a scratch disk, or a folder outside a checkout that is cloned anew), the run folder
    holds no checkpoint; the run resumes, its progress is read, and its best state rebuilt, from that folder."""
    monkeypatch.setenv("FITMM_CHECKPOINTS", str(tmp_path / "scratch"))
    cfg = config("bpr", epochs=4)
    whole = train(planted(), cfg, progress=False)
    train_killed_after_first_checkpoint(planted(), cfg, tmp_path / "results")
    run = next((tmp_path / "results").glob("runs/planted/bpr/*"))
    assert checkpoints_dir(run) == tmp_path / "scratch" / str(run).lstrip("/")
    assert (checkpoints_dir(run) / "last.pt").exists() and not (run / "checkpoints").exists()
    assert checkpoint_state(run)["epoch"] == 1
    resumed = train(planted(), cfg, results_dir=tmp_path / "results", progress=False)
    assert resumed["resumed_at_epoch"] == 1
    assert [h["losses"] for h in resumed["history"]] == [h["losses"] for h in whole["history"]]
    best = torch.load(checkpoints_dir(run) / "best.pt", weights_only=False)
    rebuilt = trained_model(planted(), run).state_dict()  # what reanalyses and the diagnosis load
    assert all(torch.equal(rebuilt[name], value) for name, value in best.items())
    assert resumed["test"] == whole["test"]


def test_lightgcn_has_two_xavier_tables():
    data = planted()
    model = LightGCN(data, config("lightgcn"))
    for table, n in ((model.user_emb, data.n_users), (model.item_emb, data.n_items)):
        bound = (6 / (n + 64)) ** 0.5
        assert table.shape == (n, 64)
        assert table.abs().max() <= bound and table.abs().max() > 0.9 * bound
    assert not any(p.shape[0] == data.n_users + data.n_items for p in model.parameters())


def test_epoch_covers_every_train_pair_once():
    data = planted()
    sampler = NegativeSampler(data, batch_size=100)
    batches = list(sampler.epoch(np.random.default_rng(0)))
    assert len(batches) == len(sampler)
    pairs = torch.cat([torch.stack([b.users, b.pos_items], 1) for b in batches]).numpy()
    assert sorted(map(tuple, pairs.tolist())) == sorted(map(tuple, data.train.tolist()))


@pytest.mark.parametrize("model", ["bpr", "lightgcn"])
def test_fixed_seed_is_deterministic(model):
    data = planted()
    first = train(data, config(model), progress=False)
    second = train(data, config(model), progress=False)
    assert [h["losses"] for h in first["history"]] == [h["losses"] for h in second["history"]]
    assert first["test"] == second["test"]
    other = train(data, config(model, seed=1), progress=False)
    assert other["history"][0]["losses"] != first["history"][0]["losses"]


def test_training_improves_valid_recall():
    data = planted()
    cfg = config("lightgcn", epochs=25, lr=0.01)
    model = build_model(data, cfg, torch.device("cpu"))
    untrained, _ = evaluate(model.scorer(), data, "valid", cfg.topk)
    trained = train(data, cfg, progress=False)
    assert trained["best_valid"]["recall@20"] > untrained["recall@20"] + 0.1


def test_early_stopping_and_record(tmp_path):
    data = planted()
    record = train(data, config("bpr", epochs=50, patience=2, lr=0.05), results_dir=tmp_path, progress=False)
    assert record["stopped_early"]
    assert record["epochs"] == record["best_epoch"] + 4  # patience 2: stops after the 3rd epoch without a gain
    run = next((tmp_path / "runs" / "planted" / "bpr").iterdir())
    saved = json.loads((run / "record.json").read_text())
    assert saved["test"] == record["test"]
    assert set(saved) >= {"config", "seed", "history", "best_epoch", "test", "best_valid", "wall_seconds",
                          "seconds_per_epoch", "peak_memory_mb", "provenance"}
    assert set(saved["provenance"]) >= {"git_commit", "packages", "device"}
    per_user = np.load(run / "per_user.npz")
    assert per_user["recall@20"].mean() == pytest.approx(record["test"]["recall@20"], abs=1e-6)
    # A finished run is read back, not retrained.
    assert train(data, config("bpr", epochs=50, patience=2, lr=0.05), results_dir=tmp_path, progress=False) == saved


def test_non_finite_loss_names_epoch_and_term(monkeypatch):
    def broken(self, batch):
        return {"bpr": (self.user_emb[batch.users] * np.nan).sum()}

    monkeypatch.setattr(BPRMF, "loss_terms", broken)
    with pytest.raises(TrainingError, match=r"'bpr'.*epoch 0"):
        train(planted(), config("bpr"), progress=False)


def test_ease_picks_l2_on_valid():
    data = planted()
    record = train(data, config("ease", l2_grid=[1.0, 100.0, 1.0e4]), progress=False)
    scores = {h["l2"]: h["valid"]["recall@20"] for h in record["history"]}
    assert record["chosen"]["l2"] == max(scores, key=scores.get)
    assert record["best_valid"]["recall@20"] == max(scores.values())


def test_ease_weights_are_the_closed_form():
    """B = I − P · diagMat(1 / diag(P)), P = (XᵀX + λI)⁻¹ (Steck, WWW 2019, eq. 8), from a dense float64 solve."""
    data = planted()
    model = build_model(data, config("ease", l2=30.0, l2_grid=[]), torch.device("cpu"))
    model.fit()
    x = data.train_matrix.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 30.0 * np.eye(data.n_items))
    expected = np.eye(data.n_items) - p / np.diag(p)
    np.testing.assert_allclose(model.weights.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (model.weights.diagonal() == 0).all()
    users = torch.tensor([3, 0, 7])  # ŷ_u = x_u B, from the sparse rows
    np.testing.assert_allclose(model.scorer()(users).numpy(), x[users.numpy()] @ expected, rtol=1e-5, atol=1e-5)


def test_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key .n_layer. for model .lightgcn."):
        load_config("lightgcn", {"n_layer": 3})


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the per-run peak needs Linux's clear_refs")
def test_peak_memory_is_the_runs_own_not_the_process_maximum():
    def resident_mb() -> float:
        return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024

    before = resident_mb()
    ballast = np.ones(600 * 2**20 // 8)  # 600 MiB resident before the run, freed before it starts
    ballast[::512] = 2.0
    del ballast
    record = train(planted(), config("bpr", epochs=1))
    assert record["peak_memory_mb"] < before + 300  # the process maximum is at least before + 600


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_allocator_keeps_freed_memory_on_glibc():
    """The trainer's allocator settings take effect (mallopt accepts both values) and can be applied again."""
    assert allocator.reuse_freed_memory() and allocator.reuse_freed_memory()
    allocator.release_freed_memory()


def test_fused_adam_makes_the_same_update_as_adam():
    """The trainer's fused Adam against torch's reference implementation, with weight decay, over a few steps."""
    torch.manual_seed(0)
    params = [torch.randn(50, 8, requires_grad=True), torch.randn(8, requires_grad=True)]
    copies = [p.detach().clone().requires_grad_() for p in params]
    plain = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3, foreach=False)
    fused = torch.optim.Adam(copies, lr=1e-2, weight_decay=1e-3, fused=True)
    for step in range(5):
        grads = [torch.randn_like(p) for p in params]
        for ps, opt in ((params, plain), (copies, fused)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    for p, c in zip(params, copies):
        torch.testing.assert_close(c, p)
