"""The whole chain through the three stages and the embeddings, on the slice of the real 2022
workbooks (sectors 22 and 55) with a tiny random BERT saved to disk as the base model."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch

from naics_assets.assets.census import census_workbooks
from naics_assets.assets.codes import naics_codes, naics_index_entries
from naics_assets.assets.distances import naics_distances
from naics_assets.assets.embeddings import naics_embeddings
from naics_assets.assets.stages import STAGE_ASSETS
from naics_assets.assets.triplets import naics_triplets
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, CensusSource, RealTextSource
from naics_assets.tracking import MlflowTracker
from naics_ml.data.index_split import normalize_text
from naics_ml.evaluation.metrics import METRIC_KEYS
from naics_ml.inference.classifier import Classifier
from naics_ml.inference.entry_memory import MemoryConfig
from naics_ml.inference.serving import served_stage_dir
from naics_ml.inference.stage_points import load_stage_points
from naics_ml.revision_folder import RevisionFolder
from naics_ml.stage_table import stage_spec
from naics_ml.training.checkpoint import load_checkpoint

from .conftest import REALTEXT_ROOT, metadata_of
from .tiny import save_tiny_bert

ASSETS = [
    census_workbooks,
    naics_index_entries,
    naics_codes,
    naics_distances,
    naics_triplets,
    *STAGE_ASSETS.values(),
    naics_embeddings,
]
STAGES = ("stage_01_easy", "stage_02_medium", "stage_03_hard")  # the table's, spelled out
MACHINE = {"preset": "cpu", "device": "auto", "precision": "float32"}
METRICS = METRIC_KEYS


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def stage_config(steps: int, model: dict | None = None) -> dict:
    config = {
        "steps": steps,
        "batch_size": 4,
        "query_batch_size": 4,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "validation_every": 2,
        "log_every": 1,
    }
    return {"config": config | ({"model": model} if model else {})}


def chain_model(tiny_base: Path) -> dict:
    return {"base_model": str(tiny_base), "embedding_dim": 8, "lora_layers": 1, "lora_r": 4}


@pytest.fixture(scope="module")
def chain_instance():
    """The Dagster instance the chain materialized in (its events name each stage's run)."""
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(revision_partitions.name, ["2022"])
        yield instance


def chain_resources(slice_root: Path, root: Path) -> dict:
    return {
        "census": CensusSource(local_dir=str(slice_root)),
        "store": ArtifactStore(root=str(root / "artifacts")),
        "mlflow": MlflowTracker(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"),
        "realtext": RealTextSource(local_dir=str(REALTEXT_ROOT)),
    }


@pytest.fixture(scope="module")
def chain(
    slice_root: Path, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory, chain_instance
):
    root = tmp_path_factory.mktemp("chain")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    model = chain_model(tiny_base)
    run_config = {
        "ops": {
            "naics_triplets": {"config": {"cross_sector_k": 4, "workers": 1}},
            "stage_01_easy": stage_config(4, model),
            # the launchpad's machine fields, given: the cpu preset, the device resolved here
            "stage_02_medium": {"config": stage_config(4)["config"] | MACHINE},
            "stage_03_hard": stage_config(4),
        }
    }
    torch.set_num_threads(1)
    result = dg.materialize(
        ASSETS,
        partition_key="2022",
        resources=chain_resources(slice_root, root),
        run_config=run_config,
        instance=chain_instance,
        raise_on_error=True,
    )
    return result, root, uri


def test_the_three_stages_materialize_with_checkpoints_and_metrics(chain) -> None:
    result, _, _ = chain
    assert result.success
    for stage in STAGES:
        meta = metadata_of(result, stage)
        checkpoint = Path(meta["checkpoint"])
        assert checkpoint.is_file() and checkpoint.parent.name == stage
        state = load_checkpoint(checkpoint)
        assert state["complete"] and state["step"] == 4
        assert state["extra"]["stage"] == stage and state["extra"]["revision"] == "2022"
        assert set(METRICS) <= set(meta["all_metrics"])
        assert {f"baseline_tfidf_{m}" for m in METRICS} <= set(meta["all_metrics"])
        assert {f"baseline_zero_shot_{m}" for m in METRICS} <= set(meta["all_metrics"])
        assert (checkpoint.parent / "metrics.png").stat().st_size > 0
        assert {f"memory_test_{m}" for m in ("top1", "top5", "mrr")} <= set(meta["all_metrics"])


def test_each_stage_remembers_only_its_training_texts(chain) -> None:
    from naics_ml.data.realtext import EVAL_FILE, load_labelled_texts

    result, root, _ = chain
    entries = pl.read_parquet(root / "artifacts/2022/naics_index_entries.parquet")
    trained = entries.filter(pl.col("split").is_in(["train", "examples"])).select("text", "code")
    held_out = set(entries.filter(pl.col("split").is_in(["validation", "test"]))["key"])
    evaluation_only = set(load_labelled_texts(REALTEXT_ROOT / EVAL_FILE)["text"])
    for stage in STAGES:
        memory = pl.read_parquet(root / f"artifacts/2022/models/{stage}/memory.parquet")
        # the index entries it trained on, plus the extra queries (cross-references, ...)
        assert trained.join(memory, on=["text", "code"], how="anti").height == 0
        assert memory.height > trained.height > 0
        assert not {normalize_text(t) for t in memory["text"]} & held_out
        assert not set(memory["text"]) & evaluation_only
        kinds = metadata_of(result, stage)["training_queries"]
        assert {"crossref", "description", "realtext"} <= set(kinds)


def test_each_stage_reports_real_text_and_strict_test_metrics_and_its_blend(chain) -> None:
    result, root, _ = chain
    for stage in STAGES:
        metrics = metadata_of(result, stage)["all_metrics"]
        for prefix in ("realtext_", "realtext_val_", "embedding_realtext_"):
            assert {f"{prefix}{k}" for k in ("hit1", "hit5", "group_at_1", "sector_at_1")} <= set(
                metrics
            )
        assert {"baseline_zero_shot_realtext_hit1", "baseline_tfidf_realtext_hit1"} <= set(metrics)
        assert metrics["strict_test_count"] > 0
        assert {"strict_test_top1", "memory_strict_test_top1", "selection_score"} <= set(metrics)
        blend = json.loads((root / f"artifacts/2022/models/{stage}/blend.json").read_text())
        assert blend["selection_score"] == pytest.approx(metrics["selection_score"])
        assert "realtext_hit1" in metadata_of(result, stage)["evaluation"]


def test_each_stage_reports_sectors_the_no_training_peer_and_the_cophenetic_correlation(
    chain,
) -> None:
    import mlflow

    from naics_ml.data.realtext import EVAL_FILE, load_labelled_texts

    result, root, uri = chain
    codes = pl.read_parquet(root / "artifacts/2022/naics_codes.parquet")["code"].to_list()
    evaluation = load_labelled_texts(REALTEXT_ROOT / EVAL_FILE, known_codes=codes)
    for stage in STAGES:
        meta = metadata_of(result, stage)
        metrics = meta["all_metrics"]
        for prefix in ("", "baseline_zero_shot_", "baseline_tfidf_"):
            assert -1.0 <= metrics[f"{prefix}cophenetic"] <= 1.0
        for prefix in ("realtext_", "realtext_val_"):
            assert {f"baseline_peer_{prefix}{k}" for k in ("hit1", "hit5", "sector_at_1")} <= set(
                metrics
            )
        assert "baseline_peer_test_top1" in metrics
        # every row of the evaluation set (the slice's codes: sectors 22 and 55), by sector
        rows = {k: v for k, v in metrics.items() if k.startswith("realtext_sector_")}
        assert sum(v for k, v in rows.items() if k.endswith("_rows")) == evaluation.height > 0
        assert {k[:-5] for k in rows if k.endswith("_rows")} <= {
            "realtext_sector_22",
            "realtext_sector_55",
        }
        assert "| sector |" in meta["by_sector"] and "peer hit@1" in meta["by_sector"]
        assert "no-training peer" in meta["evaluation"] and "cophenetic" in meta["evaluation"]
        assert (root / f"artifacts/2022/models/{stage}/levels.pt").is_file()
        assert "blend_sector_weight" in metrics
        logged = mlflow.MlflowClient(uri).get_run(meta["mlflow_run_id"]).data.metrics
        by_sector = [k for k in metrics if k.startswith("realtext_val_sector_")]
        assert by_sector and all(logged[k] == metrics[k] for k in by_sector)
    # a stage loads its level heads where its blend weighs them, and not otherwise
    folder = root / "artifacts/2022/models/stage_01_easy"
    weighed = any(
        json.loads(folder.joinpath("blend.json").read_text())["memory_config"].get(k)
        for k in ("sector_weight", "subsector_weight", "group_weight")
    )
    assert (Classifier.from_checkpoint(folder).level_heads is not None) == weighed
    with_levels = Classifier.from_checkpoint(folder, memory_config=MemoryConfig(group_weight=0.5))
    assert with_levels.level_heads is not None
    assert (
        with_levels.score_parts(
            with_levels.embed(["water utility"]), ["water utility"]
        ).levels.shape[1]
        == 3
    )


def test_each_stage_starts_from_the_previous_one(chain) -> None:
    result, root, _ = chain
    first = load_checkpoint(root / "artifacts/2022/models/stage_01_easy")
    second = load_checkpoint(root / "artifacts/2022/models/stage_02_medium")
    assert second["model_config"] == first["model_config"]  # inherited, not re-configured
    assert first["model_config"]["line_channels"] == ["examples"]  # launchpad default
    assert metadata_of(result, "stage_02_medium")["init_from"].endswith("stage_01_easy")
    assert metadata_of(result, "stage_03_hard")["init_from"].endswith("stage_02_medium")
    assert metadata_of(result, "stage_01_easy")["init_from"] == "base model"


def test_later_stages_reuse_the_first_stage_prefix_cache(chain) -> None:
    _, root, _ = chain
    # one base model, one set of texts: one file, written by stage 1 and loaded by stages 2-3
    (cache,) = (root / "artifacts/2022/prefix_cache").glob("*.pt")
    assert len(cache.stem) == 64 and cache.stat().st_size > 0
    # written before stage 1's checkpoint and never again: a rebuild by a later stage would
    # have replaced the file (atomic rename) after stage 1 finished
    first = root / "artifacts/2022/models/stage_01_easy/checkpoint.pt"
    assert cache.stat().st_mtime_ns < first.stat().st_mtime_ns


def test_mlflow_holds_one_run_per_stage(chain) -> None:
    from mlflow.tracking import MlflowClient

    result, _, uri = chain
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("naics-gemini")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"2022/{s}" for s in STAGES]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["dagster_run_id"] == result.run_id
        assert run.data.tags["naics_revision"] == "2022"
        meta = metadata_of(result, run.data.tags["stage"])  # its link opens this very run
        assert meta["mlflow_run_id"] == run.info.run_id
        assert meta["mlflow_run"] == (
            f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
        )
        assert run.data.metrics["realtext_hit1"] == pytest.approx(
            meta["all_metrics"]["realtext_hit1"]
        )
        assert run.data.params["train.steps"] == "4"
        assert run.data.tags["preset"] == "cpu" and run.data.params["train.precision"] == "float32"
        medium = run.data.tags["stage"] == "stage_02_medium"
        assert run.data.params["train.device"] == ("auto" if medium else "cpu")
        assert "curriculum.name" in run.data.params
        assert {"spearman", "spearman_ceiling", "test_mrr", "baseline_tfidf_test_mrr"} <= set(
            run.data.metrics
        )
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == [1, 2, 3, 4]
        for name in (
            "lr",
            "balance_loss",
            "hierarchy_loss",
            "skipped_steps",
            "expert_utilization_0",
            "val_loss",
        ):
            assert client.get_metric_history(run.info.run_id, name), name
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.png", "metrics.json", "confidence.png"} <= artifacts
        for name in ("test_ece_raw", "test_ece", "test_fallback_accuracy", "test_fallback_depth"):
            assert name in run.data.metrics and name in meta["all_metrics"], name
        assert "test_selective_top1_cov050" in run.data.metrics
        assert "| 50% |" in meta["confidence"] and "ECE" in meta["confidence"]
        assert any(a.endswith(".yaml") for a in artifacts)
    # the three stage runs carry the same parameter and metric names (MLflow comparison)
    assert len({frozenset(r.data.params) for r in runs}) == 1
    assert len({frozenset(r.data.metrics) for r in runs}) == 1
    # naics_embeddings adds its picture to the stage_03_hard run, whose metrics hold the levels
    (final,) = [r for r in runs if r.data.tags["stage"] == "stage_03_hard"]
    assert metadata_of(result, "naics_embeddings")["mlflow_stage_run"] == final.info.run_id
    assert "naics_embeddings_disk.png" in {a.path for a in client.list_artifacts(final.info.run_id)}
    assert "level_6_parent_share" in client.get_run(final.info.run_id).data.metrics


def test_embeddings_cover_every_code_and_the_classifier_predicts(chain) -> None:
    result, root, _ = chain
    table = pl.read_parquet(root / "artifacts/2022/naics_embeddings.parquet")
    codes = pl.read_parquet(root / "artifacts/2022/naics_codes.parquet")
    assert table["code"].to_list() == codes["code"].to_list()
    meta = metadata_of(result, "naics_embeddings")
    assert meta["dagster/row_count"] == codes.height
    # the Poincare ball: the same points, at norm tanh(r / 2) for curvature 1
    ball = np.linalg.norm(np.array(table["poincare"].to_list()), axis=1)
    np.testing.assert_allclose(ball, np.tanh(table["radius"].to_numpy() / 2), rtol=1e-9)
    picture = root / "artifacts/2022/naics_embeddings_disk.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and meta["picture"] == str(picture)
    assert meta["poincare_disk"].startswith("![") and "base64," in meta["poincare_disk"]
    for level in (3, 4, 5, 6):
        assert 0.0 <= meta[f"level_{level}_parent_share"] <= 1.0
        assert meta[f"level_{level}_mean_radius"] > 0
    assert "level_2_parent_share" not in meta and "| 6 |" in meta["levels"]
    stage_dir = root / "artifacts/2022/models/stage_03_hard"
    saved = load_stage_points(stage_dir)  # written by the stage asset, matching its files
    assert saved is not None and saved.memory is not None
    classifier = Classifier.from_checkpoint(stage_dir)
    torch.testing.assert_close(classifier._points, saved.codes)
    [predictions] = classifier.predict(["electric power distribution"], top_k=3)
    assert len(predictions) == 3
    assert all(len(p.code) == 6 and p.code[:2] in {"22", "55"} for p in predictions)

    assert [p.score for p in predictions] == sorted((p.score for p in predictions), reverse=True)
    memory = pl.read_parquet(stage_dir / "memory.parquet")
    assert classifier.memory_size in (0, memory.height)  # 0 when the tuned blend drops it


def test_the_stage_best_on_validation_serves_predict(chain) -> None:
    result, root, _ = chain
    models = root / "artifacts/2022/models"
    scores = {
        s: json.loads((models / s / "blend.json").read_text())["selection_score"] for s in STAGES
    }
    served = metadata_of(result, "naics_embeddings")["served_stage"]
    assert scores[served] == max(scores.values())
    assert served_stage_dir(RevisionFolder(models.parent)) == models / served


def test_stage_checks_run_on_each_stage_metrics(chain) -> None:
    from naics_assets.definitions import defs
    from naics_ml.evaluation.stage_report import HEADLINE

    result, root, _ = chain
    graph = defs.resolve_asset_graph()
    declared = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    evaluations = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }
    for stage in STAGES:
        assert {(stage, "beats_baselines"), (stage, "experts_balanced")} <= declared
        metrics = json.loads((root / f"artifacts/2022/models/{stage}/metrics.json").read_text())
        beats = evaluations[(stage, "beats_baselines")]
        # known values: the metrics where the 4-step tiny model is not ahead of both baselines
        behind = [
            name
            for name in HEADLINE
            if metrics[name]
            <= max(metrics[f"baseline_zero_shot_{name}"], metrics[f"baseline_tfidf_{name}"])
        ]
        assert beats.metadata["not_ahead"].value == behind
        assert beats.passed == (behind == [])
        assert beats.severity == dg.AssetCheckSeverity.ERROR
        experts = evaluations[(stage, "experts_balanced")]
        assert experts.severity == dg.AssetCheckSeverity.WARN
        shares = experts.metadata["utilization"].value
        assert sorted(shares) == [f"expert_utilization_{i}" for i in range(4)]
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
        assert experts.passed == (min(shares.values()) >= 0.05)


def test_the_served_stage_is_the_registered_model(chain) -> None:
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    result, root, uri = chain
    assert all("registered_model" not in metadata_of(result, s) for s in STAGES)
    embeddings = metadata_of(result, "naics_embeddings")
    served = embeddings["served_stage"]
    assert embeddings["registered_model"] == "naics-gemini-classifier/1"
    assert embeddings["served_model_uri"] == "models:/naics-gemini-classifier@served-2022"
    client = MlflowClient(tracking_uri=uri)
    version = client.get_model_version_by_alias("naics-gemini-classifier", "served-2022")
    assert str(version.version) == "1" and version.tags["stage"] == served
    assert version.tags["naics_revision"] == "2022"
    assert version.tags["dagster_run_id"] == result.run_id
    assert version.run_id == metadata_of(result, served)["mlflow_run_id"]  # the stage's run
    run = client.get_run(version.run_id).info  # ended when the stage did, not at registration
    assert run.status == "FINISHED" and run.end_time < version.creation_timestamp
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/naics-gemini-classifier/1")
    out = model.predict(pd.DataFrame({"text": ["electric power plant", "water utility"]}))
    assert list(out["text"]) == ["electric power plant"] * 5 + ["water utility"] * 5
    assert list(out["rank"][:5]) == [1, 2, 3, 4, 5]
    codes = set(pl.read_parquet(root / "artifacts" / "2022" / "naics_codes.parquet")["code"])
    assert set(out["code"]) <= codes and (out["code"].str.len() == 6).all()
    assert {"confidence", "fallback_code", "evidence", "warning"} <= set(out.columns)


def test_a_stage_can_be_evaluated_again_without_training(chain) -> None:
    from naics_ml.model.config import ModelConfig
    from naics_ml.stage import StagePaths, StageRequest, reevaluate_stage, stage_model_config
    from naics_ml.training.config import TrainConfig

    result, root, _ = chain
    revision = RevisionFolder(root / "artifacts" / "2022")
    paths = StagePaths.in_revision(revision, stage_spec("stage_02_medium"))
    checkpoint_bytes = paths.out_dir.joinpath("checkpoint.pt").read_bytes()
    request = StageRequest(
        name="2022/stage_02_medium",
        paths=paths,
        curriculum=Path(),
        model_config=stage_model_config(paths.out_dir, ModelConfig()),
        train_config=TrainConfig(),
    )
    metrics = reevaluate_stage(request)
    asset = metadata_of(result, "stage_02_medium")["all_metrics"]
    core = {"test_top1", "memory_test_top1", "recon_map", "test_ece", "selection_score"}
    assert core <= set(metrics)
    assert metrics["test_top1"] == pytest.approx(asset["test_top1"], abs=1e-6)  # same model
    assert metrics["train_wall_s"] == asset["train_wall_s"]
    assert paths.out_dir.joinpath("checkpoint.pt").read_bytes() == checkpoint_bytes
    assert json.loads(paths.out_dir.joinpath("metrics.json").read_text()) == metrics


def test_mlflow_models_serve_answers_a_request(chain) -> None:
    """``mlflow models serve --env-manager local`` on the registered version, on 127.0.0.1."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    _, _, uri = chain
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = [
        f"{bin_dir}/mlflow",
        "models",
        "serve",
        "-m",
        "models:/naics-gemini-classifier@served-2022",
    ]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow models serve exited"
                assert time.monotonic() < deadline, "the server did not start within a minute"
                time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"text": "electric power plant"}]}).encode()
        request = urllib.request.Request(
            f"{base}/invocations", body, {"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        rows = answer["predictions"]
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        assert all(len(r["code"]) == 6 and r["text"] == "electric power plant" for r in rows)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_runs_command_lines_up_the_latest_run_of_each_stage(chain, tmp_path, capsys) -> None:
    from mlflow.tracking import MlflowClient

    from naics_assets.cli import main

    _, _, uri = chain
    assert main(["runs", "--tracking-uri", uri]) == 0
    header, rule, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == list(STAGES) and set(rule) <= {"-", " "}
    cells = {row.split()[0]: row.split()[1:] for row in rows}
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("naics-gemini").experiment_id]
    )
    by_stage = {r.data.tags["stage"]: r for r in runs}
    for stage, cell in zip(STAGES, cells["parent_at_1"], strict=True):
        assert cell == f"{by_stage[stage].data.metrics['parent_at_1']:.3f}"
    assert cells["run"] == [by_stage[s].info.run_id[:8] for s in STAGES]
    assert cells["revision"] == ["2022"] * 3 and all(c != "n/a" for c in cells["test_ece"])
    assert main(["runs", "--tracking-uri", uri, "--format", "json", "--revision", "2022"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["stage"] for r in records] == list(STAGES) and records[0]["wall_s"] > 0
    # another revision, or an empty store: no table, a hint on how to make runs
    assert main(["runs", "--tracking-uri", uri, "--revision", "2017"]) == 1
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["runs", "--tracking-uri", empty]) == 1
    assert "dagster asset materialize" in capsys.readouterr().err


def test_a_non_final_stage_chosen_on_validation_serves_the_cli_and_the_registered_model(
    chain, chain_instance, slice_root, capsys
) -> None:
    """Validation's choice (the blend scores) decides what ``classify`` and
    ``models:/naics-gemini-classifier/latest`` serve; an unchanged choice registers nothing."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from naics_assets.cli import main

    result, root, uri = chain
    models = root / "artifacts/2022/models"
    before = metadata_of(result, "naics_embeddings")["served_stage"]
    chosen = "stage_02_medium" if before == "stage_01_easy" else "stage_01_easy"
    blend_file = models / chosen / "blend.json"
    saved = blend_file.read_text()
    blend = json.loads(saved)  # validation prefers ``chosen``: its score above the others
    blend["selection_score"] = 1.0 + max(
        json.loads((models / s / "blend.json").read_text())["selection_score"] for s in STAGES
    )
    blend_file.write_text(json.dumps(blend))

    def materialize_embeddings() -> dict:
        again = dg.materialize(
            [naics_embeddings],
            partition_key="2022",
            resources=chain_resources(slice_root, root),
            instance=chain_instance,
        )
        return metadata_of(again, "naics_embeddings")

    try:
        metadata = materialize_embeddings()
        assert metadata["served_stage"] == chosen and metadata["embedding_stage"] == STAGES[-1]
        assert metadata["registered_model"] == "naics-gemini-classifier/2"
        text = "electric power plant"
        expected = Classifier.from_checkpoint(models / chosen, precision="auto").predict([text])
        expected_codes = [p.code for p in expected[0]]

        args = ["classify", text, "--artifacts", str(root / "artifacts"), "--format", "json"]
        assert main(args) == 0
        out = capsys.readouterr()
        assert f"model: {models / chosen}" in out.err
        assert [json.loads(line)["code"] for line in out.out.splitlines()] == expected_codes

        client = MlflowClient(tracking_uri=uri)
        version = client.get_model_version("naics-gemini-classifier", "2")
        assert version.tags["stage"] == chosen
        assert float(version.tags["selection_score"]) == pytest.approx(blend["selection_score"])
        assert version.run_id == metadata_of(result, chosen)["mlflow_run_id"]
        mlflow.set_tracking_uri(uri)
        latest = mlflow.pyfunc.load_model("models:/naics-gemini-classifier/latest")
        frame = latest.predict(pd.DataFrame({"text": [text]}))
        assert list(frame["code"]) == expected_codes

        assert materialize_embeddings()["registered_model"] == "naics-gemini-classifier/2"
    finally:
        blend_file.write_text(saved)


def test_a_reviewed_file_trains_the_next_stage_and_recodes(
    chain, slice_root, tiny_base, tmp_path
) -> None:
    """The feedback loop on a copy of the chain: a records file dropped in and coded, its review
    file filled in and saved as labels, the labels sensor, the next stage trained on them, the
    records coded again with a change report."""
    import shutil

    from naics_assets.assets.labels import labels_sensor, reviewed_labels
    from naics_assets.assets.records import business_codes, records_partitions
    from naics_assets.resources import RecordsSource

    root = tmp_path
    shutil.copytree(chain[1] / "artifacts", root / "artifacts")
    records, labels = root / "records", root / "labels"
    records.mkdir()
    (records / "records.yaml").write_text("text_column: activity\nid_column: vendor\n")
    activities = ["we run an electric power plant", "holding company of two banks"] * 3
    activities += ["natural gas distribution to homes", "corporate head office", ""]
    frame = pl.DataFrame({"vendor": [f"V{i}" for i in range(9)], "activity": activities})
    frame.write_csv(records / "vendors.csv")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(revision_partitions.name, ["2022"])
    instance.add_dynamic_partitions(records_partitions.name, ["vendors.csv"])
    resources = chain_resources(slice_root, root) | {
        "records": RecordsSource(local_dir=str(records), labels_dir=str(labels))
    }
    key = dg.MultiPartitionKey({"revision": "2022", "records_file": "vendors.csv"})

    def code() -> dict:
        config = {"min_confidence": 1.0, "max_low_confidence_share": 1.0}  # every row reviewed
        coded = dg.materialize(
            [business_codes],
            partition_key=key,
            resources=resources,
            instance=instance,
            run_config={"ops": {"business_codes": {"config": config}}},
        )
        return metadata_of(coded, "business_codes")

    first = code()
    review = pl.read_csv(first["review_file"], infer_schema=False)
    assert review.height == 8  # every row with a text
    reviewed = review.with_columns(
        pl.when(pl.col("id") == "V0")
        .then(pl.lit("999999"))  # a slip of the reviewer: not a code
        .otherwise(pl.col("candidate_1_code"))
        .alias("reviewed_code")
    )
    labels.mkdir()
    saved = Path(first["review_file"]).name  # vendors.csv.review.csv
    reviewed.write_csv(labels / saved)

    context = dg.build_sensor_context(instance=instance, resources=resources)
    (request,) = labels_sensor(context).run_requests
    assert request.partition_key == "2022"
    checked = dg.materialize(
        [reviewed_labels], partition_key="2022", resources=resources, instance=instance
    )
    meta = metadata_of(checked, "reviewed_labels")
    assert "unknown code 999999 (line 2)" in meta["files"]
    # four distinct reviewed texts (V0 skipped; equal texts once), split between train and val
    assert meta["train_rows"] + meta["validation_rows"] == 4
    assert meta["train_rows"] > 0

    trained = dg.materialize(
        [STAGE_ASSETS["stage_01_easy"]],
        partition_key="2022",
        resources=resources,
        instance=instance,
        run_config={"ops": {"stage_01_easy": stage_config(4, chain_model(tiny_base))}},
    )
    stage_meta = metadata_of(trained, "stage_01_easy")
    assert stage_meta["reviewed_labels"] == {saved: meta["train_rows"]}
    before = metadata_of(chain[0], "stage_01_easy")["training_queries"]
    assert stage_meta["training_queries"]["realtext"] == (before["realtext"] + meta["train_rows"])

    second = code()
    changes = [second[f"rows_{k}"] for k in ("changed", "unchanged", "new")]
    assert sum(changes) == 9 and changes[2] == 0
    assert second["model"].startswith(
        json.loads((root / "artifacts/2022/models/serving.json").read_text())["stage"]
    )
