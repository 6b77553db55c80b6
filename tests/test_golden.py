"""The golden fingerprints (``tests/golden``): the pinned CPU runs give bit-identical buffers and losses.

Recorded on the pre-refactor main (issue 12); only the counter rule's ``flip_key`` buffer was renamed
``hash_key`` since (same bytes). A change that alters the numerics on purpose re-records them
(``python tests/golden/fingerprints.py --record``) in the same commit and says why.
"""
import json
import shutil

import pytest

from golden.fingerprints import CASES, GOLDEN, fingerprint, run_case, run_pinned

RECORDED = json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned_run_is_bit_identical_to_the_recorded_one(name):
    want = RECORDED["cases"][name]
    assert want["args"] == CASES[name], "the recorded command differs from the test's: re-record on purpose"
    got = run_case(name)
    assert got["buffers"].keys() == want["buffers"].keys()
    changed = [k for k in want["buffers"] if got["buffers"][k] != want["buffers"][k]]
    assert not changed, f"{len(changed)} buffers changed, e.g. {changed[:5]}"
    assert got["metrics"] == want["metrics"]


def test_an_arbitor_0_1_checkpoint_resumes_bit_exactly(tmp_path):
    """``tests/golden/v1``: a counter-rule run written by arbitor 0.1 (format 1, the pre-refactor main) at step 3,
    and the fingerprint of the same run trained straight to step 6 by 0.1. Resumed by this version through the
    documented mapping (``checkpoint.upgrade_v1``), it lands on the same bits."""
    src = GOLDEN.parent / "v1"
    shutil.copy(src / "text.txt", tmp_path / "text.txt")
    shutil.copytree(src / "run", tmp_path / "runs" / "run3")
    run_pinned(["train", "--text-data", "text.txt", "--vocab", "char", "--steps", "6", "--batch", "4", "--ctx", "16",
                "--eval-interval", "0", "--eval-batches", "1", "--seed", "5", "--device", "cpu", "--run", "run3",
                "--resume", "--no-progress"], cwd=tmp_path)
    got = fingerprint(tmp_path / "runs" / "run3")
    want = json.loads((src / "straight-6-steps.json").read_text())
    assert got["buffers"] == want["buffers"]
    assert got["metrics"][-2:] == want["metrics"][-2:]          # the step-6 train and validation records
    assert got["metrics"][0] == want["metrics"][0]              # the step-0 evaluation, kept from the 0.1 run
