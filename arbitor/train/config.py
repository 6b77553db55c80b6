"""``TrainConfig``: the training loop's settings, shared by every task (text, multimodal).

Each field is also a command-line flag (``settings.py``: help text and bounds declared once, here).
What a task trains on (text file, vocabulary, modality weights...) is the task's own config
(``text.TextConfig``, ``multimodal.MultimodalConfig``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from .schedule import SCHEDULES, rate_factor
from .settings import check_settings, setting

__all__ = ["TrainConfig", "IDENTITY_FIELDS"]

# Fields that a resumed run must share with the run it continues: a bit-exact continuation needs them.
IDENTITY_FIELDS = ("batch", "ctx", "seed", "schedule", "warmup_steps", "min_rate_ratio", "schedule_hold", "adam_beta2",
                   "weight_decay", "grad_clip")


@dataclass
class TrainConfig:
    steps: int = setting(1000, "total optimisation steps (a resumed run continues up to this number)", positive=True)
    batch: int = setting(16, "sequences per step", positive=True)
    ctx: int = setting(64, "tokens (bytes or patches) per sequence", positive=True)
    eval_interval: int = setting(250, "validate every N steps and at the end; 0 = only at the start and the end",
                                 low=0)
    eval_batches: int = setting(8, "validation batches per evaluation (fixed windows, the same every time)",
                                positive=True)
    log_interval: int = setting(10, "write a train record every N steps (and at the end); 0 = none", low=0)
    save_interval: Optional[int] = setting(None, "checkpoint every N steps and at the end; 0 = only at the end "
                                                 "(default: with every evaluation)", low=0)
    no_save: bool = setting(False, "write no checkpoint; print the memory lines instead (logical_ternary_weights, "
                                   "training_state_mb, after_cuda_mb, step i alloc_mb/reserved_mb/peak_mb)")
    seed: int = setting(0, "seed of the model init, the data order and the modality draws", low=0, high=2 ** 62)
    # step-size schedule, applied alike to AdamW's lr (float baselines) and to the ternary rules' step sizes
    # (a pure function of the step, so resume stays exact; schedule.py). The cosine decay spans `steps`.
    schedule: str = setting("constant", "step-size schedule for AdamW lr and the ternary rules' rates",
                            choices=SCHEDULES)
    warmup_steps: int = setting(0, "cosine: linear warm-up steps", low=0)
    min_rate_ratio: float = setting(0.1, "cosine: the factor reached at the last step", low=0.0, high=1.0)
    # a piecewise-constant form of the schedule: steps kN .. kN+N-1 all take the factor of step kN + (N-1)//2
    # (the block's middle). What lets cuda_graph follow a schedule: a graph replays the step sizes it was
    # captured with, so the trainer captures the step again whenever the factor changes -- once per N steps
    schedule_hold: int = setting(1, "hold the schedule's factor for blocks of N steps (each block takes its middle "
                                    "step's factor); cuda_graph re-captures the step once per block", positive=True)
    # AdamW of the float parameters (only the dense / bitnet baselines have any; lr: ModelConfig.dense_lr).
    # The defaults are torch's AdamW with no weight decay and no clipping; nanoGPT's shakespeare_char recipe is
    # beta2 0.99, weight decay 0.1 (on every parameter of 2 or more dimensions) and gradient clipping at 1.0
    adam_beta2: float = setting(0.999, "float baselines: AdamW's beta2 (beta1 is 0.9)", low=0.0, high=0.9999)
    weight_decay: float = setting(0.0, "float baselines: AdamW's decoupled weight decay, on the parameters of 2 or "
                                       "more dimensions (nanoGPT's rule); others get none", low=0.0, high=10.0)
    grad_clip: float = setting(0.0, "float baselines: clip the float gradients' global L2 norm to this before "
                                    "AdamW steps (0: no clipping)", low=0.0)

    # gradient accumulation and data parallelism (docs/distributed.md). A step is grad_accum micro-batches on
    # each of the world_size processes (torchrun); when that is more than one, every micro-batch computes
    # against the step-start state and the step's ballots are summed and applied together, so W processes x
    # grad_accum A give the model 1 process x grad_accum W*A gives, bit for bit.
    grad_accum: int = setting(1, "micro-batches per step on each process (the global batch is batch x grad_accum x "
                                 "processes)", positive=True, high=127)
    state_check_interval: int = setting(100, "data-parallel: compare a digest of every layer's state across "
                                             "processes every N steps (0: never)", low=0)
    dist_timeout: float = setting(600.0, "data-parallel: seconds a process waits for the others before it stops "
                                         "with an error", positive=True)
    inexact_resume: bool = setting(False, "--resume although a setting that changes the result differs from the "
                                          "checkpoint's (--steps under a non-constant schedule: its horizon; "
                                          "--compile; the device type); the run is then no longer the straight "
                                          "run's, and its checkpoint records that")
    # speed (docs/kernels.md). A graph-replayed step leaves the integer state of an eager one, bit for bit
    # (tests/train/test_graph.py, on a GPU); compile fuses float ops (norms, softmax), so its activations --
    # and through them an occasional ballot -- may differ in the last bits (still deterministic run to run)
    compile: bool = setting(False, "torch.compile the model (in place; the first steps are slow while it compiles)")
    cuda_graph: bool = setting(False, "capture the whole step (forward, backward, update) as one CUDA graph and "
                                      "replay it: no launch overhead (CUDA device, text task; a non-constant "
                                      "schedule needs --schedule-hold N > 1: one capture per N steps)")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.schedule == "constant" and self.warmup_steps:
            raise ValueError(f"--warmup-steps ({self.warmup_steps}) applies to --schedule cosine only")
        if self.schedule != "constant" and self.warmup_steps > self.steps:
            raise ValueError(f"--warmup-steps ({self.warmup_steps}) must not exceed --steps ({self.steps}): the "
                             "warm-up would never end")

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints (0: only at the end)."""
        return self.eval_interval if self.save_interval is None else self.save_interval

    def rate_factor(self, step: int) -> float:
        """The schedule's multiplier for the step that follows ``step`` completed steps (1.0 when constant; the
        same for each block of ``schedule_hold`` steps: that of the block's middle step)."""
        hold = self.schedule_hold
        return rate_factor(self.schedule, step - step % hold + (hold - 1) // 2, self.steps, self.warmup_steps,
                           self.min_rate_ratio)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
