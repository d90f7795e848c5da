"""What serving several stages together buys over the one validation chose, and what it costs.

    DAGSTER_HOME=$PWD NAICS_REALTEXT_DIR=$PWD/../shared/realtext python benchmarks/ensemble.py

Each materialized stage of ``--revision`` scores the sets as it is served (its own blend, level
heads and all: ``Classifier.scores``); the ensemble mixes the stages' probabilities, either
linearly (``sum w_s p_s``) or log-linearly (``prod p_s ** w_s``, renormalised), with weights
on a simplex grid of step ``--step``. The weights and the mixing are chosen on the validation
sets (mean hit@1 of the index ``validation`` split and Maryland validation, the stages'
selection score); the index ``test`` split and Boston are reported for information only.
The stages' own blends were chosen on the same validation sets, so every selection score here
is a little optimistic, the single stages' as much as the ensemble's.
Prints JSON: each stage alone, the chosen ensemble, the grid's best points, and the seconds
each stage took to score all the texts (an ensemble costs their sum when its stages run
separately).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
from reranker import labelled_sets

from naics_ml.revision_folder import RevisionFolder
from naics_ml.stage_table import STAGE_NAMES

CHOOSING = ("index_val", "maryland_val")
INFORMATION = ("index_test", "boston_info_only")


def stage_probabilities(stage_dir: Path, sets: dict) -> tuple[dict, float, list[str]]:
    """(set name -> probabilities (n, codes), seconds to score them all, candidate codes)."""
    from naics_ml.inference.classifier import Classifier

    classifier = Classifier.from_checkpoint(stage_dir)
    start = time.perf_counter()
    probs = {name: classifier.scores(texts)[1] for name, (texts, _) in sets.items()}
    return probs, time.perf_counter() - start, classifier.six_digit_codes.tolist()


def mix(probs: list[np.ndarray], weights: tuple[float, ...], mode: str) -> np.ndarray:
    """The stages' probabilities mixed linearly or log-linearly (rows sum to 1)."""
    if mode == "linear":
        return sum(w * p for w, p in zip(weights, probs, strict=True) if w > 0)
    log = sum(w * np.log(np.maximum(p, 1e-300)) for w, p in zip(weights, probs, strict=True))
    log -= log.max(axis=1, keepdims=True)
    out = np.exp(log)
    return out / out.sum(axis=1, keepdims=True)


def simplex(count: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``count`` non-negative multiples of ``step`` summing to 1."""
    units = round(1 / step)
    points = itertools.product(range(units + 1), repeat=count)
    return [tuple(u / units for u in p) for p in points if sum(p) == units]


def set_metrics(probability: np.ndarray, truth: list[list[str]], codes: list[str]) -> dict:
    from naics_ml.evaluation.realtext_metrics import realtext_metrics

    found = realtext_metrics(probability, codes, truth, "")
    return {k: round(found[k], 4) for k in ("hit1", "hit5", "sector_at_1")}


def evaluate(probs: dict, sets: dict, codes: list[str]) -> dict:
    """Per set metrics and the selection score of one mixed probability per set."""
    row = {name: set_metrics(probs[name], sets[name][1], codes) for name in sets}
    row["selection_score"] = round(float(np.mean([row[n]["hit1"] for n in CHOOSING])), 4)
    return row


def scored_sets(folder: RevisionFolder, codes: list[str]) -> dict:
    """name -> (texts, true codes): the validation sets, then the information-only ones."""
    import polars as pl

    from naics_ml.evaluation.stage_report import held_out

    named = labelled_sets(folder, codes, 0)
    sets = {name: named[name] for name in (*CHOOSING, "boston_info_only")}
    texts, test_codes = held_out(pl.read_parquet(folder.entries), "test")
    sets["index_test"] = (texts, [[c] for c in test_codes])
    return sets


def main() -> None:
    import polars as pl

    from naics_ml.data.codes import six_digit_codes
    from naics_ml.inference.serving import selection_scores

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revision", default="2022")
    parser.add_argument("--step", type=float, default=0.1, help="the weights' grid step")
    args = parser.parse_args()
    artifacts = Path(os.environ["DAGSTER_HOME"]) / "storage" / "artifacts"
    folder = RevisionFolder.under(artifacts, args.revision)
    stages = list(selection_scores(folder, STAGE_NAMES))  # the finished ones, in order
    if not stages:
        raise SystemExit(f"no finished stage under {folder.path}")
    codes = six_digit_codes(pl.read_parquet(folder.codes)).tolist()
    sets = scored_sets(folder, codes)
    per_stage, seconds = {}, {}
    for stage in stages:
        per_stage[stage], seconds[stage], candidates = stage_probabilities(
            folder.stage(stage).path, sets
        )
        if candidates != codes:
            raise SystemExit(f"{stage}: its candidate codes differ from the code table's")
    alone = {s: evaluate(per_stage[s], sets, codes) for s in stages}
    grid = []
    for mode in ("linear", "log"):
        for weights in simplex(len(stages), args.step):
            chosen = {n: mix([per_stage[s][n] for s in stages], weights, mode) for n in CHOOSING}
            hits = [set_metrics(chosen[n], sets[n][1], codes)["hit1"] for n in CHOOSING]
            grid.append((round(float(np.mean(hits)), 4), mode, weights))
    best = max(grid, key=lambda point: point[0])  # the first of equal scores
    _, mode, weights = best
    mixed = {n: mix([per_stage[s][n] for s in stages], weights, mode) for n in sets}
    texts = sum(len(t) for t, _ in sets.values())
    report = {
        "sets": {n: len(t) for n, (t, _) in sets.items()},
        "alone": alone,
        "chosen_on_validation": {
            "mode": mode,
            "weights": dict(zip(stages, weights, strict=True)),
            **evaluate(mixed, sets, codes),
        },
        "grid_best": [
            {"selection_score": score, "mode": m, "weights": list(w)}
            for score, m, w in sorted(grid, key=lambda point: -point[0])[:8]
        ],
        "scoring_s": {s: round(v, 1) for s, v in seconds.items()},
        "texts_per_s": {s: round(texts / v, 1) for s, v in seconds.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
