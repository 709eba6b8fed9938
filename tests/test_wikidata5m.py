"""kgc_kd.data.wikidata5m: Wikidata5M's raw layout, written by hand (or at random) in each test, read as
SimKGC's preprocess.py reads it; and the Wikidata5M recipes in conf/experiment."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kgc_kd import fit
from kgc_kd.config import load_config
from kgc_kd.data.io import DataFormatError, DataWarning
from kgc_kd.data.kg import SPLITS
from kgc_kd.data.sources import load_kg
from kgc_kd.data.wikidata5m import is_wikidata5m_dir, load_wikidata5m_dir, truncate_words

ROOT = Path(__file__).resolve().parents[1]
TWELVE = "one two three four five six seven eight nine ten eleven twelve"
THIRTY_FIVE = " ".join(f"w{i}" for i in range(35))

ENTITY = {"Q1": ["Douglas Adams", "DNA"], "Q2": [TWELVE], "Q3": ["Earth", "the Earth"], "Q4": ["  Cambridge  "]}
RELATION = {"P1": ["educated at", "alma mater"], "P2": [TWELVE + " more"], "P3": ["place of birth"]}
TEXT = {"Q1": ["English writer"], "Q2": [" ".join(THIRTY_FIVE.split()[:12]), " ".join(THIRTY_FIVE.split()[12:])],
        "Q3": ["third planet"],
        "Q4": [THIRTY_FIVE]}
TRIPLES = {
    "train": [("Q1", "P1", "Q4"), ("Q2", "P3", "Q3"), ("Q1", "P9", "Q3"), ("Q3", "P1", "Q9"), ("Q4", "P2", "Q1")],
    "valid": [("Q3", "P1", "Q1")],
    "test": [("Q4", "P3", "Q2")],
}


def table(rows: dict[str, list[str]]) -> str:
    return "".join(f"{key}\t" + "\t".join(fields) + "\n" for key, fields in rows.items())


def write_w5m(d: Path, *, entity=ENTITY, relation=RELATION, text=TEXT, triples=TRIPLES,
              variant="transductive", linked=False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "wikidata5m_entity.txt").write_text(table(entity), encoding="utf-8")
    (d / "wikidata5m_relation.txt").write_text(table(relation), encoding="utf-8")
    (d / "wikidata5m_text.txt").write_text(table(text), encoding="utf-8")
    for split, rows in triples.items():
        name = f"{split}.txt" if linked else f"wikidata5m_{variant}_{split}.txt"
        (d / name).write_text("".join("\t".join(t) + "\n" for t in rows), encoding="utf-8")
    return d


def load_quietly(d, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_wikidata5m_dir(d, **kw)


@pytest.mark.parametrize("text, words, cut", [
    (TWELVE, 10, "one two three four five six seven eight nine ten"),
    ("  a \t b\n c  ", 10, "a b c"),
    ("a b", 1, "a"),
    ("", 10, ""),
])
def test_truncate_words(text, words, cut):
    assert truncate_words(text, words) == cut


def test_load(tmp_path):
    d = write_w5m(tmp_path / "wikidata5m")
    assert is_wikidata5m_dir(d)
    with pytest.warns(DataWarning) as record:
        kg = load_wikidata5m_dir(d)
    assert kg.name == "wikidata5m" and kg.source == f"wikidata5m:{d}"
    # entities of the kept triples in order of first appearance, head before tail: train (its kept rows
    # 1, 2, 5), valid, test
    assert kg.entity_ids == ["Q1", "Q4", "Q2", "Q3"]
    assert kg.entity_names == ["Douglas Adams", "Cambridge", "one two three four five six seven eight nine ten",
                               "Earth"]
    assert kg.entity_descs == ["English writer", " ".join(f"w{i}" for i in range(30)),
                               " ".join(f"w{i}" for i in range(30)), "third planet"]  # Q2: both fields joined
    assert kg.relation_ids == ["P1", "P3", "P2"]
    assert kg.relation_texts == ["educated at", "place of birth", "one two three four five six seven eight nine ten"]
    assert kg.train.tolist() == [[0, 0, 1], [2, 1, 3], [1, 2, 0]]
    assert kg.valid.tolist() == [[3, 0, 0]] and kg.test.tolist() == [[1, 1, 2]]
    path = d / "wikidata5m_transductive_train.txt"
    assert [str(w.message) for w in record] == [
        f"{path}:3: 2 train triples dropped: a head, relation or tail without text (SimKGC's preprocess drops "
        "them), first at line 3: relation 'P9' has no line in wikidata5m_relation.txt"]
    assert kg.notes == {"train.without_text_dropped": 2}


def test_valid_and_test_keep_textless_triples_named_by_their_ids(tmp_path):
    triples = {**TRIPLES, "valid": [("Q3", "P1", "Q1"), ("Q8", "P1", "Q1")], "test": [("Q4", "P7", "Q2")]}
    d = write_w5m(tmp_path / "w", triples=triples)
    with pytest.warns(DataWarning) as record:
        kg = load_wikidata5m_dir(d)
    assert kg.entity_ids[-1] == "Q8" and kg.entity_names[-1] == "Q8" and kg.entity_descs[-1] == ""
    assert kg.relation_ids[-1] == "P7" and kg.relation_texts[-1] == "P7"
    assert len(kg.valid) == 2 and len(kg.test) == 1
    valid, test = d / "wikidata5m_transductive_valid.txt", d / "wikidata5m_transductive_test.txt"
    assert [str(w.message) for w in record][1:] == [
        f"{valid}:2: 1 of 5 entities have no text in wikidata5m_entity.txt (no line, or an empty alias); their "
        "ids are used as names, e.g. 'Q8'",
        f"{test}:1: 1 of 4 relations have no text in wikidata5m_relation.txt (no line, or an empty alias); their "
        "ids are used as texts, e.g. 'P7'",
        f"{d / 'wikidata5m_text.txt'}: 1 of 5 entities have no description line; their descriptions are empty, "
        "e.g. 'Q8'"]
    assert kg.notes == {"train.without_text_dropped": 2, "entities_without_text": 1, "relations_without_text": 1,
                        "entities_without_description": 1}


def test_drop_unknown_drops_textless_valid_and_test_triples(tmp_path):
    triples = {**TRIPLES, "valid": [("Q3", "P1", "Q1"), ("Q8", "P1", "Q1")]}
    d = write_w5m(tmp_path / "w", triples=triples)
    with pytest.warns(DataWarning) as record:
        kg = load_wikidata5m_dir(d, drop_unknown=True)
    valid = d / "wikidata5m_transductive_valid.txt"
    assert str(record[1].message) == (
        f"{valid}:2: 1 triple skipped: unknown entity/relation ids (data.drop_unknown=true), first at line 2: head "
        "'Q8' has no line in wikidata5m_entity.txt")
    assert kg.valid.tolist() == [[3, 0, 0]] and "Q8" not in kg.entity_ids
    assert kg.notes == {"train.without_text_dropped": 2, "valid.unknown_dropped": 1}


def test_empty_alias_is_kept_and_named_by_the_id(tmp_path):
    d = write_w5m(tmp_path / "w", entity={**ENTITY, "Q3": ["", "Earth"]})
    with pytest.warns(DataWarning) as record:
        kg = load_wikidata5m_dir(d)
    assert str(record[1].message).startswith(f"{d / 'wikidata5m_transductive_train.txt'}:2: 1 of 4 entities have no "
                                             "text in wikidata5m_entity.txt (no line, or an empty alias)")
    assert kg.entity_names[kg.entity_ids.index("Q3")] == "Q3"
    assert kg.train.tolist() == [[0, 0, 1], [2, 1, 3], [1, 2, 0]]  # SimKGC drops only ids without a line


def test_repeated_alias_line_later_wins(tmp_path):
    d = write_w5m(tmp_path / "w")
    with open(d / "wikidata5m_entity.txt", "a", encoding="utf-8") as f:
        f.write("Q1\tDouglas Noel Adams\n")
    with pytest.warns(DataWarning) as record:
        kg = load_wikidata5m_dir(d)
    assert kg.entity_names[0] == "Douglas Noel Adams"
    assert str(record[0].message) == (f"{d / 'wikidata5m_entity.txt'}:5: 1 id with a second line; the later line "
                                      "is used (as SimKGC reads the file)")
    assert kg.notes["wikidata5m_entity.txt.repeated_ids"] == 1


def test_duplicate_triples_dropped(tmp_path):
    d = write_w5m(tmp_path / "w", triples={**TRIPLES, "test": [("Q4", "P3", "Q2")] * 3})
    with pytest.warns(DataWarning) as record:
        kg = load_wikidata5m_dir(d)
    assert str(record[-1].message).startswith(f"{d / 'wikidata5m_transductive_test.txt'}:2: 2 duplicate triples "
                                              "removed (the first occurrence is kept), first at line 2: a repeat of "
                                              "line 1")
    assert kg.test.tolist() == [[1, 1, 2]] and kg.notes["test.duplicates"] == 2


@pytest.mark.parametrize("variant", ["transductive", "inductive"])
def test_variant_selects_its_split_files(tmp_path, variant):
    d = write_w5m(tmp_path / "w")  # transductive files
    write_w5m(d, variant="inductive", triples={s: [("Q1", "P1", "Q3")] for s in SPLITS})
    kg = load_quietly(d, variant=variant)
    assert len(kg.train) == (3 if variant == "transductive" else 1)
    assert load_quietly(d).train.tolist() == load_quietly(d, variant="transductive").train.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert load_kg(str(d), wikidata5m_variant=variant).train.tolist() == kg.train.tolist()


def test_simkgc_linked_directory(tmp_path):
    """SimKGC's download script links the variant's splits as train.txt valid.txt test.txt."""
    d = write_w5m(tmp_path / "wiki5m_trans", linked=True)
    assert load_quietly(d).train.tolist() == load_quietly(write_w5m(tmp_path / "w")).train.tolist()


def test_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="variant 'semi': expected one of transductive, inductive"):
        load_wikidata5m_dir(write_w5m(tmp_path / "w"), variant="semi")


# ---- errors -------------------------------------------------------------------------------------------
def test_missing_files(tmp_path):
    d = write_w5m(tmp_path / "w")
    (d / "wikidata5m_transductive_valid.txt").unlink()
    with pytest.raises(DataFormatError) as err:
        load_wikidata5m_dir(d)
    assert str(err.value) == f"{d}: missing wikidata5m_transductive_valid.txt (or valid.txt)"
    d = write_w5m(tmp_path / "w2")
    (d / "wikidata5m_text.txt").unlink()
    with pytest.raises(DataFormatError, match=r"missing wikidata5m_text\.txt$"):
        load_quietly(d)


@pytest.mark.parametrize("name", ["wikidata5m_entity.txt", "wikidata5m_relation.txt", "wikidata5m_text.txt"])
def test_id_without_text_field_names_file_and_line(tmp_path, name):
    d = write_w5m(tmp_path / "w")
    with open(d / name, "a", encoding="utf-8") as f:
        f.write("\nQ77\t\n")  # a blank line (skipped), then an id whose only field is stripped away
    lines = len((d / name).read_text(encoding="utf-8").splitlines())
    with pytest.raises(DataFormatError) as err:
        load_quietly(d)
    what = "description" if name == "wikidata5m_text.txt" else "alias"
    assert str(err.value) == f"{d / name}:{lines}: expected id<TAB>{what}[<TAB>...], found 1 field: 'Q77\\t'"


def test_bad_triple_line_names_file_and_line(tmp_path):
    d = write_w5m(tmp_path / "w", triples={**TRIPLES, "test": [("Q4", "P3", "Q2"), ("Q4", "P3")]})
    with pytest.raises(DataFormatError) as err:
        load_quietly(d)
    assert str(err.value) == (f"{d / 'wikidata5m_transductive_test.txt'}:2: expected 3 tab-separated fields, "
                              "found 2: 'Q4\\tP3'")


def test_not_utf8_names_file_and_line(tmp_path):
    d = write_w5m(tmp_path / "w")
    with open(d / "wikidata5m_text.txt", "ab") as f:
        f.write(b"Q5\tcaf\xe9\n")
    with pytest.raises(DataFormatError, match=r"wikidata5m_text\.txt:5: not UTF-8 text: byte 0xe9 at column 7"):
        load_quietly(d)


def test_two_relations_with_one_text_is_an_error(tmp_path):
    d = write_w5m(tmp_path / "w", relation={**RELATION, "P3": ["educated at"]})
    with pytest.raises(DataFormatError) as err:
        load_quietly(d)
    assert str(err.value) == (f"{d / 'wikidata5m_relation.txt'}: relations 'P1' and 'P3' both read 'educated at' "
                              "(first alias, 10 words); expected distinct relation texts")


# ---- against SimKGC's preprocess, re-implemented plainly ------------------------------------------------
def simkgc_reference(d: Path, variant: str = "transductive"):
    """What SimKGC's preprocess.py writes for this directory, as plain dicts and lists: per split the
    examples (head id, relation text or None, tail id, relation id), and entities.json's rows. Names and
    relations: first alias cut to 10 words; texts: all fields cut to 30; train examples with a missing
    name or relation dropped; entities in order of first appearance, head before tail."""
    def read(name, first_only, words):
        out = {}
        for line in (d / name).read_text(encoding="utf-8").splitlines():
            fs = line.strip().split("\t")
            out[fs[0]] = " ".join((fs[1] if first_only else " ".join(fs[1:])).split()[:words])
        return out
    rel, ent = read("wikidata5m_relation.txt", True, 10), read("wikidata5m_entity.txt", True, 10)
    text = read("wikidata5m_text.txt", False, 30)
    examples = {}
    for split in SPLITS:
        rows = []
        for line in (d / f"wikidata5m_{variant}_{split}.txt").read_text(encoding="utf-8").splitlines():
            h, r, t = line.strip().split("\t")
            if split != "train" or (h in ent and r in rel and t in ent):
                rows.append((h, rel.get(r), t, r))
        examples[split] = rows
    entities = {}
    for split in SPLITS:
        for h, _, t, _ in examples[split]:
            for key in (h, t):
                entities.setdefault(key, {"entity_id": key, "entity": ent.get(key), "entity_desc": text[key]})
    return examples, list(entities.values())


@pytest.mark.parametrize("seed", range(12))
def test_random_graph_with_hubs_reads_as_simkgc_preprocess_writes_it(tmp_path, seed):
    rng = random.Random(seed)
    n_ent, n_rel = rng.randrange(5, 40), rng.randrange(2, 8)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "Zürich", "日本"]
    phrase = lambda lo, hi: " ".join(rng.choice(words) for _ in range(rng.randrange(lo, hi)))  # noqa: E731
    entity = {f"Q{i}": [phrase(1, 14), phrase(1, 3)] for i in range(n_ent) if rng.random() < 0.9}
    relation = {f"P{i}": [phrase(0, 9) + f" r{i}", phrase(1, 3)] for i in range(n_rel) if rng.random() < 0.8}
    text = {f"Q{i}": [phrase(0, 25), phrase(0, 25)] for i in range(n_ent)}
    hubs = [f"Q{rng.randrange(n_ent)}" for _ in range(2)]
    ent = lambda: rng.choice(hubs) if rng.random() < 0.4 else f"Q{rng.randrange(n_ent)}"  # noqa: E731
    triples = {}
    for split, n in (("train", 80), ("valid", 8), ("test", 8)):
        rows = {(ent(), f"P{rng.randrange(n_rel)}", ent()) for _ in range(n)}  # a set: no repeated triple
        triples[split] = sorted(rows, key=lambda _: rng.random())
    d = write_w5m(tmp_path / "w", entity=entity, relation=relation, text=text, triples=triples)
    examples, entities = simkgc_reference(d)
    assert examples["train"], "every train triple dropped: draw another graph"
    kg = load_quietly(d)
    assert kg.entity_ids == [e["entity_id"] for e in entities]
    assert kg.entity_names == [e["entity"] or e["entity_id"] for e in entities]
    assert kg.entity_descs == [e["entity_desc"] for e in entities]
    for split in SPLITS:
        got = [(kg.entity_ids[h], kg.relation_texts[r], kg.entity_ids[t]) for h, r, t in kg.split(split).tolist()]
        assert got == [(h, text or rid, t) for h, text, t, rid in examples[split]], split
    assert kg.notes.get("train.without_text_dropped", 0) == len(triples["train"]) - len(examples["train"])


# ---- the Wikidata5M recipes ----------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["wikidata5m_simkgc", "wikidata5m_pmd"])
def test_recipes_load_and_validate(recipe):
    cfg = load_config([f"config=conf/experiment/{recipe}.yaml", "data.source=/data/wikidata5m", "model.plm=/m/bert"])
    assert not OmegaConf.missing_keys(cfg)
    assert cfg.data.link_graph is False and cfg.data.max_length == 50 and cfg.model.pre_batch == 0
    assert cfg.optim.lr == 3e-5 and cfg.trainer.max_epochs == 1
    assert (cfg.eval.rerank_weight, cfg.eval.rerank_hops) == (0.05, 2)
    if recipe == "wikidata5m_simkgc":  # spec A6: SimKGC's Wikidata5M-transductive column
        assert cfg.data.batch_size == 1024 and cfg.model.self_negative is True and cfg.teacher.only is True
    else:  # spec B5/B6: PMD's grades, batch 512, IB only, one epoch for the teacher and each grade
        assert cfg.data.batch_size == 512 and cfg.model.self_negative is False and cfg.teacher.epochs == 1
        assert [(s.layers, s.mask_rate) for s in cfg.stages] == [(12, 0.2), (9, 0.1), (6, 0.05), (3, 0.0)]


def test_data_preset_needs_the_directory():
    from kgc_kd.config import ConfigError

    with pytest.raises(ConfigError, match="data.source"):
        load_config(["data=wikidata5m"])
    assert load_config(["data=wikidata5m", "data.source=/x"]).data.link_graph is False


@pytest.mark.slow  # end to end: train two batches, validate and test
def test_simkgc_recipe_trains_two_batches_on_a_tiny_directory(tmp_path, tiny_plm_dir):
    d = write_w5m(tmp_path / "wikidata5m")
    argv = ["config=conf/experiment/wikidata5m_simkgc.yaml", f"data.source={d}", f"model.plm={tiny_plm_dir}",
            "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.limit_train_batches=2",
            "trainer.enable_progress_bar=false", "data.batch_size=2", "data.eval_batch_size=8", "data.num_workers=0",
            "run.logger=csv", f"run.root={tmp_path / 'runs'}", "run.name=w5m"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        result = fit.main(argv)
    (teacher,) = result["stages"]
    assert teacher["steps"] == 2
    metrics = json.loads((tmp_path / "runs" / "w5m" / "metrics.json").read_text())
    assert 0 < metrics["stages"][0]["test"]["mrr"] <= 1
