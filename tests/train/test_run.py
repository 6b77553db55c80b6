"""run.py's ``counter_rate="auto"``: resolved once from the run's planned passes, stored, kept on resume."""
import json

import pytest
import torch

from arbitor.data import BUNDLED_TEXT_PATH
from arbitor.ternary.rules.counter import AUTO_RATE_PASSES
from arbitor.ternary.step import ternary_layers
from arbitor.train import ModelSettings, MultimodalConfig, TextConfig, TrainConfig, build_run
from arbitor.train.checkpoint import CheckpointError
from arbitor.train.run import planned_passes

TEXT = str(BUNDLED_TEXT_PATH)
TRAIN_TOKENS = 3107          # the bundled text's 90 % training split, byte vocabulary


def _tcfg(steps, **kw):
    return TrainConfig(steps=steps, batch=4, ctx=32, eval_interval=0, eval_batches=2, seed=7, log_interval=1, **kw)


def _build(tcfg, run_dir=None, resume=False, settings=None, **fields):
    return build_run("text", tcfg, TextConfig(text_data=TEXT), settings, run_dir, resume=resume, model_fields=fields)


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def _rates(trainer):
    return {m.rule.counter_rate for m in ternary_layers(trainer.model) if getattr(m, "rule", None) is not None
            and m.rule.name == "counter"}


@pytest.mark.parametrize("steps,grad_accum,rate", [
    (728, 1, 1.0),       # 728 x 4 x 32 / 3107 = 29.99 passes
    (729, 1, 0.5),       # 30.03 passes
    (400, 1, 1.0),       # 16.5 passes ...
    (400, 2, 0.5),       # ... and 33.0 with two micro-batches a step
])
def test_auto_rate_follows_the_planned_passes(steps, grad_accum, rate):
    tr = _build(_tcfg(steps, grad_accum=grad_accum))
    assert tr.task.train_tokens() == TRAIN_TOKENS
    passes = steps * 4 * 32 * grad_accum / TRAIN_TOKENS
    assert planned_passes(tr.tcfg, tr.task) == pytest.approx(passes)
    assert (passes > AUTO_RATE_PASSES) == (rate == 0.5)
    assert tr.model.cfg.ternary.counter_rate == rate and _rates(tr) == {rate}
    rec = tr.resolved_settings["counter_rate"]
    assert (rec["asked"], rec["value"], rec["train_tokens"]) == ("auto", rate, TRAIN_TOKENS)
    assert rec["passes"] == pytest.approx(passes)
    assert tr.start_lines == [f"counter_rate auto -> {rate} ({passes:.2f} passes over {TRAIN_TOKENS:,} training "
                              "tokens; 0.5 above 30 passes, else 1.0)"]


@pytest.mark.parametrize("settings,fields,rate", [
    (ModelSettings(counter_rate=0.7), {}, 0.7),                           # an explicit rate stays
    (None, {"ternary": {"counter_rate": 2.0}}, 2.0),                     # the Python API's too (benchmarks/quality.py)
    (ModelSettings(counter_rate=None), {}, 1.0),                          # None: the preset's
    (ModelSettings(counter_rate=0.7), {"ternary": {"counter_rate": "auto"}}, 0.5),
])
def test_an_explicit_rate_is_not_resolved(settings, fields, rate):
    tr = _build(_tcfg(2000), settings=settings, **fields)                # 82 passes
    assert tr.model.cfg.ternary.counter_rate == rate and _rates(tr) == {rate}
    assert bool(tr.resolved_settings) == (rate == 0.5) and bool(tr.start_lines) == (rate == 0.5)


@pytest.mark.parametrize("settings,fields", [(ModelSettings(update_rule="bigint"), {}), (None, {"linear": "dense"})],
                         ids=["bigint", "dense"])
def test_runs_off_the_counter_rule_are_unaffected(settings, fields):
    tr = _build(_tcfg(2000), settings=settings, **fields)
    assert tr.model.cfg.ternary.counter_rate == 1.0         # TernaryConfig's default, untouched
    assert tr.resolved_settings == {} and tr.start_lines == []


def test_multimodal_runs_resolve_to_rate_1():
    mm = MultimodalConfig(text_data=TEXT, code_data=TEXT, image_weight=0, audio_weight=0, video_weight=0)
    tr = build_run("multimodal", TrainConfig(steps=100_000, batch=4, ctx=16), mm)
    assert planned_passes(tr.tcfg, tr.task) is None
    assert tr.model.cfg.ternary.counter_rate == 1.0
    assert tr.resolved_settings["counter_rate"]["passes"] is None
    assert "no single number of passes for a multimodal run" in tr.start_lines[0]


def test_auto_rate_is_stored_and_resume_keeps_it_bit_exactly(tmp_path, capsys):
    straight = _build(_tcfg(1000), tmp_path / "straight")                  # 41 passes planned: rate 0.5
    straight.fit(steps=6, progress=False)
    split = _build(_tcfg(1000), tmp_path / "split")
    split.fit(steps=3, progress=False)
    out = capsys.readouterr().out
    assert out.count("counter_rate auto -> 0.5 (41.20 passes over 3,107 training tokens") == 2
    cfg = json.loads((tmp_path / "split" / "config.json").read_text())
    assert cfg["model"]["ternary"]["counter_rate"] == 0.5 and cfg["resolved_settings"]["counter_rate"]["value"] == 0.5
    # resumed with a --steps whose passes would resolve to 1.0: the stored rate is kept, not re-resolved
    resumed = _build(_tcfg(6), tmp_path / "split", resume=True)
    assert resumed.model.cfg.ternary.counter_rate == 0.5 and _rates(resumed) == {0.5}
    assert resumed.resolved_settings["counter_rate"]["value"] == 0.5 and resumed.start_lines == []
    resumed.fit(progress=False)
    assert "counter_rate" not in capsys.readouterr().out
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "split")
    assert json.loads((tmp_path / "split" / "config.json").read_text())["resolved_settings"] == cfg["resolved_settings"]
    # the same rate asked for explicitly is fine; another one is refused like any other setting
    _build(_tcfg(6), tmp_path / "split", resume=True, settings=ModelSettings(counter_rate=0.5)).close()
    with pytest.raises(CheckpointError, match="counter_rate=0.5, you asked for 0.7"):
        _build(_tcfg(8), tmp_path / "split", resume=True, settings=ModelSettings(counter_rate=0.7))
