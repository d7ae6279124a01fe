"""The elimination policy of a causal LM over an `EliminationSequence`.

A step's distribution is the model's next-token distribution restricted to the labels of
the candidates still in play and renormalised over them (the incremental mode's
constrained decoding). `step_logprobs` computes every step of a given trajectory in one
teacher-forced forward pass; `sample_trajectories` and `greedy_order` decode step by step
with the KV cache. Score fusion is `ranking.fusion`'s, the served engine's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ranking.fusion import fusion_bias
from ranking.rl.sequence import EliminationSequence, step_positions

NEG_INF = float("-inf")


def _label_logits(
    model: torch.nn.Module, input_ids: list[int], positions: list[int], label_ids: Sequence[int]
) -> torch.Tensor:
    """Logits of the label tokens at `positions`: [len(positions), n_labels]. Only the
    needed positions go through the LM head (`logits_to_keep`)."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    keep = torch.tensor(positions, device=device)
    out = model(input_ids=ids, logits_to_keep=keep, use_cache=False)
    logits = out.logits[0]  # [len(positions), V]
    return logits[:, torch.tensor(list(label_ids), device=device)].float()


def mask_eliminated(
    logits: torch.Tensor, elim_order: Sequence[int], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Row t keeps only candidates not eliminated in steps < t; returns log-probs. `bias`
    [n] (score fusion, `ranking.fusion`) is added before renormalising over those
    candidates: log_softmax(lp + b) over the candidates in play equals log_softmax(logits +
    b), the served engine's fused step distribution."""
    if bias is not None:
        logits = logits + bias.to(logits.device, logits.dtype)
    n_steps, n = logits.shape
    mask = torch.zeros(n_steps, n, dtype=torch.bool, device=logits.device)
    for t in range(1, n_steps):
        mask[t:, elim_order[t - 1]] = True
    return torch.log_softmax(logits.masked_fill(mask, NEG_INF), dim=-1)


def step_logprobs(
    model: torch.nn.Module,
    seq: EliminationSequence,
    elim_order: Sequence[int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher-forced log pi_t(c) for every step t of `elim_order` and every candidate c
    ([len(elim_order), n]; -inf for candidates already out). One forward pass."""
    elim_order = list(elim_order)
    if not elim_order:
        return torch.zeros(0, len(seq.ids))
    # the last label's own token is not needed as input: its logits come from before it
    input_ids = seq.context(elim_order[:-1])
    logits = _label_logits(model, input_ids, step_positions(seq, len(elim_order)), seq.label_ids)
    return mask_eliminated(logits, elim_order, bias)


def batched_step_logprobs(
    model: torch.nn.Module,
    seq: EliminationSequence,
    orders: Sequence[Sequence[int]],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`step_logprobs` for G full trajectories of the same request in one batched pass
    (they have the same length): [G, T, n]."""
    orders = [list(o) for o in orders]
    device = next(model.parameters()).device
    n_steps = len(orders[0])
    ids = torch.tensor([seq.context(o[:-1]) for o in orders], device=device)
    keep = torch.tensor(step_positions(seq, n_steps), device=device)
    logits = model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
    logits = logits[:, :, torch.tensor(list(seq.label_ids), device=device)].float()
    return torch.stack([mask_eliminated(lg, o, bias) for lg, o in zip(logits, orders, strict=True)])


def taken_logprobs(step_lp: torch.Tensor, elim_order: Sequence[int]) -> torch.Tensor:
    """log pi_t(a_t) for each step: [T]."""
    idx = torch.tensor(list(elim_order), device=step_lp.device)
    return step_lp.gather(1, idx[:, None])[:, 0]


@torch.no_grad()
def _decode(
    model: torch.nn.Module,
    seq: EliminationSequence,
    n_traj: int,
    temperature: float,
    generator: torch.Generator | None,
    biases: Sequence[np.ndarray | None] | None = None,
) -> list[list[int]]:
    """Decode `n_traj` elimination orders of all n-1 steps (the survivor is implied).
    Greedy when temperature == 0. `biases[g]` [n] (`ranking.fusion.fusion_bias`) is added
    to row g's step log-probs, renormalised over the candidates in play: the served
    engine's fused step distribution. The prompt is prefilled once and its KV cache shared
    by all rows."""
    device = next(model.parameters()).device
    n = len(seq.ids)
    label_ids = torch.tensor(seq.label_ids, device=device)
    ids = torch.tensor([list(seq.prompt_ids)], device=device)
    logits, past = _label_step(model, ids, None, label_ids)
    if n_traj > 1:
        past.batch_repeat_interleave(n_traj)
    logits = logits.expand(n_traj, -1)
    bias = None
    if biases is not None and any(b is not None for b in biases):
        rows = [np.zeros(n) if b is None else np.asarray(b, dtype=np.float64) for b in biases]
        bias = torch.tensor(np.stack(rows), dtype=torch.float32, device=device)
    in_play = torch.ones(n_traj, n, dtype=torch.bool, device=device)
    orders: list[list[int]] = [[] for _ in range(n_traj)]
    sep = torch.tensor([list(seq.sep_ids)] * n_traj, device=device).long().reshape(n_traj, -1)
    for _ in range(n - 1):
        lp = torch.log_softmax(logits.float().masked_fill(~in_play, NEG_INF), dim=-1)
        if bias is not None:
            lp = torch.log_softmax(lp + bias, dim=-1)  # -inf (out of play) stays -inf
        if temperature > 0:
            probs = torch.softmax(lp / temperature, dim=-1)
            pick = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
        else:
            pick = lp.argmax(dim=-1)
        for g in range(n_traj):
            orders[g].append(int(pick[g]))
        in_play[torch.arange(n_traj, device=device), pick] = False
        step_in = torch.cat([label_ids[pick][:, None], sep], dim=1)
        logits, past = _label_step(model, step_in, past, label_ids)
    return orders


def _label_step(model: torch.nn.Module, ids: torch.Tensor, past, label_ids: torch.Tensor):
    """(logits of the label tokens after the last input token [B, n], the KV cache): only
    the label rows of the LM head are applied, as the serving backend does."""
    from ranking.backends.kv_cache import new_kv_cache
    from ranking.backends.transformers_backend import label_head

    if past is None:
        past = new_kv_cache(model.config)
    hidden = model.get_decoder()(input_ids=ids, past_key_values=past, use_cache=True)
    return label_head(model, hidden.last_hidden_state[:, -1], label_ids), past


def sample_trajectories(
    model: torch.nn.Module,
    seq: EliminationSequence,
    group: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    bias: np.ndarray | None = None,
) -> list[list[int]]:
    """`group` elimination orders sampled from the policy (temperature-scaled), fused with
    `bias` (`ranking.fusion.fusion_bias`) when given."""
    if temperature <= 0:
        raise ValueError("sampling needs temperature > 0")
    biases = None if bias is None else [bias] * group
    return _decode(model, seq, group, temperature, generator, biases)


def greedy_orders(
    model: torch.nn.Module,
    seq: EliminationSequence,
    scores: Sequence[float | None] | None = None,
    alphas: Sequence[float] = (0.0,),
) -> list[list[str]]:
    """The greedy incremental ranking (ids, best first) for each fusion weight in `alphas`
    (0 = the ranker alone), sharing one prefill of the prompt."""
    biases = [fusion_bias(scores, a) if scores is not None else None for a in alphas]
    elims = _decode(model, seq, len(alphas), 0.0, None, biases)
    out = []
    for elim in elims:
        survivor = next(i for i in range(len(seq.ids)) if i not in set(elim))
        out.append([seq.ids[i] for i in [survivor, *reversed(elim)]])
    return out


def greedy_order(
    model: torch.nn.Module,
    seq: EliminationSequence,
    scores: Sequence[float | None] | None = None,
    alpha: float = 0.0,
) -> list[str]:
    """The ranking (ids best first) the greedy incremental ranker gives, optionally fused
    with retrieval scores."""
    return greedy_orders(model, seq, scores, (alpha,))[0]
