"""How much memory a model takes: peak bytes of inference and of a training step, the activations a forward
pass keeps for backward, and the bytes of its weights in memory and on disk.

A CPU has no allocator statistics like CUDA's, so on a CPU :func:`peak_memory` tracks the bytes of live tensor
storage through torch's dispatcher instead (:class:`_LiveTensorBytes`), and every result says which method it
used. torch.ao's int8 layers keep their weights packed outside ``parameters()``; they are counted
(:func:`~vitsurvey.models.counts.packed_weights`). Running out of memory is a result (``oom=True``), not a
failure.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..models.counts import count_params, packed_weights
from ..checks import whole
from .timing import autocast_context, check_materialised, free_cached, is_oom, mode_kept, synchronize

__all__ = [
    "Memory", "activation_bytes", "inference_memory", "model_size_bytes", "peak_memory", "serialized_bytes",
    "tensor_bytes", "training_memory",
]


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
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device), _memory_method(device)
    tracker = _LiveTensorBytes()
    with tracker:
        fn()
    return tensor_bytes(resident) + tracker.peak, _memory_method(device)


def _memory_method(device: torch.device) -> str:
    return "cuda allocator" if device.type == "cuda" else "cpu tensor tracking"


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers(), *packed_weights(model)]


def inference_memory(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
) -> Memory:
    """Peak memory of one inference pass at ``batch_size`` (weights, input and activations), in eval mode (the
    model's own mode is restored afterwards)."""
    whole("batch_size", batch_size, minimum=1, hint="A pass over no images measures only the weights.")
    check_materialised(model, "inference_memory")
    device = torch.device(device)
    with mode_kept(model):
        model = model.to(device).eval()
        weights = tensor_bytes(_weights(model))
        try:
            x = torch.randn(batch_size, *input_shape, device=device)

            def run() -> None:
                with torch.inference_mode():
                    model(x)

            peak, method = peak_memory(run, device, [*_weights(model), x])
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            free_cached(device)
            return Memory(None, weights, batch_size, _memory_method(device), oom=True)
    return Memory(peak, weights, batch_size, method)


@contextlib.contextmanager
def _in_training_then_restored(model: nn.Module) -> Iterator[None]:
    """Train mode for a measurement; afterwards buffers (BatchNorm statistics) as they were, no gradients, and
    every submodule in the mode it had, so measuring leaves the model unchanged."""
    saved = [b.detach().clone() for b in model.buffers()]
    with mode_kept(model):
        model.train()
        try:
            yield
        finally:
            for p in model.parameters():
                p.grad = None
            with torch.no_grad():
                for b, old in zip(model.buffers(), saved):
                    b.copy_(old)


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
    update uses a learning rate of 0, and buffers (BatchNorm statistics) and train/eval mode are restored afterwards.
    """
    whole("batch_size", batch_size, minimum=1, hint="A training step needs at least one image.")
    check_materialised(model, "training_memory")
    device = torch.device(device)
    model = model.to(device)
    with mode_kept(model):
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
                with autocast_context(device, torch.bfloat16 if amp else None):
                    loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()

            peak, method = peak_memory(step, device, [*_weights(model), x, y])
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            free_cached(device)
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
    whole("batch_size", batch_size, minimum=1, hint="A forward pass needs at least one image.")
    check_materialised(model, "activation_bytes")
    device = torch.device(device)
    model = model.to(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    with _in_training_then_restored(model):
        if device.type == "cuda":
            synchronize(device)
            before = torch.cuda.memory_allocated(device)
            with autocast_context(device, torch.bfloat16 if amp else None):
                out = model(x)
            synchronize(device)
            held = torch.cuda.memory_allocated(device) - before
        else:
            tracker = _LiveTensorBytes()
            with tracker, autocast_context(device, torch.bfloat16 if amp else None):
                out = model(x)
                tracker._sweep()
                held = tracker.current
        del out
    return int(held)


def _output_classes(model: nn.Module, input_shape: tuple[int, int, int], device: torch.device) -> int:
    with torch.inference_mode():
        return int(model.eval()(torch.zeros(1, *input_shape, device=device)).shape[-1])


def model_size_bytes(model: nn.Module, bits: int = 32) -> int:
    """Bytes to store every parameter at ``bits`` bits each (rounded up to whole bytes)."""
    if bits <= 0:
        raise ValueError(f"bits must be a positive integer, not {bits}.")
    return math.ceil(count_params(model, trainable_only=False) * bits / 8)


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (what a file on disk holds)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes
