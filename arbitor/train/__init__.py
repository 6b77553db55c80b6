"""Training: one ``Trainer`` with a text and a multimodal task, and everything a run keeps on disk.

* ``config.py``      -- ``TrainConfig`` (the loop's settings; also the CLI flags, ``settings.py``)
* ``schedule.py``    -- the step-size schedule, a pure function of the step
* ``components.py``  -- ``LossComponent`` and ballot routing
* ``updater.py``     -- ``Updater``: the per-step update (ternary rules + AdamW for float baselines)
* ``task.py``        -- ``Task``; ``text.py`` / ``multimodal.py`` its two implementations, ``user.py`` your own
* ``graph.py``, ``distributed.py`` -- the step as one CUDA graph; torchrun's process group
* ``trainer.py``     -- ``Trainer``: the loop, evaluation, metrics, checkpoints, resume
* ``run.py``         -- build or resume a run; load one for sampling
* ``checkpoint.py``  -- the checkpoint file (atomic, verified)
* ``plots.py``, ``probe.py``, ``memory.py`` -- loss curves, the spec's memory probe, live-tensor tracking
"""
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .components import LossComponent, route_ballots
from .config import TrainConfig
from .multimodal import MultimodalConfig, MultimodalTask
from .run import ModelSettings, build_run, load_run
from .task import Task
from .text import TextConfig, TextTask, text_component
from .trainer import Trainer
from .updater import Updater
from .user import UserTask

__all__ = ["UserTask", "TrainConfig", "LossComponent", "route_ballots", "Updater", "Task", "TextConfig", "TextTask",
           "text_component", "MultimodalConfig", "MultimodalTask", "Trainer", "ModelSettings", "build_run",
           "load_run", "CHECKPOINT_NAME", "CheckpointError", "load_checkpoint", "save_checkpoint"]
