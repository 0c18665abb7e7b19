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
like :class:`~vitsurvey.models.layers.Attention` without weights; only softmax attention can return its
attention probabilities, which token reduction and attention maps need.

Each mixer is one class (a :class:`~vitsurvey.models.layers.TokenMixer`) that builds itself from a config
and states its own setting check, MACs, parameters and crossover with attention; :func:`register` files it
under its name, and :data:`MIXERS`, :data:`SETTINGS`, :data:`GRID_MIXERS` and the functions :func:`check`,
:func:`build`, :func:`macs`, :func:`params` and :func:`crossover_tokens` read that one registry. Adding a
mixer is one registered class here and its test; a mixer with a new setting also needs that field in
:class:`~vitsurvey.models.ViTConfig` (a whole number, 0 when unused).

Where a paper's detail is not followed the class says so ("our design"). :func:`macs` and
:func:`params` are the analytic counts, checked in the tests against fvcore on the real modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import is_whole
from .layers import Attention, TokenMixer, merge_heads, split_qkv

if TYPE_CHECKING:
    from .vit import ViTConfig

__all__ = [
    "ConvMixer", "FourierMixer", "GRID_MIXERS", "LinearAttention", "LowRankAttention", "MIXERS", "PoolMixer",
    "REGISTRY", "RFFT_MACS_PER_POINT_LOG2", "SETTINGS", "SpatialReductionAttention", "WindowAttention", "build",
    "check", "crossover_tokens", "macs", "orthogonal_gaussian", "params", "register", "rfft_macs", "unregister",
]

REGISTRY: dict[str, type[TokenMixer]] = {}
"""Every mixer's class, by the name ``ViTConfig.mixer`` gives it, in the order they were registered. The three
views below follow it; :func:`register` rebinds the two immutable ones, so read them as attributes of this
module (``mixers.SETTINGS``), not copies taken at import."""

MIXERS: dict[str, str | None] = {}
"""Every mixer and the :class:`ViTConfig` field that sets it (None: no setting)."""

SETTINGS: tuple[str, ...] = ()
"""The mixer-setting fields of :class:`ViTConfig`; each is 0 unless its mixer is chosen."""

GRID_MIXERS: frozenset[str] = frozenset()
"""Mixers that treat the tokens as an image-shaped grid, so no class token may sit among them."""

_Mixer = TypeVar("_Mixer", bound=type[TokenMixer])


def register(name: str, setting: str | None = None, grid: bool = False) -> Callable[[_Mixer], _Mixer]:
    """File a mixer class under ``name``: ``setting`` is the :class:`ViTConfig` field that sets it (None:
    none), ``grid`` says it mixes the 2-D patch grid (so the model may have no class token)."""

    def add(cls: _Mixer) -> _Mixer:
        global SETTINGS, GRID_MIXERS
        if name in REGISTRY:
            raise ValueError(f"A mixer named {name!r} is registered already ({REGISTRY[name].__name__}).")
        REGISTRY[name], MIXERS[name] = cls, setting
        SETTINGS = tuple(dict.fromkeys(f for f in MIXERS.values() if f))
        GRID_MIXERS = GRID_MIXERS | {name} if grid else GRID_MIXERS
        return cls

    return add


def unregister(name: str) -> None:
    """Remove the mixer ``name`` from the registry (for mixers registered only for a while, as in a test)."""
    global SETTINGS, GRID_MIXERS
    del REGISTRY[name], MIXERS[name]
    SETTINGS = tuple(dict.fromkeys(f for f in MIXERS.values() if f))
    GRID_MIXERS = GRID_MIXERS - {name}


register("attention")(Attention)

RFFT_MACS_PER_POINT_LOG2 = 1.25
"""Convention for a real-input FFT of n points: 1.25 n log2(n) MACs, half the 5 n log2(n) real
flops of the textbook radix-2 complex FFT, at 2 flops per MAC. The inverse costs the same. FFT
libraries differ (mixed radices, real-to-complex tricks); fvcore has no count for FFTs, so
:func:`vitsurvey.measure.count_macs` applies this one."""


def rfft_macs(points: int, channels: int) -> int:
    """MACs of a real FFT (or its inverse) of ``points`` points in each of ``channels`` channels."""
    return round(RFFT_MACS_PER_POINT_LOG2 * points * math.log2(points) * channels) if points > 1 else 0


class _QKVMixer(TokenMixer):
    """Shared shape of the attention-like mixers: one fused QKV projection and an output projection,
    named as in :class:`Attention`, so a trained attention's weights load into them."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> tuple[Tensor, ...]:
        """Q, K, V of ``x``, each (B, heads, N, head_dim)."""
        return split_qkv(self.qkv(x), self.num_heads, self.head_dim)

    @staticmethod
    def params(cfg: ViTConfig) -> int:
        return Attention.params(cfg)


@register("window", setting="window", grid=True)
class WindowAttention(_QKVMixer):
    """Softmax attention inside non-overlapping ``window`` x ``window`` blocks of the token grid (Swin).

    With ``shift`` (every second block, as Swin alternates), the grid is rolled by half a window first and back
    afterwards, so the windows of consecutive blocks overlap and information crosses window borders. As in Swin, a
    shifted window at the grid's border holds tokens from opposite edges of the image, and a mask keeps them apart:
    a token attends only to the tokens of its window that were neighbours before the roll (:meth:`shift_mask`).
    Unlike Swin, there is no relative position bias (the ViT's learned position embedding stays); MACs are the same
    either way.
    """

    def __init__(self, dim: int, num_heads: int, grid: int, window: int, shift: bool) -> None:
        super().__init__(dim, num_heads)
        self.grid, self.window = grid, window
        self.shift = window // 2 if shift and window < grid else 0
        if self.shift:
            self.register_buffer("mask", self.shift_mask(grid, window, self.shift), persistent=False)

    @staticmethod
    def shift_mask(grid: int, window: int, shift: int) -> Tensor:
        """(windows, window^2, window^2) bool: which tokens of a window, after the grid is rolled by ``-shift``, may
        attend to each other. Rolling cuts each axis into three bands, [0, grid - window), [grid - window, grid -
        shift) and [grid - shift, grid); only the last band came from the opposite edge, so tokens may attend to each
        other where they lie in the same band along both axes (Swin's region labels)."""
        band = torch.zeros(grid, dtype=torch.long)
        band[grid - window:] = 1
        band[grid - shift:] = 2
        region = (band[:, None] * 3 + band[None, :]).reshape(grid // window, window, grid // window, window)
        labels = region.permute(0, 2, 1, 3).reshape(-1, window * window)  # (windows, tokens of a window)
        return labels[:, :, None] == labels[:, None, :]

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        g, m = self.grid, self.window
        x = x.reshape(B, g, g, D)
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
        w = x.reshape(B, g // m, m, g // m, m, D).permute(0, 1, 3, 2, 4, 5).reshape(-1, m * m, D)
        q, k, v = self.heads(w)
        mask = self.mask.repeat(B, 1, 1)[:, None] if self.shift else None  # windows in the order of w
        out = self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))
        out = out.reshape(B, g // m, g // m, m, m, D).permute(0, 1, 3, 2, 4, 5).reshape(B, g, g, D)
        if self.shift:
            out = torch.roll(out, (self.shift, self.shift), dims=(1, 2))
        return out.reshape(B, N, D)

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> WindowAttention:
        return cls(cfg.embed_dim, cfg.num_heads, cfg.grid, cfg.window, shift=index % 2 == 1)

    @classmethod
    def check(cls, cfg: ViTConfig) -> None:
        grid = cfg.grid
        if cfg.window < 1 or grid % cfg.window:
            raise ValueError(f"window={cfg.window} does not divide the {grid} x {grid} token grid "
                             f"(img_size {cfg.img_size} / patch_size {cfg.patch_size}); choose a divisor of {grid}.")

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        N, D, m2 = tokens, cfg.embed_dim, cfg.window**2
        return {"qkv": 3 * N * D * D, "window_scores": N * m2 * D, "window_values": N * m2 * D, "attn_proj": N * D * D}

    @staticmethod
    def crossover_tokens(cfg: ViTConfig) -> float:
        return float(cfg.window**2)  # 2 N^2 D > 2 N M^2 D


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


@register("linear", setting="features")
class LinearAttention(_QKVMixer):
    """Kernelised attention, out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j)):
    the N x N matrix is never formed, so the cost is linear in N.

    ``features = 0``: phi(x) = elu(x) + 1 (Katharopoulos et al., 2020), m = head_dim features; it is not
    an estimate of softmax attention. ``features = m > 0``: positive orthogonal random features
    (Performer's FAVOR+, Choromanski et al., 2021), phi(x) = exp(w^T x - |x|^2 / 2) / sqrt(m) on
    x = q / d^(1/4), whose dot products estimate exp(q.k / sqrt(d)), so the layer approximates the
    softmax attention with the same weights, better as m grows. Each feature carries Performer's ``eps = 1e-4``
    after the largest projection is subtracted (:meth:`feature_map`). The projection is a fixed,
    seeded buffer (not saved in the state dict, so a trained attention's weights load unchanged);
    Performer redraws it during training, ours does not.
    """

    eps: float = 1e-4
    """Added to every random feature, as Performer's ``softmax_kernel`` does (0 for none)."""

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
        projected = x @ self.omega
        # As Performer's code: subtract the largest projection per query (one per head for the keys), which keeps
        # exp() finite, then add eps to every feature, which keeps the normaliser away from 0 where a query's
        # features all underflow. Without eps the shift would cancel in the ratio; with it, it sets eps's scale.
        shift = projected.amax(-1, keepdim=True) if is_query else projected.amax((-2, -1), keepdim=True)
        logits = projected - (x * x).sum(-1, keepdim=True) / 2 - shift.detach()
        return (torch.exp(logits) + self.eps) / math.sqrt(self.features)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.heads(x)
        fq, fk = self.feature_map(q, True), self.feature_map(k, False)
        kv = fk.transpose(-2, -1) @ v  # (B, h, m, d): sum_j phi(k_j) v_j^T
        normaliser = fq @ fk.sum(-2).unsqueeze(-1)  # (B, h, N, 1)
        out = (fq @ kv) / normaliser.clamp_min(1e-12)
        return self.proj(merge_heads(out))

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> LinearAttention:
        return cls(cfg.embed_dim, cfg.num_heads, cfg.features, seed=index)

    @classmethod
    def check(cls, cfg: ViTConfig) -> None:
        if cfg.features < 0:
            raise ValueError(f"features={cfg.features}: give the number of random features (> 0), or 0 for elu + 1.")

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        N, D, h = tokens, cfg.embed_dim, cfg.num_heads
        m = cfg.features or D // h
        out = {"qkv": 3 * N * D * D}
        if cfg.features:
            out["feature_maps"] = 2 * N * m * D  # q and k times the (d, m) projection, every head
        return {**out, "keys_values": N * m * D, "queries": N * m * D, "normaliser": N * m * h, "attn_proj": N * D * D}

    @staticmethod
    def crossover_tokens(cfg: ViTConfig) -> float:
        D, h = cfg.embed_dim, cfg.num_heads
        m = cfg.features or D // h
        extra = 2 * m * D if cfg.features else 0
        return (2 * m * D + m * h + extra) / (2 * D)  # 2 N^2 D > N (2 m D + m h + extra)


@register("lowrank", setting="rank")
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
        q, k, v = self.heads(x)
        k = (k.transpose(-2, -1) @ self.E).transpose(-2, -1)  # (B, h, rank, d)
        v = (v.transpose(-2, -1) @ self.F).transpose(-2, -1)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> LowRankAttention:
        return cls(cfg.embed_dim, cfg.num_heads, cfg.num_tokens, cfg.rank)

    @classmethod
    def check(cls, cfg: ViTConfig) -> None:
        if cfg.rank < 1:
            raise ValueError(f"rank={cfg.rank}: Linformer's projected length must be at least 1.")

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        N, D, k = tokens, cfg.embed_dim, cfg.rank
        return {"qkv": 3 * N * D * D, "project_kv": 2 * N * k * D, "attn_scores": N * k * D, "attn_values": N * k * D,
                "attn_proj": N * D * D}

    @staticmethod
    def params(cfg: ViTConfig) -> int:
        D = cfg.embed_dim
        return 4 * D * D + 4 * D + 2 * cfg.num_tokens * cfg.rank

    @staticmethod
    def crossover_tokens(cfg: ViTConfig) -> float:
        return float(2 * cfg.rank)  # 4 N D^2 + 2 N^2 D > 4 N D^2 + 4 N k D


@register("sra", setting="reduction", grid=True)
class SpatialReductionAttention(TokenMixer):
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
        (q,) = split_qkv(self.q(x), h, d)
        r = self.sr(x.transpose(1, 2).reshape(B, D, g, g)).flatten(2).transpose(1, 2)  # (B, N / R^2, D)
        k, v = split_qkv(self.kv(self.norm(r)), h, d)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> SpatialReductionAttention:
        return cls(cfg.embed_dim, cfg.num_heads, cfg.grid, cfg.reduction)

    @classmethod
    def check(cls, cfg: ViTConfig) -> None:
        grid = cfg.grid
        if cfg.reduction < 1 or grid % cfg.reduction:
            raise ValueError(f"reduction={cfg.reduction} does not divide the {grid} x {grid} token grid; "
                             f"choose a divisor of {grid} (PVT reduces by 8, 4, 2 and 1 in its four stages).")

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        N, D, r2 = tokens, cfg.embed_dim, cfg.reduction**2
        n_r = N // r2
        return {"q": N * D * D, "reduce_conv": n_r * r2 * D * D, "reduce_norm": 5 * n_r * D, "kv": 2 * n_r * D * D,
                "attn_scores": N * n_r * D, "attn_values": N * n_r * D, "attn_proj": N * D * D}

    @staticmethod
    def params(cfg: ViTConfig) -> int:
        D = cfg.embed_dim
        return 4 * D * D + 4 * D + cfg.reduction**2 * D * D + D + 2 * D

    @staticmethod
    def crossover_tokens(cfg: ViTConfig) -> float:
        # saves N D^2 (1 - 2/R^2) + 2 N^2 D (1 - 1/R^2), costs 5 N D / R^2 (the norm)
        return 0.0 if cfg.reduction > 1 else math.inf


class _OddKernel(TokenMixer):
    """The check shared by the mixers that slide an odd ``kernel`` over the grid."""

    @classmethod
    def check(cls, cfg: ViTConfig) -> None:
        if cfg.kernel < 1 or cfg.kernel % 2 == 0:
            raise ValueError(f"kernel={cfg.kernel}: the {cfg.mixer} mixer needs an odd kernel size >= 1 "
                             "(PoolFormer uses 3), so that the output grid equals the input grid.")

    @staticmethod
    def crossover_tokens(cfg: ViTConfig) -> float:
        return max(0.0, (cfg.kernel**2 - 4 * cfg.embed_dim) / 2)  # N D k^2 < 4 N D^2 + 2 N^2 D


@register("pool", setting="kernel", grid=True)
class PoolMixer(_OddKernel):
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

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> PoolMixer:
        return cls(cfg.grid, cfg.kernel)

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        return {"pool": tokens * cfg.embed_dim * cfg.kernel**2}

    @staticmethod
    def params(cfg: ViTConfig) -> int:
        return 0


@register("fourier", grid=True)
class FourierMixer(TokenMixer):
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

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> FourierMixer:
        return cls(cfg.embed_dim, cfg.grid)

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        return {"fft": rfft_macs(tokens, cfg.embed_dim), "inverse_fft": rfft_macs(tokens, cfg.embed_dim)}

    @staticmethod
    def params(cfg: ViTConfig) -> int:
        grid = cfg.grid
        return grid * (grid // 2 + 1) * cfg.embed_dim * 2

    @staticmethod
    def crossover_tokens(cfg: ViTConfig) -> float:
        return 0.0  # 2.5 log2(N) D < 4 D^2 + 2 N D for every N >= 1


@register("conv", setting="kernel", grid=True)
class ConvMixer(_OddKernel):
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

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> ConvMixer:
        return cls(cfg.embed_dim, cfg.grid, cfg.kernel)

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        return {"depthwise_conv": tokens * cfg.embed_dim * cfg.kernel**2}

    @staticmethod
    def params(cfg: ViTConfig) -> int:
        return cfg.embed_dim * cfg.kernel**2 + cfg.embed_dim


def check(cfg: ViTConfig) -> None:
    """Raise a ValueError naming the field and the fix when ``cfg``'s mixer settings are inconsistent."""
    if cfg.mixer not in REGISTRY:
        raise ValueError(f"Unknown mixer {cfg.mixer!r}; choose one of {', '.join(MIXERS)}.")
    own = MIXERS[cfg.mixer]
    for field in SETTINGS:
        if not is_whole(getattr(cfg, field)):
            raise ValueError(f"{field}={getattr(cfg, field)!r} must be a whole number.")
        if field != own and getattr(cfg, field):
            raise ValueError(f"{field}={getattr(cfg, field)} is set, but mixer {cfg.mixer!r} does not use it; "
                             f"leave it 0 (ViTConfig.with_mixer resets the other mixers' settings).")
    if cfg.mixer in GRID_MIXERS and cfg.class_token:
        raise ValueError(f"The {cfg.mixer!r} mixer mixes the {cfg.grid} x {cfg.grid} grid of patches, where a class "
                         "token has no place: use class_token=False with global_pool='avg' (ViTConfig.with_mixer "
                         "does).")
    REGISTRY[cfg.mixer].check(cfg)


def build(cfg: ViTConfig, index: int) -> nn.Module:
    """The mixer of block ``index`` (window attention shifts in every second block)."""
    return REGISTRY[cfg.mixer].build(cfg, index)


def macs(cfg: ViTConfig, tokens: int | None = None) -> dict[str, int]:
    """MACs of one mixer layer on ``tokens`` tokens (default: the config's), per component.

    Conventions follow fvcore, so the count can be checked against it: a matrix product or
    convolution counts its multiply-adds; LayerNorm 5 per element; element-wise products, biases,
    softmax, exp and sums over a dimension count 0; average pooling counts one per input element
    read (k^2 per output); a real FFT :data:`RFFT_MACS_PER_POINT_LOG2` x n log2 n per channel.
    """
    return REGISTRY[cfg.mixer].macs(cfg, cfg.num_tokens if tokens is None else tokens)


def params(cfg: ViTConfig) -> int:
    """Parameters of one mixer layer."""
    return REGISTRY[cfg.mixer].params(cfg)


def crossover_tokens(cfg: ViTConfig) -> float:
    """The token count N above which this mixer needs fewer MACs than softmax attention of the same
    width, solved from :func:`macs`: 0.0 when it is cheaper at every N, ``math.inf`` when at none
    (attention itself; spatial reduction with R = 1 adds a convolution and saves nothing)."""
    return REGISTRY[cfg.mixer].crossover_tokens(cfg)
