"""``TrainConfig.cuda_graph`` / ``compile`` and ``GraphedStep``.

CPU: the settings that cannot be graphed are refused with one line (Trainer and CLI, exit 2).
GPU (``-m gpu``, through the device tool): a graph-replayed run leaves the integer state of an eager run
bit for bit, for both update rules, and reports the same losses; a batch of another shape is refused.
"""
import subprocess
import sys

import pytest
import torch

from arbitor.data import BUNDLED_TEXT_PATH
from arbitor.train import ModelSettings, MultimodalConfig, TextConfig, TrainConfig, build_run
from arbitor.train.graph import GraphedStep

TEXT = TextConfig(text_data=str(BUNDLED_TEXT_PATH), max_chars=200_000)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("changes,fields,message", [
    ({}, {}, "cuda_graph needs a CUDA device (the run is on cpu)"),
    ({"schedule": "cosine"}, {}, "cuda_graph needs schedule='constant' (got 'cosine') or a held schedule"),
    ({"schedule": "cosine", "schedule_hold": 5}, {}, "cuda_graph needs a CUDA device"),   # a held schedule is fine
    ({}, {"dropout": 0.1, "activation_checkpointing": True}, "cannot capture activation checkpointing with dropout"),
    ({"compile": True}, {}, "cuda_graph needs a CUDA device"),   # compile + graph is offered for both
    ({"compile": True}, {"linear": "bitnet"}, "cuda_graph needs a CUDA device"),
])
def test_cuda_graph_refusals_on_cpu(changes, fields, message):
    tcfg = TrainConfig(steps=2, batch=2, ctx=16, cuda_graph=True, **changes)
    with pytest.raises(ValueError) as err:
        build_run("text", tcfg, TEXT, model_fields=fields)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cuda_graph_refuses_a_task_that_draws_its_components():
    tcfg = TrainConfig(steps=2, batch=2, ctx=16, cuda_graph=True)
    with pytest.raises(ValueError, match="'multimodal' draws them per step"):
        build_run("multimodal", tcfg, MultimodalConfig(text_data=str(BUNDLED_TEXT_PATH), codes=32))


def test_cli_cuda_graph_on_cpu_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "arbitor", "train", "--steps", "2", "--batch", "2", "--ctx", "16",
                           "--cuda-graph", "--device", "cpu", "--run", str(tmp_path / "r"), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "cuda_graph needs a CUDA device" in proc.stderr


def test_compile_compiles_every_block_in_place():
    tr = build_run("text", TrainConfig(steps=2, batch=2, ctx=16, compile=True), TEXT)
    keys = list(tr.model.state_dict())
    assert all(b._compiled_call_impl is not None for b in tr.model.blocks) and len(tr.model.blocks) >= 2
    assert not any("_orig_mod" in k for k in keys)          # checkpoints keep their keys


def test_graphed_step_refuses_host_tensors():
    with pytest.raises(ValueError, match="every input must be a CUDA tensor"):
        GraphedStep(lambda b: b)(torch.zeros(2))
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedStep(lambda b: b, warmup=0)


def _run(rule: str, graph: bool, steps: int = 7, fields=None, gradw_fp8=None, matmul_fp8=None, **kw):
    tcfg = TrainConfig(steps=steps, batch=4, ctx=32, cuda_graph=graph, eval_interval=0, log_interval=0, **kw)
    tr = build_run("text", tcfg, TEXT, ModelSettings(update_rule=rule, gradw_fp8=gradw_fp8, matmul_fp8=matmul_fp8),
                   device="cuda", model_fields=fields)
    losses = [float(tr.train_step()["text"]) for _ in range(steps)]
    torch.cuda.synchronize()
    return tr, losses, {k: v.cpu() for k, v in tr.model.state_dict().items()}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("rule", ["bigint", "counter"])
@pytest.mark.parametrize("gradw_fp8,matmul_fp8", [(None, None), (True, None), (True, True)],
                         ids=["exact", "fp8", "fp8all"])
def test_graph_replayed_run_is_bit_identical_to_eager(rule, gradw_fp8, matmul_fp8, fp8_for_small_layers):
    _, eager_losses, eager = _run(rule, False, gradw_fp8=gradw_fp8, matmul_fp8=matmul_fp8)
    tr, graph_losses, graphed = _run(rule, True, gradw_fp8=gradw_fp8, matmul_fp8=matmul_fp8)
    assert tr.model.cfg.ternary.gradw_fp8 is bool(gradw_fp8)
    assert any(getattr(m, "uses_gradw_fp8", False) for m in tr.model.modules()) is bool(gradw_fp8)
    assert any(getattr(m, "uses_matmul_fp8", False) for m in tr.model.modules()) is bool(matmul_fp8)
    assert tr.graphed.captured and tr.graphed.calls == 7        # 3 eager + capture + 3 replays
    assert graph_losses == eager_losses
    assert eager.keys() == graphed.keys()
    assert [k for k in eager if not torch.equal(eager[k], graphed[k])] == []
    moved = sum(int((a != b).sum()) for k, (a, b) in ((k, (eager[k], graphed[k])) for k in eager)
                if k.endswith("T_packed"))
    assert moved == 0


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("rule", ["bigint", "counter"])
def test_capture_with_warmup_graphs_still_alive(rule):
    """The warm-up steps' autograd graphs kept alive (here: their losses in a list; in the 3b benchmark, a
    reference cycle) keep the layer's gradient anchor's ``AccumulateGrad`` node, made on the warm-up stream. A
    capture on any other stream waits on it: ``cudaErrorStreamCaptureIsolation``. The replayed steps must
    still equal the same steps run eagerly, bit for bit."""
    import copy

    from arbitor.ternary import TernaryScaleTensor, ternary_step
    torch.manual_seed(0)
    layer = TernaryScaleTensor(96, 40, 32, update_rule=rule, seed=3, device="cuda")
    twin = copy.deepcopy(layer)
    xs = [torch.randn(5, 96, device="cuda", dtype=torch.bfloat16) for _ in range(6)]

    def step_of(mod):
        def step(x):
            loss = mod(x).float().square().mean()      # x needs no grad: the anchor carries the ballot
            loss.backward()
            ternary_step(mod)
            return loss
        return step
    g = GraphedStep(step_of(layer), warmup=2)
    kept = [g(x) for x in xs[:2]]                        # warm-up losses, graphs alive
    losses = [float(t.detach()) for t in kept] + [float(g(x).detach()) for x in xs[2:]]   # capture, replays
    assert g.captured and g.captures == 1
    eager = [float(step_of(twin)(x).detach()) for x in xs]
    torch.cuda.synchronize()
    assert losses == eager
    a, b = layer.state_dict(), twin.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.gpu
@cuda
def test_graphed_step_refuses_another_shape():
    w = torch.zeros((), device="cuda")

    def step(batch):
        w.add_(batch.sum())
        return w
    g = GraphedStep(step, warmup=1)
    g(torch.ones(3, device="cuda"))
    g(torch.ones(3, device="cuda"))
    torch.cuda.synchronize()
    assert float(w) == 6.0 and g.captured
    with pytest.raises(ValueError, match=r"differ from the captured \[\(\(3,\), 'float32'\)\]"):
        g(torch.ones(4, device="cuda"))


@pytest.mark.gpu
@cuda
def test_compiled_graphed_float_run_trains_like_eager():
    """compile fuses float ops, so the losses may differ in the last bits from eager's, not more (the quality
    study's float rows run compiled + graphed)."""
    _, eager_losses, _ = _run(None, False, steps=6, fields={"linear": "bitnet"})
    tcfg = TrainConfig(steps=6, batch=4, ctx=32, compile=True, cuda_graph=True, eval_interval=0, log_interval=0)
    torch._dynamo.utils.counters.clear()
    tr = build_run("text", tcfg, TEXT, model_fields={"linear": "bitnet"}, device="cuda")
    losses = [float(tr.train_step()["text"]) for _ in range(6)]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1     # the blocks did run compiled
    assert losses == pytest.approx(eager_losses, rel=2e-2), (losses, eager_losses)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("rule", ["bigint", "counter"])
def test_compiled_ternary_run_learns_like_eager_in_bf16(rule):
    """The case `benchmarks/results/trainer/h200-compile.md` flagged (bf16, a few dozen steps): compiled without
    a graph, the ternary run must learn as the eager one does -- the loss falls as far, within 0.15 nats."""
    def run(compile_):
        tcfg = TrainConfig(steps=40, batch=8, ctx=64, compile=compile_, eval_interval=0, log_interval=0, seed=1)
        tr = build_run("text", tcfg, TEXT, ModelSettings(update_rule=rule), device="cuda",
                       model_fields={"compute_dtype": "bfloat16", "max_ctx": 64})
        return [float(tr.train_step()["text"]) for _ in range(40)]
    eager, compiled = run(False), run(True)
    tail = lambda ls: sum(ls[-8:]) / 8                                      # noqa: E731
    assert tail(eager) < eager[0] - 0.5                                      # the eager run does learn
    assert abs(tail(compiled) - tail(eager)) < 0.15, (compiled[::5], eager[::5])


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("rule,fields", [("bigint", {}), ("counter", {}),
                                         ("bigint", {"activation_checkpointing": True, "loss_chunk_tokens": 192}),
                                         ("counter", {"activation_checkpointing": True}),
                                         ("counter", {"activation_checkpointing": True, "recompute_blocks": 1}),
                                         ("bigint", {"activation_checkpointing": True,
                                                     "ternary": {"gradw_fp8": True, "matmul_fp8": True}})])
def test_compiled_graphed_ternary_run_is_bit_identical_to_compiled(rule, fields, fp8_for_small_layers):
    """A graph replays the compiled step exactly (benchmarks/results/trainer/h200-compile.md, third follow-up):
    the same losses and integer state as the compiled run without a graph, in bf16 and without a sync; with
    activation checkpointing too (each block's recompute, and the chunked loss's, run inside the capture)."""
    def run(graph):
        tcfg = TrainConfig(steps=8, batch=8, ctx=64, compile=True, cuda_graph=graph, eval_interval=0,
                           log_interval=0, seed=1)
        tr = build_run("text", tcfg, TEXT, ModelSettings(update_rule=rule), device="cuda",
                       model_fields={"compute_dtype": "bfloat16", "max_ctx": 64, **fields})
        losses = torch.stack([tr.train_step()["text"].clone() for _ in range(8)]).tolist()
        return tr, losses, {k: v.cpu() for k, v in tr.model.state_dict().items()}
    _, compiled_losses, compiled = run(False)
    tr, graph_losses, graphed = run(True)
    assert tr.graphed.captured
    assert graph_losses == compiled_losses
    assert [k for k in compiled if not torch.equal(compiled[k], graphed[k])] == []


HELD = {"schedule": "cosine", "warmup_steps": 2, "schedule_hold": 3}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("rule,fields", [("counter", {"dropout": 0.2}), (None, {"dropout": 0.2, "linear": "bitnet"})],
                         ids=["counter", "bitnet"])
def test_graph_with_dropout_and_a_held_schedule_is_bit_identical_to_eager(rule, fields):
    """Dropout draws from the CUDA generator inside the graph (philox offsets advance per replay) and the held
    cosine schedule re-captures the step once per block of 3 steps: the same losses and state as eager steps."""
    _, eager_losses, eager = _run(rule, False, steps=11, fields=fields, **HELD)
    tr, graph_losses, graphed = _run(rule, True, steps=11, fields=fields, **HELD)
    assert tr.graphed.captures == 3          # steps 3, 6, 9 start a block (0-2 are the eager warm-up)
    assert graph_losses == eager_losses
    assert [k for k in eager if not torch.equal(eager[k], graphed[k])] == []


@pytest.mark.gpu
@cuda
def test_graphed_resume_with_dropout_is_bit_exact(tmp_path):
    """3 graph steps + checkpoint (with the CUDA generator's state) + resume 4 == 7 straight."""
    def fit(run_dir, upto, resume=False):
        tcfg = TrainConfig(steps=7, batch=4, ctx=32, cuda_graph=True, eval_interval=0, log_interval=1, **HELD)
        tr = build_run("text", tcfg, TEXT, ModelSettings(update_rule="counter", dropout=0.2), run_dir=run_dir,
                       resume=resume, device="cuda")
        tr.fit(steps=upto, progress=False)
        tr.save()
        tr.close()
        return {k: v.cpu() for k, v in tr.model.state_dict().items()}
    straight = fit(tmp_path / "a", 7)
    fit(tmp_path / "b", 3)
    resumed = fit(tmp_path / "b", 7, resume=True)
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []
