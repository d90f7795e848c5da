"""The library's layout rules, read from the source: which subpackage may import which, no import
cycles, no dagster in naics_ml, and the public API importable from the package root."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "naics_ml"
SHARED = {  # named by every layer: files, folders, the stage table
    "naics_ml.io",
    "naics_ml.linked_sets",
    "naics_ml.stage_folder",
    "naics_ml.revision_folder",
    "naics_ml.stage_table",
}
# what each layer may import besides itself and the shared modules (pipeline order)
ALLOWED = {
    "data": set(),
    "triplets": {"data"},
    "model": set(),
    "training": {"data", "triplets", "model"},
    "inference": {"data", "model", "training.checkpoint"},
    "evaluation": {"data", "model", "inference"},
    "records": {"data", "inference"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every naics_ml module -> the naics_ml modules it imports (also inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found |= {n for n in names if n.startswith("naics_ml") or n.split(".")[0] == "dagster"}
        graph[_module_name(path)] = found
    return graph


def _resolve(name: str, modules: set[str]) -> str | None:
    """``naics_ml.a.b.Name`` -> the module ``naics_ml.a.b`` (None for the package root)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in modules and name != "naics_ml" else None


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_no_module_of_naics_ml_imports_dagster():
    offenders = {m for m, names in _imports().items() if any(n == "dagster" for n in names)}
    assert not offenders


def test_each_layer_imports_only_the_layers_before_it():
    graph = _imports()
    modules = set(graph)
    broken = []
    for module, names in graph.items():
        layer = _layer(module)
        if layer not in ALLOWED:
            continue  # naics_ml.stage composes every layer
        for target in filter(None, (_resolve(n, modules) for n in names)):
            target_layer = _layer(target)
            relative = target.removeprefix("naics_ml.")
            allowed = ALLOWED[layer] | {layer}
            if target in SHARED or target_layer in allowed or relative in allowed:
                continue
            broken.append(f"{module} -> {target}")
    assert not broken, broken


def test_training_never_imports_inference_or_evaluation():
    graph = _imports()
    training = {m: n for m, n in graph.items() if _layer(m) == "training"}
    assert training  # the rule reads real modules
    leaks = [
        (m, n)
        for m, names in training.items()
        for n in names
        if n.startswith(("naics_ml.inference", "naics_ml.evaluation", "naics_ml.stage"))
        and not n.startswith(("naics_ml.stage_folder", "naics_ml.stage_table"))
    ]
    assert not leaks


def test_no_import_cycles():
    graph = _imports()
    modules = set(graph)
    edges = {
        m: {t for t in filter(None, (_resolve(n, modules) for n in names)) if t != m}
        for m, names in graph.items()
    }
    try:
        order = list(TopologicalSorter(edges).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {error.args[1]}")
    assert order.index("naics_ml.data.census") < order.index("naics_ml.stage")


def test_the_layout_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checker itself: a training module importing inference is reported."""
    fake = tmp_path / "naics_ml"
    (fake / "training").mkdir(parents=True)
    (fake / "inference").mkdir()
    (fake / "training" / "loop.py").write_text("from naics_ml.inference.classifier import C\n")
    (fake / "inference" / "classifier.py").write_text("C = 1\n")
    monkeypatch.setitem(globals(), "ROOT", fake)
    with pytest.raises(AssertionError):
        test_each_layer_imports_only_the_layers_before_it()


def test_public_api_is_importable_from_the_package_root():
    import naics_ml
    from naics_ml.inference.classifier import Classifier
    from naics_ml.model.config import ModelConfig
    from naics_ml.training.config import TrainConfig

    assert naics_ml.Classifier is Classifier
    assert naics_ml.ModelConfig is ModelConfig and naics_ml.TrainConfig is TrainConfig
    assert {"Classifier", "Prediction", "ModelConfig", "TrainConfig"} <= set(naics_ml.__all__)
