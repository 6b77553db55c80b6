"""Ternary VQ codebooks and the multimodal model: nearest code, integer state under both rules, audit."""
import torch

from arbitor.model.config import preset
from arbitor.ternary.audit import ternary_audit
from arbitor.ternary.step import ternary_step
from arbitor.model.multimodal import ModalitySpec, MultimodalARB
from arbitor.model.vq import TernaryVQCodebook, code_usage


def test_quantize_is_nearest_code():
    cb = TernaryVQCodebook(32, 16, 4, update_rule="bigint", seed=3)
    z = torch.randn(5, 7, 16)
    idx = cb.quantize(z)
    codes = cb.codes()
    brute = torch.cdist(z.reshape(-1, 16), codes).argmin(1).view(5, 7)
    assert torch.equal(idx, brute)


def test_init_from_data_puts_codes_in_the_data():
    gen = torch.Generator().manual_seed(0)
    centres = torch.where(torch.rand(4, 16, generator=gen) < 0.5, -1.0, 1.0)
    data = centres[torch.randint(0, 4, (500,), generator=gen)] + 0.05 * torch.randn(500, 16, generator=gen)
    cb = TernaryVQCodebook(16, 16, 4, update_rule="legacy", seed=0)
    before = float(((data - cb.codes()[cb.quantize(data)]) ** 2).mean())
    cb.init_from_data(data, torch.Generator().manual_seed(1))
    after = float(((data - cb.codes()[cb.quantize(data)]) ** 2).mean())
    assert after < 0.1 * before   # codes sit on the clusters (error ~ noise)
    assert cb.validate_state() is None


def _train_codebook(mode: str, steps: int = 30, init_from_data: bool = False):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centres = torch.where(torch.rand(4, 16, generator=gen) < 0.5, -1.0, 1.0)
    if init_from_data:  # group magnitudes 0.7 / 1.4 sit between powers of two: only a trained scale fits them
        centres = centres * torch.tensor([0.7, 1.4]).repeat_interleave(4).repeat(2)
    cb = TernaryVQCodebook(8, 16, 4, update_rule=mode, seed=1, init_var=0.25, ballot_prior=8)
    if init_from_data:
        cb.init_from_data(centres[torch.randint(0, 4, (64,), generator=gen)] + 0.05 * torch.randn(64, 16, generator=gen),
                          gen)
    t0 = cb.T_packed.clone()
    errs = []
    for _ in range(steps):
        x = centres[torch.randint(0, 4, (64,), generator=gen)] + 0.1 * torch.randn(64, 16, generator=gen)
        idx = cb.quantize(x)
        loss = ((cb(idx) - x) ** 2).mean()
        errs.append(float(loss.detach()))
        loss.backward()
        ternary_step(cb)
    return cb, t0, errs


def test_legacy_codebook_flips_trits_toward_the_data():
    cb, t0, errs = _train_codebook("legacy")
    assert not torch.equal(cb.T_packed, t0)                        # trits moved
    assert sum(errs[-5:]) / 5 < 0.7 * sum(errs[:5]) / 5            # quantisation error fell >= 30%
    audit = ternary_audit(cb)
    assert audit["state_bytes"]["T_accum"] == 8 * 16 and audit["state_bytes"]["E_accum"] == 8 * 4 * 2
    assert audit["trainable_float_params"] == 0


def test_bigint_codebook_moves_only_scales():
    cb, t0, errs = _train_codebook("bigint", init_from_data=True)
    assert torch.equal(cb.T_packed, t0)                            # T fixed, scales learn
    assert int(cb.step_counter.sum()) > 0 and int(cb.corr_accum.abs().sum()) > 0
    assert sum(errs[-5:]) / 5 < 0.7 * sum(errs[:5]) / 5            # quantisation error fell >= 30%
    audit = ternary_audit(cb)
    assert audit["state_bytes"]["corr_accum"] == 8 * 4 * 8 and audit["state_bytes"]["step_counter"] == 8 * 8
    assert cb.validate_state() is None


def test_multimodal_model_state_is_integer_and_round_trips():
    cfg = preset("tiny", ternary={"group_size": 4, "update_rule": "bigint"}, vocab_size=256 + 2 * 16, n_layers=1,
                 d_model=32, lti_decays=(), embedding_group_size=4)
    specs = [ModalitySpec("image", 16, 16, 256), ModalitySpec("audio", 16, 16, 272)]
    model = MultimodalARB(cfg, specs, "legacy")
    report = ternary_audit(model)
    assert report["trainable_float_params"] == 0
    assert report["state_bytes"]["T_accum"] == 2 * 16 * 16
    out = model.patch_losses("audio", torch.rand(2, 8, 16) * 2 - 1)
    (out["codebook"] + out["recon"] + out["next"]).backward()
    ternary_step(model)
    assert out["idx"].min() >= 0 and out["idx"].max() < 16
    sd = model.state_dict()
    assert all(not v.is_floating_point() for k, v in sd.items() if k.startswith("vq."))
    other = MultimodalARB(cfg, specs, "legacy")
    other.load_state_dict(sd)
    assert torch.equal(other.vq["audio"].T_packed, model.vq["audio"].T_packed)


def test_code_usage_counts():
    usage, ppl = code_usage(torch.tensor([0, 0, 1, 3]), 8)
    assert usage == 3 / 8 and 2.5 < ppl < 3.0
    usage, ppl = code_usage(torch.zeros(10, dtype=torch.long), 8)
    assert usage == 1 / 8 and abs(ppl - 1.0) < 1e-9
