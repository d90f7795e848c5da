"""The stage table is the one place a stage is defined: the assets, their launchpad defaults,
the CLI and the run table all follow it."""

from __future__ import annotations

import dataclasses
import itertools

import dagster as dg
import pytest

from naics_assets.assets.stages import STAGE_ASSETS, STAGE_CONFIGS, stage_configs
from naics_assets.cli import parser
from naics_assets.definitions import defs
from naics_ml.stage_table import FINAL_STAGE, STAGE_NAMES, STAGES, StageSpec, stage_spec
from naics_ml.training.config import TrainConfig
from naics_ml.triplets.curriculum import load_curriculum, packaged_curriculum_path


def test_each_stage_starts_from_the_row_before_and_has_a_packaged_curriculum() -> None:
    assert STAGES[0].previous is None and STAGES[0].model
    for before, spec in itertools.pairwise(STAGES):
        assert spec.previous == before.name and not spec.model
    for spec in STAGES:
        load_curriculum(packaged_curriculum_path(spec.curriculum))
    assert FINAL_STAGE == STAGES[-1].name == "stage_03_hard"


def test_a_bad_row_or_name_is_refused_with_its_reason() -> None:
    with pytest.raises(KeyError, match="stage_01_easy, stage_02_medium, stage_03_hard"):
        stage_spec("stage_04_harder")
    with pytest.raises(ValueError, match="stage_4"):
        StageSpec("stage_4", None, "01_easy", "x")
    with pytest.raises(ValueError, match="stepz"):
        StageSpec("stage_04_more", None, "01_easy", "x", {"stepz": 3})


def test_the_assets_and_their_launchpad_defaults_come_from_the_table() -> None:
    graph = defs.resolve_asset_graph()
    for spec in STAGES:
        key = dg.AssetKey(spec.name)
        assert STAGE_ASSETS[spec.name].key == key
        parents = {k.to_user_string() for k in graph.get(key).parent_keys}
        assert (spec.previous in parents) if spec.previous else not parents & set(STAGE_NAMES)
        first, train = stage_configs(STAGE_CONFIGS[spec.name](), spec)
        expected = dataclasses.replace(TrainConfig(), **spec.train)
        assert train == expected and (first is not None) == spec.model
        assert STAGE_ASSETS[spec.name].descriptions_by_key[key] == spec.summary


def test_a_setting_not_on_the_launchpad_still_reaches_the_stage() -> None:
    spec = dataclasses.replace(stage_spec("stage_02_medium"), train={"min_lr_ratio": 0.5})
    _, train = stage_configs(STAGE_CONFIGS["stage_02_medium"](), spec)
    assert train.min_lr_ratio == 0.5


def test_the_cli_offers_the_tables_stages() -> None:
    choices = next(
        a.choices
        for sub in parser()._subparsers._group_actions  # the classify command's --stage
        for name, command in sub.choices.items()
        if name == "classify"
        for a in command._actions
        if a.dest == "stage"
    )
    assert tuple(choices) == STAGE_NAMES
