"""Score digests: a served run records the scores of the signal it fused with, a baseline
run its own, and `recsys eval-diff` says when a pair's two fits of one signal differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.eval.baselines import ScoreDigest
from recsys.eval.report import signal_notes
from tests.fixtures.cli import run_cli


def digest_of(*arrays) -> str:
    d = ScoreDigest()
    for a in arrays:
        d.add(a)
    return d.hexdigest()


def test_the_digest_sees_every_score_and_their_order() -> None:
    a, b = np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0])
    assert digest_of(a, b) == digest_of(a.copy(), [1.0, 2.0])
    assert digest_of(a, b) != digest_of(b, a)
    assert digest_of(a, b) != digest_of(a, np.nextafter(b, 3.0))  # one ulp


def results(ranker: str, info: dict, ids=("t:0", "t:1"), signal: str | None = None) -> dict:
    rows = [{"id": i, "mrr": 1.0} for i in ids]
    config = {"fusion_signal": signal} if signal else {}
    return {"config": config, "runs": [{"task": "t", "ranker": ranker, "info": info,
                                        "instances": rows}]}  # fmt: skip


SERVED = results("incremental+fusion@5", {"fusion_signal_sha256": "aa"}, signal="lambdamart")


@pytest.mark.parametrize(
    ("a", "b", "noted"),
    [
        (SERVED, results("lambdamart", {"scores_sha256": "aa"}), False),  # the same fit
        (SERVED, results("lambdamart", {"scores_sha256": "bb"}), True),  # another fit
        (SERVED, results("lambdamart", {"scores_sha256": "bb"}, ids=("t:0",)), False),
        (SERVED, results("transitions", {"scores_sha256": "bb"}), False),  # not its signal
        (SERVED, results("lambdamart", {}), False),  # a file from before digests
        (results("incremental", {}, signal="lambdamart"),
         results("lambdamart", {"scores_sha256": "bb"}), False),  # A did not fuse
    ],
)  # fmt: skip
def test_signal_notes(a: dict, b: dict, noted: bool) -> None:
    notes = signal_notes("A.json", a, "B.json", b)
    assert bool(notes) == noted
    if noted:
        assert "A.json" in notes[0] and "B.json" in notes[0] and "lambdamart" in notes[0]


def test_eval_diff_says_when_the_signal_was_another_fit(
    fresh_settings, capsys, tmp_path: Path, tiny_model_dir
) -> None:
    from recsys.eval.baselines import TransitionsBaseline
    from tests.fixtures.data import tiny_ml100k

    data = tiny_ml100k(tmp_path / "ml", users=4)
    common = ["--task", "rec-movie", "--data", str(data), "--limit", "3", "--no-progress"]

    def evaluate(name: str, *args: str) -> dict:
        out = tmp_path / f"{name}.json"
        code, _, err = run_cli(fresh_settings, capsys, ["eval", *common, *args, "--out", str(out)])
        assert code == 0, err
        return json.loads(out.read_text())["runs"][0]["info"]

    served = evaluate("served", "--model", str(tiny_model_dir), "--fusion-alpha", "2")
    baseline = evaluate("transitions", "--ranker", "transitions")
    assert served["fusion_signal_sha256"] == baseline["scores_sha256"]
    fresh_settings.setattr(TransitionsBaseline, "__init__", lambda self, window=3: setattr(
        self, "window", window))  # fmt: skip
    other = evaluate("transitions3", "--ranker", "transitions")
    assert other["scores_sha256"] != baseline["scores_sha256"]

    def diff(b: str) -> str:
        files = [str(tmp_path / "served.json"), str(tmp_path / f"{b}.json")]
        code, _, err = run_cli(fresh_settings, capsys, ["eval-diff", *files])
        assert code == 0
        return err

    assert "scored these instances differently" not in diff("transitions")
    assert "scored these instances differently" in diff("transitions3")


def _with_kernels(results_file: dict, kernels: list[str] | None) -> dict:
    config = dict(results_file["config"])
    if kernels is not None:
        config["kernels"] = kernels
    return {**results_file, "config": config}


@pytest.mark.parametrize(
    ("kernels_a", "kernels_b", "hint"),
    [
        (["openblas 0.3.31 SkylakeX"], ["openblas 0.3.31 Haswell"], True),
        (["openblas 0.3.31 SkylakeX"], ["openblas 0.3.31 SkylakeX"], False),  # same machine kind
        (["openblas 0.3.31 SkylakeX"], None, False),  # a file from before kernels were recorded
    ],
)
def test_a_note_names_other_numeric_kernels(kernels_a, kernels_b, hint) -> None:
    a = _with_kernels(SERVED, kernels_a)
    b = _with_kernels(results("lambdamart", {"scores_sha256": "bb"}), kernels_b)
    (note,) = signal_notes("A.json", a, "B.json", b)
    assert ("other numeric kernels: openblas 0.3.31 SkylakeX vs openblas 0.3.31 Haswell" in note
            ) == hint  # fmt: skip


def test_numeric_kernels_name_the_blas_architecture_in_use() -> None:
    """OpenBLAS chooses its kernels by CPU (OPENBLAS_CORETYPE overrides the choice): what a
    results file records is the one this process computes with."""
    import os
    import subprocess
    import sys

    code = "from recsys.provenance import numeric_kernels; print(numeric_kernels())"
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "openblas" in out and "Haswell" in out
