"""Reinforcement-learning fine-tuning of the IRanker re-ranker (R1-Ranker, arXiv 2506.21638).

* `episodes`  — training episodes: a rank request, its ground truth, optional teacher
                order and logged ranking with its propensity; splits by user.
* `sequence`  — the incremental-mode token sequence of a request (prompt + one label per
                elimination), so a whole trajectory is teacher-forced in one forward pass.
* `policy`    — step log-probabilities, trajectory sampling, greedy (optionally fused) ranking.
* `losses`    — expected step reward, distillation, GRPO, clipped importance weights.
* `trainer`   — the loop: AdamW, full or LoRA fine-tune, mixed precision, logging,
                atomic checkpoints and resume.

No database, web or job-queue imports here; `recsys.training` composes this with the data.
"""
