"""Hierarchy and retrieval metrics for NAICS code embeddings, in numpy/scipy.

Every metric works on a precomputed distance matrix (Lorentz distances come from the model's
own geometry, ``naics_ml.model.lorentz``), so the trained Lorentz model and the
baselines (cosine over frozen or TF-IDF vectors, see ``naics_ml.evaluation.baselines``) are
scored by exactly the same code. Definitions follow the project's design notes
(``shared/DESIGN.md`` beside the checkout), "Evaluation, precisely".

Ties are never resolved in the embedding's favour: a code that is exactly as far as a competitor
counts as ranked *behind* it (pessimistic ranks). A degenerate embedding (all distances equal)
therefore scores badly instead of looking perfect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from scipy.stats import pearsonr, spearmanr

from naics_ml.data.codes import sector_of, six_digit_codes, six_digit_mask
from naics_ml.model.ranking import pessimistic_rank

if TYPE_CHECKING:
    from naics_ml.model.lorentz import Lorentz

HIERARCHY_KEYS = (
    "spearman",
    "spearman_within_sector",
    "cophenetic",
    "recon_map",
    "recon_mean_rank",
    "parent_at_1",
    "radius_order",
)
RETRIEVAL_KEYS = ("top1", "top5", "mrr", "sector_at_1", "group_at_1")
METRIC_KEYS = HIERARCHY_KEYS + tuple(f"test_{k}" for k in RETRIEVAL_KEYS)

_EDGE_CHUNK = 512  # directed edges per block in the reconstruction metrics (bounds memory)


# ---------------------------------------------------------------------------------------------
# Lorentz geometry: the model's own (naics_ml.model.lorentz), in float64, as numpy arrays
# ---------------------------------------------------------------------------------------------
def lorentz_distance_matrix(x: np.ndarray, y: np.ndarray, manifold: Lorentz) -> np.ndarray:
    """Pairwise geodesic distances (n, m) in float64, by the geometry training uses
    (``naics_ml.model.lorentz.pairwise_distance``), so the ``test_*`` and ``memory_test_*``
    metrics and the training loss measure one distance."""
    import torch

    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    y = torch.as_tensor(np.asarray(y, dtype=np.float64))
    return manifold.pairwise_distance(x, y).numpy()


def lorentz_radius(x: np.ndarray, manifold: Lorentz) -> np.ndarray:
    """Distance from the origin (``naics_ml.model.lorentz.radius``), float64."""
    import torch

    return manifold.radius(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


# ---------------------------------------------------------------------------------------------
# Hierarchy
# ---------------------------------------------------------------------------------------------
def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """scipy's average-rank Spearman; nan when undefined (fewer than 2 pairs or a constant side)."""
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; nan when undefined (fewer than 2 pairs or a constant side)."""
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(pearsonr(a, b).statistic)


def spearman_ceiling(target: np.ndarray) -> float:
    """The highest Spearman rho any tie-free score can reach against ``target``.

    Embedding distances have no ties, tree distances have many (2022: 88 % of all code pairs
    are cross-sector at the one value 10). A tie-free score ranks the members of a tied group
    one after another, while their average rank is one value, so
    ``rho <= sqrt(1 - sum(g^3 - g) / (n^3 - n))`` over the tie groups' sizes ``g``, with
    equality when the score orders every pair of different targets correctly.
    """
    values = np.asarray(target).ravel()
    n = float(values.size)
    if n < 2:
        return float("nan")
    _, counts = np.unique(values, return_counts=True)
    g = counts.astype(np.float64)
    return float(np.sqrt(max(0.0, 1.0 - np.sum(g**3 - g) / (n**3 - n))))


def _reconstruction(distance: np.ndarray, parent_index: np.ndarray) -> tuple[float, float]:
    """Nickel & Kiela reconstruction: (MAP, mean rank) with neighbours = parent and children.

    For a directed tree edge (u, v): ``ranked`` = codes w != u with d(u, w) <= d(u, v) (v's
    pessimistic rank among all other codes), ``hits`` = the neighbours of u among them.
    Precision at v is hits / ranked (AP of u = its mean over u's neighbours) and the rank of v
    among v and u's non-neighbours is 1 + ranked - hits.
    """
    n = distance.shape[0]
    child = np.flatnonzero(parent_index >= 0)
    parent = parent_index[child]
    if child.size == 0:
        return float("nan"), float("nan")
    u = np.concatenate([child, parent])
    v = np.concatenate([parent, child])
    adjacent = np.zeros((n, n), dtype=bool)
    adjacent[u, v] = True
    d = np.array(distance, dtype=np.float64, copy=True)
    np.fill_diagonal(d, np.inf)  # u itself is never a candidate
    ranked = np.empty(u.size, dtype=np.int64)
    hits = np.empty(u.size, dtype=np.int64)
    for start in range(0, u.size, _EDGE_CHUNK):
        uu, vv = u[start : start + _EDGE_CHUNK], v[start : start + _EDGE_CHUNK]
        rows = d[uu]
        closer = rows <= rows[np.arange(uu.size), vv][:, None]
        ranked[start : start + uu.size] = closer.sum(axis=1)
        hits[start : start + uu.size] = (closer & adjacent[uu]).sum(axis=1)
    precision = hits / ranked
    degree = np.bincount(u, minlength=n)
    ap_sum = np.bincount(u, weights=precision, minlength=n)
    has_nb = degree > 0
    recon_map = float(np.mean(ap_sum[has_nb] / degree[has_nb]))
    mean_rank = float(np.mean(1 + ranked - hits))
    return recon_map, mean_rank


def _parent_hits(distance: np.ndarray, parent_index: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Per code: True when its parent is strictly nearer than every other code of the parent's
    level (a tie counts as a miss); False for sectors, which have no parent."""
    hit = np.zeros(len(parent_index), dtype=bool)
    child = np.flatnonzero(parent_index >= 0)
    parent = parent_index[child]
    parent_level = level[parent]
    for lvl in np.unique(parent_level):
        sel = np.flatnonzero(parent_level == lvl)
        cols = np.flatnonzero(level == lvl)
        sub = np.array(distance[np.ix_(child[sel], cols)], dtype=np.float64)
        pos = np.searchsorted(cols, parent[sel])  # parent's column within cols (cols is sorted)
        rows = np.arange(sel.size)
        d_parent = sub[rows, pos]
        sub[rows, pos] = np.inf
        hit[child[sel]] = d_parent < sub.min(axis=1)
    return hit


def _parent_at_1(distance: np.ndarray, parent_index: np.ndarray, level: np.ndarray) -> float:
    """Share of non-sector codes whose parent is their nearest code of the parent's level."""
    child = parent_index >= 0
    if not child.any():
        return float("nan")
    return float(_parent_hits(distance, parent_index, level)[child].mean())


def level_structure(
    distance: np.ndarray, parent_index: np.ndarray, level: np.ndarray, radius: np.ndarray
) -> pl.DataFrame:
    """Per level of the tree: ``codes``, ``mean_radius`` (distance from the origin: does depth
    grow with the level?) and ``parent_share``, the share of its codes whose nearest code of the
    parent level is their parent (null for sectors)."""
    parent_index = np.asarray(parent_index, dtype=np.int64)
    level = np.asarray(level)
    hits = _parent_hits(np.asarray(distance), parent_index, level)
    frame = pl.DataFrame(
        {"level": level, "radius": np.asarray(radius, np.float64), "hit": hits}
    ).with_columns(has_parent=pl.Series(parent_index >= 0))
    return (
        frame.group_by("level")
        .agg(
            pl.len().alias("codes"),
            pl.col("radius").mean().alias("mean_radius"),
            pl.when(pl.col("has_parent").all())
            .then(pl.col("hit").mean())
            .otherwise(None)
            .alias("parent_share"),
        )
        .sort("level")
    )


def level_metrics(levels: pl.DataFrame) -> dict[str, float]:
    """:func:`level_structure` as metrics: ``level_<n>_mean_radius`` and
    ``level_<n>_parent_share`` (no share for sectors)."""
    out: dict[str, float] = {}
    for level, radius, share in levels.select("level", "mean_radius", "parent_share").iter_rows():
        out[f"level_{level}_mean_radius"] = float(radius)
        if share is not None:
            out[f"level_{level}_parent_share"] = float(share)
    return out


def hierarchy_metrics(
    distance: np.ndarray,
    tree_distance: np.ndarray,
    parent_index: np.ndarray,
    level: np.ndarray,
    sector: np.ndarray,
    radius: np.ndarray | None = None,
) -> dict[str, float]:
    """How well an (n, n) embedding distance matrix preserves the code tree.

    ``parent_index`` is -1 for sectors. Keys: spearman (all unordered pairs),
    spearman_within_sector, cophenetic (the cophenetic correlation: Pearson's r between the
    tree and the embedding distances over all unordered pairs), recon_map, recon_mean_rank,
    parent_at_1 and, only when ``radius`` is given, radius_order (share of parent->child edges
    where the child is strictly farther from the origin). Without radii the key is omitted
    rather than set to nan, so nothing downstream logs a meaningless value.
    """
    distance = np.asarray(distance)
    tree_distance = np.asarray(tree_distance)
    parent_index = np.asarray(parent_index, dtype=np.int64)
    level = np.asarray(level)
    sector = np.asarray(sector)
    n = distance.shape[0]
    if distance.shape != (n, n) or tree_distance.shape != (n, n):
        raise ValueError(
            f"distance {distance.shape} and tree_distance {tree_distance.shape} "
            f"must both be ({n}, {n})"
        )
    if not (parent_index.shape == level.shape == sector.shape == (n,)):
        raise ValueError("parent_index, level and sector must have one entry per code")

    iu, ju = np.triu_indices(n, k=1)
    emb_pairs = distance[iu, ju]
    tree_pairs = tree_distance[iu, ju]
    same = sector[iu] == sector[ju]
    recon_map, recon_mean_rank = _reconstruction(distance, parent_index)
    out = {
        "spearman": _spearman(emb_pairs, tree_pairs),
        "spearman_within_sector": _spearman(emb_pairs[same], tree_pairs[same]),
        "cophenetic": _pearson(emb_pairs, tree_pairs),
        "recon_map": recon_map,
        "recon_mean_rank": recon_mean_rank,
        "parent_at_1": _parent_at_1(distance, parent_index, level),
    }
    if radius is not None:
        radius = np.asarray(radius, dtype=np.float64)
        child = np.flatnonzero(parent_index >= 0)
        out["radius_order"] = (
            float(np.mean(radius[child] > radius[parent_index[child]]))
            if child.size
            else float("nan")
        )
    return out


# ---------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------
def naics_sector(codes: Sequence[str] | np.ndarray) -> np.ndarray:
    """Two-digit sector per code, range sectors merged (32/33 -> 31, 45 -> 44, 49 -> 48)."""
    return np.array([sector_of(str(c)) for c in codes], dtype=object)


def retrieval_metrics(
    distance: np.ndarray,
    candidate_codes: Sequence[str] | np.ndarray,
    true_codes: Sequence[str] | np.ndarray,
    prefix: str = "test_",
) -> dict[str, float]:
    """Rank candidate codes for each query by distance (q, m) and score against the true codes.

    Pessimistic ties: the true code's rank is the number of candidates at distance <= its own, and
    the rank-1 code used for sector/group accuracy is the nearest candidate with ties broken by
    candidate order but always placing the true code behind codes tied with it. Keys (prefixed):
    top1, top5, mrr, sector_at_1, group_at_1; all nan when there are no queries.
    """
    distance = np.asarray(distance)
    candidate_codes = np.asarray(candidate_codes, dtype=object)
    true_codes = np.asarray(true_codes, dtype=object)
    q, m = distance.shape
    if m != candidate_codes.size or q != true_codes.size:
        raise ValueError(
            f"distance {distance.shape} does not match {true_codes.size} queries x "
            f"{candidate_codes.size} candidates"
        )
    if q == 0:
        return {f"{prefix}{k}": float("nan") for k in RETRIEVAL_KEYS}
    position = {c: i for i, c in enumerate(candidate_codes)}
    missing = sorted({c for c in true_codes if c not in position})
    if missing:
        raise ValueError(f"true codes not among the candidates: {missing[:10]}")
    true_pos = np.array([position[c] for c in true_codes], dtype=np.int64)
    rows = np.arange(q)
    d_true = distance[rows, true_pos]
    rank = pessimistic_rank(distance, d_true)
    # Push the true code just behind anything it ties with, then take the first minimum.
    shifted = np.array(distance, copy=True)
    shifted[rows, true_pos] = np.nextafter(d_true, np.inf)
    predicted = candidate_codes[np.argmin(shifted, axis=1)]
    pred_group = np.array([str(c)[:4] for c in predicted])
    true_group = np.array([str(c)[:4] for c in true_codes])
    return {
        f"{prefix}top1": float(np.mean(rank <= 1)),
        f"{prefix}top5": float(np.mean(rank <= 5)),
        f"{prefix}mrr": float(np.mean(1.0 / rank)),
        f"{prefix}sector_at_1": float(np.mean(naics_sector(predicted) == naics_sector(true_codes))),
        f"{prefix}group_at_1": float(np.mean(pred_group == true_group)),
    }


# ---------------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------------
def evaluate_distances(
    code_distance: np.ndarray,
    codes: pl.DataFrame,
    tree_distance: np.ndarray,
    query_distance: np.ndarray,
    query_true_codes: Sequence[str] | np.ndarray,
    radius: np.ndarray | None,
    prefix: str = "",
) -> dict[str, float]:
    """All metrics from precomputed distances; shared by the model and the baselines.

    ``code_distance`` is (n, n) over all codes of ``codes`` (rows in ``index`` order);
    ``query_distance`` is (q, m) against the six-digit codes only, in table order.
    Hierarchy keys become ``prefix + name``, retrieval keys ``prefix + "test_" + name``.
    """
    codes = codes.sort("index")
    parent_index = codes["parent_index"].fill_null(-1).to_numpy().astype(np.int64)
    out = hierarchy_metrics(
        code_distance,
        tree_distance,
        parent_index,
        codes["level"].to_numpy(),
        codes["sector"].to_numpy(),
        radius,
    )
    out = {f"{prefix}{k}": v for k, v in out.items()}
    out.update(
        retrieval_metrics(
            query_distance, six_digit_codes(codes), query_true_codes, prefix=f"{prefix}test_"
        )
    )
    return out


def evaluate_embeddings(
    points: np.ndarray,
    codes: pl.DataFrame,
    tree_distance: np.ndarray,
    query_points: np.ndarray,
    query_true_codes: Sequence[str] | np.ndarray,
    manifold: Lorentz,
) -> dict[str, float]:
    """Every metric in ``METRIC_KEYS`` for hyperboloid points of all codes and of the queries.

    ``points`` is (n, D+1), row i = code with ``index`` i; ``query_points`` is (q, D+1).
    Accepts numpy arrays or CPU tensors (anything ``np.asarray`` understands).
    """
    points = np.asarray(points, dtype=np.float64)
    query_points = np.asarray(query_points, dtype=np.float64).reshape(-1, points.shape[1])
    code_distance = lorentz_distance_matrix(points, points, manifold)
    query_distance = lorentz_distance_matrix(query_points, points[six_digit_mask(codes)], manifold)
    return evaluate_distances(
        code_distance,
        codes,
        tree_distance,
        query_distance,
        query_true_codes,
        radius=lorentz_radius(points, manifold),
    )
