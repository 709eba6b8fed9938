"""kgc_kd.serve.vectors alone: an export's entity vectors written as float16 with their sidecar, memory-mapped back,
refused (one warning line, None) wherever they are stale, of another shape or dtype, damaged or pickled; encoded in
batches equal to one entity at a time."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert, make_tokenizer
from kgc_kd.data.io import DataWarning
from kgc_kd.data.kg_export import save_kg
from kgc_kd.data.synthetic import synthetic_kg
from kgc_kd.data.tokens import TokenCache, pad
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.serve import vectors as vec
from kgc_kd.serve.vectors import (encode_entities, npy_sha256, read_entity_vectors, vectors_digest, vectors_files,
                                  vectors_key, write_entity_vectors)

KEY = {"model": "a" * 64, "kg": "b" * 64, "max_length": 24, "link_graph": False, "encoder": "fp32"}


def _unit_rows(n: int = 7, d: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g)
    return v / v.norm(dim=1, keepdim=True)


def _said(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)]


def _read(directory, key=KEY, shape=(7, 5)):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        found = read_entity_vectors(directory, key, shape)
    return found, _said(record)


def test_written_as_float16_with_a_sidecar_and_mapped_back(tmp_path):
    v = _unit_rows()
    assert write_entity_vectors(tmp_path, KEY, v) is True
    npy, meta = tmp_path / "entity_vectors.npy", tmp_path / "entity_vectors.json"
    assert vectors_files(tmp_path) == (npy, meta)
    info = json.loads(meta.read_text())
    assert info == {"format": 1, "key": KEY, "shape": [7, 5], "dtype": "float16",
                    "sha256": hashlib.sha256(npy.read_bytes()).hexdigest()}
    found, said = _read(tmp_path)
    assert said == [] and isinstance(found, np.memmap) and found.dtype == np.float16 and not found.flags.writeable
    # each component rounded to the nearest float16: at most half a unit in the last place (2^-11 relative)
    want = np.array([[float(np.float16(x)) for x in row] for row in v.tolist()], dtype=np.float16)
    assert np.array_equal(np.asarray(found), want)
    assert np.abs(np.asarray(found, dtype=np.float64) - v.double().numpy()).max() <= 2.0**-12
    assert vectors_digest(tmp_path) == info["sha256"] == npy_sha256(want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entity_vectors.json", "entity_vectors.npy"]  # no temps


def test_another_encoder_keeps_files_of_its_own(tmp_path):
    torch_v, onnx_v = _unit_rows(seed=1), _unit_rows(seed=2)
    write_entity_vectors(tmp_path, KEY, torch_v)
    int8 = {**KEY, "encoder": "onnx-int8"}
    assert write_entity_vectors(tmp_path, int8, onnx_v)
    assert vectors_files(tmp_path, "onnx-int8") == (tmp_path / "entity_vectors-onnx-int8.npy",
                                                     tmp_path / "entity_vectors-onnx-int8.json")
    (a, _), (b, _) = _read(tmp_path, KEY), _read(tmp_path, int8)
    assert np.array_equal(a, torch_v.half().numpy()) and np.array_equal(b, onnx_v.half().numpy())
    assert vectors_digest(tmp_path, "onnx-int8") != vectors_digest(tmp_path)


def test_no_vectors_is_none_without_a_word(tmp_path):
    assert _read(tmp_path) == (None, [])
    with pytest.raises(FileNotFoundError, match="entity_vectors.json: no entity vectors here"):
        vectors_digest(tmp_path)


class Payload:
    """What a crafted array would run on unpickling: a shell command creating `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def _resign(npy, meta, **changes):
    """The sidecar rewritten to record `npy`'s present bytes (only what is asked is wrong)."""
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "sha256": hashlib.sha256(npy.read_bytes()).hexdigest(), **changes}))


DAMAGES = {
    "zero bytes": "damaged",
    "truncated": "damaged",
    "one byte flipped": "damaged",
    "truncated, sidecar agreeing": "",  # numpy's own complaint about a short file
    "sidecar missing": "entity_vectors.json is missing",
    "array missing": "entity_vectors.npy is missing",
    "sidecar not JSON": "entity_vectors.json is not JSON: Expecting",
    "sidecar of another format": "not a format-1 sidecar",
    "another model": "stale: computed for another model/KG (model differs)",
    "another kg and max_length": "stale: computed for another model/KG (kg, max_length differ)",
    "another encoder": "stale: computed for another model/KG (encoder differs)",
    "three rows": "records float16 [3, 5], expected float16 [7, 5]",
    "float32 array": "records float32 [7, 5], expected float16 [7, 5]",
    "float32 array, sidecar lying": "holds float32 [7, 5], expected float16 [7, 5]",
    "pickled object array": "",
}


def _damage(npy, meta, how, marker):
    if how == "zero bytes":
        npy.write_bytes(b"")
    elif how == "truncated":
        npy.write_bytes(npy.read_bytes()[:-9])
    elif how == "one byte flipped":
        data = bytearray(npy.read_bytes())
        data[-3] ^= 0x40
        npy.write_bytes(bytes(data))
    elif how == "truncated, sidecar agreeing":
        npy.write_bytes(npy.read_bytes()[:-9])
        _resign(npy, meta)
    elif how == "sidecar missing":
        meta.unlink()
    elif how == "array missing":
        npy.unlink()
    elif how == "sidecar not JSON":
        meta.write_text('{"format": 1, "key"')
    elif how == "sidecar of another format":
        _resign(npy, meta, format=2)
    elif how == "another model":
        _resign(npy, meta, key={**KEY, "model": "c" * 64})
    elif how == "another kg and max_length":
        _resign(npy, meta, key={**KEY, "kg": "c" * 64, "max_length": 50})
    elif how == "another encoder":
        _resign(npy, meta, key={**KEY, "encoder": "onnx-int8"})
    elif how == "three rows":
        np.save(npy, _unit_rows(3).half().numpy())
        _resign(npy, meta, shape=[3, 5])
    elif how == "float32 array":
        np.save(npy, _unit_rows().numpy())
        _resign(npy, meta, dtype="float32")
    elif how == "float32 array, sidecar lying":
        np.save(npy, _unit_rows().numpy())
        _resign(npy, meta)
    elif how == "pickled object array":  # a valid sidecar for it: only allow_pickle=False stands in the way
        np.save(npy, np.array([Payload(marker)] * 35, dtype=object).reshape(7, 5), allow_pickle=True)
        _resign(npy, meta)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", DAMAGES)
def test_unusable_vectors_are_refused_in_one_line_and_never_run_code(tmp_path, how):
    write_entity_vectors(tmp_path, KEY, _unit_rows())
    npy, meta = vectors_files(tmp_path)
    marker = tmp_path / "payload-ran"
    _damage(npy, meta, how, marker)
    found, said = _read(tmp_path)
    assert found is None and len(said) == 1, said
    assert said[0].startswith(f"{npy}: entity vectors cannot be used (") and "\n" not in said[0]
    assert DAMAGES[how] in said[0] and said[0].endswith("; they are computed again")
    assert not marker.exists()
    assert write_entity_vectors(tmp_path, KEY, _unit_rows())  # the caller's rebuild replaces them whole
    assert _read(tmp_path)[1] == [] and sorted(p.name for p in tmp_path.iterdir()) == [meta.name, npy.name]


def test_an_expected_shape_of_another_width_is_refused(tmp_path):
    write_entity_vectors(tmp_path, KEY, _unit_rows())
    found, said = _read(tmp_path, shape=(7, 6))
    assert found is None and len(said) == 1 and "records float16 [7, 5], expected float16 [7, 6]" in said[0]


def test_a_read_only_directory_is_not_written(tmp_path, monkeypatch):
    """Tests run as root, for whom every directory is writable: the permission check itself is switched off."""
    monkeypatch.setattr(vec.os, "access", lambda path, mode: False)
    assert write_entity_vectors(tmp_path, KEY, _unit_rows()) is False
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_reports_false(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(vec, "replace_atomically", refused)
    assert write_entity_vectors(tmp_path, KEY, _unit_rows()) is False


# ---- the key and the encoding ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export(tmp_path_factory):
    kg = synthetic_kg(14, 2, 30, seed=5)
    net = BiEncoder(make_tiny_bert(dropout=0.0)).eval()
    d = tmp_path_factory.mktemp("vec") / "export"
    net.save_pretrained(d, make_tokenizer())
    save_kg(kg, d, max_length=24)
    return d, kg, net


def test_the_key_follows_content_not_place(export, tmp_path):
    d, _, _ = export
    key = vectors_key(d, 24, False)
    assert set(key) == {"model", "kg", "max_length", "link_graph", "encoder"} and key["encoder"] == "fp32"
    copy = tmp_path / "copy"
    shutil.copytree(d, copy, copy_function=shutil.copy)  # other times, same bytes
    assert vectors_key(copy, 24, False) == key
    assert vectors_key(copy, 24, True, "onnx-fp32") == {**key, "link_graph": True, "encoder": "onnx-fp32"}
    weights = copy / "entity" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    changed = vectors_key(copy, 24, False)
    assert changed["model"] != key["model"] and changed["kg"] == key["kg"]
    names = copy / "kg" / "entity_names.txt"
    names.write_text("zebra " + names.read_text())
    assert vectors_key(copy, 24, False)["kg"] != key["kg"]


def test_encoded_in_batches_as_one_entity_at_a_time(export):
    d, kg, net = export
    tokens = TokenCache.build(kg, make_tokenizer(), 24)
    got = encode_entities(net.encode_entity, tokens, kg.num_entities, batch_size=4)  # 4 + 4 + 4 + 2
    assert got.dtype == torch.float32 and got.shape == (14, 32) and got.device.type == "cpu"
    with torch.no_grad():
        for e in range(kg.num_entities):  # the readable reference path: [CLS] text [SEP], no padding
            input_ids, mask = pad([tokens.entity_ids(e)], tokens.pad_id)
            one = net.encode_entity({"input_ids": input_ids, "attention_mask": mask,
                                     "token_type_ids": torch.zeros_like(input_ids)})
            assert torch.allclose(got[e], one[0], atol=1e-5), e
    assert torch.allclose(got.norm(dim=1), torch.ones(14), atol=1e-5)  # pool() normalises
    assert encode_entities(net.encode_entity, tokens, 5, batch_size=256).shape == (5, 32)
    with pytest.raises(ValueError, match="15 entities asked for, the token table holds 14"):
        encode_entities(net.encode_entity, tokens, 15)


def test_the_module_needs_no_lightning():
    code = ("import sys, kgc_kd.serve.vectors; "
            "sys.exit(any(m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning')) for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
