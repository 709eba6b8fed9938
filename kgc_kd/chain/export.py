"""`StageExporter`: what a finished stage leaves for `kgc_kd.predict` and for the next invocation, its export.

An export directory holds the stage's bi-encoder as Hugging Face directories (`biencoder.json`, `query/`,
`entity/`, with the source tokenizer), its KG (`kg.json` + `kg/`, see `kgc_kd.data.kg_export`) and, where the
run's token table is on disk and the stage reads the source tokenizer's ids, that table linked into
`token-cache/`, and, given the run's token table, every entity's vector (`entity_vectors.npy` + `.json`,
`kgc_kd.serve.vectors`): a stage is exported once and served many times, so its entities are encoded here, on the
training device, and `kgc_kd.predict` on a fresh export encodes only its queries. Where an export goes is the
stage store's business (`ChainStore.export_dir`); this module only writes one, whole or not at all, inside its
root: the export, its temporary directory and the old export it replaces are checked to lie there, and removing
them never follows a symbolic link (`runtime.files.remove`).
No Lightning.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from kgc_kd.data.kg import KG
from kgc_kd.data.kg_export import link_token_cache, save_kg
from kgc_kd.data.tokens import TokenCache
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.runtime.files import confined, remove
from kgc_kd.serve.vectors import encode_entities, vectors_key, write_entity_vectors


class StageExporter:
    """Writes the stages' exports of one run. `tokenizer`: the source tokenizer every stage reads, saved with each
    export (None: not saved). Remembers where the last KG went: the stages of a chain export one KG object, so
    one copy of its files on disk."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self._last_kg: tuple[KG, Path] | None = None  # the KG of the last export and where it went

    def export(self, final: Path, net: BiEncoder, kg: KG, *, max_length: int, link_graph: bool,
               tokens: TokenCache | None = None, root: Path | None = None) -> None:
        """The stage as Hugging Face directories, its KG (`kg_export.save_kg`: kg.json + kg/, hard-linked to the
        previous export's files where it is the same KG) and, given the run's `tokens` (the datamodule's
        TokenCache) with a cache entry on disk, that entry linked into token-cache/ so `kgc_kd.predict`
        memory-maps it instead of tokenising (a pruned stage reads other ids: its predict tokenises once and
        keeps the table there) and the entity vectors `kgc_kd.predict` ranks against (`_save_vectors`).
        Written to a temporary directory and renamed into `final`, so a half-written
        export is never mistaken for one; a kill between the renames leaves the old one whole. `root`: the
        directory the export must lie in (default: the directory holding `final`); OutsideRoot before anything
        is written otherwise."""
        root = Path(root) if root is not None else Path(final).parent
        final = confined(root, Path(final).parent.absolute(), "the export's directory") / Path(final).name
        tmp = _fresh(final.with_name(final.name + ".tmp"), root)
        _save_net(net, tmp, self.tokenizer)
        save_kg(kg, tmp, parts_from=self._kg_files_of(kg), max_length=max_length,
                link_graph=link_graph)  # predict's inputs
        if tokens is not None and net.kept_ids is None:  # the export's tokenizer is the one the table was made with
            link_token_cache(tokens.cache_path, tmp)
        if tokens is not None:
            _save_vectors(net, tokens, kg, tmp, max_length=max_length, link_graph=link_graph)
        _replace_dir(tmp, final, root)
        self._last_kg = (kg, final)

    def _kg_files_of(self, kg: KG) -> Path | None:
        """The last export's directory when it holds this very KG (its files are linked, not written again)."""
        last = self._last_kg
        return last[1] if last is not None and last[0] is kg else None


def _fresh(directory: Path, root: Path) -> Path:
    """`directory`, with whatever an earlier, interrupted attempt left there removed (a symbolic link left there:
    the link, never what it points to)."""
    remove(directory, root, "an earlier attempt's export", ignore_errors=True)
    return directory


def _save_net(net: BiEncoder, directory: Path, tokenizer) -> None:
    """A CPU copy of `net` saved as Hugging Face directories (the training copy stays where it is)."""
    with torch.no_grad():
        net_cpu = copy.deepcopy(net).cpu()
    net_cpu.save_pretrained(directory, tokenizer)


def _save_vectors(net: BiEncoder, tokens: TokenCache, kg: KG, directory: Path, *, max_length: int,
                  link_graph: bool) -> bool:
    """Every entity's vector written into the export being made in `directory` (after its model and KG files:
    the key is computed on them, and they are the final export's bytes), encoded by `net` as it stands, on its
    device, in eval mode, without autocast (the towers' own dtype; pooled in fp32), its mode restored after.
    Only where `tokens` are the inputs the exported model reads: the same max_length and link graph, and ids the
    net reads (a pruned net maps the source tokenizer's ids through its `input_map` inside the chain; the
    export's pruned tokenizer gives predict the same word pieces under their pruned ids, so the vectors are the
    same). Returns whether they were written."""
    if tokens.max_length != max_length or (tokens.link is not None) != bool(link_graph) or tokens.num_entities != \
            kg.num_entities or (net.kept_ids is not None and net.input_map is None):
        return False  # not the inputs predict builds: predict encodes once instead
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            vectors = encode_entities(net.encode_entity, tokens, kg.num_entities, device=device)
    finally:
        net.train(was_training)
    return write_entity_vectors(directory, vectors_key(directory, max_length, link_graph), vectors)


def _replace_dir(tmp: Path, final: Path, root: Path) -> None:
    """`tmp` becomes `final`; an existing `final` is moved aside first and removed only after the rename (a
    symbolic link there is moved and unlinked, its target left alone)."""
    old = _fresh(final.with_name(final.name + ".old"), root)
    if final.exists() or final.is_symlink():
        final.rename(old)
    tmp.rename(final)
    remove(old, root, "the replaced export", ignore_errors=True)
