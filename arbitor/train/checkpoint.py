"""Checkpoints: one safetensors file holding every integer buffer, the RNG states and a JSON header.

File ``<run>/checkpoint.safetensors``:

* tensors ``model.<name>`` -- the model's ``state_dict()`` (integer ternary state: ``T_packed``,
  ``E``, ``corr_accum``, ``step_counter``, the ``counter`` rule's ``C_packed``/``hash_key``, the legacy
  sparse tables' ``T_accum``/``E_accum``; plus frozen float constants such as the LTI decays, and float
  weights only for the ``dense``/``bitnet`` baselines);
* tensors ``rng.torch`` (torch's global CPU RNG), ``rng.<sampler>`` (the task's data samplers:
  ``rng.data`` for text; ``rng.modality`` and ``rng.data.<m>`` for multimodal runs) and
  ``optim.<i>.<key>`` (AdamW state, float baselines only);
* metadata (strings): ``format`` (``arbitor-checkpoint-3``), ``model_config``, ``train_state``
  (step, tokens seen, train config, ``task``: its kind, config and e.g. vocabulary; preset; the settings the
  run builder resolved, ``resolved_settings``),
  ``optim_groups``, ``tensors_sha256`` (the tensors' own digest) and ``sha256`` -- one digest over every
  other metadata field (name and value) and every tensor's name, dtype, shape and bytes, checked on load: editing ``"step"`` in the header, renaming a
  tensor or flipping one byte of it is refused, naming which part does not match.

Integrity is against accidents and careless edits (a digest stored in the file proves consistency, not
authorship: someone who rewrites the digest too can forge a file). The load path never unpickles:
safetensors parses the header (its own size limits), arbitor reads only the ``__metadata__`` strings and
checks every header field's type and range (``_check_header``) before using it, so a hostile header --
huge or negative numbers, wrong types, deep nesting, a length that runs past the file -- is a
``CheckpointError``, never a crash or a large allocation.

Older files: ``arbitor-checkpoint-2`` (arbitor 0.2 before the header digest; its digest covers the
tensors only) loads with its header checked for types and ranges only; a text run's
``arbitor-checkpoint-1`` (arbitor 0.1) loads through ``upgrade_v1``, a
documented mapping -- the flat layer settings of ``model_config`` (``group_size``, ``strength``,
``zero_fraction``, ``update_rule``, ``counter_bits``, ``counter_rate``, ``ballot_prior``, ``backend``)
move into ``model_config["ternary"]``, ``embedding_mode`` becomes ``embedding_update_rule``,
``flip_rate`` is dropped, the ``counter`` rule's ``flip_key`` buffers become ``hash_key``, and the text
settings of ``train_config`` (``text_data``, ``vocab``, ``max_chars``, ``val_fraction``) move into
``train_state["task"]``. A 0.1 checkpoint of the removed ``legacy``/``flip`` dense rules, or of a 0.1
multimodal run (which could not be resumed), is refused with a message saying so.

Writes are atomic: the file is written to a temporary name in the same directory, flushed and
``fsync``-ed, then ``os.replace``-d over the old checkpoint and the directory is ``fsync``-ed. A
crash at any point leaves either the old or the new checkpoint, never a torn one; the temporary file a
crash can leave behind (``.<name>.<random>.tmp``) is removed by the next save or load of that run
(``remove_stale_temps``: the run directory's lock, ``run.py``, makes sure no other writer owns it). A checkpoint that
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
           "checkpoint_digest", "atomic_write_bytes", "remove_stale_temps", "upgrade_v1"]

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "arbitor-checkpoint-3"
FORMAT_V2 = "arbitor-checkpoint-2"
FORMAT_V1 = "arbitor-checkpoint-1"
MAX_HEADER_BYTES = 64 * 2 ** 20     # a checkpoint header larger than this is refused before it is parsed
MAX_JSON_DEPTH = 32


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


def checkpoint_digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """sha256 over every metadata field but ``sha256`` (sorted ``name=value``) and then the tensors as in
    ``tensor_digest``: what a format-3 checkpoint stores and checks."""
    h = hashlib.sha256()
    for key in sorted(k for k in meta if k != "sha256"):
        h.update(f"{len(key)}:{key}={len(meta[key])}:{meta[key]}|".encode())
    h.update(tensor_digest(tensors).encode())
    return h.hexdigest()


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temporary files ``atomic_write_bytes`` leaves when killed mid-write (``.<name>.<x>.tmp``) in
    ``directory``; returns them. Call it only while holding the run's lock."""
    removed = []
    for p in Path(directory).glob(".*.tmp"):
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


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
            "train_state": json.dumps(train_state, sort_keys=True)}
    meta.update(extra_meta or {})
    meta["tensors_sha256"] = tensor_digest(tensors)            # says which part changed when the digest fails
    meta["sha256"] = checkpoint_digest(tensors, meta)
    remove_stale_temps(Path(path).parent)
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
        meta = _read_metadata(raw)
        tensors = st_load(raw)
    except (SafetensorError, ValueError, RuntimeError, RecursionError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file "
                              f"({' '.join(str(exc).split())[:160]})") from None
    fmt = meta.get("format")
    if fmt not in (FORMAT, FORMAT_V2, FORMAT_V1):
        raise CheckpointError(f"checkpoint {path} has format {str(fmt)[:40]!r}, expected {FORMAT!r}")
    if fmt == FORMAT:
        if checkpoint_digest(tensors, meta) != meta.get("sha256"):
            what = ("its tensors (names, shapes or bytes)" if tensor_digest(tensors) != meta.get("tensors_sha256")
                    else "its header (step, configs or other fields)")
            raise CheckpointError(f"checkpoint {path} does not match its sha256 digest: {what} changed after it was "
                                  "written; it is refused (restore the file or start a new run)")
    elif tensor_digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensors do not match the stored sha256 digest")
    try:
        model_config = _parse_json(meta, "model_config")
        train_state = _parse_json(meta, "train_state")
        _check_header(model_config, train_state)
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        msg = exc.args[0] if exc.args else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} has an unusable header: {' '.join(str(msg).split())[:200]}") from None
    if fmt == FORMAT_V1:
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
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"header of {n} bytes (more than {MAX_HEADER_BYTES})")
    header = json.loads(raw[8:8 + n])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("__metadata__ is not a map of strings")
    return dict(meta)


def _parse_json(meta: dict[str, str], key: str) -> dict:
    text = meta[key]
    depth = max_depth = 0
    for ch in text:                       # refuse deep nesting before json.loads recurses into it
        if ch in "[{":
            depth += 1
            max_depth = max(max_depth, depth)
            if max_depth > MAX_JSON_DEPTH:
                raise ValueError(f"{key} nests deeper than {MAX_JSON_DEPTH} levels")
        elif ch in "]}":
            depth -= 1
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not a JSON object")
    return value


def _nonneg_int(d: dict, key: str, where: str, high: int = 2 ** 62) -> None:
    v = d.get(key)
    if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= high):
        raise ValueError(f"{where}.{key} must be an integer in [0, {high}], got {str(v)[:40]}")


def _check_header(model_config: dict, train_state: dict) -> None:
    """Types and ranges of the header fields the loader uses (``ValueError`` naming the first bad one); the
    model and train configs are validated again by their dataclasses when the run is rebuilt."""
    _nonneg_int(train_state, "step", "train_state")
    _nonneg_int(train_state, "tokens_seen", "train_state", 2 ** 63 - 1)
    if "micro_batches_per_step" in train_state:
        _nonneg_int(train_state, "micro_batches_per_step", "train_state", 2 ** 20)
    for key in ("train_config", "task", "resolved_settings"):
        if key in train_state and not isinstance(train_state[key], dict):
            raise ValueError(f"train_state.{key} is not a JSON object")
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "max_ctx"):
        if key in model_config:
            _nonneg_int(model_config, key, "model_config", 2 ** 31)


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
