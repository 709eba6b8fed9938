"""The text an encoder sees for an entity, exactly as SimKGC builds it ("name: description")."""

from __future__ import annotations

from kgc_kd.data.kg import KG


def entity_text(name: str, desc: str) -> str:
    """SimKGC drops a description's leading copy of the name, so the name is not read twice."""
    desc = desc.strip()
    if desc.startswith(name):
        desc = desc[len(name):].strip()
    return f"{name}: {desc}" if desc else name


def entity_texts(kg: KG) -> list[str]:
    return [entity_text(n, d) for n, d in zip(kg.entity_names, kg.entity_descs)]


def relation_texts(kg: KG) -> list[str]:
    """Forward then inverse relation texts, indexed by relation id in [0, 2R)."""
    return [kg.relation_text(r) for r in range(2 * kg.num_relations)]
