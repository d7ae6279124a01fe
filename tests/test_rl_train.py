"""Training on a tiny random Llama (real SmolLM2 tokenizer): the policy's step distributions
match the engine's, a learnable rule is learned by every algorithm, checkpoints round-trip,
and an interrupted run resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ranking.engine import Ranker
from ranking.rl.policy import greedy_order, sample_trajectories, step_logprobs
from ranking.rl.sequence import build_sequence
from ranking.rl.synthetic import rule_episodes
from ranking.rl.trainer import TrainConfig, Trainer, checkpoint_path


@pytest.fixture
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_step_distributions_match_the_engine(tiny, tiny_backend):
    """Teacher-forced step log-probs equal the engine's incremental step probabilities, and
    the greedy policy reproduces the engine's incremental ranking."""
    _, tok = tiny
    ep = rule_episodes(1, seed=3, k=6)[0]
    tiny_backend.clear_cache()
    result = Ranker(tiny_backend).rank(ep.request)
    seq = build_sequence(ep.request, tok)
    ids = list(ep.request.ids)
    elim = [ids.index(s.eliminated) for s in result.steps[: len(ids) - 1]]
    with torch.no_grad():
        lp = step_logprobs(tiny_backend.model, seq, elim)
        order = greedy_order(tiny_backend.model, seq)
    taken = [float(lp[t, e]) for t, e in enumerate(elim)]
    engine = [float(torch.log(torch.tensor(s.prob))) for s in result.steps[: len(elim)]]
    assert taken == pytest.approx(engine, abs=1e-4)
    assert order == result.order


def test_sampling_is_seeded_and_valid(tiny):
    model, tok = tiny
    seq = build_sequence(rule_episodes(1, seed=4, k=5)[0].request, tok)
    a = sample_trajectories(model, seq, 3, 1.0, torch.Generator().manual_seed(1))
    b = sample_trajectories(model, seq, 3, 1.0, torch.Generator().manual_seed(1))
    assert a == b
    assert all(len(o) == 4 and len(set(o)) == 4 for o in a)
    assert sample_trajectories(model, seq, 3, 1.0, torch.Generator().manual_seed(2)) != a
    # a huge fusion bias leaves no choice: the lowest scores go first, every draw
    from ranking.fusion import fusion_bias

    ep = rule_episodes(1, seed=4, k=5)[0]  # scores 5, 4, 3, 2, 1
    bias = fusion_bias([c.score for c in ep.request.candidates], 1000.0)
    forced = sample_trajectories(model, seq, 3, 1.0, torch.Generator().manual_seed(1), bias)
    assert forced == [[4, 3, 2, 1]] * 3
    with pytest.raises(ValueError, match="temperature"):
        sample_trajectories(model, seq, 2, 0.0)


def test_fusion_with_large_alpha_follows_retrieval_order(tiny):
    model, tok = tiny
    ep = rule_episodes(1, seed=5, k=5)[0]
    seq = build_sequence(ep.request, tok)
    scores = [c.score for c in ep.request.candidates]
    assert greedy_order(model, seq, scores, alpha=1000.0) == ["0", "1", "2", "3", "4"]


def test_fused_step_logprobs_match_the_served_fused_engine(tiny, tiny_backend):
    """Training the fused policy trains what is served: the teacher-forced fused step
    log-probs equal the engine's fused step probabilities along its own ranking."""
    from ranking.fusion import fusion_bias

    _, tok = tiny
    ep = rule_episodes(1, seed=6, k=6)[0]
    scores = [c.score for c in ep.request.candidates]
    tiny_backend.clear_cache()
    result = Ranker(tiny_backend, fusion_alpha=1.5).rank(ep.request)
    seq = build_sequence(ep.request, tok)
    ids = list(ep.request.ids)
    elim = [ids.index(s.eliminated) for s in result.steps[: len(ids) - 1]]
    bias = torch.tensor(fusion_bias(scores, 1.5), dtype=torch.float32)
    with torch.no_grad():
        fused = step_logprobs(tiny_backend.model, seq, elim, bias)
        plain = step_logprobs(tiny_backend.model, seq, elim)
    taken = [float(fused[t, e]) for t, e in enumerate(elim)]
    engine = [float(torch.log(torch.tensor(s.prob))) for s in result.steps[: len(elim)]]
    assert taken == pytest.approx(engine, abs=1e-4)
    assert not torch.allclose(fused[0], plain[0])  # the bias did change the distribution
    assert torch.exp(fused).sum(dim=1) == pytest.approx(torch.ones(len(elim)), abs=1e-5)


def test_training_the_fused_policy_changes_only_through_the_lm(tiny, tmp_path):
    """With train_fused the loss is computed on the fused distribution: a step updates the
    LM and the fused validation MRR is reported."""
    model, tok = tiny
    cfg = TrainConfig(
        algo="expected", steps=2, batch_size=2, lr=1e-3, eval_every=2, checkpoint_every=100,
        fusion_alpha=2.0, train_fused=True, seed=1,
    )  # fmt: skip
    before = _weights(model)
    trainer = Trainer(model, tok, rule_episodes(4, 1), rule_episodes(3, 2), cfg, tmp_path)
    ep = trainer.train_eps[0]
    assert trainer.train_bias(ep) is not None
    trainer.run()
    assert any(not torch.equal(v, dict(model.named_parameters())[k]) for k, v in before.items())
    assert "val_mrr_fused" in trainer.state.history[-1]


def uniform_policy(model_dir):
    """The tiny model with its final norm zeroed: every label logit is 0, so every step is
    uniform over the candidates in play (greedy ties eliminate the first label in play)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    return model


def test_a_uniform_policy_has_known_losses_and_validation(tiny_model_dir, tmp_path):
    """Every objective's value, worked by hand for a policy whose steps are uniform (the
    rule episodes' ground truth is the first of their candidates, scores k, k-1, ..., 1)."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = uniform_policy(tiny_model_dir)
    val = rule_episodes(3, 2)

    runs = iter(range(100))

    def first_step(algo, train, **kw):
        cfg = TrainConfig(algo=algo, steps=1, batch_size=1, lr=0.0, seed=1, **kw)
        trainer = Trainer(model, tok, train, val, cfg, tmp_path / f"run-{next(runs)}")
        return trainer, trainer.train_step(0)

    # expected: mean over the three teacher-forced steps of pi_t(gt) = (1/4 + 1/3 + 1/2) / 3
    trainer, rec = first_step("expected", rule_episodes(1, 1))
    assert rec["loss"] == pytest.approx(13 / 36, rel=1e-5)
    assert rec["reward"] == pytest.approx(23 / 36, rel=1e-5)
    # first-step reward 1 - 1/4; greedy ties eliminate the ground truth first: RR 1/4
    assert trainer.validate() == pytest.approx({"val_mrr": 25.0, "val_reward": 0.75}, rel=1e-5)
    # distill: cross-entropy toward the teacher's three steps = (log 4 + log 3 + log 2) / 3
    _, rec = first_step("distill", rule_episodes(1, 1))
    assert rec["loss"] == pytest.approx(math.log(24) / 3, rel=1e-5)
    # the fused policy on two candidates (scores 2, 1: z = +-1/sqrt 2, bias -alpha z): the
    # one step's pi(gt) = 1 / (1 + e^(2 alpha / sqrt 2)), against 1/2 unfused
    trainer, rec = first_step(
        "expected", rule_episodes(1, 1, k=2), fusion_alpha=2.0, train_fused=True
    )
    assert rec["loss"] == pytest.approx(1 / (1 + math.exp(2 * math.sqrt(2))), rel=1e-5)
    # fused validation follows the scores, the ground truth's the highest: MRR 100
    assert trainer.validate() == pytest.approx(
        {"val_mrr": 25.0, "val_reward": 0.75, "val_mrr_fused": 100.0}, rel=1e-5
    )


@pytest.mark.parametrize(
    ("algo", "lr", "steps"),
    [("expected", 3e-3, 6), ("distill", 3e-3, 6), ("grpo", 3e-3, 6)],
)
def test_training_raises_validation_reward(tiny, tmp_path, algo, lr, steps):
    model, tok = tiny
    cfg = TrainConfig(
        algo=algo,
        steps=steps,
        batch_size=4,
        lr=lr,
        eval_every=steps,
        checkpoint_every=100,
        group_size=4,
        kl_beta=0.0,
        seed=1,
    )
    trainer = Trainer(model, tok, rule_episodes(16, 1), rule_episodes(8, 2), cfg, tmp_path)
    before = trainer.validate()["val_reward"]
    trainer.run()
    after = trainer.state.history[-1]["val_reward"]
    assert after > before + 0.1, (before, after)
    assert (tmp_path / "log.jsonl").read_text().count("\n") == steps + 1


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_checkpoint_round_trip(tiny, tiny_model_dir, tmp_path):
    model, tok = tiny
    cfg = TrainConfig(algo="distill", steps=2, batch_size=2, lr=1e-3, checkpoint_every=2)
    trainer = Trainer(model, tok, rule_episodes(4, 1), [], cfg, tmp_path)
    trainer.run()
    assert checkpoint_path(tmp_path) == tmp_path / "checkpoint"
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    again = Trainer(fresh, tok, rule_episodes(4, 1), [], cfg, tmp_path)
    again.load_checkpoint()
    assert again.state.step == 2
    for k, v in _weights(trainer.model).items():
        assert torch.equal(v, dict(again.model.named_parameters())[k]), k
    assert (
        again.optimizer.state_dict()["state"].keys()
        == trainer.optimizer.state_dict()["state"].keys()
    )
    # the exported model is a plain Hugging Face directory the engine can load
    exported = trainer.export(tmp_path / "model")
    loaded = AutoModelForCausalLM.from_pretrained(exported)
    assert torch.equal(loaded.lm_head.weight, trainer.model.lm_head.weight.detach())


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = TrainConfig(algo="expected", steps=4, batch_size=2, lr=1e-3, checkpoint_every=2)
    train = rule_episodes(6, 1)

    def fresh():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    reference = Trainer(fresh(), tok, train, [], cfg, tmp_path / "ref")
    reference.run()

    def crash_at_step_3(rec):
        if rec["step"] == 3:
            raise Interrupt

    interrupted = Trainer(fresh(), tok, train, [], cfg, tmp_path / "run", log=crash_at_step_3)
    with pytest.raises(Interrupt):
        interrupted.run()
    resumed = Trainer(fresh(), tok, train, [], cfg, tmp_path / "run")
    resumed.run()
    steps_logged = [r["step"] for r in resumed.state.history]
    assert steps_logged == [1, 2, 3, 4]  # 1-2 from the checkpoint, 3-4 trained again
    ref_w = _weights(reference.model)
    for k, v in _weights(resumed.model).items():
        assert torch.equal(v, ref_w[k]), k


def test_lora_trains_adapters_only_and_exports_merged(tiny, tmp_path):
    model, tok = tiny
    base = _weights(model)
    cfg = TrainConfig(algo="distill", steps=2, batch_size=2, lr=1e-2, lora=True, lora_r=4)
    trainer = Trainer(model, tok, rule_episodes(4, 1), [], cfg, tmp_path)
    trainer.run()
    trainable = [k for k, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    # the base weights stayed; the merged export is W + (lora_alpha / r) B A
    q_proj = base["model.layers.0.self_attn.q_proj.weight"]
    params = dict(trainer.model.named_parameters())
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    assert torch.equal(params[f"{prefix}.base_layer.weight"], q_proj)
    lora_a = params[f"{prefix}.lora_A.default.weight"].detach()
    lora_b = params[f"{prefix}.lora_B.default.weight"].detach()
    assert lora_b.abs().sum() > 0  # B starts at zero: the steps trained it
    exported = AutoModelForCausalLM.from_pretrained(trainer.export(tmp_path / "model"))
    merged = exported.model.layers[0].self_attn.q_proj.weight
    assert torch.allclose(merged, q_proj + (16 / 4) * lora_b @ lora_a, atol=1e-6)
    assert not torch.equal(merged, q_proj)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algo": "ppo"}, "unknown algo"),
        ({"algo": "grpo", "group_size": 1}, "group_size"),
        ({"precision": "fp8"}, "precision"),
        ({"train_fused": True}, "fusion_alpha > 0"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_greedy_order_of_a_lora_model_equals_the_merged_model(tiny, tiny_model_dir):
    """The label-only decoding path works through peft's wrapper: a LoRA model ranks
    exactly like the same adapters merged into a plain model."""
    from ranking.rl.trainer import apply_lora

    _, tok = tiny
    seq = build_sequence(rule_episodes(1, seed=8, k=6)[0].request, tok)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = apply_lora(base, r=4, alpha=8)
    torch.manual_seed(2)
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter): make it matter
            p.data.normal_(0, 0.5)
    with torch.no_grad():
        with_adapters = greedy_order(lora, seq)
        merged = greedy_order(lora.merge_and_unload(), seq)
    assert with_adapters == merged
    assert sorted(with_adapters) == sorted(seq.ids)


def test_linear_warmup_is_step_plus_one_over_steps_then_flat():
    import torch

    from ranking.rl.trainer import linear_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = linear_warmup(opt, 4)
    seen = []
    for _ in range(6):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    flat = linear_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4), 0)
    assert flat.get_last_lr() == [0.4]
