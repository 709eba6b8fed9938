"""`python -m kgc_kd.predict RUN_OR_EXPORT --head NAME --relation TEXT [--top-k 10] [--queries FILE]`

Ranks every entity as the tail of (head, relation, ?) with an exported stage (or the last stage of a
run directory). Known answers from the KG's splits are marked.

Start-up reads what the export carries instead of recomputing it (`kgc_kd.data.kg_export`): the KG from its
id arrays and text files, and the token table from `<export>/token-cache/`, memory-mapped
(`TokenCache.load_or_build`), so no entity text is tokenised. An export without one (written before the
token cache, or a pruned stage, whose tokenizer has other ids) is tokenised once and the table written
there, so the next start maps it. Entity vectors are computed once and cached next to the export too, so
later starts and queries only encode the query: keyed by the content of the export's model and KG files, loaded
weights-only and checked (key, shape, dtype) on every read, rebuilt with one warning where damaged
(docs/predict.md#the-entity-vector-cache). A read-only export is used as it is: what cannot be written is kept
in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from kgc_kd.cli import EXIT_BAD_INPUT, EXIT_OK, console_script, exit_statuses, parser
from kgc_kd.data.batching import EntityCollator, QueryCollator
from kgc_kd.data.io import DataWarning
from kgc_kd.data.kg_export import META_FILE, PARTS_DIR, TOKEN_CACHE_DIR, load_kg_export
from kgc_kd.data.tokens import TokenCache
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.runtime.files import replace_atomically, write_text_atomic
from kgc_kd.runtime.fingerprint import tree_digest


def resolve_export(path: str, stage: str | None = None) -> Path:
    p = Path(path)
    if (p / "biencoder.json").is_file():
        return p
    state = p / "chain_state.json"
    if state.is_file():
        order = json.loads(state.read_text()).get("order", [])
        name = stage or (order[-1] if order else None)
        if name is None or name not in order:
            raise FileNotFoundError(f"{p}: no finished stage {stage!r}; finished: {order}")
        return p / "stages" / name / "export"
    raise FileNotFoundError(f"{p}: neither an exported stage (biencoder.json) nor a run directory (chain_state.json)")


def token_cache_dir(export: Path) -> Path:
    """Where predict finds (or keeps) the export's token table: `<export>/token-cache` (a read-only export's
    table is mapped as it is; one without a table there is tokenised in memory, `TokenCache.load_or_build`)."""
    return export / TOKEN_CACHE_DIR


VECTORS_FORMAT = 1  # bump when what an entity-vector cache file holds changes
MODEL_FILES = ("biencoder.json", "query", "entity")  # what determines the entity vectors, besides the KG ...
KG_FILES = (META_FILE, PARTS_DIR)  # ... whose texts (and, with the link graph, training triples) they encode


class UnusableCache(Exception):
    """Why an entity-vector cache file cannot be used (it is computed again)."""


def export_digest(export: Path, names: tuple[str, ...]) -> str:
    """SHA-256 over the contents of the export's files and directories `names` (those present)."""
    h = hashlib.sha256()
    for name in names:
        if (export / name).exists():
            h.update(f"{name}\0{tree_digest(export / name)}\n".encode())
    return h.hexdigest()


def vector_cache_key(export: Path, max_length: int, link_graph: bool) -> dict:
    """What the entity vectors of `export` are a function of: its model's files (weights, configs, tokenizer,
    biencoder.json), its KG's files (kg.json and kg/: texts and triples) and how texts are made into inputs.
    By content, not by modification time: a copied export keeps its cache, another model or KG never reuses it."""
    return {"format": VECTORS_FORMAT, "model": export_digest(export, MODEL_FILES),
            "kg": export_digest(export, KG_FILES), "max_length": int(max_length), "link_graph": bool(link_graph)}


def vector_cache_path(export: Path, key: dict) -> Path:
    """`<export>/entity_vectors-<16 hex digits of the key>.pt`; the file holds the whole key, checked on reading."""
    return export / f"entity_vectors-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.pt"


def read_vector_cache(path: Path, key: dict, shape: tuple[int, int]) -> torch.Tensor | None:
    """The float32 (entities x dim) vectors cached in `path` for `key`, memory-mapped; None where there is no file,
    or (after one `DataWarning` saying why) where it cannot be used: not a torch file, anything but tensors and
    plain containers inside (`weights_only=True`: a pickled object is refused, never run, whatever
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says), another key, shape or dtype. Never raises: the caller computes them."""
    if not path.exists():
        return None
    try:
        found = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        if not isinstance(found, dict) or set(found) != {"key", "vectors"}:
            raise UnusableCache(f"it holds a {type(found).__name__}, not the key and the vectors")
        if found["key"] != key:
            raise UnusableCache(f"it was computed for another model or KG (key {found['key']!r}, this export's "
                                f"is {key!r})")
        vectors = found["vectors"]
        if not isinstance(vectors, torch.Tensor) or vectors.dtype != torch.float32 or tuple(vectors.shape) != shape:
            what = (f"{vectors.dtype} {list(vectors.shape)}" if isinstance(vectors, torch.Tensor)
                    else type(vectors).__name__)
            raise UnusableCache(f"it holds {what} vectors, expected torch.float32 {list(shape)}")
        return vectors
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes torch raise: computed again, never fatal
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(f"entity-vector cache {path} cannot be used ({why}); computing the vectors again and "
                      "replacing it", DataWarning, stacklevel=2)
        return None


def write_vector_cache(path: Path, key: dict, vectors: torch.Tensor) -> bool:
    """Write `vectors` with their `key` as `path`, atomically (a reader sees the old file or the new one);
    False where the export cannot be written (a read-only export: the vectors stay in memory)."""
    if not os.access(path.parent, os.W_OK):
        return False
    payload = {"key": key, "vectors": vectors.detach().to("cpu", torch.float32).contiguous()}
    try:
        replace_atomically(path, lambda f: torch.save(payload, f))
    except OSError:
        return False  # e.g. a read-only file system that os.access did not see: kept in memory
    return True


class Predictor:
    def __init__(self, export: Path, device: str = "cpu", batch_size: int = 256):
        from transformers import AutoTokenizer

        self.export = export
        self.kg, meta = load_kg_export(export)
        self.tokenizer = AutoTokenizer.from_pretrained(export / "query", local_files_only=True)
        # truncation was reported when the stage was trained: not again on every prediction
        self.tokens = TokenCache.load_or_build(self.kg, self.tokenizer, int(meta.get("max_length", 50)),
                                               cache_dir=token_cache_dir(export), warn=False,
                                               link_graph=bool(meta.get("link_graph", False)))
        self.net = BiEncoder.from_pretrained(export).to(device).eval()
        self.device, self.batch_size = torch.device(device), batch_size
        self.entity_vecs = self._entity_vectors()
        self.known = self.kg.filter_index

    def _move(self, inputs: dict) -> dict:
        return {k: v.to(self.device) for k, v in inputs.items()}

    @torch.no_grad()
    def _entity_vectors(self) -> torch.Tensor:
        """Every entity's vector: read from `<export>/entity_vectors-<key>.pt` where that file is valid for this
        export (`vector_cache_key`: its model files and its KG), else computed and written there atomically
        (where the export is writable). A cache that cannot be used is said once and rebuilt, never trusted."""
        key = vector_cache_key(self.export, self.tokens.max_length, self.tokens.link is not None)
        cache = vector_cache_path(self.export, key)
        dim = int(self.net.entity_encoder.config.hidden_size)  # pooling (cls, mean) keeps the hidden size
        found = read_vector_cache(cache, key, (self.kg.num_entities, dim))
        if found is not None:
            return found.to(self.device)
        collate = EntityCollator(self.tokens)
        ids = torch.arange(self.kg.num_entities)
        vecs = [self.net.encode_entity(self._move(collate(list(ids[i:i + self.batch_size]))["entity"]))
                for i in range(0, len(ids), self.batch_size)]
        out = torch.cat(vecs).float()
        write_vector_cache(cache, key, out)
        return out

    @torch.no_grad()
    def rank(self, head: str, relation: str, top_k: int = 10) -> dict:
        h, r = self.kg.entity_index(head), self.kg.relation_index(relation)
        batch = QueryCollator(self.tokens)([torch.tensor([h, r, 0])])
        q = self.net.encode_query(self._move(batch["hr"])).float()
        scores = (q @ self.entity_vecs.t())[0].cpu()
        top = scores.topk(min(top_k, len(scores)))
        known = set(self.known.get((h, r), torch.empty(0)).tolist())
        preds = [{"rank": i + 1, "id": self.kg.entity_ids[e], "name": self.kg.entity_names[e],
                  "score": round(float(s), 5), "known": e in known}
                 for i, (e, s) in enumerate(zip(top.indices.tolist(), top.values.tolist()))]
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
)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = parser("python -m kgc_kd.predict",
                "Rank every entity as the tail of (head, relation, ?) with an exported stage, or with the last "
                "(or --stage) stage of a run directory; answers known from the KG's splits are marked.",
                items=None, statuses=(EXIT_OK, EXIT_BAD_INPUT), examples=EXAMPLES,
                notes=("No configuration items: the export's own files (kg.json, biencoder.json) configure it.",
                       "Start-up maps the export's token table (token-cache/); an export without one is "
                       "tokenised once and the table kept there."),
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
    args = ap.parse_args(argv)
    if not args.queries and not (args.head and args.relation):
        ap.error("give --head and --relation, or --queries FILE")
    with exit_statuses(KeyError, ValueError):
        pred = Predictor(resolve_export(args.path, args.stage), device=args.device)
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
