"""The processes of a run: one, or several under torchrun (DDP: NCCL on GPUs, gloo on CPUs),
each with its device."""

from __future__ import annotations

import datetime as _dt

import torch

from ..config import Config, ConfigError
from ..devices import ranks_from_env, use_device

#: How long the other processes wait for process 0's final calibration and evaluation.
FINAL_WAIT = _dt.timedelta(days=7)


class Processes:
    """Process-group facts: single process unless launched by torchrun."""

    def __init__(self, cfg: Config):
        ranks = ranks_from_env()  # torchrun's variables, checked
        self.world, self.rank, self.local_rank = ranks.world, ranks.rank, ranks.local_rank
        local = ranks.local_rank
        try:  # cuda:LOCAL_RANK for "cuda" and "auto": set_device and NCCL need an index
            self.device = use_device(cfg.hardware.device, local)
        except ValueError as exc:
            raise ConfigError(f"hardware.device={cfg.hardware.device}: {exc}") from None
        self.started = False
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            kw = {}
            if cfg.hardware.dist_timeout_s is not None:
                kw["timeout"] = _dt.timedelta(seconds=cfg.hardware.dist_timeout_s)
            torch.distributed.init_process_group(backend=backend, **kw)
            self.started = True
        # the end of a run: the others wait for process 0's calibration and evaluation (at
        # scale, longer than any collective's timeout) on a group of their own
        self.final = (torch.distributed.new_group(backend="gloo", timeout=FINAL_WAIT)
                      if self.world > 1 else None)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def wait_for_main(self):
        """Every process returns when process 0 has finished: a machine whose processes all
        left early would end its torchrun agent, and with the c10d rendezvous that can stop
        process 0 on another machine (torchrun ranks by host name, so process 0 may be on
        any). Waits without a practical timeout (:data:`FINAL_WAIT`), idle."""
        if self.final is not None:
            torch.distributed.barrier(group=self.final)

    def close(self):
        if self.started:
            torch.distributed.destroy_process_group()

    def params_in_sync(self, model) -> bool:
        """Every rank holds the same parameters (DDP's whole point): compare checksums."""
        s = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
        got = [torch.zeros_like(s) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(got, s)
        return all(torch.equal(got[0], g) for g in got[1:])
