"""Retrieval metrics on labelled real texts, where a row may carry several true codes.

A prediction is a hit when it is any of the row's codes; group and sector accuracy likewise
compare with any of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from naics_ml.data.realtext import EVAL_PREFIX, REALTEXT_KEYS
from naics_ml.evaluation.metrics import naics_sector

__all__ = ["realtext_metrics", "sector_hit_rates", "sector_metrics"]


def realtext_metrics(
    score: np.ndarray,
    candidate_codes: Sequence[str] | np.ndarray,
    true_codes: Sequence[Sequence[str]],
    prefix: str = EVAL_PREFIX,
) -> dict[str, float]:
    """hit@1, hit@5, MRR, 4-digit group and sector at rank 1, with several true codes a row.

    ``score`` (q, m) ranks the candidates, higher first (a probability, or minus a distance).
    A row's rank is that of its best-ranked true code; ties count against the model, as in
    ``naics_ml.evaluation.metrics.retrieval_metrics``. True codes outside the candidates never hit.
    """
    score = np.asarray(score, dtype=np.float64)
    candidates = np.asarray(candidate_codes, dtype=object)
    if score.shape != (len(true_codes), candidates.size):
        raise ValueError(
            f"score {score.shape} does not match {len(true_codes)} texts x "
            f"{candidates.size} candidates"
        )
    if not len(true_codes):
        return {f"{prefix}{k}": float("nan") for k in REALTEXT_KEYS}
    position = {c: i for i, c in enumerate(candidates)}
    top = candidates[np.argmax(score, axis=1)]
    rank = np.empty(len(true_codes))
    group_hit = np.empty(len(true_codes), dtype=bool)
    sector_hit = np.empty(len(true_codes), dtype=bool)
    top_sector = naics_sector(top)
    for row, codes in enumerate(true_codes):
        cols = [position[c] for c in codes if c in position]
        best = score[row, cols].max() if cols else np.inf
        rank[row] = (score[row] >= best).sum() if cols else np.inf
        group_hit[row] = any(str(top[row])[:4] == c[:4] for c in codes)
        sector_hit[row] = top_sector[row] in set(naics_sector(list(codes)))
    return {
        f"{prefix}hit1": float(np.mean(rank <= 1)),
        f"{prefix}hit5": float(np.mean(rank <= 5)),
        f"{prefix}mrr": float(np.mean(1.0 / rank)),
        f"{prefix}group_at_1": float(np.mean(group_hit)),
        f"{prefix}sector_at_1": float(np.mean(sector_hit)),
    }


def sector_hit_rates(
    score: np.ndarray,
    candidate_codes: Sequence[str] | np.ndarray,
    true_codes: Sequence[Sequence[str]],
) -> pl.DataFrame:
    """Per sector of a row's first code: rows, hit@1 and the most frequent wrong sector."""
    candidates = np.asarray(candidate_codes, dtype=object)
    top = candidates[np.argmax(np.asarray(score), axis=1)]
    rows = pl.DataFrame(
        {
            "sector": naics_sector([codes[0] for codes in true_codes]).tolist(),
            "hit": [str(t) in set(codes) for t, codes in zip(top, true_codes, strict=True)],
            "predicted_sector": naics_sector(top).tolist(),
        }
    )
    wrong = (
        rows.filter(pl.col("predicted_sector") != pl.col("sector"))
        .group_by("sector", "predicted_sector")
        .len()
        .sort("len", descending=True)
        .unique("sector", keep="first")
        .select("sector", pl.col("predicted_sector").alias("main_confusion"))
    )
    return (
        rows.group_by("sector")
        .agg(pl.len().alias("rows"), pl.col("hit").mean().alias("hit1"))
        .join(wrong, on="sector", how="left")
        .sort("sector")
    )


def sector_metrics(
    score: np.ndarray,
    candidate_codes: Sequence[str] | np.ndarray,
    true_codes: Sequence[Sequence[str]],
    prefix: str = EVAL_PREFIX,
) -> dict[str, float]:
    """hit@1 and rows per sector of a row's first code (:func:`sector_hit_rates`), as
    ``<prefix>sector_<NN>_hit1`` and ``<prefix>sector_<NN>_rows``: a change that helps one
    kind of business and hurts another shows."""
    if not len(true_codes):
        return {}
    out: dict[str, float] = {}
    for sector, rows, hit1, _ in sector_hit_rates(score, candidate_codes, true_codes).iter_rows():
        out[f"{prefix}sector_{sector}_hit1"] = float(hit1)
        out[f"{prefix}sector_{sector}_rows"] = float(rows)
    return out
