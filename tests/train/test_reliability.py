"""Reliability (docs/reliability.md): a checkpoint nobody corrupts silently, a resume that is exact or refuses,
one line and exit code 2 for every CLI failure, and fuzzing of the loader and the numeric flags."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arbitor.cli import UserError, build_parser
from arbitor.train import ModelSettings, MultimodalConfig, TextConfig, TrainConfig
from arbitor.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from arbitor.train.settings import from_args

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--batch", "2", "--ctx", "16", "--max-chars", "20000", "--eval-interval", "2", "--eval-batches", "1",
         "--no-progress"]


def cli(args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "arbitor", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert "\n" not in err and err.startswith("arbitor: error:"), err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_cli):
    """A 4-step text run (checkpoint every 2 steps) and a 2-step pretrain run."""
    d = tmp_path_factory.mktemp("runs")
    assert run_cli(["train", "--steps", "4", *FLAGS, "--run", "t"], d) == 0
    assert run_cli(["pretrain", "--steps", "2", "--batch", "2", "--ctx", "16", "--eval-batches", "1", "--no-progress",
                    "--code-weight", "0", "--audio-weight", "0", "--video-weight", "0", "--run", "p"], d) == 0
    return d


def _patch(src: Path, dst: Path, old: bytes, new: bytes) -> None:
    raw = src.read_bytes()
    assert raw.count(old) >= 1 and len(old) == len(new)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(raw.replace(old, new, 1))


# ---------------------------------------------------------------- 1. the digest covers the header
def test_editing_the_step_in_the_header_is_refused(trained, tmp_path):
    bad = tmp_path / CHECKPOINT_NAME
    _patch(trained / "runs/t" / CHECKPOINT_NAME, bad, b'\\"step\\": 4', b'\\"step\\": 9')
    with pytest.raises(CheckpointError, match="its header .* changed after it was written"):
        load_checkpoint(bad)


def test_renaming_or_changing_a_tensor_is_refused(trained, tmp_path):
    src = trained / "runs/t" / CHECKPOINT_NAME
    bad = tmp_path / CHECKPOINT_NAME
    _patch(src, bad, b"model.blocks.0.attn.q.E", b"model.blocks.0.attn.k.E")   # a duplicate name: unparsable
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    raw = bytearray(src.read_bytes())
    raw[-5] ^= 0x01                                    # the last tensor's bytes
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="its tensors .* changed"):
        load_checkpoint(bad)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_checkpoints_are_refused_or_load(trained, tmp_path_factory, data):
    """Random byte flips and truncations: every one is a CheckpointError (or, were a flip harmless, a correct
    load) -- never another exception, a crash or a hang."""
    raw = bytearray((trained / "runs/t" / CHECKPOINT_NAME).read_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "header"]))
    if kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        hi = min(len(raw), 8 + int.from_bytes(raw[:8], "little")) if kind == "header" else len(raw)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, hi - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    path = tmp_path_factory.mktemp("fuzz") / CHECKPOINT_NAME
    path.write_bytes(bytes(raw))
    try:
        model_state, *_ = load_checkpoint(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    ref = load_checkpoint(trained / "runs/t" / CHECKPOINT_NAME)[0]
    assert all(torch.equal(model_state[k], ref[k]) for k in ref)


@pytest.mark.parametrize("header", [
    b'{"__metadata__": {"format": "arbitor-checkpoint-3", "train_state": "' + b"[" * 5000 + b'"}}',
    b'{"__metadata__": {"format": 12}}',
    b'[1, 2, 3]',
    b'{"__metadata__": {"format": "arbitor-checkpoint-2", "model_config": "{}", "train_state": "{\\"step\\": '
    + b"9" * 5000 + b'}"}}',
])
def test_hostile_headers_are_refused_without_a_crash(tmp_path, header):
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    path.write_bytes((2 ** 40).to_bytes(8, "little") + header)       # a length past the end of the file
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


# ---------------------------------------------------------------- 2. resume is exact or refuses
def test_changing_the_cosine_horizon_needs_inexact_resume(tmp_path, run_cli):
    flags = ["train", *FLAGS, "--schedule", "cosine", "--run", "c"]
    assert run_cli([*flags, "--steps", "2"], tmp_path) == 0
    proc = cli([*flags, "--steps", "4", "--resume"], tmp_path)
    one_line_exit_2(proc, "--steps changed from 2 to 4 under the cosine schedule", "--inexact-resume")
    assert run_cli([*flags, "--steps", "4", "--resume", "--inexact-resume"], tmp_path) == 0
    state = load_checkpoint(tmp_path / "runs/c" / CHECKPOINT_NAME)[2]
    assert state["inexact_resumes"] == [{"step": 2, "changed": [
        "--steps changed from 2 to 4 under the cosine schedule (its horizon moves)"]}]
    # the constant schedule has no horizon: more steps continue exactly
    assert run_cli(["train", *FLAGS, "--run", "k", "--steps", "2"], tmp_path) == 0
    assert run_cli(["train", *FLAGS, "--run", "k", "--steps", "4", "--resume"], tmp_path) == 0


# ---------------------------------------------------------------- 3. stale temp files, 5. the lock, 6. metrics
def test_stale_temp_files_are_removed_on_the_next_load(trained, tmp_path, run_cli):
    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    for f in ("checkpoint.safetensors", "metrics.jsonl", "config.json"):
        (run / f).write_bytes((trained / "runs/t" / f).read_bytes())
    stale = run / ".checkpoint.safetensors.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert run_cli(["train", *FLAGS, "--steps", "5", "--run", "t", "--resume"], tmp_path) == 0
    assert not stale.exists()


def test_a_second_writer_is_refused_at_once(trained, tmp_path):
    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"l = FileLock({str(run / '.lock')!r}); l.acquire(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = cli(["train", *FLAGS, "--steps", "2", "--run", "t"], tmp_path)
        one_line_exit_2(proc, "is in use by another arbitor process")
    finally:
        holder.kill()


def test_a_torn_last_metrics_line_is_dropped_and_a_damaged_one_named(trained, tmp_path, run_cli):
    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    for f in ("checkpoint.safetensors", "config.json"):
        (run / f).write_bytes((trained / "runs/t" / f).read_bytes())
    good = (trained / "runs/t" / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(good + '{"step": 5, "lo')
    assert run_cli(["train", *FLAGS, "--steps", "5", "--run", "t", "--resume"], tmp_path) == 0
    assert all(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())
    (run / "metrics.jsonl").write_text('{"step": 0}\n{not json}\n' + good)
    proc = cli(["train", *FLAGS, "--steps", "6", "--run", "t", "--resume"], tmp_path)
    one_line_exit_2(proc, "metrics.jsonl line 2 is not a JSON record")


# ---------------------------------------------------------------- 4. and 7. one line, exit code 2
@pytest.mark.parametrize("args,needle", [
    (["sample", "--run", "t", "--prompt", ""], "--prompt is empty"),
    (["sample", "--run", "p"], "'multimodal' run; sampling needs a text run"),
    (["train", "--run", "p", "--resume", "--steps", "3"], "is a 'multimodal' run, not a 'text' run"),
    (["sample", "--run", "t", "--device", "warp9"], "is not a torch device"),
    (["train", "--max-chars", "0"], "--max-chars: must be > 0"),
    (["train", "--max-chars", "-1"], "--max-chars"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--steps", "10", "--warmup-steps", "50", "--schedule", "cosine"], "must not exceed --steps"),
    (["train", "--warmup-steps", "5"], "applies to --schedule cosine only"),
    (["train", "--grad-accum", "500"], "--grad-accum"),
])
def test_cli_failures_are_one_line_exit_2(trained, args, needle):
    one_line_exit_2(cli(args, trained), needle)


def test_cuda_device_without_cuda_is_one_line(trained):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_exit_2(cli(["sample", "--run", "t", "--device", "cuda"], trained), "CUDA is not available")


def test_run_naming_a_file_is_one_line(trained):
    (trained / "afile").write_text("x")
    one_line_exit_2(cli(["train", "--run", "./afile", "--steps", "1"], trained), "is a file, not a run directory")


def test_sample_writes_utf8_whatever_the_locale(trained):
    env = dict(os.environ, PYTHONPATH=str(ROOT), LC_ALL="C", LANG="C", PYTHONIOENCODING="ascii")
    proc = subprocess.run([sys.executable, "-m", "arbitor", "sample", "--run", "t", "--prompt", "é", "--tokens", "40"],
                          cwd=trained, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc.stdout.decode("utf-8")                # valid UTF-8 bytes


# ---------------------------------------------------------------- hypothesis over numeric flags
NUMERIC = {"train": ["--steps", "--batch", "--ctx", "--eval-interval", "--eval-batches", "--log-interval",
                     "--save-interval", "--seed", "--warmup-steps", "--min-rate-ratio", "--max-chars", "--grad-accum",
                     "--state-check-interval", "--dist-timeout", "--group-size", "--strength", "--counter-bits",
                     "--counter-rate"]}
VALUES = st.one_of(st.integers(-2 ** 70, 2 ** 70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                   st.sampled_from(["", "nan", "-inf", "1e999", "0x10", "3.5", "abc", "-0", "1_000"]))


@settings(max_examples=300, deadline=None)
@given(flag=st.sampled_from(NUMERIC["train"]), value=VALUES)
def test_numeric_flags_are_valid_or_one_line_errors(flag, value):
    from arbitor.train.run import TASK_CONFIGS
    try:
        args = build_parser().parse_args(["train", f"{flag}={value}"])
        cfgs = [from_args(TrainConfig, args), from_args(TASK_CONFIGS["text"], args), from_args(ModelSettings, args)]
    except (UserError, ValueError) as exc:
        msg = str(exc)
        assert "\n" not in msg and flag.lstrip("-").split("-")[0] in msg.replace("_", "-"), msg
        return
    assert all(c is not None for c in cfgs)


def test_multimodal_config_flags_are_validated():
    with pytest.raises(ValueError, match="--image-weight"):
        MultimodalConfig(image_weight=-1)
    with pytest.raises(ValueError, match="--max-chars"):
        TextConfig(max_chars=0)


# ---------------------------------------------------------------- fault injection
def test_killed_training_always_resumes_bit_exactly(tmp_path):
    """SIGKILL at random moments after the first checkpoint (benchmarks/fault_injection.py; 100 kills in
    docs/reliability.md): the last checkpoint loads, the resumed run equals the straight run bit for bit."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "benchmarks" / "fault_injection.py")
    fi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fi)
    rows = fi.run_trials(3, 1.0, seed=1, workdir=tmp_path)["trials"]
    for r in rows:
        assert r["loaded"] is not False and r["bit_exact"] is True and not r.get("error"), r
        assert r["stale_temps_left"] == 0
