"""Evaluation of a trained stage next to its baselines, on the held-out ``test`` split.

The baselines (frozen base model, TF-IDF) do not depend on the stage, so they are computed once
per (revision data, base model) and cached as JSON next to the models; the cache key hashes the
code texts and the test entries, so changed data never reuses stale numbers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from naics_ml.io import atomic_write_text
from naics_ml.stage_folder import StageFolder

if TYPE_CHECKING:
    from naics_ml.model.lorentz import Lorentz

HEADLINE = ("test_top1", "test_top5", "test_mrr", "spearman", "recon_map", "parent_at_1")
MEMORY_PREFIX = (
    "memory_"  # retrieval with the Classifier's entry memory (naics_ml.inference.entry_memory)
)
EMBEDDING_PREFIX = "embedding_"  # real-text retrieval by the embedding alone
STRICT_SPLIT = "strict_test"  # test entries whose text no training line contains
_WORDS = re.compile(r"[a-z0-9]+")
BASELINES_VERSION = 2  # in the baseline cache key: a new metric makes cached figures stale


@dataclass(frozen=True)
class EvaluationSets:
    """What a stage is measured on besides the index ``test`` split: labelled real texts by
    metric prefix (``realtext_`` = the evaluation-only set, ``realtext_val_`` = the one that may
    choose settings; frames of ``naics_ml.data.realtext.load_labelled_texts``), and every line the
    model trained on (for the strict test subset)."""

    realtext: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    training_lines: Sequence[str] = ()


def evaluation_sets(
    codes: pl.DataFrame,
    queries: pl.DataFrame,
    splits: Sequence[str],
    realtext_eval: pl.DataFrame | None,
    realtext_val: pl.DataFrame | None,
) -> EvaluationSets:
    """The sets of a stage's evaluation: the real-text frames present (a missing one is
    skipped) and every line it trains on (``queries`` of ``splits`` and the code texts)."""
    from naics_ml.data.realtext import EVAL_PREFIX, VAL_PREFIX
    from naics_ml.data.training_texts import training_lines

    named = ((EVAL_PREFIX, realtext_eval), (VAL_PREFIX, realtext_val))
    return EvaluationSets(
        realtext={prefix: frame for prefix, frame in named if frame is not None},
        training_lines=training_lines(codes, queries, splits),
    )


def _words(text: str) -> str:
    return " ".join(_WORDS.findall(text.casefold()))


def strict_test_mask(test_texts: Sequence[str], training_lines: Sequence[str]) -> np.ndarray:
    """True for a test text whose words (lower case, in order) appear in no training line."""
    haystack = "\n" + "\n".join(f" {_words(line)} " for line in training_lines) + "\n"
    return np.array([f" {_words(t)} " not in haystack for t in test_texts], dtype=bool)


def realtext_model_metrics(
    classifier: object, realtext: Mapping[str, pl.DataFrame]
) -> dict[str, float]:
    """Per labelled set: ``<prefix>*`` as ``predict`` ranks (with hit@1 per sector),
    ``embedding_<prefix>*`` by the embedding alone
    (``naics_ml.evaluation.realtext_metrics``)."""
    from naics_ml.evaluation.realtext_metrics import realtext_metrics, sector_metrics

    metrics: dict[str, float] = {}
    candidates = classifier.six_digit_codes
    for prefix, frame in realtext.items():
        texts, truth = frame["text"].to_list(), frame["codes"].to_list()
        distance, probability = classifier.scores(texts)
        metrics |= realtext_metrics(probability, candidates, truth, prefix)
        metrics |= sector_metrics(probability, candidates, truth, prefix)
        metrics |= realtext_metrics(-distance, candidates, truth, EMBEDDING_PREFIX + prefix)
    return metrics


def held_out(entries: pl.DataFrame, split: str = "test") -> tuple[list[str], list[str]]:
    """(texts, true codes) of one split of the index entries."""
    rows = entries.filter(pl.col("split") == split)
    return rows["text"].to_list(), rows["code"].to_list()


def model_metrics(
    classifier: object,
    codes: pl.DataFrame,
    tree_distance: np.ndarray,
    entries: pl.DataFrame,
    sets: EvaluationSets = EvaluationSets(),
    stage_dir: Path | None = None,
) -> dict[str, float]:
    """Every metric of ``naics_ml.evaluation.metrics`` for a trained ``Classifier``, and the
    confidence figures of ``naics_ml.evaluation.confidence`` (plotted into ``stage_dir``).

    The ``memory_test_*`` retrieval metrics rank codes by the blended probability the
    Classifier predicts with; the plain ``test_*`` ones use the embedding alone. The same on the
    strict test subset (``strict_test_*``), and on each real-text set of ``sets``.
    """
    from naics_ml.evaluation.metrics import evaluate_embeddings, retrieval_metrics, spearman_ceiling

    texts, truth = held_out(entries)
    table = classifier.code_embeddings().sort("index")
    points = np.asarray(table["coordinates"].to_list(), dtype=np.float64)
    queries = classifier.embed(texts) if texts else None
    query_points = queries.double().numpy() if texts else np.zeros((0, 0))
    metrics = evaluate_embeddings(
        points, codes, tree_distance, query_points, truth, classifier.manifold
    )
    metrics |= _level_metrics(points, codes, classifier.manifold)
    if texts:  # the Classifier's blended scores, same test entries
        parts = classifier.score_parts(queries, texts)
        distance, probability = parts.distance, parts.mix(classifier.memory_config)
        metrics |= _confidence_metrics(classifier, probability, truth, texts, parts, stage_dir)
        six, truth = classifier.six_digit_codes, np.asarray(truth, dtype=object)
        metrics |= retrieval_metrics(-probability, six, truth, prefix=f"{MEMORY_PREFIX}test_")
        if sets.training_lines:
            strict = strict_test_mask(texts, sets.training_lines)
            metrics[f"{STRICT_SPLIT}_count"] = float(strict.sum())
            metrics |= retrieval_metrics(
                distance[strict], six, truth[strict], prefix=f"{STRICT_SPLIT}_"
            )
            metrics |= retrieval_metrics(
                -probability[strict], six, truth[strict], prefix=f"{MEMORY_PREFIX}{STRICT_SPLIT}_"
            )
    metrics |= realtext_model_metrics(classifier, sets.realtext)
    # what a perfect embedding could score (the tree distances are heavily tied)
    iu, ju = np.triu_indices(len(tree_distance), k=1)
    pairs = np.asarray(tree_distance)[iu, ju]
    sector = codes.sort("index")["sector"].to_numpy()
    metrics["spearman_ceiling"] = spearman_ceiling(pairs)
    metrics["spearman_within_sector_ceiling"] = spearman_ceiling(pairs[sector[iu] == sector[ju]])
    return metrics


def _level_metrics(points: np.ndarray, codes: pl.DataFrame, manifold: Lorentz) -> dict[str, float]:
    """Per level: mean radius and the share of codes whose parent is their nearest code of the
    parent level (``level_<n>_*``; the same figures ``naics_embeddings`` shows)."""
    from naics_ml.evaluation.metrics import (
        level_metrics,
        level_structure,
        lorentz_distance_matrix,
        lorentz_radius,
    )

    codes = codes.sort("index")
    levels = level_structure(
        lorentz_distance_matrix(points, points, manifold),
        codes["parent_index"].fill_null(-1).to_numpy(),
        codes["level"].to_numpy(),
        lorentz_radius(points, manifold),
    )
    return level_metrics(levels)


def _cache_key(
    codes: pl.DataFrame, entries: pl.DataFrame, base_model: str, sets: EvaluationSets
) -> str:
    from naics_ml.evaluation.baselines import peer_entries
    from naics_ml.model.channels import code_texts

    texts, truth = held_out(entries)
    known = peer_entries(entries)
    digest = hashlib.sha256(f"{BASELINES_VERSION}\x00{base_model}".encode())
    for item in [*code_texts(codes), *texts, *truth, *known["text"], *known["code"]]:
        digest.update(item.encode() + b"\x00")
    for prefix, frame in sorted(sets.realtext.items()):
        digest.update(prefix.encode() + b"\x01")
        for text, labels in frame.select("text", "codes").iter_rows():
            digest.update(f"{text}\x00{';'.join(labels)}\x00".encode())
    return digest.hexdigest()


def baseline_metrics(
    codes: pl.DataFrame,
    tree_distance: np.ndarray,
    entries: pl.DataFrame,
    base_model: str,
    cache_path: Path | None = None,
    sets: EvaluationSets = EvaluationSets(),
) -> dict[str, float]:
    """``baseline_zero_shot_*``, ``baseline_tfidf_*`` and ``baseline_peer_*`` metrics (index
    test split and the real-text sets), cached at ``cache_path``."""
    from naics_ml.evaluation.baselines import (
        peer_metrics,
        realtext_baseline_metrics,
        tfidf_metrics,
        zero_shot_metrics,
    )

    key = _cache_key(codes, entries, base_model, sets)
    if cache_path is not None and Path(cache_path).is_file():
        cached = json.loads(Path(cache_path).read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    texts, truth = held_out(entries)
    metrics = {
        **zero_shot_metrics(codes, tree_distance, texts, truth, base_model),
        **tfidf_metrics(codes, tree_distance, texts, truth),
        **realtext_baseline_metrics(codes, dict(sets.realtext), base_model),
        **peer_metrics(codes, entries, dict(sets.realtext), base_model),
    }
    if cache_path is not None:
        atomic_write_text(cache_path, json.dumps({"key": key, "metrics": metrics}, indent=1))
    return metrics


def tune_stage_blend(
    classifier: Any, entries: pl.DataFrame, sets: EvaluationSets
) -> tuple[dict[str, float], Any, Any]:
    """Choose the classifier's blend weights on the validation sets (index ``validation`` and
    ``realtext_val_``, never test or evaluation-only data), then its confidence temperature and
    warning threshold on the index validation rows. Returns them as metrics, the
    ``TunedBlend`` (``naics_ml.evaluation.blend_tuning``) and the ``Calibration``;
    ``({}, None, None)`` without validation data. ``classifier`` is only read."""
    from naics_ml.evaluation.blend_tuning import tune_blend

    texts, truth = held_out(entries, "validation")
    named = {"index_val": (texts, [[c] for c in truth])}
    from naics_ml.data.realtext import VAL_PREFIX

    if VAL_PREFIX in sets.realtext:
        frame = sets.realtext[VAL_PREFIX]
        named["realtext_val"] = (frame["text"].to_list(), frame["codes"].to_list())
    named = {name: pair for name, pair in named.items() if pair[0]}
    if not named:
        return {}, None, None
    parts = {name: classifier.score_parts(classifier.embed(t), t) for name, (t, _) in named.items()}
    tuned = tune_blend(
        parts,
        {n: c for n, (_, c) in named.items()},
        classifier.six_digit_codes,
        classifier.memory_config,
    )
    index_val = (parts.get("index_val"), named.get("index_val"))
    fitted, calibration = _fit_calibration(classifier, tuned.config, *index_val)
    return (
        fitted
        | {
            "selection_score": tuned.score,
            "selection_score_untuned": tuned.untuned_score,
            "blend_weight": tuned.config.weight,
            "blend_lexical_weight": tuned.config.lexical_weight,
            "blend_base_weight": tuned.config.base_weight,
            "blend_sector_weight": tuned.config.sector_weight,
            "blend_subsector_weight": tuned.config.subsector_weight,
            "blend_group_weight": tuned.config.group_weight,
            **{f"val_hit1_{name}": value for name, value in tuned.per_set.items()},
        },
        tuned,
        calibration,
    )


def _fit_calibration(
    classifier: Any, blend: Any, parts: Any, named: Any
) -> tuple[dict[str, float], Any]:
    """The confidence temperature and the warning threshold, on the index validation rows
    mixed by ``blend``: their metrics and the ``Calibration`` (None without those rows)."""
    from naics_ml.evaluation.confidence import fit_serving_calibration

    if parts is None:
        return {}, None
    texts, truth = named
    base = parts.base_query if parts.base_query is not None else classifier.frozen_vectors(texts)
    probs = parts.mix(blend)
    return fit_serving_calibration(classifier, probs, [t[0] for t in truth], base)


def evaluate_stage(
    classifier: object,
    codes: pl.DataFrame,
    tree_distance: np.ndarray,
    entries: pl.DataFrame,
    sets: EvaluationSets,
    stage_dir: Path | None = None,
) -> dict[str, float]:
    """A finished stage's evaluation: tune the blend and the calibration on validation data
    (saved as the stage's ``blend.json`` and ``calibration.json`` when ``stage_dir`` is given),
    then every metric of :func:`model_metrics` for the classifier they make, the one served."""
    from naics_ml.inference.calibration import save_calibration
    from naics_ml.inference.serving import save_blend

    blend, tuned, calibration = tune_stage_blend(classifier, entries, sets)
    if tuned is not None:
        classifier = classifier.with_serving(tuned.config, calibration)
        if stage_dir is not None:
            save_blend(stage_dir, tuned)
    if calibration is not None and stage_dir is not None:
        save_calibration(stage_dir, calibration)
    return blend | model_metrics(classifier, codes, tree_distance, entries, sets, stage_dir)


def _confidence_metrics(
    classifier: Any,
    probability: np.ndarray,
    truth: list[str],
    texts: list[str],
    parts: Any,
    stage_dir: Path | None,
) -> dict[str, float]:
    """Calibration, fallback, selective accuracy and exclusion figures on the test rows."""
    from naics_ml.evaluation.confidence import confidence_report
    from naics_ml.evaluation.plots import plot_confidence

    base = parts.base_query if parts.base_query is not None else classifier.frozen_vectors(texts)
    report = confidence_report(classifier, probability, list(truth), base)
    if stage_dir is not None:
        plot_confidence(report, StageFolder(Path(stage_dir)).confidence_plot)
    return report.metrics
