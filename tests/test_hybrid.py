"""Hybrid prompts (ranking.hybrid) on the tiny Llama with the real tokenizer: the soft tokens
reach the model, every mode ranks with them, what is served is what is trained, the folder
round-trips, and the trainer learns a signal that only the CF vectors carry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranking.engine import Ranker
from ranking.errors import ModelLoadError
from ranking.hybrid import Hybrid, HybridConfig, is_hybrid_dir
from ranking.rl.episodes import Episode
from ranking.rl.losses import distill_loss, expected_reward_loss
from ranking.rl.supervised import (
    StyledTokenizer,
    SupervisedConfig,
    SupervisedTrainer,
    batch_step_logprobs,
    prepare,
)
from ranking.types import Candidate, RankRequest
from tests.fixtures.models import prompt_ids

ITEMS = [str(i) for i in range(1, 61)]


def fresh_hybrid(tiny_model_dir, seed: int = 0, inject_layer: int = 1):
    from ranking.loading import _load_transformers, resolve_model

    backend = _load_transformers(resolve_model(str(tiny_model_dir)), "cpu")
    vectors = np.random.default_rng(seed).normal(size=(len(ITEMS), 5)).astype(np.float32)
    config = HybridConfig(base=str(tiny_model_dir), inject_layer=inject_layer, vector_dim=5)
    torch.manual_seed(seed)
    hybrid = Hybrid(backend.model, backend.tokenizer, ITEMS, vectors, config)
    backend.attach_hybrid(hybrid)
    return backend, hybrid


def request(cands: list[str], history: list[str], **kw) -> RankRequest:
    return RankRequest(
        task="rec-movie",
        candidates=tuple(Candidate(id=c, text=f"Movie {c}") for c in cands),
        history=tuple(f"Movie {h}" for h in history),
        history_ids=tuple(history),
        **kw,
    )


def test_prompt_is_compact_and_labels_are_item_tokens(tiny_model_dir) -> None:
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    builder = StyledTokenizer(backend.tokenizer, hybrid.style)

    def seq(cands, hist):
        ep = Episode(request=request(cands, hist), ground_truth=cands[0], user="u")
        return prepare(ep, builder).seq

    s = seq(["1", "2", "3"], ["4", "5"])
    assert s.labels == ("<|item:1|>", "<|item:2|>", "<|item:3|>")
    assert all(t >= hybrid.base_vocab for t in s.label_ids)
    assert "Movie" not in s.prompt and "<|im_start|>" not in s.prompt  # no titles, no chat
    # one token per history item and per candidate
    assert len(seq(["1", "2", "3", "6"], ["4", "5"]).prompt_ids) == len(s.prompt_ids) + 1
    assert len(seq(["1", "2", "3"], ["4", "5", "7"]).prompt_ids) == len(s.prompt_ids) + 1


def test_the_vectors_reach_the_model_and_only_them(tiny_model_dir) -> None:
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    builder = StyledTokenizer(backend.tokenizer, hybrid.style)
    ep = prepare(Episode(request=request(["1", "2", "3"], ["4"]), ground_truth="1", user="u"),
                 builder)  # fmt: skip
    with torch.no_grad():
        first = batch_step_logprobs(backend.model, hybrid, [ep])[0]
        again = batch_step_logprobs(backend.model, hybrid, [ep])[0]
        hybrid.vectors[ITEMS.index("4")] += 3.0  # a history item's vector only
        moved = batch_step_logprobs(backend.model, hybrid, [ep])[0]
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, moved)


@pytest.mark.parametrize("mode", ["incremental", "direct", "score", "reason"])
def test_every_mode_ranks_a_valid_permutation(tiny_model_dir, mode: str) -> None:
    backend, _ = fresh_hybrid(tiny_model_dir)
    ranker = Ranker(backend, batch_size=2, reason_max_new_tokens=8)
    reqs = [
        request(["1", "2", "3", "4"], ["5", "6"], mode=mode),
        request(["7", "8", "99"], ["1"], mode=mode),
    ]  # "99": no soft token -> title
    for req, res in zip(reqs, ranker.rank_batch(reqs), strict=True):
        assert sorted(res.order) == sorted(req.ids)


def test_served_steps_equal_the_trained_steps(tiny_model_dir) -> None:
    """The engine's incremental ranking (KV cache, constrained steps) has exactly the step
    distributions the trainer computes teacher-forced along the same order."""
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    res = assert_served_steps_are_trained_steps(
        backend, hybrid, request(["1", "2", "3", "4", "5"], ["6", "7", "8"])
    )
    assert res.log_propensity == pytest.approx(sum(np.log(s.prob) for s in res.steps), abs=1e-4)


def assert_served_steps_are_trained_steps(backend, hybrid, req: RankRequest):
    """Rank `req` through the engine, check every step's probability against the trainer's
    teacher-forced step along the same order, and return the result."""
    res = Ranker(backend, batch_size=1).rank(req)
    order = list(reversed(res.order))  # eliminated first ... survivor last
    ep = prepare(Episode(request=req, ground_truth=order[-1], user="u", teacher_order=tuple(order)),
                 StyledTokenizer(backend.tokenizer, hybrid.style))  # fmt: skip
    with torch.no_grad():
        lp = batch_step_logprobs(backend.model, hybrid, [ep])[0]
    served = [np.log(s.prob) for s in res.steps]
    trained = [float(lp[t, ep.order[t]]) for t in range(len(served))]
    np.testing.assert_allclose(served, trained, atol=1e-4)
    return res


@pytest.mark.parametrize("split", [True, False])
def test_item_token_steps_take_the_fast_step(tiny_model_dir, monkeypatch, split: bool) -> None:
    """On the fast CPU backend every one-token step — appending an item token (its soft
    token injected by the step) or an ordinary one, rows of both kinds in one batch — goes
    through the fast step and equals a full forward pass with the hooks, whether the lower
    layers are memoised (split) or run by the step with the hooks' injection."""
    from ranking.backends.fast_cpu import FastCpuBackend
    from ranking.backends.llama_step import LlamaStep

    backend, hybrid = fresh_hybrid(tiny_model_dir)
    assert isinstance(backend, FastCpuBackend)
    backend.split_hybrid(split)
    assert (backend._split is not None) == split
    with torch.no_grad():  # soft tokens that move the answer well beyond the tolerance
        hybrid.projector.net[2].weight.mul_(100)
    calls = []
    real_call = LlamaStep.__call__

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(LlamaStep, "__call__", counted)
    item = backend.tokenizer.convert_tokens_to_ids(hybrid.item_tokens["1"])
    other = backend.tokenizer.convert_tokens_to_ids(hybrid.item_tokens["2"])
    allowed = [backend.encode(" A")[0], item, other]
    head = backend.model.get_output_embeddings()

    def reference(context: list[int]) -> np.ndarray:
        with torch.inference_mode():
            out = backend.model.get_decoder()(input_ids=torch.tensor([context]))
            logits = hybrid.label_logits(head, out.last_hidden_state[0, -1], torch.tensor(allowed))
        return torch.log_softmax(logits.float(), -1).numpy()

    prompts = [prompt_ids(backend, "a hybrid prompt"), prompt_ids(backend, "another one")]
    ctxs = [[*prompts[0], other], [*prompts[1], other]]  # item tokens in the prefill too
    backend.next_token_logprobs(ctxs, [allowed, allowed])
    steps = [(item, allowed[0]), (allowed[0], other), (other, item)]
    for tokens in steps:
        ctxs = [[*c, t] for c, t in zip(ctxs, tokens, strict=True)]
        out = backend.next_token_logprobs(ctxs, [allowed, allowed])
        for lp, ctx in zip(out, ctxs, strict=True):
            np.testing.assert_allclose(lp, reference(ctx), atol=1e-5)
    assert [shape[1] for shape in calls] == [1] * len(steps)  # every step took the fast path


def test_folder_round_trip_and_vllm_refusal(tiny_model_dir, tmp_path) -> None:
    from ranking.loading import load_backend

    backend, hybrid = fresh_hybrid(tiny_model_dir)
    with torch.no_grad():
        hybrid.projector.net[2].weight.normal_(std=0.5)  # something not at its init
    folder = hybrid.save(tmp_path / "hyb")
    assert is_hybrid_dir(folder)
    req = request(["1", "2", "3", "4"], ["5"])
    want = Ranker(backend, batch_size=1).rank(req)
    loaded = load_backend(folder, device="cpu", cache=False)
    got = Ranker(loaded, batch_size=1).rank(req)
    assert got.order == want.order
    assert got.log_propensity == pytest.approx(want.log_propensity, abs=1e-5)
    with pytest.raises(ModelLoadError, match="vLLM cannot run"):
        load_backend(folder, device="cpu", backend="vllm", cache=False)


@pytest.mark.parametrize(
    ("config", "n_vectors", "message"),
    [
        (dict(inject_layer=5), 60, "inject_layer 5 out of range"),
        (dict(inject_layer=1), 59, "vectors of shape"),
    ],
)
def test_hybrid_bad_config(tiny_model_dir, config, n_vectors: int, message: str) -> None:
    from ranking.loading import _load_transformers, resolve_model

    backend = _load_transformers(resolve_model(str(tiny_model_dir)), "cpu")
    cfg = HybridConfig(base="x", vector_dim=5, **config)
    with pytest.raises(ModelLoadError, match=message):
        Hybrid(backend.model, backend.tokenizer, ITEMS, np.zeros((n_vectors, 5)), cfg)


def test_losses_known_answers() -> None:
    """The two losses the trainer uses (ranking.rl.losses), on step log-probs shaped as
    batch_step_logprobs gives them."""
    # uniform steps over 3, 2 candidates: pi_0(gt) = 1/3, pi_1(gt) = 1/2
    lp = torch.log(torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.0, 0.5, 0.5]]))
    assert float(expected_reward_loss(lp, 2)) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert float(distill_loss(lp, [0, 1, 2])) == pytest.approx((np.log(3) + np.log(2)) / 2)


def quality_episodes(n: int, seed: int) -> list[Episode]:
    """The truth is the candidate with the largest first CF coordinate; the teacher
    eliminates by that coordinate: learnable only by reading the vectors."""
    rng = np.random.default_rng(seed)
    q = np.random.default_rng(0).normal(size=(len(ITEMS), 5))[:, 0]
    out = []
    for _ in range(n):
        cs = rng.choice(len(ITEMS), 6, replace=False)
        order = [ITEMS[i] for i in sorted(cs, key=lambda i: q[i])]
        hist = [ITEMS[i] for i in rng.choice(len(ITEMS), 3, replace=False)]
        out.append(Episode(request=request([ITEMS[i] for i in cs], hist), ground_truth=order[-1],
                           user="u", teacher_order=tuple(order)))  # fmt: skip
    return out


def test_trainer_learns_from_the_vectors_and_resumes_exactly(tiny_model_dir, tmp_path) -> None:
    def trainer(out, steps):
        backend, hybrid = fresh_hybrid(tiny_model_dir)
        cfg = SupervisedConfig(supervised_steps=steps, rl_steps=5, batch_size=8, lr=3e-2,
                               warmup_steps=5, eval_every=10_000, checkpoint_every=10)  # fmt: skip
        return SupervisedTrainer(backend.model, hybrid, quality_episodes(300, 1),
                                 quality_episodes(60, 2), cfg, out)  # fmt: skip

    full = trainer(tmp_path / "full", 40)
    before = full.validate()["val_mrr_first_step"]
    full.run(resume=False)
    after = full.validate()["val_mrr_first_step"]
    assert after > before + 0.2 and after > 0.75  # random first-step MRR ~0.41 for 6

    # interrupted after 20 steps (a checkpoint), resumed in a new process-like trainer
    part = trainer(tmp_path / "part", 40)
    part.run(resume=False, stop_at=20)  # stopped after step 20 (a checkpoint)
    resumed = trainer(tmp_path / "part", 40)
    resumed.run(resume=True)  # loads step 20's checkpoint, runs 20..45
    for a, b in zip(full.params, resumed.params, strict=True):
        torch.testing.assert_close(a, b)


def test_a_new_run_starts_from_an_exported_model(tiny_model_dir, tmp_path) -> None:
    """`train-ranker --init FOLDER`: a fresh trainer takes the folder's adapter and projector
    (e.g. the RL stage on top of a supervised model) and ranks as the exported model did."""

    def trainer(out):
        backend, hybrid = fresh_hybrid(tiny_model_dir, seed=3)
        cfg = SupervisedConfig(supervised_steps=15, rl_steps=0, batch_size=8, lr=3e-2,
                               warmup_steps=2, eval_every=10_000, checkpoint_every=100)  # fmt: skip
        return SupervisedTrainer(backend.model, hybrid, quality_episodes(100, 1),
                                 quality_episodes(40, 2), cfg, out)  # fmt: skip

    trained = trainer(tmp_path / "a")
    trained.run(resume=False)
    folder = trained.export(tmp_path / "model")
    fresh = trainer(tmp_path / "b")
    assert fresh.validate() != trained.validate()
    fresh.init_from(folder)
    assert fresh.validate() == pytest.approx(trained.validate())
    with pytest.raises(FileNotFoundError, match="not an exported hybrid model folder"):
        fresh.init_from(tmp_path)


def test_init_from_a_model_with_fewer_vector_dimensions(tiny_model_dir, tmp_path) -> None:
    """`--vectors lightfm+text --init LIGHTFM_MODEL`: the projector's new inputs start at
    zero, so the widened model ranks exactly as the one it starts from; a model with more
    dimensions than the vectors is refused."""
    from ranking.rl.supervised import widened

    def trainer(out, extra: int):
        backend, hybrid = fresh_hybrid(tiny_model_dir, seed=3)
        if extra:
            more = np.random.default_rng(9).normal(size=(len(ITEMS), extra)).astype(np.float32)
            vectors = np.column_stack([hybrid.vectors.numpy(), more])
            config = HybridConfig(base=str(tiny_model_dir), inject_layer=1, vector_dim=5 + extra)
            backend, _ = fresh_hybrid(tiny_model_dir, seed=3)
            hybrid = Hybrid(backend.model, backend.tokenizer, ITEMS, vectors, config)
        cfg = SupervisedConfig(supervised_steps=15, rl_steps=0, batch_size=8, lr=3e-2,
                               warmup_steps=2, eval_every=10_000, checkpoint_every=100)  # fmt: skip
        return SupervisedTrainer(backend.model, hybrid, quality_episodes(100, 1),
                                 quality_episodes(40, 2), cfg, out)  # fmt: skip

    narrow = trainer(tmp_path / "a", 0)
    narrow.run(resume=False)
    folder = narrow.export(tmp_path / "model")
    wide = trainer(tmp_path / "b", 3)
    wide.init_from(folder)
    assert wide.validate() == pytest.approx(narrow.validate())
    weight = wide.hybrid.projector.state_dict()["net.0.weight"]
    assert weight.shape[1] == 8 and not weight[:, 5:].any() and weight[:, :5].any()
    with pytest.raises(ValueError, match=r"saved shape \(\d+, 8\) does not fit"):
        widened(wide.hybrid.projector.state_dict(), narrow.hybrid.projector)


def test_title_components_known_answer() -> None:
    """Principal components of the title embeddings: centred, ordered by variance, and
    exactly the embeddings' own coordinates when they span fewer dimensions."""
    from recsys.hybrid_training import title_components

    class TwoAxes:  # titles embed on two axes, the first with 3x the spread
        name, dim = "two-axes", 4

        def encode(self, texts: list[str]) -> np.ndarray:
            rng = np.random.default_rng(len(texts))
            out = np.zeros((len(texts), 4), dtype=np.float32)
            out[:, 0] = 3 * rng.normal(size=len(texts))
            out[:, 2] = rng.normal(size=len(texts))
            return out  # (the embedder normalises rows: they stay in the two axes' plane)

    pcs = title_components([f"title {i}" for i in range(200)], 3, encoder=TwoAxes())
    assert pcs.shape == (200, 3)
    np.testing.assert_allclose(pcs.mean(0), 0, atol=1e-4)
    var = pcs.var(0)
    assert var[0] > 2 * var[1] > 0.1 and var[2] < 1e-8  # two axes: the third is empty


def test_batch_offset_continues_the_seed_stream(tiny_model_dir, tmp_path) -> None:
    """`--batch-offset N`: batch k of the new run is batch N + k of a run from 0, so a run
    started from a model trained on batches 0..N-1 draws new episodes."""
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    episodes = quality_episodes(300, 1)

    def batches(offset: int, steps: range) -> list[list[int]]:
        cfg = SupervisedConfig(supervised_steps=10, rl_steps=0, batch_size=8, batch_offset=offset)
        t = SupervisedTrainer(
            backend.model, hybrid, episodes, episodes[:8], cfg, tmp_path / str(offset)
        )
        t._prepare = lambda i: i  # the episode indices a batch draws
        return [t._batch(s) for s in steps]

    base = batches(0, range(0, 12))
    assert batches(7, range(0, 5)) == base[7:12]
    assert batches(7, range(0, 5)) != base[0:5]


def test_split_serving_equals_the_whole_model_and_computes_the_lower_layers_once(
    tiny_model_dir,
) -> None:
    """ranking.hybrid_split: the memoised lower layers give the same rankings and step
    probabilities as the whole model with its hooks, for several layouts (history length,
    candidate count, a candidate without an item token) in one batch; requests with one
    layout send their lower layers through the model once, steps included."""
    backend, hybrid = fresh_hybrid(tiny_model_dir, inject_layer=1)
    with torch.no_grad():
        hybrid.projector.net[2].weight.mul_(100)  # soft tokens that matter
    ranker = Ranker(backend, batch_size=4)
    reqs = [
        request(["1", "2", "3", "4", "5"], ["6", "7", "8"]),
        request(["9", "10", "11", "12", "13"], ["14", "15", "16"]),  # same layout
        request(["17", "18", "19"], ["20"]),
        request(["21", "22", "99"], ["23", "24"]),  # "99": a title, not an item token
    ]
    backend.split_hybrid(False)
    whole = ranker.rank_batch(reqs)
    backend.split_hybrid(True)
    split = ranker.rank_batch(reqs)
    for a, b in zip(whole, split, strict=True):
        assert a.order == b.order
        np.testing.assert_allclose([s.prob for s in a.steps], [s.prob for s in b.steps],
                                   atol=1e-5)  # fmt: skip
        assert a.log_propensity == pytest.approx(b.log_propensity, abs=1e-4)
    # one lower pass per layout: requests 0-2 have 2 layouts (a request with a title label
    # appends ordinary tokens, a new lower pass per such step: correct, not shared)
    backend, _ = fresh_hybrid(tiny_model_dir, inject_layer=1)  # a fresh memo
    ranker = Ranker(backend, batch_size=4)
    ranker.rank_batch(reqs[:3])
    memo = backend._split
    assert len(memo._memo) == 2
    before = memo.lower_tokens
    backend.clear_cache()
    ranker.rank_batch([request(["31", "32", "33", "34", "35"], ["36", "37", "38"])])
    assert memo.lower_tokens == before  # a known layout: steps and prompt are lookups


def test_training_on_the_memoised_lower_layers_follows_the_whole_model(
    tiny_model_dir, tmp_path
) -> None:
    """The trainer's split forward (layers from inject_layer up, the frozen ones memoised)
    takes the same optimisation path as the whole model's forward."""

    def trainer(out, split: bool):
        backend, hybrid = fresh_hybrid(tiny_model_dir, inject_layer=1)
        cfg = SupervisedConfig(supervised_steps=3, rl_steps=2, batch_size=8, lr=3e-2,
                               warmup_steps=1, eval_every=10_000, split=split)  # fmt: skip
        return SupervisedTrainer(backend.model, hybrid, quality_episodes(60, 1),
                                 quality_episodes(16, 2), cfg, out)  # fmt: skip

    whole, split = trainer(tmp_path / "whole", False), trainer(tmp_path / "split", True)
    assert whole.split is None and split.split is not None
    whole.run(resume=False)
    split.run(resume=False)
    assert split.split.lower_tokens > 0
    for a, b in zip(whole.params, split.params, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert whole.validate() == split.validate()
