"""Multimodal pretraining: each modality learns alone, mixing follows the weights, weight 0 loads nothing."""
import json
import math
import re

import pytest
import torch

from arbitor.cli import main
from arbitor.config import ConfigError
from arbitor.data import BUNDLED_TEXT_PATH
from arbitor.kernel.ternary_audit import ternary_audit
from arbitor.pretrain import MODALITIES, PretrainConfig, build_pretrainer, load_modality

# a CPU-cheap model: one block, d_model 32, no LTI (the tiny preset otherwise)
FAST = dict(n_layers=1, d_model=32, lti_decays=())
STEPS = 30


def _weights(**on):
    return {m: float(on.get(m, 0.0)) for m in MODALITIES}


def _cfg(steps=STEPS, **on):
    return PretrainConfig(steps=steps, batch=4, ctx=16, weights=_weights(**on), data={"text": str(BUNDLED_TEXT_PATH)},
                          eval_interval=0, eval_batches=2, log_interval=0, codes=32)


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
    tr = build_pretrainer(_cfg(**{modality: 1.0}), overrides=FAST)
    assert ternary_audit(tr.model)["trainable_float_params"] == 0
    before = tr.evaluate()
    tr.fit(progress=False)
    after = tr.evaluate()
    key, kind, margin = MARGINS[modality]
    assert tr.modality_counts == {modality: STEPS}
    if kind == "drop":
        assert after[key] <= before[key] - margin, (before[key], after[key])
    else:
        assert after[key] <= margin * before[key], (before[key], after[key])
    if modality in ("image", "audio", "video"):
        # the codebook does not collapse onto one code; usage is measured on the validation windows
        usage = after[f"val/{modality}/code_usage"] * tr.model.vq[modality].num_embeddings
        assert usage >= 4 and after[f"val/{modality}/code_perplexity"] > 2.0, after
        assert math.isfinite(after[f"val/{modality}/vq_mse"])


def test_legacy_vq_mode_trains_and_is_audited():
    tr = build_pretrainer(PretrainConfig(steps=20, batch=4, ctx=16, weights=_weights(image=1), eval_interval=0,
                                         eval_batches=2, log_interval=0, codes=32, vq_mode="legacy"),
                          overrides=FAST)
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
    tr = build_pretrainer(_cfg(text=1, code=2, audio=1), overrides=FAST)
    n = 4000
    draws = [tr.sample_modality() for _ in range(n)]
    for m, p in {"text": 0.25, "code": 0.5, "audio": 0.25}.items():
        k = draws.count(m)
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(k - n * p) < 4 * sigma, (m, k, n * p)
    assert set(draws) == {"text", "code", "audio"}
    # chi-square with 2 degrees of freedom: 13.8 is the 0.1% critical value
    chi2 = sum((draws.count(m) - n * p) ** 2 / (n * p) for m, p in {"text": .25, "code": .5, "audio": .25}.items())
    assert chi2 < 13.8


def test_zero_weight_loads_no_data_of_that_modality(tmp_path):
    calls = []

    def recording_loader(name, *args):
        calls.append(name)
        return load_modality(name, *args)

    cfg = _cfg(text=1, audio=1)
    cfg.data.update({"image": str(tmp_path / "missing"), "video": str(tmp_path / "missing"),
                     "code": str(tmp_path / "missing")})                         # would raise if loaded
    tr = build_pretrainer(cfg, overrides=FAST, loader=recording_loader)
    assert sorted(calls) == ["audio", "text"]
    assert set(tr.datasets) == {"text", "audio"}
    assert set(tr.model.vq) == {"audio"} and "image" not in tr.model.decoders
    assert tr.model.cfg.vocab_size == 256 + 32
    tr.fit(steps=6, progress=False)
    assert set(tr.modality_counts) == {"text", "audio"}


def test_all_zero_weights_is_an_error():
    with pytest.raises(ConfigError, match="every modality weight is 0"):
        PretrainConfig(weights=_weights())


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
    from arbitor.checkpoint import load_checkpoint
    model_state, _, train_state, _, _ = load_checkpoint(run / "checkpoint.safetensors")
    assert train_state["step"] == 4 and "image" in train_state["modalities"]
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
