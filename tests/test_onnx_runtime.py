"""kgc_kd.serve.onnx_runtime: the ONNX towers against the torch bi-encoder they were exported from (the reference:
`BiEncoder.encode_query` / `encode_entity`), on batches of other sizes and lengths than the export's probe; int8
within a measured tolerance; a shared and a vocabulary-pruned export; the refusals (unknown variant, no towers,
another model's towers). On all-MiniLM-L6-v2 (slow): fp32 ranks every UMLS test query exactly as torch does, and
int8 moves MRR by a measured amount.

Tolerances measured here (tiny BERT, seeds 0/1): fp32 max |diff| 6e-8; int8 per-vector cosine >= 0.9999 (max
|diff| 4e-3). MiniLM over UMLS (untrained, mean pooling): fp32 max |diff| 2.5e-7, ranks identical; int8 cosine
>= 0.977 (median 0.992), |delta MRR| 0.0005."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import make_tokenizer, minilm_tokenizer
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.serve.digest import model_digest
from kgc_kd.serve.onnx_export import EXPORT_PROBE, MANIFEST, ONNX_DIR, export_onnx
from kgc_kd.serve.onnx_runtime import OnnxBiEncoder, StaleOnnx
from test_onnx_export import PRUNE_TEXTS, copy_export, exported, plain, shared  # noqa: F401 (fixtures)

pytest.importorskip("onnxruntime", reason="the serve extra is not installed: pip install 'kgc-kd[serve]'")
pytest.importorskip("onnxscript", reason="the serve extra is not installed: pip install 'kgc-kd[serve]'")

INT8_MIN_COSINE = 0.999  # tiny BERT: measured >= 0.9999 per vector

QUERY_BATCHES = (  # (head text, relation text) pairs: batch sizes and lengths other than the probe's 2 x 8
    [("red green blue thing", "is a")],
    [("small old entity", "inverse relation of"), ("x", "is"), ("bright warm soft hard cold number 3 4", "plus"),
     ("a", "of the"), ("new fast slow", "to")],
)
ENTITY_BATCHES = (
    ["red", "green blue thing of the small and the large and the old", "slow", "a 1 2 3"],
    ["dark", "red old thing", "a", "b c", "number 5 6 7 8 9", "soft", "cold warm"],
)


def batch(tok, texts, pairs=None) -> dict[str, torch.Tensor]:
    b = tok(texts, pairs, padding=True, return_tensors="pt", return_token_type_ids=True)
    return {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def query_batches(tok):
    return [batch(tok, [h for h, _ in rows], [r for _, r in rows]) for rows in QUERY_BATCHES]


def entity_batches(tok):
    return [batch(tok, texts) for texts in ENTITY_BATCHES]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    return exported(tmp_path_factory, "pruned")


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_fp32_equals_torch_on_other_shapes_and_int8_is_close(plain):
    export, net, _ = plain
    tok = make_tokenizer()
    fp32, int8 = OnnxBiEncoder.open(export), OnnxBiEncoder.open(export, "onnx-int8", threads=1)
    shapes = set()
    worst = 1.0
    for side, batches in (("query", query_batches(tok)), ("entity", entity_batches(tok))):
        for inputs in batches:
            assert (inputs["attention_mask"] == 0).any() or len(inputs["input_ids"]) == 1  # padded rows
            shapes.add(tuple(inputs["input_ids"].shape))
            with torch.no_grad():
                ref = getattr(net, f"encode_{side}")(inputs)
            got = getattr(fp32, f"encode_{side}")(inputs)
            assert got.dtype == torch.float32 and got.shape == ref.shape == (len(inputs["input_ids"]), 32)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
            low = getattr(int8, f"encode_{side}")(inputs)
            assert not torch.equal(low, got)  # really the int8 graph
            worst = min(worst, float(cosines(low, ref).min()))
    assert worst >= INT8_MIN_COSINE, worst
    assert EXPORT_PROBE not in shapes and len({s[0] for s in shapes}) == 4 and len({s[1] for s in shapes}) >= 3
    # the query and entity towers are different graphs, each on its own side
    q = query_batches(tok)[1]
    assert not torch.allclose(fp32.encode_query(q), fp32.encode_entity(q), atol=1e-3)
    # token types absent: zeros, as the torch encoder assumes
    e = entity_batches(tok)[0]
    torch.testing.assert_close(fp32.encode_entity({k: e[k] for k in ("input_ids", "attention_mask")}),
                               fp32.encode_entity(e), atol=0, rtol=0)
    print(f"tiny BERT int8: worst per-vector cosine {worst:.6f}")


def test_files_bytes_dim_and_the_torch_like_methods(plain):
    export, _, _ = plain
    for variant, suffix in (("onnx-fp32", ".onnx"), ("onnx-int8", ".int8.onnx")):
        served = OnnxBiEncoder.open(export, variant)
        assert served.files == [export / ONNX_DIR / f"query{suffix}", export / ONNX_DIR / f"entity{suffix}"]
        manifest = json.loads((export / ONNX_DIR / MANIFEST).read_text())
        assert served.bytes_on_disk == sum(manifest["files"][f.name]["bytes"] for f in served.files)
        assert served.dim == 32
        assert served.eval() is served and served.to("cpu") is served and served.to(torch.device("cpu")) is served
        with pytest.raises(ValueError, match=f"{variant} runs on the CPU .*not on cuda"):
            served.to("cuda")


def test_a_shared_export_serves_one_graph_on_both_sides(shared):
    export, net, _ = shared
    tok = make_tokenizer()
    served = OnnxBiEncoder.open(export)
    assert served.files == [export / ONNX_DIR / "query.onnx"]
    assert served.bytes_on_disk == (export / ONNX_DIR / "query.onnx").stat().st_size
    for inputs in query_batches(tok):
        with torch.no_grad():
            ref = net.encode_entity(inputs)
        torch.testing.assert_close(served.encode_entity(inputs), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(served.encode_query(inputs), ref, atol=1e-5, rtol=0)
    assert len(OnnxBiEncoder.open(export, "onnx-int8").files) == 1


def test_a_pruned_export_reads_its_own_tokenizers_ids(pruned):
    """The towers read ids of the export's pruned tokenizer and give the vectors of the unpruned bi-encoder on
    the source tokenizer's ids (the same word pieces), as `BiEncoder.from_pretrained(export)` does."""
    from transformers import AutoTokenizer

    export, unpruned, _ = pruned
    source, own = make_tokenizer(), AutoTokenizer.from_pretrained(export / "query", local_files_only=True)
    assert len(own) < len(source)
    served = OnnxBiEncoder.open(export)
    loaded = BiEncoder.from_pretrained(export)
    texts = PRUNE_TEXTS[:3]
    pairs = PRUNE_TEXTS[2:5]
    for side, args in (("query", (texts, pairs)), ("entity", (PRUNE_TEXTS,))):
        mine, theirs = batch(own, *args), batch(source, *args)
        assert not torch.equal(mine["input_ids"], theirs["input_ids"])  # other ids for the same word pieces
        with torch.no_grad():
            ref = getattr(unpruned, f"encode_{side}")(theirs)
            torch.testing.assert_close(getattr(loaded, f"encode_{side}")(mine), ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(getattr(served, f"encode_{side}")(mine), ref, atol=1e-5, rtol=0)
    # exported with --no-int8: the int8 variant is refused, naming the fix
    with pytest.raises(StaleOnnx, match=r"has no query\.int8\.onnx \(exported with --no-int8\); export again: "
                                        r"python -m kgc_kd\.serve\.onnx_export "):
        OnnxBiEncoder.open(export, "onnx-int8")


def test_refusals(plain, shared, tmp_path):
    export = plain[0]
    with pytest.raises(ValueError, match=r"^ONNX variant 'fp32'; expected one of onnx-fp32, onnx-int8$"):
        OnnxBiEncoder.open(export, "fp32")
    bare = copy_export(export, tmp_path / "bare", with_onnx=False)
    with pytest.raises(FileNotFoundError) as exc:
        OnnxBiEncoder.open(bare)
    assert str(exc.value) == (f"{bare / ONNX_DIR / MANIFEST} does not exist: export the ONNX towers first with "
                              f"`python -m kgc_kd.serve.onnx_export {bare}` (or kgc_kd.serve.onnx_export.export_onnx)")
    # another model's towers (the plain export's, copied into a copy of the shared export)
    other = copy_export(shared[0], tmp_path / "other", with_onnx=False)
    shutil.copytree(export / ONNX_DIR, other / ONNX_DIR)
    theirs, mine = model_digest(export), model_digest(other)
    for variant in ("onnx-fp32", "onnx-int8"):
        with pytest.raises(StaleOnnx) as exc:
            OnnxBiEncoder.open(other, variant)
        assert isinstance(exc.value, ValueError) and "\n" not in str(exc.value)
        assert str(exc.value) == (f"{other}/onnx was exported from another model (sha256 {theirs[:12]}…, this "
                                  f"export's {mine[:12]}…); export again: python -m kgc_kd.serve.onnx_export {other}")


# ---- the default PLM on the bundled UMLS -----------------------------------------------------------------------
@pytest.mark.slow  # ~1-2 min on 2 cores: a MiniLM export and UMLS encoded three times
def test_minilm_onnx_ranks_umls_as_torch_and_int8_keeps_mrr(tmp_path):
    import time

    from kgc_kd.config import ModelCfg
    from kgc_kd.data.batching import EntityCollator, QueryCollator
    from kgc_kd.data.sources import load_kg
    from kgc_kd.data.tokens import TokenCache
    from kgc_kd.eval import evaluate_queries
    from kgc_kd.models.biencoder import build_biencoder

    tok = minilm_tokenizer()  # skips where the packaged PLM is not installed
    net = build_biencoder({"plm": ModelCfg().plm, "shared_encoder": True}).eval()  # loaded as a run loads it
    export = tmp_path / "export"
    net.save_pretrained(export, tok)
    start = time.perf_counter()
    export_onnx(export)
    seconds = time.perf_counter() - start

    kg = load_kg("umls")
    tokens = TokenCache.build(kg, tok, 50, warn=False)
    entities = EntityCollator(tokens)(list(torch.arange(kg.num_entities)))["entity"]
    queries = kg.with_inverse(kg.test)
    hr = QueryCollator(tokens)(list(queries))["hr"]

    def encode(fn, inputs, size=256):
        with torch.no_grad():
            return torch.cat([fn({k: v[i:i + size] for k, v in inputs.items()})
                              for i in range(0, len(inputs["input_ids"]), size)])

    results = {}
    for name, towers in (("torch", net), ("onnx-fp32", OnnxBiEncoder.open(export)),
                         ("onnx-int8", OnnxBiEncoder.open(export, "onnx-int8"))):
        e, q = encode(towers.encode_entity, entities), encode(towers.encode_query, hr)
        metrics, out = evaluate_queries(q, e, queries, kg.num_relations, kg.filter_index)
        results[name] = (e, q, metrics, out.ranks)
    e0, q0, m0, r0 = results["torch"]
    e1, q1, m1, r1 = results["onnx-fp32"]
    torch.testing.assert_close(e1, e0, atol=1e-4, rtol=0)
    torch.testing.assert_close(q1, q0, atol=1e-4, rtol=0)
    for kind in ("optimistic", "pessimistic", "realistic"):
        assert torch.equal(getattr(r1, kind), getattr(r0, kind)), kind
    assert m1 == m0
    e8, q8, m8, _ = results["onnx-int8"]
    cos = torch.cat([cosines(e8, e0), cosines(q8, q0)])
    assert float(cos.min()) >= 0.95 and float(cos.median()) >= 0.99
    assert abs(m8["mrr"] - m0["mrr"]) <= 0.01 and abs(m8["hits@10"] - m0["hits@10"]) <= 0.03
    print(f"MiniLM shared export (fp32 + int8): {seconds:.1f} s; fp32 max |diff| "
          f"{float(max((e1 - e0).abs().max(), (q1 - q0).abs().max())):.2e}; int8 cosine min {float(cos.min()):.4f} "
          f"median {float(cos.median()):.4f}; MRR torch {m0['mrr']:.4f} int8 {m8['mrr']:.4f} "
          f"(delta {m8['mrr'] - m0['mrr']:+.4f}), hits@10 delta {m8['hits@10'] - m0['hits@10']:+.4f}")
