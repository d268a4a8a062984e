"""The diagnosis switches of FITMM (detach_bands, train_features, lambda_emb), the per-epoch gradient norms,
band weights and gate scale in the history, the valid trace, and the chapter's analysis and claim rule."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from fitmm import reproduce
from fitmm.experiments import claims, diagnosis, plan
from fitmm.metrics import evaluate
import fitmm.models.fitmm as fitmm_module
from fitmm.models.fitmm import FITMM
from fitmm.spectral.feature_bands import band_projectors
from fitmm.trace import DRIFT_REFERENCE_EPOCH
from fitmm.trainer import train
from tests.test_fitmm import batch, build, config, tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def backbone_grads(model, data) -> dict[str, torch.Tensor]:
    model.zero_grad()
    sum(model.loss_terms(batch(data)).values()).backward()
    return {name: p.grad.clone() for name, p in model.backbone.named_parameters() if p.grad is not None}


def test_detach_bands_keeps_the_values_and_stops_the_gradient_through_the_projectors(monkeypatch):
    data = tiny()
    released, detached = build(data), build(data, detach_bands=True)
    detached.load_state_dict(released.state_dict())
    terms_r, terms_d = released.loss_terms(batch(data)), detached.loss_terms(batch(data))
    for name in terms_r:
        torch.testing.assert_close(terms_r[name], terms_d[name])
    assert all(not p.requires_grad for p in detached._encode()[1].values())
    grads_r, grads_d = backbone_grads(released, data), backbone_grads(detached, data)
    assert any(not torch.allclose(grads_r[n], grads_d[n]) for n in grads_r)  # the projector path carried gradient
    # the detached model's gradient is the released one's with the projectors taken as constants
    monkeypatch.setattr(fitmm_module, "band_projectors", lambda *a, **k: band_projectors(*a, **k).detach())
    grads_const = backbone_grads(released, data)
    for name in grads_d:
        torch.testing.assert_close(grads_d[name], grads_const[name])


def test_detached_gate_input_keeps_the_values_and_keeps_ib_out_of_the_encoders():
    data = tiny()
    plain, detached = build(data), build(data, detach_gate_input=True)
    detached.load_state_dict(plain.state_dict())
    torch.testing.assert_close(detached.loss_terms(batch(data))["bce"], plain.loss_terms(batch(data))["bce"])
    ib = diagnosis.term_gradients(detached, data, n_batches=1).loc["ib"]
    assert ib["encoders"] == 0 and ib["gate"] > 0
    assert diagnosis.term_gradients(plain, data, n_batches=1).loc["ib", "encoders"] > 0


def test_frozen_feature_tables_get_no_gradient():
    data = tiny()
    model = build(data, train_features=False)
    assert all(not p.requires_grad for p in model.backbone.features.values())
    grads = backbone_grads(model, data)
    assert not any(name.startswith("features.") for name in grads)
    assert "encoders.image.0.weight" in grads  # the MLP over the frozen table still trains
    assert all(p.requires_grad for p in build(data).backbone.features.values())  # released: trained
    record = train(data, config(train_features=False, epochs=2, topk=[5, 20]), progress=False)
    assert record["history"][-1]["grad_norms"]["features"] == 0.0


def test_lambda_emb_adds_dragons_l2_term():
    data = tiny()
    model = build(data, lambda_emb=1e-3)
    one = batch(data)
    terms = model.loss_terms(one)
    b = model.backbone
    # DRAGON: Σ over blocks of mean over the batch (duplicates included) of P², plus mean w²
    p = b.preference[one.users].view(len(one.users), b.n_blocks, model.dim)
    expected = 1e-3 * (sum(p[:, m].square().mean() for m in range(b.n_blocks)) + b.block_weights.square().mean())
    torch.testing.assert_close(terms["emb"], expected)
    assert "emb" not in build(data).loss_terms(one)  # released: no such term
    assert "emb" in build(data, spectral=False, lambda_emb=1e-3).loss_terms(one)


def test_parameter_groups_partition_the_trainable_parameters():
    data = tiny()
    for overrides in ({}, {"spectral": False}, {"gate": False}):
        model = build(data, **overrides)
        groups = model.parameter_groups()
        ids = [id(p) for params in groups.values() for p in params]
        assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert set(build(data).parameter_groups()) == {"item_id", "features", "encoders", "preference", "block_weights",
                                                   "band_weights", "gate"}


def test_history_records_gradient_norms_band_weights_and_gate_scale():
    data = tiny()
    record = train(data, config(epochs=2, topk=[5, 20]), progress=False)
    h = record["history"][-1]
    assert set(h["grad_norms"]) == set(build(data).parameter_groups())
    assert all(v > 0 for k, v in h["grad_norms"].items())
    assert len(h["diagnostics"]["band_weights"]["user"]) == 3 and set(h["diagnostics"]["gate_scale"]) == {"user", "item"}
    assert set(h["losses"]) == {"bce", "ib", "consistency"}


def test_gradient_norm_is_the_rms_over_batches_of_each_groups_norm():
    """With one batch per epoch and lr 0, the recorded norm is the gradient norm at the initial parameters."""
    data = tiny()
    cfg = config(epochs=1, batch_size=10_000, lr=1e-30, topk=[5, 20])
    record = train(data, cfg, progress=False)
    torch.manual_seed(cfg.seed)
    model = FITMM(data, cfg)
    from fitmm.trainer import NegativeSampler
    rng = np.random.default_rng([cfg.seed, 0])
    torch.manual_seed(cfg.seed * 100_003)
    one, = list(NegativeSampler(data, cfg.batch_size).epoch(rng))
    model.train()
    sum(model.loss_terms(one).values()).backward()
    for name, params in model.parameter_groups().items():
        direct = torch.sqrt(sum(p.grad.square().sum() for p in params if p.grad is not None))
        assert record["history"][0]["grad_norms"][name] == pytest.approx(direct.item(), rel=1e-4)


def test_item_hits_count_each_hit_once():
    data = tiny()
    model = build(data)
    summary, per_user = evaluate(model.scorer(), data, "valid", (5, 20), 64, "cpu", item_hits_at=20)
    valid = data.matrix("valid")
    n_rel = np.diff(valid.indptr)[per_user["users"]]
    assert per_user["item_hits"].sum() == pytest.approx((per_user["recall@20"] * n_rel).sum())
    assert "item_hits" not in evaluate(model.scorer(), data, "valid", (5, 20), 64, "cpu")[1]


def test_trace_is_written_and_resumes(tmp_path):
    data = tiny()
    cfg = config(epochs=DRIFT_REFERENCE_EPOCH + 2, patience=50, topk=[5, 20])
    train(data, cfg, tmp_path, progress=False, trace=True)
    (path,) = tmp_path.glob("runs/*/fitmm/*/trace.npz")
    trace = np.load(path)
    assert list(trace["epochs"]) == list(range(cfg.epochs))
    assert trace["recall"].shape == (cfg.epochs, len(trace["users"]))
    assert trace["item_hits"].shape == trace["drift"].shape == (cfg.epochs, data.n_items)
    assert np.isnan(trace["drift"][:DRIFT_REFERENCE_EPOCH]).all() and (trace["drift"][DRIFT_REFERENCE_EPOCH] == 0).all()
    assert (trace["drift"][-1] > 0).any()


def test_a_run_finished_untraced_is_trained_again_when_its_trace_is_asked_for(tmp_path, capsys):
    """The trace is not part of the run id (it changes nothing the run computes): asking for it retrains the run
    from its first epoch, traced, with the same record; a traced record then serves both requests."""
    data, cfg = tiny(), config(epochs=3, patience=50, topk=[5, 20])
    plain = train(data, cfg, tmp_path, progress=False)
    (folder,) = tmp_path.glob("runs/*/fitmm/*")
    assert not (folder / "trace.npz").exists()
    traced = train(data, cfg, tmp_path, progress=False, trace=True)
    assert "finished without a trace; training it again, traced" in capsys.readouterr().err
    assert list(np.load(folder / "trace.npz")["epochs"]) == [0, 1, 2]
    assert [h["valid"] for h in traced["history"]] == [h["valid"] for h in plain["history"]]
    assert traced["test"] == plain["test"] and traced["run_id"] == plain["run_id"]
    mtime = (folder / "record.json").stat().st_mtime_ns
    train(data, cfg, tmp_path, progress=False)
    train(data, cfg, tmp_path, progress=False, trace=True)
    assert (folder / "record.json").stat().st_mtime_ns == mtime


def test_diagnosis_runs_are_planned_traced_and_merge_with_the_same_main_run():
    profile = {"diagnosis_dataset": "tiktok", "data_dir": "d", "diagnosis_budget": {},
               "diagnosis_runs": {"released": [999, 1], "gate false": [999]}}
    specs = plan.diagnosis_variant_runs(**profile)
    assert [(s.model, s.variant, s.seed, s.overrides, s.trace) for s in specs] == [
        ("fitmm", "released", 999, {}, True), ("fitmm", "released", 1, {}, True),
        ("fitmm", "gate false", 999, {"gate": False}, True),
        ("lightgcn", "LightGCN", 999, {}, False), ("lightgcn", "LightGCN", 1, {}, False)]
    main = plan.main_runs(["tiktok"], "d", ["fitmm"], [999], {}, None, "results")
    assert main[0].key() == specs[0].key() and not main[0].trace
    merged = {s.key(): s for s in plan.plan({**reproduce.profiles()["full"], **profile, "datasets": ["tiktok"],
                                                 "tuning_trials": None})}
    assert merged[specs[0].key()].trace and not merged[plan.main_runs(["tiktok"], "d", ["lightgcn"], [999], {}, None, "r")[0].key()].trace


def record(seed=999, valid=(0.05, 0.08, 0.07, 0.06), loss=(0.7, 0.6, 0.5, 0.4), epochs=None, stopped_early=True,
           test=0.07, omega=0.75, scale=0.45):
    best = int(np.argmax(valid))
    history = [{"epoch": e, "valid": {"recall@20": v}, "losses": {"bce": l * 0.6, "ib": l * 0.4},
                "grad_norms": {"gate": 2.0, "preference": 0.1},
                "diagnostics": {"band_weights": {"user": [omega] * 3, "item": [omega - 0.01] * 3},
                                "gate_scale": {"user": scale, "item": scale}}}
               for e, (v, l) in enumerate(zip(valid, loss))]
    return {"seed": seed, "history": history, "best_epoch": best, "epochs": epochs or len(valid),
            "stopped_early": stopped_early, "test": {"recall@20": test}, "best_valid": {"recall@20": max(valid)}}


def test_early_peak_rule_on_constructed_records():
    early = claims.early_peak(record())
    assert early["early_peak"] and early["decline"] == pytest.approx(0.25)
    late = record(valid=[0.01 * e for e in range(1, claims.EARLY_PEAK_MAX_EPOCH + 4)] + [0.0],
                  loss=np.linspace(1, 0.1, claims.EARLY_PEAK_MAX_EPOCH + 4))
    flat = record(valid=(0.05, 0.08, 0.079, 0.0795))  # a decline under EARLY_PEAK_DECLINE
    loss_up = record(loss=(0.7, 0.6, 0.65, 0.7))       # the loss does not keep falling
    frame = lambda *rs: pd.DataFrame([claims.early_peak(r) for r in rs])
    assert claims.early_peak_verdict(frame(record(), record(seed=1))) == "reproduced"
    assert claims.early_peak_verdict(frame(record(), late)) == "partly"
    assert claims.early_peak_verdict(frame(flat, loss_up)) == "not reproduced"
    assert claims.early_peak_verdict(pd.DataFrame()) == "pending"
    cut = record(valid=(0.05, 0.06, 0.07, 0.08), stopped_early=False)  # still improving at its cap
    assert claims.early_peak_verdict(frame(record(), cut)) == claims.INCONCLUSIVE
    on_two = frame(record(), {**late, "dataset": {"name": "baby"}})  # released runs of two datasets: one peaks early
    assert claims.early_peak_verdict(on_two) == "partly"
    second = diagnosis.early_peak_evidence(on_two).split("; ")[1]
    assert second.startswith(f"baby seed 999: best epoch {claims.EARLY_PEAK_MAX_EPOCH + 2} of")


def test_ablation_table_and_best_variant_on_constructed_records():
    runs = {"released": [(record(test=0.07), None), (record(seed=1, test=0.06), None)],
            "gate false": [(record(test=0.08, scale=0.5), None)]}
    table = diagnosis.ablation_table(runs).set_index("variant")
    assert table.loc["released", "test recall@20"] == f"{0.065:.4f} ± {np.std([0.07, 0.06], ddof=1):.4f}"
    assert table.loc["released", "best epoch"] == "1, 1"
    assert table.loc["released", "ω at best (user / item)"] == "0.750 / 0.740"
    assert table.loc["gate false", "gate scale at best (user / item)"] == "0.500 / 0.500"
    assert diagnosis.best_variant(table.reset_index()) == "gate false"
    frame = diagnosis.curves(runs)
    assert len(frame) == 12 and frame["omega user"].eq(0.75).all() and set(frame.filter(like="grad ")) == {"grad gate", "grad preference"}


def test_repeat_summary_says_whether_the_released_setting_peaks_early_there():
    still_rising = record(valid=(0.05, 0.06, 0.07, 0.08), loss=(0.7, 0.6, 0.5, 0.4), test=0.08)
    capped = record(valid=(0.05, 0.06, 0.07, 0.08), test=0.085, stopped_early=False)  # at its cap, still improving
    runs = {"released": [(still_rising, None)], "gate false": [(record(test=0.09), None)],
            "backbone": [(capped, None)], "LightGCN": [(record(test=0.1), None)]}
    text = diagnosis.repeat_summary(runs, "baby")
    assert text.startswith("released: test Recall@20 0.0800 (best epoch 3 of 4); gate false: test Recall@20 0.0900")
    assert "backbone: test Recall@20 0.0850 (best epoch 3 of 4, cut at its epoch cap while improving)" in text
    assert "on baby the released setting does not peak early and decline (seed 999: best epoch 3 of 4" in text
    assert "; at its best epoch the IB term is 40% of its loss;" in text  # record(): ib = 0.4 of the loss
    assert text.endswith("released is 0.0050 below the backbone; gate false is 0.0050 above the backbone")
    assert "LightGCN is" not in text
    uncapped = {**runs, "backbone uncapped": [(record(test=0.095), None)]}  # where it ran, the reference
    assert diagnosis.repeat_summary(uncapped, "baby").endswith("released is 0.0150 below the backbone uncapped; "
                                                               "gate false is 0.0050 below the backbone uncapped")
    assert "peaks early and declines (" in diagnosis.repeat_summary({"released": [(record(), None)]}, "baby")


def test_explanation_states_the_runs_numbers():
    runs = {"released": [(record(test=0.07), None)],
            "detach gate input": [(record(valid=(0.05, 0.06, 0.07, 0.08), test=0.084), None)],
            "backbone": [(record(valid=(0.05, 0.06, 0.08, 0.07), test=0.076), None)]}
    table = diagnosis.ablation_table(runs)
    text = diagnosis.explanation(table, diagnosis.curves(runs), None)
    assert "- **When.** Released FITMM peaks at epoch 1; by epoch 3 its valid recall@20 is -25.0% from the peak" in text
    assert "IB term is 40% of the loss" in text
    assert ("- **detach gate input.** Keeping L_IB but cutting its path into the encoders (the gate reads sg(h)) moves "
            "the best epoch from 1 to 3 and test recall@20 from 0.0700 to 0.0840 (+20%).") in text
    assert "**The best variant** is 'detach gate input'" in text and "0.0760 for the backbone alone" in text
    assert "lambda_ib 0" not in text
    worse = {**runs, "detach gate input": [(record(test=0.06), None)]}
    assert "**No variant beats the released setting; the closest** is 'detach gate input'" in diagnosis.explanation(
        diagnosis.ablation_table(worse), diagnosis.curves(worse), None)


def test_named_variant_must_beat_the_backbone_and_lightgcn_on_three_uncut_seeds():
    def table(**means):
        return pd.DataFrame([{"variant": v, "seeds": n, "test recall@20 mean": m} for v, (m, n) in means.items()])

    def rows(variant="gate false", stopped_early=True):
        return pd.DataFrame([{"variant": variant, "epochs": 60, "best_epoch": 40 if stopped_early else 59,
                              "stopped_early": stopped_early}] * 3)

    refs = diagnosis.REFERENCES
    base = {"released": (0.070, 3), "backbone": (0.076, 3), "LightGCN": (0.080, 3)}
    named, why = claims.named_variant(table(**base, **{"gate false": (0.085, 3), "lambda_ib 0": (0.078, 3)}), rows(), refs)
    assert named == "gate false" and "beats backbone (0.0760) and LightGCN (0.0800)" in why
    named, why = claims.named_variant(table(**base, **{"gate false": (0.079, 3)}), rows(), refs)
    assert named is None and why == "'gate false' (0.0790) does not beat LightGCN (0.0800)"
    named, why = claims.named_variant(table(**base, **{"gate false": (0.085, 2)}), rows(), refs)
    assert named is None and "2 seed(s); 3 needed" in why
    named, why = claims.named_variant(table(**base, **{"gate false": (0.085, 3)}), rows(stopped_early=False), refs)
    assert named is None and "cut by its budget" in why
    del base["LightGCN"]
    assert claims.named_variant(table(**base, **{"gate false": (0.085, 3)}), rows(), refs) == (
        None, "'gate false' cannot be compared: no run of LightGCN")
    assert claims.named_variant(table(released=(0.07, 1)), rows(), refs)[0] is None


def test_group_curves_split_hits_by_item_group_and_recall_by_user_group(tmp_path):
    data = tiny()
    valid = data.pairs("valid")
    users = np.unique(valid[:, 0]).astype(np.int32)
    labels = diagnosis.item_groups(data)
    popularity = np.bincount(data.train[:, 1], minlength=data.n_items)
    assert (labels == "untrained").sum() == (popularity == 0).sum()
    hits = np.bincount(valid[:, 1], minlength=data.n_items)  # every valid pair a hit at epoch 1, none at epoch 0
    recall = np.stack([np.zeros(len(users)), np.ones(len(users))]).astype(np.float16)
    drift = np.stack([np.full(data.n_items, np.nan), np.full(data.n_items, 0.5)]).astype(np.float16)
    np.savez(tmp_path / "trace.npz", epochs=np.array([0, 1]), users=users, recall=recall,
             item_hits=np.stack([np.zeros_like(hits), hits]).astype(np.uint16), drift=drift)
    groups = diagnosis.group_curves(tmp_path / "trace.npz", data)
    assert (groups[groups.epoch == 0].recall == 0).all() and np.allclose(groups[groups.epoch == 1].recall, 1)
    items = groups[(groups.kind == "item") & (groups.epoch == 1)]
    assert items.n.sum() == len(valid) and np.allclose(items.drift, 0.5)
    assert groups[(groups.kind == "user") & (groups.epoch == 0)].n.sum() == len(users)
    d = diagnosis.decline(groups)
    assert (d["peak epoch"] == 1).all() and np.allclose(d["change"], 0)


def test_term_gradients_are_each_terms_gradient_norm_per_group():
    data = tiny()
    model = build(data)
    table = diagnosis.term_gradients(model, data, n_batches=1)
    assert list(table.index) == ["bce", "ib", "consistency", "all terms"]
    from fitmm.trainer import NegativeSampler
    first, *_ = NegativeSampler(data, model.config.batch_size).epoch(np.random.default_rng([0, 0]))
    terms = model.loss_terms(first)
    for name, value in [*terms.items(), ("all terms", sum(terms.values()))]:
        model.zero_grad()
        value.backward(retain_graph=True)
        for group, params in model.parameter_groups().items():
            direct = sum(float(p.grad.square().sum()) for p in params if p.grad is not None) ** 0.5
            assert table.loc[name, group] == pytest.approx(direct, rel=1e-4, abs=1e-9)
    assert (table.loc["ib", ["band_weights", "item_id"]] >= 0).all() and table.loc["ib", "band_weights"] == 0


def test_term_gradients_by_stage_are_stored_beside_the_record(tmp_path):
    """Computed once from the checkpoints, then read from the run folder: the chapter renders without them."""
    data = tiny()
    train(data, config(epochs=2, patience=50, topk=[5, 20]), tmp_path, progress=False)
    (folder,) = tmp_path.glob("runs/*/fitmm/*")
    first = diagnosis.term_gradients_by_stage(data, folder, n_batches=1)
    assert list(first.index.get_level_values("stage").unique()) == ["init (epoch 0 start)", "best (epoch 1)",
                                                                   "last (epoch 1)"]
    shutil.rmtree(folder / "checkpoints")
    pd.testing.assert_frame_equal(diagnosis.term_gradients_by_stage(data, folder), first)
    (folder / diagnosis.TERM_GRADIENTS).unlink()
    assert diagnosis.term_gradients_by_stage(data, folder) is None


def test_drift_table_compares_variants_at_their_last_common_epoch(tmp_path):
    runs = {}
    for name, n, d in (("released", 6, 0.6), ("lambda_ib 0", 8, 0.2)):
        folder = tmp_path / name
        folder.mkdir()
        drift = np.full((n, 5), d)
        drift[:DRIFT_REFERENCE_EPOCH] = np.nan
        np.savez(folder / "trace.npz", epochs=np.arange(n), drift=drift.astype(np.float16))
        runs[name] = [(record(valid=[0.01 * (e + 1) for e in range(n)], loss=np.linspace(1, 0.5, n)), folder)]
    table = diagnosis.drift_table(runs).set_index("variant")
    assert (table.epoch == 5).all()
    assert table.loc["released", "mean item drift"] == pytest.approx(0.6, rel=1e-3)
    assert table.loc["lambda_ib 0", "valid recall@20"] == pytest.approx(0.06)
