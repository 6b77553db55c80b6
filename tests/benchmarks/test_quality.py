"""The quality study's machinery (benchmarks/quality.py) and the code corpus (benchmarks/make_code_corpus.py), tiny
shapes on the CPU: rows in parallel subprocesses, several seeds, resume after an interruption, a failing row."""
import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 60
# the nanogpt-full recipe (dropout, cosine held schedule, AdamW with decay and clipping) cut to a few steps
TINY_FULL = ["--recipe", "nanogpt-full", "--shape", "tiny", "--steps", "6", "--eval-every", "2", "--eval-batches", "1",
             "--final-eval-batches", "2", "--warmup-steps", "2", "--schedule-hold", "2", "--device", "cpu"]


def _evals(out: Path) -> dict:
    """(row, seed) -> its evaluations (the numbers only: steps, tokens, losses)."""
    got = {}
    for p in sorted((out / "rows").glob("*.json")):
        r = json.loads(p.read_text())
        got[r["name"], r["seed"]] = r["evals"]
    return got


def test_quality_two_rows_and_a_failing_one(tmp_path, load_benchmark):
    q = load_benchmark("quality")
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    rc = q.main([str(data), "--shape", "tiny", "--steps", "3", "--eval-at", "2", "--eval-batches", "1",
                 "--device", "cpu", "--rows", "bitnet,counter-b2-r0.5-g32,counter-b4-r0.5-g256",
                 "--out-dir", str(tmp_path / "out"), "--time-limit", "120"])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "quality-cpu.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["bitnet", "counter-b2-r0.5-g32", "counter-b4-r0.5-g256"]
    by = {r["name"]: r for r in res["rows"]}
    bad = by.pop("counter-b4-r0.5-g256")          # group 256 > d_model 128: recorded, the others go on
    assert bad["status"].startswith("error: ConfigError") and "group" in bad["status"]
    for r in by.values():
        assert r["status"] == "done", r["status"]
        assert r["seed"] == 0 and [e["step"] for e in r["evals"]] == [0, 2, 3]
        assert r["tokens_per_s"] > 0
    assert by["counter-b2-r0.5-g32"]["pure_ternary"] and by["counter-b2-r0.5-g32"]["float_weights"] == 0
    assert by["bitnet"]["state_bytes_per_weight"] > 10  # fp32 weights + two AdamW moments
    assert res["common_step"] == 3 and res["references"]["qat"] == "bitnet"
    assert res["summary"]["counter-b2-r0.5-g32"]["vs_qat"]["n"] == 1
    md = (tmp_path / "out" / "quality-cpu.md").read_text()
    assert "| bitnet |" in md and "vs QAT" in md and "counter-b4-r0.5-g256" in md.split("Problems:")[1]
    assert (tmp_path / "out" / "quality-cpu.png").exists()


def test_interrupted_study_resumes_to_the_uninterrupted_evals(tmp_path, load_benchmark):
    """2 rows x 2 seeds of the nanogpt-full recipe (dropout 0.2, held cosine, AdamW wd/clip), from a .gz: stopped
    mid-way (--stop-at, and a worker past its --time-limit deadline), then resumed by a second call; every
    evaluation equals an uninterrupted run's (in-process workers, one thread as the subprocesses)."""
    q = load_benchmark("quality")
    data = tmp_path / "text.txt.gz"
    data.write_bytes(gzip.compress(TEXT.encode()))
    rows, seeds = ["bitnet-lr2e-3", "counter-b4-r0.5-g64"], [0, 1]
    common = [str(data), *TINY_FULL, "--vocab", "byte", "--rows", ",".join(rows), "--seeds", "0,1",
              "--out-dir", str(tmp_path / "split")]
    q.main(common + ["--stop-at", "3", "--time-limit", "120"])
    first = json.loads((tmp_path / "split" / "quality-cpu.json").read_text())
    assert {r["status"] for r in first["rows"]} == {"paused"} and {r["step"] for r in first["rows"]} == {3}
    assert first["common_step"] == 2 and len(first["rows"]) == 4
    # a worker whose deadline has passed stops before its next step, with a checkpoint
    q.main(["--row", rows[0], "--seed", "1", "--device", "cpu", "--out-dir", str(tmp_path / "split"),
            "--deadline", "0"])
    assert json.loads((tmp_path / "split" / "rows" / f"{rows[0]}-s1.json").read_text())["status"] == "deadline"
    with pytest.raises(SystemExit):            # other settings in the same out dir are refused
        q.main(common[:-1] + [str(tmp_path / "split"), "--steps", "8"])
    q.main(common + ["--time-limit", "120", "--parallel", "2"])
    split = _evals(tmp_path / "split")
    res = json.loads((tmp_path / "split" / "quality-cpu.json").read_text())
    assert {r["status"] for r in res["rows"]} == {"done"} and res["common_step"] == 6
    assert all(r["calls"] == (3 if (r["name"], r["seed"]) == (rows[0], 1) else 2) for r in res["rows"])
    summary = res["summary"]["counter-b4-r0.5-g64"]
    assert summary["seeds"] == seeds and summary["curve"]["6"]["n"] == 2 and summary["vs_qat"]["n"] == 2
    # the uninterrupted run of the same study: its workers in this process
    ref = tmp_path / "straight"
    (ref / "rows").mkdir(parents=True)
    shutil.copy(tmp_path / "split" / "study.json", ref / "study.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for n in rows:
            for s in seeds:
                q.main(["--row", n, "--seed", str(s), "--device", "cpu", "--out-dir", str(ref)])
    finally:
        torch.set_num_threads(threads)
    straight = _evals(ref)
    assert straight.keys() == split.keys() and len(straight) == 4
    for k in straight:
        assert [e["step"] for e in straight[k]] == [0, 2, 4, 6]
        assert straight[k] == split[k], k
    final = split[rows[0], 0][-1]
    assert final["eval_batches"] == 2 and "val_loss_short" in final


def test_code_corpus_is_deterministic(tmp_path, load_benchmark):
    mk = load_benchmark("make_code_corpus")
    assert mk.main([str(tmp_path / "a.txt"), "--max-bytes", "300000"]) == 0
    assert mk.main([str(tmp_path / "b.txt"), "--max-bytes", "300000", "--gzip"]) == 0
    a = (tmp_path / "a.txt").read_bytes()
    b = gzip.decompress((tmp_path / "b.txt.gz").read_bytes())
    assert a == b and len(a) <= 300000 and a.decode("utf-8")
    info_a = json.loads((tmp_path / "a.txt.json").read_text())
    info_b = json.loads((tmp_path / "b.txt.gz.json").read_text())
    assert info_a["sha256"] == info_b["sha256"] and info_a["bytes"] == len(a) and info_a["files"] >= 1
    assert info_b["gzip_bytes"] == (tmp_path / "b.txt.gz").stat().st_size
    assert mk.main([str(tmp_path / "b2.txt"), "--max-bytes", "300000", "--gzip"]) == 0
    assert (tmp_path / "b2.txt.gz").read_bytes() == (tmp_path / "b.txt.gz").read_bytes()   # reproducible gzip
    names = [line[len("# ===== file: "):-len(" =====")] for line in a.decode().splitlines()
             if line.startswith("# ===== file: ")]
    assert names == sorted(names) and len(names) == info_a["files"]
    root = tmp_path / "lib"                      # the exclusions, on a tree of its own
    for rel in ("a.py", "pkg/b.py", "test/t.py", "pkg/tests/t.py", "idlelib/i.py", "lib2to3/l.py",
                "site-packages/s.py", "z.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x = 1\n" if rel != "pkg/b.py" else b"y = '\xff'")
    assert mk.main([str(tmp_path / "c.txt"), "--stdlib", str(root)]) == 0
    assert (tmp_path / "c.txt").read_text() == ("# ===== file: a.py =====\nx = 1\n"
                                                "# ===== file: pkg/b.py =====\ny = '\ufffd'\n")


def test_fast_settings_per_family(load_benchmark):
    """Ternary rows graphed unless the study says ``fast_ternary`` (older studies have no such key), float rows as
    ``fast_float`` says; nothing off CUDA or without ``--fast``."""
    q = load_benchmark("quality")
    st = {"fast": True, "fast_float": "compile+graph"}
    assert q.fast_settings(st, {}, "cuda:0") == {"cuda_graph": True}
    assert q.fast_settings(dict(st, fast_ternary="compile+graph"), {}, "cuda:1") == {"compile": True,
                                                                                    "cuda_graph": True}
    assert q.fast_settings(st, {"linear": "dense"}, "cuda") == {"compile": True, "cuda_graph": True}
    assert q.fast_settings(dict(st, fast_float="graph"), {"linear": "bitnet"}, "cuda") == {"cuda_graph": True}
    assert q.fast_settings(st, {}, "cpu") == {} and q.fast_settings(dict(st, fast=False), {}, "cuda") == {}


def test_merge_adds_another_studys_rows_and_refuses_other_settings(tmp_path, load_benchmark, capsys):
    """``--aggregate A --merge B/quality-cpu.json``: B's rows and command join A's report (as when a study's rows
    ran in calls with different out dirs); a report with another training setting is refused with exit code 2."""
    q = load_benchmark("quality")
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    common = ["--shape", "tiny", "--steps", "2", "--eval-at", "2", "--eval-batches", "1", "--device", "cpu",
              "--time-limit", "120"]
    assert q.main([str(data), *common, "--rows", "bitnet", "--out-dir", str(tmp_path / "a")]) == 0
    assert q.main([str(data), *common, "--rows", "counter-b2-r0.5-g32", "--out-dir", str(tmp_path / "b")]) == 0
    assert q.main(["--aggregate", str(tmp_path / "a"), "--merge", str(tmp_path / "b" / "quality-cpu.json")]) == 0
    res = json.loads((tmp_path / "a" / "quality-cpu.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["bitnet", "counter-b2-r0.5-g32"]
    assert res["meta"]["rows"] == ["bitnet", "counter-b2-r0.5-g32"] and len(res["meta"]["commands"]) == 2
    assert res["summary"]["counter-b2-r0.5-g32"]["vs_qat"]["n"] == 1       # paired with A's QAT row
    other = json.loads((tmp_path / "b" / "quality-cpu.json").read_text())
    other["meta"]["settings"]["steps"] = 3
    (tmp_path / "c.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit) as exc:
        q.main(["--aggregate", str(tmp_path / "a"), "--merge", str(tmp_path / "c.json")])
    assert exc.value.code == 2 and "setting steps=3 differs" in capsys.readouterr().err
    assert len(list((tmp_path / "a" / "rows").glob("*.json"))) == 2       # nothing written


def test_a_study_is_not_resumed_with_a_setting_it_recorded_and_this_call_left_at_its_default(tmp_path,
                                                                                          load_benchmark, capsys):
    """``fast_ternary`` is recorded only when not the default: a call that asks for the default must be refused,
    not resume the study's compile+graph rows silently (a GPU call was lost that way)."""
    q = load_benchmark("quality")
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    args = [str(data), "--shape", "tiny", "--steps", "2", "--eval-at", "2", "--eval-batches", "1", "--device", "cpu",
            "--rows", "counter-b2-r0.5-g32", "--out-dir", str(tmp_path / "s"), "--time-limit", "120"]
    assert q.main(args) == 0
    study = tmp_path / "s" / "study.json"
    old = json.loads(study.read_text())
    old["settings"]["fast_ternary"] = "compile+graph"            # as a CUDA study with --fast-ternary records it
    study.write_text(json.dumps(old))
    with pytest.raises(SystemExit) as exc:
        q.main(args)
    assert exc.value.code == 2 and "fast_ternary='compile+graph' (now None)" in capsys.readouterr().err


def test_fp8_row_suffixes_and_the_every_layer_flag(load_benchmark, monkeypatch):
    """``-fp8`` adds ``gradw_fp8`` to a ternary row, ``-fp8all`` also ``matmul_fp8``; a float row has neither; and
    ``--fp8-every-layer`` drops ``fp8_pays``'s and ``fp8_matmul_pays``'s thresholds in the process that runs a row."""
    q = load_benchmark("quality")
    from arbitor.ternary.ops import fp8
    assert q.resolve_row("counter-b5-r0.5-g128-fp8all") and q.resolve_row("bigint-g32-s16-fp8")
    all8 = q.ROWS["counter-b5-r0.5-g128-fp8all"][1]["ternary"]
    assert all8["gradw_fp8"] is True and all8["matmul_fp8"] is True and all8["counter_bits"] == 5
    grad8 = q.ROWS["bigint-g32-s16-fp8"][1]["ternary"]
    assert grad8["gradw_fp8"] is True and "matmul_fp8" not in grad8
    assert not q.resolve_row("dense-lr6e-4-fp8all")
    monkeypatch.setattr(fp8, "FP8_MIN_WEIGHTS", fp8.FP8_MIN_WEIGHTS)
    monkeypatch.setattr(fp8, "FP8_MIN_FEATURES", fp8.FP8_MIN_FEATURES)
    for flag in ([], ["--fp8-every-layer"]):
        args = q._parser().parse_args(["data.txt"] + flag)
        cmd = q.row_command(args, "bigint-g32-s16-fp8all", 1, "cuda:0", Path("out"), 1.0)
        assert ("--fp8-every-layer" in cmd) is bool(flag) and cmd[cmd.index("--row") + 1] == "bigint-g32-s16-fp8all"
    assert not fp8.fp8_pays(384, 384) and not fp8.fp8_matmul_pays(384, 384)
    q.fp8_every_layer()
    assert fp8.fp8_pays(384, 384) and not fp8.fp8_pays(384, 40)
    assert fp8.fp8_matmul_pays(384, 384) and not fp8.fp8_matmul_pays(384, 40)
