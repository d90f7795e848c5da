"""What a weight average ("soup") of trained stages scores, evaluated like a stage.

    DAGSTER_HOME=$PWD NAICS_REALTEXT_DIR=$PWD/../shared/realtext python benchmarks/soup.py \\
        --stages stage_01_easy stage_02_medium --weights 0.3 0.7

Averages the trainable weights (LoRA adapters, fusion, projection) of ``--stages`` with
``--weights`` into a copy of the last stage's folder, in a scratch revision folder under
``storage/soup/`` whose data files and caches are links to the revision's own (the stages'
folders are only read). The copy is then evaluated from scratch as ``realtext.py --reevaluate`` does
(``naics_ml.stage.reevaluate_stage``: entry memory, blend and level exponents chosen on
validation, calibration, every metric). The stages must share one model configuration; later
stages continue earlier ones, so their weights lie close. Prints JSON: the soup's figures
beside each averaged stage's (from its ``metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from realtext import reevaluate, stage_report

from naics_ml.revision_folder import RevisionFolder


def average_weights(paths: list[Path], weights: list[float]) -> dict:
    """The last checkpoint with its ``model_state`` replaced by the weighted average."""
    from naics_ml.training.checkpoint import load_checkpoint

    states = [load_checkpoint(p) for p in paths]
    configs = {json.dumps(s["model_config"], sort_keys=True) for s in states}
    if len(configs) != 1:
        raise SystemExit("the stages have different model configurations: no average")
    tensors = [s["model_state"] for s in states]
    out = states[-1]
    out["model_state"] = {
        name: sum(w * t[name].double() for w, t in zip(weights, tensors, strict=True)).to(
            value.dtype
        )
        if value.is_floating_point()
        else value
        for name, value in tensors[-1].items()
    }
    return out


def scratch_revision(folder: RevisionFolder, root: Path) -> RevisionFolder:
    """An empty revision folder under ``root`` whose data files link to ``folder``'s."""
    scratch = RevisionFolder.under(root, folder.revision)
    shutil.rmtree(scratch.path, ignore_errors=True)
    scratch.models.mkdir(parents=True)
    for item in folder.path.iterdir():
        if item.name != folder.MODELS:
            (scratch.path / item.name).symlink_to(item.resolve())
    return scratch


def main() -> None:
    from naics_ml.training.checkpoint import save_checkpoint

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revision", default="2022")
    parser.add_argument("--stages", nargs="+", default=["stage_01_easy", "stage_02_medium"])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.3, 0.7])
    args = parser.parse_args()
    if len(args.weights) != len(args.stages) or abs(sum(args.weights) - 1) > 1e-9:
        raise SystemExit("--weights: one per stage, summing to 1")
    storage = Path(os.environ["DAGSTER_HOME"]) / "storage"
    folder = RevisionFolder.under(storage / "artifacts", args.revision)
    stages = [folder.stage(name) for name in args.stages]
    scratch = scratch_revision(folder, storage / "soup")
    last = stages[-1]
    soup = scratch.stage(last.name)
    shutil.copytree(last.path, soup.path, ignore=shutil.ignore_patterns(last.points.name))
    state = average_weights([s.checkpoint for s in stages], args.weights)
    save_checkpoint(state, soup.checkpoint)
    metrics = reevaluate(scratch.path, last.name)
    report = {
        "soup": dict(zip(args.stages, args.weights, strict=True)),
        "folder": str(soup.path),
        "soup_figures": stage_report(metrics),
        "stages": {s.name: stage_report(json.loads(s.metrics.read_text())) for s in stages},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
