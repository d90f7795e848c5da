"""A stage's metrics as the Markdown tables its asset shows: the model beside the baselines,
hit@1 by sector, and the confidence figures."""

from __future__ import annotations

import re

from naics_ml.evaluation.stage_report import HEADLINE, MEMORY_PREFIX

__all__ = ["comparison_table", "confidence_table", "sector_table"]

REALTEXT_TABLE = ("hit1", "hit5", "group_at_1", "sector_at_1")  # realtext_* rows, as predict ranks
TABLE_HIERARCHY = ("spearman_within_sector", "cophenetic")  # beside HEADLINE in the table
BASELINE_COLUMNS = {
    "zero-shot": "baseline_zero_shot_",
    "TF-IDF": "baseline_tfidf_",
    "no-training peer": "baseline_peer_",
}


def comparison_table(metrics: dict[str, float]) -> str:
    """Markdown: each headline metric for the model and the three baselines."""
    from naics_ml.data.realtext import EVAL_PREFIX, VAL_PREFIX

    head = " | ".join(BASELINE_COLUMNS)
    rows = [f"| metric | model | {head} |", "|---|---|" + "---|" * len(BASELINE_COLUMNS)]
    realtext = [f"{p}{k}" for p in (EVAL_PREFIX, VAL_PREFIX) for k in REALTEXT_TABLE]
    names = [*HEADLINE, *TABLE_HIERARCHY, *(r for r in realtext if r in metrics)]
    for name in names:
        cells = [metrics.get(p + name) for p in ("", *BASELINE_COLUMNS.values())]
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


def sector_table(metrics: dict[str, float]) -> str:
    """Markdown: hit@1 by sector on each real-text set, the model as ``predict`` ranks beside
    the no-training peer (``<prefix>sector_<NN>_*`` metrics)."""
    from naics_ml.data.realtext import EVAL_PREFIX, VAL_PREFIX

    sets = [(name, p) for name, p in (("validation", VAL_PREFIX), ("evaluation", EVAL_PREFIX))]
    pattern = re.compile(r"(realtext_(?:val_)?)sector_(\d\d)_rows")
    found = {(m[1], m[2]) for m in map(pattern.fullmatch, metrics) if m}
    sets = [(name, p) for name, p in sets if any(prefix == p for prefix, _ in found)]
    if not sets:
        return "no real-text sets: no figures by sector"
    head = " | ".join(f"{n} rows | {n} hit@1 | {n} peer hit@1" for n, _ in sets)
    lines = [f"| sector | {head} |", "|---|" + "---|---|---|" * len(sets)]
    for sector in sorted({s for _, s in found}):
        cells = []
        for _, p in sets:
            key = f"sector_{sector}_"
            rows = metrics.get(f"{p}{key}rows")
            values = [metrics.get(f"{p}{key}hit1"), metrics.get(f"baseline_peer_{p}{key}hit1")]
            cells.append("0" if rows is None else f"{rows:.0f}")
            cells += ["-" if v is None else f"{v:.3f}" for v in values]
        lines.append(f"| {sector} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confidence_table(metrics: dict[str, float]) -> str:
    """Markdown: calibration error, fallback, warnings and the selective-accuracy table."""
    from naics_ml.evaluation.confidence import COVERAGES

    if "test_ece" not in metrics:
        return "no test split: no confidence figures"
    lines = [
        f"ECE (15 bins, test): {metrics['test_ece_raw']:.3f} raw -> {metrics['test_ece']:.3f} "
        f"calibrated (T = {metrics.get('calibration_temperature', float('nan')):.3f}).",
        f"Fallback at confidence 0.5: accuracy {metrics['test_fallback_accuracy']:.3f}, mean "
        f"depth {metrics['test_fallback_depth']:.2f} digits, coverage "
        f"{metrics['test_fallback_coverage']:.3f}.",
        "Exclusion warnings: the true code is offered for "
        f"{metrics.get('test_exclusion_alternative_rate', float('nan')):.3f} of wrong top-1s.",
        "",
        "| coverage | confidence >= | top-1 accuracy |",
        "|---|---|---|",
    ]
    for coverage in COVERAGES:
        key = f"cov{round(coverage * 100):03d}"
        lines.append(
            f"| {coverage:.0%} | {metrics[f'test_selective_threshold_{key}']:.3f} "
            f"| {metrics[f'test_selective_top1_{key}']:.3f} |"
        )
    return "\n".join(lines)
