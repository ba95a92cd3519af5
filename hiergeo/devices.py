"""Which device and how many CPU threads a process uses: one home for the hardware choices
every command makes (training, features, prediction, evaluation, the benchmarks).

Device spellings (:func:`resolve_device`): ``auto`` (this process's GPU when there is CUDA,
else the CPU), ``cpu``, ``cuda`` (this process's GPU, ``cuda:LOCAL_RANK``) and ``cuda:N``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """Where this process sits among the ones extracting together (one process: the default)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1


def ranks_from_env(env=None) -> Ranks:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` as torchrun sets them.

    Absent: one process. Without ``LOCAL_WORLD_SIZE`` every rank is taken to share this node.
    """
    env = os.environ if env is None else env

    def num(name: str, default: int) -> int:
        value = env.get(name, "")
        if value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from None

    world = num("WORLD_SIZE", 1)
    ranks = Ranks(rank=num("RANK", 0), world=world, local_rank=num("LOCAL_RANK", 0),
                  local_world=num("LOCAL_WORLD_SIZE", world))
    if world < 1 or not 0 <= ranks.rank < world:
        raise ValueError(f"RANK={ranks.rank} with WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    if ranks.local_world < 1 or not 0 <= ranks.local_rank < ranks.local_world:
        raise ValueError(f"LOCAL_RANK={ranks.local_rank} with LOCAL_WORLD_SIZE="
                         f"{ranks.local_world}: need 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE")
    return ranks


def cpu_count() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_share(ranks: Ranks) -> int:
    """This process's share of the node's CPUs."""
    return max(1, cpu_count() // ranks.local_world)


def loader_workers(device: torch.device, share: int | None = None) -> int:
    """Default DataLoader workers decoding images for a backbone on ``device``, given this
    process's CPU share (default: its share of the node's CPUs, :func:`cpu_share`, so that
    torchrun's processes on one machine split them). On a CPU the model needs the cores
    too: up to 4. On a GPU the workers are what feeds it: three quarters of the share, the
    rest left to the main process (batches in, normalising, the pinning thread). On one H200
    with 16 CPUs, ViT-L/14 extraction ran at 1,024 images/s with 12 workers and 964 with 14
    (results/benchmarks/gpu.md)."""
    share = cpu_share(ranks_from_env()) if share is None else share
    if torch.device(device).type == "cuda":
        return max(1, share * 3 // 4)
    return max(1, min(4, share))


def torch_threads(requested: int | None, ranks: Ranks) -> int | None:
    """torch threads to set, or None to keep torch's own choice (which reads OMP_NUM_THREADS)."""
    if requested:
        return requested
    omp = os.environ.get("OMP_NUM_THREADS", "")
    set_by_torchrun = omp == "1" and "TORCHELASTIC_RUN_ID" in os.environ
    if ranks.local_world > 1 and (not omp or set_by_torchrun):
        return cpu_share(ranks)
    return None


#: The device spellings every command takes (``--device``, ``hardware.device``).
DEVICE_SPELLINGS = "auto, cpu, cuda (this process's GPU: cuda:LOCAL_RANK) or cuda:N"


def parse_device(spelling: str | torch.device) -> tuple[str, int | None]:
    """``(kind, index)`` of a device spelling, the machine not consulted: ``("auto", None)``,
    ``("cpu", None)``, ``("cuda", None)`` or ``("cuda", N)``. Raises ValueError for anything
    else (``tpu``, ``cuda:x``, ``mps``)."""
    text = str(spelling).strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text, None
    kind, _, index = text.partition(":")
    if kind == "cuda" and index.isdigit():
        return "cuda", int(index)
    raise ValueError(f"device {str(spelling)!r} is not a device spelling: use "
                     f"{DEVICE_SPELLINGS}")


def resolve_device(spelling: str | torch.device, local_rank: int = 0) -> torch.device:
    """The device a spelling names, always with an index for CUDA (``torch.cuda.set_device``
    and NCCL need one).

    ``auto``: this process's GPU when there is CUDA, else the CPU; ``cuda``: this process's
    GPU, ``cuda:local_rank``; ``cuda:N``: GPU N; ``cpu``. Raises ValueError, naming the
    problem and the fix, for another spelling (``tpu``), CUDA asked for where there is none,
    or an index past the GPUs there are.
    """
    kind, index = parse_device(spelling)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {str(spelling)!r} asked for, but CUDA is not available here "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use "
                         "cpu, or auto to take a GPU only where there is one")
    count = torch.cuda.device_count()
    index = int(local_rank) if index is None else index
    if index >= count:
        raise ValueError(f"device {str(spelling)!r} is cuda:{index}, but this machine has "
                         f"{count} CUDA device{'s' if count != 1 else ''} (cuda:0 to "
                         f"cuda:{count - 1})")
    return torch.device("cuda", index)


def use_device(spelling: str | torch.device, local_rank: int = 0) -> torch.device:
    """:func:`resolve_device`, made this process's current CUDA device when it is a GPU
    (what collectives and ``torch.cuda`` calls without a device then use)."""
    dev = resolve_device(spelling, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes: ``VmHWM`` on Linux, else
    ``ru_maxrss`` (bytes on macOS); 0 where neither exists (Windows). Not ``ru_maxrss`` on
    Linux: it survives ``execve``, so a child started by a large parent (a benchmark that
    wrote its inputs, then runs each step in a fresh process) would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
        import sys
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
