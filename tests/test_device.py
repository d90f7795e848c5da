"""The device setting: resolution, the CUDA logic (with a faked GPU count), the Lorentz maths off
the CPU (the ``meta`` device), no tensor left on torch's default device, and CPU training and
resuming unchanged by it. This machine has no GPU: nothing here runs a CUDA kernel."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import polars as pl
import pytest
import torch
from torch import Tensor, nn

from naics_ml.inference.classifier import Classifier
from naics_ml.inference.entry_memory import MemoryConfig
from naics_ml.model import lorentz
from naics_ml.model.device import resolve_device
from naics_ml.training.bank import refresh_bank
from naics_ml.training.checkpoint import load_checkpoint, save_checkpoint
from naics_ml.training.config import TrainConfig
from naics_ml.training.distributed import process_group_backend, weights_fingerprint
from naics_ml.training.objective import StageObjective
from naics_ml.training.ranks import rank_device
from naics_ml.training.validation import query_validator

from .test_train import config, prepared, query_source, run, tiny_codes, triplet_source

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
HAS_ACCELERATOR = torch.cuda.is_available() or torch.backends.mps.is_available()


@pytest.fixture(scope="module")
def codes() -> pl.DataFrame:
    return tiny_codes()


def test_settings_resolve_on_this_machine():
    assert resolve_device("cpu") == CPU
    if not HAS_ACCELERATOR:
        assert resolve_device("auto") == CPU
    if not torch.cuda.is_available():
        for setting in ("cuda", "cuda:1"):
            with pytest.raises(ValueError, match=rf"device '{setting}': CUDA is not available"):
                resolve_device(setting)
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="device 'mps': Apple MPS is not available"):
            resolve_device("mps")
    for bad in ("gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", " cpu", "", None):
        with pytest.raises(ValueError, match="device must be one of"):
            resolve_device(bad)
    with pytest.raises(ValueError, match="device must be one of"):
        TrainConfig(device="gpu")  # caught in the config, before any training
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="float16")
    assert (TrainConfig().device, TrainConfig().precision) == ("cpu", "float32")


def test_cuda_indices_torchrun_ranks_and_backends(monkeypatch):
    """The CUDA branches' logic with two faked GPUs (torch.device needs no GPU to exist)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device 'cuda:2': this machine has 2 CUDA device"):
        resolve_device("cuda:2")
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="each rank takes cuda:LOCAL_RANK"):
        resolve_device("cuda:0", local_rank=1)
    with pytest.raises(ValueError, match="LOCAL_RANK 2"):
        resolve_device("cuda", local_rank=2)
    # torchrun's environment: each rank its own GPU and NCCL; CPU ranks stay on gloo
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("auto") == torch.device("cuda", 1)
    assert process_group_backend(rank_device("cuda")) == "nccl"
    assert rank_device("cpu") == CPU and process_group_backend(CPU) == "gloo"
    with pytest.raises(ValueError, match="CUDA or the CPU"):
        process_group_backend(torch.device("mps"))
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: LOCAL_RANK is not read
    assert rank_device("cuda") == torch.device("cuda", 0)


def test_configs_and_the_launchpad_import_without_torch():
    modules = [
        "naics_ml.model.device",
        "naics_ml.model.precision",
        "naics_ml.training.config",
        "naics_ml.training.presets",
        "naics_assets.assets.stages",
    ]
    code = f"import sys\nfor m in {modules}: __import__(m)\nprint('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_lorentz_maths_stays_float64_on_the_points_device():
    """On any device but MPS (no float64 there: the CPU) the float64 maths runs where the points
    are; ``meta`` stands in for a GPU (shapes, dtypes and devices, no data)."""
    assert lorentz.float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert lorentz.float64_device(torch.device("mps")) == CPU
    x = torch.empty(5, 9, device="meta")
    y = torch.empty(3, 9, device="meta")
    assert (lorentz.lift(x, 1.0).dtype, lorentz.lift(x, 1.0).device.type) == (torch.float64, "meta")
    outputs = {
        "distance": lorentz.distance(x[:3], y),
        "pairwise": lorentz.pairwise_distance(x, y),
        "radius": lorentz.radius(x),
    }
    for name, out in outputs.items():
        assert (out.dtype, out.device.type) == (torch.float32, "meta"), name
    lifted = lorentz.LiftedPoints(y)
    assert lifted.space_t.dtype == torch.float64 and lifted.space_t.device.type == "meta"
    assert (
        lifted.distance_from(x).shape == (5, 3) and lifted.distance_from(x).dtype == torch.float64
    )
    assert lorentz.manifold_violation(x).dtype == torch.float64


def _naics_tensors(value: object, name: str, found: dict[str, Tensor]) -> None:
    """Every tensor reachable from ``value`` through the library's own (non-module) objects."""
    if isinstance(value, Tensor):
        found[name] = value
    elif type(value).__module__.startswith("naics_ml") and not isinstance(value, nn.Module):
        for key, item in vars(value).items():
            _naics_tensors(item, f"{name}.{key}", found)


def test_moving_the_model_moves_what_it_prepared(codes):
    model, _ = prepared(codes)
    refresh_bank(model)
    model.to("meta")
    found: dict[str, Tensor] = {}
    for key, value in vars(model).items():
        _naics_tensors(value, key, found)
    expected = {
        "prepared.cache.flat",
        "prepared.cache.lengths",
        "prepared.groups.members",
        "prepared.code_slots",
        "bank.rows",
    }
    assert expected <= set(found)  # the walk sees the prepared state
    assert {n for n, t in found.items() if t.device.type != "meta"} == set()
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.device.type == "meta" and model.encoder.device.type == "meta"


def test_no_tensor_is_made_on_torchs_default_device(codes):
    """Every tensor the step's loss, its backward, the bank, validation and ``predict`` make is
    made on the model's device (or deliberately on the CPU): with torch's default device set
    to ``meta`` the same calls give the same numbers. A forgotten ``device=`` would mix meta
    and CPU tensors and fail here, as it would mix CPU and CUDA tensors on a GPU."""
    model, query_codes = prepared(codes)
    objective = StageObjective(model, config(), codes, query_codes)
    batch = next(iter(triplet_source(codes)(0)))
    query_ids = next(iter(query_source(len(query_codes))(0)))
    six = codes.filter(pl.col("level") == 6)
    validate = query_validator(np.arange(len(query_codes)), query_codes, six["index"], 0.1)
    memory = pl.DataFrame(
        {"text": ["wheat dairy plant", "coal gold plant"], "code": six["code"].to_list()[::4]}
    )
    blend = MemoryConfig(weight=0.3, lexical_weight=0.2, base_weight=0.2)

    def everything() -> tuple:
        refresh_bank(model)
        model.train()
        torch.manual_seed(0)
        loss = objective(model, batch, query_ids, step=0)
        loss.total.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.eval()
            validation = validate(model)
        classifier = Classifier(model, codes, 0.1, memory=memory, memory_config=blend)
        predictions = classifier.predict(["wheat plant", "gold mine"], top_k=3)
        return (
            float(loss.total.detach()),
            grads,
            validation,
            predictions,
            classifier.code_embeddings(),
        )

    everything()  # the first backward of a process differs in the last bits (so before too)
    on_cpu = everything()
    with torch.device("meta"):
        with_meta_default = everything()
    assert with_meta_default[0] == on_cpu[0] and with_meta_default[2:4] == on_cpu[2:4]
    assert all(torch.equal(a, b) for a, b in zip(on_cpu[1], with_meta_default[1], strict=True))
    assert with_meta_default[4].equals(on_cpu[4])


def test_cpu_training_is_bit_identical_whatever_the_device_setting(tmp_path, codes):
    torch.set_num_threads(1)
    # geoopt's Lorentz maths is TorchScript: its first calls in a process run unoptimised and
    # round differently, so the comparison starts after a short training (as it did before)
    run(tmp_path / "warm-up", codes, config(steps=3))
    settings = {"default": {}, "cpu": {"device": "cpu"}}
    if not HAS_ACCELERATOR:
        settings["auto"] = {"device": "auto"}  # resolves to the CPU here
    weights = {}
    for name, overrides in settings.items():
        cfg = config(steps=8, checkpoint_every=4, bank_refresh_every=4, **overrides)
        model, _, _ = run(tmp_path / name, codes, cfg)
        assert model.device == CPU and model.encoder.layer_dtype is None
        weights[name] = weights_fingerprint(model.trainable_state_dict())
    assert len(set(weights.values())) == 1, weights


def test_a_stage_resumes_on_another_device_not_in_another_precision(tmp_path, codes):
    cfg = config(steps=8, checkpoint_every=4, bank_refresh_every=4, device="cpu")

    def crash(step, metrics):
        if step == 6:
            raise KeyboardInterrupt("simulated crash")

    for folder in ("device", "precision"):
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / folder, codes, cfg, on_metrics=crash)
    # written before the settings existed: a train config without device and precision
    state = load_checkpoint(tmp_path / "device")
    for key in ("device", "precision"):
        del state["train_config"][key]
    save_checkpoint(state, tmp_path / "device" / "checkpoint.pt")
    _, moved, _ = run(tmp_path / "device", codes, dataclasses.replace(cfg, device="auto"))
    assert moved.resumed_from == 4 and moved.steps == 8
    _, other, _ = run(tmp_path / "precision", codes, dataclasses.replace(cfg, precision="bfloat16"))
    assert other.resumed_from == 0
