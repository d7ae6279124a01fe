"""4-bit blocks (ranking.backends.q4): found exactly in Q4_1-dequantized weights and nowhere
else, multiplied like the float32 weight, and used by the fast step of a Q4_1 Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranking.backends import q4
from ranking.backends.llama_step import _projections
from ranking.loading import load_backend
from tests.fixtures.models import prompt_ids, steps_match_brute_force


def ggml_q4_1(w: torch.Tensor) -> torch.Tensor:
    """What a GGUF Q4_1 file holds, dequantized as transformers' GGUF loader does: per block
    of 32 inputs, min and (max - min) / 15 stored as float16 and codes 0..15
    (ggml's quantize_row_q4_1_ref), then `d * q + m` in float32."""
    out, inp = w.shape
    blocks = w.detach().float().reshape(out, inp // 32, 32)
    lo = blocks.amin(-1, keepdim=True)
    d = (blocks.amax(-1, keepdim=True) - lo) / 15
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.clamp(((blocks - lo) * inv + 0.5).floor(), 0, 15)
    d16, m16 = d.half().float(), lo.half().float()
    return (d16 * q + m16).reshape(out, inp)


@pytest.fixture
def q4_weight() -> torch.Tensor:
    torch.manual_seed(1)
    return ggml_q4_1(torch.randn(200, 96) * 0.05)


def test_blocks_are_recovered_bit_for_bit(q4_weight):
    m = q4.find_q4(q4_weight)
    assert m is not None and m.shape == (200, 96)
    assert torch.equal(m.dequantize(), q4_weight)
    assert m.nbytes == 200 * 96 // 2 + 2 * 4 * 200 * 96 // 32  # 0.75 bytes per weight


@pytest.mark.parametrize(
    "weight",
    [
        pytest.param(torch.randn(64, 64), id="plain float32"),
        pytest.param(ggml_q4_1(torch.randn(64, 64)).bfloat16(), id="bfloat16"),
        pytest.param(ggml_q4_1(torch.randn(64, 64)) + 1e-3, id="shifted by a non-block value"),
        pytest.param(torch.randn(64, 40), id="input not a multiple of 32"),
        pytest.param(torch.randn(64), id="not a matrix"),
    ],
)
def test_weights_that_are_not_4_bit_blocks_are_left_alone(weight):
    assert q4.find_q4(weight) is None


def test_a_one_edited_weight_is_enough_to_refuse(q4_weight):
    edited = q4_weight.clone()
    edited[7, 33] += 1e-4
    assert q4.find_q4(edited) is None


@pytest.mark.parametrize("out_features", [200, 128, 32, 1])
def test_one_row_product_matches_the_float32_weight(out_features):
    torch.manual_seed(2)
    w = ggml_q4_1(torch.randn(out_features, 160) * 0.1)
    m = q4.find_q4(w)
    x, residual = torch.randn(1, 160), torch.randn(1, out_features)
    torch.testing.assert_close(q4.q4_matmul(x, m), x @ w.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        q4.q4_matmul(x, m, residual), x @ w.t() + residual, rtol=1e-5, atol=1e-5
    )


def test_several_rows_go_through_the_expanded_weight(q4_weight):
    m = q4.find_q4(q4_weight)
    buf = torch.empty(96, 200)
    assert torch.equal(q4.dequantize_into(m, buf), q4_weight.t())
    with pytest.raises(ValueError, match="takes one row"):
        q4.q4_matmul(torch.randn(3, 96), m)
    with pytest.raises(ValueError, match="must be float32"):
        q4.dequantize_into(m, torch.empty(200, 96))


def test_concatenated_and_scaled_blocks(q4_weight):
    m = q4.find_q4(q4_weight)
    both = q4.concat_out(m.scaled(0.125), m)
    assert torch.equal(both.dequantize(), torch.cat([q4_weight * 0.125, q4_weight]))


@pytest.fixture
def q4_backend(tiny_model_dir):
    """The tiny Llama with every projection replaced by its Q4_1 round trip (as if loaded
    from a Q4_1 GGUF file)."""
    backend = load_backend(tiny_model_dir, device="cpu", cache=False)
    with torch.no_grad():
        for layer in backend.model.model.layers:
            for proj in _projections(layer):
                proj.weight.copy_(ggml_q4_1(proj.weight))
    return backend


def test_a_q4_llama_steps_through_4_bit_blocks(q4_backend):
    ctx = prompt_ids(q4_backend, "a user's history of movies")
    steps_match_brute_force(q4_backend, [ctx], [[330, 389, 253]], [[330], [389], [253]])
    assert q4_backend._llama_step.weights == "q4"


def test_a_q4_llama_batch_steps_match_the_full_forward(q4_backend):
    ctxs = [prompt_ids(q4_backend, "short"), prompt_ids(q4_backend, "a much longer prompt " * 6)]
    allowed = [[330, 389], [330, 1777, 253]]
    steps_match_brute_force(q4_backend, ctxs, allowed, [[330, 389], [1777, 330]])
    assert q4_backend._llama_step.weights == "q4"


def test_training_away_from_the_blocks_falls_back_to_float32_in_that_layer(q4_backend):
    """A layer whose weights left the 4-bit grid (training; a hybrid's merged LoRA) is read
    in float32, the others stay 4-bit, and the steps still match the full forward."""
    ctx = prompt_ids(q4_backend, "weights change under training")
    q4_backend.next_token_logprobs([ctx], [[330, 389]])
    q4_backend.next_token_logprobs([[*ctx, 330]], [[330, 389]])  # a one-token step
    assert q4_backend._llama_step.weights == "q4"
    with torch.no_grad():
        q4_backend.model.model.layers[0].mlp.up_proj.weight.add_(
            torch.randn_like(q4_backend.model.model.layers[0].mlp.up_proj.weight) * 1e-3
        )
    q4_backend.clear_cache()
    steps_match_brute_force(q4_backend, [ctx], [[330, 389]], [[389]])
    n = len(q4_backend.model.model.layers)
    assert q4_backend._llama_step.weights == f"q4 ({n - 1} of {n} layers)"
    assert q4_backend._llama_step._layers[0].attn_norm is None  # folded: a float32 layer
    assert all(layer.attn_norm is not None for layer in q4_backend._llama_step._layers[1:])


def test_without_numba_the_step_stays_float32(q4_backend, monkeypatch):
    monkeypatch.setattr(q4, "available", lambda: False)
    ctx = prompt_ids(q4_backend, "no compiler for the kernels")
    steps_match_brute_force(q4_backend, [ctx], [[330, 389]], [[330]])
    assert q4_backend._llama_step.weights == "float32"


def test_the_kernel_is_exact_on_integers():
    """Small integers have exact float sums in any order: the kernel's blocks, scales and
    offsets must reproduce the product exactly, not just closely."""
    q = torch.randint(0, 16, (64, 96)).float()
    q[:, ::32] = 0  # every block has both 0 and 15
    q[:, 1::32] = 15
    w = q * 2.0 - 3.0
    m = q4.find_q4(w)
    x = torch.randint(-4, 5, (1, 96)).float()
    assert np.array_equal(q4.q4_matmul(x, m).numpy(), (x @ w.t()).numpy())


def test_building_the_step_is_logged(q4_backend, caplog):
    ctx = prompt_ids(q4_backend, "operators want to know which step runs")
    with caplog.at_level("INFO", logger="ranking.backends.fast_cpu"):
        q4_backend.next_token_logprobs([ctx], [[330, 389]])
        q4_backend.next_token_logprobs([[*ctx, 330]], [[330, 389]])
    assert any("q4 weights" in r.getMessage() for r in caplog.records)


def test_a_lora_merged_into_4_bit_weights_keeps_the_blocks_and_its_factors(q4_backend, tmp_path):
    """A hybrid folder over a 4-bit base with a LoRA adapter on its top layer, loaded as it
    is served (adapter merged): the step reads that layer as the base's blocks plus the
    adapter's low-rank factors (`keep_low_rank_parts`) instead of float32, and its steps
    equal the merged model's full forward. A merged weight edited afterwards forgets them."""
    from peft import LoraConfig, get_peft_model

    from ranking.hybrid import Hybrid, HybridConfig
    from tests.test_hybrid import ITEMS

    base_dir = tmp_path / "base"
    q4_backend.model.save_pretrained(base_dir)
    q4_backend.tokenizer.save_pretrained(base_dir)
    backend = load_backend(base_dir, device="cpu", cache=False)
    vectors = np.random.default_rng(0).normal(size=(len(ITEMS), 5)).astype(np.float32)
    config = HybridConfig(base=str(base_dir), inject_layer=1, vector_dim=5)
    hybrid = Hybrid(backend.model, backend.tokenizer, ITEMS, vectors, config)
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = get_peft_model(backend.model, LoraConfig(r=4, lora_alpha=8, target_modules=names,
                                                    layers_to_transform=[1]))  # fmt: skip
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # a trained adapter: B is no longer zero
    folder = hybrid.save(tmp_path / "hybrid", adapter_model=lora)
    served = load_backend(folder, device="cpu", cache=False)
    ctx = prompt_ids(served, "a 4-bit hybrid with its adapter merged")
    steps_match_brute_force(served, [ctx], [[330, 389, 253]], [[330], [389]])
    assert served._llama_step.weights == "q4 + low-rank"
    with torch.no_grad():  # training after the merge: the factors no longer describe it
        served.model.model.layers[1].mlp.up_proj.weight.add_(1e-3)
    served.clear_cache()
    steps_match_brute_force(served, [ctx], [[330, 389]], [[389]])
    assert served._llama_step.weights == "float32"
