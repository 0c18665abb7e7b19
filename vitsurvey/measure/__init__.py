"""One routine per efficiency quantity, shared by every notebook and the command line.

Units are part of the names: ``macs`` are multiply-accumulates (fvcore's "flops" are MACs: one
multiply-add counts once), ``flops`` elsewhere in the project mean 2 x MACs unless a table says
otherwise; memory is in bytes; throughput in images per second; latency in milliseconds.

The modules, from the bottom up:

* :mod:`~vitsurvey.measure.timing`: :func:`relative_throughput`, the one timing routine behind every
  speed-up (interleaved rounds, one thread per model by its CPU time, bootstrap intervals: :class:`Timings`);
  :func:`throughput` over a batch sweep (the whole machine), :func:`pass_times_ms`, :func:`latency_ms`,
  :func:`steady_allocator` and :class:`Autocast`.
* :mod:`~vitsurvey.measure.macs`: :func:`count_macs` with fvcore, and :func:`float_twin` for int8 models.
* :mod:`~vitsurvey.measure.memory`: :func:`peak_memory`, :func:`inference_memory`, :func:`training_memory`,
  :func:`activation_bytes`, :func:`model_size_bytes`, :func:`serialized_bytes`.
* :mod:`~vitsurvey.measure.benchmarks`: all of them at once (:func:`benchmark`, :func:`benchmark_models`).
* :mod:`~vitsurvey.measure.check`: the A/A and half-depth checks that the timing routine holds under load
  (:func:`timing_check`).

Parameters and MACs counted from a config (:func:`vit_params`, :func:`vit_macs`) and parameters counted on a
built model (:func:`count_params`, :func:`packed_weights`, :func:`nonzero_params`) belong to the models
(:mod:`vitsurvey.models.counts`) and are importable from here too.

Traps this package closes (see notebook 02 for each one shown on real numbers):

* fvcore has no counter for ``aten::scaled_dot_product_attention`` and silently drops attention
  when a model uses the fused kernel; :func:`count_macs` registers one.
* Timing without warm-up measures allocation and kernel selection; timing a GPU without
  synchronising measures only the kernel launches. :func:`throughput` does both right.
* On a CPU, glibc's allocator makes a timing depend on what the process allocated before;
  :func:`steady_allocator` fixes its thresholds.
* On a machine shared with other processes, wall-clock timings with all threads measure the other processes
  as much as the model; :func:`relative_throughput` times one thread per model by its CPU time.
* A CPU has no allocator statistics like CUDA's; :func:`peak_memory` tracks the bytes of live tensor
  storage through torch's dispatcher instead, and says which method it used.
"""

from __future__ import annotations

from ..models.counts import count_params, nonzero_params, packed_weights, vit_macs, vit_params
from .benchmarks import Benchmark, benchmark, benchmark_models, input_shape_of
from .macs import MacCount, count_macs, float_twin
from .memory import (Memory, activation_bytes, inference_memory, model_size_bytes, peak_memory, serialized_bytes,
                     tensor_bytes, training_memory)
from .check import CHECK_STEM, timing_check
from .timing import (CLOCKS, Autocast, Throughput, Timings, latency_ms, pass_times_ms, relative_throughput,
                     steady_allocator, throughput)

__all__ = [
    "Autocast", "Benchmark", "CHECK_STEM", "CLOCKS", "MacCount", "Memory", "Throughput", "Timings", "activation_bytes",
    "benchmark", "benchmark_models", "count_macs", "count_params", "float_twin", "inference_memory",
    "input_shape_of", "latency_ms", "model_size_bytes", "nonzero_params", "packed_weights", "pass_times_ms",
    "peak_memory", "relative_throughput", "serialized_bytes", "steady_allocator", "tensor_bytes", "throughput",
    "timing_check", "training_memory", "vit_macs", "vit_params",
]
