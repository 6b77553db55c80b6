"""Checkpoints: bit-exact resume, atomic writes, corrupt/mismatched files are refused and kept."""
import json
import os

import pytest
import torch

from arbitor.train import checkpoint as ckpt_mod
from arbitor.data import BUNDLED_TEXT_PATH
from arbitor.train import ModelSettings, MultimodalConfig, TextConfig, TrainConfig, build_run, load_run
from arbitor.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint

TEXT = str(BUNDLED_TEXT_PATH)


def _tcfg(steps, **kw):
    return TrainConfig(steps=steps, batch=4, ctx=32, eval_interval=0, eval_batches=2, seed=7, log_interval=1, **kw)


def _build(tcfg, run_dir, resume=False, settings=None, text=None, **fields):
    return build_run("text", tcfg, text or TextConfig(text_data=TEXT), settings, run_dir, resume=resume,
                     model_fields=fields)


def _train(run_dir, steps, resume=False, settings=None, **fields):
    tr = _build(_tcfg(steps), run_dir, resume, settings, **fields)
    tr.fit(progress=False)
    return tr


def _buffers(tr):
    return {k: v.clone() for k, v in tr.model.state_dict().items()}


@pytest.mark.parametrize("settings,fields", [
    (ModelSettings(embedding_update_rule="bigint"), {}),
    (ModelSettings(embedding_update_rule="legacy"), {}),
    (ModelSettings(update_rule="counter", counter_bits=4), {}),
    (ModelSettings(update_rule="counter", gradw_fp8=True), {}),     # the resumed run takes it from the checkpoint
    (ModelSettings(gradw_fp8=True, matmul_fp8=True), {}),           # and the fp8 forward / grad-x
    (None, {"linear": "dense"})], ids=["bigint", "legacy-embedding", "counter", "counter-fp8", "bigint-fp8all",
                                       "dense-adamw"])
def test_resume_is_bit_exact(tmp_path, fp8_for_small_layers, settings, fields):   # counter-fp8: tiny layers too
    straight = _train(tmp_path / "straight", 7, settings=settings, **fields)
    _train(tmp_path / "split", 3, settings=settings, **fields)
    resumed = _train(tmp_path / "split", 7, resume=True)           # a fresh trainer, as in a new process
    a, b = _buffers(straight), _buffers(resumed)
    assert a.keys() == b.keys()
    int_keys = [k for k in a if not a[k].is_floating_point()]
    assert any(k.endswith("corr_accum") or k.endswith("T_accum") for k in int_keys)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert torch.equal(straight.task.data.get_state(), resumed.task.data.get_state())
    assert resumed.step == 7 and resumed.tokens_seen == straight.tokens_seen
    assert resumed.model.cfg == straight.model.cfg                      # gradw_fp8 too, from the checkpoint
    if settings is not None and settings.matmul_fp8:
        assert any(getattr(m, "uses_matmul_fp8", False) for m in resumed.model.modules())
    losses = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()
                        if "loss" in json.loads(l)]
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")  # same loss at every step, 1..7


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    _train(tmp_path / "r", 3)
    metrics = tmp_path / "r" / "metrics.jsonl"
    with open(metrics, "a") as f:  # a run that died at step 5, after its last checkpoint at step 3
        f.write('{"step": 4, "loss": 1.0}\n{"step": 5, "loss": 1.0}\n')
    _train(tmp_path / "r", 6, resume=True)
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if "loss" in json.loads(l)]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_checkpoint_contents_are_integer_state(tmp_path):
    _train(tmp_path / "r", 2)
    model_state, cfg, train_state, other, meta = load_checkpoint(tmp_path / "r" / CHECKPOINT_NAME)
    floats = [k for k, v in model_state.items() if v.is_floating_point()]
    assert all(k.endswith("log_decays") for k in floats)   # only the frozen LTI constants
    assert train_state["step"] == 2 and cfg["d_model"] == 64
    assert "rng.data" in other
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"] == cfg and saved["train"]["seed"] == 7


def test_atomic_save_survives_crash_mid_write(tmp_path, monkeypatch):
    tr = _train(tmp_path / "r", 2)
    path = tmp_path / "r" / CHECKPOINT_NAME
    good = path.read_bytes()
    tr.train_step()

    real_fsync = os.fsync

    def crash(fd):  # the temp file has been written (perhaps partially flushed): the machine dies here
        raise KeyboardInterrupt("simulated crash before rename")
    monkeypatch.setattr(ckpt_mod.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        tr.save()
    monkeypatch.setattr(ckpt_mod.os, "fsync", real_fsync)
    assert path.read_bytes() == good                       # old checkpoint untouched
    assert load_checkpoint(path)[2]["step"] == 2
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    # a torn temp file left by a killed process (no cleanup ran) does not affect loading or saving
    (path.parent / f".{CHECKPOINT_NAME}.abc.tmp").write_bytes(good[: len(good) // 2])
    assert load_checkpoint(path)[2]["step"] == 2
    tr.save()
    assert load_checkpoint(path)[2]["step"] == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_checkpoint_is_refused_and_never_overwritten(tmp_path, damage):
    _train(tmp_path / "r", 2)
    path = tmp_path / "r" / CHECKPOINT_NAME
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 100]
    elif damage == "flip":
        raw[-10] ^= 0xFF                                   # a bit flip inside tensor data
    elif damage == "garbage":
        raw = bytearray(b"not a checkpoint at all" * 10)
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt|not a safetensors"):
        _train(tmp_path / "r", 4, resume=True)
    with pytest.raises(CheckpointError, match="already exists"):
        _train(tmp_path / "r", 4)
    with pytest.raises(CheckpointError):
        load_run(tmp_path / "r")
    assert path.read_bytes() == bytes(raw)


def test_mismatched_checkpoint_is_refused(tmp_path):
    _train(tmp_path / "r", 2)
    path = tmp_path / "r" / CHECKPOINT_NAME
    raw = path.read_bytes()
    with pytest.raises(CheckpointError, match="group_size"):
        _train(tmp_path / "r", 4, resume=True, settings=ModelSettings(group_size=8))
    with pytest.raises(CheckpointError, match="preset 'tiny', not 'small'"):
        _build(_tcfg(4), tmp_path / "r", True, ModelSettings(preset="small"))
    with pytest.raises(CheckpointError, match="batch"):
        _build(TrainConfig(steps=4, batch=8, ctx=32, seed=7), tmp_path / "r", True)
    with pytest.raises(CheckpointError, match="'text' run, not a 'multimodal' run"):
        build_run("multimodal", _tcfg(4), MultimodalConfig(text_data=TEXT), None, tmp_path / "r", resume=True)
    # a checkpoint of another preset loaded into this trainer: clear error from the state dict
    other = _build(_tcfg(1), None, settings=ModelSettings(preset="small"))
    model_state, _, train_state, extra, meta = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not fit"):
        other.restore(model_state, train_state, extra, meta)
    assert path.read_bytes() == raw


def test_resume_on_changed_text_is_refused(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(BUNDLED_TEXT_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    tcfg = TrainConfig(steps=2, batch=2, ctx=16, eval_batches=1)
    _build(tcfg, tmp_path / "r", text=TextConfig(text_data=str(text))).fit(progress=False)
    text.write_text(text.read_text(encoding="utf-8").replace("ternary", "trinary"), encoding="utf-8")
    with pytest.raises(CheckpointError, match="training text differs"):
        _build(tcfg, tmp_path / "r", True, text=TextConfig(text_data=str(text)))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _train(tmp_path / "nothing", 2, resume=True)


def test_resume_with_a_cosine_schedule_is_bit_exact(tmp_path):
    """An interrupted 7-step counter run with a cosine schedule, resumed, equals the straight run."""
    over = ModelSettings(update_rule="counter")
    kw = dict(schedule="cosine", warmup_steps=2, min_rate_ratio=0.1)
    straight = _build(_tcfg(7, **kw), tmp_path / "straight", settings=over)
    straight.fit(progress=False)
    cut = _build(_tcfg(7, **kw), tmp_path / "cut", settings=over)
    cut.fit(steps=3, progress=False)                             # the run dies after its step-3 checkpoint
    resumed = _build(_tcfg(7, **kw), tmp_path / "cut", True)
    resumed.fit(progress=False)
    a, b = _buffers(straight), _buffers(resumed)
    assert any(k.endswith("C_packed") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    with pytest.raises(CheckpointError, match="schedule='cosine'"):   # forgetting --schedule on resume is refused
        _build(_tcfg(9), tmp_path / "cut", True)


def _v1_with(tmp_path, edit):
    """The arbitor 0.1 fixture checkpoint (tests/golden/v1) with its JSON header edited by ``edit``."""
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import save_file
    src = Path(__file__).resolve().parents[1] / "golden" / "v1" / "run" / CHECKPOINT_NAME
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg, state = json.loads(meta["model_config"]), json.loads(meta["train_state"])
    edit(cfg, state)
    meta["model_config"], meta["train_state"] = json.dumps(cfg), json.dumps(state)
    out = tmp_path / CHECKPOINT_NAME
    save_file(tensors, str(out), metadata=meta)
    return out


def test_v1_checkpoints_map_or_are_refused_with_the_reason(tmp_path):
    path = _v1_with(tmp_path, lambda c, s: None)
    model_state, cfg, state, _, _ = load_checkpoint(path)
    assert cfg["ternary"]["update_rule"] == "counter" and "embedding_update_rule" in cfg and "flip_rate" not in cfg
    assert state["task"]["kind"] == "text" and state["task"]["config"]["vocab"] == "char"
    assert any(k.endswith("hash_key") for k in model_state) and not any(k.endswith("flip_key") for k in model_state)
    with pytest.raises(CheckpointError, match="update_rule='legacy'.*removed"):
        load_checkpoint(_v1_with(tmp_path, lambda c, s: c.update(update_rule="legacy")))
    with pytest.raises(CheckpointError, match="0.1 multimodal run"):
        load_checkpoint(_v1_with(tmp_path, lambda c, s: s.update(pretrain_config={})))
