"""``python -m hiergeo.train``: the geo-weighted hyperbolic contrastive trainer.

    python -m hiergeo.train [--config default|demo|osv5m|photos|smoke|FILE.yaml] [key.sub=value ...]
    python -m hiergeo.train --resume results/<run_id>
    torchrun --nproc_per_node N -m hiergeo.train ...      # DDP: nccl on GPU, gloo on CPU

The command (:mod:`hiergeo.cli.train`) only parses; notebooks and tests call :func:`run`
with a :class:`Config`.
"""

from ..config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config", "run"]


def __getattr__(name: str):
    # the loop (which calls evaluation) loads on first use, so that reading a run's config
    # (hiergeo.config, as evaluation does) does not load the trainer
    if name == "run":
        from .loop import run

        return run
    raise AttributeError(f"module 'hiergeo.train' has no attribute {name!r}")
