"""Classifier on a stage folder trained here: tiny BERT saved to disk, synthetic code tree."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import polars as pl
import pytest
import torch

from naics_ml.evaluation.metrics import six_digit_codes
from naics_ml.inference.classifier import Classifier, Prediction
from naics_ml.inference.entry_memory import MemoryConfig, save_stage_memory
from naics_ml.inference.stage_points import load_stage_points
from naics_ml.model.channels import code_channel_texts
from naics_ml.model.lorentz import check_on_manifold, pairwise_distance
from naics_ml.model.network import ModelConfig, NaicsModel
from naics_ml.training.checkpoint import load_checkpoint
from naics_ml.training.loop import StageData, StageHooks, TrainConfig, train_stage
from naics_ml.triplets.sampler import TripletBatch

from .tiny import save_tiny_bert

SECTORS = {"11": ["farm", "wheat", "cattle", "dairy"], "21": ["mine", "coal", "gold", "oil"]}


def synthetic_codes() -> pl.DataFrame:
    """Per sector: sector -> 3 -> 4 -> 5 digits -> three six-digit industries."""
    rows: list[dict] = []
    for sector, (head, *crops) in SECTORS.items():
        chain = [sector, f"{sector}1", f"{sector}11", f"{sector}111"]
        for level, code in enumerate(chain):
            rows.append(
                dict(
                    code=code,
                    level=len(code),
                    parent=chain[level - 1] if level else None,
                    sector=sector,
                    title=f"{head} level {len(code)}",
                    description=None if level else f"all {head} work",
                    examples=None,
                    excluded=None if level else "  ",
                    excluded_codes=[],
                )
            )
        for j, crop in enumerate(crops):
            rows.append(
                dict(
                    code=f"{sector}111{j}",
                    level=6,
                    parent=chain[-1],
                    sector=sector,
                    title=f"{crop} {head}",
                    description=f"growing {crop}",
                    examples=f"{crop} {head}s",
                    excluded=None,
                    excluded_codes=[],
                )
            )
    frame = pl.DataFrame(rows).with_row_index("index")
    lookup = dict(zip(frame["code"], frame["index"], strict=True))
    return frame.with_columns(
        pl.col("index").cast(pl.Int32),
        pl.col("level").cast(pl.Int8),
        pl.Series("parent_index", [lookup.get(p) for p in frame["parent"]], dtype=pl.Int32),
    ).drop("parent")


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> tuple[Path, pl.DataFrame, NaicsModel]:
    root = tmp_path_factory.mktemp("classify")
    base_dir = root / "tiny-bert"
    save_tiny_bert(base_dir)
    config = ModelConfig(
        base_model=str(base_dir),
        lora_layers=1,
        max_length=32,
        embedding_dim=8,
        expert_hidden=32,
        lora_r=4,
        lora_alpha=8,
    )
    model = NaicsModel(config)
    torch.set_num_threads(1)
    codes = synthetic_codes()
    six = codes.filter(pl.col("level") == 6)
    queries = [f"{t} company" for t in six["title"]]
    query_codes = six["index"].to_numpy().astype(np.int64)
    model.prepare(code_channel_texts(codes), queries=queries)
    sector = codes["sector"].to_numpy()

    def triplets(start: int):
        step = start
        while True:
            rng = np.random.default_rng(step)
            anchor = rng.choice(query_codes, 6)
            positive = np.array(
                [
                    rng.choice(query_codes[(sector[query_codes] == sector[a]) & (query_codes != a)])
                    for a in anchor
                ]
            )
            negatives = np.stack(
                [rng.choice(np.flatnonzero(sector != sector[a]), 3) for a in anchor]
            )
            yield TripletBatch(anchor, positive, negatives, np.ones_like(negatives))
            step += 1

    def query_batches(start: int):
        step = start
        while True:
            yield np.random.default_rng([7, step]).choice(len(queries), 4, replace=False)
            step += 1

    cfg = TrainConfig(
        steps=25,
        learning_rate=5e-3,
        warmup_steps=2,
        checkpoint_every=10,
        log_every=5,
        validation_every=25,
        temperature=0.2,
    )
    data = StageData(triplets, query_batches, query_codes, codes)
    train_stage(model, data, cfg, root / "stage", hooks=StageHooks(progress=False))
    return root / "stage", codes, model


@pytest.fixture(scope="module")
def classifier(stage) -> Classifier:
    # nothing but the stage folder; without the base model's vote, predict ranks by distance
    return Classifier.from_checkpoint(stage[0], memory_config=MemoryConfig(base_weight=0.0))


def test_code_channel_texts_masks_missing_and_blank():
    texts = code_channel_texts(synthetic_codes())
    assert texts["title"][0] == "farm level 2"
    assert texts["description"][1] is None and texts["excluded"][0] is None  # blank -> None
    assert texts["examples"][4] == "wheat farms"


def test_predict_returns_nearest_six_digit_codes(classifier, stage):
    _, codes, _ = stage
    six = set(codes.filter(pl.col("level") == 6)["code"])
    texts = ["wheat farm company", "gold mine company", "something else entirely"]
    predictions = classifier.predict(texts, top_k=4)
    assert len(predictions) == 3
    table = classifier.code_embeddings()
    coordinates = torch.tensor(table["coordinates"].to_list(), dtype=torch.float64)
    position = {c: i for i, c in enumerate(table["code"])}
    queries = classifier.embed(texts).double()
    for row, preds in enumerate(predictions):
        assert len(preds) == 4 and all(isinstance(p, Prediction) for p in preds)
        assert {p.code for p in preds} <= six and len({p.code for p in preds}) == 4
        distances = [p.distance for p in preds]
        assert distances == sorted(distances)
        scores = [p.score for p in preds]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-9
        for p in preds:
            assert p.title == table["title"][position[p.code]]
            expected = pairwise_distance(
                queries[row : row + 1], coordinates[[position[p.code]]], 1.0
            )
            assert p.distance == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
    # the remaining six-digit codes are all farther than the k-th prediction
    others = [position[c] for c in six - {p.code for p in predictions[0]}]
    rest = pairwise_distance(queries[:1], coordinates[others], 1.0)
    assert float(rest.min()) >= predictions[0][-1].distance - 1e-6
    assert classifier.predict(["x"], top_k=100)[0].__len__() == len(six)
    assert classifier.predict([]) == []
    with pytest.raises(TypeError):
        classifier.predict("a single string")
    with pytest.raises(TypeError):
        classifier.scores("a single string")  # not its characters


def test_trained_classifier_finds_training_queries(classifier, stage):
    _, codes, _ = stage
    six = codes.filter(pl.col("level") == 6)
    predictions = classifier.predict([f"{t} company" for t in six["title"]], top_k=3)
    top1 = np.mean([p[0].code == c for p, c in zip(predictions, six["code"], strict=True)])
    sector = np.mean(
        [p[0].code[:2] == c[:2] for p, c in zip(predictions, six["code"], strict=True)]
    )
    assert sector == 1.0 and top1 >= 0.5, (top1, sector)


def test_code_embeddings_cover_all_codes_on_the_manifold(classifier, stage):
    _, codes, model = stage
    table = classifier.code_embeddings()
    assert table["code"].to_list() == codes.sort("index")["code"].to_list()
    assert {"index", "code", "level", "sector", "title", "coordinates", "radius"} <= set(
        table.columns
    )
    points = torch.tensor(table["coordinates"].to_list(), dtype=torch.float64)
    assert points.shape == (codes.height, model.config.embedding_dim + 1)
    check_on_manifold(points, 1.0)
    origin = torch.zeros(1, points.shape[1], dtype=torch.float64)
    origin[0, 0] = 1.0
    radius = pairwise_distance(points, origin, 1.0)[:, 0].numpy()
    np.testing.assert_allclose(table["radius"].to_numpy(), radius, rtol=1e-5, atol=1e-6)
    # the same weights as the model that was trained
    np.testing.assert_allclose(
        points.numpy(), model.encode_all_codes().double().numpy(), rtol=1e-5, atol=1e-5
    )


def test_from_checkpoint_accepts_file_and_refuses_unfinished_stage(stage, tmp_path):
    folder, codes, _ = stage
    state = load_checkpoint(folder)
    clf = Classifier.from_checkpoint(
        folder / "checkpoint.pt", base_model=state["model_config"]["base_model"]
    )
    assert clf.code_embeddings().height == codes.height
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    torch.save({**state, "complete": False}, unfinished / "checkpoint.pt")
    (unfinished / "codes.parquet").write_bytes((folder / "codes.parquet").read_bytes())
    with pytest.raises(ValueError, match="unfinished"):
        Classifier.from_checkpoint(unfinished)
    assert Classifier.from_checkpoint(unfinished, allow_incomplete=True).temperature == 0.2
    (unfinished / "codes.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"codes\.parquet"):
        Classifier.from_checkpoint(unfinished, allow_incomplete=True)


def test_device_setting_keeps_cpu_predictions_and_refuses_a_missing_gpu(stage, capsys):
    from naics_assets.cli import main

    folder = stage[0]
    texts = ["wheat farm", "gold mine company", "dairy cattle"]
    chosen = [Classifier.from_checkpoint(folder, device=d) for d in ("cpu", "auto")]
    chosen.append(Classifier.from_checkpoint(folder))  # device="auto" by default
    answers = [c.predict(texts, top_k=3) for c in chosen]
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        assert all(c.model.device == c.points_device == torch.device("cpu") for c in chosen)
        assert repr(answers[1]) == repr(answers[0]) == repr(answers[2])  # every field, exactly
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda': CUDA is not available"):
            Classifier.from_checkpoint(folder, device="cuda")
        assert main(["classify", "wheat farm", "--model", str(folder), "--device", "cuda"]) == 2
        assert "device 'cuda'" in capsys.readouterr().err
    assert main(["classify", "wheat farm", "--model", str(folder), "--device", "cpu"]) == 0
    assert answers[0][0][0].code in capsys.readouterr().out


def ranked_for(classifier: Classifier, text: str) -> list[str]:
    return [p.code for p in classifier.predict([text], top_k=10_000)[0]]


def test_memory_blends_remembered_entries_into_predictions(stage, tmp_path):
    folder, codes, _ = stage
    n_six = int((codes["level"] == 6).sum())
    no_base = MemoryConfig(base_weight=0.0)  # the memory parts alone (the base part: below)
    plain = Classifier.from_checkpoint(folder, memory_config=no_base)  # no memory written
    assert plain.memory_size == 0
    text = "zebra stripe painting"
    ranked = plain.predict([text], top_k=n_six)[0]
    target = ranked[-1].code  # the code the embedding alone ranks last
    memory = pl.DataFrame({"text": [text, "wheat farm company"], "code": [target, ranked[0].code]})
    copy = tmp_path / "stage"
    shutil.copytree(folder, copy)
    save_stage_memory(copy, memory)
    assert Classifier.from_checkpoint(copy, memory=False).memory_size == 0

    # by hand: the plain softmax and the entries-as-points softmax (stage temperature 0.2)
    texts = [text, "gold mine company", "qqq xyzzy"]
    plain_distance, plain_probability = plain.scores(texts)
    entry_distance = pairwise_distance(
        plain.embed(texts).double(), plain.embed(memory["text"].to_list()).double(), 1.0
    )
    columns = [list(six_digit_codes(codes)).index(c) for c in memory["code"]]
    weights = torch.softmax(-entry_distance / 0.2, dim=1).numpy()
    point_probability = np.zeros_like(plain_probability)
    for j, column in enumerate(columns):
        point_probability[:, column] += weights[:, j]

    points_only = MemoryConfig(weight=0.35, lexical_weight=0.0, base_weight=0.0)
    blended = Classifier.from_checkpoint(copy, memory_config=points_only)
    assert blended.memory_size == 2
    distance, probability = blended.scores(texts)
    np.testing.assert_allclose(distance, plain_distance, rtol=1e-6)
    expected = 0.65 * plain_probability + 0.35 * point_probability
    np.testing.assert_allclose(probability, expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(probability.sum(1), 1.0, rtol=1e-9)

    # the default blend adds the entries as words: the exact wording votes for its code only;
    # a text sharing no word with any entry keeps the embedding and points, renormalised
    hybrid = Classifier.from_checkpoint(copy, memory_config=no_base)
    _, probability = hybrid.scores(texts)
    lexical = np.zeros(n_six)
    lexical[columns[0]] = 1.0
    np.testing.assert_allclose(
        probability[0],
        0.55 * plain_probability[0] + 0.25 * point_probability[0] + 0.2 * lexical,
        rtol=1e-5,
        atol=1e-8,  # the other entry's lexical share is exp(-1 / 0.05)
    )
    np.testing.assert_allclose(
        probability[2], (0.55 * plain_probability[2] + 0.25 * point_probability[2]) / 0.8, rtol=1e-5
    )
    with pytest.raises(ValueError, match="texts of the query points"):
        hybrid.score_points(hybrid.embed([text]))

    only_memory = Classifier.from_checkpoint(
        copy, memory_config=MemoryConfig(weight=1.0, lexical_weight=0.0, base_weight=0.0)
    )
    best = only_memory.predict([text], top_k=3)[0]
    assert best[0].code == target and best[0].score > 0.5
    assert [p.score for p in best] == sorted((p.score for p in best), reverse=True)
    only_words = Classifier.from_checkpoint(
        copy, memory_config=MemoryConfig(weight=0.0, lexical_weight=1.0, base_weight=0.0)
    )
    assert only_words.predict([text], top_k=1)[0][0].code == target
    unmatched = [p.code for p in only_words.predict(["qqq xyzzy"], top_k=n_six)[0]]
    assert unmatched == ranked_for(plain, "qqq xyzzy")  # no shared word: the embedding alone
    off = Classifier.from_checkpoint(
        copy, memory_config=MemoryConfig(weight=0.0, lexical_weight=0, base_weight=0)
    )
    assert off.memory_size == 0 and off.predict([text], top_k=n_six)[0] == ranked

    save_stage_memory(copy, pl.DataFrame({"text": ["x"], "code": ["999999"]}))
    with pytest.raises(ValueError, match="999999"):
        Classifier.from_checkpoint(copy)


def test_base_part_is_the_frozen_models_cosine_vote(stage, tmp_path):
    """The base part, by hand: the bare tiny BERT (adapters off) embeds each six-digit code's
    title + description and each memory entry; a softmax of cosine / 0.05 over them, summed
    per code, is mixed in at base_weight."""
    from naics_ml.evaluation.baselines import mean_pooled_embeddings
    from naics_ml.model.base import load_base_model, load_tokenizer
    from naics_ml.model.channels import code_texts

    folder, codes, model = stage
    copy = tmp_path / "stage"
    shutil.copytree(folder, copy)
    six = codes.sort("index").filter(pl.col("level") == 6)
    memory = pl.DataFrame({"text": ["zebra stripe painting"], "code": [six["code"][2]]})
    save_stage_memory(copy, memory)
    only = MemoryConfig(weight=0.0, lexical_weight=0.0)
    plain = Classifier.from_checkpoint(copy, memory_config=dataclasses.replace(only, base_weight=0))
    mixed = Classifier.from_checkpoint(
        copy, memory_config=dataclasses.replace(only, base_weight=0.4)
    )
    texts = ["zebra stripe painting", "gold mine company"]
    _, plain_probability = plain.scores(texts)
    _, probability = mixed.scores(texts)

    bare = load_base_model(model.config.base_model)  # the same weights, never adapted
    tokenizer = load_tokenizer(model.config.base_model)
    targets = mean_pooled_embeddings(code_texts(six) + memory["text"].to_list(), bare, tokenizer)
    queries = mean_pooled_embeddings(texts, bare, tokenizer)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    weights = torch.softmax(torch.as_tensor(queries @ targets.T, dtype=torch.float64) / 0.05, 1)
    base = weights[:, : six.height].numpy().copy()
    base[:, 2] += weights[:, six.height].numpy()
    np.testing.assert_allclose(probability, 0.6 * plain_probability + 0.4 * base, atol=1e-5)
    assert probability[0].argmax() == 2  # the exact remembered wording wins through the base
    # a prepared text starts from its cached (fp16) prefix: the same vector, to fp16 precision
    prepared = f"{six['title'][0]} company"
    assert prepared in model.prepared.text_ids
    np.testing.assert_allclose(
        model.encode_frozen([prepared]).numpy()[0],
        mean_pooled_embeddings([prepared], bare, tokenizer)[0]
        / np.linalg.norm(mean_pooled_embeddings([prepared], bare, tokenizer)[0]),
        atol=2e-3,
    )

    # saved with the stage's points: a reload reuses the vectors instead of re-encoding
    mixed.save_points(copy)
    reloaded = Classifier.from_checkpoint(copy, memory_config=mixed.memory_config)
    np.testing.assert_allclose(reloaded.scores(texts)[1], probability, atol=1e-9)


def test_saved_points_spare_embedding_until_the_stage_changes(stage, tmp_path, monkeypatch):
    folder, codes, _ = stage
    copy = tmp_path / "stage"
    shutil.copytree(folder, copy)
    six = six_digit_codes(codes)
    memory = pl.DataFrame({"text": ["wheat farm company", "coal mine"], "code": [six[0], six[-1]]})
    save_stage_memory(copy, memory)
    assert load_stage_points(copy) is None  # nothing saved yet
    fresh = Classifier.from_checkpoint(copy)
    saved = fresh.save_points(copy)
    assert saved.name == "points.pt" and not list(copy.glob("*.tmp*"))

    calls = []

    def counted(name: str, method):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return method(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(NaicsModel, "prepare", counted("prepare", NaicsModel.prepare))
    codes_method = NaicsModel.encode_all_codes
    monkeypatch.setattr(NaicsModel, "encode_all_codes", counted("codes", codes_method))
    reused = Classifier.from_checkpoint(copy)  # neither prepares nor embeds codes or memory
    assert calls == [] and reused.memory_size == 2
    torch.testing.assert_close(reused._points, fresh._points)
    texts = ["gold mine company", "dairy farm"]
    for a, b in zip(reused.scores(texts), fresh.scores(texts), strict=True):
        # "dairy farm" is also a code title: fresh (prepared) reads it from the prefix cache
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)

    # an edited memory makes the saved points stale: the classifier embeds afresh
    save_stage_memory(copy, memory.head(1))
    assert load_stage_points(copy) is None
    Classifier.from_checkpoint(copy)
    assert calls == ["prepare", "codes"]
    monkeypatch.undo()

    fresh.save_points(copy)  # a two-entry memory's points for a one-entry memory: re-embedded
    assert Classifier.from_checkpoint(copy).memory_size == 1
    state = torch.load(copy / "points.pt", weights_only=True)
    torch.save({**state, "codes": state["codes"][:-1]}, copy / "points.pt")
    with pytest.raises(ValueError, match="saved code points have shape"):
        Classifier.from_checkpoint(copy)
    assert Classifier.from_checkpoint(copy, reuse_points=False).memory_size == 1


def test_predictions_carry_confidence_fallback_evidence_and_warnings(stage, tmp_path):
    folder, codes, _ = stage
    copy = tmp_path / "stage"
    shutil.copytree(folder, copy)
    six = codes.filter(pl.col("level") == 6)
    memory = pl.DataFrame(
        {
            "text": ["wheat farm company", "wheat growers", "big wheat fields", "coal digging"],
            "code": [six["code"][0]] * 3 + [six["code"][4]],
            "kind": ["train", "examples", "crossref", "train"],  # crossref is no evidence
        }
    )
    save_stage_memory(copy, memory)
    from naics_ml.inference.calibration import Calibration, save_calibration

    save_calibration(copy, Calibration(temperature=2.0))
    classifier = Classifier.from_checkpoint(copy, memory_config=MemoryConfig(base_weight=0.0))
    (ranked,) = classifier.predict(["wheat farm company"], top_k=3, min_confidence=0.3)
    from naics_ml.inference.calibration import calibrate

    _, all_probs = classifier.scores(["wheat farm company"])
    expected = calibrate(all_probs, 2.0)[0]  # p^(1/2) renormalised over every candidate
    columns = list(classifier.six_digit_codes)
    for p in ranked:
        assert p.confidence == pytest.approx(expected[columns.index(p.code)])
        assert p.score == pytest.approx(all_probs[0, columns.index(p.code)])
    wheat = next(p for p in ranked if p.code == six["code"][0])
    assert {e.text for e in wheat.evidence} == {"wheat farm company", "wheat growers"}
    assert [e.distance for e in wheat.evidence] == sorted(e.distance for e in wheat.evidence)
    assert all(e.code == wheat.code for e in wheat.evidence)
    # the fallback is one code for the text, an ancestor of (or equal to) a candidate
    assert len({(p.fallback_code, p.fallback_confidence) for p in ranked}) == 1
    assert ranked[0].fallback_code is not None
    assert any(p.code.startswith(ranked[0].fallback_code) for p in ranked)
    assert ranked[0].fallback_confidence >= 0.3
    assert (
        classifier.predict(["wheat farm company"], min_confidence=1.0)[0][0].fallback_code is None
    )


def test_cli_classifies_a_text_and_a_file(stage, tmp_path, capsys):
    from naics_assets.cli import main

    folder = str(stage[0])
    assert main(["classify", "wheat farm", "--model", folder, "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["rank", "code", "confidence", "title"]
    assert "fallback:" in out
    assert main(["classify", "wheat farm", "--model", folder, "--format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["rank"] for line in lines] == [1, 2, 3, 4, 5]
    assert {"code", "title", "confidence", "fallback_code", "evidence", "warnings"} <= set(lines[0])

    source = tmp_path / "in.csv"
    pl.DataFrame(
        {"id": ["007", "008", "009"], "desc": ["wheat farm", "  ", "gold mine"]}
    ).write_csv(source)
    target = tmp_path / "out.parquet"
    args = ["classify", "--model", folder, "--input", str(source), "--text-column", "desc"]
    assert main([*args, "--output", str(target), "--top-k", "2", "--quiet"]) == 0
    result = pl.read_parquet(target)
    assert result["id"].to_list() == ["007", "007", "008", "009", "009"]  # ids kept, as text
    assert result["rank"].to_list() == [1, 2, None, 1, 2]
    assert result.filter(pl.col("id") == "008")["error"].to_list() == ["text is blank"]
    assert result.filter(pl.col("id") != "008")["error"].null_count() == 4
    assert {"code", "title", "confidence", "fallback_code", "fallback_title"} <= set(result.columns)
    jsonl = tmp_path / "out.jsonl"
    assert main([*args, "--output", str(jsonl), "--quiet"]) == 0
    assert pl.read_ndjson(jsonl).height == 2 * 5 + 1


@pytest.mark.parametrize(
    ("content", "column", "message"),
    [
        ("id,desc\n1,wheat\n", "text", "no column 'text'"),
        ("id,desc\n", "desc", "no rows"),
        (None, "desc", "no such file"),
    ],
)
def test_cli_rejects_bad_input_and_writes_nothing(
    stage, tmp_path, capsys, content, column, message
):
    from naics_assets.cli import main

    source = tmp_path / "in.csv"
    if content is not None:
        source.write_text(content)
    target = tmp_path / "out.csv"
    args = ["classify", "--model", str(stage[0]), "--input", str(source)]
    assert main([*args, "--text-column", column, "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(source) in err
    assert not target.exists() and not list(tmp_path.glob(".*tmp*"))


def test_cli_without_a_model_says_how_to_make_one(tmp_path, capsys):
    from naics_assets.cli import main

    assert main(["classify", "wheat", "--artifacts", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "serving.json" in err and "naics_embeddings" in err and "--stage NAME" in err
    assert (
        main(["classify", "wheat", "--artifacts", str(tmp_path), "--stage", "stage_03_hard"]) == 2
    )
    err = capsys.readouterr().err
    assert "dagster asset materialize" in err and "stage_03_hard" in err
    with pytest.raises(SystemExit):  # only the stage table's stages
        main(["classify", "wheat", "--stage", "../elsewhere"])
    assert "invalid choice: '../elsewhere'" in capsys.readouterr().err


def test_cli_serves_the_stage_validation_chose_under_naics_artifacts_dir(
    stage, tmp_path, capsys, monkeypatch
):
    """The default is ``serving.json``'s stage, found under NAICS_ARTIFACTS_DIR; ``--stage``
    picks another stage of the revision."""
    import shutil

    from naics_assets.cli import main
    from naics_ml.inference.serving import TunedBlend, choose_served_stage, save_blend
    from naics_ml.revision_folder import RevisionFolder
    from naics_ml.stage_table import STAGE_NAMES

    models = tmp_path / "artifacts" / "2022" / "models"
    for name, score in (("stage_01_easy", 0.3), ("stage_02_medium", 0.6), ("stage_03_hard", 0.5)):
        shutil.copytree(stage[0], models / name)
        save_blend(models / name, TunedBlend(MemoryConfig(), score, {}, score))
    assert choose_served_stage(RevisionFolder(models.parent), STAGE_NAMES)
    monkeypatch.setenv("NAICS_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    assert main(["classify", "wheat farm", "--format", "json"]) == 0
    assert f"model: {models / 'stage_02_medium'}" in capsys.readouterr().err
    assert main(["classify", "wheat farm", "--stage", "stage_03_hard", "--revision", "2022"]) == 0
    assert f"model: {models / 'stage_03_hard'}" in capsys.readouterr().err
    args = ["classify", "wheat farm", "--stage", "stage_03_hard", "--model", str(stage[0])]
    assert main(args) == 2
    assert "not both" in capsys.readouterr().err
