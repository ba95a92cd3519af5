"""The retrieval memory's search: the ``k`` training rows most similar to each query.

Two kinds behind one small surface (``search(q, k) -> (similarity, row)``, ``describe()``,
``nbytes``, ``save``/``load``), both over unit rows, so that an inner product is a cosine:

- :class:`ExactIndex` (``exact``): every row in float16, searched by a tiled exact scan
  (:func:`chunked_topk_cosine`). The reference, and the default for small memories:
  ``N x d x 2`` bytes (OSV-5M's 4.9M x 1024: 10 GB) and ``N x d`` multiply-adds per query.
- :class:`FaissIndex` (``ivfpq``): FAISS's inverted file with product quantisation
  (``faiss-cpu``): the rows are clustered into ``nlist`` lists by a coarse k-means, each
  row's residual from its list's centre is stored as ``m`` bytes (``d / m`` dimensions per
  byte-sized code), and a query scans the ``nprobe`` nearest lists (half, unless told:
  :func:`default_nprobe`). ``m + 8`` bytes a row
  (the id) instead of ``2 d``: 0.7 GB for OSV-5M's 4.9M x 1024 at ``m = 128``. Trained on a
  random sample of rows, then filled a block at a time: the store is never in memory whole.
  Saved as one FAISS file and read back memory-mapped (``IO_FLAG_MMAP_IFC``): loading reads
  no codes; the pages a search touches count in the process's resident memory (shared
  with other processes mapping the file, and given back under pressure), up to the index's
  size. The codes' similarities are approximate (on the names benchmark 0.028 of a cosine
  on average, which the neighbours' weights ``exp(s / 0.05)`` magnify), so a search takes
  ``refine x k`` candidates and re-ranks them by exact cosine with their rows, read on
  demand from the store (or the exported ``memory.safetensors``): ``refine x k x d x 2``
  bytes read per query, none of it held.

:func:`build_index` chooses by size (``kind="auto"``): exact while the float16 rows fit in
``exact_max_gb``, IVF-PQ above. What it costs and how recall and accuracy compare:
results/benchmarks/README.md#retrieval-memory-at-scale. FAISS runs on the CPU here: a query
batch on a GPU is searched on the CPU (``faiss-gpu`` is not used).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

#: the kinds :func:`build_index` knows
KINDS = ("auto", "exact", "ivfpq")
#: rows a block when building (normalising, adding)
BLOCK = 65_536


def chunked_topk_cosine(q: torch.Tensor, ref: torch.Tensor, k: int, chunk: int = 1024,
                        tile: int = 65_536) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` dot products of each row of ``q [n, d]`` with ``ref [m, d]`` (pass unit rows
    for cosine similarity): ``chunk`` queries against ``tile`` references at a time, merging
    a running top-k, so the working memory is ``chunk x tile`` floats (256 MiB at the
    defaults) plus a float32 copy of one tile of references in another dtype (the exact
    index's float16: ``tile x d`` floats, 256 MiB at d = 1024), whatever ``m``. Returns
    ``(values, indices) [n, k]``."""
    k = min(k, len(ref))
    vals, idx = [], []
    for s in range(0, len(q), chunk):
        qc = q[s:s + chunk].float()
        best_v = torch.full((len(qc), k), -torch.inf, device=q.device)
        best_i = torch.zeros((len(qc), k), dtype=torch.long, device=q.device)
        for t in range(0, len(ref), tile):
            sim = qc @ ref[t:t + tile].to(qc.dtype).T
            top = sim.topk(min(k, sim.shape[1]), dim=1)
            del sim
            v = torch.cat([best_v, top.values], 1)
            i = torch.cat([best_i, top.indices + t], 1)
            keep = v.topk(k, dim=1)
            best_v, best_i = keep.values, i.gather(1, keep.indices)
        vals.append(best_v)
        idx.append(best_i)
    return torch.cat(vals), torch.cat(idx)


def unit_rows(block: torch.Tensor) -> torch.Tensor:
    """Rows ``block [n, d]`` at unit length, float32; ValueError on NaN or infinities."""
    x = torch.nn.functional.normalize(block.float(), dim=1)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the memory's features have NaN or infinite values")
    return x


def _blocks(features, block: int | None = None):
    """``features`` (a tensor or a lazy store view) a block of unit float32 rows at a time."""
    block = block or BLOCK
    for s in range(0, len(features), block):
        yield s, unit_rows(features[s:s + block])


class ExactIndex:
    """Every row, unit length, float16, on ``device``; exact search."""

    kind = "exact"

    def __init__(self, unit16: torch.Tensor):
        if unit16.dtype != torch.float16 or unit16.ndim != 2:
            raise ValueError(f"need float16 unit rows [N, d], got {unit16.dtype} "
                             f"{tuple(unit16.shape)}")
        self.rows = unit16

    @classmethod
    def build(cls, features, device="cpu") -> ExactIndex:
        """From any rows (normalised a block at a time: the float16 copy is the only
        full-size one)."""
        out = torch.empty(tuple(features.shape), dtype=torch.float16, device=device)
        for s, x in _blocks(features):
            out[s:s + len(x)] = x.to(torch.float16).to(device)
        return cls(out)

    @property
    def ntotal(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * 2

    def describe(self) -> dict:
        return {"kind": self.kind, "rows": self.ntotal, "dim": self.dim, "bytes": self.nbytes}

    def search(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(similarity float32, row int64) [B, k]`` for unit queries ``q [B, d]``."""
        return chunked_topk_cosine(q.to(self.rows.device), self.rows, k)


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # a broken or partial install
        raise ImportError("the retrieval memory's ivfpq index needs faiss-cpu: "
                          "pip install faiss-cpu (or eval.memory_index=exact)") from exc
    # FAISS's OpenMP takes every core unless told: as many threads as torch's (the
    # process's share under torchrun, hardware.threads)
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


def default_nprobe(nlist: int) -> int:
    """Lists a query scans unless told: half of them. On the names benchmark (validation,
    117k rows, 256 lists, re-ranked 4 x k) a scan of half the lists matched exact search
    within 0.05 points at every level, a quarter lost 0.2 points and an eighth 0.4-0.5
    (results/benchmarks/README.md#retrieval-memory-at-scale): name features cluster poorly,
    and no larger real-signal memory was at hand to show that fewer lists suffice at scale.
    Scanning half the lists still reads m bytes of code a row instead of 2 d."""
    return max(1, int(nlist) // 2)


def ivfpq_params(n: int, d: int, nprobe: int | None = None, refine: int = 4) -> dict:
    """The IVF-PQ settings for ``n`` rows of ``d`` dimensions: ``nlist`` about ``sqrt(n)``
    lists (a power of two, 64 to 65,536: 2,048 at OSV-5M's 4.9M, so that the coarse k-means
    and the assignment of every row cost ``n x nlist x d``, minutes on a CPU); ``nprobe``
    (None: :func:`default_nprobe`); ``m`` the largest of 128, 64, 32, 16, 8
    that divides ``d`` and leaves at least 4 dimensions a code (``m`` bytes a row); the
    k-means trained on ``train_rows`` = min(n, max(39 nlist, 256 x 39), 200,000) random rows
    (39 a centre is FAISS's floor)."""
    nlist = int(2 ** round(math.log2(max(64, min(65_536, math.sqrt(max(n, 1)))))))
    m = next((m for m in (128, 64, 32, 16, 8) if d % m == 0 and d // m >= 4), None)
    if m is None:
        raise ValueError(f"no product quantiser fits {d} dimensions (need a multiple of 8, "
                         "at least 32)")
    train = int(min(n, max(39 * nlist, 256 * 39), 200_000))
    nprobe = default_nprobe(nlist) if nprobe is None else min(int(nprobe), nlist)
    return {"kind": "ivfpq", "nlist": nlist, "m": m, "nbits": 8, "nprobe": nprobe,
            "train_rows": train, "refine": int(refine)}


class FaissIndex:
    """A FAISS inner-product index over unit rows (see the module docstring).

    ``rows``: the same rows, as a tensor or a lazy view read on demand (the training store;
    an exported model's ``memory.safetensors``), for re-ranking: a search asks the index for
    ``refine x k`` candidates, reads just those rows and keeps the ``k`` with the best exact
    cosine. Without ``rows`` (or with ``refine`` 1), the codes' approximate similarities
    answer."""

    kind = "ivfpq"

    def __init__(self, index, params: dict, rows=None, rows_unit: bool = False):
        self.index, self.params, self.rows = index, dict(params), rows
        #: whether ``rows`` are already the float16 unit rows the re-ranking compares (an
        #: export's ``memory.safetensors``) or raw features (a store), made so a block at a
        #: time: the same numbers either way, so an export ranks as its run
        self.rows_unit = rows_unit
        self.params.setdefault("refine", 1)
        self._set_nprobe(self.params.get("nprobe") or default_nprobe(self.params["nlist"]))
        if rows is not None and len(rows) != self.ntotal:
            raise ValueError(f"the index holds {self.ntotal} rows, its row source {len(rows)}")

    def _set_nprobe(self, nprobe: int) -> None:
        try:
            ivf = _faiss().extract_index_ivf(self.index)
        except RuntimeError:
            raise ValueError("not an inverted-file (IVF) index") from None
        ivf.nprobe = int(nprobe)
        self.params["nprobe"] = int(nprobe)

    @classmethod
    def build(cls, features, params: dict, seed: int = 0, progress=None) -> FaissIndex:
        """Train on ``params["train_rows"]`` random rows of ``features`` (a tensor or a lazy
        store view), then add every row a block at a time."""
        faiss = _faiss()
        n, d = int(features.shape[0]), int(features.shape[1])
        need = max(params["nlist"], 2 ** params["nbits"])  # k-means of the lists and codes
        if n < need:
            raise ValueError(f"an ivfpq index of {params['nlist']} lists and "
                             f"{2 ** params['nbits']}-entry codebooks needs at least {need} "
                             f"rows, got {n}: use eval.memory_index=exact")
        index = faiss.index_factory(d, f"IVF{params['nlist']},PQ{params['m']}x{params['nbits']}",
                                    faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, params["train_rows"]), replace=False))
        xs = np.concatenate([unit_rows(features[sample[s:s + BLOCK]]).numpy()
                             for s in range(0, len(sample), BLOCK)])
        index.train(xs)
        del xs
        for _, x in _blocks(features):
            index.add(np.ascontiguousarray(x.numpy()))
            if progress is not None:
                progress(len(x))
        return cls(index, params, rows=features)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nbytes(self) -> int:
        """The codes and ids (what grows with the rows), not the centres."""
        return self.ntotal * (self.params["m"] * self.params["nbits"] // 8 + 8)

    def describe(self) -> dict:
        return {**self.params, "rows": self.ntotal, "dim": self.dim, "bytes": self.nbytes}

    def search(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(similarity float32, row int64) [B, k]`` for unit queries ``q [B, d]`` (on the
        CPU; the answer comes back on ``q``'s device). Rows a search cannot fill (fewer than
        ``k`` rows in the lists it scans) get similarity -inf and row 0."""
        k = min(int(k), self.ntotal)
        refine = int(self.params.get("refine", 1)) if self.rows is not None else 1
        qn = np.ascontiguousarray(q.detach().float().cpu().numpy())
        sim, idx = self.index.search(qn, min(self.ntotal, k * refine))
        bad = idx < 0
        sim[bad], idx[bad] = -np.inf, 0
        sim, idx = torch.from_numpy(sim), torch.from_numpy(idx)
        if refine > 1:
            sim, idx = self._rerank(torch.from_numpy(qn), sim, idx, torch.from_numpy(bad), k)
        return sim.to(q.device), idx.to(q.device)

    def _rerank(self, q, sim, idx, bad, k: int, chunk: int = 256):
        """The ``k`` best of each query's candidates ``idx [B, k']`` by exact cosine with
        their rows, read ``chunk`` queries at a time (``chunk x k' x d`` floats)."""
        out_s, out_i = [], []
        for a in range(0, len(q), chunk):
            ii, nb = idx[a:a + chunk], bad[a:a + chunk]
            flat = ii.reshape(-1)
            uniq, inv = torch.unique(flat, return_inverse=True)
            got = self.rows[uniq.numpy()]
            got = got.float() if self.rows_unit else unit_rows(got).to(torch.float16).float()
            x = got[inv].view(*ii.shape, -1)
            exact = torch.einsum("bkd,bd->bk", x, q[a:a + chunk])
            exact[nb] = -torch.inf
            top = exact.topk(k, dim=1)
            out_s.append(top.values)
            out_i.append(ii.gather(1, top.indices))
        return torch.cat(out_s), torch.cat(out_i)

    def save(self, path: str | Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, params: dict, mmap: bool = True, rows=None,
             rows_unit: bool = False) -> FaissIndex:
        """Read back, memory-mapped by default (the codes stay in the file); ``rows`` for
        re-ranking (see the class)."""
        faiss = _faiss()
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
            return cls(index, params, rows=rows, rows_unit=rows_unit)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "?"
            raise ValueError(f"{path}: not a FAISS index hiergeo wrote ({first})") from None


def resolve_kind(kind: str, n: int, d: int, exact_max_gb: float) -> str:
    """``auto`` resolved for ``n`` rows of ``d`` features: exact while their float16 rows
    (``n x d x 2`` bytes) are at most ``exact_max_gb`` GiB, IVF-PQ above; other kinds as
    they are."""
    if kind != "auto":
        return kind
    return "exact" if n * d * 2 <= exact_max_gb * 2**30 else "ivfpq"


def build_index(features, kind: str = "auto", device="cpu", exact_max_gb: float = 1.0,
                nprobe: int | None = None, refine: int = 4, seed: int = 0, progress=None):
    """The memory's index over ``features [N, d]`` (a tensor or a lazy store view, read a
    block at a time): ``exact``, ``ivfpq``, or ``auto``: exact while ``N x d x 2`` bytes
    (its float16 rows) are at most ``exact_max_gb`` GiB, IVF-PQ above."""
    if kind not in KINDS:
        raise ValueError(f"eval.memory_index must be one of {', '.join(KINDS)}, not {kind!r}")
    n, d = int(features.shape[0]), int(features.shape[1])
    kind = resolve_kind(kind, n, d, exact_max_gb)
    if kind == "exact":
        return ExactIndex.build(features, device)
    return FaissIndex.build(features, ivfpq_params(n, d, nprobe, refine), seed=seed,
                            progress=progress)
