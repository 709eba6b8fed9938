"""What issue 28's data checks cost at scale: tokenising one huge description, and the train-overlap check.

    python -m experiments.data_hygiene_cost text [SIZE]    # one entity with a SIZE-character description (10 MB)
    python -m experiments.data_hygiene_cost overlap        # TripleSet at Wikidata5M's size (20.6M train triples)

`text` tokenises a 3-entity KG whose first description is SIZE characters with the packaged MiniLM tokenizer
(data.max_length 50) and prints the time and the growth of peak resident memory; `overlap` builds the sorted train
keys (`data/io.py TripleSet`) of 20,614,279 random triples and looks up valid/test-sized splits. Figures:
docs/performance.md, "Data checks at scale".
"""

from __future__ import annotations

import resource
import sys
import time


def text(size: int = 10_000_000) -> None:
    import torch

    from kgc_kd.data.kg import KG
    from kgc_kd.data.tokens import TokenCache
    from kgc_kd.models.plm import load_tokenizer

    tok = load_tokenizer("minilm")
    words = "graph entity relation knowledge completion model text description".split()
    huge = " ".join(words[i % len(words)] for i in range(size // 8))[:size]
    kg = KG(name="big", entity_ids=["a", "b", "c"], entity_names=["alpha", "beta", "gamma"],
            entity_descs=[huge, "short", "also short"], relation_ids=["r"], relation_texts=["related to"],
            train=torch.tensor([[0, 0, 1], [1, 0, 2]]), valid=torch.tensor([[2, 0, 0]]),
            test=torch.tensor([[0, 0, 2]]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    cache = TokenCache.build(kg, tok, 50, warn=False)
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"description of {len(huge) / 1e6:.1f} M characters: tokenised in {seconds:.2f} s, peak RSS +{grown:.0f} MiB; "
          f"its row holds {int(cache.entity_lengths[0])} pieces")


def overlap() -> None:
    import numpy as np

    from experiments.bench.wikidata_like import WIKIDATA5M
    from kgc_kd.data.io import TripleSet

    rng = np.random.default_rng(0)
    e, r, n = WIKIDATA5M["entities"], WIKIDATA5M["relations"], WIKIDATA5M["train"]
    train = np.stack([rng.integers(0, e, n), rng.integers(0, r, n), rng.integers(0, e, n)], 1)
    valid = np.concatenate([train[rng.integers(0, n, 2_000)],
                            np.stack([rng.integers(0, e, 3163), rng.integers(0, r, 3163), rng.integers(0, e, 3163)], 1)])
    test = train[rng.integers(0, n, 5133)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    keys = TripleSet(train)
    t1 = time.perf_counter()
    found = int(keys.contains(valid).sum()), int(keys.contains(test).sum())
    t2 = time.perf_counter()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"train {n:,} triples, {e:,} entities, {r} relations: sorted keys {t1 - t0:.2f} s; valid {len(valid):,} + test "
          f"{len(test):,} looked up in {t2 - t1:.3f} s ({found[0]} / {found[1]} in train); peak RSS +{grown:.0f} MiB")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "text"
    if what == "text":
        text(int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000)
    elif what == "overlap":
        overlap()
    else:
        sys.exit(f"unknown section {what!r}: expected text [SIZE] or overlap")
