"""Evaluation of a trained stage next to its baselines, on the held-out ``test`` split.

The baselines (frozen base model, TF-IDF) do not depend on the stage, so they are computed once
per (revision data, base model) and cached as JSON next to the models; the cache key hashes the
code texts and the test entries, so changed data never reuses stale numbers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl

from naics_ml.io import atomic_write_text

HEADLINE = ("test_top1", "test_top5", "test_mrr", "spearman", "recon_map", "parent_at_1")
MEMORY_PREFIX = "memory_"  # retrieval with the Classifier's entry memory (naics_ml.entry_memory)


def held_out(entries: pl.DataFrame, split: str = "test") -> tuple[list[str], list[str]]:
    """(texts, true codes) of one split of the index entries."""
    rows = entries.filter(pl.col("split") == split)
    return rows["text"].to_list(), rows["code"].to_list()


def model_metrics(
    classifier: object, codes: pl.DataFrame, tree_distance: np.ndarray, entries: pl.DataFrame
) -> dict[str, float]:
    """Every metric of ``naics_ml.evaluate`` for a trained ``naics_ml.classify.Classifier``.

    With a memory, the ``memory_test_*`` retrieval metrics rank codes by the blended
    probability the Classifier predicts with; the plain ``test_*`` ones use the embedding alone.
    """
    from naics_ml.evaluate import evaluate_embeddings, spearman_ceiling

    texts, truth = held_out(entries)
    table = classifier.code_embeddings().sort("index")
    points = np.asarray(table["coordinates"].to_list(), dtype=np.float64)
    queries = classifier.embed(texts) if texts else None
    query_points = queries.double().numpy() if texts else np.zeros((0, 0))
    metrics = evaluate_embeddings(
        points, codes, tree_distance, query_points, truth, classifier.curvature
    )
    if texts and classifier.memory_size:  # the Classifier's blended scores, same test entries
        from naics_ml.evaluate import retrieval_metrics, six_digit_codes

        _, probability = classifier.score_points(queries, texts)
        metrics |= retrieval_metrics(
            -probability, six_digit_codes(codes), truth, prefix=f"{MEMORY_PREFIX}test_"
        )
    # what a perfect embedding could score (the tree distances are heavily tied)
    iu, ju = np.triu_indices(len(tree_distance), k=1)
    pairs = np.asarray(tree_distance)[iu, ju]
    sector = codes.sort("index")["sector"].to_numpy()
    metrics["spearman_ceiling"] = spearman_ceiling(pairs)
    metrics["spearman_within_sector_ceiling"] = spearman_ceiling(pairs[sector[iu] == sector[ju]])
    return metrics


def _cache_key(codes: pl.DataFrame, entries: pl.DataFrame, base_model: str) -> str:
    from naics_ml.baselines import code_texts

    texts, truth = held_out(entries)
    digest = hashlib.sha256(base_model.encode())
    for item in [*code_texts(codes), *texts, *truth]:
        digest.update(item.encode() + b"\x00")
    return digest.hexdigest()


def baseline_metrics(
    codes: pl.DataFrame,
    tree_distance: np.ndarray,
    entries: pl.DataFrame,
    base_model: str,
    cache_path: Path | None = None,
) -> dict[str, float]:
    """``baseline_zero_shot_*`` and ``baseline_tfidf_*`` metrics, cached at ``cache_path``."""
    from naics_ml.baselines import tfidf_metrics, zero_shot_metrics

    key = _cache_key(codes, entries, base_model)
    if cache_path is not None and Path(cache_path).is_file():
        cached = json.loads(Path(cache_path).read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    texts, truth = held_out(entries)
    metrics = {
        **zero_shot_metrics(codes, tree_distance, texts, truth, base_model),
        **tfidf_metrics(codes, tree_distance, texts, truth),
    }
    if cache_path is not None:
        atomic_write_text(cache_path, json.dumps({"key": key, "metrics": metrics}, indent=1))
    return metrics


def comparison_table(metrics: dict[str, float]) -> str:
    """Markdown: each headline metric for the model and both baselines."""
    rows = ["| metric | model | zero-shot | TF-IDF |", "|---|---|---|---|"]
    for name in HEADLINE:
        cells = [metrics.get(p + name) for p in ("", "baseline_zero_shot_", "baseline_tfidf_")]
        rows.append(
            f"| {name} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |"
        )
    memory = [metrics.get(f"{MEMORY_PREFIX}test_{k}") for k in ("top1", "top5", "mrr")]
    if None not in memory:
        rows.append(
            "\nWith the entry memory (what `Classifier.predict` ranks by): "
            f"test_top1 {memory[0]:.3f}, test_top5 {memory[1]:.3f}, test_mrr {memory[2]:.3f}."
        )
    if "spearman_ceiling" in metrics:
        rows.append(
            f"\nSpearman ceiling (tied tree distances): {metrics['spearman_ceiling']:.3f} "
            f"over all pairs, {metrics['spearman_within_sector_ceiling']:.3f} within sectors."
        )
    return "\n".join(rows)
