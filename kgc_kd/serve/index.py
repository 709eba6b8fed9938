"""An approximate nearest-entity index (FAISS, inner product) over an export's entity vectors, cached beside them.

Why: exact top-k over all entities reads every vector for every query; at Wikidata5M's 4.6M entities that is the
serving latency. An approximate index reads a small part, at a measured loss of recall. The loss depends on the
vectors (real encoders' vectors cluster; random ones do not), so every build measures recall@10 against exact
search and records it beside the index: a served index never has an unknown recall.

Files: `<directory>/<name>.faiss` (FAISS's own format, read by `faiss.read_index`: no pickle, nothing loaded
runs code) and `<name>.json` (what it was built from and for, and its measured recall). An index is reused where
the json's vectors_sha256, kind and params equal those asked for (where only the search parameter, efSearch
or nprobe, differs, the built index is reused and its recall measured again and recorded); otherwise it is built,
with one DataWarning saying why where a file was there (stale, damaged, or another kind or build params). Writes are atomic (a temporary
sibling renamed over the file; the json is removed first and written last, so a kill mid-build never leaves a
json vouching for another index); a directory that cannot be written keeps the index in memory.

Vectors are (E, D) float16 or float32 with L2-normalised rows, so inner product = cosine. Kinds: `ivf` (the
default: IndexIVFFlat, nlist, nprobe), `hnsw` (IndexHNSWFlat: M, efConstruction, efSearch), `flat` (exact);
defaults measured at 459k x 384 encoder vectors on a 2-core CPU (`DEFAULTS`, experiments/index_scale.py).
FAISS is an optional extra (`kgc-kd[serve]`): imported where used.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kgc_kd.data.io import DataWarning
from kgc_kd.runtime.files import confined, current_umask, write_json_atomic

FORMAT = "kgc-kd-entity-index/1"
NEEDS_FAISS = "approximate search needs faiss: pip install 'kgc-kd[serve]'"
RECALL_K = 10
RECALL_QUERIES = 1_000
RECALL_SEED = 0
# Build parameters first, then the one search parameter each kind has (it changes results, not the built index,
# but the recorded recall was measured with it, so it is part of what a cached index must match).
# Measured at 459k x 384 (experiments/index_scale.py, 2 cores, 2026-12-07; entity vectors of a 2-layer MiniLM,
# 1,000 queries from test triples): IVF nlist=2711 (4 sqrt(E)) reaches recall@10 0.969 at nprobe=512, 9.1x
# faster than exact at batch 1 on a quiet machine (one query split across threads by list), built in 31 s (nprobe
# 256: 0.890; nlist=1024 at nprobe 256: 0.976 but 8.1x). HNSW (M=32, efConstruction=80) took 220-505 s to build and reached only 0.64 at efSearch=1024 on these
# vectors (a narrow cone: the mean vector's norm is 0.94; a query's top-10 score stands 4 std above the median).
# So `ivf` is the default; nprobe is capped at nlist (a small index is then searched exactly).
DEFAULT_KIND = "ivf"
DEFAULTS: dict[str, dict[str, Any]] = {
    "hnsw": {"M": 32, "efConstruction": 80, "efSearch": 64},
    "ivf": {"nlist": None, "nprobe": 512},  # nlist None: 4 * sqrt(E), at most E / 39 (FAISS's points per centroid)
    "flat": {},
}
SEARCH_PARAM = {"hnsw": "efSearch", "ivf": "nprobe", "flat": None}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(NEEDS_FAISS) from None
    return faiss


def set_threads(threads: int | None) -> None:
    """FAISS's OpenMP threads for builds and searches (None: leave FAISS's default, all cores)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        _faiss().omp_set_num_threads(int(threads))


# ---- exact search: the reference -----------------------------------------------------------------------------
def exact_search(vectors: np.ndarray, q: np.ndarray, k: int, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by float32 inner product with every vector: (scores (B, k) float32, ids (B, k) int64), each row
    by descending score, ties by ascending id. Queries go `chunk` at a time so the (chunk, E) score block stays
    small (64 x 4.6M floats = 1.2 GB would not be). fp16 vectors are widened once per call: pass float32 to time it."""
    v = np.asarray(vectors, dtype=np.float32)
    q = np.atleast_2d(np.asarray(q, dtype=np.float32))
    n = v.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"exact_search: k={k} must be in 1..{n} (the number of vectors)")
    scores = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for b in range(0, len(q), chunk):
        s = q[b:b + chunk] @ v.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), s.shape).copy()
        ts = np.take_along_axis(s, top, axis=1)
        order = np.lexsort((top, -ts), axis=1)
        ids[b:b + chunk] = np.take_along_axis(top, order, axis=1)
        scores[b:b + chunk] = np.take_along_axis(ts, order, axis=1)
    return scores, ids


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (a missing result, id -1, never counts)."""
    a = np.asarray(approx_ids)[:, :k]
    e = np.asarray(exact_ids)[:, :k]
    if a.shape[0] != e.shape[0] or e.shape[1] < k:
        raise ValueError(f"recall_at_k: {a.shape} approximate vs {e.shape} exact ids for k={k}")
    hit = (a[:, :, None] == e[:, None, :]).any(axis=2) & (a >= 0)
    return float(hit.sum(axis=1).mean() / k)


# ---- building ------------------------------------------------------------------------------------------------
def resolve_params(kind: str, n: int, params: dict[str, Any]) -> dict[str, Any]:
    """`kind`'s parameters: the defaults overridden by `params`, with nlist resolved against `n` entities."""
    if kind not in DEFAULTS:
        raise ValueError(f"index kind {kind!r}; expected one of {', '.join(DEFAULTS)}")
    unknown = set(params) - set(DEFAULTS[kind])
    if unknown:
        raise ValueError(f"index kind {kind!r} has no parameter {', '.join(sorted(unknown))}; "
                         f"its parameters: {', '.join(DEFAULTS[kind]) or 'none'}")
    out = {**DEFAULTS[kind], **params}
    if kind == "ivf" and out["nlist"] is None:
        out["nlist"] = max(1, min(round(4 * n ** 0.5), n // 39))
    for key, value in out.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"index parameter {key}={value!r} must be an integer >= 1")
        out[key] = int(value)
    if kind == "ivf":
        out["nprobe"] = min(out["nprobe"], out["nlist"])  # what FAISS would search anyway, recorded as such
    return out


def _apply_search(index, kind: str, params: dict[str, Any]) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivf":
        index.nprobe = params["nprobe"]


def _build(kind: str, params: dict[str, Any], x: np.ndarray):
    """A FAISS inner-product index of kind `kind` over float32 rows `x` (search parameter applied)."""
    faiss = _faiss()
    d = x.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        # (FAISS's Python constructor keeps a reference to `quantizer` for the index's lifetime)
        index.cp.seed = RECALL_SEED  # k-means: deterministic
        # k-means on 64 points per list (FAISS samples them; its default 256 makes training the build's cost at
        # 459k x 384: measured) is enough for list boundaries; FAISS warns below 39
        index.cp.max_points_per_centroid = 64
        # nlist is already at most E / 39; a small graph (nlist 1: searched exactly) would only make FAISS print
        # "please provide at least 39 training points" on every build
        index.cp.min_points_per_centroid = min(39, max(1, x.shape[0] // params["nlist"]))
        index.train(x)
    else:
        index = faiss.IndexFlatIP(d)
    index.add(x)
    _apply_search(index, kind, params)
    return index


def _checked(vectors: np.ndarray) -> np.ndarray:
    """`vectors` as C-contiguous float32 (what FAISS reads), refused unless (E, D) float16/32 unit rows."""
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1 or v.dtype not in (np.float16, np.float32):
        raise ValueError(f"entity vectors must be a non-empty (E, D) float16 or float32 array, got {v.shape} {v.dtype}")
    x = np.ascontiguousarray(v, dtype=np.float32)
    norms = np.einsum("ij,ij->i", x, x)
    tol = 2e-3 if v.dtype == np.float16 else 1e-4
    bad = np.flatnonzero(~(np.abs(norms - 1) <= tol))
    if len(bad):
        raise ValueError(f"entity vectors must be L2-normalised (inner product = cosine): row {bad[0]} has norm "
                         f"{float(np.sqrt(max(norms[bad[0]], 0))):.4g} ({len(bad):,} rows off)")
    return x


def _recall_queries(x: np.ndarray, queries: np.ndarray | None) -> tuple[np.ndarray, str]:
    if queries is None:
        m = min(RECALL_QUERIES, len(x))
        pick = np.sort(np.random.default_rng(RECALL_SEED).choice(len(x), m, replace=False))
        return x[pick], f"{m} entity vectors sampled with seed {RECALL_SEED} as queries"
    q = np.ascontiguousarray(np.atleast_2d(queries)[:RECALL_QUERIES], dtype=np.float32)
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"recall queries have dimension {q.shape[1]}, the entity vectors {x.shape[1]}")
    return q, f"{len(q)} given queries"


def _write_index(index, path: Path) -> None:
    """faiss.write_index to a temporary sibling, flushed, then renamed over `path` (atomic)."""
    faiss = _faiss()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        os.close(fd)
        faiss.write_index(index, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _same_build(kind: str, recorded: Any, want: dict[str, Any]) -> bool:
    """Whether an index recorded with `recorded` params has the graph/lists `want` asks for (all but the
    search parameter equal)."""
    if not isinstance(recorded, dict) or set(recorded) != set(want):
        return False
    return all(recorded[k] == want[k] for k in want if k != SEARCH_PARAM[kind])


def _recall(index, x: np.ndarray, q: np.ndarray) -> float:
    """recall@10 of `index` against exact search over `x` for queries `q` (k = E where fewer than 10)."""
    k = min(RECALL_K, len(x))
    _, exact_ids = exact_search(x, q, k)
    _, approx_ids = index.search(q, k)
    return recall_at_k(approx_ids, exact_ids, k)


# ---- the index -----------------------------------------------------------------------------------------------
class EntityIndex:
    """A FAISS index over entity vectors and its record (`meta`: the json's fields). Build or reuse it with
    `load_or_build`; search with `search`."""

    def __init__(self, index, meta: dict[str, Any], path: Path | None):
        self.index = index
        self.meta = meta
        self.path = path  # the .faiss file, None where the index is kept in memory only

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def search_param(self) -> str | None:
        """The name of the kind's search parameter (efSearch, nprobe; None for flat)."""
        return SEARCH_PARAM[self.kind]

    def set_search(self, value: int) -> None:
        """Change the search parameter of this loaded index (not its files: the recorded recall is for the
        parameter it was built with)."""
        if self.search_param is None:
            raise ValueError(f"a {self.kind} index has no search parameter")
        _apply_search(self.index, self.kind, {self.search_param: int(value)})

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k by inner product: (scores (B, k) float32, ids (B, k) int64), best first; an id of
        -1 marks a missing result (an IVF search whose probed lists hold fewer than k vectors)."""
        q = np.ascontiguousarray(np.atleast_2d(q), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.meta["dim"]:
            raise ValueError(f"queries must be (B, {self.meta['dim']}), got {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.kind == "ivf":
            # FAISS splits a search across threads by query (parallel_mode 0): one query would run on one thread.
            # A query alone is split by probed list instead (1): measured at 459k x 384, nprobe 512, 2 threads,
            # quiet machine: 7.9 -> 4.2 ms at batch 1 (under load the split costs more than it gains)
            self.index.parallel_mode = 1 if q.shape[0] == 1 else 0
        scores, ids = self.index.search(q, int(k))
        return scores, ids.astype(np.int64, copy=False)

    @classmethod
    def _researched(cls, index, meta: dict[str, Any], want: dict[str, Any], v: np.ndarray,
                    queries: np.ndarray | None, name: str, index_path: Path, meta_path: Path) -> EntityIndex:
        """A cached index asked for with another search parameter: searching changes, the built index does not,
        so it is reused and only its recall is measured again (seconds; a build takes minutes at scale) and its
        record rewritten (in memory only where the directory cannot be written)."""
        x = _checked(v)
        q, q_what = _recall_queries(x, queries)
        recall = _recall(index, x, q)
        param = SEARCH_PARAM[meta["kind"]]
        print(f"[index] {name}: {meta['kind']} over {meta['n']:,} entities reused with {param}={want[param]} "
              f"(recorded {meta['params'][param]}); recall@10 = {recall:.3f} on {len(q):,} queries", flush=True)
        meta = {**meta, "params": want, "recall@10": recall, "recall_queries": q_what}
        try:
            write_json_atomic(meta_path, meta)
        except OSError:
            pass  # the record on disk stays true for the parameter it names
        return cls(index, meta, index_path)

    @classmethod
    def load_or_build(cls, directory: Path, vectors: np.ndarray, vectors_sha256: str, *,
                      queries: np.ndarray | None = None, name: str = "entity_index", kind: str = DEFAULT_KIND,
                      threads: int | None = None, **params: Any) -> EntityIndex:
        """The index of `vectors` (whose content digest is `vectors_sha256`) in `directory`: reused where its
        json matches digest, kind and params; else built, its recall@10 measured over `queries` (None: 1,000
        entity vectors sampled with a fixed seed), and written atomically (kept in memory where `directory`
        cannot be written). `threads`: FAISS threads (None: FAISS's default)."""
        faiss = _faiss()
        if not _NAME.fullmatch(name):
            raise ValueError(f"index name {name!r} must be a plain file name (letters, digits, _ . -)")
        set_threads(threads)
        directory = Path(directory).absolute()
        index_path = confined(directory, directory / f"{name}.faiss", "the entity index")
        meta_path = confined(directory, directory / f"{name}.json", "the entity index record")
        v = np.asarray(vectors)
        n, dim = (v.shape[0], v.shape[1]) if v.ndim == 2 else (0, 0)
        want = resolve_params(kind, max(n, 1), params)

        why = None  # why an existing index is not reused (None: nothing was there)
        found = None  # (index, record) of a reusable cached index
        if meta_path.exists() or index_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    raise ValueError("not an entity-index record")
                if meta.get("vectors_sha256") != vectors_sha256:
                    why = "stale: built for other entity vectors"
                elif meta.get("kind") != kind or not _same_build(kind, meta.get("params"), want):
                    why = f"built as {meta.get('kind')} {meta.get('params')}, asked for {kind} {want}"
                elif not index_path.exists():
                    why = f"incomplete: {index_path.name} is missing"
                else:
                    try:
                        index = faiss.read_index(str(index_path))
                    except RuntimeError:  # FAISS's message is a C++ trace; what matters is that it cannot read it
                        raise ValueError(f"FAISS cannot read {index_path.name}") from None
                    if index.ntotal != meta["n"] or index.d != meta["dim"] or (n, dim) != (meta["n"], meta["dim"]):
                        raise ValueError(f"holds {index.ntotal} x {index.d}, its record says {meta['n']} x {meta['dim']}")
                    _apply_search(index, kind, want)
                    found = (index, meta)
            except FileNotFoundError as err:
                why = f"incomplete: {Path(err.filename or '').name or 'a file'} is missing"
            except Exception as err:  # unreadable json, a truncated or foreign .faiss: FAISS raises RuntimeError
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                why = f"damaged ({first})"
        if found is not None:
            index, meta = found
            if meta["params"] != want:  # only the search parameter differs: the same index, recall re-measured
                return cls._researched(index, meta, want, v, queries, name, index_path, meta_path)
            return cls(index, meta, index_path)

        x = _checked(v)
        q, q_what = _recall_queries(x, queries)
        t0 = time.perf_counter()
        index = _build(kind, want, x)
        build_s = time.perf_counter() - t0
        recall = _recall(index, x, q)
        meta = {"format": FORMAT, "vectors_sha256": vectors_sha256, "kind": kind, "params": want, "n": n, "dim": dim,
                "recall@10": recall, "recall_queries": q_what, "build_s": round(build_s, 3),
                "threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__}
        print(f"[index] {name}: {kind} over {n:,} entities built in {build_s:.1f} s; recall@10 = {recall:.3f} "
              f"on {len(q):,} queries", flush=True)
        path: Path | None = index_path
        try:
            directory.mkdir(parents=True, exist_ok=True)
            meta_path.unlink(missing_ok=True)  # first: no json ever vouches for a half-replaced .faiss
            _write_index(index, index_path)
            write_json_atomic(meta_path, meta)
        except OSError as err:
            path = None
            reason = f"{err.strerror or type(err).__name__}"
            why = (f"{why}; rebuilt" if why else "built") + f", kept in memory only: {directory} cannot be written ({reason})"
        else:
            why = f"{why}; rebuilt" if why else None
        if why:
            warnings.warn(f"{index_path}: {why}", DataWarning, stacklevel=2)
        return cls(index, meta, path)
