"""Device spellings (auto, cpu, cuda, cuda:N) resolve to an indexed device everywhere, on a
machine without a GPU: CUDA is faked by monkeypatching ``torch.cuda``, and the fake
``set_device`` checks its argument as torch's does (an unindexed ``cuda`` raises)."""

import pytest
import torch

from hiergeo.config import ConfigError, load_config
from hiergeo.devices import loader_workers, parse_device, resolve_device, use_device


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two fake GPUs; returns the devices ``torch.cuda.set_device`` was called with."""
    calls = []

    def set_device(dev):
        # torch's own check: "Expected a torch.device with a specified index or an integer"
        torch.cuda._utils._get_device_index(dev)
        calls.append(dev)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return calls


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_spellings_resolve_to_indexed_devices(fake_cuda):
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert resolve_device("auto") == cuda0
    assert resolve_device("auto", local_rank=1) == cuda1
    assert resolve_device("cuda") == cuda0
    assert resolve_device("cuda", local_rank=1) == cuda1
    assert resolve_device("cuda:1") == cuda1
    assert resolve_device("cuda:0", local_rank=1) == cuda0  # an explicit index stands
    assert resolve_device(" CUDA ") == cuda0
    assert resolve_device(torch.device("cuda")) == cuda0
    assert resolve_device("cpu") == torch.device("cpu")
    for spelling in ("auto", "cuda", "cuda:1"):
        assert resolve_device(spelling).index is not None


def test_bad_spellings_and_missing_gpus(fake_cuda, monkeypatch):
    with pytest.raises(ValueError, match=r"'cuda:2' is cuda:2, but this machine has 2 CUDA"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="has 2 CUDA devices"):
        resolve_device("cuda", local_rank=2)
    for bad in ("tpu", "mps", "cuda:x", "cuda:-1", "gpu", ""):
        with pytest.raises(ValueError, match="not a device spelling: use auto, cpu"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", local_rank=1) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available here"):
        resolve_device("cuda:0")
    assert parse_device("cuda:3") == ("cuda", 3)  # syntax only, no machine consulted


def test_use_device_sets_the_indexed_device(fake_cuda):
    assert use_device("cuda") == torch.device("cuda", 0)
    assert use_device("cpu") == torch.device("cpu")
    assert fake_cuda == [torch.device("cuda", 0)]


def test_trainer_processes_take_cuda(fake_cuda):
    """The issue's crash: hardware.device=cuda stopped in Processes.__init__ at
    ``torch.cuda.set_device(torch.device("cuda"))`` (ValueError: Expected a torch.device with
    a specified index)."""
    from hiergeo.train.processes import Processes

    for spelling in ("cuda", "auto", "cuda:1"):
        p = Processes(load_config("smoke", [f"hardware.device={spelling}"]))
        want = torch.device("cuda", 1 if spelling == "cuda:1" else 0)
        assert p.device == want
        assert fake_cuda[-1] == want
        p.close()
    assert Processes(load_config("smoke", ["hardware.device=cpu"])).device.type == "cpu"


def test_trainer_device_errors_are_config_errors(no_cuda):
    from hiergeo.train.processes import Processes

    with pytest.raises(ConfigError, match="hardware.device=cuda: .*CUDA is not available"):
        Processes(load_config("smoke", ["hardware.device=cuda"]))
    with pytest.raises(ConfigError, match="hardware.device: device 'tpu' is not a device"):
        load_config("smoke", ["hardware.device=tpu"])  # refused before anything loads


def test_evaluation_process_group_resolves(fake_cuda):
    from hiergeo.evaluate import _process_group

    assert _process_group("cuda") == (0, 1, "cuda:0")
    assert _process_group("auto") == (0, 1, "cuda:0")


def test_loss_memory_gb_is_validated():
    assert load_config("smoke", []).hardware.loss_memory_bytes is None
    cfg = load_config("smoke", ["hardware.loss_memory_gb=2"])
    assert cfg.hardware.loss_memory_bytes == 2 * 2**30
    for bad in ("0", "-1", ".inf"):
        with pytest.raises(ConfigError, match="hardware.loss_memory_gb must be a positive"):
            load_config("smoke", [f"hardware.loss_memory_gb={bad}"])


def test_loader_workers_feed_a_gpu():
    """A GPU gets three quarters of the CPU share as decoding workers; a CPU, which runs
    the model too, at most 4."""
    assert loader_workers(torch.device("cuda", 0), 16) == 12
    assert loader_workers(torch.device("cuda", 0), 1) == 1
    assert loader_workers(torch.device("cpu"), 16) == 4
    assert loader_workers(torch.device("cpu"), 1) == 1


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="Linux only")
def test_a_child_does_not_report_its_parents_peak_memory():
    """ru_maxrss survives execve on Linux: a fresh process started by a parent that once held
    1 GiB reported 1 GiB as its own peak. peak_rss_bytes reads the process's own (VmHWM)."""
    import subprocess
    import sys

    big = bytearray(1 << 30)
    big[:: 4096] = b"x" * len(big[:: 4096])  # touch every page
    del big
    code = "from hiergeo.devices import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    assert child < (1 << 30)  # importing torch alone stays well below 1 GiB
