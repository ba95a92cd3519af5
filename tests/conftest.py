"""Shared fixtures: small hand-made places tables and one world build per test session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

import gazetteer


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache: every test sees a session-private one."""
    monkeypatch.setenv("HIERGEO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The bundled world gazetteer, built once for the session (about 5 s)."""
    return gazetteer.build(out=tmp_path_factory.mktemp("world") / "gz")


SMALL_PLACES = [
    # lat, lon, name, admin1, admin2, cc
    (-44.26667, 171.13333, "Pleasant Point", "Canterbury", "Timaru District", "NZ"),
    (-44.39672, 171.25364, "Timaru", "Canterbury", "Timaru District", "NZ"),
    (-43.53333, 172.63333, "Christchurch", "Canterbury", "Christchurch City", "NZ"),
    (-22.55941, 17.08323, "Windhoek", "Khomas", "", "NA"),  # Namibia, no admin2
    (-22.95750, 14.50530, "Walvis Bay", "Erongo", "", "NA"),
    (49.99, 7.6, "Kirn", "Rheinland-Pfalz", "", "DE"),  # placeholder subregion
    (47.3769, 8.5417, "Zürich", "Zurich", "Bezirk Zürich", "CH"),  # unicode
    (-16.80, 179.95, "East", "Northern", "", "FJ"),  # both sides of the antimeridian
    (-16.70, -179.95, "West", "Northern", "", "FJ"),
    (47.3769, 8.5417, "Zürich", "Zurich", "Bezirk Zürich", "CH"),  # same key twice: one entity
    (35.0, 139.0, "Nowhere", "", "", "JP"),  # no admin1 at all
]


@pytest.fixture
def small_places_csv(tmp_path):
    df = pd.DataFrame(SMALL_PLACES, columns=["lat", "lon", "name", "admin1", "admin2", "cc"])
    path = tmp_path / "places.csv"
    df.to_csv(path, index=False, encoding="utf-8")
    return path


@pytest.fixture
def small(small_places_csv):
    return gazetteer.build(small_places_csv, boundaries=False)


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory):
    """The session-private cache above, for session-scoped fixtures too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HIERGEO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, cache_env):
    """One `smoke` training run for the session: (run folder, metrics)."""
    from hiergeo.train import load_config, run

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config("smoke", [f"run.out={out}", "run.id=base", "run.tensorboard=true"])
    res = run(cfg)
    return out / "base", res


@pytest.fixture(scope="session")
def scripts():
    """Load one of the repo's ``scripts/NAME.py`` as a module: ``scripts("check_map")``."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture
def loss_terms():
    """``loss_terms(cfg, model, hier, z, ids, latlon, gen, full)``: the trainer's loss terms
    for one batch (its :class:`~hiergeo.losses.Objective`, with ``full`` per level)."""
    from hiergeo.losses import Objective
    from hiergeo.train.optim import sparse_entities

    def terms(cfg, model, hier, z, ids, latlon, gen, full):
        objective = Objective.build(cfg.loss, model.space, hier, device="cpu", batch=len(ids),
                                    sparse=sparse_entities(cfg, "cpu"), full=full)
        return objective(model.entities, z, ids, latlon, gen,
                         parent_margin=model.parent_margin)
    return terms


@pytest.fixture
def hold_lock():
    """``hold_lock(path)``: another process takes :func:`hiergeo.files.exclusive` on
    ``path`` and keeps it until killed; returns the process (``.kill()`` releases, as a
    crash would)."""
    import subprocess
    import sys

    code = ("import sys\nfrom hiergeo.files import exclusive\n"
            "with exclusive(sys.argv[1], 'x'):\n    print('held', flush=True)\n"
            "    sys.stdin.read()\n")
    procs = []

    def hold(path):
        p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()
