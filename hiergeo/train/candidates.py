"""Negative candidates for a level when its full entity table is too big for the batch.

For a positive entity p with parent q, the candidates are, in this order after p itself:
``n_siblings`` random children of q (the confusions the descent has to resolve at this step),
``n_cousins`` random children of random siblings of q (the confusions one step up), and
``n_random`` uniform entities of the level (the rest of the world). Draws are with
replacement; a draw equal to p is marked invalid and left out of the loss.
"""

from __future__ import annotations

import torch


def _pick_child(hier, parents: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """A random active child of each parent (-1 parents or childless ones give -1)."""
    ok = parents >= 0
    p = parents.clamp_min(0)
    cnt = hier.child_count[p]
    ok &= cnt > 0
    r = (torch.rand(parents.shape, generator=gen, dtype=torch.float64, device=cnt.device)
         * cnt.clamp_min(1)).long().clamp_max((cnt - 1).clamp_min(0))
    child = hier.child_list[(hier.child_start[p] + r).clamp_max(len(hier.child_list) - 1)]
    return torch.where(ok, child, -1), ok


def sample_candidates(hier, pos: torch.Tensor, level: int, n_siblings: int, n_cousins: int,
                      n_random: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 1 + n_siblings + n_cousins + n_random]`` candidate ids (positive first) and a
    validity mask."""
    B = len(pos)
    parent = hier.parent[pos]
    level_ids = hier.level_ids[level]
    cols = [pos[:, None]]
    if n_siblings:
        sib, _ = _pick_child(hier, parent[:, None].expand(B, n_siblings), gen)
        cols.append(sib)
    if n_cousins:
        grand = torch.where(parent >= 0, hier.parent[parent.clamp_min(0)], -1)
        aunt, _ = _pick_child(hier, grand[:, None].expand(B, n_cousins), gen)
        cousin, _ = _pick_child(hier, aunt, gen)
        cols.append(cousin)
    if n_random:
        r = torch.randint(len(level_ids), (B, n_random), generator=gen, device=pos.device)
        cols.append(level_ids[r])
    cand = torch.cat(cols, dim=1)
    valid = (cand >= 0) & (cand != pos[:, None])
    valid[:, 0] = True
    # -1 (no such relative) is replaced by the positive itself, and masked
    cand = torch.where(cand >= 0, cand, pos[:, None].expand_as(cand))
    return cand, valid
