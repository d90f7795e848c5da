"""Invariants of the data artifacts, as plain functions returning (passed, details).

Dagster's asset checks call these; so can a notebook or a test. Each function says what it
looked at in ``details`` so a failed check explains itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from naics_ml.data.codes import level_counts
from naics_ml.data.index_split import SPLITS, held_out_keys, normalize_text

# Published sizes of each revision by level; a revision not listed is checked for shape only.
REFERENCE_LEVEL_COUNTS = {
    "2022": {2: 20, 3: 96, 4: 308, 5: 689, 6: 1012},
    "2017": {2: 20, 3: 99, 4: 311, 5: 709, 6: 1057},
}
Result = tuple[bool, dict[str, object]]


def check_level_counts(codes: pl.DataFrame, revision: str) -> Result:
    counts = level_counts(codes)
    expected = REFERENCE_LEVEL_COUNTS.get(revision)
    if expected is None:
        passed = sorted(counts) == [2, 3, 4, 5, 6] and all(counts.values())
        return passed, {"counts": counts, "reference": "none for this revision"}
    return counts == expected, {"counts": counts, "expected": expected}


def check_parents(codes: pl.DataFrame) -> Result:
    known = set(codes["code"])
    below_sector = codes.filter(pl.col("level") > 2)
    orphans = below_sector.filter(~pl.col("parent_code").is_in(known))["code"].to_list()
    wrong_level = codes.join(
        codes.select(pl.col("code").alias("parent_code"), pl.col("level").alias("parent_level")),
        on="parent_code",
    ).filter(pl.col("parent_level") != pl.col("level") - 1)
    passed = not orphans and wrong_level.height == 0
    return passed, {"orphans": orphans[:10], "level_mismatches": wrong_level.height}


def check_split_leakage(entries: pl.DataFrame, codes: pl.DataFrame) -> Result:
    """No validation/test entry (by normalized text) appears in any training text."""
    held_out = held_out_keys(entries)
    training = set(entries.filter(pl.col("split").is_in(["examples", "train"]))["key"])
    for column in ("title", "examples", "excluded"):
        for text in codes[column].drop_nulls():
            training.update(normalize_text(line) for line in text.splitlines() if line.strip())
    leaked = sorted(held_out & training)
    sizes = {s: int(entries.filter(pl.col("split") == s).height) for s in SPLITS}
    return not leaked, {"leaked": leaked[:10], "leaked_count": len(leaked), "sizes": sizes}


def check_pairs(pairs: pl.DataFrame, n: int) -> Result:
    """One row per unordered pair (i < j), all pairs present."""
    expected = n * (n - 1) // 2
    ordered = bool((pairs["i"] < pairs["j"]).all())
    unique = pairs.select(pl.struct("i", "j").n_unique()).item() == pairs.height
    passed = pairs.height == expected and ordered and unique
    return passed, {"rows": pairs.height, "expected": expected, "i<j": ordered, "unique": unique}


def check_symmetric(distance: np.ndarray, recomputed: np.ndarray) -> Result:
    """The stored matrix equals a fresh computation and its transpose."""
    symmetric = bool(np.array_equal(distance, distance.T))
    same = bool(np.array_equal(distance, recomputed))
    return symmetric and same, {"symmetric": symmetric, "matches_recomputation": same}


def check_triangle(distance: np.ndarray, samples: int = 200_000, seed: int = 0) -> Result:
    """Triangle inequality on random triples, for the edge-count metric behind the distance.

    The stored distance subtracts 0.5 for ancestor pairs, which by design breaks the inequality
    (code -> parent 0.5, parent -> grandparent 0.5, code -> grandparent 1.5). Edge counts are
    whole numbers, so ``ceil`` undoes the discount exactly; that metric (10 across sectors) must
    satisfy it. How often the discounted distance violates it is reported alongside.
    """
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(0, distance.shape[0], size=(3, samples))
    edges = np.ceil(distance)
    violations = int((edges[a, c] > edges[a, b] + edges[b, c]).sum())
    discounted = int((distance[a, c] > distance[a, b] + distance[b, c]).sum())
    details = {
        "triples_checked": samples,
        "violations": violations,
        "discounted_distance_violations": discounted,
    }
    return violations == 0, details


def check_triplet_order(triplets_dir: Path) -> Result:
    """No triplet with d(a,p) >= d(a,n) outside hardness 8 (exclusion negatives)."""
    scan = pl.scan_parquet(Path(triplets_dir) / "sector=*" / "*.parquet")
    bad = (
        scan.filter((pl.col("hardness") != 8) & (pl.col("distance_ap") >= pl.col("distance_an")))
        .select(pl.len())
        .collect()
        .item()
    )
    return bad == 0, {"violations": int(bad)}


def check_shard_coverage(shard_sectors: list[str], codes: pl.DataFrame) -> Result:
    expected = sorted(set(codes["sector"]))
    missing = sorted(set(expected) - set(shard_sectors))
    return not missing, {
        "sectors": len(shard_sectors),
        "expected": len(expected),
        "missing": missing,
    }
