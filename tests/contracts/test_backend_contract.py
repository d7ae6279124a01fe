"""The LM backend contract (ranking.backends.base.LMBackend), one suite over every backend.

Every backend runs the same tiny random Llama (head_dim 64 so that vLLM can run it, the real
SmolLM2 tokenizer) and is held to a known answer computed here by a direct torch forward
pass over the whole context (no cache, no batching, no padding):

* `next_token_logprobs` gives, per context, the log-softmax of the next-token logits over the
  allowed ids (padding in a batch, a single id, a 300-id set, an empty batch); so do the
  one-token extensions a ranking makes step after step, and `continuation_logprobs` at every
  prefix;
* greedy `generate` is the argmax continuation (the same whatever the batch order) and a
  seeded sample repeats;
* a ranking in every label mode takes, at every step, the reference distribution's choice
  with its probability; `log_propensity` is the sum of the step log-probs, and over all
  orders of a small request the propensities sum to 1.

Cases: `transformers` (the plain Hugging Face path), `fast_cpu` (its one-token steps through
ranking.backends.llama_step), `fake` (ScriptedBackend scripted with the reference answers:
what the tests' stand-in promises), `committee` (ranking.backends.committee: a transformers
and a fast CPU member of the reference's weights, unequal weights: pooling identical
members must give each one; it generates no free text and says so), `vllm` (skips where
vllm is not installed).
GarbageBackend breaks this contract on purpose (tests/test_ranking_properties.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from ranking.backends.base import Generation, LMBackend
from ranking.backends.committee import CommitteeBackend
from ranking.backends.fake import ScriptedBackend
from ranking.backends.fast_cpu import FastCpuBackend
from ranking.backends.transformers_backend import TransformersBackend
from ranking.engine import Ranker
from ranking.errors import RequestError
from ranking.modes.incremental import build_sequence
from tests.fixtures.models import prompt_ids
from tests.fixtures.requests import make_request

BACKENDS = ["transformers", "fast_cpu", "fake", "committee", "vllm"]
# vLLM computes in its own kernels (and chunks large allowed sets): agreement to 1e-3, as
# tests/test_vllm_backend.py measured; the others compute the same float32 function
EXACT_ATOL, VLLM_ATOL = 1e-5, 1e-3
MAX_NEW = 6
PROMPTS = ("hi", "Name a movie you would watch twice.", "Rank these: A Heat B Fargo")
LABELS = (" A", " B", " C", " D")
MODES = ("incremental", "score", "direct")


class Reference:
    """The known answers: a direct forward pass of the model over each whole context."""

    def __init__(self, model: torch.nn.Module, tokenizer: object) -> None:
        self.model, self.tokenizer = model, tokenizer
        eos = model.generation_config.eos_token_id
        self.stop_ids = {*([eos] if isinstance(eos, int) else eos or []), tokenizer.pad_token_id}
        # every backend case asks about the same contexts: one forward pass each
        self._logits: dict[tuple[int, ...], torch.Tensor] = {}
        self._greedy: dict[tuple[str, int], Generation] = {}

    @torch.inference_mode()
    def logits(self, context: Sequence[int]) -> torch.Tensor:
        key = tuple(int(t) for t in context)
        if key not in self._logits:
            self._logits[key] = self.model(torch.tensor([key])).logits[0, -1].float()
        return self._logits[key]

    def logprobs(self, context: Sequence[int], allowed: Sequence[int]) -> np.ndarray:
        row = self.logits(context)[list(allowed)]
        return torch.log_softmax(row, -1).numpy().astype(np.float64)

    def greedy(self, prompt: str, max_new_tokens: int) -> Generation:
        """Argmax decoding, ending after an end-of-sequence token, as the backends do."""
        key = (prompt, max_new_tokens)
        if key not in self._greedy:
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
            new: list[int] = []
            while len(new) < max_new_tokens:
                new.append(int(self.logits([*ids, *new]).argmax()))
                if new[-1] in self.stop_ids:
                    break
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            self._greedy[key] = Generation(text, len(new))
        return self._greedy[key]


@dataclass
class Case:
    name: str
    backend: LMBackend
    atol: float

    @property
    def exact(self) -> bool:
        return self.atol <= EXACT_ATOL


@pytest.fixture(scope="module")
def reference(tiny_head64_model_dir) -> Reference:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_head64_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_head64_model_dir, dtype=torch.float32)
    return Reference(model.eval(), tokenizer)


def reference_backend(reference: Reference) -> ScriptedBackend:
    """A fake whose every answer is the reference's (its tokenizer the real one)."""
    chat = ScriptedBackend(logprob_fn=reference.logprobs, model_id="reference")
    chat.tokenizer = reference.tokenizer
    prompts = [chat.chat_prompt(p) for p in PROMPTS]
    chat.texts = [reference.greedy(p, MAX_NEW).text for p in prompts]
    return chat


@pytest.fixture(params=BACKENDS)
def case(request, reference) -> Case:
    name = request.param
    if name == "vllm":
        return Case(name, request.getfixturevalue("vllm_tiny_backend"), VLLM_ATOL)
    if name == "fake":
        return Case(name, reference_backend(reference), EXACT_ATOL)
    if name == "committee":
        members = [
            TransformersBackend(reference.model, reference.tokenizer, model_id="t"),
            FastCpuBackend(reference.model, reference.tokenizer, model_id="f"),
        ]
        return Case(name, CommitteeBackend(members, [0.3, 0.7]), EXACT_ATOL)
    cls = FastCpuBackend if name == "fast_cpu" else TransformersBackend
    # the reference's own weights: the backend must add nothing but speed
    backend = cls(reference.model, reference.tokenizer, model_id="tiny-head64")
    return Case(name, backend, EXACT_ATOL)


def assert_reference(
    case: Case, reference: Reference, contexts, allowed, got: Sequence[np.ndarray]
) -> None:
    assert len(got) == len(contexts)
    for ctx, ids, lp in zip(contexts, allowed, got, strict=True):
        lp = np.asarray(lp)
        assert lp.shape == (len(ids),) and np.isfinite(lp).all()
        assert math.isclose(np.exp(lp).sum(), 1.0, abs_tol=1e-6)  # renormalised over `ids`
        np.testing.assert_allclose(lp, reference.logprobs(ctx, ids), atol=case.atol)


# ---------------------------------------------------------------- next-token log-probs


def test_logprobs_match_a_direct_forward_pass(case, reference):
    backend = case.backend
    labels = [backend.encode(s)[0] for s in LABELS]
    contexts = [prompt_ids(backend, p) for p in PROMPTS] + [prompt_ids(backend, "wide")]
    # padding (three lengths), a single id (certain: log-prob 0), and more ids than one vLLM
    # request takes (128)
    allowed = [labels, [5, 17, 301], [42], list(range(100, 400))]
    got = backend.next_token_logprobs(contexts, allowed)
    assert_reference(case, reference, contexts, allowed, got)
    assert got[2].tolist() == pytest.approx([0.0])


def test_an_empty_batch_gives_nothing(case):
    assert list(case.backend.next_token_logprobs([], [])) == []


def test_one_token_extensions_match_step_after_step(case, reference):
    """What incremental mode asks: a prefill, then each context grown by one label token
    (on the fast CPU backend these are its one-token steps)."""
    backend = case.backend
    labels = [backend.encode(s)[0] for s in LABELS]
    contexts = [prompt_ids(backend, PROMPTS[0]), prompt_ids(backend, PROMPTS[1])]
    allowed = [labels, labels[:3]]
    for step in range(4):
        got = backend.next_token_logprobs(contexts, allowed)
        assert_reference(case, reference, contexts, allowed, got)
        contexts = [[*c, labels[(step + i) % 4]] for i, c in enumerate(contexts)]
    if isinstance(backend, FastCpuBackend):
        assert backend._llama_step is not None  # the steps above went through it


def test_continuation_logprobs_match_at_every_prefix(case, reference):
    backend = case.backend
    a, b, c, d = (backend.encode(s)[0] for s in LABELS)
    contexts = [prompt_ids(backend, PROMPTS[1]), prompt_ids(backend, PROMPTS[2])]
    continuations = [[a, b, c], []]
    allowed = [[[a, b, c, d], [b, c, d], [c, d], [d, a]], [[a, b]]]
    got = backend.continuation_logprobs(contexts, continuations, allowed)
    for ctx, cont, allow, rows in zip(contexts, continuations, allowed, got, strict=True):
        prefixes = [[*ctx, *cont[:j]] for j in range(len(cont) + 1)]
        assert_reference(case, reference, prefixes, allow, rows)


# ---------------------------------------------------------------- generation


def generates(case: Case) -> bool:
    """False for a committee, after checking it refuses free text with a clear error."""
    if case.name != "committee":
        return True
    with pytest.raises(RequestError, match="reason mode"):
        case.backend.generate([case.backend.chat_prompt(PROMPTS[0])], max_new_tokens=MAX_NEW)
    return False


def test_greedy_generation_is_the_argmax_continuation(case, reference):
    backend = case.backend
    if not generates(case):
        return
    prompts = [backend.chat_prompt(p) for p in PROMPTS]
    gens = backend.generate(prompts, max_new_tokens=MAX_NEW)
    assert len(gens) == len(prompts)
    assert all(isinstance(g, Generation) and 1 <= g.n_tokens <= MAX_NEW for g in gens)
    if case.name != "fake":  # a fake answers in script order, whatever the prompts
        again = backend.generate(prompts[::-1], max_new_tokens=MAX_NEW)[::-1]
        assert [g.text for g in again] == [g.text for g in gens]  # padding changes nothing
    if case.exact:  # vLLM's kernels may break a near tie of a random model the other way
        assert [g.text for g in gens] == [reference.greedy(p, MAX_NEW).text for p in prompts]


def test_a_seeded_sample_repeats(case, reference):
    backend = case.backend
    if not generates(case):
        return
    prompt = [backend.chat_prompt(PROMPTS[1])]
    first = backend.generate(prompt, max_new_tokens=MAX_NEW, temperature=1.0, seed=11)
    if case.name == "fake":  # a script moves on with every call: a re-run starts a new one
        backend = reference_backend(reference)
    assert backend.generate(prompt, max_new_tokens=MAX_NEW, temperature=1.0, seed=11) == first


# ---------------------------------------------------------------- rankings


def recorded(monkeypatch, backend: LMBackend) -> list[tuple[list[int], list[int], np.ndarray]]:
    """Every (context, allowed, answer) of the backend's next-token calls from now on."""
    calls: list[tuple[list[int], list[int], np.ndarray]] = []
    inner = backend.next_token_logprobs

    def record(contexts, allowed):
        out = inner(contexts, allowed)
        calls.extend(zip(map(list, contexts), map(list, allowed), out, strict=True))
        return out

    monkeypatch.setattr(backend, "next_token_logprobs", record)
    return calls


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("temperature", "seed"), [(0.0, None), (1.0, 3)])
def test_rankings_take_the_reference_steps(case, reference, monkeypatch, mode, temperature, seed):
    request = make_request(6, mode, temperature=temperature, seed=seed)
    calls = recorded(monkeypatch, case.backend)
    result = Ranker(case.backend, speculate=0).rank(request)
    assert sorted(result.order) == sorted(request.ids) and result.mode == mode
    assert len(calls) == len(result.steps) == 5  # one call per step, n - 1 steps
    remaining = list(request.ids)  # each step's options, in the order of its log-probs
    for (ctx, allowed, lp), step in zip(calls, result.steps, strict=True):
        ref = reference.logprobs(ctx, allowed)
        np.testing.assert_allclose(lp, ref, atol=case.atol)
        pos = remaining.index(step.eliminated)
        if not temperature:  # greedy: the reference's argmax, but for a near tie
            assert ref[pos] >= ref.max() - 2 * case.atol
        # greedy and T = 1 alike report the model's own probability of the choice
        assert step.prob == pytest.approx(math.exp(ref[pos]), abs=case.atol)
        remaining.pop(pos)
    assert result.log_propensity == pytest.approx(sum(math.log(s.prob) for s in result.steps))
    if case.exact:  # to float rounding: the very ranking the reference gives
        want = Ranker(reference_backend(reference), speculate=0).rank(request)
        assert result.order == want.order
        np.testing.assert_allclose(
            [s.prob for s in result.steps], [s.prob for s in want.steps], atol=1e-4
        )


def elimination_logprobs(backend: LMBackend, seq) -> dict[tuple[int, ...], np.ndarray]:
    """For every sequence of eliminations short of the last candidate, the backend's
    log-probs (over the candidates still in play, in input order) of the next one, all in
    one batched call."""
    n = len(seq.label_ids)
    prefixes = [p for t in range(n - 1) for p in itertools.permutations(range(n), t)]
    allowed = [[seq.label_ids[i] for i in range(n) if i not in p] for p in prefixes]
    contexts = [seq.context(list(p)) for p in prefixes]
    return dict(zip(prefixes, backend.next_token_logprobs(contexts, allowed), strict=True))


def path_logprob(steps: dict[tuple[int, ...], np.ndarray], eliminated: Sequence[int]) -> float:
    """log P(eliminating `eliminated` in this order) from `elimination_logprobs`."""
    total, n = 0.0, len(next(iter(steps.values())))
    for t, e in enumerate(eliminated):
        remaining = [i for i in range(n) if i not in eliminated[:t]]
        total += float(steps[tuple(eliminated[:t])][remaining.index(e)])
    return total


def test_propensities_of_all_orders_sum_to_one(case, reference):
    """Incremental, 4 candidates: the 24 orders' propensities sum to 1, and a sampled
    ranking's log_propensity is the reference's log-probability of its order."""
    request = make_request(4)
    seq = build_sequence(request, case.backend)
    steps = elimination_logprobs(case.backend, seq)
    paths = list(itertools.permutations(range(4), 3))  # the 3 eliminations fix the order
    assert sum(math.exp(path_logprob(steps, p)) for p in paths) == pytest.approx(1.0, abs=1e-6)
    want = elimination_logprobs(reference_backend(reference), seq)
    ids = request.ids
    for seed in range(3):
        result = Ranker(case.backend).rank(make_request(4, temperature=1.0, seed=seed))
        eliminated = [ids.index(s.eliminated) for s in result.steps]
        assert result.log_propensity == pytest.approx(
            path_logprob(want, eliminated), abs=10 * case.atol
        )


def test_a_forced_order_scores_the_reference_log_probability(case, reference):
    """`Ranker.log_probabilities` (each step forced along a given ranking, replay's target
    propensity): every one of the 24 rankings of 4 candidates scores the reference's
    log-probability of its elimination path, on every backend."""
    request = make_request(4)
    want = elimination_logprobs(reference_backend(reference), build_sequence(request, case.backend))
    orders = [list(o) for o in itertools.permutations(request.ids)]
    got = Ranker(case.backend).log_probabilities([request] * len(orders), orders)
    ids = request.ids
    for order, lp in zip(orders, got, strict=True):
        eliminated = [ids.index(c) for c in reversed(order)][:-1]
        assert lp == pytest.approx(path_logprob(want, eliminated), abs=10 * case.atol)
