"""`python -m kgc_kd.predict RUN_OR_EXPORT --head NAME --relation TEXT [--top-k 10] [--queries FILE]
[--backend torch|onnx-fp32|onnx-int8] [--index]`

Ranks every entity as the tail of (head, relation, ?) with an exported stage (or the last stage of a run
directory). Known answers from the KG's splits are marked.

Start-up reads what the export carries instead of recomputing it (docs/predict.md): the KG from its id arrays and
text files (`kgc_kd.data.kg_export`), the token table from `<export>/token-cache/`, memory-mapped
(`TokenCache.load_or_build`), and every entity's vector from `<export>/entity_vectors.npy` (float16,
memory-mapped, written by the export; `kgc_kd.serve.vectors`), so a start encodes only the queries. What an export
lacks is computed once and kept there: a token table (an export written before the token cache, or a pruned
stage, whose tokenizer has other ids), entity vectors (an export written before them; stale or damaged ones are
said in one line and replaced), ONNX towers (`--backend onnx-*`), an entity index (`--index`). A read-only
export is used as it is: what cannot be written is kept in memory.

Exact search (the default) converts the float16 vectors to one float32 matrix in memory (E x D x 4 bytes) and
scores every entity; `--index` searches an approximate index (`kgc_kd.serve.index.EntityIndex`) instead, whose
recall@10 against exact search is printed when it is built.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from kgc_kd.cli import EXIT_BAD_INPUT, EXIT_OK, console_script, exit_statuses, parser
from kgc_kd.data.batching import QueryCollator
from kgc_kd.data.io import DataWarning
from kgc_kd.data.kg_export import TOKEN_CACHE_DIR, load_kg_export
from kgc_kd.data.tokens import TokenCache
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.runtime.files import write_text_atomic
from kgc_kd.serve.locate import resolve_export
from kgc_kd.serve.vectors import (TORCH_ENCODER, encode_entities, npy_sha256, read_entity_vectors, vectors_digest,
                                  vectors_files, vectors_key, write_entity_vectors)


def token_cache_dir(export: Path) -> Path:
    """Where predict finds (or keeps) the export's token table: `<export>/token-cache` (a read-only export's
    table is mapped as it is; one without a table there is tokenised in memory, `TokenCache.load_or_build`)."""
    return export / TOKEN_CACHE_DIR


BACKENDS = ("torch", "onnx-fp32", "onnx-int8")  # --backend: what encodes queries (and, once, the entities)
RECALL_QUERIES = 1_000  # test queries (forward + inverse) an index measures its recall@10 on when it is built


def vectors_encoder(backend: str) -> str:
    """The `vectors_key` encoder of a backend: "fp32" for the torch towers, the variant's name for ONNX."""
    return TORCH_ENCODER if backend == "torch" else backend


def index_name(encoder: str) -> str:
    """The entity index's name beside the vectors: one per encoder, so switching backends rebuilds nothing."""
    return "entity_index" if encoder == TORCH_ENCODER else f"entity_index-{encoder}"


def index_is_current(export: Path, name: str, vectors_sha256: str) -> bool:
    """Whether `<export>/<name>.json` records an index of these vectors beside its .faiss file: then
    `EntityIndex.load_or_build` reuses it and the recall queries would not be read (were the .faiss damaged, the
    rebuild measures recall on sampled entity vectors instead, and its record says so)."""
    try:
        record = json.loads((export / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("vectors_sha256") == vectors_sha256
            and (export / f"{name}.faiss").is_file())


def load_towers(export: Path, backend: str, device: str):
    """The query and entity towers `backend` serves, in eval mode on `device`: the export's torch bi-encoder, or
    its ONNX variant (`serve.onnx_runtime.OnnxBiEncoder`, CPU only). An export without ONNX towers gets them once
    (`serve.onnx_export.export_onnx`; one line said here where there is no onnx/ at all, by export_onnx where
    there is one without its manifest); towers of another model or damaged ones (`StaleOnnx`: the export was
    rewritten since) are exported again (export_onnx says why in one line) and reopened."""
    if backend == "torch":
        return BiEncoder.from_pretrained(export).to(device).eval()
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    from kgc_kd.serve.onnx_export import MANIFEST, ONNX_DIR, export_onnx
    from kgc_kd.serve.onnx_runtime import OnnxBiEncoder, StaleOnnx

    onnx_dir = export / ONNX_DIR
    if not (onnx_dir / MANIFEST).is_file():
        if not onnx_dir.exists():
            print(f"{export} has no ONNX towers; exporting them once into {onnx_dir}", file=sys.stderr, flush=True)
        export_onnx(export)
    try:
        towers = OnnxBiEncoder.open(export, backend)
    except StaleOnnx:
        export_onnx(export)  # rebuilds what is stale, saying why in one line
        towers = OnnxBiEncoder.open(export, backend)
    return towers.to(device).eval()


def entity_dim(export: Path) -> int:
    """The width of the export's entity vectors: its entity encoder's hidden size (pooling keeps it)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(export / "entity", local_files_only=True).hidden_size)


class Predictor:
    """An export served: its KG, token table, towers (`backend`) and entity vectors, searched exactly (float32)
    or, with `index`, through an approximate `serve.index.EntityIndex` built beside the vectors."""

    def __init__(self, export: Path, device: str = "cpu", batch_size: int = 256, backend: str = "torch",
                 index: bool = False):
        from transformers import AutoTokenizer

        self.export, self.backend, self.encoder = export, backend, vectors_encoder(backend)
        self.kg, meta = load_kg_export(export)
        self.tokenizer = AutoTokenizer.from_pretrained(export / "query", local_files_only=True)
        # truncation was reported when the stage was trained: not again on every prediction
        self.tokens = TokenCache.load_or_build(self.kg, self.tokenizer, int(meta.get("max_length", 50)),
                                               cache_dir=token_cache_dir(export), warn=False,
                                               link_graph=bool(meta.get("link_graph", False)))
        self.device, self.batch_size = torch.device(device), batch_size
        self.net = load_towers(export, backend, device)
        self.vectors, self.vectors_sha256 = self._entity_vectors()
        self.index = None
        self.entity_vecs: torch.Tensor | None = None  # exact search: the vectors in float32 on the device
        if index:
            from kgc_kd.serve.index import EntityIndex

            name = index_name(self.encoder)
            # the test queries are encoded only where the index will be built (they measure its recall)
            queries = None if index_is_current(export, name, self.vectors_sha256) else self._recall_queries()
            self.index = EntityIndex.load_or_build(export, self.vectors, self.vectors_sha256, queries=queries,
                                                   name=name)
        else:
            self.entity_vecs = torch.from_numpy(np.asarray(self.vectors, dtype=np.float32)).to(self.device)
        self.known = self.kg.filter_index

    def _move(self, inputs: dict) -> dict:
        return {k: v.to(self.device) for k, v in inputs.items()}

    def _entity_vectors(self) -> tuple[np.ndarray, str]:
        """Every entity's vector, float16 (E, D), and the SHA-256 of its .npy form: memory-mapped from the
        export's file for this export and encoder where it is valid (`serve.vectors.read_entity_vectors`: key,
        shape, dtype and bytes checked), else encoded once with the backend's entity tower and written there (an
        export without vectors is said in one line; stale or damaged ones were said by the read). A read-only
        export keeps them in memory. Fresh vectors are used as read back (float16), so every start answers
        alike."""
        key = vectors_key(self.export, self.tokens.max_length, self.tokens.link is not None, self.encoder)
        shape = (self.kg.num_entities, entity_dim(self.export))
        found = read_entity_vectors(self.export, key, shape)
        if found is not None:
            return found, vectors_digest(self.export, self.encoder)
        npy, meta = vectors_files(self.export, self.encoder)
        if not (npy.exists() or meta.exists()):  # stale or damaged files were named by read_entity_vectors
            which = "entity vectors" if self.encoder == TORCH_ENCODER else f"{self.encoder} entity vectors"
            where = npy if os.access(self.export, os.W_OK) else f"memory ({self.export} is read-only)"
            warnings.warn(f"{self.export} has no {which}; encoding {self.kg.num_entities:,} entities once, kept "
                          f"in {where}", DataWarning, stacklevel=3)
        vectors = encode_entities(self.net.encode_entity, self.tokens, self.kg.num_entities, self.batch_size,
                                  self.device)
        if write_entity_vectors(self.export, key, vectors):
            read = read_entity_vectors(self.export, key, shape)
            if read is not None:
                return read, vectors_digest(self.export, self.encoder)
        kept = vectors.numpy().astype(np.float16)
        return kept, npy_sha256(kept)

    @torch.no_grad()
    def encode_queries(self, rows: torch.Tensor) -> torch.Tensor:
        """The query vectors (float32, on the device) of (h, r, t) `rows` (r in [0, 2R): inverse relations too)."""
        collate = QueryCollator(self.tokens)
        out = [self.net.encode_query(self._move(collate(list(rows[i:i + self.batch_size]))["hr"])).float()
               for i in range(0, len(rows), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.vectors.shape[1], device=self.device)

    def _recall_queries(self) -> np.ndarray:
        """Query vectors an index measures its recall@10 on: up to `RECALL_QUERIES` test queries of the export's
        KG (forward and inverse, `KG.with_inverse`; a fixed sample where there are more), encoded by this
        backend, so the recall printed is the one these answers get."""
        rows = self.kg.with_inverse(self.kg.test)
        if len(rows) > RECALL_QUERIES:
            pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:RECALL_QUERIES]
            rows = rows[pick.sort().values]
        return self.encode_queries(rows).cpu().numpy().astype(np.float32, copy=False)

    @torch.no_grad()
    def rank(self, head: str, relation: str, top_k: int = 10) -> dict:
        h, r = self.kg.entity_index(head), self.kg.relation_index(relation)
        q = self.encode_queries(torch.tensor([[h, r, 0]]))
        k = min(top_k, self.kg.num_entities)
        if self.index is not None:
            scores, ids = self.index.search(q.cpu().numpy().astype(np.float32, copy=False), k)
            top = [(int(e), float(s)) for e, s in zip(ids[0], scores[0]) if e >= 0]  # -1: fewer than k found
        else:
            found = (q @ self.entity_vecs.t())[0].cpu().topk(k)
            top = list(zip(found.indices.tolist(), found.values.tolist()))
        known = set(self.known.get((h, r), torch.empty(0)).tolist())
        preds = [{"rank": i + 1, "id": self.kg.entity_ids[e], "name": self.kg.entity_names[e],
                  "score": round(float(s), 5), "known": e in known} for i, (e, s) in enumerate(top)]
        return {"head": self.kg.entity_ids[h], "relation": self.kg.relation_text(r), "predictions": preds}


def _print(result: dict) -> None:
    print(f"({result['head']}, {result['relation']}, ?)")
    for p in result["predictions"]:
        mark = "  [known]" if p["known"] else ""
        print(f"{p['rank']:>4}  {p['score']:.4f}  {p['name']} ({p['id']}){mark}")


EXAMPLES = (
    'python -m kgc_kd.predict runs/<name> --head virus --relation causes --top-k 10   # the last stage of a run',
    'python -m kgc_kd.predict runs/<name>/stages/pmd2/export --head virus --relation "inverse causes"',
    "python -m kgc_kd.predict runs/<name> --stage teacher --queries queries.tsv --output out.jsonl",
    "python -m kgc_kd.predict runs/<name> --head virus --relation causes --backend onnx-int8 --index",
)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = parser("python -m kgc_kd.predict",
                "Rank every entity as the tail of (head, relation, ?) with an exported stage, or with the last "
                "(or --stage) stage of a run directory; answers known from the KG's splits are marked.",
                items=None, statuses=(EXIT_OK, EXIT_BAD_INPUT), examples=EXAMPLES,
                notes=("No configuration items: the export's own files (kg.json, biencoder.json) configure it.",
                       "Start-up maps the export's token table (token-cache/) and entity vectors "
                       "(entity_vectors.npy); an export without them is tokenised or encoded once and they are "
                       "kept there."),
                docs=("docs/predict.md",))
    ap.add_argument("path", metavar="RUN_OR_EXPORT",
                    help="an exported stage directory, or a run directory (uses its last stage)")
    ap.add_argument("--stage", help="stage name inside a run directory")
    ap.add_argument("--head", help="head entity id or name")
    ap.add_argument("--relation", help="relation id or text ('inverse <text>' predicts heads)")
    ap.add_argument("--queries", help="file of head<TAB>relation lines; writes JSON lines to --output")
    ap.add_argument("--output", help="where --queries results go (default: stdout)")
    ap.add_argument("--top-k", type=int, default=10, help="how many predictions per query (default 10)")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("--backend", choices=BACKENDS, default="torch",
                    help="what encodes the queries (and, once, the entities): the export's torch towers (default) "
                         "or its ONNX towers in fp32 or int8, exported once into <export>/onnx/")
    ap.add_argument("--index", action="store_true",
                    help="search an approximate entity index, built once beside the vectors (its recall@10 "
                         "against exact search printed then), instead of scoring every entity")
    args = ap.parse_args(argv)
    if not args.queries and not (args.head and args.relation):
        ap.error("give --head and --relation, or --queries FILE")
    with exit_statuses(KeyError, ValueError, PermissionError):  # a read-only export asked for ONNX
        pred = Predictor(resolve_export(args.path, args.stage), device=args.device, backend=args.backend,
                         index=args.index)
        if args.queries:
            results = []
            for lineno, line in enumerate(Path(args.queries).read_text().split("\n"), 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\r").split("\t")
                if len(parts) != 2:
                    raise ValueError(f"{args.queries}:{lineno}: expected head<TAB>relation, got {line!r}")
                results.append(pred.rank(parts[0], parts[1], args.top_k))
            text = "\n".join(json.dumps(r) for r in results) + "\n"
            if args.output:
                write_text_atomic(Path(args.output), text)
            else:
                sys.stdout.write(text)
            return results
        result = pred.rank(args.head, args.relation, args.top_k)
        _print(result)
        return [result]


script = console_script(main)

if __name__ == "__main__":
    main()
