"""Torch custom ops (``sparseforge::<op>``) over the compiled kernels in ``sparseforge._C``."""
from .block_attention import BlockAttentionStats, block_attention, double_sparsity_decode, gathered_decode_attention
from .nm_linear import nm_linear
from .spgemm import spgemm
from .sparse_conv1x1 import sparse_conv1x1  # noqa: F401
