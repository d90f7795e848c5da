"""Curriculum stages: which (anchor, positive) pairs and which negatives a training stage sees.

A curriculum is a small YAML file (see ``naics_ml/triplets/curricula/``) so users can copy and
edit it without touching code. ``load_curriculum`` validates it strictly and names the file and the
field at fault, because a typo in a curriculum otherwise silently trains the wrong stage.

Semantics (also written in the packaged files):

- ``positive_levels``: both the anchor and the positive must sit at one of these levels
  (2 = sector ... 6 = national industry). The original system filtered on the positive's level
  only; requiring both keeps an easy stage from pairing a sector with a six-digit code.
- ``max_positive_distance``: tree distance between anchor and positive must be <= this
  (``null`` in YAML = no limit).
- ``negative_buckets``: hardness -> share of the ``k_negatives`` negatives drawn per pair.
  Hardness 8 = exclusion negative, 7..2 = within-sector (7 hardest), 1 = cross-sector.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

LEVELS = (2, 3, 4, 5, 6)
HARDNESS = (1, 2, 3, 4, 5, 6, 7, 8)
SHARE_TOLERANCE = 1e-6
PACKAGED = ("01_easy", "02_medium", "03_hard")

_REQUIRED = ("name", "positive_levels", "max_positive_distance", "negative_buckets")
_OPTIONAL = ("description", "k_negatives")


class CurriculumError(ValueError):
    """A curriculum file or spec is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class CurriculumSpec:
    """One curriculum stage. Validated on construction, so hand-built specs are safe too."""

    name: str
    positive_levels: tuple[int, ...]
    max_positive_distance: float
    negative_buckets: Mapping[int, float]
    k_negatives: int = 16
    description: str = ""

    def __post_init__(self) -> None:
        problems = _validate(
            self.name,
            self.positive_levels,
            self.max_positive_distance,
            self.negative_buckets,
            self.k_negatives,
        )
        if problems:
            raise CurriculumError(f"invalid curriculum {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "positive_levels", tuple(sorted(set(self.positive_levels))))
        object.__setattr__(self, "max_positive_distance", float(self.max_positive_distance))
        buckets = {int(h): float(s) for h, s in sorted(self.negative_buckets.items())}
        object.__setattr__(self, "negative_buckets", buckets)

    @property
    def hardness(self) -> tuple[int, ...]:
        """The hardness values this stage draws negatives from, ascending."""
        return tuple(self.negative_buckets)

    def quotas(self, available: Iterable[int] | None = None) -> dict[int, int]:
        """Negatives per bucket for one pair, summing to ``k_negatives``.

        ``round(k * share)`` per bucket, the rounding difference going to (or coming from) the
        bucket with the largest share (ties: lower hardness first). With ``available`` given,
        buckets not in it are empty for this pair and their shares are redistributed over the
        remaining buckets in proportion to their shares (the same rounding rule applies).
        """
        buckets = self.negative_buckets
        avail = set(buckets) if available is None else set(available) & set(buckets)
        if not avail:
            return {h: 0 for h in buckets}
        total = sum(buckets[h] for h in avail)
        shares = {h: (buckets[h] / total if h in avail else 0.0) for h in buckets}
        k = self.k_negatives
        q = {h: round(k * s) for h, s in shares.items()}
        order = sorted(avail, key=lambda h: (-shares[h], h))
        diff = k - sum(q.values())
        if diff > 0:
            q[order[0]] += diff
        while diff < 0:
            for h in order:
                if diff == 0:
                    break
                if q[h] > 0:
                    q[h] -= 1
                    diff += 1
        return q

    def to_dict(self) -> dict[str, Any]:
        """Plain values, e.g. for MLflow params or writing the file back."""
        return {
            "name": self.name,
            "description": self.description,
            "positive_levels": list(self.positive_levels),
            "max_positive_distance": (
                None if math.isinf(self.max_positive_distance) else self.max_positive_distance
            ),
            "negative_buckets": dict(self.negative_buckets),
            "k_negatives": self.k_negatives,
        }


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _validate(
    name: object,
    levels: object,
    max_distance: object,
    buckets: object,
    k: object,
) -> list[str]:
    problems: list[str] = []
    if not isinstance(name, str) or not name.strip():
        problems.append(f"name: must be a non-empty string, got {name!r}")
    if not isinstance(levels, list | tuple) or not levels:
        problems.append(f"positive_levels: must be a non-empty list of ints, got {levels!r}")
    else:
        bad = [lv for lv in levels if not _is_int(lv) or lv not in LEVELS]
        if bad:
            problems.append(f"positive_levels: {bad!r} outside {LEVELS[0]}..{LEVELS[-1]}")
    if not _is_number(max_distance) or math.isnan(float(max_distance)) or float(max_distance) <= 0:
        problems.append(
            f"max_positive_distance: must be a positive number or null, got {max_distance!r}"
        )
    if not isinstance(buckets, Mapping) or not buckets:
        problems.append(f"negative_buckets: must be a non-empty mapping, got {buckets!r}")
    else:
        bad_h = [h for h in buckets if not _is_int(h) or h not in HARDNESS]
        if bad_h:
            problems.append(
                f"negative_buckets: unknown hardness {bad_h!r} "
                f"(allowed {HARDNESS[0]}..{HARDNESS[-1]})"
            )
        bad_s = {h: s for h, s in buckets.items() if not _is_number(s) or not 0 < s <= 1}
        if bad_s:
            problems.append(f"negative_buckets: shares must be in (0, 1], got {bad_s!r}")
        elif abs(sum(buckets.values()) - 1.0) > SHARE_TOLERANCE:
            problems.append(
                f"negative_buckets: shares sum to {sum(buckets.values())!r}, must sum to 1 "
                f"(within {SHARE_TOLERANCE:g})"
            )
    if not _is_int(k) or k < 1:
        problems.append(f"k_negatives: must be an int >= 1, got {k!r}")
    return problems


def packaged_curriculum_path(name: str) -> Path:
    """Path of a packaged curriculum file, e.g. ``"01_easy"`` -> ``.../curricula/01_easy.yaml``."""
    stem = name.removesuffix(".yaml")
    if stem not in PACKAGED:
        raise CurriculumError(f"unknown packaged curriculum {name!r}; known: {', '.join(PACKAGED)}")
    return Path(str(resources.files("naics_ml.triplets") / "curricula" / f"{stem}.yaml"))


def _resolve(path_or_name: str | Path) -> Path:
    if isinstance(path_or_name, Path):
        return path_or_name
    if path_or_name.removesuffix(".yaml") in PACKAGED and not Path(path_or_name).exists():
        return packaged_curriculum_path(path_or_name)
    return Path(path_or_name)


def curriculum_from_dict(data: object, source: str = "<dict>") -> CurriculumSpec:
    """Validate a parsed curriculum mapping; errors name ``source`` and every faulty field."""
    if not isinstance(data, Mapping):
        raise CurriculumError(
            f"{source}: expected a mapping at top level, got {type(data).__name__}"
        )
    problems: list[str] = []
    unknown = sorted(str(key) for key in data if key not in _REQUIRED + _OPTIONAL)
    if unknown:
        allowed = ", ".join(_REQUIRED + _OPTIONAL)
        problems.append(f"unknown key(s) {', '.join(unknown)} (allowed: {allowed})")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        problems.append(f"missing key(s) {', '.join(missing)}")
    if problems:
        raise CurriculumError(f"{source}: " + "; ".join(problems))
    max_distance = data["max_positive_distance"]
    if max_distance is None:
        max_distance = math.inf
    description = data.get("description", "") or ""
    k = data.get("k_negatives", 16)
    problems = _validate(
        data["name"], data["positive_levels"], max_distance, data["negative_buckets"], k
    )
    if not isinstance(description, str):
        problems.append(f"description: must be a string, got {description!r}")
    if problems:
        raise CurriculumError(f"{source}: " + "; ".join(problems))
    return CurriculumSpec(
        name=data["name"],
        description=description.strip(),
        positive_levels=tuple(data["positive_levels"]),
        max_positive_distance=max_distance,
        negative_buckets=dict(data["negative_buckets"]),
        k_negatives=k,
    )


def load_curriculum(path_or_name: str | Path) -> CurriculumSpec:
    """Load a curriculum from a YAML file path or a packaged name (``01_easy``, ...)."""
    path = _resolve(path_or_name)
    if not path.is_file():
        raise CurriculumError(
            f"curriculum file {str(path)!r} not found (packaged names: {', '.join(PACKAGED)})"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CurriculumError(f"{path}: not valid YAML: {exc}") from exc
    return curriculum_from_dict(data, source=str(path))
