"""Dropout and nanoGPT's AdamW recipe in the trainer: resume stays bit-exact with dropout (the RNG state is in the
checkpoint), ``adam_beta2`` / ``weight_decay`` / ``grad_clip`` reach AdamW, a held schedule and CUDA graphs."""
import json

import pytest
import torch
from torch import nn

from arbitor.data import BUNDLED_TEXT_PATH
from arbitor.train import ModelSettings, TextConfig, TrainConfig, Updater, build_run
from arbitor.train.checkpoint import CheckpointError
from arbitor.train.schedule import rate_factor

TEXT = TextConfig(text_data=str(BUNDLED_TEXT_PATH))
NANOGPT = {"adam_beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0}


def _tcfg(steps, **kw):
    base = {"batch": 4, "ctx": 32, "eval_interval": 0, "eval_batches": 1, "seed": 3, "log_interval": 1,
            "schedule": "cosine", "warmup_steps": 2, "schedule_hold": 2}
    return TrainConfig(steps=steps, **{**base, **kw})


def _fit(run_dir, steps, resume=False, settings=None, fields=None, upto=None, **kw):
    """``steps``: the run's length (the cosine horizon); trains up to step ``upto`` (default all)."""
    tr = build_run("text", _tcfg(steps, **kw), TEXT, settings, run_dir, resume=resume, model_fields=fields)
    tr.fit(steps=upto, progress=False)
    if upto is not None:
        tr.save()
    tr.close()
    return tr


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


@pytest.mark.parametrize("settings,fields,kw", [
    (ModelSettings(update_rule="counter", counter_bits=4, dropout=0.2), None, {}),
    (ModelSettings(dropout=0.2), {"linear": "dense"}, NANOGPT),
    (ModelSettings(dropout=0.2), {"linear": "bitnet"}, NANOGPT)], ids=["counter", "dense", "bitnet"])
def test_resume_with_dropout_is_bit_exact(tmp_path, settings, fields, kw):
    """3 steps + checkpoint + resume 3 steps == 6 straight steps, with dropout 0.2 (and a held cosine schedule,
    AdamW with nanoGPT's beta2, weight decay and clipping for the float rows)."""
    straight = _fit(tmp_path / "straight", 6, settings=settings, fields=fields, **kw)
    _fit(tmp_path / "split", 6, settings=settings, fields=fields, upto=3, **kw)
    resumed = _fit(tmp_path / "split", 6, resume=True, **kw)         # a fresh trainer, as in a new process
    assert resumed.model.cfg.dropout == 0.2 and resumed.step == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "split")
    _fit(tmp_path / "plain", 6, settings=ModelSettings(**{**vars(settings), "dropout": None}), fields=fields,
                 **kw)
    assert _losses(tmp_path / "plain") != _losses(tmp_path / "straight")      # the dropout did act


def test_adamw_settings_reach_the_optimizer(monkeypatch):
    tr = build_run("text", _tcfg(4, **NANOGPT), TEXT, model_fields={"linear": "dense", "dense_lr": 2e-3})
    opt = tr.updater.optimizer
    assert len(opt.param_groups) == 1                         # every dense weight is a matrix: one decayed group
    g = opt.param_groups[0]
    assert g["betas"] == (0.9, 0.99) and g["weight_decay"] == 0.1 and g["lr"] == 2e-3
    assert all(p.dim() >= 2 for p in g["params"]) and len(g["params"]) > 0
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        total = clip(params, max_norm, *a, **k)
        norms.append((max_norm, float(total), float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])))))
        return total
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    tr.train_step()
    assert len(norms) == 1 and norms[0][0] == 1.0 and norms[0][2] <= 1.0 + 1e-4 < norms[0][1]
    # the defaults: torch's AdamW without decay, no clipping
    plain = build_run("text", _tcfg(4), TEXT, model_fields={"linear": "dense"})
    g = plain.updater.optimizer.param_groups[0]
    assert g["betas"] == (0.9, 0.999) and g["weight_decay"] == 0.0 and plain.updater.grad_clip == 0.0
    plain.train_step()
    assert len(norms) == 1


def test_weight_decay_spares_vectors():
    """nanoGPT's rule: parameters of 2 or more dimensions decay, biases and norm gains do not."""
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    groups = Updater(model, 1e-3, weight_decay=0.1).optimizer.param_groups
    assert [(g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in groups] == \
        [(0.1, [(3, 4)]), (0.0, [(3,), (3,), (3,)])]
    assert len(Updater(model, 1e-3).optimizer.param_groups) == 1


def test_adamw_state_loads_into_another_implementation():
    """A checkpoint's AdamW groups keep their hyperparameters but take the running optimizer's implementation
    flags: the state of a graphed CUDA run (capturable, fused) resumes on the CPU and the other way round."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    up = Updater(model, 1e-2, weight_decay=0.1)
    model(torch.randn(2, 4)).sum().backward()
    up.step()
    tensors, groups = up.state_tensors()
    saved = json.loads(groups)
    for g in saved:                                     # as a graphed run on CUDA saves them
        g.update(capturable=True, fused=True)
    fresh_model = nn.Linear(4, 3)
    fresh_model.load_state_dict(model.state_dict())
    fresh = Updater(fresh_model, 1e-2, weight_decay=0.1)
    fresh.load_state_tensors({k: v.clone() for k, v in tensors.items()}, json.dumps(saved), torch.device("cpu"))
    g = fresh.optimizer.param_groups[0]
    assert not g["capturable"] and not g["fused"] and g["weight_decay"] == 0.1
    assert int(fresh.optimizer.state[fresh_model.weight]["step"]) == 1
    for m, u in ((model, up), (fresh_model, fresh)):    # and the next step is the same one
        torch.manual_seed(1)
        m(torch.randn(2, 4)).sum().backward()
        u.step()
    assert torch.equal(model.weight, fresh_model.weight)


def test_resume_with_other_optimizer_settings_is_refused(tmp_path):
    _fit(tmp_path / "r", 2, fields={"linear": "dense"}, **NANOGPT)
    with pytest.raises(CheckpointError, match="weight-decay=0.1, not 0.0"):
        build_run("text", _tcfg(4, adam_beta2=0.99, grad_clip=1.0), TEXT, run_dir=tmp_path / "r", resume=True)


def test_held_schedule():
    held = _tcfg(20, schedule_hold=4, warmup_steps=4)
    plain = _tcfg(20, schedule_hold=1, warmup_steps=4)
    f = [held.rate_factor(s) for s in range(20)]
    assert [f[4 * k + i] for k in range(5) for i in range(4)] == [plain.rate_factor(4 * k + 1) for k in range(5)
                                                                  for _ in range(4)]   # each block: its middle step
    assert [plain.rate_factor(s) for s in range(20)] == [rate_factor("cosine", s, 20, 4, 0.1) for s in range(20)]
    with pytest.raises(ValueError, match="schedule-hold must be > 0"):
        TrainConfig(schedule_hold=0)
