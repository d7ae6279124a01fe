"""Committees (ranking.backends.committee, recsys.committee): pooled step distributions
with a known answer, exact propensities, folders and cards, and bad input as tables.
The backend contract (tests/contracts/test_backend_contract.py) runs a committee too."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ranking.backends.committee import (
    CommitteeBackend,
    CommitteeSpec,
    read_committee,
    write_committee,
)
from ranking.backends.fake import ScriptedBackend, WordTokenizer
from ranking.engine import Ranker
from ranking.errors import ModelLoadError, RequestError
from ranking.loading import load_backend
from tests.fixtures.cli import run_cli
from tests.fixtures.requests import make_request
from tests.test_hybrid import fresh_hybrid, request


def scripted(rows: dict[int, list[float]], tokenizer: WordTokenizer) -> ScriptedBackend:
    """A member whose raw log-probs for `allowed` of length n are rows[n] (unnormalised)."""
    backend = ScriptedBackend(logprob_fn=lambda ctx, allowed: np.array(rows[len(allowed)]))
    backend.tokenizer = tokenizer
    return backend


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.log(np.exp(x - x.max()).sum()) - x.max()


def test_pooling_known_answer() -> None:
    """p ∝ p1^w1 p2^w2, weights normalised: here [1, 3] -> 0.25 / 0.75."""
    tok = WordTokenizer()
    a = np.log([0.5, 0.3, 0.2])
    b = np.log([0.1, 0.1, 0.8])
    committee = CommitteeBackend([scripted({3: a}, tok), scripted({3: b}, tok)], [1, 3])
    (got,) = committee.next_token_logprobs([[1, 2]], [[5, 6, 7]])
    want = log_softmax(0.25 * a + 0.75 * b)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert math.isclose(np.exp(got).sum(), 1.0)
    # one member of weight 1 is that member (renormalised); identical members are each one
    (alone,) = CommitteeBackend([scripted({3: a}, tok)], [7]).next_token_logprobs(
        [[1]], [[5, 6, 7]]
    )
    np.testing.assert_allclose(alone, a, atol=1e-12)


def test_continuations_pool_every_prefix() -> None:
    tok = WordTokenizer()
    rows_a = {3: np.log([0.6, 0.3, 0.1]), 2: np.log([0.9, 0.1])}
    rows_b = {3: np.log([0.2, 0.2, 0.6]), 2: np.log([0.5, 0.5])}
    committee = CommitteeBackend([scripted(rows_a, tok), scripted(rows_b, tok)], [1, 1])
    (steps,) = committee.continuation_logprobs([[1]], [[5]], [[[5, 6, 7], [6, 7]]])
    np.testing.assert_allclose(steps[0], log_softmax(0.5 * rows_a[3] + 0.5 * rows_b[3]))
    np.testing.assert_allclose(steps[1], log_softmax(0.5 * rows_a[2] + 0.5 * rows_b[2]))


@pytest.mark.parametrize("mode", ["incremental", "score", "direct"])
def test_rankings_are_permutations_with_the_pooled_propensity(mode: str) -> None:
    """The ranker's steps are the committee's: each step's probability is the pooled one
    and the log-propensity their sum."""
    tok = WordTokenizer()
    rng = np.random.default_rng(0)

    def member(seed: int) -> ScriptedBackend:
        r = np.random.default_rng(seed)
        table: dict[int, np.ndarray] = {}
        backend = ScriptedBackend(
            logprob_fn=lambda ctx, allowed: table.setdefault(
                len(allowed), r.normal(size=len(allowed))
            )
        )
        backend.tokenizer = tok
        return backend

    committee = CommitteeBackend([member(1), member(2)], [0.4, 0.6])
    req = make_request(5, mode, temperature=1.0, seed=int(rng.integers(100)))
    result = Ranker(committee, speculate=0).rank(req)
    assert sorted(result.order) == sorted(req.ids)
    assert result.log_propensity == pytest.approx(sum(math.log(s.prob) for s in result.steps))


def test_reason_mode_is_refused_with_the_modes_that_work() -> None:
    tok = WordTokenizer()
    committee = CommitteeBackend([scripted({}, tok)], [1])
    with pytest.raises(RequestError, match="use mode incremental, score or direct"):
        committee.generate(["hi"], max_new_tokens=4)


def test_a_broken_member_answer_reaches_the_rankers_checks() -> None:
    tok = WordTokenizer()
    good = scripted({3: np.log([0.2, 0.3, 0.5])}, tok)
    for broken in (np.array([0.0, 0.0]), np.array([np.nan, 0.0, 0.0])):
        bad = scripted({3: broken}, tok)
        (got,) = CommitteeBackend([good, bad], [1, 1]).next_token_logprobs([[1]], [[5, 6, 7]])
        assert got.shape == broken.shape and np.array_equal(got, broken, equal_nan=True)


@pytest.mark.parametrize(
    ("members", "weights", "message"),
    [
        ([], None, "1 to 8 members; got 0"),
        (["m"] * 9, None, "1 to 8 members; got 9"),
        (["a", "b"], [1.0], "1 weights for 2 members"),
        (["a", "b"], [1.0, 0.0], "finite and > 0"),
        (["a", "b"], [1.0, -2.0], "finite and > 0"),
        (["a", "b"], [1.0, float("nan")], "finite and > 0"),
        (["a", "b"], [1.0, float("inf")], "finite and > 0"),
    ],
)
def test_bad_committee_specs(members, weights, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        CommitteeSpec.of(members, weights)


def test_members_that_read_prompts_differently_are_refused(tiny_model_dir) -> None:
    hybrid_backend, _ = fresh_hybrid(tiny_model_dir)  # item tokens added to its tokenizer
    plain = load_backend(str(tiny_model_dir), device="cpu", cache=False)
    with pytest.raises(ModelLoadError, match="different tokenizer vocabularies"):
        CommitteeBackend([hybrid_backend, plain], [1, 1])
    other = load_backend(str(tiny_model_dir), device="cpu", cache=False)
    other.prompt_style = hybrid_backend.prompt_style  # same vocabulary, another style
    with pytest.raises(ModelLoadError, match="write prompts differently"):
        CommitteeBackend([plain, other], [1, 1])


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("not json", "not a committee manifest"),
        ('{"members": [{"weight": 1}]}', "not a committee manifest"),
        ('{"members": [{"model": "x", "weight": "heavy"}]}', "not a committee manifest"),
        ('{"members": []}', "1 to 8 members"),
    ],
)
def test_bad_committee_folders(tmp_path, manifest: str, message: str) -> None:
    (tmp_path / "committee.json").write_text(manifest)
    with pytest.raises(ModelLoadError, match=message):
        read_committee(tmp_path)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (["../missing"], r"committee '.*bad': model path '.*missing' does not exist"),
        (["../inner"], r"committee '.*bad': member '.*inner' is itself a committee"),
    ],
)
def test_a_committee_member_that_cannot_load_names_the_committee(tmp_path, members, message):
    write_committee(tmp_path / "inner", CommitteeSpec.of(["default"]))
    write_committee(tmp_path / "bad", CommitteeSpec.of(members))
    with pytest.raises(ModelLoadError, match=message):
        load_backend(tmp_path / "bad", device="cpu", cache=False)


def test_a_committee_folder_of_hybrids_serves_the_pooled_ranking(tiny_model_dir, tmp_path):
    """Two trained-looking hybrids saved, a committee folder of them loaded by spec: its
    steps are the pooled steps of the two loaded alone, in every request of a ranking."""
    folders = []
    for seed in (0, 1):
        _, hybrid = fresh_hybrid(tiny_model_dir, seed=seed)
        with torch.no_grad():
            hybrid.projector.net[2].weight.normal_(std=0.5)
            hybrid.projector.out.weight.normal_(std=0.5)
        folders.append(hybrid.save(tmp_path / f"hyb{seed}"))
    write_committee(tmp_path / "both", CommitteeSpec.of(["../hyb0", "../hyb1"], [1, 2]))
    assert read_committee(tmp_path / "both").members == tuple(str(f.resolve()) for f in folders)
    committee = load_backend(tmp_path / "both", device="cpu", cache=False)
    assert isinstance(committee, CommitteeBackend) and committee.model_id == "both"
    alone = [load_backend(f, device="cpu", cache=False) for f in folders]
    req = request(["1", "2", "3", "4", "5"], ["6", "7"], temperature=1.0, seed=3)
    result = Ranker(committee, batch_size=1, speculate=0).rank(req)
    assert sorted(result.order) == sorted(req.ids)
    # replay the ranking's steps on the members alone and pool by hand
    from ranking.modes.incremental import build_sequence

    seq = build_sequence(req, committee)
    eliminated: list[int] = []
    for step in result.steps:
        remaining = [i for i in range(5) if i not in eliminated]
        ctx, allowed = seq.context(eliminated), [seq.label_ids[i] for i in remaining]
        rows = [m.next_token_logprobs([ctx], [allowed])[0] for m in alone]
        pooled = log_softmax(rows[0] / 3 + 2 * rows[1] / 3)
        pick = req.ids.index(step.eliminated)
        assert step.prob == pytest.approx(math.exp(pooled[remaining.index(pick)]), abs=1e-5)
        eliminated.append(pick)


def test_the_committee_command_writes_folder_and_card(monkeypatch, capsys, tmp_path) -> None:
    for name, users in (("a", "train"), ("b", "all")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        card = {"options": {"users": users}, "fusion_alpha": 3.0}
        (tmp_path / name / "card.json").write_text(json.dumps(card))
    out = tmp_path / "models" / "c"
    args = ["committee", str(out), "--member", str(tmp_path / "a"), "--member", str(tmp_path / "b")]
    code, stdout, _ = run_cli(
        monkeypatch, capsys, [*args, "--weight", "1", "--weight", "3", "--fusion-alpha", "5"]
    )
    assert code == 0 and "wrote" in stdout
    manifest = json.loads((out / "committee.json").read_text())
    assert manifest["members"] == [
        {"model": "../../a", "weight": 0.25},
        {"model": "../../b", "weight": 0.75},
    ]
    card = json.loads((out / "card.json").read_text())
    assert card["fusion_alpha"] == 5.0 and card["options"]["users"] == "all"  # b read all
    from recsys.resolver import resolve_ranker, trained_on_users

    assert resolve_ranker(str(out)).fusion_alpha == 5.0 and trained_on_users(str(out)) == "all"
    code, _, err = run_cli(monkeypatch, capsys, args)
    assert code == 2 and "already holds a committee; pass --overwrite" in err
    code, _, _ = run_cli(monkeypatch, capsys, [*args, "--overwrite", "--weight", "1"])
    assert code == 2  # 1 weight for 2 members: refused, the committee as it was
    assert json.loads((out / "committee.json").read_text())["members"] == manifest["members"]
    model_a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    code, _, err = run_cli(  # OUT a member's folder by mistake: never replaced
        monkeypatch, capsys, ["committee", str(tmp_path / "a"), *args[2:], "--overwrite"]
    )
    assert code == 2 and "has no committee.json" in err and "name a new or empty" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == model_a


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--member", "/no/such/model"], "does not exist"),
        (["--member", "{a}", "--weight", "1", "--weight", "2"], "2 weights for 1 members"),
        (
            ["--member", "{a}", "--fusion-alpha", "-1"],
            "--fusion-alpha must be a finite number >= 0",
        ),
        (["--member", "{committee}"], "is itself a committee"),
    ],
)
def test_the_committee_command_bad_input(monkeypatch, capsys, tmp_path, extra, message):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    write_committee(tmp_path / "committee", CommitteeSpec.of(["../a"]))
    args = [x.format(a=tmp_path / "a", committee=tmp_path / "committee") for x in extra]
    code, _, err = run_cli(monkeypatch, capsys, ["committee", str(tmp_path / "out"), *args])
    assert code == 2 and message in err, err
    assert not (tmp_path / "out" / "committee.json").exists()


def test_clearing_a_committee_clears_every_member(tiny_backend) -> None:
    tiny_backend.clear_cache()
    ids = tiny_backend.encode("a prompt long enough to cache")
    scripted_member = ScriptedBackend()  # keeps no cache
    scripted_member.tokenizer = tiny_backend.tokenizer
    committee = CommitteeBackend([tiny_backend, scripted_member], [1, 1])
    tiny_backend.next_token_logprobs([ids], [[5, 6]])
    before = tiny_backend.tokens_computed
    tiny_backend.next_token_logprobs([ids], [[5, 6]])
    cached = tiny_backend.tokens_computed - before
    assert cached < len(ids)  # the prompt came from the cache
    calls = tiny_backend.forward_calls
    committee.next_token_logprobs([ids], [[5, 6]])
    assert committee.forward_calls == calls + 1 == tiny_backend.forward_calls  # the members'
    committee.clear_cache()  # the scripted member has nothing to clear: skipped
    before = tiny_backend.tokens_computed
    tiny_backend.next_token_logprobs([ids], [[5, 6]])
    assert tiny_backend.tokens_computed - before == len(ids)  # computed whole again


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base": "another-base"}, "different base model"),
        ({"items": ["1", "2", "99"]}, "different catalogue"),
        ({"template": "paper"}, "different prompt layout"),
        ({}, None),  # the same manifest: written
    ],
)
def test_the_committee_command_refuses_members_whose_manifests_differ(
    monkeypatch, capsys, tmp_path, change, message
) -> None:
    """Checked from the manifests before anything is written (no model is loaded)."""
    config = {"base": "default", "inject_layer": 1, "vector_dim": 4, "template": "short"}
    for name, extra in (("a", {}), ("b", change)):
        manifest = {"config": {**config, **{k: v for k, v in extra.items() if k != "items"}},
                    "items": extra.get("items", ["1", "2", "3"])}  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "hybrid.json").write_text(json.dumps(manifest))
    out = tmp_path / "c"
    args = ["committee", str(out), "--member", str(tmp_path / "a"), "--member", str(tmp_path / "b")]
    code, _, err = run_cli(monkeypatch, capsys, args)
    if message is None:
        assert code == 0 and (out / "committee.json").is_file()
        return
    assert code == 2 and message in err and "must share a base model, a catalogue" in err
    assert not out.exists()
