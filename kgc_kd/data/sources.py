"""One entry point from a config string to a KG: a built-in name, `synthetic`, or a directory.

A directory's layout is told by one file: SimKGC's preprocessed `entities.json` first (what SimKGC itself
trains on, also when the raw files it was made from lie next to it), then Wikidata5M's raw
`wikidata5m_entity.txt`, then KG-BERT's `entity2text`."""

from __future__ import annotations

from pathlib import Path

from kgc_kd.data.builtin import BUILTIN, load_builtin
from kgc_kd.data.io import DataFormatError
from kgc_kd.data.kg import KG
from kgc_kd.data.kgbert import is_kgbert_dir, load_kgbert_dir
from kgc_kd.data.simkgc_json import is_simkgc_dir, load_simkgc_dir
from kgc_kd.data.synthetic import synthetic_kg
from kgc_kd.data.wikidata5m import is_wikidata5m_dir, load_wikidata5m_dir


def load_kg(source: str, *, use_long_text: bool = True, name_separator: str | None = None,
            synthetic: dict | None = None, drop_unknown: bool = False, drop_overlap: bool = False,
            wikidata5m_variant: str = "transductive") -> KG:
    """`drop_unknown` (directories only): skip, count and report triples with unknown entity/relation ids
    instead of raising `DataFormatError` (built-in and synthetic KGs have none). Valid/test triples that also
    occur in train are warned about, and with `drop_overlap` dropped (directories only: the built-in and
    synthetic KGs have none). `wikidata5m_variant`: which split files a raw Wikidata5M directory is read with
    (transductive or inductive)."""
    if source in BUILTIN:
        return load_builtin(source)
    if source == "synthetic":
        return synthetic_kg(**(synthetic or {}))
    d = Path(source).expanduser()
    if d.is_dir():
        if is_simkgc_dir(d):
            return load_simkgc_dir(d, drop_unknown=drop_unknown, drop_overlap=drop_overlap)
        if is_wikidata5m_dir(d):
            return load_wikidata5m_dir(d, variant=wikidata5m_variant, drop_unknown=drop_unknown,
                                       drop_overlap=drop_overlap)
        if is_kgbert_dir(d):
            return load_kgbert_dir(d, use_long_text=use_long_text, name_separator=name_separator,
                                   drop_unknown=drop_unknown, drop_overlap=drop_overlap)
        raise DataFormatError(
            f"{d}: not a KG directory; expected the KG-BERT layout (train.tsv dev.tsv test.tsv entity2text.txt "
            "relation2text.txt), SimKGC's (train.txt.json valid.txt.json test.txt.json entities.json) or "
            "Wikidata5M's (wikidata5m_transductive_{train,valid,test}.txt wikidata5m_entity.txt "
            "wikidata5m_relation.txt wikidata5m_text.txt)"
        )
    raise DataFormatError(
        f"data.source={source!r} is neither a built-in KG ({', '.join(BUILTIN)}), 'synthetic', nor an existing directory"
    )
