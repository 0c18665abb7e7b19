"""Quantization: uniform affine quantizers, their calibration, and the ViT-specific quantizers of PTQ4ViT and FQ-ViT.

A b-bit uniform affine quantizer maps a real x to an integer q = clamp(round(x / s) + z, q_min, q_max) and back
to x_hat = s (q - z). Inside the clipping range [s (q_min - z), s (q_max - z)] the rounding error is at most
s / 2, half a step; outside it, values are clipped. ``symmetric`` fixes z = 0 and a signed range;
``per_channel_axis`` gives every channel its own scale (and zero point).

Calibration chooses the clipping range from data: ``minmax`` (the observed extremes), ``percentile`` (ignore
the most extreme values), or ``mse`` (search the range that minimises the squared quantization error).

ViT-specific quantizers, for the distributions that uniform quantizers serve badly:

* :class:`Log2Quantizer` for post-softmax attention probabilities, which follow a power law: x_hat = 2^-q
  (FQ-ViT's log2 quantizer); exact on powers of two, and its error is half a step in the log domain.
* :class:`TwinUniform` for post-softmax and post-GELU values (after PTQ4ViT; a symmetric variant): two
  uniform ranges, a fine one for the many small values and a coarse one (its step a power-of-two multiple of the fine one) for the few
  large ones.
* :func:`power_of_two_factors` for LayerNorm inputs, whose channels can differ widely in range
  (FQ-ViT's power-of-two factor): one layer-wide scale and zero point, times a per-channel 2^alpha chosen by
  the smallest squared error, as FQ-ViT's code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import is_whole
from ..models import VisionTransformer
from ..models.layers import merge_heads, split_qkv

__all__ = [
    "GELU_CHOICES", "LAYERNORM_CHOICES", "Log2Quantizer", "METHODS", "QuantConfig", "QuantViT", "SOFTMAX_CHOICES",
    "TwinUniform", "UniformQuantizer", "calibrate", "compiled", "dynamic_int8", "power_of_two_factors", "qrange",
    "torchao_int8",
]

METHODS = ("minmax", "percentile", "mse")


def _check_bits(bits: int) -> None:
    if not is_whole(bits, 1, 16):
        raise ValueError(f"bits must be an integer from 1 to 16, got {bits!r}.")


def _check_data(x: Tensor) -> None:
    if x.numel() == 0:
        raise ValueError("Cannot calibrate on an empty tensor: pass at least one calibration value.")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError("The calibration data hold NaN or infinite values, which would make every range NaN or "
                         "infinite: clean the data (or the model's outputs) first.")


def _check_symmetric_bits(bits: int, symmetric: bool) -> None:
    if symmetric and bits < 2:
        raise ValueError("Symmetric quantization needs at least 2 bits: at 1 bit its grid is {-1, 0}, so every "
                         "positive value would become 0. Use 2 or more bits, or symmetric=False.")


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """The integer range of a b-bit code: [-2^(b-1), 2^(b-1) - 1] signed, [0, 2^b - 1] unsigned."""
    _check_bits(bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@dataclass
class UniformQuantizer:
    """Scale and zero point of a uniform affine quantizer (per tensor, or per channel along ``axis``)."""

    scale: Tensor
    zero_point: Tensor
    bits: int
    signed: bool
    axis: int | None = None

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed)[1]

    def _shape(self, t: Tensor, x: Tensor) -> Tensor:
        if self.axis is None:
            return t
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return t.view(shape)

    def quantize(self, x: Tensor) -> Tensor:
        s, z = self._shape(self.scale, x), self._shape(self.zero_point, x)
        return torch.clamp(torch.round(x / s) + z, self.qmin, self.qmax)

    def dequantize(self, q: Tensor) -> Tensor:
        return self._shape(self.scale, q) * (q - self._shape(self.zero_point, q))

    def __call__(self, x: Tensor) -> Tensor:
        """Fake quantization: quantize and dequantize, with a straight-through gradient (d x_hat / dx = 1)."""
        x_hat = self.dequantize(self.quantize(x))
        return x + (x_hat - x).detach()

    def clip_range(self) -> tuple[Tensor, Tensor]:
        """The smallest and largest representable values (per channel when ``axis`` is set)."""
        return self.scale * (self.qmin - self.zero_point), self.scale * (self.qmax - self.zero_point)


def _from_range(lo: Tensor, hi: Tensor, bits: int, symmetric: bool, axis: int | None) -> UniformQuantizer:
    qmin, qmax = qrange(bits, symmetric)
    eps = torch.finfo(torch.float32).tiny
    if symmetric:
        bound = torch.maximum(lo.abs(), hi.abs())
        scale = torch.clamp(bound / max(qmax, 1), min=eps)
        zero = torch.zeros_like(scale)
    else:
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return UniformQuantizer(scale.float(), zero.float(), bits, symmetric, axis)


def _reduce(x: Tensor, axis: int | None, fn: str, q: float | None = None) -> Tensor:
    flat = x.flatten() if axis is None else x.transpose(0, axis).reshape(x.shape[axis], -1)
    if fn == "quantile":
        return torch.quantile(flat.float(), q, dim=-1) if axis is not None else torch.quantile(flat.float(), q)
    return getattr(flat, fn)(dim=-1).values if axis is not None else getattr(flat, fn)()


def calibrate(
    x: Tensor,
    bits: int = 8,
    symmetric: bool = True,
    axis: int | None = None,
    method: str = "minmax",
    percentile: float = 99.99,
    grid: int = 80,
) -> UniformQuantizer:
    """A uniform quantizer for data like ``x``, its clipping range chosen by ``method``.

    ``percentile`` clips at the given percentile of each end; ``mse`` tries ``grid`` shrinkings of the
    min-max range and keeps the one with the smallest squared error on ``x`` (per channel when ``axis``).
    """
    _check_bits(bits)
    _check_symmetric_bits(bits, symmetric)
    _check_data(x)
    if method not in METHODS:
        raise ValueError(f"Unknown calibration method {method!r}; use one of {', '.join(METHODS)}.")
    x = x.detach().float()
    if method == "percentile":
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}.")
        lo = _reduce(x, axis, "quantile", 1 - percentile / 100)
        hi = _reduce(x, axis, "quantile", percentile / 100)
        return _from_range(lo, hi, bits, symmetric, axis)
    lo, hi = _reduce(x, axis, "min"), _reduce(x, axis, "max")
    if method == "minmax":
        return _from_range(lo, hi, bits, symmetric, axis)
    best, best_err = None, None
    for k in range(grid):
        shrink = 1 - k / grid
        quant = _from_range(lo * shrink, hi * shrink, bits, symmetric, axis)
        err = (quant(x) - x).pow(2)
        err = err.mean() if axis is None else err.transpose(0, axis).reshape(x.shape[axis], -1).mean(-1)
        if best is None:
            best, best_err = quant, err
            continue
        better = err < best_err
        best.scale = torch.where(better, quant.scale, best.scale)
        best.zero_point = torch.where(better, quant.zero_point, best.zero_point)
        best_err = torch.minimum(err, best_err)
    assert best is not None
    return best


class Log2Quantizer:
    """x_hat = 2^-q, q = clamp(round(-log2 x), 0, 2^b - 1), for values in (0, 1] such as attention
    probabilities; values below 2^-(2^b - 1) map to the smallest level (FQ-ViT uses them as zero)."""

    def __init__(self, bits: int = 4) -> None:
        _check_bits(bits)
        self.bits = bits
        self.qmax = 2**bits - 1

    def quantize(self, x: Tensor) -> Tensor:
        tiny = 2.0 ** -(self.qmax + 1)
        return torch.clamp(torch.round(-torch.log2(x.clamp(min=tiny))), 0, self.qmax)

    def dequantize(self, q: Tensor) -> Tensor:
        return torch.pow(2.0, -q)

    def __call__(self, x: Tensor) -> Tensor:
        x_hat = self.dequantize(self.quantize(x))
        return x + (x_hat - x).detach()


class TwinUniform:
    """A twin uniform quantizer after PTQ4ViT's idea, for softmax and GELU outputs (our variant).

    Two ranges share the b-bit code: R1 = [lo1, hi1] with a fine step ``delta1`` for the dense bulk of
    small values, and R2 with the coarse step ``delta2 = 2^k delta1`` for the rare large ones. Each value
    uses R1 when it lies inside R1, else R2; one bit of the code says which. ``signed`` allows negative
    values (post-GELU): then both ranges are symmetric around zero. That symmetric form is our
    simplification, not PTQ4ViT's: PTQ4ViT gives post-GELU values one range for the negative side and
    another for the positive side, and chooses its scales with a Hessian-guided search, where
    :meth:`calibrate` here minimises the plain squared error.
    """

    def __init__(self, delta1: float, k: int, bits: int = 8, signed: bool = False) -> None:
        _check_bits(bits)
        if bits < 2:
            raise ValueError("TwinUniform needs at least 2 bits (one selects the range).")
        if delta1 <= 0 or k < 0:
            raise ValueError(f"delta1 must be positive and k >= 0, got delta1={delta1}, k={k}.")
        self.bits, self.signed, self.k = bits, signed, k
        self.delta1, self.delta2 = float(delta1), float(delta1) * 2**k
        self.qmin, self.qmax = qrange(bits - 1, signed)  # one bit selects R1 or R2

    def ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return ((self.delta1 * self.qmin, self.delta1 * self.qmax), (self.delta2 * self.qmin, self.delta2 * self.qmax))

    def __call__(self, x: Tensor) -> Tensor:
        (lo1, hi1), _ = self.ranges()
        fine = torch.clamp(torch.round(x / self.delta1), self.qmin, self.qmax) * self.delta1
        coarse = torch.clamp(torch.round(x / self.delta2), self.qmin, self.qmax) * self.delta2
        x_hat = torch.where((x >= lo1) & (x <= hi1), fine, coarse)
        return x + (x_hat - x).detach()

    @classmethod
    def calibrate(cls, x: Tensor, bits: int = 8, signed: bool = False, max_k: int = 8) -> TwinUniform:
        """Choose delta2 to cover the data and k (so delta1 = delta2 / 2^k) by the smallest squared error."""
        _check_bits(bits)
        _check_data(x)
        x = x.detach().float()
        qmax = qrange(bits - 1, signed)[1]
        delta2 = max(float(x.abs().max()) / qmax, torch.finfo(torch.float32).tiny)
        best, best_err = None, math.inf
        for k in range(max_k + 1):
            q = cls(delta2 / 2**k, k, bits, signed)
            err = float((q(x) - x).pow(2).mean())
            if err < best_err:
                best, best_err = q, err
        assert best is not None
        return best


def power_of_two_factors(x: Tensor, bits: int = 8, max_alpha: int = 3) -> tuple[UniformQuantizer, Tensor]:
    """FQ-ViT's power-of-two factor for LayerNorm inputs ``x`` of shape (..., channels), as its reference code
    (``PtfObserver``) computes it.

    The layer's range [min, max] over every channel gives the coarsest step ``s_max = (max - min) / (q_max - q_min)``
    and one zero point for the whole layer, ``z = clamp(q_min - round(min / s_max))``. Channel c uses the step
    ``s_max / 2^max_alpha * 2^alpha_c`` with the same zero point, alpha_c in 0..max_alpha (FQ-ViT: 0..3) the one
    whose quantization of that channel has the smallest mean squared error (the smallest alpha on a tie). Integer
    hardware applies 2^alpha_c as a bit shift, so the layer keeps one scale and one zero point, while wide channels
    take coarse steps and narrow ones fine steps.
    Returns the per-channel quantizer (scales ``s_max / 2^max_alpha * 2^alpha``, one zero point) and ``alpha``.
    """
    _check_bits(bits)
    _check_data(x)
    if not (isinstance(max_alpha, int) and max_alpha >= 0):
        raise ValueError(f"max_alpha is the largest power of two of a channel's factor, a whole number >= 0, "
                         f"not {max_alpha!r}.")
    flat = x.detach().float().reshape(-1, x.shape[-1])
    qmin, qmax = qrange(bits, signed=False)
    coarsest = torch.clamp((flat.max() - flat.min()) / (qmax - qmin), min=torch.finfo(torch.float32).tiny)
    zero = torch.clamp(qmin - torch.round(flat.min() / coarsest), qmin, qmax)
    finest = coarsest / 2**max_alpha
    errors = []
    for alpha in range(max_alpha + 1):
        step = finest * 2**alpha
        x_hat = (torch.clamp(torch.round(flat / step) + zero, qmin, qmax) - zero) * step
        errors.append((x_hat - flat).pow(2).mean(0))
    alpha = torch.stack(errors).argmin(0).float()  # argmin returns the first minimum: the smallest alpha on a tie
    scale = finest * 2**alpha
    return UniformQuantizer(scale, zero.expand_as(scale).clone(), bits, signed=False, axis=-1), alpha


# --------------------------------------------------------------------------- a fake-quantized ViT

SOFTMAX_CHOICES = ("uniform", "log2", "twin")
GELU_CHOICES = ("uniform", "twin")
LAYERNORM_CHOICES = ("uniform", "ptf")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how. Weights: symmetric, per output channel. Activations: per tensor,
    asymmetric, except where a ViT-specific quantizer is chosen for softmax, GELU or LayerNorm inputs."""

    w_bits: int = 8
    a_bits: int = 8
    calibration: str = "minmax"
    softmax: str = "uniform"
    gelu: str = "uniform"
    layernorm: str = "uniform"

    def __post_init__(self) -> None:
        _check_bits(self.w_bits)
        _check_bits(self.a_bits)
        _check_symmetric_bits(self.w_bits, True)  # weights are quantized symmetrically
        for name, value, choices in (("calibration", self.calibration, METHODS), ("softmax", self.softmax, SOFTMAX_CHOICES),
                                     ("gelu", self.gelu, GELU_CHOICES), ("layernorm", self.layernorm, LAYERNORM_CHOICES)):
            if value not in choices:
                raise ValueError(f"Unknown {name} quantizer {value!r}; use one of {', '.join(choices)}.")


def _require_float_vit(vit: torch.nn.Module) -> None:
    """Refuse, before any work, what QuantViT cannot simulate: it rewrites the blocks of vitsurvey's float
    VisionTransformer with softmax attention, so a timm model, a wrapped one (ToMe, EViT, a token step) or an
    already quantized one is named and the supported model said."""
    if not isinstance(vit, VisionTransformer):
        raise TypeError(f"QuantViT simulates quantization of vitsurvey's float VisionTransformer, not of a "
                        f"{type(vit).__module__}.{type(vit).__name__}: quantize the plain model (token reduction such as ToMe cannot be "
                        "combined with it; a timm model can be quantized with dynamic_int8).")
    if vit.cfg.mixer != "attention":
        raise ValueError(f"QuantViT needs softmax attention in every block; this model has mixer {vit.cfg.mixer!r}.")
    odd = sorted({f"{type(m).__module__}.{type(m).__name__}" for b in vit.blocks
                  for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2) if type(m) is not torch.nn.Linear})
    if odd:
        raise TypeError(f"QuantViT needs float nn.Linear layers; this model's blocks hold {', '.join(odd)}: give it "
                        "the float model.")


class QuantViT(torch.nn.Module):
    """Simulated (fake) quantization of a :class:`~vitsurvey.models.VisionTransformer`, attention included.

    Quantized in every block: the weights of QKV, projection and both MLP layers; the inputs of those four
    layers; the LayerNorm inputs (the residual stream); queries, keys and values; the attention
    probabilities; the GELU outputs. Patch embedding and head stay in floating point, as in PTQ4ViT and
    FQ-ViT. Call :meth:`calibrate` on a few images first. Every quantizer passes gradients straight
    through, so the same module serves quantization-aware training (the float weights are the ones trained).
    """

    def __init__(self, vit: torch.nn.Module, config: QuantConfig) -> None:
        super().__init__()
        _require_float_vit(vit)
        self.vit, self.config = vit, config
        self.quantizers: dict[str, object] | None = None

    def _blocks(self, x: Tensor, q, collect: dict[str, list[Tensor]] | None) -> Tensor:  # type: ignore[no-untyped-def]
        def site(name: str, t: Tensor) -> Tensor:
            if collect is not None:
                collect.setdefault(name, []).append(t.detach())
                return t
            return q[name](t)

        def weight(name: str, w: Tensor) -> Tensor:
            return w if collect is not None else q[name](w)

        for i, blk in enumerate(self.vit.blocks):
            p = f"{i}."
            att = blk.attn
            h = blk.norm1(site(p + "ln1_in", x))
            qkv = F.linear(site(p + "qkv_in", h), weight(p + "qkv_w", att.qkv.weight), att.qkv.bias)
            qq, kk, vv = split_qkv(qkv, att.num_heads, att.head_dim)
            qq, kk, vv = site(p + "q", qq), site(p + "k", kk), site(p + "v", vv)
            probs = site(p + "attn", ((qq * att.scale) @ kk.transpose(-2, -1)).softmax(dim=-1))
            out = merge_heads(probs @ vv)
            x = x + F.linear(site(p + "proj_in", out), weight(p + "proj_w", att.proj.weight), att.proj.bias)
            h = blk.norm2(site(p + "ln2_in", x))
            h = blk.mlp.act(F.linear(site(p + "fc1_in", h), weight(p + "fc1_w", blk.mlp.fc1.weight), blk.mlp.fc1.bias))
            x = x + F.linear(site(p + "gelu_out", h), weight(p + "fc2_w", blk.mlp.fc2.weight), blk.mlp.fc2.bias)
        return x

    @torch.no_grad()
    def activations(self, images: Tensor) -> dict[str, Tensor]:
        """The floating-point tensors at every quantization site on ``images``, keyed ``"<block>.<site>"``
        (sites: ln1_in, qkv_in, q, k, v, attn, proj_in, ln2_in, fc1_in, gelu_out)."""
        _check_data(images)
        seen: dict[str, list[Tensor]] = {}
        was_training = self.vit.training
        self.vit.eval()
        self._blocks(self.vit.embed(images), None, seen)
        self.vit.train(was_training)
        return {name: torch.cat(parts) for name, parts in seen.items()}

    @torch.no_grad()
    def calibrate(self, images: Tensor) -> QuantViT:
        """Choose every quantizer's range from the activations and weights seen on ``images``."""
        c = self.config
        q: dict[str, object] = {}
        for name, t in self.activations(images).items():
            t = t.flatten(0, 1) if t.dim() > 2 else t
            kind = name.split(".", 1)[1]
            if kind == "attn" and c.softmax == "log2":
                q[name] = Log2Quantizer(c.a_bits)
            elif (kind == "attn" and c.softmax == "twin") or (kind == "gelu_out" and c.gelu == "twin"):
                q[name] = TwinUniform.calibrate(t, c.a_bits, signed=kind == "gelu_out")
            elif kind.startswith("ln") and c.layernorm == "ptf":
                q[name] = power_of_two_factors(t, c.a_bits)[0]
            else:
                q[name] = calibrate(t, c.a_bits, symmetric=False, method=c.calibration)
        for i, blk in enumerate(self.vit.blocks):
            for key, w in (("qkv_w", blk.attn.qkv.weight), ("proj_w", blk.attn.proj.weight),
                           ("fc1_w", blk.mlp.fc1.weight), ("fc2_w", blk.mlp.fc2.weight)):
                q[f"{i}.{key}"] = calibrate(w, c.w_bits, symmetric=True, axis=0, method=c.calibration)
        self.quantizers = q
        return self

    def stored_bytes(self) -> int:
        """Bytes the model would take with its quantized weights stored at ``w_bits`` (packed, plus one float
        scale per output channel) and every other parameter at 32 bits. Simulation keeps float weights in
        memory, so this is the size a deployment of these numbers would have, not what the module holds."""
        quantized = {id(w): w for blk in self.vit.blocks
                     for w in (blk.attn.qkv.weight, blk.attn.proj.weight, blk.mlp.fc1.weight, blk.mlp.fc2.weight)}
        low = sum(math.ceil(w.numel() * self.config.w_bits / 8) + 4 * w.shape[0] for w in quantized.values())
        rest = sum(p.numel() for p in self.vit.parameters() if id(p) not in quantized)
        return low + 4 * rest

    def forward(self, x: Tensor) -> Tensor:
        if self.quantizers is None:
            raise RuntimeError("QuantViT is not calibrated: call .calibrate(images) with a few images first.")
        tokens = self._blocks(self.vit.embed(x), self.quantizers, None)
        return self.vit.forward_head(self.vit.norm(tokens))


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers run as real int8 kernels on the CPU (torch.ao dynamic
    quantization: int8 weights, activations quantized on the fly per batch).

    torch marks this API as deprecated in favour of torchao and warns on every call; the warnings are
    silenced here, once, because the API still works and is the CPU int8 path that ships with torch.
    """
    import copy
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def compiled(model: torch.nn.Module, example: Tensor) -> torch.nn.Module:
    """``torch.compile(model)``, compiled now by one run on ``example`` with its one-time notices silenced
    (so that timings compare compiled int8 against compiled fp32, and no caller's output shows them)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = torch.compile(model.eval())
        with torch.inference_mode():
            fast(example)
    return fast


def torchao_int8(model: torch.nn.Module, example: Tensor | None = None, compile: bool = True) -> torch.nn.Module:
    """A copy of ``model`` with int8 weights and dynamically quantized int8 activations in every
    ``nn.Linear`` (torchao's ``Int8DynamicActivationInt8WeightConfig``), compiled with ``torch.compile``
    so that the integer matrix products run as fused kernels (eager torchao is slower than fp32).

    With ``example``, the compiled model is run once on it here, so compilation happens now and its
    one-time notices (torchao's optional CUDA extensions failing to load on a CPU build, torch.compile's
    caching hints) stay out of the caller's output. Raises ImportError when torchao is not installed.
    """
    import copy
    import logging
    import warnings

    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            quantized = copy.deepcopy(model).eval()
            quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    if not compile:
        return quantized
    return compiled(quantized, example) if example is not None else torch.compile(quantized)
