"""Hybrid prompts: catalogue items as collaborative soft tokens (LLaRA, CoLLM).

Each catalogue item with a collaborative vector (LightFM factors and bias) gets its own
token in the tokenizer, `<|item:ID|>`. A prompt writes that token where the item appears
(history and candidates; `ranking.prompts.PromptStyle`), with or without its title. The
model never sees a rank or a score written as text: it reads the CF vector itself.

How the vector reaches the model (*late injection*): the layers below `inject_layer` see
a fixed placeholder token at every item position (the word " item"), and the vector,
mapped by a small trained projector (Linear-GELU-Linear, as LLaRA's) and scaled by the
RMS of the stream at that position, is added to the residual stream entering layer
`inject_layer`. Two consequences:

* the layers below `inject_layer` hold no trainable weight and see no request-specific
  input (every item is the placeholder there): training back-propagates through the top
  layers only, and both training and serving compute the lower layers once per prompt
  layout (`ranking.hybrid_split`) — what makes thousands of episodes per hour fit a CPU
  (`ranking.rl.supervised`) and a request cost ~0.1 s of it;
* every item token has its own id, so the backends' KV-cache reuse (keyed by token ids)
  stays exact, and the ranking's step probabilities — hence its propensity — are those of
  the model as served.

The injection is two forward pre-hooks (on the input embedding and on the decoder layer),
so it works for every mode on the transformers backend and on the fast CPU backend (whose
one-token step calls the embedding module, hook included, and `inject_pending` before the
injection layer: a hybrid's elimination steps, which append item tokens, take the fast
path). vLLM cannot run hooks: `load_backend(..., backend="vllm")` on a hybrid model raises
a ModelLoadError saying so.

**Items newer than the model** (not among its vectors: a catalogue grows after training)
are written with *new-item tokens* `<|new item K|>` (`PromptStyle.for_request` gives each
such item of a request its own), all carrying one vector, the catalogue's mean: the
model reads "an item it knows nothing about" while the prompt keeps the layout it was
trained on (soft tokens, item labels). Without them, one new candidate turned the whole
prompt into letters and titles, which the model never saw in training (measured:
`benchmarks/new_items.py`, docs/ranking.md "Items newer than the model").

A hybrid model is a folder (`save` / `load`): `hybrid.json` (base model, injection layer,
prompt style, item ids), `vectors.npy` (the CF vectors it was trained with: the projector
is versioned with them), `projector.pt`, and the LoRA adapter of the top layers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ranking.errors import ModelLoadError
from ranking.folders import written_whole
from ranking.prompts import PromptStyle
from ranking.types import MAX_CANDIDATES

TOKEN_FORMAT = "<|item:{}|>"
NEW_ITEM_FORMAT = "<|new item {}|>"
# a request's new candidates each need their own (they may be its labels); one more for
# new history items beyond them
NEW_ITEM_SLOTS = MAX_CANDIDATES + 1
PLACEHOLDER = " item"
MANIFEST = "hybrid.json"


class Projector(nn.Module):
    """CF vector -> the LM's hidden space, twice: `forward` gives the soft token injected
    into the stream (Linear-GELU-Linear, LLaRA's), `output` the item token's row of the
    output head (a linear map), so the logit of naming item c is h . W_out v_c."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.out = nn.Linear(in_dim, hidden)
        # start small: at step 0 the model sees mostly the placeholder
        nn.init.normal_(self.net[2].weight, std=0.01)
        nn.init.zeros_(self.net[2].bias)
        nn.init.normal_(self.out.weight, std=0.002)  # near-uniform first steps
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)


@dataclass(frozen=True)
class HybridConfig:
    """What a hybrid model is, besides its weights."""

    base: str  # the base model spec ("default" or a path)
    inject_layer: int
    vector_dim: int
    title_chars: int | None = 0  # 0: soft token only; None: soft token + whole title
    template: str = "short"
    vector_kind: str = "lightfm"
    chat: bool = False  # trained on bare prompts (no chat template)
    item_labels: bool = True  # a candidate's label is its own item token

    def style(
        self, item_tokens: dict[str, str], new_item_tokens: tuple[str, ...] = ()
    ) -> PromptStyle:
        return PromptStyle(
            self.template, self.title_chars, item_tokens, self.chat, self.item_labels,
            new_item_tokens,
        )  # fmt: skip


class Hybrid:
    """Item tokens, projector and injection hooks installed on one HF causal LM."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        config: HybridConfig,
        projector: Projector | None = None,
    ) -> None:
        layers = _decoder_layers(model)
        if not 0 <= config.inject_layer < len(layers):
            raise ModelLoadError(
                f"inject_layer {config.inject_layer} out of range: the model has {len(layers)} "
                "decoder layers"
            )
        if vectors.shape != (len(item_ids), config.vector_dim):
            raise ModelLoadError(
                f"vectors of shape {vectors.shape} for {len(item_ids)} items of dimension "
                f"{config.vector_dim}"
            )
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.item_ids = [str(i) for i in item_ids]
        hidden = model.config.hidden_size
        self.projector = projector or Projector(config.vector_dim, hidden)
        device = next(model.parameters()).device
        self.projector.to(device)
        self.vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=device)
        self.item_tokens = self._add_tokens()
        self.placeholder_id = _single_token(tokenizer, PLACEHOLDER)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handles = [
            model.get_input_embeddings().register_forward_pre_hook(self._on_embed),
            layers[config.inject_layer].register_forward_pre_hook(self._on_layer, with_kwargs=True),
        ]

    # -- tokens ------------------------------------------------------------------

    def _add_tokens(self) -> dict[str, str]:
        texts = [TOKEN_FORMAT.format(i) for i in self.item_ids]
        self.new_item_tokens = tuple(NEW_ITEM_FORMAT.format(k) for k in range(NEW_ITEM_SLOTS))
        self.base_vocab = int(self.model.get_input_embeddings().num_embeddings)
        self.tokenizer.add_tokens(texts + list(self.new_item_tokens), special_tokens=True)
        ids = self.tokenizer.convert_tokens_to_ids(texts)
        new_ids = self.tokenizer.convert_tokens_to_ids(list(self.new_item_tokens))
        if min(ids + new_ids) < self.base_vocab:
            raise ModelLoadError("item tokens collide with the model's vocabulary")
        lookup = torch.full((max(ids + new_ids) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(ids)] = torch.arange(len(ids))
        lookup[torch.tensor(new_ids)] = len(ids)  # one row past the catalogue: `vectors_at`
        self.row_of_token = lookup.to(self.vectors.device)
        return dict(zip(self.item_ids, texts, strict=True))

    def vectors_at(self, rows: torch.Tensor) -> torch.Tensor:
        """The vectors of catalogue rows `rows`; the row one past the catalogue (new-item
        tokens) gets the catalogue's mean (an item the CF model never fitted sits near the
        centre, as its rarest items do), computed only when asked for."""
        new = rows == len(self.item_ids)
        if not bool(new.any()):
            return self.vectors[rows]
        out = self.vectors[rows.clamp(max=len(self.item_ids) - 1)].clone()
        out[new] = self.vectors.mean(0)
        return out

    @property
    def style(self) -> PromptStyle:
        return self.config.style(self.item_tokens, self.new_item_tokens)

    def label_logits(
        self, head: nn.Module, hidden: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """Logits of the token ids `ids` ([..., len(ids)]): item tokens through the
        projector's output rows, ordinary tokens through the LM head."""
        soft = ids >= self.base_vocab
        rows = torch.empty(len(ids), hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        if bool((~soft).any()):
            rows[~soft] = head.weight[ids[~soft]].to(hidden.dtype)
        if bool(soft.any()):
            vec = self.vectors_at(self.row_of_token[ids[soft]])
            rows[soft] = self.projector.output(vec).to(hidden.dtype)
        return hidden @ rows.T

    # -- hooks -------------------------------------------------------------------

    def soft_positions(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(where `ids` holds item tokens, each position's catalogue row), or None when it
        holds none."""
        soft = ids >= self.base_vocab
        if not bool(soft.any()):
            return None
        rows = self.row_of_token[torch.where(soft, ids, 0).clamp(max=len(self.row_of_token) - 1)]
        return soft, rows

    def _on_embed(self, module: nn.Module, args: tuple) -> tuple:
        ids = args[0]
        self._pending = self.soft_positions(ids)
        if self._pending is None:
            return args
        soft = self._pending[0]
        return (torch.where(soft, torch.full_like(ids, self.placeholder_id), ids), *args[1:])

    def _on_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        if self._pending is None:
            return None
        hidden = self.inject_pending(args[0] if args else kwargs["hidden_states"])
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def inject_pending(self, hidden: torch.Tensor) -> torch.Tensor:
        """The stream entering `inject_layer` ([B, T, C]) plus the soft tokens of the item
        positions the last embedding call saw (unchanged when it saw none). The layer hook
        calls it; so does the fast CPU step, which runs the layers without their modules."""
        if self._pending is None:
            return hidden
        soft, rows = self._pending
        self._pending = None
        return self.add_soft_tokens(hidden, soft, rows)

    def add_soft_tokens(
        self, hidden: torch.Tensor, soft: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """`hidden` ([B, T, C]) plus, at the positions where `soft` is set, the projected
        vector of catalogue row `rows` scaled by the stream's RMS there."""
        delta = torch.zeros_like(hidden)
        # in units of the stream's own size at that position (its RMS is ~10 by the upper
        # layers of SmolLM2): a projector output of order 1 then matters from the start
        scale = hidden[soft].detach().pow(2).mean(-1, keepdim=True).sqrt()
        delta[soft] = (self.projector(self.vectors_at(rows[soft])) * scale).to(hidden.dtype)
        return hidden + delta

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- persistence -------------------------------------------------------------

    def save(
        self,
        folder: str | Path,
        adapter_model: nn.Module | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Path:
        """Manifest, vectors, projector (and the peft adapter of `adapter_model`), plus the
        text files `extra` (name -> text: a card), written whole or not at all
        (ranking.folders): a server never loads a folder that mixes two versions."""
        folder = Path(folder)
        # CPU tensors: a model trained on a GPU loads on a machine without one
        state = {k: v.detach().cpu() for k, v in self.projector.state_dict().items()}
        manifest = {"config": asdict(self.config), "items": self.item_ids}
        with written_whole(folder, MANIFEST) as tmp:
            np.save(tmp / "vectors.npy", self.vectors.cpu().numpy().astype(np.float32))
            torch.save(state, tmp / "projector.pt")
            if adapter_model is not None and hasattr(adapter_model, "save_pretrained"):
                adapter_model.save_pretrained(tmp / "adapter")
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
            (tmp / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        return folder


def is_hybrid_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: str | Path) -> tuple[HybridConfig, list[str]]:
    path = Path(folder) / MANIFEST
    try:
        doc = json.loads(path.read_text("utf-8"))
        return HybridConfig(**doc["config"]), [str(i) for i in doc["items"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: not a hybrid model manifest ({exc})") from None


def load_hybrid(folder: str | Path, model: nn.Module, tokenizer: Any) -> Hybrid:
    """Install the saved hybrid parts of `folder` on the (already loaded) base model: the
    LoRA adapter merged into its weights, then the item tokens and projector."""
    folder = Path(folder)
    config, items = read_manifest(folder)
    adapter = folder / "adapter"
    if adapter.is_dir():
        from peft import PeftModel

        from ranking.backends.llama_step import keep_low_rank_parts

        peft_model = PeftModel.from_pretrained(model, adapter)
        keep = keep_low_rank_parts(peft_model)  # before merging: the base's 4-bit blocks
        model = peft_model.merge_and_unload()
        keep()
    vectors = np.load(folder / "vectors.npy")
    projector = Projector(config.vector_dim, model.config.hidden_size)
    projector.load_state_dict(
        torch.load(folder / "projector.pt", map_location="cpu", weights_only=True)
    )
    return Hybrid(model, tokenizer, items, vectors, config, projector)


def _decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    inner = getattr(model, "get_decoder", lambda: None)()
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ModelLoadError(f"{type(model).__name__}: no decoder layers to inject into")
    return layers


def _single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0])
