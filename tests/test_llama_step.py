"""The fast one-token step (ranking.backends.llama_step) computes what the transformers
forward computes, and steps aside whenever the model is no longer the plain Llama it copied."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from ranking.backends.fast_cpu import FastCpuBackend
from ranking.backends.llama_step import LlamaStep, _huge_page_buffer, supports
from ranking.backends.transformers_backend import TransformersBackend
from ranking.loading import load_backend
from tests.fixtures.models import TINY_CONFIG, brute_force, prompt_ids, steps_match_brute_force


@pytest.fixture
def backend(tiny_model_dir):
    """A private backend over the tiny Llama: these tests edit its weights."""
    return load_backend(tiny_model_dir, device="cpu", cache=False)


def test_the_tiny_llama_gets_a_fast_step(backend):
    assert supports(backend.model)
    assert isinstance(backend, FastCpuBackend)
    assert isinstance(backend._fast_step(), LlamaStep)
    backend.fast_decode = False
    assert backend._fast_step() is None


def test_one_row_steps_match_the_full_forward(backend):
    ctx = prompt_ids(backend, "a user's history of movies")
    steps_match_brute_force(backend, [ctx], [[330, 389, 253]], [[330], [389], [253], [1777]])
    assert backend._llama_step is not None  # the steps above went through it


def test_padded_batch_steps_match_the_full_forward(backend):
    ctxs = [
        prompt_ids(backend, "short"),
        prompt_ids(backend, "a much longer prompt " * 6),
        prompt_ids(backend, "medium length prompt"),
    ]
    allowed = [[330, 389], [330, 1777, 253], [389, 253]]
    steps_match_brute_force(backend, ctxs, allowed, [[330, 389, 253], [1777, 330, 389]])


def test_masked_dead_slots_are_not_attended(backend):
    """Rejected speculative labels stay in the cache, masked: the step must skip them."""
    ctx = prompt_ids(backend, "speculation leaves dead slots")
    allowed = [330, 389, 253, 1777]
    backend.continuation_logprobs([ctx], [[330, 389, 253]], [[allowed] * 4])
    # keep only the first guess, then append a different token: two dead slots in the row
    nxt = [*ctx, 330, 1777]
    (lp,) = backend.next_token_logprobs([nxt], [allowed])
    assert int((backend._state.mask == 0).sum()) == 2
    np.testing.assert_allclose(lp, brute_force(backend.model, nxt, allowed), atol=1e-5)


def test_an_in_place_weight_edit_rebuilds_the_step(backend):
    ctx = prompt_ids(backend, "weights change under training")
    allowed = [[330, 389, 253]]
    backend.next_token_logprobs([ctx], allowed)
    backend.next_token_logprobs([[*ctx, 330]], allowed)
    first = backend._llama_step
    with torch.no_grad():
        backend.model.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    backend.clear_cache()
    steps_match_brute_force(backend, [ctx], allowed, [[330], [389]])
    assert backend._llama_step is not None and backend._llama_step is not first


def test_a_wrapped_projection_falls_back_to_the_transformers_forward(backend):
    class Adapter(torch.nn.Linear):  # stands in for a LoRA wrapper
        def forward(self, x):
            return super().forward(x) * 1.5

    ctx = prompt_ids(backend, "an adapter was added")
    allowed = [[330, 389, 253]]
    backend.next_token_logprobs([[*ctx, 330]], allowed)
    attn = backend.model.model.layers[0].self_attn
    old = attn.q_proj
    attn.q_proj = Adapter(old.in_features, old.out_features, bias=False)
    attn.q_proj.weight = old.weight
    backend.clear_cache()
    steps_match_brute_force(backend, [ctx], allowed, [[330], [389]])
    assert backend._llama_step is None


def test_models_the_step_does_not_cover(tiny_model_dir):
    from transformers import MistralConfig, MistralForCausalLM

    half = load_backend(tiny_model_dir, device="cpu", dtype="bfloat16", cache=False)
    assert LlamaStep.build(half.model) is None
    assert type(half) is TransformersBackend  # load_backend picks the plain backend
    other = MistralForCausalLM(MistralConfig(vocab_size=64, **TINY_CONFIG))  # same shapes
    assert not supports(other)


def test_long_rows_prefilled_apart_match_the_full_forward(backend):
    ctxs = [
        prompt_ids(backend, "first user history " * 20),
        prompt_ids(backend, "second user, a longer history " * 9),
        prompt_ids(backend, "third user " * 40),
    ]
    assert backend._prefill_rows_apart([tuple(c) for c in ctxs])
    allowed = [[330, 389, 253]] * 3
    before = backend.tokens_computed
    steps_match_brute_force(backend, ctxs, allowed, [[330, 389, 253]])
    assert backend.tokens_computed - before == sum(len(c) for c in ctxs) + 3
    # left padded, one row per context, every real token (prompt + 1 step) marked
    assert backend._state.mask.sum(dim=1).tolist() == [len(c) + 1 for c in ctxs]


def test_huge_page_buffer_is_usable_memory():
    buf = _huge_page_buffer(3000, torch.float32)
    assert buf.numel() == 3000 and buf.dtype == torch.float32
    buf.copy_(torch.arange(3000, dtype=torch.float32))
    view = buf[1000:2000].view(10, 100)
    del buf
    gc.collect()
    assert view[9, 99].item() == 1999.0  # the storage outlives the names that made it


def test_a_partial_rotary_embedding_is_left_to_the_transformers_forward(backend):
    class HalfRope(torch.nn.Module):  # rotates half of each head, as partial_rotary_factor does
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, position_ids):
            cos, sin = self.inner(x, position_ids)
            half = cos.shape[-1] // 2
            return cos[..., :half], sin[..., :half]

    assert supports(backend.model)
    backend.model.model.rotary_emb = HalfRope(backend.model.model.rotary_emb)
    assert not supports(backend.model)
