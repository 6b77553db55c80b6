"""Multimodal pretraining: each modality learns alone, mixing follows the weights, weight 0 loads nothing."""
import json
import math
import re

import pytest
import torch

from arbitor.cli import main
from arbitor.data import BUNDLED_TEXT_PATH, MODALITIES, load_modality
from arbitor.ternary.audit import ternary_audit
from arbitor.train import MultimodalConfig, TrainConfig, build_run
from arbitor.train import run as run_module

# a CPU-cheap model: one block, d_model 32, no LTI (the tiny preset otherwise), with the layer settings the
# thresholds below were set with (bigint at group 4, the default before issue 18)
FAST = dict(n_layers=1, d_model=32, lti_decays=(), ternary={"group_size": 4, "update_rule": "bigint"},
            embedding_group_size=4)
STEPS = 30


def _mm(codes=32, **on):
    """A multimodal config with the given modality weights (others 0)."""
    weights = {f"{m}_weight": float(on.get(m, 0.0)) for m in MODALITIES}
    return MultimodalConfig(text_data=str(BUNDLED_TEXT_PATH), codes=codes, **weights)


def _tcfg(steps=STEPS, **kw):
    return TrainConfig(**{**dict(steps=steps, batch=4, ctx=16, eval_interval=0, eval_batches=2, log_interval=0), **kw})


def _build(mm, tcfg=None, run_dir=None, resume=False, **fields):
    return build_run("multimodal", tcfg or _tcfg(), mm, None, run_dir, resume=resume, model_fields={**FAST, **fields})


# metric, and the improvement asserted after STEPS steps (measured: see docs/multimodal.md)
MARGINS = {
    "text": ("val/text/loss", "drop", 1.0),        # nats/token fall by >= 1.0 (5.9 -> ~3.5 measured)
    "code": ("val/code/loss", "drop", 1.0),
    "image": ("val/image/recon_mse", "ratio", 0.5),  # reconstruction error at most half of the untrained one
    "audio": ("val/audio/recon_mse", "ratio", 0.5),
    "video": ("val/video/recon_mse", "ratio", 0.5),
}


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_modality_alone_improves_its_metric(modality):
    tr = _build(_mm(**{modality: 1.0}))
    assert ternary_audit(tr.model)["trainable_float_params"] == 0
    before = tr.evaluate()
    tr.fit(progress=False)
    after = tr.evaluate()
    key, kind, margin = MARGINS[modality]
    assert tr.task.counts == {modality: STEPS}
    if kind == "drop":
        assert after[key] <= before[key] - margin, (before[key], after[key])
    else:
        assert after[key] <= margin * before[key], (before[key], after[key])
    if modality in ("image", "audio", "video"):
        # the codebook does not collapse onto one code; usage is measured on the validation windows
        usage = after[f"val/{modality}/code_usage"] * tr.model.vq[modality].num_embeddings
        assert usage >= 4 and after[f"val/{modality}/code_perplexity"] > 2.0, after
        assert math.isfinite(after[f"val/{modality}/vq_mse"])


def test_legacy_vq_rule_trains_and_is_audited():
    mm = MultimodalConfig(image_weight=1, text_weight=0, code_weight=0, audio_weight=0, video_weight=0, codes=32,
                          vq_update_rule="legacy")
    tr = _build(mm, _tcfg(20))
    rep = ternary_audit(tr.model)
    cb = tr.model.vq["image"]
    assert rep["state_bytes"]["T_accum"] >= cb.num_embeddings * cb.dim            # the codebook's int8 T_accum
    assert rep["state_bytes"]["E_accum"] == cb.num_embeddings * cb.n_groups * 2
    before = tr.evaluate()
    t0 = cb.T_packed.clone()
    tr.fit(progress=False)
    after = tr.evaluate()
    assert not torch.equal(cb.T_packed, t0)                                       # legacy trits flipped
    assert after["val/image/recon_mse"] <= 0.5 * before["val/image/recon_mse"]
    assert after["val/image/code_usage"] * cb.num_embeddings >= 4


def test_mixed_weights_sample_in_proportion():
    tr = _build(_mm(text=1, code=2, audio=1))
    n = 4000
    draws = [tr.task.sample_modality() for _ in range(n)]
    for m, p in {"text": 0.25, "code": 0.5, "audio": 0.25}.items():
        k = draws.count(m)
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(k - n * p) < 4 * sigma, (m, k, n * p)
    assert set(draws) == {"text", "code", "audio"}
    # chi-square with 2 degrees of freedom: 13.8 is the 0.1% critical value
    chi2 = sum((draws.count(m) - n * p) ** 2 / (n * p) for m, p in {"text": .25, "code": .5, "audio": .25}.items())
    assert chi2 < 13.8


def test_zero_weight_loads_no_data_of_that_modality(tmp_path, monkeypatch):
    calls = []

    def recording_loader(name, *args):
        calls.append(name)
        return load_modality(name, *args)

    monkeypatch.setattr(run_module, "load_modality", recording_loader)
    missing = str(tmp_path / "missing")                                     # would raise if loaded
    mm = MultimodalConfig(text_data=str(BUNDLED_TEXT_PATH), code_weight=0, image_weight=0, video_weight=0,
                          image_data=missing, video_data=missing, code_data=missing, codes=32)
    tr = _build(mm)
    assert sorted(calls) == ["audio", "text"]
    assert set(tr.task.datasets) == {"text", "audio"}
    assert set(tr.model.vq) == {"audio"} and "image" not in tr.model.decoders
    assert tr.model.cfg.vocab_size == 256 + 32
    tr.fit(steps=6, progress=False)
    assert set(tr.task.counts) == {"text", "audio"}


def test_all_zero_weights_is_an_error():
    with pytest.raises(ValueError, match="every modality weight is 0"):
        _mm()
    with pytest.raises(ValueError, match="--audio-weight must be >= 0"):
        _mm(audio=-1.0)


def test_resume_is_bit_exact(tmp_path):
    """A multimodal run cut after its step-4 checkpoint and resumed equals the straight run: every buffer,
    the samplers and every logged loss."""
    mm = _mm(codes=16, text=1, image=1, audio=1)
    tcfg = _tcfg(8, log_interval=1, schedule="cosine", warmup_steps=2)
    straight = _build(mm, tcfg, tmp_path / "straight")
    straight.fit(progress=False)
    _build(mm, tcfg, tmp_path / "cut").fit(steps=4, progress=False)
    resumed = _build(mm, tcfg, tmp_path / "cut", resume=True)
    assert resumed.step == 4
    resumed.fit(progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("vq.") and k.endswith("corr_accum") for k in a)
    assert all(torch.equal(v, resumed.task.rng_tensors()[k]) for k, v in straight.task.rng_tensors().items())
    losses = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                        if "loss" in r]
    assert losses(tmp_path / "straight") == losses(tmp_path / "cut") and len(losses(tmp_path / "cut")) == 8


def test_cli_run_writes_metrics_grid_and_checkpoint(tmp_path, capsys):
    run = tmp_path / "mm"
    rc = main(["pretrain", "--steps", "4", "--batch", "2", "--ctx", "16", "--text-data", str(BUNDLED_TEXT_PATH),
               "--text-weight", "1", "--code-weight", "0", "--image-weight", "1", "--audio-weight", "0",
               "--video-weight", "0", "--eval-interval", "2", "--log-interval", "1", "--save-interval", "2",
               "--codes", "16", "--run", str(run), "--no-progress"])
    assert rc == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if "val/image/recon_mse" in r]
    assert [r["step"] for r in vals] == [0, 2, 4]
    assert all("val/text/loss" in r and "val/image/code_usage" in r for r in vals)
    assert sum(1 for r in recs if "modality" in r) == 4
    assert (run / "image_recon.png").stat().st_size > 1000
    assert (run / "loss.png").exists() and (run / "checkpoint.safetensors").exists()
    from arbitor.train.checkpoint import load_checkpoint
    model_state, _, train_state, _, _ = load_checkpoint(run / "checkpoint.safetensors")
    assert train_state["step"] == 4 and "image" in train_state["task"]["modalities"]
    assert all(not v.is_floating_point() for k, v in model_state.items() if k.startswith("vq."))


def test_cli_no_save_prints_the_memory_lines(tmp_path, capsys):
    run = tmp_path / "smoke"
    rc = main(["pretrain", "--steps", "2", "--batch", "1", "--ctx", "4", "--text-data", str(BUNDLED_TEXT_PATH),
               "--text-weight", "1.0", "--code-weight", "0", "--image-weight", "0", "--audio-weight", "0",
               "--video-weight", "0", "--eval-interval", "0", "--log-interval", "0", "--save-interval", "0",
               "--no-save", "--run", str(run), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert re.search(r"^logical_ternary_weights \d+$", out, re.M)
    assert re.search(r"^training_state_mb \d+\.\d\d$", out, re.M)
    assert re.search(r"^after_cuda_mb [\d.]+$", out, re.M)
    steps = re.findall(r"^step (\d) alloc_mb ([\d.]+) reserved_mb ([\d.]+) peak_mb ([\d.]+)$", out, re.M)
    assert [s[0] for s in steps] == ["0", "1"]
    assert steps[0][1] == steps[1][1]                     # nothing from step 0 is alive in step 1
    assert float(steps[0][3]) > float(steps[0][1])
    assert not (run / "checkpoint.safetensors").exists()


def test_cli_bad_data_is_one_line_naming_the_folder(tmp_path, capsys):
    empty = tmp_path / "no_images"
    empty.mkdir()
    rc = main(["pretrain", "--steps", "1", "--text-weight", "0", "--code-weight", "0", "--audio-weight", "0",
               "--video-weight", "0", "--image-data", str(empty), "--run", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "no_images" in err and err.count("\n") == 1
    rc = main(["pretrain", "--image-weight", "-1"])
    assert rc == 2
