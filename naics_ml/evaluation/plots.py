"""Training curves as a PNG, for MLflow artifacts and asset metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from naics_ml.io import atomic_path

PANELS = (
    ("loss", ("loss", "triplet_loss", "query_loss", "val_loss")),
    ("hierarchy and load-balance loss", ("hierarchy_loss", "balance_loss")),
    ("learning rate", ("lr", "fusion_lr")),
    ("expert utilization", None),
)


def plot_history(history: list[tuple[int, dict[str, float]]], path: Path, title: str) -> Path:
    """Loss curves, hierarchy and balance loss, learning rates, and per-expert utilization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PANELS), figsize=(18, 4))
    for axis, (label, names) in zip(axes, PANELS, strict=True):
        keys = names or sorted(
            {k for _, m in history for k in m if k.startswith("expert_utilization")}
        )
        for key in keys:
            points = [(step, m[key]) for step, m in history if key in m]
            if points:
                axis.plot(*zip(*points, strict=True), label=key)
        axis.set_title(label)
        axis.set_xlabel("step")
        if keys:
            axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90)
    plt.close(figure)
    return Path(path)


def plot_confidence(report: Any, path: Path) -> Path:
    """Reliability diagram (accuracy against confidence, before and after calibration) and the
    selective-accuracy curve (top-1 accuracy against coverage), from a ``ConfidenceReport``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for name, table in (("raw", report.reliability_raw), ("calibrated", report.reliability)):
        rows = [(conf, acc) for _, conf, acc, n in table if n]
        left.plot(*zip(*rows, strict=True), marker="o", label=name)
    ece = report.metrics
    left.set_title(f"reliability (ECE {ece['test_ece_raw']:.3f} -> {ece['test_ece']:.3f})")
    left.set_xlabel("confidence (top-1)")
    left.set_ylabel("accuracy")
    left.legend()
    coverage, _, accuracy = zip(*report.selective, strict=True)
    right.plot(coverage, accuracy, marker="o")
    right.set_title("selective accuracy (abstain below a confidence)")
    right.set_xlabel("coverage")
    right.set_ylabel("top-1 accuracy")
    right.invert_xaxis()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90)
    plt.close(figure)
    return Path(path)
