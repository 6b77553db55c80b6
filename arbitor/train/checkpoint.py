"""Checkpoints: one safetensors file holding every integer buffer, the RNG states and a JSON header.

File ``<run>/checkpoint.safetensors``:

* tensors ``model.<name>`` -- the model's ``state_dict()`` (integer ternary state: ``T_packed``,
  ``E``, ``corr_accum``, ``step_counter``, the ``counter`` rule's ``C_packed``/``hash_key``, the legacy
  sparse tables' ``T_accum``/``E_accum``; plus frozen float constants such as the LTI decays, and float
  weights only for the ``dense``/``bitnet`` baselines);
* tensors ``rng.torch`` (torch's global CPU RNG), ``rng.<sampler>`` (the task's data samplers:
  ``rng.data`` for text; ``rng.modality`` and ``rng.data.<m>`` for multimodal runs) and
  ``optim.<i>.<key>`` (AdamW state, float baselines only);
* metadata (strings): ``format`` (``arbitor-checkpoint-2``), ``model_config``, ``train_state``
  (step, tokens seen, train config, ``task``: its kind, config and e.g. vocabulary; preset),
  ``optim_groups`` and ``sha256`` -- a digest of every tensor's name, dtype, shape and bytes, checked
  on load.

Older files: a text run's ``arbitor-checkpoint-1`` (arbitor 0.1) loads through ``upgrade_v1``, a
documented mapping -- the flat layer settings of ``model_config`` (``group_size``, ``strength``,
``zero_fraction``, ``update_rule``, ``counter_bits``, ``counter_rate``, ``ballot_prior``, ``backend``)
move into ``model_config["ternary"]``, ``embedding_mode`` becomes ``embedding_update_rule``,
``flip_rate`` is dropped, the ``counter`` rule's ``flip_key`` buffers become ``hash_key``, and the text
settings of ``train_config`` (``text_data``, ``vocab``, ``max_chars``, ``val_fraction``) move into
``train_state["task"]``. A 0.1 checkpoint of the removed ``legacy``/``flip`` dense rules, or of a 0.1
multimodal run (which could not be resumed), is refused with a message saying so.

Writes are atomic: the file is written to a temporary name in the same directory, flushed and
``fsync``-ed, then ``os.replace``-d over the old checkpoint and the directory is ``fsync``-ed. A
crash at any point leaves either the old or the new checkpoint, never a torn one. A checkpoint that
fails to parse, fails its digest, or does not match the requested model raises
``CheckpointError`` naming the problem; arbitor never overwrites such a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

__all__ = ["CheckpointError", "CHECKPOINT_NAME", "FORMAT", "save_checkpoint", "load_checkpoint", "tensor_digest",
           "atomic_write_bytes", "upgrade_v1"]

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "arbitor-checkpoint-2"
FORMAT_V1 = "arbitor-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or for a different model."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename, fsync dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], model_config: dict[str, Any],
                    train_state: dict[str, Any], extra_tensors: Optional[dict[str, torch.Tensor]] = None,
                    extra_meta: Optional[dict[str, str]] = None) -> None:
    """Atomically write a checkpoint (see module doc). ``extra_tensors`` names must not start with ``model.``."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().cpu().contiguous()
    meta = {"format": FORMAT, "model_config": json.dumps(model_config, sort_keys=True),
            "train_state": json.dumps(train_state, sort_keys=True), "sha256": tensor_digest(tensors)}
    meta.update(extra_meta or {})
    atomic_write_bytes(Path(path), st_save(tensors, metadata=meta))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any],
                                         dict[str, torch.Tensor], dict[str, str]]:
    """Read and verify a checkpoint.

    Returns ``(model_state, model_config, train_state, other_tensors, metadata)``; raises
    ``CheckpointError`` if the file is missing, unreadable, truncated, tampered with or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        meta = _read_metadata(raw)
    except (SafetensorError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({exc})") from None
    if meta.get("format") not in (FORMAT, FORMAT_V1):
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if tensor_digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensors do not match the stored sha256 digest")
    try:
        model_config = json.loads(meta["model_config"])
        train_state = json.loads(meta["train_state"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unreadable header ({exc})") from None
    if meta["format"] == FORMAT_V1:
        tensors, model_config, train_state = upgrade_v1(tensors, model_config, train_state, path)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    other = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return model_state, model_config, train_state, other, meta


def _read_metadata(raw: bytes) -> dict[str, str]:
    if len(raw) < 8:
        raise ValueError("file shorter than the safetensors header")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError("header length runs past the end of the file")
    header = json.loads(raw[8:8 + n])
    return dict(header.get("__metadata__", {}))


_V1_TERNARY_KEYS = ("group_size", "strength", "zero_fraction", "update_rule", "counter_bits", "counter_rate",
                    "ballot_prior", "backend")
_V1_TEXT_KEYS = ("text_data", "vocab", "max_chars", "val_fraction")


def upgrade_v1(tensors: dict[str, torch.Tensor], model_config: dict[str, Any], train_state: dict[str, Any],
               path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Map an ``arbitor-checkpoint-1`` text run onto the current layout (module doc); ``CheckpointError`` if
    it cannot be."""
    if "pretrain_config" in train_state:
        raise CheckpointError(f"checkpoint {path} is an arbitor 0.1 multimodal run, which cannot be resumed; "
                              "start a new run")
    rule = model_config.get("update_rule", "bigint")
    if rule not in ("bigint", "counter"):
        raise CheckpointError(f"checkpoint {path} was trained with update_rule={rule!r}, which arbitor 0.2 removed "
                              "(it lost the quality study, docs/quality.md); it cannot be loaded")
    mc = {k: v for k, v in model_config.items() if k not in _V1_TERNARY_KEYS + ("flip_rate", "embedding_mode")}
    mc["ternary"] = {k: model_config[k] for k in _V1_TERNARY_KEYS if k in model_config}
    if "embedding_mode" in model_config:
        mc["embedding_update_rule"] = model_config["embedding_mode"]
    tc = dict(train_state.get("train_config", {}))
    task_cfg = {k: tc.pop(k) for k in _V1_TEXT_KEYS if k in tc}
    ts = {k: v for k, v in train_state.items() if k not in ("train_config", "vocab", "text_sha256")}
    ts["train_config"] = tc
    ts["task"] = {"kind": "text", "config": task_cfg, "vocab": train_state.get("vocab"),
                  "text_sha256": train_state.get("text_sha256")}
    renamed = {(k[:-len("flip_key")] + "hash_key" if k.startswith("model.") and k.endswith(".flip_key") else k): v
               for k, v in tensors.items()}
    return renamed, mc, ts
