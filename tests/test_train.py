"""train_stage on a tiny random BERT and a synthetic two-sector code tree: learning, checkpoints,
resume, init_from and the NaN guard."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import polars as pl
import pytest
import torch

import naics_ml.training.loop as train_loop
import naics_ml.training.objective as train_mod
from naics_ml.io import atomic_path, atomic_save_torch
from naics_ml.model.base import load_tokenizer
from naics_ml.model.channels import code_channel_texts
from naics_ml.model.network import ModelConfig, NaicsModel
from naics_ml.training.bank import bank_is_current, load_bank, refresh_bank
from naics_ml.training.checkpoint import load_checkpoint, save_stage_bundle
from naics_ml.training.loop import (
    NonFiniteLossError,
    StageData,
    StageHooks,
    TrainConfig,
    train_stage,
)
from naics_ml.training.resume import lr_factor
from naics_ml.training.validation import query_validator
from naics_ml.triplets.sampler import TripletBatch

from .tiny import tiny_bert

QUIET = StageHooks(progress=False)
WORDS = ["wheat", "corn", "cattle", "dairy", "coal", "gold", "oil", "gas", "water", "power"]


def tiny_codes() -> pl.DataFrame:
    """Two sectors, each 11 codes down to four six-digit industries."""
    rows: list[dict] = []

    def add(code: str, parent: str | None, sector: str, title: str, desc: str | None) -> None:
        parent_index = next(r["index"] for r in rows if r["code"] == parent) if parent else None
        rows.append(
            dict(
                index=len(rows),
                code=code,
                level=len(code),
                parent_index=parent_index,
                sector=sector,
                title=title,
                description=desc,
                examples=None,
                excluded=None,
                excluded_codes=[],
            )
        )

    for s, sector in enumerate(["11", "21"]):
        w = WORDS[5 * s : 5 * s + 5]
        add(sector, None, sector, f"{w[0]} sector", f"all {w[0]} activities")
        for i in (1, 2):
            c3 = f"{sector}{i}"
            add(c3, sector, sector, f"{w[i]} {w[0]}", None)
            add(c3 + "1", c3, sector, f"{w[i]} {w[0]} group", None)
            add(c3 + "11", c3 + "1", sector, f"{w[i]} {w[0]} industry", f"making {w[i]}")
            for j in (0, 1):
                add(
                    f"{c3}11{j}",
                    c3 + "11",
                    sector,
                    f"{w[i]} {w[2 + j]} plant",
                    f"{w[i]} from {w[2 + j]}; examples {w[3]}",
                )
    return pl.DataFrame(rows).with_columns(
        pl.col("index").cast(pl.Int32),
        pl.col("level").cast(pl.Int8),
        pl.col("parent_index").cast(pl.Int32),
    )


def tiny_model(base_model: str = "tiny-bert", seed: int = 0) -> NaicsModel:
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    bert = tiny_bert(tokenizer.vocab_size, seed)
    config = ModelConfig(
        base_model=base_model,
        lora_layers=1,
        max_length=32,
        embedding_dim=8,
        expert_hidden=32,
        lora_r=4,
        lora_alpha=8,
    )
    model = NaicsModel(config, base=bert, tokenizer=tokenizer)
    torch.set_num_threads(1)  # tiny matrices: threads only add contention
    return model


def query_table(codes: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    six = codes.filter(pl.col("level") == 6)
    texts = [f"we run a {t}" for t in six["title"]] + [f"{t} business" for t in six["title"]]
    return texts, np.concatenate([six["index"].to_numpy()] * 2).astype(np.int64)


def prepared(codes: pl.DataFrame, seed: int = 0) -> tuple[NaicsModel, np.ndarray]:
    model = tiny_model(seed=seed)
    texts, query_codes = query_table(codes)
    model.prepare(code_channel_texts(codes), queries=texts)
    return model, query_codes


def triplet_source(codes: pl.DataFrame, batch_size: int = 8, k: int = 4, seed: int = 0):
    """Factory start_step -> endless deterministic batches (batch s depends on (seed, s) only):
    anchor a six-digit code, positive its sibling, negatives codes of the other sector."""
    six = codes.filter(pl.col("level") == 6).sort("index")
    idx, parent, sector = (six[c].to_numpy() for c in ("index", "parent_index", "sector"))
    all_idx, all_sector = codes["index"].to_numpy(), codes["sector"].to_numpy()

    def factory(start: int):
        step = start
        while True:
            rng = np.random.default_rng([seed, step])
            pick = rng.integers(0, len(idx), batch_size)
            anchor = idx[pick]
            positive = np.array([idx[(parent == parent[p]) & (idx != idx[p])][0] for p in pick])
            negatives = np.stack(
                [rng.choice(all_idx[all_sector != sector[p]], k) for p in pick]
            ).astype(np.int64)
            yield TripletBatch(
                anchor.astype(np.int64),
                positive.astype(np.int64),
                negatives,
                np.ones_like(negatives),
            )
            step += 1

    return factory


def query_source(n_queries: int, batch_size: int = 6, seed: int = 0):
    def factory(start: int):
        step = start
        while True:
            yield np.random.default_rng([seed, 99, step]).choice(n_queries, batch_size, False)
            step += 1

    return factory


def config(**overrides) -> TrainConfig:
    base = dict(
        steps=12,
        batch_size=8,
        learning_rate=3e-3,
        fusion_learning_rate=3e-3,
        warmup_steps=2,
        checkpoint_every=4,
        log_every=1,
        validation_every=6,
        query_batch_size=6,
        seed=0,
    )
    base.update(overrides)
    return TrainConfig(**base)


def run(tmp: Path, codes: pl.DataFrame, cfg: TrainConfig, model=None, query_codes=None, **kw):
    if model is None:
        model, query_codes = prepared(codes)
    metrics: list[tuple[int, dict]] = []
    on_metrics = kw.pop("on_metrics", lambda s, m: metrics.append((s, m)))
    hooks = StageHooks(kw.pop("validate", None), on_metrics, progress=False)
    data = StageData(triplet_source(codes), query_source(len(query_codes)), query_codes, codes)
    result = train_stage(model, data, cfg, tmp, hooks=hooks, **kw)
    return model, result, metrics


@pytest.fixture(scope="module")
def codes() -> pl.DataFrame:
    return tiny_codes()


def test_config_roundtrip_and_validation():
    cfg = config()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**cfg.to_dict(), "stepz": 3})
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="bank_refresh_every"):
        TrainConfig(bank_refresh_every=-1)
    assert TrainConfig().negative_bank and TrainConfig().bank_refresh_every == 100
    with pytest.raises(ValueError, match="held-out"):
        TrainConfig(query_splits=("train", "test"))
    with pytest.raises(ValueError, match="query_candidates"):
        TrainConfig(query_candidates="some")
    assert TrainConfig(query_splits=["train"]).query_splits == ("train",)


def test_hierarchy_loss_needs_the_code_table(tmp_path, codes):
    model, _ = prepared(codes)
    with pytest.raises(ValueError, match="hierarchy_loss_weight"):
        train_stage(model, StageData(triplet_source(codes)), config(steps=2), tmp_path, hooks=QUIET)


def test_hierarchy_loss_pulls_distances_towards_the_tree(tmp_path, codes):
    """With the stress loss dominating, Lorentz distances approach scale * tree distance."""
    from naics_ml.data.taxonomy import tree_distance_matrix
    from naics_ml.model.loss import distortion_loss

    model, query_codes = prepared(codes)
    tree = torch.as_tensor(tree_distance_matrix(codes.sort("index")))
    off_diagonal = ~torch.eye(len(tree), dtype=torch.bool)

    def stress() -> float:
        with torch.no_grad():
            points = model.encode_all_codes().double()
            d = model.manifold.pairwise_distance(points, points)
        return float(distortion_loss(d[off_diagonal], 0.5 * tree.double()[off_diagonal]))

    before = stress()
    cfg = config(steps=60, hierarchy_loss_weight=50.0, fusion_learning_rate=1e-2, log_every=5)
    run(tmp_path, codes, cfg, model, query_codes)
    assert stress() < 0.5 * before
    assert lr_factor(0, 4, 20, 0.1) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)


def test_loss_decreases_and_checkpoint_contents(tmp_path, codes):
    model, query_codes = prepared(codes)
    val_ids = np.arange(len(query_codes))
    six = codes.filter(pl.col("level") == 6)["index"].to_numpy()
    validate = query_validator(val_ids, query_codes, six, temperature=0.1)
    cfg = config(steps=30, checkpoint_every=10, validation_every=15)
    _, result, metrics = run(
        tmp_path,
        codes,
        cfg,
        model,
        query_codes,
        validate=validate,
        extra={"curriculum": "01_easy", "revision": "2022"},
    )
    losses = [m["loss"] for _, m in metrics if "loss" in m]
    assert len(losses) == 30
    contrastive = [m["triplet_loss"] + m["query_loss"] for _, m in metrics if "loss" in m]
    assert np.mean(contrastive[-5:]) < 0.7 * np.mean(contrastive[:5])
    hierarchy = [m["hierarchy_loss"] for _, m in metrics if "loss" in m]
    assert np.mean(hierarchy[-5:]) < np.mean(hierarchy[:5])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    first = metrics[0][1]
    for key in (
        "triplet_loss",
        "query_loss",
        "balance_loss",
        "lr",
        "skipped_steps",
        "grad_norm",
        "expert_utilization_0",
        "expert_utilization_3",
    ):
        assert np.isfinite(first[key]), key
    assert sum(first[f"expert_utilization_{i}"] for i in range(4)) == pytest.approx(1.0)
    lrs = [m["lr"] for _, m in metrics]
    assert lrs[0] == pytest.approx(cfg.learning_rate / cfg.warmup_steps)
    assert max(lrs) == pytest.approx(cfg.learning_rate)
    assert lrs[-1] == pytest.approx(lr_factor(29, 2, 30, 0.1) * cfg.learning_rate)
    val_steps = [s for s, m in metrics if "val_loss" in m]
    assert val_steps == [15, 30]
    assert result.steps == 30 and result.skipped_steps == 0
    assert "val_loss" in result.metrics

    state = load_checkpoint(tmp_path)
    assert result.checkpoint == tmp_path / "checkpoint.pt"
    assert state["complete"] is True and state["step"] == 30 and state["skipped_steps"] == 0
    assert state["train_config"] == cfg.to_dict()
    assert ModelConfig.from_dict(state["model_config"]) == model.config
    assert state["extra"] == {"curriculum": "01_easy", "revision": "2022"}
    assert set(state["model_state"]) == set(model.trainable_state_dict())
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(state["model_state"][key], value)
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 30
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert pl.read_parquet(tmp_path / "codes.parquet").equals(codes)
    assert (tmp_path / "stage.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.parametrize("bank", [True, False])
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, codes, bank):
    # with the bank, resuming is exact when checkpoints fall on bank refresh steps
    cfg = config(steps=12, checkpoint_every=4, negative_bank=bank, bank_refresh_every=4)
    reference, _, _ = run(tmp_path / "ref", codes, cfg)

    def crash(step, metrics):
        if step == 7:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "stage", codes, cfg, on_metrics=crash)
    partial = load_checkpoint(tmp_path / "stage")
    assert partial["step"] == 4 and partial["complete"] is False

    resumed_steps: list[int] = []
    model, result, _ = run(
        tmp_path / "stage", codes, cfg, on_metrics=lambda s, m: resumed_steps.append(s)
    )
    assert result.resumed_from == 4 and result.steps == 12
    assert resumed_steps[0] == 5
    for key, value in reference.trainable_state_dict().items():
        torch.testing.assert_close(model.trainable_state_dict()[key], value, rtol=0, atol=1e-6)

    # a complete stage is retrained from scratch
    _, again, _ = run(tmp_path / "stage", codes, cfg)
    assert again.resumed_from == 0 and again.steps == 12

    # an unfinished stage of another configuration is not resumed either
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "other", codes, cfg, on_metrics=crash)
    other_cfg = config(steps=12, learning_rate=1e-3, negative_bank=bank, bank_refresh_every=4)
    _, other, _ = run(tmp_path / "other", codes, other_cfg)
    assert other.resumed_from == 0


def test_a_stage_killed_and_resumed_through_the_runner_ends_with_uninterrupted_weights(
    tmp_path, codes, monkeypatch
):
    """The real TripletSampler and QuerySampler, one thread: the resumed run continues both
    streams where the killed one stopped, so its weights are an uninterrupted run's."""
    from naics_ml.training.runner import StageInputs, train_from_inputs
    from naics_ml.triplets.generate import TripletConfig
    from naics_ml.triplets.shards import build_triplet_shards

    from .tiny import save_tiny_bert

    no_exclusions = pl.Series("excluded_indices", [[]] * codes.height, pl.List(pl.Int32))
    shards = TripletConfig(cross_sector_k=8, row_group_size=16)  # small groups: many reads
    build_triplet_shards(
        codes.with_columns(no_exclusions), tmp_path / "triplets", shards, workers=1
    )
    texts, query_codes = query_table(codes)
    half = len(texts) // 2  # the first half trains, the second validates
    queries = pl.DataFrame(
        {
            "index": query_codes.astype(np.int32),
            "text": texts,
            "split": ["train"] * half + ["validation"] * (len(texts) - half),
        }
    )
    inputs = StageInputs(codes, tmp_path / "triplets", "01_easy", queries)
    model_config = dataclasses.replace(
        tiny_model().config, base_model=str(save_tiny_bert(tmp_path / "bert"))
    )
    cfg = config(steps=12, checkpoint_every=4, bank_refresh_every=4)

    monkeypatch.setattr("naics_ml.model.network.use_all_cores", lambda: None)  # one thread
    torch.set_num_threads(1)

    def train(out: str, hooks: StageHooks = QUIET):
        return train_from_inputs(inputs, tmp_path / out, (model_config, cfg), hooks=hooks)

    def kill(step, metrics):
        if step == 7:
            raise KeyboardInterrupt("killed after the step-4 checkpoint")

    train("warm-up")  # geoopt's TorchScript functions round differently on their first calls
    reference = train("reference")
    with pytest.raises(KeyboardInterrupt):
        train("stage", StageHooks(on_metrics=kill, progress=False))
    assert load_checkpoint(tmp_path / "stage")["step"] == 4
    resumed = train("stage")
    assert resumed.resumed_from == 4 and resumed.steps == 12
    expected = reference.model.trainable_state_dict()  # (re-seeded streams: ~5e-3 apart)
    for key, value in resumed.model.trainable_state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_init_from_loads_previous_stage_weights(tmp_path, codes):
    previous, _, _ = run(tmp_path / "s1", codes, config(steps=3))
    start = load_checkpoint(tmp_path / "s1")["model_state"]
    model, query_codes = prepared(codes, seed=1)  # another random init
    assert any(not torch.equal(model.trainable_state_dict()[k], v) for k, v in start.items())
    loaded: list[dict[str, torch.Tensor]] = []
    original_load = model.load_trainable_state_dict

    def load_spy(state):  # the weights the stage starts from, before its first step
        original_load(state)
        loaded.append(model.trainable_state_dict())

    model.load_trainable_state_dict = load_spy
    run(tmp_path / "s2", codes, config(steps=2), model, query_codes, init_from=tmp_path / "s1")
    assert len(loaded) == 1
    for key, value in previous.trainable_state_dict().items():
        assert torch.equal(start[key], value)
        assert torch.equal(loaded[0][key], value), key


def test_nan_loss_is_skipped_then_stops_the_stage(tmp_path, codes, monkeypatch):
    original = train_mod.hyperbolic_info_nce
    calls = {"n": 0}
    nan_calls = {3}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] in nan_calls else loss

    monkeypatch.setattr(train_mod, "hyperbolic_info_nce", flaky)
    model, query_codes = prepared(codes)
    before: dict[str, torch.Tensor] = {}
    after: dict[str, torch.Tensor] = {}

    def watch(step, metrics):
        if step == 2:
            before.update(model.trainable_state_dict())
        if step == 3:
            after.update(model.trainable_state_dict())

    _, result, _ = run(tmp_path / "a", codes, config(steps=6), model, query_codes, on_metrics=watch)
    assert result.skipped_steps == 1 and load_checkpoint(tmp_path / "a")["skipped_steps"] == 1
    for key, value in before.items():  # the skipped step changed nothing
        assert torch.equal(after[key], value), key

    calls["n"] = 0
    nan_calls.clear()
    nan_calls.update({3, *range(5, 100)})  # one isolated bad step, then a run of them
    with pytest.raises(NonFiniteLossError, match=r"step 7: 3 consecutive") as info:
        run(tmp_path / "b", codes, config(steps=20, max_consecutive_bad_steps=3))
    assert info.value.step == 7 and info.value.consecutive == 3 and info.value.total == 4

    calls["n"] = 0
    nan_calls.clear()
    nan_calls.update({2, 4, 6})
    with pytest.raises(NonFiniteLossError, match="3 total"):
        run(tmp_path / "c", codes, config(steps=20, max_bad_steps=3))


def test_negative_bank_refreshes_on_schedule_and_learns(tmp_path, codes, monkeypatch):
    model, query_codes = prepared(codes)
    refreshed_at: list[int] = []
    live_sets: list[set[int]] = []
    steps_seen = {"n": 0}
    original_encode = model.encode_codes

    def refresh_spy(*args, **kwargs):
        refreshed_at.append(steps_seen["n"])
        refresh_bank(*args, **kwargs)

    def encode_spy(code_ids, live=None):
        if model.training:  # training steps only, not validation
            steps_seen["n"] += 1
            live_sets.append(set(live.tolist()))
        return original_encode(code_ids, live=live)

    monkeypatch.setattr(train_loop, "refresh_bank", refresh_spy)
    model.encode_codes = encode_spy
    cfg = config(
        steps=30,
        checkpoint_every=10,
        validation_every=15,
        bank_refresh_every=7,
        bank_live_positives=True,
        bank_live_query_codes=True,
    )
    _, result, metrics = run(tmp_path, codes, cfg, model, query_codes)
    assert refreshed_at == [0, 7, 14, 21, 28]  # start, then every 7 steps
    losses = [m["triplet_loss"] + m["query_loss"] for _, m in metrics if "loss" in m]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert all(m["bank_refresh_s"] > 0 for _, m in metrics)
    # the live set is anchors + positives + the queries' codes: never all codes of a step
    triplets, queries = triplet_source(codes)(0), query_source(len(query_codes))(0)
    batch, q = next(triplets), next(queries)
    expected = {*batch.anchor.tolist(), *batch.positive.tolist(), *query_codes[q].tolist()}
    assert live_sets[0] == expected
    assert not set(batch.negatives.ravel().tolist()) <= expected
    assert result.steps == 30

    # refresh only at the start; MoCo-style: only the anchors live
    refreshed_at.clear()
    live_sets.clear()
    steps_seen["n"] = 0
    cfg = config(
        steps=5, bank_refresh_every=0, bank_live_positives=False, bank_live_query_codes=False
    )
    run(tmp_path / "once", codes, cfg, model, query_codes)
    assert refreshed_at == [0]
    assert live_sets[0] == set(batch.anchor.tolist())
    exact, exact_codes = prepared(codes)
    run(tmp_path / "exact", codes, config(steps=3, negative_bank=False), exact, exact_codes)
    assert not exact.bank.filled


def test_validation_reads_the_bank_refreshed_at_its_step(tmp_path, codes, monkeypatch):
    """A refresh due at a validated step runs first; validation then needs no transformer pass
    for the codes, and its numbers are the exact ones."""
    model, query_codes = prepared(codes)
    six = codes.filter(pl.col("level") == 6)["index"].to_numpy()
    exact_validate = query_validator(np.arange(len(query_codes)), query_codes, six, 0.1)
    events: list[tuple[str, int]] = []
    step = {"n": 0}
    original_encode = model.encode_codes

    def refresh_spy(*args, **kwargs):
        events.append(("refresh", step["n"]))
        refresh_bank(*args, **kwargs)

    def encode_spy(code_ids, live=None):
        if model.training:
            step["n"] += 1
        return original_encode(code_ids, live=live)

    def validate(m):
        current = bank_is_current(m)
        events.append(("validate", step["n"]))
        with_bank = exact_validate(m)
        with torch.enable_grad():  # gradients wanted: encode_codes runs the transformer
            exact = exact_validate(m)
        for key, value in exact.items():
            assert with_bank[key] == pytest.approx(value, abs=1e-5)
        return with_bank | {"bank_current": float(current)}

    monkeypatch.setattr(train_loop, "refresh_bank", refresh_spy)
    model.encode_codes = encode_spy
    cfg = config(steps=12, checkpoint_every=4, validation_every=4, bank_refresh_every=8)
    _, _, metrics = run(tmp_path, codes, cfg, model, query_codes, validate=validate)
    assert events == [
        ("refresh", 0),
        ("validate", 4),  # not a refresh step: validation encodes the codes itself
        ("refresh", 8),
        ("validate", 8),
        ("refresh", 12),  # the last step: refreshed for validation and the final evaluation
        ("validate", 12),
    ]
    current = {s: m["bank_current"] for s, m in metrics if "bank_current" in m}
    assert current == {4: 0.0, 8: 1.0, 12: 1.0}
    assert bank_is_current(model)  # what Classifier.encode_all_codes reads after training


def test_stage_bundle_written_on_request(tmp_path, codes):
    path = save_stage_bundle(tmp_path, codes)
    assert pl.read_parquet(path).equals(codes)


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "deep" / "file.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "one"
    atomic_save_torch({"x": torch.ones(2)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt")["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "file.txt", "t.pt"]


def test_step_only_candidates_without_hierarchy_loss(tmp_path, codes):
    """The cheaper path: the query softmax over the step's codes, no all-code pass."""
    cfg = config(steps=4, query_candidates="step", hierarchy_loss_weight=0.0)
    _, result, metrics = run(tmp_path, codes, cfg)
    assert result.steps == 4
    assert all(m["hierarchy_loss"] == 0.0 for _, m in metrics if "loss" in m)
    assert all(np.isfinite(m["query_loss"]) for _, m in metrics if "loss" in m)


def test_next_stage_loads_the_bank_saved_at_its_starting_weights(tmp_path, codes):
    """A finished stage saves its current bank; the next stage adopts it instead of refreshing
    at step 0, and trains exactly as it would have after a refresh."""
    six = codes.filter(pl.col("level") == 6)["index"].to_numpy()
    first, query_codes = prepared(codes)
    validate = query_validator(np.arange(len(query_codes)), query_codes, six, 0.1)
    cfg = config(steps=6, validation_every=6, bank_refresh_every=3)
    run(tmp_path / "a", codes, cfg, first, query_codes, validate=validate)
    saved = torch.load(tmp_path / "a" / "bank.pt", weights_only=True)["bank"]

    reference, _ = prepared(codes)  # the stage-1 weights, refreshed from scratch
    reference.load_trainable_state_dict(load_checkpoint(tmp_path / "a")["model_state"])
    refresh_bank(reference)
    assert torch.equal(saved, reference.bank.rows)
    assert not load_bank(prepared(codes, seed=1)[0], tmp_path / "a" / "bank.pt")  # other weights

    def second(out: Path) -> tuple[NaicsModel, list[int]]:
        model, _ = prepared(codes)
        refreshes: list[int] = []
        with pytest.MonkeyPatch.context() as patch:
            spy = lambda *a, **k: (refreshes.append(1), refresh_bank(*a, **k))[1]  # noqa: E731
            patch.setattr(train_loop, "refresh_bank", spy)
            run(out, codes, config(steps=4), model, query_codes, init_from=tmp_path / "a")
        return model, refreshes

    loaded, loaded_refreshes = second(tmp_path / "b")
    (tmp_path / "a" / "bank.pt").unlink()
    refreshed, refreshed_refreshes = second(tmp_path / "c")
    assert len(refreshed_refreshes) == len(loaded_refreshes) + 1  # the step-0 refresh
    for key, value in refreshed.trainable_state_dict().items():
        assert torch.equal(value, loaded.trainable_state_dict()[key]), key
    assert not (tmp_path / "b" / "bank.pt").exists()  # its last step was not validated
