"""NaicsModel on a tiny random BERT with the packaged MiniLM tokenizer."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from naics_ml.model.base import load_tokenizer, resolve_base_model
from naics_ml.model.channels import CHANNELS
from naics_ml.model.lorentz import (
    LiftedPoints,
    Lorentz,
    check_on_manifold,
    distance,
    expmap0,
    pairwise_distance,
    radius,
)
from naics_ml.model.loss import hyperbolic_info_nce, load_balance_loss
from naics_ml.model.network import ModelConfig, NaicsModel
from naics_ml.model.packed import split_into_packs
from naics_ml.model.precision import resolve_precision
from naics_ml.model.prepared import query_rows
from naics_ml.training.bank import bank_is_current, refresh_bank
from naics_ml.training.checkpoint import load_checkpoint, save_checkpoint

from .tiny import tiny_bert, tiny_mpnet

CODE_TEXTS: dict[str, list[str | None]] = {
    "title": [
        "Soybean Farming",
        "Oilseed Farming",
        "Dog and Cat Food",
        "Flour Milling",
        "Bakeries",
    ],
    "description": [
        "This industry comprises establishments primarily engaged in growing soybeans.",
        "Growing fibrous oilseed producing plants and/or producing oilseed seeds.",
        "Manufacturing dog and cat food from ingredients, such as grains and meat products.",
        None,
        "Retailing bakery products not for immediate consumption made on the premises.",
    ],
    "excluded": [
        None,
        "Growing soybeans are classified in Industry 111110, Soybean Farming.",
        None,
        "Milling rice is classified in Industry 311212.",
        None,
    ],
    "examples": [None, "sunflower farming\ncanola farming", "pet food", "flour mills", None],
}
QUERIES = ["soy beans grower", "kibble maker", "bread shop", "canola farming"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("all-MiniLM-L6-v2")


def tiny_config(**overrides) -> ModelConfig:
    values = {
        "lora_layers": 1,
        "embedding_dim": 16,
        "expert_hidden": 32,
        "cache_dtype": "float32",
    }
    values.update(overrides)
    return ModelConfig(**values)


def make_model(tokenizer, seed: int = 0, texts=CODE_TEXTS, **overrides) -> NaicsModel:
    base = tiny_bert(tokenizer.vocab_size, seed)
    model = NaicsModel(tiny_config(**overrides), base=base, tokenizer=tokenizer)
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    model.prepare(texts, QUERIES)
    return model.eval()


def test_resolve_base_model_finds_packaged_minilm():
    path = Path(resolve_base_model("all-MiniLM-L6-v2"))
    assert (path / "config.json").exists()
    assert (path / "model.safetensors").exists()
    assert resolve_base_model("some-org/some-model") == "some-org/some-model"


def test_config_round_trip_through_json(tmp_path):
    config = ModelConfig(lora_layers=3, lora_target_modules=("query", "key", "value"))
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"nope": 1})
    assert ModelConfig.from_dict({"lora_layers": 2}).line_channels == ("examples",)
    # checkpoints written before line channels existed read every channel as one text
    old = config.to_dict()
    del old["line_channels"]
    save_checkpoint({"model_config": old}, tmp_path / "checkpoint.pt")
    loaded = ModelConfig.from_dict(load_checkpoint(tmp_path)["model_config"])
    assert loaded.line_channels == ()


def test_line_channel_is_the_normalised_mean_of_its_lines(tokenizer):
    model = make_model(tokenizer)
    examples = CHANNELS.index("examples")
    with torch.no_grad():
        code = model.channel_vectors(model.prepared.code_slots[1:2])[0, examples]
        # queries 3 ("canola farming", also a line of code 1) and 1 ("kibble maker")
        queries = model.channel_vectors(query_rows(model.prepared.query_slots[[3, 1]]))
        sunflower = model.encoder.encode_cached(
            model.prepared.cache,
            torch.tensor([model.prepared.texts.index("sunflower farming")]),
            "examples",
        )[0]
    expected = torch.nn.functional.normalize(sunflower + queries[0, examples], dim=0)
    torch.testing.assert_close(code, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(code, queries[1, examples], atol=1e-3)


def test_whole_text_channels_when_no_line_channels(tokenizer):
    lines = make_model(tokenizer)
    whole = make_model(tokenizer, line_channels=())
    assert "sunflower farming\ncanola farming" in whole.prepared.texts
    assert "sunflower farming\ncanola farming" not in lines.prepared.texts
    with pytest.raises(ValueError, match="line_channels"):
        make_model(tokenizer, line_channels=("nope",))


def test_shapes_and_points_on_manifold(tokenizer):
    model = make_model(tokenizer)
    ids = torch.tensor([[0, 1, 2], [3, 4, 0]])
    enc = model.encode_codes(ids)
    assert enc.points.shape == (2, 3, 17)
    model.manifold.check(enc.points)
    assert enc.balance_loss.ndim == 0
    assert enc.expert_utilization.shape == (4,)
    assert math.isclose(float(enc.expert_utilization.sum()), 1.0, rel_tol=1e-6)
    queries = model.encode_queries(torch.tensor([0, 2]))
    assert queries.points.shape == (2, 17)
    check_on_manifold(queries.points)


def test_only_lora_and_fusion_are_trainable(tokenizer):
    model = make_model(tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n or n.startswith("fusion.") for n in trainable)
    # LoRA only on the top layer (lora_layers=1 of 2), one adapter per channel
    lora = [n for n in trainable if "lora_A" in n]
    assert all(".layer.1." in n for n in lora)
    assert {n.split("lora_A.")[1].split(".")[0] for n in lora} == set(CHANNELS)


def test_cached_path_equals_uncached_full_forward(tokenizer):
    model = make_model(tokenizer)
    ids = torch.tensor([0, 1, 2, 3, 4, 1])
    cached = model.encode_codes(ids)
    full = model.encode_codes_reference(ids, dedupe=False, pad_to_max_length=True)
    torch.testing.assert_close(cached.points, full.points, atol=1e-5, rtol=1e-5)
    # gradients of the LoRA and fusion weights agree as well
    grads = []
    for enc in (model.encode_codes(ids), model.encode_codes_reference(ids, dedupe=False)):
        model.zero_grad()
        (enc.points[:, 1:] ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any("lora_A.excluded" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-4)


def test_fp16_cache_is_close_to_uncached(tokenizer):
    model = make_model(tokenizer, cache_dtype="float16")
    ids = torch.arange(5)
    cached = model.encode_codes(ids).points
    full = model.encode_codes_reference(ids).points
    assert float(distance(cached, full).max()) < 1e-2


def test_missing_channel_is_masked_not_encoded(tokenizer):
    model = make_model(tokenizer)
    before = model.encode_codes(torch.arange(5)).points
    with torch.no_grad():  # change only the excluded-channel adapter
        for name, param in model.named_parameters():
            if "lora_B.excluded" in name:
                param.add_(1.0)
    after = model.encode_codes(torch.arange(5)).points
    has_excluded = torch.tensor([t is not None for t in CODE_TEXTS["excluded"]])
    torch.testing.assert_close(after[~has_excluded], before[~has_excluded])
    assert (after[has_excluded] - before[has_excluded]).abs().amax(-1).min() > 1e-4
    # and a missing text is not the same as an empty string
    empty = {c: ["" if t is None else t for t in texts] for c, texts in CODE_TEXTS.items()}
    with_empty = make_model(tokenizer, texts=empty).encode_codes(torch.arange(5)).points
    reference = make_model(tokenizer).encode_codes(torch.arange(5)).points
    assert (with_empty[~has_excluded] - reference[~has_excluded]).abs().max() > 1e-4


def test_distinct_code_dedupe_matches_one_by_one(tokenizer):
    model = make_model(tokenizer)
    ids = torch.tensor([[2, 2, 0], [4, 2, 2]])
    together = model.encode_codes(ids).points
    for i in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            alone = model.encode_codes(ids[i, j : j + 1]).points[0]
            torch.testing.assert_close(together[i, j], alone, atol=1e-5, rtol=1e-5)


def test_encode_texts_matches_prepared_queries(tokenizer):
    model = make_model(tokenizer)
    prepared = model.encode_queries(torch.arange(len(QUERIES))).points
    # prepared texts start from the cache, others run the whole transformer: same points
    unprepared = make_model(tokenizer, texts=CODE_TEXTS)
    unprepared.prepare(CODE_TEXTS)  # codes only: every query runs the whole transformer
    for m in (model, unprepared):
        free = m.encode_texts(QUERIES, batch_size=2)
        torch.testing.assert_close(free, prepared, atol=1e-5, rtol=1e-5)
        check_on_manifold(free)
    mixed = ["a brand new text", QUERIES[2], "another unseen one", QUERIES[0]]
    together = model.encode_texts(mixed, batch_size=1)
    torch.testing.assert_close(together[[3, 1]], prepared[[0, 2]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        together[[0, 2]], unprepared.encode_texts([mixed[0], mixed[2]]), atol=1e-5, rtol=1e-5
    )
    assert model.encode_texts([]).shape == (0, 17)
    # both routes at once share the frozen prefix and give the same vectors as two calls
    points, frozen = model.encode_texts_and_frozen(mixed, batch_size=3)
    torch.testing.assert_close(points, model.encode_texts(mixed), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(frozen, model.encode_frozen(mixed), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(points[:, 1:5], frozen[:, :4])  # the adapter changes the route
    # bfloat16 layers (model/precision.py): close to float32, and the output stays float32
    model.encoder.layer_dtype = resolve_precision("bfloat16")
    try:
        low = model.encode_frozen(mixed)
    finally:
        model.encoder.layer_dtype = None
    assert low.dtype == torch.float32
    assert float((low * frozen).sum(1).min()) > 0.99 and not torch.equal(low, frozen)
    assert resolve_precision("float32") is None
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8")


@pytest.mark.parametrize("layer_dtype", [None, torch.bfloat16])
def test_packed_texts_give_the_padded_vectors(tokenizer, layer_dtype):
    """Free texts run packed (model/packed.py): every text's vectors, through both routes, as
    the padded micro-batches give them, also split into several packs and attention groups."""
    model = make_model(tokenizer)
    encoder = model.encoder
    encoder.layer_dtype = layer_dtype
    texts = [
        "a",
        "bakery",
        "we repair commercial refrigeration units and walk-in coolers for restaurants",
        "soy beans grower",
        "pet food, dog kibble and cat treats made from grains and meat by-products " * 3,
        "flour mill",
        "bread shop",
    ]
    routes = ("examples", None)
    assert encoder.runs_packed
    packed = encoder.encode_uncached_routes(texts, routes)
    encoder.max_rows, encoder.pack_tokens = 2, 40  # more groups, and several packs
    split = encoder.encode_uncached_routes(texts, routes)
    encoder.runs_packed = False
    padded = encoder.encode_uncached_routes(texts, routes)
    # bfloat16 keeps 8 bits: a product of another shape may round one value the other way
    tolerance = 1e-6 if layer_dtype is None else 1e-3
    for p, s, ref in zip(packed, split, padded, strict=True):
        torch.testing.assert_close(p, ref, atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(s, ref, atol=tolerance, rtol=tolerance)
    assert not torch.allclose(packed[0], packed[1])  # the adapter changes the route
    lengths = (3, 50, 9, 30, 12)
    packs = split_into_packs([[0] * n for n in lengths], limit=40)
    assert [[lengths[i] for i in pack] for pack in packs] == [[3, 9, 12], [30], [50]]
    mpnet = NaicsModel(
        tiny_config(lora_target_modules=("q", "v")),
        base=tiny_mpnet(tokenizer.vocab_size),
        tokenizer=tokenizer,
    )
    assert not mpnet.encoder.runs_packed  # its layers add a position bias: padded path


def test_frozen_weights_stored_in_bfloat16_give_the_same_vectors(tokenizer):
    """An inference-only model keeps its frozen matrices in bfloat16 (no cast per call): the
    same vectors as autocasting float32 weights; LoRA stays float32; float32 paths refuse."""
    model = make_model(tokenizer)
    texts = ["a brand new text", QUERIES[1], "another unseen one"]
    model.encoder.layer_dtype = torch.bfloat16
    autocast = model.encode_texts_and_frozen(texts)
    with pytest.raises(ValueError, match="need layer_dtype"):
        model.encoder.store_frozen_weights(torch.float16)
    model.encoder.store_frozen_weights(torch.bfloat16)
    stored = model.encode_texts_and_frozen(texts)
    for before, after in zip(autocast, stored, strict=True):
        torch.testing.assert_close(after, before, atol=0, rtol=0)
    weights = {n: p.dtype for n, p in model.encoder.base.encoder.named_parameters()}
    assert {d for n, d in weights.items() if "lora_" in n} == {torch.float32}
    assert torch.bfloat16 in {d for n, d in weights.items() if n.endswith("dense.weight")}
    with pytest.raises(RuntimeError, match=r"stored in torch\.bfloat16"):
        model.prepare(CODE_TEXTS, QUERIES)  # the prefix cache is float32


def test_prefix_cache_on_disk_is_reused_and_keyed_by_weights_and_texts(tokenizer, tmp_path):
    reference = make_model(tokenizer)
    first = make_model(tokenizer)
    first.prepare(CODE_TEXTS, QUERIES, cache_dir=tmp_path)
    (stored,) = tmp_path.glob("*.pt")
    second = make_model(tokenizer)
    built = []
    second.encoder._cache_from_ids = lambda *a, **k: built.append(a)  # must not be needed
    second.prepare(CODE_TEXTS, QUERIES, cache_dir=tmp_path)
    assert built == []
    ids = torch.arange(len(CODE_TEXTS["title"]))
    for model in (first, second):
        torch.testing.assert_close(
            model.encode_codes(ids).points, reference.encode_codes(ids).points
        )
    # other texts, or other frozen weights (another base model), get their own file
    make_model(tokenizer).prepare(CODE_TEXTS, QUERIES[:2], cache_dir=tmp_path)
    make_model(tokenizer, seed=1).prepare(CODE_TEXTS, QUERIES, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 3
    # a damaged file is rebuilt, not trusted
    stored.write_bytes(b"truncated")
    third = make_model(tokenizer)
    third.prepare(CODE_TEXTS, QUERIES, cache_dir=tmp_path)
    torch.testing.assert_close(third.encode_codes(ids).points, reference.encode_codes(ids).points)
    assert stored.stat().st_size > 1000


def test_loss_decreases_on_toy_problem(tokenizer):
    model = make_model(tokenizer)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    anchor, positive = torch.tensor([0, 2, 3]), torch.tensor([1, 4, 2])
    negatives = torch.tensor([[2, 3, 4], [0, 1, 3], [0, 1, 4]])
    losses = []
    torch.manual_seed(1)
    for _ in range(25):
        enc = model.encode_codes(torch.cat([anchor[:, None], positive[:, None], negatives], 1))
        pts = enc.points
        loss = hyperbolic_info_nce(pts[:, 0], pts[:, 1], pts[:, 2:], Lorentz(1.0), 0.1)
        total = loss + model.config.balance_weight * enc.balance_loss
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    check_on_manifold(model.encode_all_codes())


def test_load_balance_loss_hand_made():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.1, 0.6, 0.2, 0.1]])
    dispatch = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    # f = (1, 2, 1, 0) / 4, P = (0.4, 0.4, 0.15, 0.05): 4 * (0.1 + 0.2 + 0.0375)
    assert math.isclose(float(load_balance_loss(probs, dispatch)), 1.35, rel_tol=1e-6)
    uniform = torch.full((8, 4), 0.25)
    assert math.isclose(float(load_balance_loss(uniform, torch.eye(4).repeat(2, 1))), 1.0)
    collapsed = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(5, 1)
    assert math.isclose(float(load_balance_loss(collapsed, collapsed)), 4.0)


def test_sparse_expert_dispatch_equals_dense_mixture():
    """Running each expert on its routed rows only is the same function, gradients included."""
    from naics_ml.model.fusion import MoEFusion

    torch.manual_seed(0)
    fusion = MoEFusion(hidden=16, num_channels=4, out_dim=16, num_experts=4, top_k=2)
    for expert in fusion.experts:  # make the experts matter (they start as tiny corrections)
        torch.nn.init.normal_(expert[2].weight, std=0.5)
    fusion.eval()  # no gate noise: both calls route identically
    channels = torch.randn(40, 4, 16)
    mask = torch.rand(40, 4) > 0.3
    mask[:, 0] = True
    outputs = {}
    for name, forward in (("sparse", fusion.forward), ("dense", fusion.forward_dense)):
        fusion.zero_grad()
        out = forward(channels, mask)
        (out.tangent**2).sum().backward()
        grads = {n: p.grad.clone() for n, p in fusion.named_parameters()}
        outputs[name] = (out, grads)
    (sparse, sparse_grads), (dense, dense_grads) = outputs["sparse"], outputs["dense"]
    assert float(dense.tangent.abs().max()) > 0.1
    torch.testing.assert_close(sparse.tangent, dense.tangent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse.dispatch, dense.dispatch)
    assert sparse.dispatch.sum(1).eq(2).all() and sparse.dispatch.sum(0).gt(0).all()
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, atol=1e-5, rtol=1e-5)


def test_info_nce_hand_made():
    def point(r: float) -> torch.Tensor:  # at distance r from the origin along one axis
        return expmap0(torch.tensor([[r, 0.0, 0.0]]))[0]

    anchor = point(0.0)[None]
    positive = point(1.0)[None]
    negatives = torch.stack([point(2.0), point(3.0)])[None]
    loss = hyperbolic_info_nce(anchor, positive, negatives, Lorentz(1.0), temperature=1.0)
    expected = math.log(1 + math.exp(-1) + math.exp(-2))
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    masked = hyperbolic_info_nce(
        anchor, positive, negatives, Lorentz(1.0), 0.5, negative_mask=torch.tensor([[True, False]])
    )
    assert math.isclose(float(masked), math.log(1 + math.exp(-2)), rel_tol=1e-5)


def test_lorentz_geometry():
    v = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, -5.0], [7.0, 7.0]])
    x = expmap0(v)
    check_on_manifold(x)
    torch.testing.assert_close(radius(x), v.norm(dim=-1), atol=1e-4, rtol=1e-5)
    # along one geodesic through the origin distances add; at right angles they do not
    a, b = expmap0(torch.tensor([[2.0, 0.0]])), expmap0(torch.tensor([[-1.5, 0.0]]))
    assert math.isclose(float(distance(a, b)), 3.5, rel_tol=1e-5)
    pair = pairwise_distance(x, x)
    torch.testing.assert_close(pair, pair.T)
    torch.testing.assert_close(pair[1], distance(x[1:2], x), atol=1e-4, rtol=1e-5)
    assert float(pair.diagonal().abs().max()) < 1e-3
    # a fixed set lifted once gives the same distances (float64, before rounding)
    fixed = LiftedPoints(x, 4.0)
    torch.testing.assert_close(fixed.distance_from(x[:2]).float(), pairwise_distance(x[:2], x, 4.0))
    assert len(fixed) == 4
    # curvature k: radius scales with sqrt(k)
    torch.testing.assert_close(radius(expmap0(v, 4.0), 4.0), v.norm(dim=-1), atol=1e-4, rtol=1e-5)
    bad = x.clone()
    bad[1, 0] += 0.5
    with pytest.raises(ValueError, match="off the hyperboloid"):
        check_on_manifold(bad)


def test_trainable_state_dict_round_trip(tokenizer):
    trained = make_model(tokenizer, seed=0)
    with torch.no_grad():
        for p in trained.fusion.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = trained.trainable_state_dict()
    assert state and all("lora_" in k or k.startswith("fusion.") for k in state)
    fresh = make_model(tokenizer, seed=0)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            if "lora_" in name:
                param.zero_()
    fresh.load_trainable_state_dict(state)
    ids = torch.arange(5)
    torch.testing.assert_close(fresh.encode_codes(ids).points, trained.encode_codes(ids).points)
    with pytest.raises(ValueError, match="mismatch"):
        fresh.load_trainable_state_dict({k: v for k, v in state.items() if "fusion" not in k})


def test_bank_rows_equal_live_encodings_after_refresh(tokenizer):
    model = make_model(tokenizer)
    assert not model.bank.filled
    model.train()  # the refresh runs in eval mode and restores the mode
    refresh_bank(model, batch_size=2)
    assert model.training
    bank = model.bank.rows
    assert bank.shape == (5, len(CHANNELS), 32) and bank.dtype == torch.float32
    model.eval()  # the bank is the deterministic encoding: no LoRA dropout
    with torch.no_grad():
        live = model.channel_vectors(model.prepared.code_slots)
    torch.testing.assert_close(bank, live, atol=1e-6, rtol=1e-6)
    missing = model.prepared.code_slots < 0
    assert float(bank[missing].abs().max()) == 0.0  # masked channels are zero rows
    assert float(bank[~missing].norm(dim=-1).min()) > 0.99  # pooled vectors are unit length


def test_bank_with_all_codes_live_equals_exact_path(tokenizer):
    model = make_model(tokenizer)
    ids = torch.tensor([[0, 1, 2], [3, 4, 1]])
    exact = model.encode_codes(ids)
    refresh_bank(model)
    torch.manual_seed(0)
    everything = model.encode_codes(ids, live=torch.arange(5))
    torch.testing.assert_close(everything.points, exact.points, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(everything.balance_loss, exact.balance_loss)
    # a fresh bank gives the same points with no code live (only gradients differ)
    from_bank = model.encode_codes(ids, live=set())
    torch.testing.assert_close(from_bank.points, exact.points, atol=1e-6, rtol=1e-6)
    assert from_bank.points.requires_grad  # through the fusion
    # live=None stays exact even with a (stale) bank; without a bank live is ignored
    with torch.no_grad():
        model.bank.rows.add_(1.0)
    torch.testing.assert_close(model.encode_codes(ids).points, exact.points)
    model.bank.clear()
    torch.testing.assert_close(model.encode_codes(ids, live={0}).points, exact.points)


def test_bank_gradients_reach_lora_only_through_live_codes(tokenizer):
    model = make_model(tokenizer)
    refresh_bank(model)
    # code 3 has only title + excluded + examples; code 0 only title + description
    enc = model.encode_codes(torch.tensor([0, 3]), live={3})
    model.zero_grad()
    (enc.points[:, 1:] ** 2).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    lora_with_grad = {
        n.split("lora_B.")[1].split(".")[0]
        for n, g in grads.items()
        if "lora_B" in n and g is not None and float(g.abs().max()) > 0
    }
    assert lora_with_grad == {"title", "excluded", "examples"}  # code 3's channels, not code 0's
    # the fusion sees both codes: its description projection is trained through bank code 0
    desc = CHANNELS.index("description")
    assert float(model.fusion.channel_weight.grad[desc].abs().max()) > 0
    assert all(g is not None for n, g in grads.items() if n.startswith("fusion."))
    # and the live code's bank row was updated with the (detached) fresh value
    assert not model.bank.rows.requires_grad


def test_bank_is_stale_for_non_live_codes_until_refresh(tokenizer):
    model = make_model(tokenizer)
    refresh_bank(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.title" in name:
                param.add_(0.5)
    exact = model.encode_codes(torch.arange(5)).points
    mixed = model.encode_codes(torch.arange(5), live=torch.tensor([1, 4])).points
    torch.testing.assert_close(mixed[[1, 4]], exact[[1, 4]], atol=1e-6, rtol=1e-6)
    assert float(distance(mixed[[0, 2, 3]], exact[[0, 2, 3]]).min()) > 1e-4  # stale
    # live codes refreshed their rows; the others follow after refresh_bank
    again = model.encode_codes(torch.arange(5), live=set()).points
    torch.testing.assert_close(again[[1, 4]], exact[[1, 4]], atol=1e-6, rtol=1e-6)
    refresh_bank(model)
    torch.testing.assert_close(model.encode_codes(torch.arange(5), live=set()).points, exact)
    # new weights or new texts invalidate the bank
    model.load_trainable_state_dict(model.trainable_state_dict())
    assert not model.bank.filled
    refresh_bank(model)
    model.prepare(CODE_TEXTS)
    assert not model.bank.filled


def test_exact_path_reads_a_current_bank_until_a_weight_changes(tokenizer, monkeypatch):
    model = make_model(tokenizer)
    model.eval()
    ids = torch.arange(5)
    with torch.no_grad():
        exact = model.encode_codes(ids).points
    assert not bank_is_current(model)
    refresh_bank(model)
    assert bank_is_current(model)
    calls = []
    real = model.channel_vectors
    monkeypatch.setattr(model, "channel_vectors", lambda slots: calls.append(1) or real(slots))
    with torch.no_grad():
        from_bank = model.encode_codes(ids).points
    assert calls == []  # no transformer pass: every code came from the bank
    torch.testing.assert_close(from_bank, exact, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.encode_all_codes(), exact, atol=1e-6, rtol=1e-6)
    assert calls == []
    model.encode_codes(ids)  # gradients wanted: the exact path runs the adapters
    model.train()
    with torch.no_grad():
        model.encode_codes(ids)  # training mode (dropout): exact path too
    assert len(calls) == 2
    # an optimizer step changes the weights: the bank is no longer current
    model.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    (model.encode_codes(ids).points[:, 1:] ** 2).sum().backward()
    optimizer.step()
    assert not bank_is_current(model)
    with torch.no_grad():
        moved = model.encode_codes(ids).points
    assert len(calls) == 4
    assert float(distance(moved, exact).max()) > 1e-4
    # a live encoding overwrites rows with training-mode values: not current either
    refresh_bank(model)
    assert bank_is_current(model)
    model.train()
    model.encode_codes(ids, live={0})
    assert not bank_is_current(model)


def test_classifier_reuses_a_model_prepared_for_the_same_codes(tokenizer, monkeypatch):
    import polars as pl

    from naics_ml.inference.classifier import Classifier
    from naics_ml.model.channels import code_channel_texts

    n = len(CODE_TEXTS["title"])
    codes = pl.DataFrame(
        {
            "index": list(range(n)),
            "code": ["111110", "111120", "311111", "311211", "311811"],
            "level": [6] * n,
            "sector": ["11", "11", "31", "31", "31"],
            **{c: CODE_TEXTS[c] for c in CHANNELS},
        }
    )
    model = make_model(tokenizer, texts=code_channel_texts(codes))
    calls = []
    original = model.prepare
    monkeypatch.setattr(model, "prepare", lambda *a, **k: calls.append(1) or original(*a, **k))
    clf = Classifier(model, codes)
    assert calls == []  # already prepared for these texts (with queries, even)
    assert model.prepared.num_queries == len(QUERIES)
    torch.testing.assert_close(clf._points, model.encode_all_codes())
    other = codes.with_columns(pl.col("title").str.to_uppercase())
    Classifier(model, other)
    assert calls == [1]  # other texts: prepared again


def test_mpnet_layers_run_one_by_one_as_in_the_full_forward(tokenizer):
    """MPNet (the GPU preset's base) adds a relative position bias in every layer and returns
    tuples: the cached layer-by-layer path must still equal the whole transformer."""
    base = tiny_mpnet(tokenizer.vocab_size)
    config = tiny_config(lora_target_modules=("q", "v"))
    model = NaicsModel(config, base=base, tokenizer=tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    lora = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert lora == {f"encoder.base.encoder.layer.1.attention.attn.{m}" for m in ("q", "v")}
    model.prepare(CODE_TEXTS, QUERIES)
    model.eval()
    ids = torch.tensor([0, 1, 2, 3, 4, 1])
    cached = model.encode_codes(ids).points
    full = model.encode_codes_reference(ids, dedupe=False, pad_to_max_length=True).points
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    free = model.encode_texts(QUERIES)  # prepared texts from the cache; the same without it
    torch.testing.assert_close(free, model.encode_queries(torch.arange(4)).points)


def test_the_manifold_holds_k_once_over_the_pure_functions():
    manifold = Lorentz(2.0)
    v = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=torch.float64)
    x = manifold.expmap0(v)
    assert torch.equal(x, expmap0(v, 2.0))
    assert torch.equal(manifold.distance(x[0], x[1]), distance(x[0], x[1], 2.0))
    assert torch.equal(manifold.pairwise_distance(x, x), pairwise_distance(x, x, 2.0))
    assert torch.equal(manifold.radius(x), radius(x, 2.0))
    assert manifold.ball_radius == pytest.approx(2.0**0.5)
    assert float(manifold.to_poincare(x).norm(dim=-1).max()) < manifold.ball_radius
    with pytest.raises(ValueError, match="off the hyperboloid"):
        manifold.check(x * 1.5)
    with pytest.raises(ValueError, match="k must be > 0"):
        Lorentz(0.0)
