"""Training a hybrid ranker (ranking.hybrid) at scale on a CPU: supervised, then RL.

Stage 1, *supervised listwise*: each episode is teacher-forced along a teacher's
elimination order (the ground truth last, the others in the reverse of a classical
ranker's order, e.g. the LightFM + transitions ensemble); the loss is the cross-entropy
of every step toward the teacher's choice, -mean_t log pi_t(teacher_t) (LlamaRec-style
dense supervision of the exact served steps).

Stage 2, *expected-step RL*: the IRanker step reward is +1 for eliminating a candidate
that is not the ground truth and 0 for the ground truth, so E[r_t] = 1 - pi_t(gt); the
loss mean_t pi_t(gt) along the teacher-forced trajectory is that expectation's exact
negative (no sampling), plus `ce_weight` x the stage-1 loss to stay on the teacher path.

Teacher forcing shows the model only states the served policy rarely reaches: the truth
always survives to the last step, and what was eliminated before is always the teacher's
choice. `trajectory="served"` trains on the served policy's own states instead (DAgger,
Ross, Gordon & Bagnell 2011, arXiv 1011.0686): each batch is first ranked as the engine
serves the weights being trained (greedy, fused), the steps are teacher-forced along that
elimination order (the truth wherever it fell; once it is out the expected-step term is 0),
and each step's cross-entropy target is the teacher's choice among the candidates still in
play (the teacher's order, truth last, restricted to them).

Speed: the base model is frozen, LoRA adapters sit on the layers from `inject_layer` up
and the projector feeds that layer, so a step is one forward pass of a batch of short
prompts (soft tokens instead of titles) plus the backward of the top layers only. Every
batch is a pure function of (seed, step) and checkpoints hold the optimizer, the
scheduler and the step, so an interrupted run resumed from its last checkpoint follows the
same path. Checkpoints are written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ranking.folders import readable, written_whole
from ranking.fusion import fusion_bias
from ranking.hybrid import Hybrid
from ranking.hybrid_split import HybridSplit
from ranking.modes.incremental import LabelSequence, build_sequence
from ranking.rl.episodes import Episode
from ranking.rl.losses import distill_loss, expected_reward_loss, rr_weighted_loss
from ranking.rl.policy import mask_eliminated
from ranking.rl.sequence import TokenizerOnly, step_positions

CHECKPOINT = "checkpoint"
# settings a resumed run may change without leaving the path it was on
TRAJECTORIES = ("teacher", "served")
# stage 2's reward term: the IRanker step reward, every step alike, or weighted by what each
# step is worth to the reciprocal rank (ranking.rl.losses)
REWARDS = {"step": expected_reward_loss, "rr": rr_weighted_loss}
_HARMLESS = {"eval_every", "checkpoint_every", "val_episodes", "validate_served"}


class CheckpointMismatch(ValueError):
    """A checkpoint from a run with another configuration."""


@dataclass
class SupervisedConfig:
    supervised_steps: int = 1000  # batches of stage 1
    rl_steps: int = 250  # batches of stage 2
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 50
    lora_r: int = 16
    lora_alpha: int = 32
    ce_weight: float = 0.5  # stage 2: weight of the stage-1 loss kept
    eval_every: int = 200
    checkpoint_every: int = 50
    val_episodes: int = 200
    seed: int = 7
    # batch `step` is batch `batch_offset + step` of the seed's stream: a run initialised from
    # an exported model (`init_from`) that saw batches 0..N-1 starts at N and sees new ones
    batch_offset: int = 0
    split: bool = True  # memoise the frozen lower layers (ranking.hybrid_split; exact)
    # > 0: train the fused policy (ranking.fusion): every step's logits get -fusion_alpha x
    # z(candidate score) before the losses, the bias the served engine adds at that weight
    fusion_alpha: float = 0.0
    # validation also ranks each episode as served (greedy elimination, fused at
    # fusion_alpha): `val_mrr_served`, the number `recsys eval` would give; the first-step
    # MRR alone can rise while the served ranking falls (docs/training.md)
    validate_served: bool = True
    # the states trained on: "teacher" (forced along the teacher's order) or "served" (along
    # the order the engine serves the weights being trained; module doc)
    trajectory: str = "teacher"
    reward: str = "step"  # one of REWARDS

    def __post_init__(self) -> None:
        if self.trajectory not in TRAJECTORIES:
            raise ValueError(
                f"trajectory {self.trajectory!r}: use one of {', '.join(TRAJECTORIES)}"
            )
        if self.reward not in REWARDS:
            raise ValueError(f"reward {self.reward!r}: use one of {', '.join(REWARDS)}")

    @property
    def total_steps(self) -> int:
        return self.supervised_steps + self.rl_steps


@dataclass(frozen=True)
class Prepared:
    """One episode laid out as tokens: the sequence, the elimination order it is forced
    along, the truth, the fusion bias of its candidates (None: the LM alone) and each step's
    cross-entropy target (None: the order itself)."""

    seq: LabelSequence
    order: tuple[int, ...]  # candidate indices, first eliminated first (teacher: truth last)
    gt: int
    bias: torch.Tensor | None = None  # [n], in sequence order
    targets: tuple[int, ...] | None = None  # [n - 1]

    def step_targets(self) -> tuple[int, ...]:
        return self.order[:-1] if self.targets is None else self.targets


def on_path(p: Prepared, path: Sequence[int]) -> Prepared:
    """`p` forced along the elimination order `path` instead of its teacher's, each step's
    target the teacher's first choice among the candidates still in play (module doc)."""
    if sorted(path) != sorted(p.order):
        raise ValueError(f"path {list(path)} is not a permutation of the episode's candidates")
    rank = {c: i for i, c in enumerate(p.order)}
    left, targets = set(p.order), []
    for c in path[:-1]:
        targets.append(min(left, key=rank.__getitem__))
        left.discard(c)
    return replace(p, order=tuple(path), targets=tuple(targets))


class StyledTokenizer(TokenizerOnly):
    """Prompt building for a model in training, in the hybrid model's own prompt style."""

    def __init__(self, tokenizer: Any, style: Any) -> None:
        super().__init__(tokenizer)
        self.prompt_style = style


def prepare(ep: Episode, builder: StyledTokenizer, fusion_alpha: float = 0.0) -> Prepared:
    """`fusion_alpha` > 0: the candidates' scores become the fusion bias (a candidate
    without a score is a ValueError: there would be nothing to train the fused policy on)."""
    seq = build_sequence(ep.request, builder)
    index = {cid: i for i, cid in enumerate(seq.ids)}
    gt = index[ep.ground_truth]
    if ep.teacher_order:
        order = [index[c] for c in ep.teacher_order if c != ep.ground_truth]
    else:
        order = [i for i in range(len(seq.ids)) if i != gt]
    return Prepared(seq, (*order, gt), gt, _bias(ep, seq.ids, fusion_alpha))


def _bias(ep: Episode, ids: Sequence[str], alpha: float) -> torch.Tensor | None:
    if not alpha:
        return None
    score = {c.id: c.score for c in ep.request.candidates}
    bias = fusion_bias([score[c] for c in ids], alpha)
    if bias is None:
        raise ValueError(
            f"episode {ep.request.request_id}: fusion_alpha {alpha} needs a score on every "
            "candidate"
        )
    return torch.tensor(bias, dtype=torch.float32)


def batch_step_logprobs(
    model: torch.nn.Module,
    hybrid: Hybrid,
    batch: Sequence[Prepared],
    split: HybridSplit | None = None,
) -> list[torch.Tensor]:
    """Teacher-forced step log-probs of each episode ([n-1, n] each; -inf for candidates
    already out), all episodes in one right-padded forward pass — of the layers from
    `inject_layer` up only, on the memoised lower stream, with a `split` of the model."""
    device = next(model.parameters()).device
    inputs = [p.seq.context(list(p.order[:-2])) for p in batch]  # the last step needs no input
    width = max(len(x) for x in inputs)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, x in enumerate(inputs):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    ids, mask = ids.to(device), mask.to(device)
    if split is not None:
        embeds = split.inputs(inputs, [len(x) for x in inputs], ids)
        hidden = split.upper.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, use_cache=False
        ).last_hidden_state
    else:
        hidden = model.get_decoder()(
            input_ids=ids, attention_mask=mask, use_cache=False
        ).last_hidden_state
    head = model.get_output_embeddings()
    out = []
    for i, p in enumerate(batch):
        pos = torch.tensor(step_positions(p.seq, len(p.order) - 1), device=device)
        labels = torch.tensor(p.seq.label_ids, device=device)
        logits = hybrid.label_logits(head, hidden[i, pos], labels)
        out.append(mask_eliminated(logits.float(), p.order, p.bias))
    return out


@torch.no_grad()
def first_step_orders(
    model: torch.nn.Module,
    hybrid: Hybrid,
    batch: Sequence[Prepared],
    split: HybridSplit | None = None,
) -> list[list[int]]:
    """A cheap validation ranking: candidates by their first-step elimination probability,
    least likely to be eliminated first (one forward pass, no decoding)."""
    out = []
    for lp, p in zip(batch_step_logprobs(model, hybrid, batch, split), batch, strict=True):
        out.append(sorted(range(len(p.seq.ids)), key=lambda c: float(lp[0, c])))
    return out


class SupervisedTrainer:
    """Stage 1 then stage 2 (module doc) over prepared episodes, with exact resume."""

    def __init__(
        self,
        model: torch.nn.Module,
        hybrid: Hybrid,
        train: Sequence[Episode],
        val: Sequence[Episode],
        config: SupervisedConfig,
        out_dir: Path,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        from peft import LoraConfig, get_peft_model

        self.hybrid, self.train, self.val, self.cfg = hybrid, list(train), list(val), config
        self.builder = StyledTokenizer(hybrid.tokenizer, hybrid.style)
        self._prepared: dict[int, Prepared] = {}  # episodes are laid out when first drawn
        self.out_dir, self.progress = Path(out_dir), progress
        for p in model.parameters():
            p.requires_grad_(False)
        n_layers = model.config.num_hidden_layers
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"],
            layers_to_transform=list(range(hybrid.config.inject_layer, n_layers)),
        )  # fmt: skip
        self.model = get_peft_model(model, lora)
        # the frozen layers below inject_layer see only placeholders: computed once per
        # episode layout (ranking.hybrid_split), the forward runs the adapted layers only
        base = self.model.get_base_model()
        self.split = HybridSplit.build(base, hybrid) if config.split else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.params += list(hybrid.projector.parameters())
        self.step = 0
        self.reconfigure(config)

    def reconfigure(self, config: SupervisedConfig) -> None:
        """A new plan (e.g. a length that fits a time budget) for a run that has not
        started: a fresh optimizer and learning-rate schedule for `config`."""
        if self.step:
            raise ValueError(f"the run is at step {self.step}: only a new run takes a new plan")
        self.cfg = config
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)
        self.scheduler = _schedule(self.optimizer, config)

    @contextmanager
    def trial(self) -> Iterator[None]:
        """Steps taken inside leave no trace: the trainable weights, the optimizer, the
        schedule and the step are put back on exit (a probe that measures the step rate on
        the real trainer instead of building a second one)."""
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()
                   if "lora_" in k}  # fmt: skip
        projector = copy.deepcopy(self.hybrid.projector.state_dict())
        optimizer = copy.deepcopy(self.optimizer.state_dict())
        scheduler, step = copy.deepcopy(self.scheduler.state_dict()), self.step
        try:
            yield
        finally:
            self.model.load_state_dict(weights, strict=False)
            self.hybrid.projector.load_state_dict(projector)
            self.optimizer.load_state_dict(optimizer)
            self.scheduler.load_state_dict(scheduler)
            self.step = step

    def drawn(self, step: int) -> list[int]:
        """The training episodes of batch `step`: a pure function of (seed, offset, step)."""
        rng = random.Random(self.cfg.seed * 1_000_003 + self.cfg.batch_offset + step)
        return [rng.randrange(len(self.train)) for _ in range(self.cfg.batch_size)]

    def _batch(self, step: int) -> list[Prepared]:
        drawn = self.drawn(step)
        batch = [self._prepare(i) for i in drawn]
        if self.cfg.trajectory == "served":
            paths = self.served_paths([self.train[i] for i in drawn], batch)
            batch = [on_path(p, path) for p, path in zip(batch, paths, strict=True)]
        return batch

    def served_paths(
        self, episodes: Sequence[Episode], batch: Sequence[Prepared]
    ) -> list[list[int]]:
        """Each episode's elimination order as the engine serves the current weights (the
        reverse of its ranking), in the indices of its prepared sequence."""
        out = []
        for result, p in zip(self._served(episodes), batch, strict=True):
            index = {cid: i for i, cid in enumerate(p.seq.ids)}
            out.append([index[c] for c in reversed(result.order)])
        return out

    def _prepare(self, i: int) -> Prepared:
        if i not in self._prepared:
            self._prepared[i] = prepare(self.train[i], self.builder, self.cfg.fusion_alpha)
        return self._prepared[i]

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        t0 = time.perf_counter()  # the served trajectory's ranking of the batch counts too
        batch = self._batch(step)
        rl = step >= self.cfg.supervised_steps
        lps = batch_step_logprobs(self.model, self.hybrid, batch, self.split)
        ce = torch.stack(
            [distill_loss(lp, p.step_targets()) for lp, p in zip(lps, batch, strict=True)]
        )
        exp = torch.stack(
            [REWARDS[self.cfg.reward](lp, p.gt) for lp, p in zip(lps, batch, strict=True)]
        )
        loss = (exp.mean() + self.cfg.ce_weight * ce.mean()) if rl else ce.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        wall = time.perf_counter() - t0
        return {
            "step": step,
            "stage": "rl" if rl else "supervised",
            "loss": float(loss.detach()),
            "ce": float(ce.detach().mean()),
            "p_gt": float(exp.detach().mean()),
            "lr": self.scheduler.get_last_lr()[0],
            "episodes_per_s": len(batch) / wall,
            "batch": len(batch),
        }

    def validate(self) -> dict[str, float]:
        self.model.eval()
        alpha = self.cfg.fusion_alpha
        val = [prepare(e, self.builder, alpha) for e in self.val[: self.cfg.val_episodes]]
        rr = []
        for lo in range(0, len(val), 16):
            chunk = val[lo : lo + 16]
            orders = first_step_orders(self.model, self.hybrid, chunk, self.split)
            for order, p in zip(orders, chunk, strict=True):
                rr.append(1.0 / (order.index(p.gt) + 1))
        out = {"val_mrr_first_step": sum(rr) / max(1, len(rr)), "val_n": len(rr)}
        if self.cfg.validate_served:
            out["val_mrr_served"] = self.served_mrr()
        return out

    def served_mrr(self) -> float:
        """MRR of the validation episodes ranked as the engine serves the model being trained
        (`_served`): the same weights, through the serving code path, not a proxy."""
        from ranking.metrics import reciprocal_rank

        episodes = self.val[: self.cfg.val_episodes]
        results = self._served(episodes)
        rr = [
            reciprocal_rank(r.order, e.ground_truth) for r, e in zip(results, episodes, strict=True)
        ]
        return sum(rr) / max(1, len(rr))

    def _served(self, episodes: Sequence[Episode]) -> list[Any]:
        """The engine's rankings of `episodes` with the weights being trained (incremental
        mode, greedy, fused at `fusion_alpha` where the candidates carry scores)."""
        from ranking.backends.transformers_backend import TransformersBackend
        from ranking.engine import Ranker

        device = str(next(self.model.parameters()).device)
        # a fresh backend each time: no KV cache outlives the weights it was computed with
        backend = TransformersBackend(self.model.get_base_model(), self.hybrid.tokenizer,
                                      "in-training", device=device)  # fmt: skip
        backend.attach_hybrid(self.hybrid, split=self.split)
        ranker = Ranker(backend, batch_size=16, fusion_alpha=self.cfg.fusion_alpha)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return ranker.rank_batch([replace(e.request, mode="incremental")
                                          for e in episodes])  # fmt: skip
        finally:
            self.model.train(was_training)

    def run(
        self, resume: bool = True, stop_at: int | None = None, deadline: float | None = None
    ) -> int:
        """Train to the end of the schedule, or until step `stop_at` or the
        `time.monotonic()` `deadline` (then a checkpoint the run can resume from)."""
        if not self.train:
            raise ValueError("no training episodes")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint()
        log = (self.out_dir / "log.jsonl").open("a", encoding="utf-8")
        end = self.cfg.total_steps if stop_at is None else min(stop_at, self.cfg.total_steps)
        while self.step < end and (deadline is None or time.monotonic() < deadline):
            rec = self.train_step(self.step)
            self.step += 1
            if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.total_steps:
                rec.update(self.validate())
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if self.progress is not None:
                self.progress(rec)
            if self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
        log.close()
        self.save_checkpoint()
        return self.step

    # -- checkpoints -------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """The trainable state, written whole or not at all (ranking.folders): a crash
        leaves the previous checkpoint."""
        final = self.out_dir / CHECKPOINT
        state = {
            "step": self.step,
            "trainable": {k: v for k, v in self.model.state_dict().items() if "lora_" in k},
            "projector": self.hybrid.projector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": asdict(self.cfg),
        }
        with written_whole(final, "state.pt") as tmp:
            torch.save(state, tmp / "state.pt")
        return final

    def _check_same_run(self, saved: dict[str, Any], path: Path) -> None:
        """A checkpoint resumes only the run that wrote it: with another schedule its
        optimizer and scheduler state would silently replace this run's (a budgeted run
        resuming a probe's checkpoint kept the probe's learning-rate schedule)."""
        mine = asdict(self.cfg)
        differ = {k: (saved[k], mine[k]) for k in saved.keys() & mine.keys() - _HARMLESS
                  if saved[k] != mine[k]}  # fmt: skip
        if differ:
            said = ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in sorted(differ.items()))
            raise CheckpointMismatch(
                f"{path} was written by a run with another configuration ({said}); resume it "
                "with the same settings, or start over in a new work folder"
            )

    def load_checkpoint(self, check: bool = True) -> bool:
        path = _state_file(self.out_dir)
        if path is None:
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if check:
            self._check_same_run(dict(state.get("config", {})), path)
        self.model.load_state_dict(state["trainable"], strict=False)
        self.hybrid.projector.load_state_dict(state["projector"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        return True

    def init_from(self, folder: Path) -> None:
        """Start from an exported model folder's adapter and projector (a new run whose
        schedule starts at step 0, e.g. the RL stage on top of a supervised model)."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "projector.pt").is_file():
            raise FileNotFoundError(f"{folder}: not an exported hybrid model folder")
        adapter = folder / "adapter" / "adapter_model.safetensors"
        if adapter.is_file():  # a folder saved without one serves the base's layers as they are
            set_peft_model_state_dict(self.model, load_file(str(adapter)))
        projector = torch.load(folder / "projector.pt", map_location="cpu", weights_only=True)
        self.hybrid.projector.load_state_dict(widened(projector, self.hybrid.projector))

    def export(self, folder: Path, extra: Mapping[str, str] | None = None) -> Path:
        """The hybrid model folder (manifest, vectors, projector, LoRA adapter, and the text
        files `extra`: a card), written whole or not at all."""
        return self.hybrid.save(folder, adapter_model=self.model, extra=extra)


def widened(saved: dict[str, torch.Tensor], projector: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A projector's saved weights fitted to a projector with more input dimensions (item
    vectors with extra columns appended, e.g. lightfm -> lightfm+text): the new inputs get
    zero weights, so the widened model starts out ranking exactly as the saved one."""
    target = projector.state_dict()
    out = {}
    for name, value in saved.items():
        want = target[name].shape if name in target else value.shape
        if value.shape != want:
            if value.dim() != 2 or value.shape[0] != want[0] or value.shape[1] > want[1]:
                raise ValueError(
                    f"projector {name}: saved shape {tuple(value.shape)} does not fit "
                    f"{tuple(want)}; --init needs the same base and the same or fewer vector "
                    "dimensions"
                )
            value = torch.cat([value, value.new_zeros(want[0], want[1] - value.shape[1])], 1)
        out[name] = value
    return out


def _schedule(optimizer: torch.optim.Optimizer, cfg: SupervisedConfig):
    """Linear warm-up, then cosine decay to 10% (torch's schedulers, chained)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    warm = max(1, min(cfg.warmup_steps, cfg.total_steps - 1))
    rest = max(1, cfg.total_steps - warm)
    return SequentialLR(
        optimizer,
        [LinearLR(optimizer, start_factor=0.05, total_iters=warm),
         CosineAnnealingLR(optimizer, T_max=rest, eta_min=cfg.lr * 0.1)],
        milestones=[warm],
    )  # fmt: skip


def _state_file(out_dir: Path) -> Path | None:
    """The checkpoint's state file: the last one written, or the previous one when a crash
    came between the two renames of `save_checkpoint` (ranking.folders.readable)."""
    folder = readable(Path(out_dir) / CHECKPOINT)
    return None if folder is None or not (folder / "state.pt").exists() else folder / "state.pt"


def checkpoint_exists(out_dir: Path) -> bool:
    return _state_file(out_dir) is not None


def saved_config(out_dir: Path) -> dict[str, Any]:
    """The SupervisedConfig fields the checkpoint in `out_dir` was trained with ({} when
    there is no checkpoint)."""
    path = _state_file(out_dir)
    if path is None:
        return {}
    return dict(torch.load(path, map_location="cpu", weights_only=False).get("config", {}))
