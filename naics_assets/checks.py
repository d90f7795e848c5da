"""Asset checks. They run inside each materialization (the data is at hand there, per partition),
so every partition's checks are recorded against the run that produced it."""

import dagster as dg

from naics_ml.data import invariants


def spec(asset: str, name: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name=name, asset=asset, description=description)


def result(
    name: str,
    outcome: invariants.Result,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    passed, details = outcome
    return dg.AssetCheckResult(
        check_name=name,
        passed=passed,
        severity=severity,
        metadata={
            key: dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
            for key, value in details.items()
        },
    )


CODES_CHECKS = [
    spec("naics_codes", "level_counts", "Codes per level match the published revision."),
    spec(
        "naics_codes", "parents_exist", "Every code below sector level has a parent one level up."
    ),
]
INDEX_CHECKS = [
    spec(
        "naics_index_entries",
        "no_split_leakage",
        "No validation/test entry (normalized text) appears in any training text.",
    ),
]
DISTANCE_CHECKS = [
    spec("naics_distances", "pair_count", "One row per unordered pair: n(n-1)/2 rows, i < j."),
    spec(
        "naics_distances", "symmetric", "Stored distances are symmetric and match a recomputation."
    ),
    spec(
        "naics_distances", "triangle_inequality", "Sampled triples satisfy the triangle inequality."
    ),
]
TRIPLET_CHECKS = [
    spec(
        "naics_triplets",
        "distance_order",
        "No triplet with d(a,p) >= d(a,n) outside hardness 8 (exclusions).",
    ),
    spec("naics_triplets", "sector_coverage", "Shards cover every sector of the revision."),
]


def stage_checks(asset: str) -> list[dg.AssetCheckSpec]:
    """Checks of a trained stage, from the metrics its own run computed."""
    return [
        spec(
            asset,
            "beats_baselines",
            "The stage beats the frozen base model and TF-IDF on every headline metric "
            "(test top-1, top-5, MRR; Spearman, reconstruction MAP, parent@1).",
        ),
        spec(
            asset,
            "experts_balanced",
            "Every fusion expert takes at least 5 % of the routed slots at the last logged "
            "step (warning: a collapsed mixture is one expert plus dead weight).",
        ),
    ]
