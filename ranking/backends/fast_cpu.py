"""The fast CPU backend: the transformers backend with its one-token steps computed by
:class:`ranking.backends.llama_step.LlamaStep` (fused float32 or 4-bit projections, no
per-step mask building), everything else — prefill, KV-cache reuse, generation — as in
:class:`ranking.backends.transformers_backend.TransformersBackend`.

`incremental` mode is one prefill followed by one-token steps, and on CPU such a step is
bound by reading the decoder's weights: the fast step makes it cheaper (13.3 ms against
34.7 ms on the default model, docs/ranking.md; benchmarks/bench_ranking.py times both in one
run). It computes the same function, so the
two backends agree to float rounding; the backend contract suite
(tests/contracts/test_backend_contract.py) holds both to a direct forward pass.

:func:`backend_for_model` is the one place that chooses between the two: a model the step
covers (a plain float32 Llama on CPU, :func:`ranking.backends.llama_step.supports`) gets this
backend, any other the plain one. The step steps aside on its own where it cannot be exact:

* a model whose weights were replaced or edited after loading (training, LoRA wrapping) gets
  a new step, or the transformers forward where the step no longer fits;
* a hybrid model (ranking.hybrid; its labels are its item tokens) keeps the fast step:
  the step calls the embedding module, whose hook swaps an item token for its placeholder,
  and the hybrid's `inject_pending` before the injection layer, as the layer's hook would.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ranking.backends.llama_step import LlamaStep, supports
from ranking.backends.transformers_backend import TransformersBackend

log = logging.getLogger(__name__)


class FastCpuBackend(TransformersBackend):
    """TransformersBackend whose one-token steps go through the fast Llama step.

    `fast_decode = False` sends every step through the transformers forward, and
    `q4_decode = False` reads 4-bit projections (a Q4_1 GGUF file) in float32: both exist to
    compare the paths in one process (benchmarks, tests)."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, model_id: str, device: str = "cpu"
    ) -> None:
        super().__init__(model, tokenizer, model_id, device)
        self.fast_decode = True
        self.q4_decode = True
        # one step per (split hybrid?, q4_decode) setting, built on first use; None: the
        # model has none
        self._llama_steps: dict[tuple[bool, bool], LlamaStep | None] = {}

    def _decode(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor | None,
        cache: object,
        rows: tuple[list[tuple[int, ...]], list[int]],
    ) -> torch.Tensor:
        step = self._fast_step() if ids.shape[1] == 1 and mask is not None else None
        if step is None:
            return super()._decode(ids, pos, mask, cache, rows)
        if self._split is not None:  # the upper layers only, on the memoised lower stream
            return step(ids, pos, mask, cache, embeds=self._split.inputs(*rows, ids))
        if self.hybrid is None:
            return step(ids, pos, mask, cache)
        # the embedding hook (called by the step) records the item tokens; the step calls
        # the hybrid's injection where the layer hook would have run
        inject = (self.hybrid.config.inject_layer, self.hybrid.inject_pending)
        return step(ids, pos, mask, cache, inject=inject)

    def _fast_step(self) -> LlamaStep | None:
        """The step for the current weights and `q4_decode`, built (or rebuilt after a weight
        change) on first use; None when it is switched off or the model no longer fits."""
        if not self.fast_decode:
            return None
        key = self._step_key()
        if key in self._llama_steps:
            step = self._llama_steps[key]
            if step is None or (step.is_current() and step.model is self._step_model()):
                return step
        t0 = time.perf_counter()
        step = self._llama_steps[key] = LlamaStep.build(self._step_model(), allow_q4=key[1])
        if step is not None:
            log.info(
                "fast one-token step built in %.1fs: %s weights, %.0f MB",
                time.perf_counter() - t0,
                step.weights,
                step.nbytes / 1e6,
            )
        return step

    def _step_model(self) -> torch.nn.Module:
        """What the step runs: the model, or a split hybrid's upper layers."""
        return self._split.upper if self._split is not None else self.model

    @property
    def _llama_step(self) -> LlamaStep | None:
        """The step built for the current `q4_decode` setting (None: none yet, or none fits)."""
        return self._llama_steps.get(self._step_key())

    def _step_key(self) -> tuple[bool, bool]:
        return self._split is not None, self.q4_decode


def backend_for_model(
    model: torch.nn.Module, tokenizer: Any, model_id: str, device: str = "cpu"
) -> TransformersBackend:
    """The backend for a loaded transformers model: the fast CPU backend where its step
    covers the model, else the plain transformers backend."""
    cls = FastCpuBackend if supports(model) else TransformersBackend
    return cls(model, tokenizer, model_id=model_id, device=device)
