"""Model configuration and named presets.

``ModelConfig`` is plain data (JSON round-trip via ``to_dict``/``from_dict``);
``PRESETS`` maps a name to the keyword overrides of that preset, so a new size is
one dict entry (a later issue adds the 3.12B-weight text preset this way).

The ``linear`` field names an entry of ``LINEAR_FACTORIES`` (``arbitor/components.py``):
every projection of the model is built by that factory, so a quality study can swap
the pure-ternary ``TernaryScaleTensor`` for a dense float ``nn.Linear`` trained with
AdamW (``"dense"``) without touching ``model.py``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["ModelConfig", "PRESETS", "preset", "preset_names", "ConfigError"]


class ConfigError(ValueError):
    """An invalid configuration value or an unknown preset."""


@dataclass
class ModelConfig:
    # --- vocabulary -------------------------------------------------------------------------
    vocab_size: int = 256            # 256 = UTF-8 bytes (default); a char vocab sets its own size
    # --- shape ------------------------------------------------------------------------------
    d_model: int = 128               # residual stream width
    n_layers: int = 2                # transformer blocks
    n_heads: int = 4                 # attention heads (d_model % n_heads == 0)
    mlp_mult: int = 4                # MLP hidden width = mlp_mult * d_model
    max_ctx: int = 256               # longest sequence the model is built for (LTI kernel size, sampling)
    # --- ternary layers ---------------------------------------------------------------------
    linear: str = "ternary"          # projection factory: "ternary" (pure, integer state) or "dense" (float, AdamW)
    group_size: int = 4              # weights per BigInt scale group (power of two >= 4). T and E are fixed, so
                                     # the scales are all that trains: small groups = more trainable scales
                                     # (tiny, 300 steps: g=8 -> 2.89, g=4 -> 2.69 val nats/token)
    strength: float = 16.0           # S = 2**(E + strength*mean_corr): each scale spans 2**+-16 around 2**E.
                                     # The spec's env default is 4.0; larger learns more here. Tiny preset,
                                     # val nats/token after 1000 steps: 6 -> 2.60, 8 -> 2.53, 12 -> 2.46,
                                     # 16 -> 2.43 (300 steps: 4 -> 2.89 at g=8; 8 -> 2.52, 16 -> 2.49)
    zero_fraction: float = 1.0 / 3.0 # share of zero trits at init
    update_rule: str = "bigint"      # TernaryScaleTensor update: "bigint" (spec: only scales move), "legacy"
                                     # (T_accum/E_accum flips), "flip" (BigInt + stateless trit flips) or
                                     # "counter" (BigInt + trits on packed per-weight counters, issue 6)
    flip_rate: float = 0.02          # "flip" only: expected trit steps per unit of row-normalised gradient
    counter_bits: int = 4            # "counter" only: bits per weight of C_packed (1, 2, 4 or 8); each trit
                                     # owns 2**bits rungs of the latent ladder (docs/quality.md, H100, 600 steps:
                                     # 2 bits +0.71 vs QAT, 4 bits +0.21; 8 bits no better than 4)
    counter_rate: float = 0.5        # "counter" only: expected rungs per ballot per unit of row-RMS gradient
                                     # (scaled by TrainConfig.schedule). With cosine, 800 steps: 0.125 -> +0.16,
                                     # 0.25 -> +0.10, 0.5 -> +0.09, 1 -> +0.14 nats vs QAT
    ballot_prior: int = 8            # step_counter starts at this many zero-vote ballots: damps the first
                                     # ballots' jump (one unanimous ballot otherwise moves S by 2**strength);
                                     # tiny, 300 steps, strength 8: 0 -> 2.54, 8 -> 2.52, 32 -> 2.55 val nats/token
    backend: Optional[str] = None    # ARB_TERNARY_BACKEND override (None: environment / auto)
    # --- embedding --------------------------------------------------------------------------
    embedding_mode: str = "bigint"   # "bigint" (corr_accum scales, per-row ballots) or "legacy" (T_accum/E_accum
                                     # trit flips); bigint measured better (tiny, 300 steps: 2.54 vs 2.64)
    embedding_group_size: int = 4    # scale-group size of the embedding rows
    # --- LTI injection ----------------------------------------------------------------------
    lti_decays: tuple[float, ...] = (0.5, 0.8, 0.95)  # fixed EMA decays (frozen buffers); () disables LTI
    # --- output heads -----------------------------------------------------------------------
    decoders: tuple[str, ...] = ("text",)  # decoders.DECODERS names; "text" is required (next-token loss)
    # --- memory / speed at scale -------------------------------------------------------------
    compute_dtype: str = "float32"   # activation dtype: "float32", "bfloat16" or "float16" (integer state is
                                     # unaffected; bf16 halves activation memory and uses flash attention)
    activation_checkpointing: bool = False  # recompute each block in backward: keeps only block inputs alive
    loss_chunk_tokens: int = 0       # >0: the text loss runs the head + cross-entropy over this many tokens at a
                                     # time (recomputed in backward), so full [tokens, vocab] logits never exist
    # --- dense baseline only ----------------------------------------------------------------
    dense_lr: float = 1e-3           # AdamW learning rate when linear == "dense"
    # --- reproducibility --------------------------------------------------------------------
    seed: int = 0                    # seeds every layer's T/E draw

    def __post_init__(self) -> None:
        self.lti_decays = tuple(float(d) for d in self.lti_decays)
        self.decoders = tuple(self.decoders)
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first invalid field."""
        from .components import LINEAR_FACTORIES  # local: components imports config
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_mult", "max_ctx"):
            v = getattr(self, name)
            need(isinstance(v, int) and v > 0, f"{name} must be a positive int, got {v!r}")
        need(self.d_model % self.n_heads == 0, f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        need(self.linear in LINEAR_FACTORIES,
             f"linear={self.linear!r} is not a known factory ({', '.join(sorted(LINEAR_FACTORIES))})")
        for name in ("group_size", "embedding_group_size"):
            g = getattr(self, name)
            need(isinstance(g, int) and g >= 4 and g & (g - 1) == 0, f"{name} must be a power of two >= 4, got {g!r}")
            need(self.d_model % g == 0, f"d_model={self.d_model} must be a multiple of {name}={g}")
        need(0.0 <= self.strength <= 20.0, f"strength must be in [0, 20], got {self.strength}")
        need(self.update_rule in ("bigint", "legacy", "flip", "counter"),
             f"update_rule must be 'bigint', 'legacy', 'flip' or 'counter', got {self.update_rule!r}")
        need(self.counter_bits in (1, 2, 4, 8), f"counter_bits must be 1, 2, 4 or 8, got {self.counter_bits!r}")
        need(0.0 <= self.counter_rate <= 64.0, f"counter_rate must be in [0, 64], got {self.counter_rate}")
        need(0.0 <= self.flip_rate <= 1.0, f"flip_rate must be in [0, 1], got {self.flip_rate}")
        need(isinstance(self.ballot_prior, int) and self.ballot_prior >= 0,
             f"ballot_prior must be a non-negative int, got {self.ballot_prior!r}")
        need(0.0 <= self.zero_fraction < 1.0, f"zero_fraction must be in [0, 1), got {self.zero_fraction}")
        need(self.embedding_mode in ("legacy", "bigint"),
             f"embedding_mode must be 'legacy' or 'bigint', got {self.embedding_mode!r}")
        need(all(0.0 < d < 1.0 for d in self.lti_decays), f"lti_decays must lie in (0, 1), got {self.lti_decays}")
        from .decoders import DECODERS
        need("text" in self.decoders, f"decoders must include 'text', got {self.decoders}")
        unknown = [d for d in self.decoders if d not in DECODERS]
        need(not unknown, f"unknown decoder(s) {unknown}; registered: {', '.join(sorted(DECODERS))}")
        need(self.dense_lr > 0 and math.isfinite(self.dense_lr), f"dense_lr must be > 0, got {self.dense_lr}")
        need(self.compute_dtype in ("float32", "bfloat16", "float16"),
             f"compute_dtype must be 'float32', 'bfloat16' or 'float16', got {self.compute_dtype!r}")
        need(isinstance(self.loss_chunk_tokens, int) and self.loss_chunk_tokens >= 0,
             f"loss_chunk_tokens must be a non-negative int, got {self.loss_chunk_tokens!r}")

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_mult * self.d_model

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lti_decays"] = list(self.lti_decays)
        d["decoders"] = list(self.decoders)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# Preset name -> overrides of ModelConfig defaults. Rough logical ternary weight counts in comments
# (12 * d_model**2 per block + LTI readout + embedding and head).
PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: trains a few hundred steps in well under a minute on 2 cores (~0.16M weights).
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, mlp_mult=4, max_ctx=128),
    # a larger CPU model (~1.1M weights).
    "small": dict(d_model=128, n_layers=4, n_heads=4, mlp_mult=4, max_ctx=256),
    # a GPU-sized model (~19M weights).
    "base": dict(d_model=384, n_layers=8, n_heads=6, mlp_mult=4, max_ctx=512, group_size=16,
                 embedding_group_size=16),
    # a larger GPU model (~107M weights).
    "medium": dict(d_model=768, n_layers=12, n_heads=12, mlp_mult=4, max_ctx=1024, group_size=32,
                   embedding_group_size=32, lti_decays=(0.5, 0.9)),
    # The spec's 3.12B-weight text path: 22 blocks x 15 * 3072**2 (attention 5, LTI readout 2, MLP 8)
    # + embedding and head = 3,115,843,584 logical ternary weights. group_size 64: 0.39 bytes of training
    # state per weight (T_packed 0.25 + E/corr_accum 9/64) = ~1.16 GiB in all. bf16 activations, block
    # checkpointing and a chunked loss keep batch 8 x ctx 512 training inside 8 GB (benchmarks/bench_scale.py).
    "3b": dict(d_model=3072, n_layers=22, n_heads=24, mlp_mult=4, max_ctx=512, group_size=64,
               embedding_group_size=64, lti_decays=(0.5, 0.9), compute_dtype="bfloat16",
               activation_checkpointing=True, loss_chunk_tokens=2048),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """``ModelConfig`` of preset ``name`` with optional field ``overrides``; ``ConfigError`` if unknown."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    fields = dict(PRESETS[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig.from_dict(fields)
