"""``TernaryDataParallel``'s overlap (``parallel.py``) in one process with a gloo group of one: when its
buckets are sent, and that the state does not depend on it. The multi-process contract is
``tests/train/test_distributed.py``."""
import pytest
import torch
import torch.distributed as dist
from torch import nn

from arbitor.ternary.layer import TernaryScaleTensor
from arbitor.ternary.parallel import TernaryDataParallel


class TwiceUsed(nn.Module):
    """``b`` runs twice per forward, as a head over two loss chunks does: two ballots a pass."""

    def __init__(self) -> None:
        super().__init__()
        self.a = TernaryScaleTensor(16, 16, 4, seed=1, update_rule="counter")
        self.b = TernaryScaleTensor(16, 3, 4, seed=2, update_rule="counter")

    def forward(self, x):
        h = self.a(x)
        return self.b(h[:2]).sum() + 2 * self.b(h[2:]).sum()


@pytest.fixture()
def group_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _steps(static_graph: bool, steps: int = 3, sent_during_backward: list | None = None, passes: int = 2):
    torch.manual_seed(0)
    model = TwiceUsed()
    tdp = TernaryDataParallel(model, micro_batches=2, passes=passes, static_graph=static_graph)
    for s in range(steps):
        for j in range(2):
            x = torch.randn(4, 16, generator=torch.Generator().manual_seed(10 * s + j))
            with tdp.micro_batch(j):
                model(x).backward()
        if sent_during_backward is not None:
            sent_during_backward.append(len(tdp._launched))      # buckets already sent when backward ends
        tdp.step()
    return model.state_dict(), len(tdp._buckets)


def test_static_graph_overlaps_from_the_second_step_and_changes_nothing(group_of_one):
    sent: list = []
    learned, n_buckets = _steps(True, sent_during_backward=sent)
    plain, _ = _steps(False)
    assert sent == [0, n_buckets, n_buckets]   # step 1 learns the counts; later steps send during backward
    assert all(torch.equal(learned[k], plain[k]) for k in plain)


def test_static_graph_refuses_a_step_with_more_ballots(group_of_one):
    torch.manual_seed(0)
    model = TwiceUsed()
    tdp = TernaryDataParallel(model, micro_batches=1, passes=3, static_graph=True)
    x = torch.randn(4, 16)
    with tdp.micro_batch(0):
        model(x).backward()
    tdp.step()
    with pytest.raises(RuntimeError, match="cast 3 ballots in the last micro-batch, 2 in the first step"):
        with tdp.micro_batch(0):
            (model(x) + model.b(torch.randn(1, 16)).sum()).backward()


def test_state_digest_does_not_depend_on_its_chunking(monkeypatch):
    """``state_digest`` widens a buffer to int64 chunk by chunk (no 8x copy of a large state): same value."""
    import arbitor.ternary.parallel as parallel
    layer = TernaryScaleTensor(300, 70, 4, seed=3, update_rule="counter")
    whole = int(parallel.state_digest(layer))
    monkeypatch.setattr(parallel, "_DIGEST_CHUNK", 7)
    assert int(parallel.state_digest(layer)) == whole
    layer.T_packed.view(-1)[123] ^= 1
    assert int(parallel.state_digest(layer)) != whole
