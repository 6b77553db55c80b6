"""The command line: train / sample / audit, and one-line errors for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arbitor.cli import main
from arbitor.data import BUNDLED_TEXT_PATH

REPO = Path(__file__).resolve().parents[1]
TEXT = str(BUNDLED_TEXT_PATH)


def _err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    return rc, lines


@pytest.mark.parametrize("argv,needle", [
    (["train", "--text-data", "/no/such/file.txt"], "not found"),
    (["train", "--text-data", "NONUTF8"], "not UTF-8"),
    (["train", "--text-data", TEXT, "--ctx", "4000"], "ctx=4000 is too large"),
    (["train", "--text-data", TEXT, "--preset", "gigantic"], "unknown preset 'gigantic'"),
    (["train", "--text-data", TEXT, "--group-size", "6"], "power of two"),
    (["train", "--text-data", TEXT, "--resume"], "--resume needs --run"),
    (["train", "--text-data", TEXT, "--run", "RUNS/nothing", "--resume"], "no checkpoint"),
    (["train", "--text-data", TEXT, "--device", "cuda:7"], "CUDA"),
    (["train", "--text-data", TEXT, "--backend", "triton"], "needs CUDA"),
    (["train", "--text-data", TEXT, "--steps", "0"], "must be > 0"),
    (["train", "--text-data", TEXT, "--update-rule", "counter", "--counter-bits", "3"], "--counter-bits: invalid choice"),
    (["train", "--text-data", TEXT, "--update-rule", "adam"], "--update-rule: invalid choice"),
    (["train", "--text-data", TEXT, "--counter-rate", "bad"], "--counter-rate: expected a number or auto, got 'bad'"),
    (["train", "--text-data", TEXT, "--counter-rate", "65"], "--counter-rate: must be in [0, 64] or auto, got 65"),
    (["train", "--text-data", TEXT, "--recompute-blocks", "1"], "needs activation_checkpointing=True"),
    (["train", "--text-data", TEXT, "--activation-checkpointing", "--recompute-blocks", "3"],
     "recompute_blocks must be an int in [0, n_layers=2]"),
    (["train", "--text-data", TEXT, "--recompute-blocks", "-1"], "--recompute-blocks: must be >= 0, got -1"),
    (["sample", "--run", "RUNS/nothing"], "run directory not found"),
    (["audit", "--preset", "gigantic"], "unknown preset"),
    (["audit"], "--layer IN OUT or --preset NAME"),
])
def test_bad_input_gives_one_line_error(capsys, tmp_path, argv, needle):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 na\xefve ".encode("latin-1") * 50)
    argv = [str(bad) if a == "NONUTF8" else a.replace("RUNS", str(tmp_path)) for a in argv]
    if argv[0] == "train":
        argv += ["--runs-dir", str(tmp_path), "--no-progress"]
    if ("cuda:7" in argv or "triton" in argv) and __import__("torch").cuda.is_available():
        pytest.skip("CUDA present")
    if "triton" in argv and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 lets Triton run on the CPU")
    rc, lines = _err(capsys, argv)
    assert rc == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("arbitor: error:") and needle in lines[0], lines[0]


def test_train_sample_resume_roundtrip(capsys, tmp_path):
    base = ["train", "--text-data", TEXT, "--ctx", "32", "--batch", "4", "--eval-interval", "5",
            "--eval-batches", "2", "--run", "r", "--runs-dir", str(tmp_path), "--no-progress"]
    assert main(base + ["--steps", "10"]) == 0
    run = tmp_path / "r"
    for name in ("metrics.jsonl", "loss.png", "config.json", "checkpoint.safetensors"):
        assert (run / name).stat().st_size > 0, name
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 5, 10] and all(r["val_bpb"] > 0 for r in evals)
    assert all({"loss", "tokens_per_s", "mem_mb"} <= set(r) for r in recs if "loss" in r)
    # training again into the same run without --resume is refused, the checkpoint kept
    before = (run / "checkpoint.safetensors").read_bytes()
    rc, lines = _err(capsys, base + ["--steps", "12"])
    assert rc == 2 and "already exists" in lines[0]
    assert (run / "checkpoint.safetensors").read_bytes() == before
    assert main(base + ["--steps", "12", "--resume"]) == 0
    assert json.loads((run / "config.json").read_text())["step"] == 12
    capsys.readouterr()
    assert main(["sample", "--run", "r", "--runs-dir", str(tmp_path), "--prompt", "The ", "--tokens", "20",
                 "--temperature", "0.8", "--top-k", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The ") and len(out.encode()) >= len("The ") + 20 - 8  # replacement chars may merge bytes
    # greedy sampling is deterministic
    main(["sample", "--run", str(run), "--prompt", "a", "--tokens", "15", "--temperature", "0"])
    g1 = capsys.readouterr().out
    main(["sample", "--run", str(run), "--prompt", "a", "--tokens", "15", "--temperature", "0", "--seed", "3"])
    assert capsys.readouterr().out == g1


@pytest.mark.parametrize("name", ["tiny", "small"])  # every preset's audit: tests/test_model.py
def test_audit_preset_prints_zero_trainable_floats(capsys, name):
    assert main(["audit", "--preset", name, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["trainable_float_params"] == 0 and rep["logical_ternary_weights"] > 0


def test_audit_layer_still_works(capsys):
    assert main(["audit", "--layer", "64", "32"]) == 0
    assert "trainable float params" in capsys.readouterr().out


def test_training_script_accepts_spec_flags(tmp_path):
    cmd = [sys.executable, str(REPO / "training" / "text.py"), "--steps", "3", "--batch", "2", "--ctx", "16",
           "--eval-interval", "2", "--run", str(tmp_path / "spec"), "--text-data", TEXT, "--preset", "tiny",
           "--group-size", "8", "--strength", "4.0", "--backend", "torch", "--device", "cpu", "--seed", "1",
           "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "spec" / "config.json").read_text())
    t = cfg["model"]["ternary"]
    assert t["group_size"] == 8 and t["strength"] == 4.0 and t["backend"] == "torch"
    r = subprocess.run(cmd[:-1] + ["--resume", "--steps", "4", "--no-progress"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "starting at step 3 of 4" in r.stdout
    r = subprocess.run([sys.executable, "-m", "arbitor", "train", "--text-data", str(tmp_path / "missing.txt")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not found" in r.stderr


def test_train_with_the_counter_rule(capsys, tmp_path):
    argv = ["train", "--text-data", TEXT, "--ctx", "32", "--batch", "4", "--steps", "3", "--eval-interval", "0",
            "--run", "c", "--runs-dir", str(tmp_path), "--no-progress", "--update-rule", "counter",
            "--counter-bits", "4", "--counter-rate", "0.5", "--group-size", "32"]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())["model"]["ternary"]
    assert (cfg["update_rule"], cfg["counter_bits"], cfg["counter_rate"]) == ("counter", 4, 0.5)


def test_counter_rate_auto_and_explicit(capsys, tmp_path):
    base = ["train", "--text-data", TEXT, "--ctx", "32", "--batch", "4", "--steps", "3", "--eval-interval", "0",
            "--eval-batches", "1", "--runs-dir", str(tmp_path), "--no-progress"]

    def cfg(run):
        return json.loads((tmp_path / run / "config.json").read_text())

    assert main(base + ["--run", "auto", "--counter-rate", "auto"]) == 0      # 0.12 passes: rate 1
    out = capsys.readouterr().out
    assert out.count("counter_rate auto -> 1.0 (0.12 passes over 3,107 training tokens") == 1
    assert cfg("auto")["model"]["ternary"]["counter_rate"] == 1.0
    assert cfg("auto")["resolved_settings"]["counter_rate"]["value"] == 1.0
    assert main(base + ["--run", "r07", "--counter-rate", "0.7"]) == 0
    assert "counter_rate auto" not in capsys.readouterr().out
    assert cfg("r07")["model"]["ternary"]["counter_rate"] == 0.7 and cfg("r07")["resolved_settings"] == {}
    rc, lines = _err(capsys, base + ["--run", "auto", "--steps", "4", "--resume", "--counter-rate", "0.7"])
    assert rc == 2 and len(lines) == 1 and "counter_rate=1.0, you asked for 0.7" in lines[0]


def test_audit_with_the_counter_rule(capsys):
    assert main(["audit", "--layer", "64", "32", "--group-size", "32", "--update-rule", "counter", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["state_bytes"]["C_packed"] == 32 * (64 // 2 + 64 // 8)   # 5-bit counters by default: 2 planes
    assert main(["audit", "--layer", "64", "32", "--update-rule", "counter", "--counter-bits", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state_bytes"]["C_packed"] == 64 * 32 // 2


def test_train_with_some_blocks_recomputed(capsys, tmp_path):
    """``--activation-checkpointing --recompute-blocks 1``: the run's config records both, and a resume that asks
    for another count is refused (the compiled recompute need not be bit-equal to a stored forward)."""
    base = ["train", "--text-data", TEXT, "--ctx", "32", "--batch", "4", "--eval-interval", "0", "--run", "rb",
            "--runs-dir", str(tmp_path), "--no-progress", "--activation-checkpointing"]
    assert main(base + ["--steps", "2", "--recompute-blocks", "1"]) == 0
    cfg = json.loads((tmp_path / "rb" / "config.json").read_text())["model"]
    assert (cfg["activation_checkpointing"], cfg["recompute_blocks"]) == (True, 1)
    capsys.readouterr()
    rc, lines = _err(capsys, base + ["--steps", "3", "--resume", "--recompute-blocks", "2"])
    assert rc == 2 and len(lines) == 1 and "recompute_blocks=1, you asked for 2" in lines[0], lines
