"""Sampled negative candidates for a level whose full entity table is too big for the batch,
drawn so that the sampled loss estimates the full loss (the same objective on any hardware).

For a positive entity p with parent q and grandparent g, the level's other entities fall into
three disjoint strata:

- siblings: the other children of q (the confusions the descent has to resolve at this step),
- cousins: the level's other descendants of g (the confusions one step up),
- the rest of the level.

From each stratum of size ``m`` the sampler draws ``k = min(n, m)`` distinct entities,
uniformly without replacement (``n`` = ``n_siblings``, ``n_cousins``, ``n_random``; a stratum
smaller than ``n`` is taken whole). Each drawn entity stands for ``m / k`` entities of its
stratum: it is in the sample with probability ``k / m``, so with that weight the expected sum
over the drawn negatives is the sum over every negative of the level, whatever the summand:

    E[ sum_{j drawn} (m / k) f(j) ] = sum_{j in stratum} (k / m) (m / k) f(j)
                                    = sum_{j in stratum} f(j).

The loss adds ``log(m / k)`` to each column's log-weight (``log_share``), so its denominator is
an unbiased estimate of the full denominator, and it equals the full loss exactly when every
stratum is taken whole. (The loss, a log of that estimate, is biased low by Jensen's
inequality, by about ``Var / (2 denominator²)``; the bias shrinks as ``n`` grows.)

A stratum with ``n = 0`` is merged into the next one out (``n_siblings = 0``: the siblings are
part of the cousins' stratum); the rest of the level always needs ``n_random >= 1``, or the
loss would ignore it. No candidate appears twice in a row, and the positive is never a
negative.

Strata are ranges: each level's entities are sorted by their ancestors (country, region, ...),
so every subtree is one contiguous run, and a stratum is "the run of the outer ancestor minus
the run of the inner one".
"""

from __future__ import annotations

import numpy as np
import torch


class CandidateSampler:
    """The sorted levels of a :class:`~hiergeo.model.hierarchy.Hierarchy`, built once per run.

    Attributes (per level l):
        order[l]: ``[N_l]`` the level's active entity ids, sorted by ancestors.
        rank: ``[N]`` each entity's position in its level's ``order`` (-1 if inactive).
        runs[l]: ``[2, 2, N_l]`` for each position, start and end of the run of its parent
            (``runs[l][0]``) and of its grandparent (``runs[l][1]``) in ``order[l]``; the root
            covers the whole level, and a missing grandparent is the parent's run.
    """

    def __init__(self, hier):
        anc = hier.ancestors.cpu().numpy()
        device = hier.parent.device
        self.order, self.runs = [], []
        rank = np.full(hier.n, -1, np.int64)
        for lvl, ids in enumerate(hier.level_ids):
            ids = ids.cpu().numpy()
            keys = anc[ids, :lvl + 1]
            srt = ids[np.lexsort(keys.T[::-1])] if len(ids) else ids
            rank[srt] = np.arange(len(srt))
            n = len(srt)
            bounds = []
            for k in (lvl - 1, lvl - 2):
                if k < -1:
                    bounds.append(bounds[-1])  # no grandparent: the parent's run
                    continue
                if k == -1:  # the root: the whole level
                    bounds.append(np.stack([np.zeros(n, np.int64), np.full(n, n, np.int64)]))
                    continue
                a = anc[srt, k]
                change = np.ones(n, bool)
                change[1:] = a[1:] != a[:-1]
                starts = np.flatnonzero(change)
                ends = np.append(starts[1:], n)
                run = np.cumsum(change) - 1
                bounds.append(np.stack([starts[run], ends[run]]))
            self.order.append(torch.from_numpy(srt).to(device))
            self.runs.append(torch.from_numpy(np.stack(bounds)).to(device))
        self.rank = torch.from_numpy(rank).to(device)

    def strata(self, pos: torch.Tensor, level: int, n_siblings: int,
               n_cousins: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each stratum that is drawn (siblings, cousins, rest): the outer and inner run
        ``[B, 2]`` (start, end) of positions in ``order[level]``; the stratum is outer minus
        inner. Strata with no draws are merged outwards."""
        r = self.rank[pos]
        if bool((r < 0).any()):
            raise ValueError("every positive must be an active entity of the level")
        runs = self.runs[level][:, :, r]  # [2 (parent, grandparent), 2 (start, end), B]
        whole = torch.stack([torch.zeros_like(r), torch.full_like(r, len(self.order[level]))])
        inner = torch.stack([r, r + 1], dim=1)
        out = []
        for outer, n in ((runs[0].T, n_siblings), (runs[1].T, n_cousins), (whole.T, None)):
            if n == 0:
                continue
            out.append((outer, inner))
            inner = outer
        return out

    def sample(self, pos: torch.Tensor, level: int, n_siblings: int, n_cousins: int,
               n_random: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
        """Candidates for positives ``pos [B]`` (entity ids of ``level``).

        Returns:
            ``cand [B, K]`` entity ids, the positive at column 0 (K = 1 + n_siblings +
            n_cousins + n_random); ``valid [B, K]`` (False for padding, where a stratum has
            fewer entities than asked for; padded columns hold the positive's id);
            ``log_share [B, K]`` float64, log of how many entities of its stratum each column
            stands for (0 in column 0 and in padding).
        """
        if n_random < 1 or n_siblings < 0 or n_cousins < 0:
            raise ValueError("n_random must be >= 1 (the rest of the level must be sampled) and "
                             f"n_siblings, n_cousins >= 0; got {n_siblings}, {n_cousins}, "
                             f"{n_random}")
        B = len(pos)
        order = self.order[level]
        cols = [self.rank[pos][:, None]]
        valid = [torch.ones(B, 1, dtype=torch.bool, device=pos.device)]
        share = [torch.zeros(B, 1, dtype=torch.float64, device=pos.device)]
        counts = [n for n in (n_siblings, n_cousins) if n > 0] + [n_random]
        for (outer, inner), n in zip(self.strata(pos, level, n_siblings, n_cousins), counts,
                                     strict=True):
            m = (outer[:, 1] - outer[:, 0]) - (inner[:, 1] - inner[:, 0])
            idx, ok = distinct_uniform(m, n, gen)
            at = outer[:, :1] + idx  # skip over the inner run
            at = torch.where(at >= inner[:, :1], at + (inner[:, 1:] - inner[:, :1]), at)
            k = torch.minimum(m, torch.full_like(m, n)).clamp_min(1)
            cols.append(torch.where(ok, at, cols[0]))
            valid.append(ok)
            share.append(torch.where(ok, (m.double() / k.double()).log()[:, None], 0.0))
        cand = order[torch.cat(cols, dim=1)]
        return cand, torch.cat(valid, dim=1), torch.cat(share, dim=1)


def distinct_uniform(m: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """``min(k, m_b)`` distinct integers drawn uniformly from ``[0, m_b)`` for each row.

    Returns ``idx [B, k]`` and ``ok [B, k]`` (False where ``m_b < k``: padding, idx 0). Every
    step below treats all values alike, so the set drawn is a uniform ``min(k, m)``-subset.
    Rows with ``m <= 4k`` take the ``k`` smallest of ``m`` random keys; larger ones draw ``k``
    values with replacement and redraw the repeats until none is left (few: about
    ``k² / 2m`` the first time).
    """
    B, dev = len(m), m.device
    idx = torch.zeros(B, k, dtype=torch.long, device=dev)
    if B == 0 or k == 0:
        return idx, idx.bool()
    small = m <= 4 * k
    if bool(small.any()):
        ms = m[small]
        width = int(ms.max())
        if width > 0:
            keys = torch.rand(len(ms), width, generator=gen, dtype=torch.float64, device=dev)
            keys = keys.masked_fill(torch.arange(width, device=dev) >= ms[:, None], 2.0)
            top = torch.topk(keys, min(k, width), dim=1, largest=False).indices
            idx[small, :top.shape[1]] = top
    big = ~small
    if bool(big.any()):
        mb = m[big].double()[:, None]
        draw = (torch.rand(len(mb), k, generator=gen, dtype=torch.float64, device=dev)
                * mb).long()
        while True:
            srt, at = torch.sort(draw, dim=1, stable=True)
            rep = torch.zeros_like(draw, dtype=torch.bool)
            rep.scatter_(1, at[:, 1:], srt[:, 1:] == srt[:, :-1])  # all but one of each value
            if not bool(rep.any()):
                break
            new = (torch.rand(len(mb), k, generator=gen, dtype=torch.float64, device=dev)
                   * mb).long()
            draw = torch.where(rep, new, draw)
        idx[big] = draw
    ok = torch.arange(k, device=dev) < m[:, None]
    return idx.masked_fill(~ok, 0), ok


def sample_candidates(hier, pos: torch.Tensor, level: int, n_siblings: int, n_cousins: int,
                      n_random: int, gen: torch.Generator, sampler: CandidateSampler | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:meth:`CandidateSampler.sample`; pass a ``sampler`` built once (its construction sorts
    every level) rather than let each call build one."""
    sampler = sampler if sampler is not None else CandidateSampler(hier)
    return sampler.sample(pos, level, n_siblings, n_cousins, n_random, gen)
