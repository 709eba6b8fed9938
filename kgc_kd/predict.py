"""`python -m kgc_kd.predict RUN_OR_EXPORT --head NAME --relation TEXT [--top-k 10] [--queries FILE]`

Ranks every entity as the tail of (head, relation, ?) with an exported stage (or the last stage of a
run directory). Known answers from the KG's splits are marked.

Start-up reads what the export carries instead of recomputing it (`kgc_kd.data.kg_export`): the KG from its
id arrays and text files, and the token table from `<export>/token-cache/`, memory-mapped
(`TokenCache.load_or_build`), so no entity text is tokenised. An export without one (written before the
token cache, or a pruned stage, whose tokenizer has other ids) is tokenised once and the table written
there, so the next start maps it. Entity vectors are computed once and cached next to the export too, so
later starts and queries only encode the query. A read-only export is used as it is: what cannot be written
is kept in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from kgc_kd.cli import EXIT_BAD_INPUT, EXIT_OK, console_script, exit_statuses, parser
from kgc_kd.data.batching import EntityCollator, QueryCollator
from kgc_kd.data.kg_export import TOKEN_CACHE_DIR, load_kg_export
from kgc_kd.data.tokens import TokenCache
from kgc_kd.runtime.files import write_text_atomic
from kgc_kd.models.biencoder import BiEncoder


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
        weights = (self.export / "entity" / "model.safetensors")
        text = f"{self.tokens.max_length}-{self.tokens.link is not None}"  # inputs differ with neighbour text
        key = hashlib.sha1(f"{weights.stat().st_mtime_ns}-{text}".encode()).hexdigest()[:12]
        cache = self.export / f"entity_vectors-{key}.pt"
        if cache.is_file():
            return torch.load(cache).to(self.device)
        collate = EntityCollator(self.tokens)
        ids = torch.arange(self.kg.num_entities)
        vecs = [self.net.encode_entity(self._move(collate(list(ids[i:i + self.batch_size]))["entity"]))
                for i in range(0, len(ids), self.batch_size)]
        out = torch.cat(vecs).float()
        if os.access(self.export, os.W_OK):
            tmp = cache.with_name(cache.name + ".tmp")
            torch.save(out.cpu(), tmp)
            tmp.replace(cache)
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
