"""kgc_kd.data.text: SimKGC's entity text ("name: desc") and the forward + inverse relation texts."""

from __future__ import annotations

import pytest
import torch

from kgc_kd.data.kg import KG
from kgc_kd.data.text import entity_text, entity_texts, linked_prefix, linked_text, prefix_mismatch, relation_texts


@pytest.mark.parametrize(
    "name, desc, text",
    [
        ("dog", "", "dog"),
        ("dog", "   ", "dog"),
        ("dog", "a domestic animal", "dog: a domestic animal"),
        ("dog", "dog is a domestic animal", "dog: is a domestic animal"),  # leading copy of the name dropped
        ("dog", "dog", "dog"),  # description is only the name -> nothing left
        ("dog", "doggy", "dog: gy"),  # SimKGC's plain startswith, no word boundary
        ("Dog", "dog is an animal", "Dog: dog is an animal"),  # case-sensitive, as in SimKGC
        ("red thing", "number 3", "red thing: number 3"),
    ],
)
def test_entity_text(name, desc, text):
    assert entity_text(name, desc) == text


def _kg():
    return KG(
        name="t",
        entity_ids=["a", "b"],
        entity_names=["alpha", "beta"],
        entity_descs=["alpha is first", ""],
        relation_ids=["r0", "r1", "r2"],
        relation_texts=["part of", "has color", "near"],
        train=torch.tensor([[0, 0, 1]]),
        valid=torch.zeros(0, 3, dtype=torch.long),
        test=torch.zeros(0, 3, dtype=torch.long),
    )


def test_entity_texts():
    assert entity_texts(_kg()) == ["alpha: is first", "beta"]


def test_relation_texts_has_2r_entries():
    assert relation_texts(_kg()) == [
        "part of", "has color", "near", "inverse part of", "inverse has color", "inverse near",
    ]


# ---- neighbour text (data.link_graph): SimKGC's strings, written out by hand ----------------------------
@pytest.mark.parametrize(
    "name, desc, names, text",
    [
        ("dog", "a pet", ["cat", "wolf"], "dog: a pet cat wolf"),
        ("dog", "", ["cat"], "dog:  cat"),  # desc "" + " " + "cat" does not start with "dog"
        ("dog", "", [], "dog:  "),  # no description, no neighbour: SimKGC still reads "dog:"
        ("dog", "dog", ["cat"], "dog: cat"),  # "dog cat" starts with the name: stripped
        ("dog", "dog", [], "dog"),  # "dog " stripped to nothing: the bare name
        ("dog", "dog is a pet", [], "dog: is a pet"),
        ("dog", " a pet", ["cat"], "dog:  a pet cat"),  # not stripped first (unlike entity_text)
        ("new york", "new", ["york city"], "new york: city"),  # the name continues into the neighbours
    ],
)
def test_linked_text(name, desc, names, text):
    assert linked_text(name, desc, names) == text


@pytest.mark.parametrize(
    "name, desc, parts",
    [
        ("dog", "a pet", ("dog: a pet", "dog: a pet")),
        ("dog", "", ("dog:", "dog:")),
        ("dog", "dog", ("dog:", "dog")),  # ":" only when a name follows
        ("dog", "dog is a pet", ("dog: is a pet", "dog: is a pet")),
        ("dog", "doggy", ("dog: gy", "dog: gy")),
    ],
)
def test_linked_prefix(name, desc, parts):
    assert linked_prefix(name, desc) == parts
    # the prefix + " " + names is SimKGC's text up to whitespace, with and without names
    with_names, without = parts
    assert linked_text(name, desc, ["cat", "wolf"]).split() == (with_names + " cat wolf").split()
    assert linked_text(name, desc, []).split() == without.split()


def test_prefix_mismatch():
    assert prefix_mismatch("new york", "new", ["york city"])
    assert not prefix_mismatch("new york", "new", ["boston"])
    assert not prefix_mismatch("new york", "new", [])
    assert not prefix_mismatch("dog", "dog", ["cat"])  # starts with the name already: linked_prefix handles it
    assert not prefix_mismatch("dog", "a pet", ["dog"])
