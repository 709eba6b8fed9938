"""kgc_kd.data.text: SimKGC's entity text ("name: desc") and the forward + inverse relation texts."""

from __future__ import annotations

import pytest
import torch

from kgc_kd.data.kg import KG
from kgc_kd.data.text import entity_text, entity_texts, relation_texts


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
