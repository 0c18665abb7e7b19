"""The machine a number was measured on: device naming, CPU features, memory, threads, and how busy it was.

Two machines can both call themselves "AMD EPYC" and still differ by 2x in fp32 and far more in int8 or bf16,
so a device's name here carries its vector instruction set and thread count. Reading ``/proc/cpuinfo`` happens
in one place (:func:`cpuinfo`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .checks import whole

__all__ = [
    "MachineState", "cores", "cpu_features", "cpuinfo", "device_name", "device_of", "machine_memory_bytes",
    "threads", "watch_load",
]

_CPU_FLAGS = {"avx512_vnni": "VNNI", "avx_vnni": "VNNI", "avx512_bf16": "BF16", "amx_tile": "AMX"}
"""CPU features that change how fast low-precision kernels run (int8 dot products, bf16, matrix tiles)."""


def cpuinfo() -> dict[str, str]:
    """The first processor's entries of ``/proc/cpuinfo`` (``model name``, ``flags``, ...); empty where the
    file does not exist (macOS, Windows)."""
    entries: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if entries:
                        break
                    continue
                key, _, value = line.partition(":")
                entries.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return entries


def cpu_features() -> dict[str, object]:
    """The CPU's vector instruction set as torch dispatches to it, and its low-precision features.

    ``int8_dot`` says whether int8 dot-product instructions (VNNI or AMX) exist, which int8 kernels need to
    be fast; ``bf16`` whether bf16 instructions do.
    """
    flags = set(cpuinfo().get("flags", "").split())
    extras = sorted({name for flag, name in _CPU_FLAGS.items() if flag in flags})
    return {
        "isa": torch.backends.cpu.get_cpu_capability(),
        "extras": extras,
        "int8_dot": "VNNI" in extras or "AMX" in extras,
        "bf16": "BF16" in extras or "AMX" in extras,
    }


def device_name(device: str | torch.device | None = None) -> str:
    """A human name of the device: the GPU's product name, or the CPU's model, thread count and vector
    instruction set (e.g. ``AMD EPYC (2 threads; AVX2)``), so rows from different CPUs that share a
    model name are told apart."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = cpuinfo().get("model name") or platform.processor() or platform.machine()
    features = cpu_features()
    isa = " ".join([str(features["isa"]), *features["extras"]])  # type: ignore[list-item]
    return f"{model} ({torch.get_num_threads()} threads; {isa})"


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any): inputs go there, results come back."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def machine_memory_bytes() -> int:
    """The memory a model may use here: the GPU's if one is present, else the machine's RAM."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with torch limited to ``n`` intra-op threads, restoring the earlier count afterwards.

    Why: on a 2-core machine two threads make every op wait for the slower one, so any other process stalls
    all of them; per-core measurements (latency on the smallest machine) and batched SVDs of many small
    matrices (where LAPACK's threads were seen to slow things 100-fold through oversubscription) run on one.
    """
    whole("threads", n, minimum=1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cores() -> int:
    """The cores this process may run on (its CPU affinity), which is what other processes compete for."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot, from ``/proc/stat``; None where the kernel does not say."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    counts = [int(x) for x in fields[1:]]
    return counts[7], sum(counts[:8])


@dataclass(frozen=True)
class MachineState:
    """How busy the machine was around a measurement: the 1-minute load average before and after it, and the
    share of CPU time the hypervisor stole from this virtual machine during it (None where the kernel does not
    report steal time). A load above :attr:`cores` means processes waited for a core while it ran."""

    load_before: float
    load_after: float
    cores: int
    steal_pct: float | None
    own_cores: float | None = None
    """Cores this process kept busy on average while the block ran (its CPU time over the wall time)."""
    other_cores: float | None = None
    """Cores all other processes kept busy on average meanwhile (from ``/proc/stat``; None where it is not read)."""

    @property
    def busy(self) -> bool:
        """Whether processes had to wait for a core: this process and the others together used more cores than
        there are. Measured over the block itself where ``/proc/stat`` says what the others used; else read from
        the 1-minute load average, which lags (it still counts, for a minute, a training that just ended)."""
        if self.own_cores is not None and self.other_cores is not None:
            return self.own_cores + self.other_cores > self.cores + 0.05  # 0.05: rounding of the CPU-time clocks
        return max(self.load_before, self.load_after) > self.cores

    def columns(self) -> dict[str, float | int | None]:
        """The results-file columns: ``load_before``, ``load_after``, ``cores``, ``steal_pct``, ``own_cores``,
        ``other_cores``."""
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 2)

        return {"load_before": round(self.load_before, 2), "load_after": round(self.load_after, 2),
                "cores": self.cores, "steal_pct": r(self.steal_pct), "own_cores": r(self.own_cores),
                "other_cores": r(self.other_cores)}

    def describe(self) -> str:
        """One sentence on the machine's load, with a warning where it was busier than its cores."""
        steal = "" if self.steal_pct is None else f", {self.steal_pct:.1f}% of CPU time stolen by the hypervisor"
        others = ("" if self.other_cores is None else
                  f"; other processes used {self.other_cores:.2f} of the {self.cores} cores meanwhile")
        text = f"machine load {self.load_before:.2f} -> {self.load_after:.2f} on {self.cores} cores{steal}{others}"
        if self.busy:
            text += (f". Warning: the machine was busier than its {self.cores} cores while this ran; the intervals "
                     "account for the noise this adds, but rerun on an idle machine for the narrowest ones")
        return text


@contextlib.contextmanager
def watch_load() -> Iterator[list[MachineState]]:
    """Measure the machine's load around the block: ``with watch_load() as state: ...`` leaves one
    :class:`MachineState` in ``state`` once the block ends."""
    found: list[MachineState] = []
    before, jiffies, used = os.getloadavg()[0], _cpu_jiffies(), _busy_seconds()
    own, wall = _own_seconds(), time.monotonic()
    try:
        yield found
    finally:
        after, later, used_after = os.getloadavg()[0], _cpu_jiffies(), _busy_seconds()
        own_after, elapsed = _own_seconds(), time.monotonic() - wall
        steal = None
        if jiffies is not None and later is not None and later[1] > jiffies[1]:
            steal = 100.0 * (later[0] - jiffies[0]) / (later[1] - jiffies[1])
        own_cores = other_cores = None
        if elapsed > 0:
            own_cores = (own_after - own) / elapsed
            if used is not None and used_after is not None:
                other_cores = max(0.0, (used_after - used) / elapsed - own_cores)
        found.append(MachineState(before, after, cores(), steal, own_cores, other_cores))


def _busy_seconds() -> float | None:
    """CPU seconds all processes have run since boot (user, nice, system, irq, softirq), from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        counts = [int(x) for x in fields[1:8]]
    except (OSError, ValueError):
        return None
    if not fields or fields[0] != "cpu" or len(counts) < 7:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = counts
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds this process (all its threads) has run."""
    t = os.times()
    return t.user + t.system
