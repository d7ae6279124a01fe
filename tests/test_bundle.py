"""Training bundles (ranking.rl.bundle): a hybrid run packed on one machine and trained on
another follows the run it stands for, with the lower layers' output and the upper layers'
weights carried exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ranking.rl.bundle import (
    _dequantized,
    _manifest,
    _upper_weights,
    decode_episodes,
    load_trainer,
    steps_for_budget,
    train_bundle,
    write_bundle,
)
from ranking.rl.supervised import StyledTokenizer, SupervisedConfig, SupervisedTrainer, prepare
from tests.test_hybrid import fresh_hybrid, quality_episodes


def config(**kw) -> SupervisedConfig:
    base = dict(supervised_steps=4, rl_steps=4, batch_size=4, lr=3e-2, warmup_steps=2,
                eval_every=10_000, checkpoint_every=100)  # fmt: skip
    return SupervisedConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def packed(tiny_model_dir, tmp_path_factory):
    """A model trained a few steps and exported (the bundle's starting point), and a
    bundle of new episodes that continues it."""
    root = tmp_path_factory.mktemp("bundle")
    backend, hybrid = fresh_hybrid(tiny_model_dir, seed=3)
    first = SupervisedTrainer(backend.model, hybrid, quality_episodes(60, 1),
                              quality_episodes(10, 2), config(), root / "first")  # fmt: skip
    first.run(resume=False)
    init = first.export(root / "init")
    train, val = quality_episodes(80, 4), quality_episodes(12, 5)
    plain, plain_hybrid = _plain_base(tiny_model_dir)
    folder = write_bundle(root / "bundle", model=plain.model, tokenizer=plain.tokenizer,
                          config=plain_hybrid, item_ids=hybrid.item_ids,
                          vectors=hybrid.vectors.numpy(), train=train, val=val,
                          training=config(supervised_steps=0, rl_steps=6), init=init)  # fmt: skip
    return {"root": root, "init": init, "train": train, "val": val, "bundle": folder}


def _plain_base(tiny_model_dir):
    from ranking.hybrid import HybridConfig
    from ranking.loading import _load_transformers, resolve_model

    backend = _load_transformers(resolve_model(str(tiny_model_dir)), "cpu")
    return backend, HybridConfig(base=str(tiny_model_dir), inject_layer=1, vector_dim=5)


def test_episodes_travel_as_the_same_token_sequences(packed, tiny_model_dir) -> None:
    _, hybrid = fresh_hybrid(tiny_model_dir)
    builder = StyledTokenizer(hybrid.tokenizer, hybrid.style)
    for name in ("train", "val"):
        decoded = decode_episodes(packed["bundle"], name)
        assert len(decoded) == len(packed[name])
        for a, b in zip(packed[name], decoded, strict=True):
            pa, pb = prepare(a, builder), prepare(b, builder)
            assert pa.seq.prompt_ids == pb.seq.prompt_ids
            assert (pa.seq.label_ids, pa.order, pa.gt) == (pb.seq.label_ids, pb.order, pb.gt)


def test_a_bundle_run_follows_the_run_it_stands_for(packed, tiny_model_dir, tmp_path) -> None:
    """Same start (the init model), same batches: the bundle's trainer, whose lower layers
    never run, ends with the weights of a trainer on the real model."""
    backend, hybrid = fresh_hybrid(tiny_model_dir, seed=3)  # the vectors the bundle carries
    direct = SupervisedTrainer(
        backend.model,
        hybrid,
        packed["train"],
        packed["val"],
        config(supervised_steps=0, rl_steps=6),
        tmp_path / "direct",
    )
    direct.init_from(packed["init"])
    direct.run(resume=False)
    carried = load_trainer(packed["bundle"], tmp_path / "carried")
    carried.run(resume=False)
    assert carried.split.lower_tokens == 0  # the memo answered every layout
    for a, b in zip(direct.params, carried.params, strict=True):
        torch.testing.assert_close(a, b)
    assert carried.validate() == pytest.approx(direct.validate())


def test_train_bundle_plans_for_a_budget_and_exports_a_model(packed, tmp_path, monkeypatch) -> None:
    """The probe's rate sets the run's length (not the bundle's 6 batches); the deadline
    may cut it short on a busy machine, never make it longer."""
    import ranking.rl.bundle as bundle

    monkeypatch.setattr(bundle, "_probe_rate", lambda *a, **k: 2.0)  # steps per second
    out = tmp_path / "model"
    summary = train_bundle(packed["bundle"], out, budget_s=10, echo=lambda _: None)
    planned = summary["config"]["rl_steps"]
    assert 6 < planned <= steps_for_budget(2.0, 10)  # 17 for the whole budget
    assert 1 <= summary["steps"] <= planned
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "bundle_run.json").read_text())["episodes"] == summary["episodes"]


def test_a_budgeted_run_builds_one_trainer_and_its_probe_leaves_no_trace(
    packed, tmp_path, monkeypatch
) -> None:
    """The probe times steps on the run's own trainer (one model build, one decode of the
    episodes); its steps are undone, so the run starts where a run without a probe does."""
    import ranking.rl.bundle as bundle

    built = []
    real = bundle.load_trainer
    monkeypatch.setattr(bundle, "load_trainer", lambda *a, **k: built.append(1) or real(*a, **k))
    monkeypatch.setattr(bundle, "steps_for_budget", lambda rate, left: 5)  # any machine
    summary = train_bundle(packed["bundle"], tmp_path / "m", budget_s=600, probe_steps=2,
                           echo=lambda _: None)  # fmt: skip
    assert len(built) == 1
    assert summary["config"]["rl_steps"] == summary["steps"] == 5
    plain = real(packed["bundle"], tmp_path / "plain", overrides={"rl_steps": 5})
    plain.run(resume=False)
    probed = real(packed["bundle"], tmp_path / "again", overrides={"rl_steps": 5})
    before = [p.detach().clone() for p in probed.params]
    with probed.trial():
        for step in range(3):
            probed.train_step(step)
        assert any(not torch.equal(a, b) for a, b in zip(probed.params, before, strict=True))
    assert probed.step == 0 and probed.scheduler.last_epoch == 0
    probed.run(resume=False)
    for a, b in zip(plain.params, probed.params, strict=True):
        torch.testing.assert_close(a, b)


def test_a_budgeted_run_resumed_keeps_its_plan(packed, tmp_path, monkeypatch) -> None:
    """Cut off at its deadline and started again with a budget, a run resumes its
    checkpoint with the plan it was saved with (no new probe, no CheckpointMismatch)."""
    import ranking.rl.bundle as bundle

    monkeypatch.setattr(bundle, "_probe_rate", lambda *a, **k: 2.0)
    first = load_trainer(packed["bundle"], tmp_path / "m.work", overrides={"rl_steps": 9})
    assert first.run(resume=False, stop_at=4) == 4
    assert bundle.saved_plan(tmp_path / "m.work") == {"supervised_steps": 0, "rl_steps": 9}
    monkeypatch.setattr(bundle, "_probe_rate", lambda *a, **k: pytest.fail("probed again"))
    summary = train_bundle(packed["bundle"], tmp_path / "m", budget_s=600, echo=lambda _: None)
    assert summary["config"]["rl_steps"] == summary["steps"] == 9
    assert bundle.saved_plan(tmp_path / "nothing") == {}


def test_a_layout_the_bundle_lacks_is_an_error(packed, tmp_path) -> None:
    trainer = load_trainer(packed["bundle"], tmp_path / "w")
    with pytest.raises(KeyError, match="not in the preloaded memo"):
        trainer.split._stream([1, 2, 3])


@pytest.mark.slow
def test_a_gguf_base_travels_as_its_own_4bit_blocks(default_ranker) -> None:
    """The real default model: every projection of the upper layers is carried as Q4 codes
    (0.75 bytes per weight instead of 4) and comes back bit for bit."""
    model = default_ranker.backend.model
    carried = _upper_weights(model, 22)
    q4 = [k for k, v in carried.items() if isinstance(v, dict)]
    assert len(q4) == 8 * 7  # q, k, v, o, gate, up, down of layers 22..29
    state = model.state_dict()
    for name, weight in _dequantized(carried).items():
        assert torch.equal(weight, state[name]), name


def test_steps_for_budget_known_answers() -> None:
    assert steps_for_budget(10.0, 100.0) == 850
    assert steps_for_budget(0.001, 10.0) == 1


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (None, FileNotFoundError, "not a training bundle"),
        ({"format": 99}, ValueError, "bundle format 99"),
    ],
)
def test_bad_bundles(tmp_path, content, error, message) -> None:
    if content is not None:
        (tmp_path / "bundle.json").write_text(json.dumps(content))
    with pytest.raises(error, match=message):
        _manifest(tmp_path)


def test_titles_do_not_travel(tiny_model_dir, tmp_path) -> None:
    from ranking.hybrid import HybridConfig

    plain, _ = _plain_base(tiny_model_dir)
    titled = HybridConfig(base="x", inject_layer=1, vector_dim=5, title_chars=None)
    with pytest.raises(ValueError, match="carries no titles"):
        write_bundle(tmp_path / "b", model=plain.model, tokenizer=plain.tokenizer, config=titled,
                     item_ids=["1"], vectors=np.zeros((1, 5), np.float32), train=[], val=[],
                     training=config())  # fmt: skip


def test_a_checkpoint_resumes_only_its_own_run(packed, tmp_path) -> None:
    """A run stopped at its deadline leaves a checkpoint; a run planned differently in the
    same folder is refused rather than silently taking the old schedule (the first GPU
    calls resumed a probe's checkpoint and kept its learning-rate schedule)."""
    import time

    from ranking.rl.supervised import CheckpointMismatch

    first = load_trainer(packed["bundle"], tmp_path / "w")
    assert first.run(resume=False, deadline=time.monotonic() - 1) == 0
    assert (tmp_path / "w" / "checkpoint" / "state.pt").is_file()
    assert load_trainer(packed["bundle"], tmp_path / "w", overrides={"eval_every": 3}).step == 0
    with pytest.raises(CheckpointMismatch, match="rl_steps 6 there, 50 here"):
        load_trainer(packed["bundle"], tmp_path / "w", overrides={"rl_steps": 50})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size: 0 is outside [1, 1024]"),
        (["--lr", "fast"], "--lr: 'fast' is not a float"),
        (["--budget-s", "-5"], "--budget-s: -5 is outside"),
        (["--ce-weight", "1e9"], "--ce-weight: 1e9 is outside"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_command_lines_are_clear_errors(packed, tmp_path, capsys, args, message) -> None:
    from ranking.rl.bundle import main

    with pytest.raises(SystemExit) as stop:
        main([str(packed["bundle"]), "--out", str(tmp_path / "m"), *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_folder_that_is_not_a_bundle_is_a_clear_error(tmp_path, capsys) -> None:
    from ranking.rl.bundle import main

    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), "--out", str(tmp_path / "m")])
    assert stop.value.code == 2
    assert "not a training bundle" in capsys.readouterr().err


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_cuda_without_a_gpu_is_a_clear_error(packed, tmp_path, capsys) -> None:
    from ranking.rl.bundle import main

    with pytest.raises(SystemExit):
        main([str(packed["bundle"]), "--out", str(tmp_path / "m"), "--device", "cuda"])
    assert "CUDA is not available here" in capsys.readouterr().err


def test_a_fused_run_travels_with_its_scores(tiny_model_dir, tmp_path) -> None:
    """A --residual-alpha run's bundle carries each candidate's score and the weight: the
    decoded episodes give the trainer the same fusion bias as the originals."""
    from tests.test_hybrid_residual import close_calls

    _, hybrid = fresh_hybrid(tiny_model_dir, seed=3)
    plain, plain_hybrid = _plain_base(tiny_model_dir)
    train, val = close_calls(12, 1), close_calls(4, 2)
    folder = write_bundle(tmp_path / "bundle", model=plain.model, tokenizer=plain.tokenizer,
                          config=plain_hybrid, item_ids=hybrid.item_ids,
                          vectors=hybrid.vectors.numpy(), train=train, val=val,
                          training=config(fusion_alpha=3.0))  # fmt: skip
    builder = StyledTokenizer(hybrid.tokenizer, hybrid.style)
    for a, b in zip(val, decode_episodes(folder, "val"), strict=True):
        torch.testing.assert_close(prepare(a, builder, 3.0).bias, prepare(b, builder, 3.0).bias)
    assert load_trainer(folder, tmp_path / "work").cfg.fusion_alpha == 3.0
