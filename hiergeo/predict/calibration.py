"""Per-level temperature scaling, fitted on held-out data, so probabilities mean what they say.

Prediction reports, at each level, ``P(entity | its parent)`` = softmax of
``-d(z, e) / (tau_l * T_l)`` over the parent's active children (countries: over all
countries). The probability of a whole path factorises over its levels, so the negative
log-likelihood of the true path is a sum of one term per level, each depending on that
level's ``T_l`` alone: :func:`fit_temperatures` minimises each term over ``T_l`` (a 1-D convex
problem in ``1 / T_l``), given the true parent. The fitted ``T`` is stored in the model
(``GeoModel.level_temperature``) and applied by :func:`hiergeo.predict.predict`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from gazetteer.keys import LEVELS

from ..files import atomic_write_text
from ..model.geomodel import level_query
from .descent import log_softmax_groups

log = logging.getLogger(__name__)

NLEV = len(LEVELS)
#: A level calibrated on fewer validation samples than this keeps T = 1 (its probabilities as
#: trained), with a warning: 25 photos fitted T = 0.01 for three levels once, and answers
#: 7,000 km off were called sure down to the city (issue 27).
MIN_CALIBRATION = 50
#: The lowest temperature a fit may take (probabilities sharpened at most tenfold): where the
#: validation samples are separable the likelihood keeps sharpening towards certainty. The
#: names benchmark's fits are 0.43-1.35.
T_FLOOR = 0.1


@torch.no_grad()
def sibling_logits(z: torch.Tensor, true_ids: torch.Tensor, entities: torch.Tensor, space,
                   hier, tau: float, chunk: int = 1024):
    """For queries ``z [n, D]`` whose true entity at one level is ``true_ids [n]`` (-1 or an
    inactive entity: skipped), the logits ``-d/tau`` against all active children of the true
    parent, flattened: ``(logits [m], query [m], is_true [m], child [m])``."""
    dev = entities.device
    out_l, out_q, out_t, out_c = [], [], [], []
    for s in range(0, len(z), chunk):
        e = true_ids[s:s + chunk].to(dev)
        keep = torch.nonzero((e >= 0) & hier.active[e.clamp_min(0)]).flatten()
        q, child, is_true = hier.sibling_pairs(e[keep])
        zq = z[s:s + chunk].to(device=dev, dtype=torch.float64)[keep][q]
        out_l.append(-space.pair(zq, entities[child]) / tau)
        out_q.append(keep[q] + s)
        out_t.append(is_true)
        out_c.append(child)
    return torch.cat(out_l), torch.cat(out_q), torch.cat(out_t), torch.cat(out_c)


def _nll(beta: float, logits, seg, is_true, n_seg) -> float:
    """Mean over segments of ``-log softmax(beta l)[true]`` (one true pair per segment)."""
    return float(-log_softmax_groups(beta * logits, seg, n_seg)[is_true].mean())


def fit_temperature(logits, query, is_true, lo: float = 1e-2, hi: float = 1e2,
                    iters: int = 60) -> tuple[float, float, float]:
    """The ``T`` minimising the NLL of ``softmax(logits / T)`` per query (golden-section
    search on ``log(1/T)``; the NLL is convex in ``1/T``). Returns ``(T, nll at T,
    nll at 1)``."""
    _, seg = torch.unique(query, return_inverse=True)
    n_seg = int(seg.max()) + 1 if len(seg) else 0
    if n_seg == 0:
        return 1.0, float("nan"), float("nan")

    def f(log_beta):
        return _nll(math.exp(log_beta), logits, seg, is_true, n_seg)

    a, b = math.log(1 / hi), math.log(1 / lo)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    log_beta = (a + b) / 2
    return 1 / math.exp(log_beta), f(log_beta), f(0.0)


@torch.no_grad()
def fit_temperatures(model, z: torch.Tensor, true_ids: torch.Tensor, hier, taus) -> dict:
    """Fit ``T_l`` for each level on held-out query points ``z [n, D]`` (the model's, e.g.
    from :func:`query_points`) with true ids ``[n, 4]``; stores them in
    ``model.level_temperature`` and returns ``{level: {"T", "nll", "nll_before", "n"}}``."""
    ent = model.entities.detach()
    report = {}
    temps = torch.ones(NLEV, dtype=torch.float64)
    for j, lvl in enumerate(LEVELS):
        lg, q, t, _ = sibling_logits(level_query(z, j), true_ids[:, j], ent, model.space,
                                     hier, taus[j])
        n = int(q.unique().numel())
        if n < MIN_CALIBRATION:
            if n:
                log.warning("calibration: %s has %d validation samples (fewer than %d): its "
                            "probabilities are left as trained (T = 1)", lvl, n,
                            MIN_CALIBRATION)
            report[lvl] = {"T": 1.0, "n": n, "uncalibrated": f"only {n} samples"}
            continue
        T, nll, nll1 = fit_temperature(lg, q, t, lo=T_FLOOR)
        temps[j] = T
        report[lvl] = {"T": T, "nll": nll, "nll_before": nll1, "n": n}
    model.level_temperature.copy_(temps.to(model.level_temperature.device))
    return report


#: the memory weights :func:`fit_memory_weights` tries; 0 (the model alone) first, so that a
#: memory that never helps keeps weight 0
MEMORY_WEIGHTS = (0.0, *np.round(np.arange(0.05, 0.951, 0.05), 2).tolist(), 0.99)


def _top1(score: torch.Tensor, seg: torch.Tensor, is_true: torch.Tensor, n_seg: int) -> float:
    """Share of segments (queries) whose true pair has the segment's best score."""
    best = torch.full((n_seg,), -torch.inf, dtype=score.dtype, device=score.device
                      ).scatter_reduce(0, seg, score, reduce="amax")
    return float((score[is_true] >= best[seg[is_true]]).double().mean())


@torch.no_grad()
def fit_memory_weights(model, z: torch.Tensor, nb, true_ids: torch.Tensor, hier, taus,
                       chunk: int = 1_000_000) -> dict:
    """Fit each level's memory weight ``a_l`` and mixture temperature ``T'_l``
    (:mod:`hiergeo.predict.memory`) on held-out query points ``z`` with their memory
    neighbours ``nb`` (a :class:`~hiergeo.predict.memory.Neighbours` for the same rows) and
    true ids ``[n, 4]``, after :func:`fit_temperatures`.

    ``a_l`` is the value of :data:`MEMORY_WEIGHTS` whose mixture ranks
    the true entity first among its siblings most often (ties: the smallest); ``T'_l`` then
    makes the mixture's probabilities calibrated, as :func:`fit_temperature` does for the
    model's logits (a power of the mixture, renormalised over the siblings, which keeps its
    ranking; searched in [0.1, 10]). Stores them in ``model.memory_weight`` and
    ``model.mixture_temperature``;
    returns ``{level: {"a", "T", "accuracy", "accuracy_model", "nll", "nll_model", "n"}}``
    (accuracies and NLLs given the true parent, with the fitted mixture and the model alone).
    """
    from .descent import mix_level
    from .memory import memory_conditional, mix_log_prob

    ent = model.entities.detach()
    dev = ent.device
    nb = nb.to(dev)
    report = {}
    weights = torch.zeros(NLEV, dtype=torch.float64)
    temps = torch.ones(NLEV, dtype=torch.float64)
    for j, lvl in enumerate(LEVELS):
        tau = float(taus[j]) * float(model.level_temperature[j])
        lg, q, t, child = sibling_logits(level_query(z, j), true_ids[:, j], ent, model.space,
                                         hier, tau)
        _, seg = torch.unique(q, return_inverse=True)
        n_seg = int(seg.max()) + 1 if len(seg) else 0
        if n_seg == 0:
            report[lvl] = {"a": 0.0, "T": 1.0, "n": 0}
            continue
        logp = log_softmax_groups(lg, seg, n_seg)
        q = q.to(dev)
        pmem = torch.cat([memory_conditional(nb, q[s:s + chunk], child[s:s + chunk], j, hier)
                          for s in range(0, len(q), chunk)])

        accs = [_top1(mix_log_prob(logp, pmem, a), seg, t, n_seg) for a in MEMORY_WEIGHTS]
        a = float(MEMORY_WEIGHTS[int(np.argmax(accs))])
        T = 1.0
        mixed = ~torch.isnan(pmem)  # the groups the memory speaks for (whole groups)
        if a > 0 and bool(mixed.any()):
            # searched in [0.1, 10]: where the validation split is separable (the demo) the
            # likelihood would sharpen without limit (T' -> 0) and promise certainty
            T = fit_temperature(mix_log_prob(logp, pmem, a)[mixed], q[mixed], t[mixed],
                                lo=0.1, hi=10.0)[0]
        nll = float(-mix_level(logp, pmem, a, T, seg, n_seg)[t].mean())
        weights[j], temps[j] = a, T
        report[lvl] = {"a": a, "T": T, "accuracy": max(accs), "accuracy_model": accs[0],
                       "nll": nll, "nll_model": float(-logp[t].mean()), "n": n_seg}
    model.memory_weight.copy_(weights.to(model.memory_weight.device))
    model.mixture_temperature.copy_(temps.to(model.mixture_temperature.device))
    return report


def reliability(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error and the reliability table for one level.

    ``conf [n]`` reported probabilities, ``correct [n]`` bool (rows with NaN ``conf`` are
    left out). Equal-width bins over [0, 1]; ECE = sum over bins of ``n_b / n *
    |accuracy_b - mean confidence_b|``. Also the accuracy among answers with probability
    >= 0.5 (a calibrated model gets at least half of them right)."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, bool)
    ok = np.isfinite(conf)
    conf, correct = conf[ok], correct[ok]
    n = len(conf)
    edges = np.linspace(0, 1, bins + 1)
    b = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for i in range(bins):
        m = b == i
        if m.any():
            acc, mc = float(correct[m].mean()), float(conf[m].mean())
            ece += m.sum() / n * abs(acc - mc)
            rows.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int(m.sum()),
                         "accuracy": acc, "confidence": mc})
    sure = conf >= 0.5
    return {"ece": float(ece) if n else float("nan"), "n": n,
            "accuracy": float(correct.mean()) if n else float("nan"),
            "mean_confidence": float(conf.mean()) if n else float("nan"),
            "n_at_least_0.5": int(sure.sum()),
            "accuracy_at_least_0.5": float(correct[sure].mean()) if sure.any() else float("nan"),
            "bins": rows}


# -- calibrating a trained model on its validation split --------------------------------
@torch.no_grad()
def query_points(model, split, rows: np.ndarray, batch_size: int = 1024,
                 features: bool = False):
    """The model's query points for ``rows`` of ``split``, inputs loaded a batch at a time
    (images are decoded per batch, never all at once); with ``features``, ``(points,
    encoder features)``, from one pass of the encoder."""
    was = model.training
    model.eval()
    dev = model.entities.device
    zs, fs = [], []
    try:
        for s in range(0, len(rows), batch_size):
            f = model.encoder(split.inputs(rows[s:s + batch_size]).to(dev))
            zs.append(model.query_from_features(f))
            if features:
                fs.append(f)
    finally:
        model.train(was)
    z = torch.cat(zs)
    return (z, torch.cat(fs)) if features else z


def calibrate(model, split, hier, cfg, d: Path, memory=None):
    """Fit the per-level temperatures on (a random subset of) the validation split, then
    the memory's weights if there is a memory, and write them to ``calibration.json``.
    Returns the temperatures' report and, when the subset is the whole split, the memory's
    neighbours of every row (evaluation reuses them instead of searching again), else
    None."""
    n = len(split)
    rows = np.sort(np.random.default_rng([cfg.run.seed, 13]).permutation(n)[
        :cfg.eval.calibration_max])
    z, f = query_points(model, split, rows, features=True) if memory is not None else (
        query_points(model, split, rows), None)
    # a learnt tau (loss.learn) is what prediction uses: the fit scales it
    base = model.learnt_tau_scale(cfg.loss.tau)
    rep = fit_temperatures(model, z, split.ids[rows].to(model.entities.device), hier,
                           [t * float(b) for t, b in zip(cfg.loss.tau, base, strict=True)])
    model.level_temperature.mul_(base)
    log.info("calibration on %d validation samples: %s", len(rows), ", ".join(
        f"{lvl} T={r['T']:.3g} (nll {r['nll_before']:.3f} -> {r['nll']:.3f})"
        if "nll" in r else f"{lvl} uncalibrated ({r['n']} samples)" for lvl, r in rep.items()))
    out = {"samples": len(rows), "levels": rep}
    nb = None
    if memory is not None:
        nb = memory.search(f)
        out["memory"] = fit_memory_weights(model, z, nb, split.ids[rows].to(
            model.entities.device), hier, cfg.loss.tau)
        log.info("memory on the same samples: %s", ", ".join(
            f"{lvl} a={r['a']:.3g} T'={r['T']:.3g} (accuracy given the parent "
            f"{r['accuracy_model']:.3f} -> {r['accuracy']:.3f})"
            for lvl, r in out["memory"].items() if r["n"]))
    atomic_write_text(d / "calibration.json", json.dumps(out, indent=2) + "\n")
    return rep, (nb if len(rows) == n else None)
