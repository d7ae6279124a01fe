"""A training bundle: a hybrid training run packed to travel to a machine with a GPU.

Why: the episodes are built from the data sets (polars, LightFM: recsys.hybrid_training)
and the base model comes from a 98 MB GGUF; a rented GPU machine has neither, and a copy
to it is small. The run needs neither: the frozen layers below `inject_layer` see only
placeholders (ranking.hybrid_split), so their output is one tensor per episode layout,
computed here once; the layers the run adapts travel as the GGUF's own 4-bit blocks
(ranking.backends.q4, recovered bit for bit, so the weights there are exactly the ones
here); and an episode travels as indices into one table of item ids (a hybrid prompt
without titles shows an item by its token alone).

A bundle folder:

* `bundle.json`: the model's config, the hybrid config, the training config, the ids;
* `weights.pt`: the upper layers and the final norm, Q4 blocks or float32;
* `lower.pt`: the lower layers' output per placeholder-ized prompt (the split's memo);
* `vectors.npy`, `episodes.npz` (train and validation), `tokenizer/`;
* `init/`: the adapter and projector to start from, when the run continues a model.

``python -m ranking.rl.bundle BUNDLE --out DIR --device cuda --budget-s 400`` trains it
(torch, transformers and peft only): a few probe steps on the run's own trainer (undone
afterwards) measure the step rate, then the run takes as many batches as fit the budget,
checkpoints, and exports a model folder that
`recsys eval --model DIR` serves on the machine that has the base model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranking.backends.q4 import Q4Matrix, find_q4
from ranking.folders import written_whole
from ranking.hybrid import Hybrid, HybridConfig
from ranking.rl.episodes import Episode
from ranking.rl.supervised import SupervisedConfig, SupervisedTrainer, saved_config
from ranking.types import Candidate, RankRequest

FORMAT = 1
BUNDLE_MANIFEST = "bundle.json"


# -- writing (the machine with the data and the base model) -----------------------------


def write_bundle(
    folder: Path,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    config: HybridConfig,
    item_ids: Sequence[str],
    vectors: np.ndarray,
    train: Sequence[Episode],
    val: Sequence[Episode],
    training: SupervisedConfig,
    init: Path | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Pack a run (module doc). `model` and `tokenizer` are the base, before any hybrid
    parts are installed on them (the tokenizer is saved without item tokens)."""
    if config.title_chars != 0:
        raise ValueError("a bundle carries no titles: train with title_chars 0")
    folder = Path(folder)
    with written_whole(folder, BUNDLE_MANIFEST) as tmp:
        (tmp / "tokenizer").mkdir()
        tokenizer.save_pretrained(tmp / "tokenizer")
        torch.save(_upper_weights(model, config.inject_layer), tmp / "weights.pt")
        np.save(tmp / "vectors.npy", np.asarray(vectors, dtype=np.float32))
        table = _id_table([*train, *val])
        np.savez_compressed(tmp / "episodes.npz", **_encode(train, table, "train"),
                            **_encode(val, table, "val"))  # fmt: skip
        hybrid = Hybrid(model, tokenizer, item_ids, vectors, config)
        try:
            torch.save(_lower_memo(model, hybrid, [*train, *val], training), tmp / "lower.pt")
        finally:
            hybrid.remove()
        if init is not None:
            (tmp / "init").mkdir()
            shutil.copytree(Path(init) / "adapter", tmp / "init" / "adapter")
            shutil.copy2(Path(init) / "projector.pt", tmp / "init" / "projector.pt")
        manifest = {"format": FORMAT, "model_config": model.config.to_dict(),
                    "hybrid": asdict(config), "training": asdict(training),
                    "item_ids": [str(i) for i in item_ids], "ids": table,
                    "task": train[0].request.task if train else "", "info": info or {}}  # fmt: skip
        (tmp / BUNDLE_MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def _upper_weights(model: torch.nn.Module, inject_layer: int) -> dict[str, Any]:
    """The weights of layers inject_layer.. and the final norm: 4-bit blocks where the
    float32 weight is exactly a Q4 matrix (a GGUF base), else float32."""
    out: dict[str, Any] = {}
    n_layers = model.config.num_hidden_layers
    keep = (*(f"model.layers.{i}." for i in range(inject_layer, n_layers)), "model.norm.")
    for name, tensor in model.state_dict().items():
        if not name.startswith(keep):
            continue
        q4 = find_q4(tensor) if tensor.dim() == 2 else None
        if q4 is None:
            out[name] = tensor.detach().float().cpu().clone()
        else:  # as tensors: torch.save stores numpy arrays as text, ~1.5x larger
            out[name] = {
                k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in asdict(q4).items()
            }
    return out


def _lower_memo(model, hybrid, episodes, training) -> dict[tuple[int, ...], torch.Tensor]:  # type: ignore[no-untyped-def]
    """The split's memo for every layout the episodes have."""
    from ranking.hybrid_split import HybridSplit
    from ranking.rl.supervised import StyledTokenizer, prepare

    split = HybridSplit.build(model, hybrid)
    if split is None:
        raise ValueError("a bundle needs a Llama-architecture base (ranking.hybrid_split)")
    split.max_entries = 1 << 30
    builder = StyledTokenizer(hybrid.tokenizer, hybrid.style)
    with torch.no_grad():
        for ep in episodes:  # the contexts the trainer will ask for (a lookup when known)
            p = prepare(ep, builder)
            split._stream(p.seq.context(list(p.order[:-2])))
    return {k: v.detach().cpu() for k, v in split._memo.items()}


def _id_table(episodes: Sequence[Episode]) -> list[str]:
    ids: dict[str, None] = {}
    for ep in episodes:
        ids.update(dict.fromkeys(ep.request.history_ids))
        ids.update(dict.fromkeys(ep.request.ids))
    return list(ids)


def _encode(episodes: Sequence[Episode], table: list[str], name: str) -> dict[str, np.ndarray]:
    """Episodes as index arrays: candidates in request order, the teacher's order and the
    truth as positions among them, the history (padded with -1)."""
    index = {i: n for n, i in enumerate(table)}
    n_cand = {len(ep.request.candidates) for ep in episodes} or {0}
    if len(n_cand) > 1:
        raise ValueError(f"episodes with different candidate counts {sorted(n_cand)}")
    width = max([len(ep.request.history_ids) for ep in episodes] + [0])
    hist = np.full((len(episodes), width), -1, dtype=np.int32)
    cands, teacher = [], []
    for row, ep in enumerate(episodes):
        hist[row, : len(ep.request.history_ids)] = [index[h] for h in ep.request.history_ids]
        cands.append([index[c] for c in ep.request.ids])
        position = {c: n for n, c in enumerate(ep.request.ids)}
        teacher.append([position[c] for c in (ep.teacher_order or ep.request.ids)])
    gt = [ep.request.ids.index(ep.ground_truth) for ep in episodes]
    users = np.array([ep.user for ep in episodes])
    # the candidates' scores (NaN: none), the fusion bias of a run with fusion_alpha > 0
    scores = np.array([[np.nan if c.score is None else c.score for c in ep.request.candidates]
                       for ep in episodes], dtype=np.float32)  # fmt: skip
    return {f"{name}_history": hist, f"{name}_candidates": np.array(cands, dtype=np.int32),
            f"{name}_scores": scores.reshape(len(episodes), -1),
            f"{name}_teacher": np.array(teacher, dtype=np.uint8 if max(n_cand) < 256 else np.int32),
            f"{name}_gt": np.array(gt, dtype=np.int32), f"{name}_users": users}  # fmt: skip


# -- reading and training (any machine with torch, transformers and peft) -----------------


def decode_episodes(folder: Path, name: str) -> list[Episode]:
    """The bundle's `train` or `val` episodes as the writer had them, an item's id standing
    for its title (a prompt without titles shows neither)."""
    manifest = _manifest(folder)
    table, task = manifest["ids"], manifest["task"]
    data = np.load(Path(folder) / "episodes.npz")
    out = []
    rows = zip(data[f"{name}_history"], data[f"{name}_candidates"], data[f"{name}_teacher"],
               data[f"{name}_gt"], data[f"{name}_users"], strict=True)  # fmt: skip
    shape = data[f"{name}_candidates"].shape  # bundles written before scores travelled: none
    scores = data[f"{name}_scores"] if f"{name}_scores" in data else np.full(shape, np.nan)
    for (hist, cands, teacher, gt, user), row in zip(rows, scores, strict=True):
        history = tuple(table[i] for i in hist if i >= 0)
        ids = [table[i] for i in cands]
        given = [None if np.isnan(s) else float(s) for s in row]
        cands = tuple(Candidate(id=i, text=i, score=g) for i, g in zip(ids, given, strict=True))
        request = RankRequest(task=task, candidates=cands, history=history, history_ids=history)
        out.append(Episode(request=request, ground_truth=ids[int(gt)], user=str(user),
                           teacher_order=tuple(ids[i] for i in teacher)))  # fmt: skip
    return out


def load_trainer(
    folder: Path,
    work: Path,
    *,
    device: str = "cpu",
    overrides: dict[str, Any] | None = None,
) -> SupervisedTrainer:
    """A SupervisedTrainer over the bundle's episodes, its model built from the bundle's
    weights (the lower layers never run: their output is the memo) and, when the bundle
    has one, its starting adapter and projector loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    manifest = _manifest(folder)
    mc = dict(manifest["model_config"])
    model_type = mc.pop("model_type")
    config = AutoConfig.for_model(model_type, **mc)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(_dequantized(torch.load(folder / "weights.pt", weights_only=False)),
                          strict=False)  # fmt: skip
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    hybrid = Hybrid(model, tokenizer, manifest["item_ids"], np.load(folder / "vectors.npy"),
                    HybridConfig(**manifest["hybrid"]))  # fmt: skip
    cfg = replace(SupervisedConfig(**manifest["training"]), **(overrides or {}))
    trainer = SupervisedTrainer(model, hybrid, decode_episodes(folder, "train"),
                                decode_episodes(folder, "val"), cfg, work)  # fmt: skip
    if trainer.split is None:
        raise ValueError("the bundle's model has no split (ranking.hybrid_split)")
    memo = torch.load(folder / "lower.pt", weights_only=False)
    trainer.split.preload({k: v.to(device) for k, v in memo.items()})
    if (folder / "init").is_dir() and not trainer.load_checkpoint():
        trainer.init_from(folder / "init")
    return trainer


def _dequantized(weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {name: Q4Matrix(**{k: v.numpy() for k, v in w.items()}).dequantize()
            if isinstance(w, dict) else w
            for name, w in weights.items()}  # fmt: skip


def _manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / BUNDLE_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a training bundle (write one with "
                                "`recsys train-ranker --bundle DIR`)")  # fmt: skip
    manifest = json.loads(path.read_text("utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: bundle format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def steps_for_budget(rate_steps_per_s: float, budget_s: float, margin: float = 0.85) -> int:
    """Batches that fit `budget_s` at the measured rate, keeping a margin for validation,
    checkpoints and the export."""
    return max(1, int(rate_steps_per_s * budget_s * margin))


def train_bundle(
    folder: Path,
    out: Path,
    *,
    device: str = "cpu",
    budget_s: float | None = None,
    probe_steps: int = 12,
    overrides: dict[str, Any] | None = None,
    echo: Any = print,
) -> dict[str, Any]:
    """Train a bundle into the model folder `out` (work files in OUT.work). With
    `budget_s`, a probe measures the step rate on the trainer itself (its steps leave no
    trace) and the run's stage-2 length (stage 1 when the bundle's RL stage is empty) is
    set to what fits the rest. A run resumed from its checkpoint keeps the plan it was
    saved with; the budget then only sets its deadline."""
    t0 = time.perf_counter()
    overrides = dict(overrides or {})
    work = Path(out).with_name(Path(out).name + ".work")
    saved = saved_plan(work)
    trainer = load_trainer(folder, work, device=device, overrides={**overrides, **saved})
    if budget_s is not None and not saved:
        rate = _probe_rate(trainer, device, probe_steps)
        left = budget_s - (time.perf_counter() - t0)
        steps = steps_for_budget(rate, left)
        trainer.reconfigure(replace(trainer.cfg, **_plan(trainer.cfg, steps)))
        echo(f"probe: {rate:.2f} steps/s; {steps} batches fit the {left:.0f} s left")
    start = time.perf_counter()
    # a plan is an estimate (runs beside it may slow this one down): the budget is a limit
    deadline = None if budget_s is None else time.monotonic() + budget_s - (start - t0)
    trainer.run(resume=True, deadline=deadline)
    wall = time.perf_counter() - start
    log = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines() if x]
    summary = {
        "device": device,
        "steps": trainer.step,
        "batch_size": trainer.cfg.batch_size,
        "episodes": trainer.step * trainer.cfg.batch_size,
        "wall_s": round(wall, 1),
        "episodes_per_s": round(trainer.step * trainer.cfg.batch_size / wall, 1),
        "config": asdict(trainer.cfg),
        "final": next((r for r in reversed(log) if "val_mrr_first_step" in r), {}),
    }
    if torch.cuda.is_available() and device.startswith("cuda"):
        summary["gpu"] = torch.cuda.get_device_name(device)
        summary["max_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    trainer.export(out, extra={"bundle_run.json": json.dumps(summary, indent=2) + "\n"})
    echo(json.dumps(summary))
    return summary


def _plan(cfg: SupervisedConfig, steps: int) -> dict[str, int]:
    """Stage 1 as planned and stage 2 takes the rest, or stage 1 all of it when the
    bundle has no RL stage."""
    if cfg.rl_steps > 0:
        return {"rl_steps": max(1, steps - cfg.supervised_steps)}
    return {"supervised_steps": steps}


def saved_plan(work: Path) -> dict[str, int]:
    """The stage lengths of the run whose checkpoint is in `work` ({} when none)."""
    config = saved_config(work)
    return {k: int(config[k]) for k in ("supervised_steps", "rl_steps") if k in config}


def _probe_rate(trainer: SupervisedTrainer, device: str, steps: int) -> float:
    """Batches per second over `steps` steps after three warm-up steps, on the trainer
    itself inside `trainer.trial()` (nothing it does stays)."""
    warm = 3
    with trainer.trial():
        for step in range(warm):
            trainer.train_step(step)
        _sync(device)
        t = time.perf_counter()
        for step in range(warm, warm + steps):
            trainer.train_step(step)
        _sync(device)
        return steps / (time.perf_counter() - t)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _bounded(kind: type, low: float, high: float):  # type: ignore[no-untyped-def]
    """An argparse type: a `kind` number in [low, high], else a message saying so."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside [{low:g}, {high:g}]")
        return value

    return parse


# (option, type, limits, help): every option has a limit
_OPTIONS = (
    ("--budget-s", float, (1, 7 * 86400), "run time in seconds (default: the bundle's steps)"),
    ("--batch-size", int, (1, 1024), "episodes per update"),
    ("--lr", float, (1e-8, 1.0), "peak learning rate"),
    ("--rl-steps", int, (0, 10**7), "stage 2 batches"),
    ("--supervised-steps", int, (0, 10**7), "stage 1 batches"),
    ("--ce-weight", float, (0.0, 100.0), "stage 2: weight of the stage-1 loss"),
    ("--eval-every", int, (1, 10**9), "validate every N batches"),
    ("--checkpoint-every", int, (1, 10**9), "checkpoint every N batches"),
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ranking.rl.bundle", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    for flag, kind, (low, high), text in _OPTIONS:
        parser.add_argument(flag, type=_bounded(kind, low, high), help=text)
    args = parser.parse_args(argv)
    dests = [flag[2:].replace("-", "_") for flag, *_ in _OPTIONS[1:]]  # the config's fields
    overrides = {d: getattr(args, d) for d in dests if getattr(args, d) is not None}
    device = args.device.strip().lower()
    if device != "cpu" and not device.startswith("cuda"):
        parser.error(f"unknown device {args.device!r}; use cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.error(f"device {args.device!r}, but CUDA is not available here; use cpu")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        train_bundle(args.bundle, args.out, device=device, budget_s=args.budget_s,
                     overrides=overrides)  # fmt: skip
    except (FileNotFoundError, ValueError, KeyError) as exc:  # a bad bundle or a mismatch
        parser.exit(2, f"python -m ranking.rl.bundle: error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
