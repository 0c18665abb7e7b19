"""One routine per efficiency quantity, shared by every notebook and the command line.

Units are part of the names: ``macs`` are multiply-accumulates (fvcore's "flops" are MACs: one
multiply-add counts once), ``flops`` elsewhere in the project mean 2 x MACs unless a table says
otherwise; memory is in bytes; throughput in images per second; latency in milliseconds.

Traps this module closes (see notebook 02 for each one shown on real numbers):

* fvcore has no counter for ``aten::scaled_dot_product_attention`` and silently drops attention
  when a model uses the fused kernel; :func:`count_macs` registers one.
* Timing without warm-up measures allocation and kernel selection; timing a GPU without
  synchronising measures only the kernel launches. :func:`throughput` does both right.
* On a CPU, glibc's allocator makes a timing depend on what the process allocated before;
  :func:`steady_allocator` fixes its thresholds. What still differs between runs minutes apart is
  measured by :func:`calibrate_reruns` and carried into every stated range (:func:`rerun_floor`).
* A CPU has no allocator statistics like CUDA's; :func:`peak_memory` tracks the bytes of live tensor
  storage through torch's dispatcher instead, and says which method it used.
"""

from __future__ import annotations

import copy
import contextlib
import ctypes
import datetime
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from . import mixers, progress
from .metrics import Spread
from .models import ViTConfig

# --------------------------------------------------------------------------- parameters and size


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters; S3 counts trainable ones, which is the default. The weights that torch.ao's
    quantized layers hold packed count too (:func:`packed_weights`): an int8 model has the parameters of
    its float source, only stored in fewer bits."""
    plain = sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    return plain + sum(t.numel() for t in packed_weights(model))


def packed_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight and bias tensors that torch.ao's quantized layers (int8 ``Linear``, ``Conv``) keep packed
    outside ``parameters()`` and ``buffers()``; without them an int8 model's parameter count and memory
    would miss every quantized layer. A layer that delegates to a packed child is read once, at the child."""

    def packs(m: nn.Module) -> bool:
        return callable(getattr(m, "_weight_bias", None)) and type(m).__module__.startswith("torch.ao")

    return [t for m in model.modules() if packs(m) and not any(packs(c) for c in m.children())
            for t in m._weight_bias() if t is not None]


def model_size_bytes(model: nn.Module, bits: int = 32) -> int:
    """Bytes to store every parameter at ``bits`` bits each (rounded up to whole bytes)."""
    if bits <= 0:
        raise ValueError(f"bits must be a positive integer, not {bits}.")
    return math.ceil(count_params(model, trainable_only=False) * bits / 8)


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (what a file on disk holds)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


# --------------------------------------------------------------------------- MACs (fvcore)


@dataclass(frozen=True)
class MacCount:
    """fvcore's count of multiply-accumulates, in total and per operator type."""

    total: int
    by_operator: dict[str, int]
    skipped_operators: dict[str, int]
    """Operators fvcore saw but does not count (element-wise ops, softmax, GELU...), with call counts."""


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of softmax(Q K^T) V for Q (..., L, E), K (..., S, E), V (..., S, Ev): L*S*E + L*S*Ev."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    length, e = q[-2], q[-1]
    s, ev = k[-2], v[-1]
    return batch * length * s * (e + ev)


def _constant(value: Any) -> Any:
    """A traced argument's value; lists of constants are traced as a node that constructs them."""
    out = value.toIValue()
    return out if out is not None else [v.toIValue() for v in value.node().inputs()]


def _avg_pool_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """One MAC per input element read: k x k per output element (padding included, as for a convolution)."""
    from fvcore.nn.jit_handles import get_shape

    kernel = _constant(inputs[1])
    kernel = [kernel] * 2 if isinstance(kernel, int) else list(kernel) * (2 if len(kernel) == 1 else 1)
    return math.prod(get_shape(outputs[0])) * math.prod(kernel)


def _rfft_macs(real_side: int) -> Callable[[list[Any], list[Any]], int]:
    """MACs of a real n-dimensional FFT or its inverse, by :data:`vitsurvey.mixers.RFFT_MACS_PER_POINT_LOG2`
    (``real_side``: 0 for the forward transform, whose input is real; 1 for the inverse, whose output is)."""
    from fvcore.nn.jit_handles import get_shape

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        shape = get_shape(inputs[0] if real_side == 0 else outputs[0])
        dims = _constant(inputs[2])
        points = math.prod(shape[d] for d in dims)
        return mixers.rfft_macs(points, math.prod(shape) // points)

    return handle


def count_macs(
    model: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    count_fused_attention: bool = True,
) -> MacCount:
    """Count MACs with fvcore, attention included (fused or not), with fvcore's warnings silenced.

    Beyond fvcore's own counts, three operators it skips are counted: fused attention (``L*S*(E+Ev)``),
    average pooling (k x k per output, the mixer of PoolFormer) and real FFTs (GFNet's mixer; by the
    convention of :data:`vitsurvey.mixers.RFFT_MACS_PER_POINT_LOG2`).

    ``count_fused_attention=False`` reproduces plain fvcore, which skips the fused attention kernel
    (notebook 02 shows the trap); every other caller keeps the default.
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    if packed_weights(model):  # fvcore cannot trace int8 kernels; they run the multiply-adds of their float twin
        model = float_twin(model)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # fvcore's import uses the deprecated torch.jit.script; tracing warns about constants
            warnings.simplefilter("ignore")
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(model, args)
            if count_fused_attention:
                analysis = analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
            analysis = analysis.set_op_handle("aten::avg_pool2d", _avg_pool_macs)
            analysis = analysis.set_op_handle("aten::fft_rfft2", _rfft_macs(0), "aten::fft_irfft2", _rfft_macs(1))
            analysis = (
                analysis.unsupported_ops_warnings(False)
                .uncalled_modules_warnings(False)
                .tracer_warnings("none")
            )
            total = int(analysis.total())
            by_op = {k: int(v) for k, v in analysis.by_operator().items()}
            skipped = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    return MacCount(total, by_op, skipped)


# --------------------------------------------------------------------------- analytic ViT counts


def vit_params(cfg: ViTConfig) -> dict[str, int]:
    """Parameters of a plain ViT per component (the formulas of notebook 01); a mixer other than
    softmax attention replaces ``qkv`` and ``attn_proj`` by ``mixer`` (:func:`vitsurvey.mixers.params`)."""
    D, M, P = cfg.embed_dim, cfg.mlp_hidden, cfg.patch_size
    mixing = ({"qkv": 3 * D * D + 3 * D, "attn_proj": D * D + D} if cfg.mixer == "attention"
              else {"mixer": mixers.params(cfg)})
    per_block = {
        "layer_norms": 2 * 2 * D,
        **mixing,
        "mlp": D * M + M + M * D + D,
    }
    out = {
        "patch_embed": cfg.in_chans * P * P * D + D,
        "cls_and_pos": cfg.num_prefix_tokens * D + cfg.num_tokens * D,
        **{k: v * cfg.depth for k, v in per_block.items()},
        "final_norm": 2 * D,
        "head": D * cfg.num_classes + cfg.num_classes,
    }
    out["total"] = sum(out.values())
    return out


def vit_macs(
    vit: ViTConfig | nn.Module,
    tokens: int | Sequence[int] | None = None,
    merges: Sequence[int] | None = None,
) -> dict[str, int]:
    """MACs of one image through a plain ViT, per component.

    ``vit`` is a :class:`ViTConfig`, or a :class:`~vitsurvey.models.VisionTransformer` whose blocks may
    have been pruned to fewer heads or MLP neurons (their actual shapes are read). ``tokens`` is the
    number of tokens entering every block, or a list with one count per block (token reduction);
    default the prefix tokens (the class token, and a distillation token where the model has one) plus
    the patches. ``merges`` (ToMe) is the number of tokens merged inside each block, between
    attention and MLP: that block's MLP and second LayerNorm then see ``tokens - merges`` tokens, and the
    bipartite matching costs ceil(N/2) * floor(N/2) * d MACs (cosine similarities of the head-averaged
    keys, d the head width). The final LayerNorm sees what the last block outputs.

    A mixer other than softmax attention (``cfg.mixer``) replaces the four attention terms by its own
    (:func:`vitsurvey.mixers.macs`); such a model has a fixed token count, so ``tokens`` and ``merges``
    must stay unset. With average pooling the final LayerNorm sees one vector per image.

    Conventions follow fvcore so the two can be compared term by term: a matrix product counts its
    multiply-adds; LayerNorm counts 5 per element; biases, residual adds, softmax and GELU count 0.
    """
    cfg = vit if isinstance(vit, ViTConfig) else vit.cfg  # type: ignore[union-attr]
    D, L = cfg.embed_dim, cfg.depth
    if cfg.mixer != "attention":
        if tokens is not None or merges is not None:
            raise ValueError(f"The {cfg.mixer!r} mixer is built for a fixed token count: token reduction needs "
                             "softmax attention, so leave tokens and merges unset.")
        out = dict.fromkeys(mixers.macs(cfg), 0)
        for _ in range(L):
            for k, v in mixers.macs(cfg).items():
                out[k] += v
        N = cfg.num_tokens
        out["mlp"] = L * 2 * N * D * cfg.mlp_hidden
        out["layer_norm"] = L * 10 * N * D + 5 * D * (N if cfg.global_pool == "token" else 1)
        out = {"patch_embed": cfg.num_patches * cfg.in_chans * cfg.patch_size**2 * D, **out,
               "head": D * cfg.num_classes}
        out["total"] = sum(out.values())
        return out
    if isinstance(vit, ViTConfig):
        shapes = [(cfg.embed_dim, cfg.mlp_hidden, cfg.num_heads)] * L  # (attention width h*d, MLP hidden, heads)
    else:
        shapes = [(b.attn.num_heads * b.attn.head_dim, b.mlp.fc1.out_features, b.attn.num_heads)  # type: ignore[union-attr]
                  for b in vit.blocks]  # type: ignore[union-attr]
    prefix = getattr(vit, "num_prefix_tokens", cfg.num_prefix_tokens)
    default = cfg.num_patches + prefix
    counts = [default] * L if tokens is None else [tokens] * L if isinstance(tokens, int) else list(tokens)
    merged = [0] * L if merges is None else list(merges)
    if len(counts) != L or len(merged) != L:
        raise ValueError(f"tokens and merges need one count per block ({L} blocks); "
                         f"got {len(counts)} and {len(merged)}.")
    out = dict.fromkeys(["qkv", "attn_scores", "attn_values", "attn_proj", "mlp", "layer_norm"], 0)
    if any(merged):
        out["token_matching"] = 0
    for N, r, (inner, hidden, heads) in zip(counts, merged, shapes):
        if not 0 <= r <= (N - 1) // 2:
            raise ValueError(f"{r} merges in a block of {N} tokens: ToMe can merge 0 to {(N - 1) // 2}.")
        out["qkv"] += N * D * 3 * inner
        out["attn_scores"] += N * N * inner  # Q K^T over all heads: h * N^2 * d
        out["attn_values"] += N * N * inner  # A V
        out["attn_proj"] += N * inner * D
        out["mlp"] += 2 * (N - r) * D * hidden
        out["layer_norm"] += 5 * N * D + 5 * (N - r) * D
        if r:
            out["token_matching"] += ((N + 1) // 2) * (N // 2) * (inner // heads)
    out["layer_norm"] += 5 * D * ((counts[-1] - merged[-1]) if cfg.global_pool == "token" else 1)  # the final norm
    heads = 2 if getattr(vit, "head_dist", None) is not None else 1  # DeiT's distillation head
    out = {"patch_embed": cfg.num_patches * cfg.in_chans * cfg.patch_size**2 * D, **out,
           "head": heads * D * cfg.num_classes}
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit machines
_steady: bool | None = None


def steady_allocator() -> bool:
    """Fix the C allocator's thresholds in this process, so that CPU timings stop depending on what the
    process allocated before; True where that was done (glibc), False elsewhere. Called by :func:`throughput`.

    Why: glibc's ``malloc`` adapts two thresholds to the allocations it has seen. Blocks above the *mmap
    threshold* get fresh pages from the kernel, and free memory above the *trim threshold* at the top of
    the heap is handed back, so the next pass faults it in again. How often a model's activations take
    that slow path then depends on the history of the process: measured on this project's 2-core CPU,
    ViT-S/16 at batch 8 ran about 15% slower in the first timing of a fresh process than in later ones,
    and int8 and fp32 were affected differently, so speed-ups moved between runs by more than any run's
    spread. Setting both thresholds (mmap at glibc's 64-bit maximum, 32 MiB; trim at 1 GiB) turns the
    adaptation off. The cost is memory: up to 1 GiB freed at the heap's top stays with the process.
    Replacing the allocator (jemalloc or tcmalloc through ``LD_PRELOAD``, as PyTorch's CPU tuning guide
    suggests) would do the same, but it must be set before Python starts and is not pip-installable;
    ``mallopt`` works in a running kernel, so a notebook gets it without a restart.
    """
    global _steady
    if _steady is None:
        _steady = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _steady = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
            except (OSError, AttributeError):
                _steady = False
    return _steady


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Autocast(nn.Module):
    """``model`` run under autocast to ``dtype`` (bf16 by default): a module, so that mixed precision can be
    timed in the same interleaved rounds as fp32 (:func:`relative_throughput`)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _autocast(x.device, self.dtype):
            return self.model(x)


@dataclass
class Throughput:
    """Result of a batch-size sweep: the best rate and every batch tried."""

    img_per_s: float | None
    """Best images per second over the batches that fitted (None if none fitted)."""
    batch_size: int | None
    """The batch size that gave the best rate."""
    per_batch: dict[int, float] = field(default_factory=dict)
    max_batch_fitted: int | None = None
    oom_at: int | None = None
    """First batch size that ran out of memory, if any."""
    device: str = "cpu"
    dtype: str = "float32"


def _check_timing(warmup: int, iters: int, min_seconds: float) -> None:
    """A timing with no timed pass returns nothing true (a rate of 0, or no median): refuse it."""
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters (timed passes) must be a whole number >= 1, not {iters!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup (untimed passes) must be a whole number >= 0, not {warmup!r}.")
    if not (math.isfinite(min_seconds) and min_seconds >= 0):
        raise ValueError(f"min_seconds must be a finite number >= 0, not {min_seconds!r}.")


def throughput(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64),
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    warmup: int = 2,
    iters: int = 5,
    min_seconds: float = 0.0,
) -> Throughput:
    """Images per second in inference, best over ``batch_sizes`` (S3's protocol, timm's contract).

    For each batch size, in increasing order: ``warmup`` untimed passes, then at least ``iters`` timed
    passes, continuing until ``min_seconds`` have elapsed (short runs are noisy), between device
    synchronisations, in eval mode under ``torch.inference_mode``. The sweep stops at the first batch
    size that runs out of memory; that size is recorded in ``oom_at``.
    """
    _check_timing(warmup, iters, min_seconds)
    bad = [b for b in batch_sizes if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if bad or not batch_sizes:
        raise ValueError(f"batch sizes must be whole numbers >= 1, not {tuple(batch_sizes)}.")
    device = torch.device(device)
    if device.type == "cpu":
        steady_allocator()
    model = model.to(device).eval()
    result = Throughput(None, None, device=str(device), dtype=str(dtype or torch.float32).split(".")[-1])
    for b in sorted(batch_sizes):
        try:
            x = torch.randn(b, *input_shape, device=device)
            with torch.inference_mode(), _autocast(device, dtype):
                for _ in range(warmup):
                    model(x)
                _sync(device)
                start, done = time.perf_counter(), 0
                while done < iters or time.perf_counter() - start < min_seconds:
                    model(x)  # the host may run ahead of a GPU here; the sync below catches up
                    done += 1
                _sync(device)
                elapsed = time.perf_counter() - start
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            result.oom_at = b
            _free(device)
            break
        rate = b * done / elapsed
        result.per_batch[b] = rate
        result.max_batch_fitted = b
        if result.img_per_s is None or rate > result.img_per_s:
            result.img_per_s, result.batch_size = rate, b
    return result


@dataclass
class Timings:
    """Images per second of several models, timed in interleaved rounds: every rate of every round.

    Ratios are taken within a round (model over reference, timed moments apart), so a drift in the
    machine's speed between rounds cancels; their median and range (lowest to highest over the rounds,
    widened to the machine's run-to-run ``floor`` where one was measured) is the speed-up a notebook quotes
    (:meth:`ratio`), and :meth:`table` is what it shows.
    """

    rates: dict[str, list[float]]
    """Images per second of each model, one entry per round."""
    reference: str
    batch_size: dict[str, int]
    floor: RerunFloor | None = None
    """This machine's measured run-to-run variation, folded into every range (None: one run's range)."""

    @property
    def rounds(self) -> int:
        return len(next(iter(self.rates.values())))

    def rate(self, name: str) -> Spread:
        return Spread.of(self._rates(name), self.floor.rate if self.floor else 0.0)

    def ratio(self, name: str, reference: str | None = None) -> Spread:
        """Throughput of ``name`` over that of ``reference`` (default: the run's), round by round."""
        ref = self._rates(reference or self.reference)
        return Spread.of((a / b for a, b in zip(self._rates(name), ref)), self.floor.ratio if self.floor else 0.0)

    def _rates(self, name: str) -> list[float]:
        if name not in self.rates:
            raise KeyError(f"No timings for {name!r}; timed: {', '.join(self.rates)}.")
        return self.rates[name]

    def table(self) -> Any:
        """One row per model: median img/s with its range, and the speed-up over the reference with its
        range and IQR (the verdict follows the range: :class:`~vitsurvey.metrics.Spread`)."""
        import pandas as pd

        rows = []
        for name in self.rates:
            r, q = self.rate(name), self.ratio(name)
            rows.append({
                "model": name, "batch": self.batch_size[name],
                "img/s": r.median, "img/s low": r.low, "img/s high": r.high,
                f"x {self.reference}": q.median, "x low": q.low, "x high": q.high, "x q1": q.q1, "x q3": q.q3,
                "verdict": "reference" if name == self.reference else q.verdict(),
            })
        return pd.DataFrame(rows).set_index("model")


def relative_throughput(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, int, int] | Mapping[str, tuple[int, int, int]],
    batch_size: int | Mapping[str, int],
    device: str | torch.device = "cpu",
    rounds: int = 5,
    max_rounds: int | None = None,
    tolerance: float = 0.05,
    reference: str | None = None,
    warmup: int = 2,
    iters: int = 5,
    min_seconds: float = 0.0,
    floor: RerunFloor | bool = True,
) -> Timings:
    """Time several models in interleaved rounds; the one timing routine behind every speed-up.

    Every round times each model once with :func:`throughput` (warm-up, synchronisation, at least
    ``iters`` passes and ``min_seconds``), in turn, each round starting one model further along the
    list, so a drift in the machine's speed affects all models alike and none always runs first. At
    least ``rounds`` rounds run; up to ``max_rounds`` (default: ``rounds``) run while any ratio to the
    ``reference`` (default: the first model) has an interquartile range wider than ``tolerance``
    times its median. ``input_shape`` and ``batch_size`` may be given per model. ``floor``: this
    machine's run-to-run variation, folded into every range: ``True`` reads the last calibration of this
    device (:func:`rerun_floor`; none: one run's range), ``False`` leaves it out, or pass one.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}.")
    max_rounds = max(rounds, max_rounds or rounds)
    names = list(models)
    if not names:
        raise ValueError("relative_throughput needs at least one model.")
    reference = reference or names[0]
    if reference not in models:
        raise KeyError(f"The reference {reference!r} is not among the models: {', '.join(names)}.")
    shapes = {n: input_shape[n] if isinstance(input_shape, Mapping) else input_shape for n in names}
    batches = {n: batch_size[n] if isinstance(batch_size, Mapping) else batch_size for n in names}
    if floor is True:
        floor = rerun_floor(device)
    timings = Timings({n: [] for n in names}, reference, batches, floor or None)
    for k in progress.bar(range(max_rounds), "timing rounds"):
        for name in names[k % len(names):] + names[: k % len(names)]:
            rate = throughput(models[name], shapes[name], (batches[name],), device, warmup=warmup, iters=iters,
                              min_seconds=min_seconds).img_per_s
            if rate is None:
                raise RuntimeError(f"{name} ran out of memory at batch {batches[name]}; choose a smaller batch.")
            timings.rates[name].append(rate)
        if k + 1 >= rounds and all(timings.ratio(n).relative_iqr <= tolerance for n in names):
            break
    return timings


# --------------------------------------------------------------------------- run-to-run variation

CALIBRATION = "rerun_floor"
"""Results file (``data/results/rerun_floor.csv``) of :func:`calibrate_reruns`."""


@dataclass(frozen=True)
class RerunFloor:
    """How far the median of the same timing moved between runs on one device: fractions of the median.

    The rounds of one run share the machine's state of the moment; separate runs do not, so their medians
    disagree by more than any run's range. Every range a notebook states is widened to at least this much
    either side of its median (:class:`~vitsurvey.metrics.Spread`), so that a rerun's median lands inside it.
    """

    rate: float
    """For images per second (an absolute rate moves most: the machine's speed as a whole)."""
    ratio: float
    """For the ratio of two models' rates, timed in the same rounds."""
    runs: int
    measured: str
    """When: an ISO timestamp."""
    device: str


def _calibration_models(profile: Any, device: torch.device) -> dict[str, nn.Module]:
    from .models import create

    models = {name: create(name) for name in profile.calibration_models}
    if device.type == "cpu":  # int8 kernels respond to the machine's state unlike fp32 ones (notebook 08)
        from .strategies.quant import dynamic_int8

        first = profile.calibration_models[0]
        models[f"{first}, int8"] = dynamic_int8(models[first])
    return models


def companion_of_run(profile: Any, k: int) -> str | None:
    """The companion model of calibration run ``k`` (0-based): none in every ``len + 1``-th run, else the
    profile's ``calibration_companions`` in turn."""
    companions = tuple(profile.calibration_companions)
    slot = k % (len(companions) + 1)
    return companions[slot - 1] if slot else None


def calibration_run(profile: Any, device: str | torch.device | None = None,
                    companion: str | None = None) -> dict[str, float]:
    """One run of the calibration: the profile's ``calibration_models`` (and, on a CPU, the first one's
    dynamic int8 copy) timed like every comparison (:func:`relative_throughput`, the profile's rounds, no
    floor), at the largest batch of the profile's ``sweep_batch_sizes`` (as notebooks 02 and 11), with
    ``companion`` (a timm model) timed in the same rounds but not reported. Returns the median rate of each
    model and the median ratio of every pair (a later model over an earlier one)."""
    dev = torch.device(device or profile.device)
    torch.manual_seed(profile.seed)
    models = _calibration_models(profile, dev)
    reported = list(models)
    if companion:
        from .models import create

        models[f"companion: {companion}"] = create(companion)
    shapes = {n: input_shape_of(m) for n, m in models.items()}
    t = relative_throughput(models, shapes, max(profile.sweep_batch_sizes), dev, floor=False, **profile.timing())
    out = {f"rate: {n}": t.rate(n).median for n in reported}
    out.update({f"ratio: {b} / {a}": t.ratio(b, a).median
                for i, a in enumerate(reported) for b in reported[i + 1:]})
    return out


def calibrate_reruns(
    profile: Any,
    runs: int = 6,
    pause_s: float = 30.0,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """Measure how much this machine's timings move between runs: ``runs`` separate processes, ``pause_s``
    seconds apart, each one :func:`calibration_run`. Returns one results row per quantity (its median over
    the runs, lowest and highest run, and ``floor`` = (highest - lowest) / median) and a row per kind
    (``rate``, ``ratio``) with the largest floor of that kind, which :func:`rerun_floor` reads back.

    Separate processes, because a process carries state between timings (the allocator's, before
    :func:`steady_allocator`; caches; the threads' placement) that rounds within one run cannot vary; a
    different companion model per run (:func:`companion_of_run`), because a ratio also moves with the
    other models timed in the same rounds.
    The floor is the full spread of the medians, not a half-width, so that any two of these runs' medians
    lie within each other's widened ranges. Takes about ``runs`` x (2.5 minutes + ``pause_s``) in the cpu profile.
    """
    import json
    import subprocess
    import sys

    if runs < 2:
        raise ValueError(f"A run-to-run spread needs at least 2 runs, not {runs}.")
    if pause_s < 0:
        raise ValueError(f"pause_s cannot be negative, got {pause_s}.")
    dev = torch.device(device or profile.device)
    code = ("import json, sys; from vitsurvey import measure, profiles; "
            "p = profiles.get_profile(sys.argv[1], resolve_data=False); "
            "print('CALIBRATION ' + json.dumps(measure.calibration_run(p, sys.argv[2], sys.argv[3] or None)))")
    medians: dict[str, list[float]] = {}
    for k in progress.bar(range(runs), "calibration runs"):
        if k:
            time.sleep(pause_s)
        companion = companion_of_run(profile, k) or ""
        proc = subprocess.run([sys.executable, "-c", code, profile.name, str(dev), companion],
                              capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("CALIBRATION ")), None)
        if proc.returncode or line is None:
            said = proc.stderr.strip().splitlines()
            raise RuntimeError(f"Calibration run {k + 1} of {runs} failed (exit {proc.returncode}): "
                               f"{said[-1] if said else 'no output'}")
        for key, value in json.loads(line.removeprefix("CALIBRATION ")).items():
            medians.setdefault(key, []).append(value)
        if log:
            log(f"calibration run {k + 1}/{runs} (beside {companion or 'nothing else'}): "
                + ", ".join(f"{q} {v[-1]:.3g}" for q, v in medians.items()))
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    rows = []
    for quantity, values in medians.items():
        mid = statistics.median(values)
        rows.append({"method": "run-to-run", "setting": quantity, "kind": quantity.split(":")[0], "runs": runs,
                     "companions": ", ".join(profile.calibration_companions) or "none",
                     "pause_s": pause_s, "median": mid, "low": min(values), "high": max(values),
                     "floor": (max(values) - min(values)) / mid, "calibrated_at": stamp})
    for kind in ("rate", "ratio"):
        floors = [r["floor"] for r in rows if r["kind"] == kind]
        if floors:
            rows.append({"method": "run-to-run", "setting": f"{kind} floor", "kind": f"{kind} floor", "runs": runs,
                         "pause_s": pause_s, "floor": max(floors), "calibrated_at": stamp})
    return rows


def rerun_floor(device: str | torch.device | None = None) -> RerunFloor | None:
    """The latest run-to-run floor calibrated on this device (same CPU model, threads and instruction set,
    or the same GPU), from ``data/results/rerun_floor.csv``; None where this device was never calibrated."""
    from . import results

    frame = results.read(CALIBRATION)
    if frame.empty or "calibrated_at" not in frame.columns:
        return None
    name = results.device_name(device)
    mine = frame[frame["device"] == name]
    if mine.empty:
        return None
    last = mine[mine["calibrated_at"] == mine["calibrated_at"].max()]
    floors = dict(zip(last["kind"], last["floor"]))
    if "rate floor" not in floors or "ratio floor" not in floors:
        return None
    return RerunFloor(float(floors["rate floor"]), float(floors["ratio floor"]), int(last["runs"].iloc[0]),
                      str(last["calibrated_at"].iloc[0]), name)


def pass_times_ms(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_size: int,
    passes: int,
    device: str | torch.device = "cpu",
    sync: bool = True,
) -> list[float]:
    """Milliseconds of each of ``passes`` consecutive inference passes, from cold (no warm-up).

    For showing the traps that :func:`throughput` avoids: the first passes pay for allocation and
    kernel selection, and without ``sync`` a GPU timing measures only how fast work is queued.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(passes):
            if sync:
                _sync(device)
            start = time.perf_counter()
            model(x)
            if sync:
                _sync(device)
            times.append(1e3 * (time.perf_counter() - start))
    _sync(device)
    return times


def latency_ms(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    device: str | torch.device = "cpu",
    warmup: int = 3,
    iters: int = 20,
) -> float:
    """Median milliseconds of one batch-1 inference pass, each pass timed between synchronisations."""
    _check_timing(warmup, iters, 0.0)
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(1, *input_shape, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(iters):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# --------------------------------------------------------------------------- memory


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storage created inside it that are still alive, and their peak.

    Every operator's outputs pass through ``__torch_dispatch__``; each new storage is remembered by a
    weak reference and dropped from the count once torch frees it. Views and in-place results share a
    storage and are not counted twice. Scratch memory that a kernel allocates internally and never
    returns is invisible here (CUDA's allocator sees it), so CPU peaks are lower bounds.
    """

    def __init__(self) -> None:
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._weakref = StorageWeakRef
        self._live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._live and storage.nbytes() > 0:
                    self._live[key] = (self._weakref(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def tensor_bytes(tensors: Iterator[torch.Tensor] | list[torch.Tensor]) -> int:
    """Bytes held by distinct storages among ``tensors`` (shared storages counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s._cdata] = s.nbytes()
    return sum(seen.values())


@dataclass
class Memory:
    """Peak memory of one pass: everything allocated at the peak, and the weights alone."""

    peak_bytes: int | None
    weights_bytes: int
    batch_size: int
    method: str
    """``cuda allocator`` (max_memory_allocated after a reset) or ``cpu tensor tracking``."""
    oom: bool = False


def peak_memory(
    fn: Callable[[], object], device: str | torch.device, resident: list[torch.Tensor]
) -> tuple[int, str]:
    """Peak bytes while ``fn`` runs, counting the ``resident`` tensors (weights, inputs) as held.

    CUDA: the caching allocator's ``max_memory_allocated`` after a reset (S3's method). CPU: the
    resident bytes plus the peak of live tensor storage created inside ``fn``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device), _memory_method(device)
    tracker = _LiveTensorBytes()
    with tracker:
        fn()
    return tensor_bytes(resident) + tracker.peak, _memory_method(device)


def _memory_method(device: torch.device) -> str:
    return "cuda allocator" if device.type == "cuda" else "cpu tensor tracking"


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of a torch.ao dynamically quantized model with every int8 ``Linear`` replaced by a float one
    holding its dequantized weights: the same layers and multiply-adds, in a form fvcore can trace."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, DynamicLinear):
            weight, bias = module._weight_bias()
            linear = nn.Linear(module.in_features, module.out_features, bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight.dequantize())
                if bias is not None:
                    linear.bias.copy_(bias)
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, linear)
    if packed_weights(twin):
        kinds = sorted({type(m).__name__ for m in twin.modules() if callable(getattr(m, "_weight_bias", None))})
        raise ValueError(f"Only torch.ao's dynamic int8 Linear layers can be read back as float; this model also "
                         f"has {kinds}: count the float model it was made from.")
    return twin


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers(), *packed_weights(model)]


def inference_memory(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
) -> Memory:
    """Peak memory of one inference pass at ``batch_size`` (weights, input and activations)."""
    device = torch.device(device)
    model = model.to(device).eval()
    weights = tensor_bytes(_weights(model))
    try:
        x = torch.randn(batch_size, *input_shape, device=device)

        def run() -> None:
            with torch.inference_mode():
                model(x)

        peak, method = peak_memory(run, device, [*_weights(model), x])
    except RuntimeError as exc:
        if not _is_oom(exc):
            raise
        _free(device)
        return Memory(None, weights, batch_size, _memory_method(device), oom=True)
    return Memory(peak, weights, batch_size, method)


@contextlib.contextmanager
def _in_training_then_restored(model: nn.Module) -> Iterator[None]:
    """Train mode for a measurement; afterwards buffers (BatchNorm statistics) as they were, no gradients,
    eval mode, so measuring leaves the model unchanged."""
    saved = [b.detach().clone() for b in model.buffers()]
    model.train()
    try:
        yield
    finally:
        for p in model.parameters():
            p.grad = None
        with torch.no_grad():
            for b, old in zip(model.buffers(), saved):
                b.copy_(old)
        model.eval()


def training_memory(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> Memory:
    """Peak memory of one full training step (forward, backward, AdamW update) from a clean state.

    Gradients and optimizer state are created inside the step, so the peak includes them, as it does
    for S3's measurement. ``amp`` runs the forward in bf16 autocast. The model is left as it was: the
    update uses a learning rate of 0 and buffers (BatchNorm statistics) are restored afterwards.
    """
    device = torch.device(device)
    model = model.to(device)
    num_classes = _output_classes(model, input_shape, device)
    for p in model.parameters():
        p.grad = None
    weights = tensor_bytes(_weights(model))
    with _in_training_then_restored(model):
        try:
            x = torch.randn(batch_size, *input_shape, device=device)
            y = torch.randint(0, num_classes, (batch_size,), device=device)
            opt = torch.optim.AdamW(model.parameters(), lr=0.0)

            def step() -> None:
                with _autocast(device, torch.bfloat16 if amp else None):
                    loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()

            peak, method = peak_memory(step, device, [*_weights(model), x, y])
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            _free(device)
            return Memory(None, weights, batch_size, _memory_method(device), oom=True)
    return Memory(peak, weights, batch_size, method)


def activation_bytes(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> int:
    """Bytes that a training forward pass at ``batch_size`` leaves alive for the backward pass.

    What autograd saves (inputs of matrix products, normalisation statistics, attention maps) is what a
    training step holds on top of its static memory, 16 bytes per parameter in fp32 with AdamW (weights,
    gradients, two moments). Measured directly, after the forward pass and before the backward one: CUDA's
    allocated bytes, or on a CPU the live tensor storage created during the forward pass. (A training
    step's *peak* is not static + activations at every batch: at small batches the optimizer update, after
    the activations are freed, can set it; this is why the two parts are measured apart.) The count also
    holds a part that does not grow with the batch (on a CPU, e.g. weights repacked for the kernels), so
    the activation bytes *per image* are the slope between two batch sizes.
    """
    device = torch.device(device)
    model = model.to(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    with _in_training_then_restored(model):
        if device.type == "cuda":
            _sync(device)
            before = torch.cuda.memory_allocated(device)
            with _autocast(device, torch.bfloat16 if amp else None):
                out = model(x)
            _sync(device)
            held = torch.cuda.memory_allocated(device) - before
        else:
            tracker = _LiveTensorBytes()
            with tracker, _autocast(device, torch.bfloat16 if amp else None):
                out = model(x)
                tracker._sweep()
                held = tracker.current
        del out
    return int(held)


def _output_classes(model: nn.Module, input_shape: tuple[int, int, int], device: torch.device) -> int:
    with torch.inference_mode():
        return int(model.eval()(torch.zeros(1, *input_shape, device=device)).shape[-1])


# --------------------------------------------------------------------------- everything at once


@dataclass
class Benchmark:
    """Every quantity of one model under one profile: a results row (see vitsurvey.results)."""

    method: str
    setting: str
    params: int
    macs: int
    analytic_macs: int | None
    """From :func:`vit_macs` for plain ViTs, else None."""
    throughput_img_s: float | None
    """Best fp32 rate over the batch sweep; None if not even the smallest batch fitted."""
    batch_size: int | None
    max_batch_fitted: int | None
    oom_at: int | None
    throughput_bf16_img_s: float | None
    """Best rate under bf16 autocast (measured on CUDA only, as S3's second setting)."""
    latency_ms: float
    infer_mem_bytes: int | None
    train_mem_bytes: int | None
    mem_batch_size: int
    weights_bytes: int
    size_bytes_fp32: int
    memory_method: str


def benchmark(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    profile: Any,
    name: str = "model",
    batch_sizes: tuple[int, ...] | None = None,
    mem_batch: int | None = None,
    device: str | torch.device | None = None,
) -> Benchmark:
    """Params, MACs, throughput (batch sweep), latency, inference and training memory, model size.

    The sweep uses ``batch_sizes`` (default: the profile's); memory is measured at ``mem_batch``
    (default: the largest swept batch that is at most 32). On CUDA the sweep runs twice, in fp32 and
    under bf16 autocast.
    """
    device = torch.device(device or profile.device)
    model = model.to(device).eval()
    cfg = ViTConfig.of(model)
    macs = count_macs(model, torch.zeros(1, *input_shape, device=device)).total
    sweep = tuple(batch_sizes or profile.bench_batch_sizes)
    timing = {"warmup": profile.bench_warmup, "iters": profile.bench_iters, "min_seconds": profile.bench_min_seconds}
    speed = throughput(model, input_shape, sweep, device, **timing)
    speed16 = throughput(model, input_shape, sweep, device, torch.bfloat16, **timing) if device.type == "cuda" else None
    mem_batch = mem_batch or max([b for b in sweep if b <= 32] or [min(sweep)])
    infer = inference_memory(model, input_shape, mem_batch, device)
    train = training_memory(model, input_shape, mem_batch, device, amp=device.type == "cuda")
    return Benchmark(
        method=name,
        setting=f"{input_shape[-1]}px",
        params=count_params(model),
        macs=macs,
        analytic_macs=vit_macs(cfg)["total"] if cfg is not None else None,
        throughput_img_s=speed.img_per_s,
        batch_size=speed.batch_size,
        max_batch_fitted=speed.max_batch_fitted,
        oom_at=speed.oom_at,
        throughput_bf16_img_s=speed16.img_per_s if speed16 else None,
        latency_ms=latency_ms(model, input_shape, device, warmup=profile.bench_warmup, iters=profile.latency_iters),
        infer_mem_bytes=infer.peak_bytes,
        train_mem_bytes=train.peak_bytes,
        mem_batch_size=mem_batch,
        weights_bytes=infer.weights_bytes,
        size_bytes_fp32=model_size_bytes(model, 32),
        memory_method=infer.method,
    )


def input_shape_of(model: nn.Module, img_size: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) a timm model expects, from its pretrained config, or at ``img_size``."""
    c, h, w = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
    return (c, img_size or h, img_size or w)


def benchmark_models(
    names: list[str],
    profile: Any,
    batch_sizes: tuple[int, ...] | None = None,
    mem_batch: int | None = None,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = print,
    reference: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`benchmark` for each timm model name, never stopping at one bad model; then every model
    that ran is timed again, interleaved with the others, so their rates can be compared.

    The sweep finds each model's best batch; the reported ``throughput_img_s`` is then the median over
    the profile's interleaved rounds at that batch (:func:`relative_throughput`), with its range
    (``throughput_low``, ``throughput_high``) and quartiles (``throughput_q1``, ``throughput_q3``), and the
    ratio to ``reference`` (default: the first model that ran) in ``relative_throughput`` with the same
    four (``relative_low`` ... ``relative_q3``); the range is the spread to quote (:class:`~vitsurvey.metrics.Spread`). A machine whose speed drifts between two runs
    (a shared CPU can differ by 2x from one hour to the next) moves absolute rates, not these ratios:
    compare runs by ratio. The sweep's best single timing stays in ``sweep_best_img_s``.

    Each row has ``model`` and ``status``: ``ok``; ``unknown model`` (skipped, with close names in the
    log); ``out of memory at batch N`` (the row keeps what fitted, ``max_batch_fitted`` included); or
    ``failed: <error>`` for anything else. A model that runs out of memory is thus recorded, not fatal.
    """
    from .models import create

    rows: list[dict[str, Any]] = []
    kept: dict[str, nn.Module] = {}
    dev = torch.device(device or profile.device)
    for name in progress.bar(names, "models"):
        try:
            model = create(name)
        except ValueError as exc:
            rows.append({"model": name, "status": "unknown model"})
            if log:
                log(f"{name}: skipped ({exc})")
            continue
        try:
            record = benchmark(model, input_shape_of(model), profile, name, batch_sizes, mem_batch, device)
        except RuntimeError as exc:
            status = "out of memory" if _is_oom(exc) else f"failed: {type(exc).__name__}: {exc}"
            rows.append({"model": name, "status": status})
            if log:
                log(f"{name}: {status}")
            del model
            _free(dev)
            continue
        row = {"model": name, "status": "ok", **asdict(record)}
        row["sweep_best_img_s"] = row.pop("throughput_img_s")
        if record.oom_at is not None or record.throughput_img_s is None:
            row["status"] = f"out of memory at batch {record.oom_at}"
        if record.throughput_img_s is not None:
            kept[name] = model
        rows.append(row)
        if log:
            rate = f"{record.throughput_img_s:,.1f} img/s" if record.throughput_img_s else "no batch fitted"
            log(f"{name}: {row['status']}, sweep best {rate} at batch {record.batch_size}")
    if kept:
        by_name = {r["model"]: r for r in rows}
        timings = relative_throughput(
            kept, {n: input_shape_of(m) for n, m in kept.items()}, {n: by_name[n]["batch_size"] for n in kept},
            dev, reference=reference if reference in kept else None, **profile.timing(),
        )
        for name in kept:
            rate, ratio = timings.rate(name), timings.ratio(name)
            by_name[name].update({
                "throughput_img_s": rate.median, "throughput_low": rate.low, "throughput_high": rate.high,
                "throughput_q1": rate.q1, "throughput_q3": rate.q3,
                "timing_rounds": rate.n, "reference": timings.reference,
                "relative_throughput": ratio.median, "relative_low": ratio.low, "relative_high": ratio.high,
                "relative_q1": ratio.q1, "relative_q3": ratio.q3,
            })
        if log:
            log(f"interleaved: {timings.rounds} rounds over {len(kept)} models, relative to {timings.reference}")
    for row in rows:
        row.setdefault("throughput_img_s", None)
    return rows
