"""Token mixers for the one ViT: the layer between a block's first LayerNorm and its residual add.

Softmax attention costs :math:`4ND^2 + 2N^2D` MACs on N tokens of width D; every mixer here trades
part of the :math:`N^2` term for something cheaper (notebook 04 derives each count). The mixer is
chosen by :class:`~vitsurvey.models.ViTConfig` (``mixer`` and its one setting), so there is one
ViT and the rest of it (patch embedding, MLPs, norms, head) stays the same:

========== ====================================================== =================================
mixer      what mixes the tokens                                   setting
========== ====================================================== =================================
attention  softmax(QK^T/sqrt(d)) V, all pairs (the default)        --
window     softmax attention inside M x M windows, shifted in      ``window`` = M
           every second block (Swin)
linear     phi(Q) (phi(K)^T V), normalised; phi = elu + 1, or m    ``features`` = m (0: elu + 1)
           positive random features (Performer's FAVOR+)
lowrank    keys and values projected along the sequence to k       ``rank`` = k
           rows by learned E, F (Linformer)
sra        keys and values from the grid reduced R x R by a        ``reduction`` = R
           strided convolution and a LayerNorm (PVT)
pool       average pool of the neighbourhood minus the token       ``kernel`` (odd)
           (PoolFormer)
fourier    2-D FFT over the grid, a learned global filter,         --
           inverse FFT (GFNet)
conv       depthwise k x k convolution over the grid               ``kernel`` (odd)
========== ====================================================== =================================

Mixers that read the 2-D grid of patches (window, sra, pool, fourier, conv) need a model without
a class token (average pooling before the head, as Swin, PVT, PoolFormer and GFNet do):
:meth:`~vitsurvey.models.ViTConfig.with_mixer` sets that. Each mixer returns ``(tokens, None)``
like :class:`~vitsurvey.models.Attention` without weights; only softmax attention can return its
attention probabilities, which token reduction and attention maps need.

Where a paper's detail is not followed the class says so ("our design"). :func:`macs` and
:func:`params` are the analytic counts, checked in the tests against fvcore on the real modules.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .models import ViTConfig

MIXERS: dict[str, str | None] = {
    "attention": None, "window": "window", "linear": "features", "lowrank": "rank", "sra": "reduction",
    "pool": "kernel", "fourier": None, "conv": "kernel",
}
"""Every mixer and the :class:`ViTConfig` field that sets it (None: no setting)."""

SETTINGS: tuple[str, ...] = tuple(dict.fromkeys(f for f in MIXERS.values() if f))
"""The mixer-setting fields of :class:`ViTConfig`; each is 0 unless its mixer is chosen."""

GRID_MIXERS = frozenset({"window", "sra", "pool", "fourier", "conv"})
"""Mixers that treat the tokens as an image-shaped grid, so no class token may sit among them."""

RFFT_MACS_PER_POINT_LOG2 = 1.25
"""Convention for a real-input FFT of n points: 1.25 n log2(n) MACs, half the 5 n log2(n) real
flops of the textbook radix-2 complex FFT, at 2 flops per MAC. The inverse costs the same. FFT
libraries differ (mixed radices, real-to-complex tricks); fvcore has no count for FFTs, so
:func:`vitsurvey.measure.count_macs` applies this one."""


def rfft_macs(points: int, channels: int) -> int:
    """MACs of a real FFT (or its inverse) of ``points`` points in each of ``channels`` channels."""
    return round(RFFT_MACS_PER_POINT_LOG2 * points * math.log2(points) * channels) if points > 1 else 0


def _qkv(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split the fused projection into Q, K, V, each (B, heads, N, head_dim)."""
    B, N, _ = x.shape
    qkv = module.qkv(x).reshape(B, N, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)


def _merge_heads(out: Tensor) -> Tensor:
    B, h, N, d = out.shape
    return out.transpose(1, 2).reshape(B, N, h * d)


class Attention(nn.Module):
    """Multi-head self-attention, softmax(Q K^T / sqrt(d)) V, with one fused QKV projection."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads  # a pruned block keeps d and loses heads
        self.scale = self.head_dim**-0.5
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)

    def probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        """softmax(Q K^T / sqrt(d)), (B, heads, N, N)."""
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = _qkv(self, x)  # each (B, heads, N, head_dim)
        if need_weights:
            attn = self.probabilities(q, k)
            out = attn @ v
        else:  # the fused kernel never materialises the N x N matrix
            attn = None
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(_merge_heads(out)), attn


class _QKVMixer(nn.Module):
    """Shared shape of the attention-like mixers: one fused QKV projection and an output projection,
    named as in :class:`Attention`, so a trained attention's weights load into them."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class WindowAttention(_QKVMixer):
    """Softmax attention inside non-overlapping ``window`` x ``window`` blocks of the token grid (Swin).

    With ``shift``, the grid is rolled by half a window first and back afterwards, so the windows of
    consecutive blocks overlap and information crosses window borders. Our design, simpler than Swin:
    the roll is cyclic with no mask, so a shifted window at the border joins tokens from opposite
    edges; there is no relative position bias (the ViT's learned position embedding stays); MACs are
    the same either way.
    """

    def __init__(self, dim: int, num_heads: int, grid: int, window: int, shift: bool) -> None:
        super().__init__(dim, num_heads)
        self.grid, self.window = grid, window
        self.shift = window // 2 if shift and window < grid else 0

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        g, m = self.grid, self.window
        x = x.reshape(B, g, g, D)
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
        w = x.reshape(B, g // m, m, g // m, m, D).permute(0, 1, 3, 2, 4, 5).reshape(-1, m * m, D)
        q, k, v = _qkv(self, w)
        out = self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))
        out = out.reshape(B, g // m, g // m, m, m, D).permute(0, 1, 3, 2, 4, 5).reshape(B, g, g, D)
        if self.shift:
            out = torch.roll(out, (self.shift, self.shift), dims=(1, 2))
        return out.reshape(B, N, D)


def orthogonal_gaussian(dim: int, features: int, generator: torch.Generator) -> Tensor:
    """(dim, features) projection whose columns are orthogonal within each block of ``dim`` and have
    the lengths of Gaussian vectors: Performer's orthogonal random features, which estimate the
    softmax kernel with less variance than independent ones."""
    blocks = []
    for _ in range(math.ceil(features / dim)):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        blocks.append(q.T)
    rows = torch.cat(blocks)[:features]
    lengths = torch.randn(features, dim, generator=generator).norm(dim=1, keepdim=True)
    return (rows * lengths).T.contiguous()


class LinearAttention(_QKVMixer):
    """Kernelised attention, out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j)):
    the N x N matrix is never formed, so the cost is linear in N.

    ``features = 0``: phi(x) = elu(x) + 1 (Katharopoulos et al., 2020), m = head_dim features; it is not
    an estimate of softmax attention. ``features = m > 0``: positive orthogonal random features
    (Performer's FAVOR+, Choromanski et al., 2021), phi(x) = exp(w^T x - |x|^2 / 2) / sqrt(m) on
    x = q / d^(1/4), whose dot products estimate exp(q.k / sqrt(d)), so the layer approximates the
    softmax attention with the same weights, better as m grows. The projection is a fixed,
    seeded buffer (not saved in the state dict, so a trained attention's weights load unchanged);
    Performer redraws it during training, ours does not.
    """

    def __init__(self, dim: int, num_heads: int, features: int, seed: int = 0) -> None:
        super().__init__(dim, num_heads)
        self.features = features
        if features:
            omega = orthogonal_gaussian(self.head_dim, features, torch.Generator().manual_seed(seed))
            self.register_buffer("omega", omega, persistent=False)

    def feature_map(self, x: Tensor, is_query: bool) -> Tensor:
        if not self.features:
            return F.elu(x) + 1
        x = x * self.head_dim**-0.25
        logits = x @ self.omega - (x * x).sum(-1, keepdim=True) / 2
        # Subtracting a constant per query (or one per head for the keys) cancels in the ratio below
        # and keeps exp() finite.
        shift = logits.amax(-1, keepdim=True) if is_query else logits.amax((-2, -1), keepdim=True)
        return torch.exp(logits - shift.detach()) / math.sqrt(self.features)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = _qkv(self, x)
        fq, fk = self.feature_map(q, True), self.feature_map(k, False)
        kv = fk.transpose(-2, -1) @ v  # (B, h, m, d): sum_j phi(k_j) v_j^T
        normaliser = fq @ fk.sum(-2).unsqueeze(-1)  # (B, h, N, 1)
        out = (fq @ kv) / normaliser.clamp_min(1e-12)
        return self.proj(_merge_heads(out))


class LowRankAttention(_QKVMixer):
    """Linformer: keys and values are projected along the sequence, K' = E K and V' = F V with learned
    E, F of shape (rank, N) shared by the heads of a layer, so softmax(Q K'^T / sqrt(d)) V' costs
    N x rank instead of N x N. E and F tie the model to one token count N."""

    def __init__(self, dim: int, num_heads: int, tokens: int, rank: int) -> None:
        super().__init__(dim, num_heads)
        self.tokens, self.rank = tokens, rank
        self.E = nn.Parameter(torch.empty(tokens, rank))  # stored transposed: keys (.., d, N) @ E
        self.F = nn.Parameter(torch.empty(tokens, rank))
        for p in (self.E, self.F):
            nn.init.normal_(p, std=rank**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.tokens:
            raise ValueError(f"This Linformer layer was built for {self.tokens} tokens, not {x.shape[1]}: its E and F "
                             "have one column per token. Build the model for this image size.")
        q, k, v = _qkv(self, x)
        k = (k.transpose(-2, -1) @ self.E).transpose(-2, -1)  # (B, h, rank, d)
        v = (v.transpose(-2, -1) @ self.F).transpose(-2, -1)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class SpatialReductionAttention(nn.Module):
    """PVT's spatial-reduction attention: every token queries keys and values computed from the grid
    reduced by ``reduction`` in each direction (a convolution of kernel and stride R, then LayerNorm),
    so the score matrix is N x N/R^2. As in PVT, Q and the joint K, V projection are separate layers."""

    def __init__(self, dim: int, num_heads: int, grid: int, reduction: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.grid, self.reduction = grid, reduction
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.sr = nn.Conv2d(dim, dim, kernel_size=reduction, stride=reduction)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        h, d, g = self.num_heads, self.head_dim, self.grid
        q = self.q(x).reshape(B, N, h, d).transpose(1, 2)
        r = self.sr(x.transpose(1, 2).reshape(B, D, g, g)).flatten(2).transpose(1, 2)  # (B, N / R^2, D)
        k, v = self.kv(self.norm(r)).reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class PoolMixer(nn.Module):
    """PoolFormer's token mixer: the average of each k x k neighbourhood (padding not counted) minus the
    token itself (the block's residual adds it back). No parameters."""

    def __init__(self, grid: int, kernel: int) -> None:
        super().__init__()
        self.grid = grid
        self.pool = nn.AvgPool2d(kernel, stride=1, padding=kernel // 2, count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        img = x.transpose(1, 2).reshape(B, D, self.grid, self.grid)
        return (self.pool(img) - img).flatten(2).transpose(1, 2)


class FourierMixer(nn.Module):
    """GFNet's global filter: a real 2-D FFT of each channel over the token grid, an element-wise
    product with a learned complex filter (one per frequency and channel), and the inverse FFT.
    The product in the frequency domain is a circular convolution over the grid with a kernel as
    large as the grid: global, input-independent, translation-invariant mixing in O(N log N)."""

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.filter = nn.Parameter(torch.randn(grid, grid // 2 + 1, dim, 2) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        g = self.grid
        spectrum = torch.fft.rfft2(x.reshape(B, g, g, D).float(), dim=(1, 2), norm="ortho")
        spectrum = spectrum * torch.view_as_complex(self.filter)
        return torch.fft.irfft2(spectrum, s=(g, g), dim=(1, 2), norm="ortho").reshape(B, N, D).to(x.dtype)


class ConvMixer(nn.Module):
    """A depthwise k x k convolution over the token grid: local, input-independent mixing, the mixer of
    the convolutional and hybrid families (our design: one depthwise convolution with bias, in the
    slot where attention was; ConvNeXt and the MetaFormer baselines wrap it in more layers)."""

    def __init__(self, dim: int, grid: int, kernel: int) -> None:
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        return self.conv(x.transpose(1, 2).reshape(B, D, self.grid, self.grid)).flatten(2).transpose(1, 2)


def check(cfg: ViTConfig) -> None:
    """Raise a ValueError naming the field and the fix when ``cfg``'s mixer settings are inconsistent."""
    if cfg.mixer not in MIXERS:
        raise ValueError(f"Unknown mixer {cfg.mixer!r}; choose one of {', '.join(MIXERS)}.")
    own = MIXERS[cfg.mixer]
    for field in SETTINGS:
        if not isinstance(getattr(cfg, field), int):
            raise ValueError(f"{field}={getattr(cfg, field)!r} must be a whole number.")
        if field != own and getattr(cfg, field):
            raise ValueError(f"{field}={getattr(cfg, field)} is set, but mixer {cfg.mixer!r} does not use it; "
                             f"leave it 0 (ViTConfig.with_mixer resets the other mixers' settings).")
    grid = cfg.grid
    if cfg.mixer in GRID_MIXERS and cfg.class_token:
        raise ValueError(f"The {cfg.mixer!r} mixer mixes the {grid} x {grid} grid of patches, where a class token has "
                         "no place: use class_token=False with global_pool='avg' (ViTConfig.with_mixer does).")
    if cfg.mixer == "window" and (cfg.window < 1 or grid % cfg.window):
        raise ValueError(f"window={cfg.window} does not divide the {grid} x {grid} token grid "
                         f"(img_size {cfg.img_size} / patch_size {cfg.patch_size}); choose a divisor of {grid}.")
    if cfg.mixer == "sra" and (cfg.reduction < 1 or grid % cfg.reduction):
        raise ValueError(f"reduction={cfg.reduction} does not divide the {grid} x {grid} token grid; "
                         f"choose a divisor of {grid} (PVT reduces by 8, 4, 2 and 1 in its four stages).")
    if cfg.mixer == "lowrank" and cfg.rank < 1:
        raise ValueError(f"rank={cfg.rank}: Linformer's projected length must be at least 1.")
    if cfg.mixer == "linear" and cfg.features < 0:
        raise ValueError(f"features={cfg.features}: give the number of random features (> 0), or 0 for elu + 1.")
    if cfg.mixer in ("pool", "conv") and (cfg.kernel < 1 or cfg.kernel % 2 == 0):
        raise ValueError(f"kernel={cfg.kernel}: the {cfg.mixer} mixer needs an odd kernel size >= 1 "
                         "(PoolFormer uses 3), so that the output grid equals the input grid.")


def build(cfg: ViTConfig, index: int) -> nn.Module:
    """The mixer of block ``index`` (window attention shifts in every second block)."""
    D, h, grid = cfg.embed_dim, cfg.num_heads, cfg.grid
    if cfg.mixer == "attention":
        return Attention(D, h)
    if cfg.mixer == "window":
        return WindowAttention(D, h, grid, cfg.window, shift=index % 2 == 1)
    if cfg.mixer == "linear":
        return LinearAttention(D, h, cfg.features, seed=index)
    if cfg.mixer == "lowrank":
        return LowRankAttention(D, h, cfg.num_tokens, cfg.rank)
    if cfg.mixer == "sra":
        return SpatialReductionAttention(D, h, grid, cfg.reduction)
    if cfg.mixer == "pool":
        return PoolMixer(grid, cfg.kernel)
    if cfg.mixer == "fourier":
        return FourierMixer(D, grid)
    return ConvMixer(D, grid, cfg.kernel)


def macs(cfg: ViTConfig, tokens: int | None = None) -> dict[str, int]:
    """MACs of one mixer layer on ``tokens`` tokens (default: the config's), per component.

    Conventions follow fvcore, so the count can be checked against it: a matrix product or
    convolution counts its multiply-adds; LayerNorm 5 per element; element-wise products, biases,
    softmax, exp and sums over a dimension count 0; average pooling counts one per input element
    read (k^2 per output); a real FFT :data:`RFFT_MACS_PER_POINT_LOG2` x n log2 n per channel.
    """
    N = cfg.num_tokens if tokens is None else tokens
    D, h = cfg.embed_dim, cfg.num_heads
    if cfg.mixer == "attention":
        return {"qkv": 3 * N * D * D, "attn_scores": N * N * D, "attn_values": N * N * D, "attn_proj": N * D * D}
    if cfg.mixer == "window":
        m2 = cfg.window**2
        return {"qkv": 3 * N * D * D, "window_scores": N * m2 * D, "window_values": N * m2 * D, "attn_proj": N * D * D}
    if cfg.mixer == "linear":
        m = cfg.features or D // h
        out = {"qkv": 3 * N * D * D}
        if cfg.features:
            out["feature_maps"] = 2 * N * m * D  # q and k times the (d, m) projection, every head
        return {**out, "keys_values": N * m * D, "queries": N * m * D, "normaliser": N * m * h, "attn_proj": N * D * D}
    if cfg.mixer == "lowrank":
        k = cfg.rank
        return {"qkv": 3 * N * D * D, "project_kv": 2 * N * k * D, "attn_scores": N * k * D, "attn_values": N * k * D,
                "attn_proj": N * D * D}
    if cfg.mixer == "sra":
        r2 = cfg.reduction**2
        n_r = N // r2
        return {"q": N * D * D, "reduce_conv": n_r * r2 * D * D, "reduce_norm": 5 * n_r * D, "kv": 2 * n_r * D * D,
                "attn_scores": N * n_r * D, "attn_values": N * n_r * D, "attn_proj": N * D * D}
    if cfg.mixer == "pool":
        return {"pool": N * D * cfg.kernel**2}
    if cfg.mixer == "fourier":
        return {"fft": rfft_macs(N, D), "inverse_fft": rfft_macs(N, D)}
    return {"depthwise_conv": N * D * cfg.kernel**2}


def params(cfg: ViTConfig) -> int:
    """Parameters of one mixer layer."""
    D, grid = cfg.embed_dim, cfg.grid
    if cfg.mixer in ("attention", "window", "linear"):
        return 4 * D * D + 4 * D
    if cfg.mixer == "lowrank":
        return 4 * D * D + 4 * D + 2 * cfg.num_tokens * cfg.rank
    if cfg.mixer == "sra":
        return 4 * D * D + 4 * D + cfg.reduction**2 * D * D + D + 2 * D
    if cfg.mixer == "pool":
        return 0
    if cfg.mixer == "fourier":
        return grid * (grid // 2 + 1) * D * 2
    return D * cfg.kernel**2 + D


def crossover_tokens(cfg: ViTConfig) -> float:
    """The token count N above which this mixer needs fewer MACs than softmax attention of the same
    width, solved from :func:`macs`: 0.0 when it is cheaper at every N, ``math.inf`` when at none
    (attention itself; spatial reduction with R = 1 adds a convolution and saves nothing)."""
    D, h = cfg.embed_dim, cfg.num_heads
    if cfg.mixer == "window":
        return float(cfg.window**2)  # 2 N^2 D > 2 N M^2 D
    if cfg.mixer == "linear":
        m = cfg.features or D // h
        extra = 2 * m * D if cfg.features else 0
        return (2 * m * D + m * h + extra) / (2 * D)  # 2 N^2 D > N (2 m D + m h + extra)
    if cfg.mixer == "lowrank":
        return float(2 * cfg.rank)  # 4 N D^2 + 2 N^2 D > 4 N D^2 + 4 N k D
    if cfg.mixer in ("pool", "conv"):
        return max(0.0, (cfg.kernel**2 - 4 * D) / 2)  # N D k^2 < 4 N D^2 + 2 N^2 D
    if cfg.mixer == "fourier":
        return 0.0  # 2.5 log2(N) D < 4 D^2 + 2 N D for every N >= 1
    if cfg.mixer == "sra":  # saves N D^2 (1 - 2/R^2) + 2 N^2 D (1 - 1/R^2), costs 5 N D / R^2 (the norm)
        return 0.0 if cfg.reduction > 1 else math.inf
    return math.inf


# --------------------------------------------------------------------------- how well cheaper mixers can stand in
# for a trained softmax attention (S1's approximation and spectral complexity)


def best_low_rank(attn: Tensor, rank: int) -> Tensor:
    """The best rank-``rank`` approximation (Frobenius norm, Eckart-Young) of each N x N attention matrix in
    ``attn`` (..., N, N), by truncated SVD. No mixer of rank ``rank`` (Linformer's included) can do better
    on these matrices; it is the yardstick, not a method (an SVD costs far more than attention)."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, not {rank}.")
    with _one_thread():
        u, s, vh = torch.linalg.svd(attn.double(), full_matrices=False)
    k = min(rank, s.shape[-1])
    return ((u[..., :k] * s[..., None, :k]) @ vh[..., :k, :]).to(attn.dtype)


def singular_values(attn: Tensor) -> Tensor:
    """Singular values of each N x N matrix in ``attn`` (..., N, N), largest first, in float64."""
    with _one_thread():
        return torch.linalg.svdvals(attn.double())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Batched SVDs of many small matrices gain nothing from threads, and on a busy 2-core machine
    LAPACK's threads were seen to slow them 100-fold (oversubscription); run them on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class RankTruncatedAttention(Attention):
    """A trained softmax attention whose probability matrix is replaced by its best rank-``rank``
    approximation (:func:`best_low_rank`) before it weighs the values: how much accuracy a model keeps
    when its attention is forced to low rank, with no retraining. Shares the weights it wraps."""

    def __init__(self, attention: Attention, rank: int) -> None:
        nn.Module.__init__(self)
        if not isinstance(attention, Attention):
            raise ValueError(f"RankTruncatedAttention wraps a softmax Attention, not {type(attention).__name__}.")
        self.num_heads, self.head_dim, self.scale = attention.num_heads, attention.head_dim, attention.scale
        self.qkv, self.proj, self.rank = attention.qkv, attention.proj, rank

    def probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        return best_low_rank(super().probabilities(q, k), self.rank)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        out, attn = super().forward(x, need_weights=True)  # the explicit path, through probabilities()
        return out, attn if need_weights else None


def truncate_attention(model: nn.Module, rank: int) -> nn.Module:
    """A copy of ``model`` (ours, softmax attention) whose every attention matrix is cut to rank ``rank``."""
    import copy

    from .models import require_plain

    require_plain(model, "truncate_attention")
    out = copy.deepcopy(model)
    for block in out.blocks:
        block.attn = RankTruncatedAttention(block.attn, rank)
    return out


def _circulant_kernel(p: Tensor, grid: int) -> Tensor:
    """Orthogonal projection of (..., grid^2, grid^2) matrices onto 2-D circulant ones, as kernels c[a, b]."""
    q = p.reshape(*p.shape[:-2], grid, grid, grid, grid)  # [i, j, i', j']
    r = torch.arange(grid)
    i, j = r[:, None, None, None], r[None, :, None, None]
    a, b = r[None, None, :, None], r[None, None, None, :]
    return q[..., i, j, (i + a) % grid, (j + b) % grid].mean((-4, -3))  # [i, j, a, b] averaged over (i, j)


def _patch_block(attn: Tensor, grid: int, prefix: int) -> Tensor:
    p = attn[..., prefix:, prefix:]
    if p.shape[-1] != grid * grid or p.shape[-2] != grid * grid:
        raise ValueError(f"{p.shape[-1]} patch tokens after {prefix} prefix tokens is not a {grid} x {grid} grid.")
    return p


def circulant_projection(attn: Tensor, grid: int, prefix: int = 1) -> Tensor:
    """For each attention matrix (..., N, N), its patch-to-patch part (the ``prefix`` tokens dropped)
    projected orthogonally onto the 2-D circulant matrices of a ``grid`` x ``grid`` torus: the weight of
    patch (i + a, j + b) in the output of patch (i, j) replaced by its average over all (i, j). Those are
    the matrices a global filter (GFNet's Fourier mixer) applies: translation-invariant, the same at
    every position. Returns the (..., grid, grid) kernel c[a, b]."""
    return _circulant_kernel(_patch_block(attn, grid, prefix), grid)


def circulant_share(attn: Tensor, grid: int, prefix: int = 1, shared: bool = False) -> Tensor:
    """Fraction of the patch-to-patch attention's energy (squared Frobenius norm) that circulant mixing
    keeps, after removing each matrix's mean (a uniform matrix is circulant, and would otherwise count
    as structure explained). 1 for purely translation-invariant mixing.

    ``attn`` is (B, ..., N, N). Per matrix by default, (B, ...); with ``shared``, one kernel for all B
    matrices (the batch mean of their kernels, the projection onto input-independent mixing, which is
    what GFNet's learned filter is), returning (...)."""
    p = _patch_block(attn, grid, prefix)
    p = p - p.mean((-2, -1), keepdim=True)
    kernel = _circulant_kernel(p, grid)
    total = p.square().sum((-2, -1))
    if shared:
        return grid * grid * p.shape[0] * kernel.mean(0).square().sum((-2, -1)) / total.sum(0)
    return grid * grid * kernel.square().sum((-2, -1)) / total
