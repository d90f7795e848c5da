"""Training curves as a PNG, for MLflow artifacts and asset metadata."""

from __future__ import annotations

from pathlib import Path

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
