"""The ternary ops: a plain-torch reference and a Triton kernel for each, one signature per op.

``get_ops(device, backend)`` returns the ``TernaryOps`` table for a device (``backend.py``);
``linear.py``/``linear_triton.py`` (forward, grad-x; ``linear.decode_forward_torch`` is also the reference of
``decode_triton.py``, a frozen layer's forward, which sends 1-16 rows of 16-bit x to the PTX tensor-core kernel of
``decode_tc.py``), ``votes.py``/``votes_triton.py`` (the ``bigint``
vote), ``counter.py``/``counter_triton.py`` (the ``counter`` ballot), ``hashing.py`` (counter-based
uniforms), ``blocks.py`` (row blocks of the references), ``triton_common.py`` (what the kernels
share) and ``library.py`` (the ``torch.library`` registration of the Triton ops).
"""
from .backend import BACKENDS, TORCH_OPS, TernaryOps, get_ops, requested_backend, resolve_backend
from .blocks import block_rows_for
from .linear import expand_weight
from .votes import group_votes

__all__ = ["BACKENDS", "TORCH_OPS", "TernaryOps", "get_ops", "requested_backend", "resolve_backend",
           "block_rows_for", "expand_weight", "group_votes"]
