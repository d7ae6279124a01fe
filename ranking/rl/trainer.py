"""The training loop: AdamW over teacher-forced incremental trajectories.

Algorithms (`TrainConfig.algo`):

* `expected` — the exact expected-step-reward loss, teacher-forced along a random
  elimination order of the negatives (the ground truth survives), no sampling.
* `distill`  — dense supervision: cross-entropy toward a teacher elimination order
  (reverse retrieval order, ground truth last), optionally plus `expected_weight` x the
  expected loss.
* `grpo`     — a group of sampled trajectories per episode, step rewards, group-normalised
  process advantages, clipped ratio, KL to the frozen initial model.
* `logged`   — importance-weighted (clipped) REINFORCE on logged rankings with propensities.

Every step is a pure function of (seed, step), so a run interrupted and resumed from its
last checkpoint ends with exactly the weights of an uninterrupted run. Checkpoints are
written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ranking.folders import readable, written_whole
from ranking.fusion import fusion_bias
from ranking.metrics import reciprocal_rank
from ranking.rewards import iranker_trajectory_rewards
from ranking.rl.episodes import Episode, shuffled_negatives
from ranking.rl.losses import (
    distill_loss,
    expected_reward_loss,
    grpo_loss,
    logged_policy_loss,
    process_advantages,
)
from ranking.rl.policy import (
    batched_step_logprobs,
    greedy_order,
    sample_trajectories,
    step_logprobs,
    taken_logprobs,
)
from ranking.rl.sequence import EliminationSequence, build_sequence

ALGOS = ("expected", "distill", "grpo", "logged")
CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    algo: str = "expected"
    steps: int = 100  # optimizer updates
    batch_size: int = 4  # episodes per update
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    # GRPO
    group_size: int = 4
    temperature: float = 1.0
    clip_eps: float = 0.2
    kl_beta: float = 0.04
    # distillation
    expected_weight: float = 0.0
    # logged (off-policy)
    is_clip: float = 10.0
    # bookkeeping
    eval_every: int = 10  # 0: no in-loop validation
    val_limit: int | None = None  # in-loop validation on the first N validation episodes
    checkpoint_every: int = 10
    seed: int = 0
    fusion_alpha: float = 0.0  # also report validation MRR fused with retrieval scores
    # train the fused policy itself (steps = LM log-probs + fusion bias, renormalised): the
    # LM learns a correction to the retrieval order instead of re-learning it
    train_fused: bool = False
    # parameter-efficient / precision
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    train_layers: int | None = None  # full fine-tune of only the top N decoder layers
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; use one of {list(ALGOS)}")
        if self.steps < 0 or self.batch_size < 1 or (self.group_size < 2 and self.algo == "grpo"):
            raise ValueError("steps must be >= 0, batch_size >= 1, group_size >= 2 for grpo")
        if self.train_fused and self.fusion_alpha <= 0:
            raise ValueError("train_fused needs fusion_alpha > 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError("precision must be auto, fp32 or bf16")


@dataclass
class TrainState:
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def linear_warmup(
    optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """lr x (step + 1) / steps for the first `steps` updates, then lr (torch's LinearLR;
    steps 0: lr from the start)."""
    from torch.optim.lr_scheduler import LinearLR

    if steps <= 1:
        return LinearLR(optimizer, start_factor=1.0, end_factor=1.0, total_iters=1)
    return LinearLR(optimizer, start_factor=1 / steps, end_factor=1.0, total_iters=steps - 1)


def apply_lora(model: torch.nn.Module, r: int, alpha: int) -> torch.nn.Module:
    """Wrap a causal LM with LoRA adapters on the attention and MLP projections (peft)."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def freeze_below(model: torch.nn.Module, n_top: int) -> None:
    """Train only the last `n_top` decoder layers and the final norm: the frozen bottom
    needs no backward pass, which makes a CPU step several times cheaper."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError("train_layers needs a decoder with model.layers (Llama-style)")
    keep = {id(p) for layer in list(layers)[-n_top:] for p in layer.parameters()}
    norm = getattr(model.model, "norm", None)
    if norm is not None:
        keep |= {id(p) for p in norm.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


class Trainer:
    """Fine-tunes `model` (a Hugging Face causal LM) on `train` episodes, validating on
    `val`. `out_dir` receives `log.jsonl`, the checkpoint and (via `export`) the model."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        train: Sequence[Episode],
        val: Sequence[Episode],
        config: TrainConfig,
        out_dir: Path,
        log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not train:
            raise ValueError("no training episodes")
        self.config = config
        self.tokenizer = tokenizer
        self.train_eps = list(train)
        self.val_eps = list(val)
        self.out_dir = Path(out_dir)
        self.log_fn = log
        self.device = next(model.parameters()).device
        self.ref_model = self._frozen_reference(model) if config.algo == "grpo" else None
        if config.train_layers:
            freeze_below(model, config.train_layers)
        self.model = apply_lora(model, config.lora_r, config.lora_alpha) if config.lora else model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = linear_warmup(self.optimizer, config.warmup_steps)
        self.state = TrainState()
        self._seqs: dict[int, EliminationSequence] = {}

    # -- setup ------------------------------------------------------------------------
    def _frozen_reference(self, model: torch.nn.Module) -> torch.nn.Module | None:
        if self.config.lora:
            return None  # the reference is the base model with adapters disabled
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _autocast(self):
        use_bf16 = self.config.precision == "bf16" or (
            self.config.precision == "auto" and self.device.type == "cuda"
        )
        if not use_bf16:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def sequence(self, ep: Episode, key: int) -> EliminationSequence:
        if key not in self._seqs:
            self._seqs[key] = build_sequence(ep.request, self.tokenizer)
        return self._seqs[key]

    def _batch(self, step: int) -> list[int]:
        """Episode indices of `step`: consecutive slices of seeded per-epoch permutations."""
        n, b = len(self.train_eps), self.config.batch_size
        out = []
        for k in range(step * b, (step + 1) * b):
            epoch, pos = divmod(k, n)
            perm = list(range(n))
            random.Random(f"{self.config.seed}:epoch:{epoch}").shuffle(perm)
            out.append(perm[pos])
        return out

    # -- one episode's loss -------------------------------------------------------------
    def _episode_loss(self, idx: int, rng: random.Random, gen: torch.Generator) -> dict[str, Any]:
        ep = self.train_eps[idx]
        seq = self.sequence(ep, idx)
        bias = self.train_bias(ep)
        algo = self.config.algo
        if algo == "expected":
            order = shuffled_negatives(ep, rng)
            lp = step_logprobs(self.model, seq, order, bias)
            loss = expected_reward_loss(lp, ep.gt_index)
            return {"loss": loss, "reward": 1.0 - float(loss.detach())}
        if algo == "distill":
            if ep.teacher_order is None:
                raise ValueError("algo 'distill' needs episodes with a teacher order")
            ids = ep.request.ids
            target = [ids.index(c) for c in ep.teacher_order][:-1]
            lp = step_logprobs(self.model, seq, target, bias)
            exp = expected_reward_loss(lp, ep.gt_index)
            loss = distill_loss(lp, target) + self.config.expected_weight * exp
            return {"loss": loss, "reward": 1.0 - float(exp.detach())}
        if algo == "logged":
            return self._logged_loss(ep, seq)
        return self._grpo_loss(ep, seq, gen)

    def train_bias(self, ep: Episode) -> torch.Tensor | None:
        """The fusion bias of `ep`'s candidates when training the fused policy, else None."""
        if not self.config.train_fused:
            return None
        bias = fusion_bias([c.score for c in ep.request.candidates], self.config.fusion_alpha)
        return None if bias is None else torch.tensor(bias, dtype=torch.float32)

    def _grpo_loss(self, ep: Episode, seq: EliminationSequence, gen: torch.Generator):
        cfg = self.config
        bias = self.train_bias(ep)
        was_training = self.model.training
        self.model.eval()
        orders = sample_trajectories(
            self.model,
            seq,
            cfg.group_size,
            cfg.temperature,
            gen,
            None if bias is None else bias.numpy(),
        )
        self.model.train(was_training)
        ids = ep.request.ids
        rewards = torch.tensor(
            [iranker_trajectory_rewards([ids[i] for i in o], ids, ep.ground_truth) for o in orders]
        )
        adv = process_advantages(rewards).to(self.device)
        new_lp = batched_step_logprobs(self.model, seq, orders, bias)
        new_taken = torch.stack(
            [taken_logprobs(lp, o) for lp, o in zip(new_lp, orders, strict=True)]
        )
        with torch.no_grad():
            ref_model = self.ref_model or self.model
            ctx = self.model.disable_adapter() if self.ref_model is None else nullcontext()
            with ctx:
                ref_lp = batched_step_logprobs(ref_model, seq, orders, bias)
            ref_taken = torch.stack(
                [taken_logprobs(lp, o) for lp, o in zip(ref_lp, orders, strict=True)]
            )
        # one update per sampled batch: pi_old is the current policy (ratio 1 at the start)
        loss, kl = grpo_loss(
            new_taken, new_taken.detach(), ref_taken, adv, cfg.clip_eps, cfg.kl_beta
        )
        return {"loss": loss, "reward": float(rewards.sum(1).mean()), "kl": float(kl)}

    def _logged_loss(self, ep: Episode, seq: EliminationSequence):
        if ep.logged_order is None or ep.logged_log_propensity is None:
            raise ValueError("algo 'logged' needs episodes with a logged order and propensity")
        ids = ep.request.ids
        elim = [ids.index(c) for c in reversed(ep.logged_order)][:-1]
        lp = step_logprobs(self.model, seq, elim, self.train_bias(ep))
        rewards = torch.tensor(
            iranker_trajectory_rewards([ids[i] for i in elim], ids, ep.ground_truth)
        )
        baseline = float(rewards.mean())
        loss = logged_policy_loss(
            taken_logprobs(lp, elim),
            rewards.to(self.device),
            ep.logged_log_propensity,
            self.config.is_clip,
            baseline,
        )
        return {"loss": loss, "reward": float(rewards.sum())}

    # -- the loop -----------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:step:{step}")
        gen = torch.Generator().manual_seed(hash((cfg.seed, step)) % 2**31)
        lr = self.scheduler.get_last_lr()[0]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        rewards, losses, kls = [], [], []
        for idx in self._batch(step):
            with self._autocast():
                out = self._episode_loss(idx, rng, gen)
            (out["loss"] / cfg.batch_size).backward()
            losses.append(float(out["loss"].detach()))
            rewards.append(out["reward"])
            if "kl" in out:
                kls.append(out["kl"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        rec: dict[str, Any] = {
            "step": step + 1,
            "loss": sum(losses) / len(losses),
            "reward": sum(rewards) / len(rewards),
            "grad_norm": grad_norm,
            "lr": lr,
        }
        if kls:
            rec["kl"] = sum(kls) / len(kls)
        return rec

    @torch.no_grad()
    def validate(self, limit: int | None = None) -> dict[str, float]:
        """Greedy incremental ranking of the validation episodes: MRR (x100) and the mean
        expected first-step reward; with `fusion_alpha` also the MRR fused with scores."""
        self.model.eval()
        eps = self.val_eps[:limit] if limit else self.val_eps
        if not eps:
            return {}
        rr, rr_fused, first = [], [], []
        for k, ep in enumerate(eps):
            seq = self.sequence(ep, -1 - k)
            with self._autocast():
                rr.append(reciprocal_rank(greedy_order(self.model, seq), ep.ground_truth))
                lp0 = step_logprobs(self.model, seq, [0])
            first.append(1.0 - float(lp0[0, ep.gt_index].exp()))
            if self.config.fusion_alpha:
                scores = [c.score for c in ep.request.candidates]
                with self._autocast():
                    order = greedy_order(self.model, seq, scores, self.config.fusion_alpha)
                rr_fused.append(reciprocal_rank(order, ep.ground_truth))
        out = {"val_mrr": 100 * sum(rr) / len(rr), "val_reward": sum(first) / len(first)}
        if rr_fused:
            out["val_mrr_fused"] = 100 * sum(rr_fused) / len(rr_fused)
        return out

    def _emit(self, rec: dict[str, Any]) -> None:
        self.state.history.append(rec)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / "log.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.log_fn:
            self.log_fn(rec)

    def run(self, resume: bool = True) -> TrainState:
        """Train up to `config.steps` updates, resuming from the last checkpoint in
        `out_dir` when there is one; validates before the first and every `eval_every`."""
        cfg = self.config
        if resume and checkpoint_path(self.out_dir) is not None:
            self.load_checkpoint()
        validating = bool(self.val_eps) and cfg.eval_every > 0
        if self.state.step == 0 and validating:
            self._emit({"step": 0, **self.validate(cfg.val_limit), "time": time.time()})
        while self.state.step < cfg.steps:
            t0 = time.time()
            rec = self.train_step(self.state.step)
            self.state.step += 1
            rec["seconds"] = time.time() - t0
            last = self.state.step == cfg.steps
            if validating and (self.state.step % cfg.eval_every == 0 or last):
                rec.update(self.validate(cfg.val_limit))
            rec["time"] = time.time()
            self._emit(rec)
            if self.state.step % cfg.checkpoint_every == 0 or last:
                self.save_checkpoint()
        return self.state

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Weights (trainable tensors), optimizer and state, written whole or not at all
        (ranking.folders), so a crash never leaves a half-written checkpoint."""
        final = self.out_dir / CHECKPOINT
        trainable = {
            k: v.detach().cpu() for k, v in self.model.named_parameters() if v.requires_grad
        }
        with written_whole(final, "state.json") as tmp:
            torch.save(trainable, tmp / "weights.pt")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(
                json.dumps(
                    {
                        "step": self.state.step,
                        "history": self.state.history,
                        "config": asdict(self.config),
                    }
                )
            )
        return final

    def load_checkpoint(self) -> None:
        path = checkpoint_path(self.out_dir)
        if path is None:
            raise FileNotFoundError(f"no checkpoint under {self.out_dir}")
        weights = torch.load(path / "weights.pt", map_location=self.device)
        missing = self.model.load_state_dict(weights, strict=False)
        if missing.unexpected_keys:
            raise ValueError(
                f"checkpoint {path} does not fit this model: {missing.unexpected_keys[:3]}"
            )
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=self.device))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        saved = json.loads((path / "state.json").read_text())
        self.state = TrainState(step=saved["step"], history=saved["history"])

    def export(self, path: Path) -> Path:
        """Save the tuned model as a plain Hugging Face directory (LoRA merged), loadable
        by the ranking engine like any model directory."""
        model = self.model
        if self.config.lora:
            model = copy.deepcopy(self.model).merge_and_unload()
        path = Path(path)
        with written_whole(path, "config.json") as tmp:
            model.save_pretrained(tmp)
            if hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(tmp)
        return path


def checkpoint_path(out_dir: Path) -> Path | None:
    """The usable checkpoint: the final one, or the previous one when a crash happened
    between the two renames of `save_checkpoint` (ranking.folders.readable)."""
    path = readable(Path(out_dir) / CHECKPOINT)
    return path if path is not None and (path / "state.json").exists() else None
