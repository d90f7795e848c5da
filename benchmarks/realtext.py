"""Real-text figures of the materialized stages, next to the index-entry and hierarchy ones.

    DAGSTER_HOME=$PWD NAICS_REALTEXT_DIR=$PWD/../shared/realtext python benchmarks/realtext.py

Reads each stage's ``metrics.json`` (written at the end of the stage, with the blend weights it
chose on validation data) and prints JSON: per stage the evaluation-only real-text set
(``realtext_*``: Boston, as ``predict`` ranks and by the embedding alone), the real-text
validation set (``realtext_val_*``), the index test split as ``predict`` ranks
(``memory_test_*``) and the hierarchy; the baselines once; and the stage that serves
``predict`` (best validation ``selection_score``). ``--reevaluate`` re-runs the evaluation
with the current code on the saved checkpoints (tuning the blend again, on validation data
only) instead of reading ``metrics.json``; ``--sectors`` adds per-sector hit@1 on the
evaluation set for the served stage; ``--without-base`` adds, per stage, the best blend
without the base model's vote (chosen on the same validation data) and its figures.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from naics_ml.revision_folder import RevisionFolder
from naics_ml.stage_table import STAGE_NAMES

HIERARCHY = ("recon_map", "parent_at_1", "spearman_within_sector", "spearman", "cophenetic")
BLEND = (
    "weight",
    "lexical_weight",
    "base_weight",
    "sector_weight",
    "subsector_weight",
    "group_weight",
)
REALTEXT = ("hit1", "hit5", "group_at_1", "sector_at_1")


def pick(metrics: dict[str, float], prefix: str, keys: tuple[str, ...]) -> dict[str, float]:
    return {k: round(metrics[prefix + k], 4) for k in keys if prefix + k in metrics}


def stage_report(metrics: dict[str, float]) -> dict[str, object]:
    return {
        "realtext": pick(metrics, "realtext_", REALTEXT),
        "realtext_embedding_alone": pick(metrics, "embedding_realtext_", REALTEXT),
        "realtext_val": pick(metrics, "realtext_val_", REALTEXT),
        "index_test_predict": pick(metrics, "memory_test_", ("top1", "top5", "mrr")),
        "index_test_embedding": pick(metrics, "test_", ("top1", "top5", "mrr")),
        "strict_test_predict": pick(metrics, "memory_strict_test_", ("top1", "top5")),
        "strict_test_count": metrics.get("strict_test_count"),
        "hierarchy": pick(metrics, "", HIERARCHY),
        "blend": pick(metrics, "blend_", BLEND),
        "selection_score": metrics.get("selection_score"),
    }


def reevaluate(artifacts: Path, stage: str) -> dict[str, float]:
    """The stage's evaluation, again, from its saved checkpoint (``naics_ml.stage``)."""
    import polars as pl

    from naics_assets.resources import RealTextSource
    from naics_ml.data.codes import six_digit_codes
    from naics_ml.model.config import ModelConfig
    from naics_ml.stage import StagePaths, StageRequest, reevaluate_stage, stage_model_config
    from naics_ml.stage_table import stage_spec
    from naics_ml.training.config import TrainConfig

    paths = StagePaths.in_revision(RevisionFolder(artifacts), stage_spec(stage))
    source = RealTextSource(local_dir=os.environ.get("NAICS_REALTEXT_DIR"))
    labelled = source.load(six_digit_codes(pl.read_parquet(paths.codes)).tolist())
    request = StageRequest(
        name=f"{artifacts.name}/{stage}",
        paths=paths,
        curriculum=Path(),
        model_config=stage_model_config(paths.out_dir, ModelConfig()),
        train_config=TrainConfig(),
        realtext=labelled,
    )
    return reevaluate_stage(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revision", default="2022")
    parser.add_argument("--reevaluate", action="store_true")
    parser.add_argument("--sectors", action="store_true")
    parser.add_argument("--without-base", action="store_true")
    args = parser.parse_args()
    if "DAGSTER_HOME" not in os.environ:
        raise SystemExit("set DAGSTER_HOME to the project root")
    artifacts = Path(os.environ["DAGSTER_HOME"]) / "storage" / "artifacts" / args.revision
    from naics_ml.inference.serving import choose_served_stage

    report: dict[str, object] = {"revision": args.revision, "stages": {}}
    metrics = {}
    for stage in STAGE_NAMES:
        if not (RevisionFolder(artifacts).stage(stage).metrics).is_file():
            continue
        if args.reevaluate:
            metrics[stage] = reevaluate(artifacts, stage)
        else:
            metrics[stage] = json.loads(
                (RevisionFolder(artifacts).stage(stage).metrics).read_text()
            )
        report["stages"][stage] = stage_report(metrics[stage])
        if args.without_base:
            report["stages"][stage]["without_base_vote"] = without_base(artifacts, stage)
    if metrics:
        last = metrics[list(metrics)[-1]]
        report["baselines"] = {
            name: {
                "realtext": pick(last, f"baseline_{name}_realtext_", REALTEXT),
                "realtext_val": pick(last, f"baseline_{name}_realtext_val_", REALTEXT),
                "index_test": pick(last, f"baseline_{name}_test_", ("top1", "top5", "mrr")),
                "hierarchy": pick(last, f"baseline_{name}_", HIERARCHY),
            }
            for name in ("zero_shot", "tfidf", "peer")
        }
        revision = RevisionFolder(artifacts)
        report["served_stage"] = choose_served_stage(revision, list(metrics)).name
    if args.sectors and metrics:
        report["sectors"] = sector_table(artifacts, report["served_stage"])
    print(json.dumps(report, indent=1))


def without_base(artifacts: Path, stage: str) -> dict[str, object]:
    """The stage's blend re-chosen on validation with the base model's vote off, and what it
    gives on every set: what the vote adds."""
    import dataclasses

    import polars as pl

    from naics_assets.resources import RealTextSource
    from naics_ml.evaluation import blend_tuning
    from naics_ml.evaluation.realtext_metrics import realtext_metrics
    from naics_ml.evaluation.stage_report import held_out
    from naics_ml.inference.classifier import Classifier
    from naics_ml.inference.entry_memory import MemoryConfig

    classifier = Classifier.from_checkpoint(
        RevisionFolder(artifacts).stage(stage).path, memory_config=MemoryConfig()
    )
    labelled = RealTextSource(local_dir=os.environ.get("NAICS_REALTEXT_DIR")).load(
        classifier.six_digit_codes.tolist()
    )
    entries = pl.read_parquet(RevisionFolder(artifacts).entries)
    sets = {}
    for name, split in (("index_val", "validation"), ("index_test", "test")):
        texts, truth = held_out(entries, split)
        sets[name] = (texts, [[c] for c in truth])
    for name, key in (("realtext_val", "val"), ("realtext", "eval")):
        sets[name] = (labelled[key]["text"].to_list(), labelled[key]["codes"].to_list())
    parts = {n: classifier.score_parts(classifier.embed(t), t) for n, (t, _) in sets.items()}
    truth = {n: c for n, (_, c) in sets.items()}
    validation = {n: parts[n] for n in ("index_val", "realtext_val")}
    grid = {**blend_tuning.GRID, "base_weight": (0.0,)}
    tuned = blend_tuning.tune_blend(
        validation, truth, classifier.six_digit_codes, grid=grid, level_grid={}
    )
    config = dataclasses.asdict(tuned.config)
    out: dict[str, object] = {"blend": config, "selection_score": round(tuned.score, 4)}
    for name in ("realtext", "index_test"):
        probability = parts[name].mix(tuned.config)
        found = realtext_metrics(probability, classifier.six_digit_codes, truth[name], "")
        out[name] = {k: round(found[k], 4) for k in ("hit1", "hit5", "sector_at_1")}
    return out


def sector_table(artifacts: Path, stage: str) -> dict[str, list[dict[str, object]]]:
    """Per-sector hit@1 of the served stage on the evaluation set, with the main confusion,
    and the most frequent (listed code -> predicted code) errors by 4-digit group."""
    import polars as pl

    from naics_assets.resources import RealTextSource
    from naics_ml.evaluation.realtext_metrics import sector_hit_rates
    from naics_ml.inference.classifier import Classifier

    classifier = Classifier.from_checkpoint(RevisionFolder(artifacts).stage(stage).path)
    source = RealTextSource(local_dir=os.environ.get("NAICS_REALTEXT_DIR"))
    frame = source.load(classifier.six_digit_codes.tolist())["eval"]
    _, probability = classifier.scores(frame["text"].to_list())
    truth = frame["codes"].to_list()
    table = sector_hit_rates(probability, classifier.six_digit_codes, truth)
    top = classifier.six_digit_codes[probability.argmax(axis=1)]
    errors = pl.DataFrame(
        {
            "listed_group": [codes[0][:4] for codes in truth],
            "predicted_group": [str(c)[:4] for c in top],
            "miss": [str(c) not in codes for c, codes in zip(top, truth, strict=True)],
        }
    ).filter(pl.col("miss") & (pl.col("listed_group") != pl.col("predicted_group")))
    confusions = (
        errors.group_by("listed_group", "predicted_group").len().sort("len", descending=True)
    ).head(12)
    return {
        "sectors": table.with_columns(pl.col("hit1").round(3)).to_dicts(),
        "top_group_confusions": confusions.to_dicts(),
    }


if __name__ == "__main__":
    main()
