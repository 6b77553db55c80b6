"""Model configuration and named presets.

``ModelConfig`` is plain data (JSON round-trip via ``to_dict``/``from_dict``); its ``ternary`` field is
the ``TernaryConfig`` every ternary projection is built from. ``PRESETS`` maps a name to the keyword
overrides of that preset (``ternary`` as a dict of ``TernaryConfig`` changes), so a new size is one
dict entry.

The ``linear`` field names an entry of ``LINEAR_FACTORIES`` (``layers.py``): every projection of the
model is built by that factory, so a quality study can swap the pure-ternary ``TernaryScaleTensor`` for
a dense float ``nn.Linear`` trained with AdamW (``"dense"``) without touching ``text.py``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ..ternary.config import TernaryConfig
from ..ternary.embedding import EMBEDDING_RULES
from ..ternary.format import check_group_size

__all__ = ["ModelConfig", "PRESETS", "preset", "preset_names", "ConfigError"]


class ConfigError(ValueError):
    """An invalid configuration value or an unknown preset."""


def _default_ternary() -> TernaryConfig:
    # The counter rule (TernaryConfig's default: 5-bit counters, rate 1) at group 64 and strength 16: the
    # full-budget study's winner (docs/quality.md: group 128 at the nanoGPT shape; 64 divides every preset's
    # widths) at <= 1 B/weight of state for tiny and small (T 0.25 + counters 0.625 + E/corr_accum 9/64 per
    # dense weight, a bigint embedding at 0.39: 0.967 / 0.9996 B/weight); base and medium use group 128
    # (0.943 / 0.944 B/weight, `arbitor audit --preset NAME`). Smaller groups paid off only
    # for bigint, where T and E are fixed and the scales are all that trains (tiny, 300 steps: g=8 -> 2.89,
    # g=4 -> 2.69 val nats/token), at 2.5 B/weight. Strength: each scale spans 2**+-16 around 2**E; the spec's
    # env default is 4.0, larger learns more here (bigint, tiny, 1000 steps: 6 -> 2.60, 8 -> 2.53, 12 -> 2.46,
    # 16 -> 2.43). ballot_prior 8: step_counter starts at 8 zero-vote ballots so the first ballot cannot move a
    # scale by 2**strength (tiny, 300 steps, strength 8: 0 -> 2.54, 8 -> 2.52, 32 -> 2.55).
    return TernaryConfig(group_size=64, strength=16.0, ballot_prior=8)


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
    # --- projections ------------------------------------------------------------------------
    linear: str = "ternary"          # projection factory (layers.LINEAR_FACTORIES): "ternary" (pure, integer
                                     # state), or the float baselines "dense" / "bitnet" (AdamW)
    ternary: TernaryConfig = field(default_factory=_default_ternary)  # every ternary projection's settings
                                     # (group size, strength, update rule and its settings, ballot prior):
                                     # counter rule, docs/quality.md: 5-bit counters, rate 1 (CPU: 5 bits
                                     # beat 4 by 0.03-0.05 nats; 2 bits were worse in the H100 study)
    # --- embedding --------------------------------------------------------------------------
    embedding_update_rule: str = "bigint"  # "bigint" (corr_accum scales, per-row ballots) or "legacy"
                                     # (T_accum/E_accum trit flips); bigint measured better (tiny, 300 steps:
                                     # 2.54 vs 2.64). Strength, zero share and ballot prior: from `ternary`
    embedding_group_size: int = 64   # scale-group size of the embedding rows (64: 0.39 B/weight; the bigint-era
                                     # default 4 held 2.5 B/weight for a small gain, docs/quality.md "Defaults")
    # --- LTI injection ----------------------------------------------------------------------
    lti_decays: tuple[float, ...] = (0.5, 0.8, 0.95)  # fixed EMA decays (frozen buffers); () disables LTI
    # --- output heads -----------------------------------------------------------------------
    decoders: tuple[str, ...] = ("text",)  # decoders.DECODERS names; "text" is required (next-token loss)
    # --- memory / speed at scale -------------------------------------------------------------
    compute_dtype: str = "float32"   # activation dtype: "float32", "bfloat16" or "float16" (integer state is
                                     # unaffected; bf16 halves activation memory and uses flash attention)
    activation_checkpointing: bool = False  # recompute each block in backward: keeps only block inputs alive
    recompute_blocks: Optional[int] = None  # with activation_checkpointing: how many blocks, the first ones,
                                     # recompute (None: all). The others keep their activations: a faster
                                     # backward for more memory (3b at 8 x 512: 1.3-1.5 ms less and ~480 MiB
                                     # more a block, the first one free; benchmarks/results/speed/
                                     # h200-recompute-blocks). The last blocks keep theirs because their backward
                                     # runs first: they are freed before the first recompute, which never adds
                                     # to them
    loss_chunk_tokens: int = 0       # >0: the text loss runs the head + cross-entropy over this many tokens at a
                                     # time (recomputed in backward), so full [tokens, vocab] logits never exist
    # --- regularisation -----------------------------------------------------------------------
    dropout: float = 0.0             # training-mode dropout where nanoGPT puts it: on the embedding output, the
                                     # attention probabilities and the attention / MLP residual branches (0: none,
                                     # no op and no RNG draw at all); nanoGPT's shakespeare_char uses 0.2
    # --- float baselines only ---------------------------------------------------------------
    dense_lr: float = 1e-3           # AdamW learning rate when linear is "dense" or "bitnet"
    # --- reproducibility --------------------------------------------------------------------
    seed: int = 0                    # seeds every layer's T/E draw

    def __post_init__(self) -> None:
        if isinstance(self.ternary, dict):
            self.ternary = _ternary_from_dict(self.ternary)
        self.lti_decays = tuple(float(d) for d in self.lti_decays)
        self.decoders = tuple(self.decoders)
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first invalid field."""
        from .decoders import DECODERS
        from .layers import LINEAR_FACTORIES

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_mult", "max_ctx"):
            v = getattr(self, name)
            need(isinstance(v, int) and v > 0, f"{name} must be a positive int, got {v!r}")
        need(self.d_model % self.n_heads == 0, f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        need(self.linear in LINEAR_FACTORIES,
             f"linear={self.linear!r} is not a known factory ({', '.join(sorted(LINEAR_FACTORIES))})")
        need(isinstance(self.ternary, TernaryConfig), f"ternary must be a TernaryConfig, got {type(self.ternary).__name__}")
        for name, g in (("ternary.group_size", self.ternary.group_size), ("embedding_group_size",
                                                                          self.embedding_group_size)):
            try:
                check_group_size(self.d_model, g)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        need(self.embedding_update_rule in EMBEDDING_RULES,
             f"embedding_update_rule must be one of {', '.join(EMBEDDING_RULES)}, got {self.embedding_update_rule!r}")
        need(all(0.0 < d < 1.0 for d in self.lti_decays), f"lti_decays must lie in (0, 1), got {self.lti_decays}")
        need("text" in self.decoders, f"decoders must include 'text', got {self.decoders}")
        unknown = [d for d in self.decoders if d not in DECODERS]
        need(not unknown, f"unknown decoder(s) {unknown}; registered: {', '.join(sorted(DECODERS))}")
        need(self.dense_lr > 0 and math.isfinite(self.dense_lr), f"dense_lr must be > 0, got {self.dense_lr}")
        need(self.compute_dtype in ("float32", "bfloat16", "float16"),
             f"compute_dtype must be 'float32', 'bfloat16' or 'float16', got {self.compute_dtype!r}")
        need(isinstance(self.loss_chunk_tokens, int) and self.loss_chunk_tokens >= 0,
             f"loss_chunk_tokens must be a non-negative int, got {self.loss_chunk_tokens!r}")
        if self.recompute_blocks is not None:
            need(isinstance(self.recompute_blocks, int) and not isinstance(self.recompute_blocks, bool)
                 and 0 <= self.recompute_blocks <= self.n_layers,
                 f"recompute_blocks must be an int in [0, n_layers={self.n_layers}] or None (all), got "
                 f"{self.recompute_blocks!r}")
            need(self.activation_checkpointing, f"recompute_blocks={self.recompute_blocks} needs "
                 "activation_checkpointing=True (without it no block recomputes)")
        need(isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
             and 0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")

    def ballots_per_pass(self, tokens: int) -> int:
        """Ballots one ternary module casts at most in one backward pass over ``tokens`` tokens: a chunked text loss
        runs the head once per ``loss_chunk_tokens`` chunk, and each chunk's backward is one ballot of the head
        (``decoders.py``). Step-boundary training reserves this many ballot slots per pass."""
        chunk = self.loss_chunk_tokens
        return -(-tokens // chunk) if chunk and tokens > chunk else 1

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
        """The config of ``to_dict`` (``ConfigError`` on an unknown or invalid field)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes``; ``ternary`` may be a dict of ``TernaryConfig`` field changes."""
        if isinstance(changes.get("ternary"), dict):
            changes["ternary"] = _ternary_from_dict(changes["ternary"], self.ternary)
        return dataclasses.replace(self, **changes)


def _ternary_from_dict(d: dict[str, Any], base: Optional[TernaryConfig] = None) -> TernaryConfig:
    base = base if base is not None else TernaryConfig()
    known = {f.name for f in dataclasses.fields(TernaryConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown ternary config field(s): {', '.join(unknown)}")
    try:
        return base.replace(**d)
    except ValueError as exc:
        raise ConfigError(f"ternary.{exc}") from None


# Preset name -> overrides of ModelConfig defaults. Rough logical ternary weight counts in comments
# (12 * d_model**2 per block + LTI readout + embedding and head).
PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: trains a few hundred steps in well under a minute on 2 cores (~0.16M weights).
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, mlp_mult=4, max_ctx=128),
    # a larger CPU model (~1.1M weights).
    "small": dict(d_model=128, n_layers=4, n_heads=4, mlp_mult=4, max_ctx=256),
    # a GPU-sized model (~19M weights).
    "base": dict(d_model=384, n_layers=8, n_heads=6, mlp_mult=4, max_ctx=512, ternary=dict(group_size=128)),
    # a larger GPU model (~107M weights).
    "medium": dict(d_model=768, n_layers=12, n_heads=12, mlp_mult=4, max_ctx=1024, lti_decays=(0.5, 0.9),
                   ternary=dict(group_size=128)),
    # The spec's 3.12B-weight text path: 22 blocks x 15 * 3072**2 (attention 5, LTI readout 2, MLP 8)
    # + embedding and head = 3,115,843,584 logical ternary weights. group_size 64: 0.39 bytes of training
    # state per weight (T_packed 0.25 + E/corr_accum 9/64) = ~1.16 GiB in all. bf16 activations, block
    # checkpointing and a chunked loss keep batch 8 x ctx 512 training inside 8 GB (benchmarks/bench_scale.py).
    # update_rule bigint: the counter rule (the default elsewhere) would hold 1.02 B/weight = 3,017 MiB of state
    # at its default 5 bits (2,646 MiB at 4 bits: arbitor audit --preset 3b --update-rule counter
    # --counter-bits 4), past the spec's 2.04 GB for this preset (docs/quality.md)
    "3b": dict(d_model=3072, n_layers=22, n_heads=24, mlp_mult=4, max_ctx=512,
               ternary=dict(group_size=64, update_rule="bigint"),
               embedding_group_size=64, lti_decays=(0.5, 0.9), compute_dtype="bfloat16",
               activation_checkpointing=True, loss_chunk_tokens=2048),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str, ternary: Optional[dict[str, Any]] = None, **overrides: Any) -> ModelConfig:
    """``ModelConfig`` of preset ``name`` with optional field ``overrides`` and ``TernaryConfig`` changes
    ``ternary`` (``None`` values are ignored); ``ConfigError`` if the preset is unknown or a value invalid."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    fields = dict(PRESETS[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    changes = dict(fields.pop("ternary", {}))
    changes.update({k: v for k, v in (ternary or {}).items() if v is not None})
    fields["ternary"] = _ternary_from_dict(changes, _default_ternary())
    return ModelConfig.from_dict(fields)
