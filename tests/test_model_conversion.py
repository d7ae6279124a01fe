"""A GGUF loaded through its cached Hugging Face conversion (ranking.loading
`converted_dir`, ranking.convert.ensure_hf_dir), on a tiny random GGUF; the real default
model's equality is tests/test_ranking_real.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ranking.loading import load_backend
from tests.test_vllm_backend import write_tiny_gguf


@pytest.fixture
def gguf(tmp_path):
    (tmp_path / "src").mkdir()
    return write_tiny_gguf(tmp_path / "src" / "tiny.gguf")


def test_a_gguf_loads_from_its_conversion_as_itself(gguf, tmp_path) -> None:
    direct = load_backend(gguf, device="cpu", cache=False)
    cached = load_backend(gguf, device="cpu", cache=False, converted_dir=tmp_path / "models")
    assert (tmp_path / "models" / "tiny-hf" / "config.json").is_file()
    assert cached.model_id == direct.model_id == "tiny"
    want = dict(direct.model.named_parameters())
    for name, param in cached.model.named_parameters():
        assert torch.equal(param, want[name]), name
    assert cached.encode("<|im_start|>user") == direct.encode("<|im_start|>user")
    contexts, allowed = [[1, 2, 3, 4], [4, 3]], [[5, 6, 7], [1, 2]]
    for a, b in zip(cached.next_token_logprobs(contexts, allowed),
                    direct.next_token_logprobs(contexts, allowed), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)


def test_the_conversion_is_made_once_and_remade_when_the_gguf_changes(
    gguf, tmp_path, monkeypatch
) -> None:
    import ranking.convert as convert

    made = []
    real = convert.convert_to_hf
    monkeypatch.setattr(convert, "convert_to_hf", lambda *a, **k: made.append(k) or real(*a, **k))
    target = convert.ensure_hf_dir(gguf, tmp_path)
    assert convert.ensure_hf_dir(gguf, tmp_path) == target and len(made) == 1  # reused
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a reinstalled file
    assert convert.ensure_hf_dir(gguf, tmp_path) == target and len(made) == 2
    assert made[1]["overwrite"] is True and (target / "config.json").is_file()
    assert convert.ensure_hf_dir(gguf, tmp_path) == target and len(made) == 2


def test_a_cache_that_cannot_be_written_falls_back_to_the_gguf(gguf, tmp_path, caplog) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    backend = load_backend(gguf, device="cpu", cache=False, converted_dir=blocked / "models")
    assert backend.model_id == "tiny" and "loading tiny.gguf itself" in caplog.text
