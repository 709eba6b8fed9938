"""kgc_kd.serve.index: exact reference search, recall@k, and the cached FAISS entity index (build, reuse, stale,
damaged, read-only directory, fp16 input). Expected values are computed independently (a Python loop, sets)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from kgc_kd.data.io import DataWarning  # noqa: E402
from kgc_kd.serve import index as index_mod  # noqa: E402
from kgc_kd.serve.index import EntityIndex, exact_search, recall_at_k  # noqa: E402

N, D = 2_000, 32


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    """Clustered unit vectors (like an encoder's: 40 centres plus noise), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit_rows(N, D, 0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return unit_rows(200, D, 1)


def test_recall_at_k_by_hand():
    approx = np.array([[1, 2, 3], [4, 5, -1], [7, 8, 9]])
    exact = np.array([[3, 2, 1], [4, 6, 5], [0, 10, 11]])
    # row 0: 3 of 3; row 1: {4, 5} of 3 (the -1 never counts); row 2: 0 of 3
    assert recall_at_k(approx, exact, 3) == pytest.approx((3 / 3 + 2 / 3 + 0) / 3)
    # k=2: row 0 {1,2} vs {3,2} -> 1; row 1 {4,5} vs {4,6} -> 1; row 2 -> 0
    assert recall_at_k(approx, exact, 2) == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)


def test_exact_search_matches_a_loop():
    rng = np.random.default_rng(3)
    v = rng.standard_normal((300, 8)).astype(np.float32)
    q = rng.standard_normal((70, 8)).astype(np.float32)  # 70 > the 64-query chunk: two chunks
    scores, ids = exact_search(v, q, 5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (70, 5)
    for i in range(len(q)):
        dots = [(float(np.dot(q[i].astype(np.float64), v[j].astype(np.float64))), j) for j in range(len(v))]
        best = sorted(dots, key=lambda t: (-t[0], t[1]))[:5]
        assert ids[i].tolist() == [j for _, j in best]
        np.testing.assert_allclose(scores[i], [s for s, _ in best], rtol=1e-5, atol=1e-5)
    # k = all: a full ordering, ties by id
    _, all_ids = exact_search(np.ones((4, 2), np.float32), np.ones((1, 2), np.float32), 4)
    assert all_ids.tolist() == [[0, 1, 2, 3]]


def test_build_recall_and_search(tmp_path, vectors, queries, capsys):
    idx = EntityIndex.load_or_build(tmp_path, vectors, "sha-a", queries=queries, kind="hnsw", M=16,
                                    efConstruction=64, efSearch=64)
    out = capsys.readouterr().out
    assert f"[index] entity_index: hnsw over {N:,} entities built in" in out and "on 200 queries" in out
    meta = json.loads((tmp_path / "entity_index.json").read_text())
    assert meta == idx.meta
    assert {k: meta[k] for k in ("format", "vectors_sha256", "kind", "params", "n", "dim")} == {
        "format": index_mod.FORMAT, "vectors_sha256": "sha-a", "kind": "hnsw",
        "params": {"M": 16, "efConstruction": 64, "efSearch": 64}, "n": N, "dim": D}
    assert meta["recall@10"] >= 0.95 and meta["recall_queries"] == "200 given queries"
    # the recorded recall is recomputed independently: sets of ids from a plain loop
    _, ids = idx.search(queries, 10)
    assert ids.dtype == np.int64 and ids.shape == (200, 10)
    sims = queries.astype(np.float64) @ vectors.astype(np.float64).T
    exact_sets = [set(np.argsort(-row, kind="stable")[:10].tolist()) for row in sims]
    hits = [len(set(row.tolist()) & e) for row, e in zip(ids, exact_sets)]
    assert np.mean(hits) / 10 == pytest.approx(meta["recall@10"], abs=1e-9)
    assert sum(h == 10 for h in hits) >= 0.7 * len(hits)  # most queries: exactly the exact top-10
    # scores are the inner products of the ids returned, best first
    scores, ids = idx.search(queries[:5], 3)
    np.testing.assert_allclose(scores, np.take_along_axis(sims[:5], ids, 1), rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert not list(tmp_path.glob("*.tmp"))


def test_default_queries_are_a_fixed_sample(tmp_path, vectors):
    a = EntityIndex.load_or_build(tmp_path / "a", vectors, "sha-a", nprobe=8)  # the default kind: ivf
    b = EntityIndex.load_or_build(tmp_path / "b", vectors, "sha-a", nprobe=8)
    assert a.meta["kind"] == "ivf" and a.meta["recall_queries"] == "1000 entity vectors sampled with seed 0 as queries"
    assert a.meta["recall@10"] == b.meta["recall@10"] >= 0.95
    # nlist = min(4 sqrt(N), N // 39) = min(179, 51): FAISS's k-means wants >= 39 points per centroid
    assert a.meta["params"] == {"nlist": 51, "nprobe": 8}
    # the default nprobe (512) is capped at nlist: every list searched, so the search is exact
    c = EntityIndex.load_or_build(tmp_path / "c", vectors, "sha-a")
    assert c.meta["params"] == {"nlist": 51, "nprobe": 51} and c.meta["recall@10"] == 1.0


def test_second_load_reuses(tmp_path, vectors, monkeypatch):
    first = EntityIndex.load_or_build(tmp_path, vectors, "sha-a", kind="flat")
    assert first.meta["recall@10"] == 1.0

    def no_build(*a, **k):
        raise AssertionError("rebuilt although the cached index matches")

    monkeypatch.setattr(index_mod, "_build", no_build)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = EntityIndex.load_or_build(tmp_path, vectors, "sha-a", kind="flat")
    assert again.meta == first.meta and again.path == tmp_path / "entity_index.faiss"
    q = vectors[:7]
    assert (again.search(q, 10)[1] == exact_search(vectors, q, 10)[1]).all()


def test_stale_index_is_rebuilt_with_one_warning(tmp_path, vectors):
    EntityIndex.load_or_build(tmp_path, vectors, "sha-a", kind="hnsw", M=8, efConstruction=40, efSearch=40)
    other = unit_rows(500, D, 5)
    with pytest.warns(DataWarning) as record:
        idx = EntityIndex.load_or_build(tmp_path, other, "sha-b", kind="hnsw", M=8, efConstruction=40, efSearch=40)
    assert len(record) == 1
    msg = str(record[0].message)
    assert "entity_index.faiss" in msg and "stale" in msg and "\n" not in msg
    assert idx.meta["vectors_sha256"] == "sha-b" and idx.meta["n"] == 500
    assert json.loads((tmp_path / "entity_index.json").read_text())["vectors_sha256"] == "sha-b"
    # other build params: rebuilt too, said so
    with pytest.warns(DataWarning, match="asked for hnsw"):
        EntityIndex.load_or_build(tmp_path, other, "sha-b", kind="hnsw", M=8, efConstruction=48, efSearch=40)


def test_other_search_param_reuses_the_index(tmp_path, vectors, queries, monkeypatch, capsys):
    low = EntityIndex.load_or_build(tmp_path, vectors, "sha-a", queries=queries, kind="hnsw", M=8,
                                    efConstruction=40, efSearch=10)
    monkeypatch.setattr(index_mod, "_build", lambda *a, **k: pytest.fail("rebuilt for a search parameter"))
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        high = EntityIndex.load_or_build(tmp_path, vectors, "sha-a", queries=queries, kind="hnsw", M=8,
                                         efConstruction=40, efSearch=200)
    assert "reused with efSearch=200 (recorded 10)" in capsys.readouterr().out
    assert high.meta["params"]["efSearch"] == 200 and high.index.hnsw.efSearch == 200
    _, exact = exact_search(vectors, queries, 10)
    assert high.meta["recall@10"] == pytest.approx(recall_at_k(high.search(queries, 10)[1], exact, 10))
    assert high.meta["recall@10"] > low.meta["recall@10"]
    assert json.loads((tmp_path / "entity_index.json").read_text()) == high.meta


def test_damaged_index_is_rebuilt_with_a_warning(tmp_path, vectors):
    EntityIndex.load_or_build(tmp_path, vectors, "sha-a", kind="flat")
    path = tmp_path / "entity_index.faiss"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(DataWarning, match=r"damaged \(FAISS cannot read entity_index.faiss\); rebuilt$") as record:
        idx = EntityIndex.load_or_build(tmp_path, vectors, "sha-a", kind="flat")
    assert len(record) == 1 and idx.index.ntotal == N
    (tmp_path / "entity_index.json").write_text("{not json")
    with pytest.warns(DataWarning, match="damaged"):
        EntityIndex.load_or_build(tmp_path, vectors, "sha-a", kind="flat")
    (tmp_path / "entity_index.faiss").unlink()
    with pytest.warns(DataWarning, match="missing"):
        EntityIndex.load_or_build(tmp_path, vectors, "sha-a", kind="flat")
    assert EntityIndex.load_or_build(tmp_path, vectors, "sha-a", kind="flat").path is not None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_keeps_the_index_in_memory(tmp_path, vectors):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.warns(DataWarning, match="kept in memory"):
            idx = EntityIndex.load_or_build(ro, vectors, "sha-a", kind="flat")
        assert idx.path is None and list(ro.iterdir()) == []
        assert (idx.search(vectors[:3], 1)[1][:, 0] == [0, 1, 2]).all()
    finally:
        ro.chmod(0o755)


def test_unwritable_directory_keeps_the_index_in_memory(tmp_path, vectors, monkeypatch):
    """The same path where the test runs as root (chmod does not stop root): the write fails with EROFS."""
    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(index_mod, "_write_index", read_only)
    with pytest.warns(DataWarning, match="kept in memory only.*Read-only file system") as record:
        idx = EntityIndex.load_or_build(tmp_path, vectors, "sha-a", kind="flat")
    assert len(record) == 1 and idx.path is None
    assert not (tmp_path / "entity_index.json").exists()
    assert idx.search(vectors[:2], 1)[1][:, 0].tolist() == [0, 1]


def test_fp16_vectors(tmp_path, vectors, queries):
    half = vectors.astype(np.float16)
    idx = EntityIndex.load_or_build(tmp_path, half, "sha-h", queries=queries, kind="hnsw", M=16,
                                    efConstruction=64, efSearch=64)
    assert idx.meta["recall@10"] >= 0.95
    _, exact = exact_search(half, queries, 10)
    assert recall_at_k(idx.search(queries, 10)[1], exact, 10) == pytest.approx(idx.meta["recall@10"])


def test_refusals(tmp_path, vectors):
    with pytest.raises(ValueError, match="L2-normalised"):
        EntityIndex.load_or_build(tmp_path, vectors * 2, "x", kind="flat")
    with pytest.raises(ValueError, match="no parameter nprobe"):
        EntityIndex.load_or_build(tmp_path, vectors, "x", kind="hnsw", nprobe=4)
    with pytest.raises(ValueError, match="plain file name"):
        EntityIndex.load_or_build(tmp_path, vectors, "x", name="../escape")
    assert list(tmp_path.iterdir()) == []


def test_missing_faiss_is_one_line(monkeypatch, tmp_path, vectors):
    import builtins

    real = builtins.__import__

    def no_faiss(name, *a, **k):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError) as err:
        EntityIndex.load_or_build(tmp_path, vectors, "x")
    assert str(err.value) == "approximate search needs faiss: pip install 'kgc-kd[serve]'"
