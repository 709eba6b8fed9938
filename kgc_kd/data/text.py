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


# ---- neighbour text (data.link_graph; the graph side is kgc_kd.data.link_graph) --------------------------
def linked_text(name: str, desc: str, neighbour_names: list[str]) -> str:
    """SimKGC's text of an entity whose short description gets neighbour names (its vectorize() with
    use_link_graph): desc + " " + the names joined by spaces, then its "name: desc" rule on that string.
    Unlike `entity_text`, the description is not stripped first (SimKGC does not), and an entity without
    description or neighbours reads "name:" (the appended " " is a non-empty description)."""
    desc = desc + " " + " ".join(neighbour_names)
    if desc.startswith(name):
        desc = desc[len(name):].strip()
    return f"{name}: {desc}" if desc else name


def linked_prefix(name: str, desc: str) -> tuple[str, str]:
    """`linked_text` split for token assembly: (text before the names when some follow, text when none do).

    With at least one name, `linked_text` is the first text + " " + the names (so its word pieces are the
    first text's followed by each name's, for a tokenizer that splits on whitespace, as BERT's does); with
    none it is the second, which is the first or (when the description is only the name) the first less its
    final ":". Exception, checked by `prefix_mismatch`: a name that continues its description past a space."""
    d = desc + " "
    if d.startswith(name):
        rest = d[len(name):].strip()
        return f"{name}: {rest}".rstrip(), (f"{name}: {rest}" if rest else name)
    return f"{name}: {d}".rstrip(), f"{name}: {d}".rstrip()


def prefix_mismatch(name: str, desc: str, neighbour_names: list[str]) -> bool:
    """True where `linked_prefix` + names differs from SimKGC's text: the name extends `desc + " "` and the
    names continue it (e.g. name "new york", description "new", first neighbour "york ..."), so SimKGC
    strips the name from a string that only then starts with it."""
    d = desc + " "
    return not d.startswith(name) and (d + " ".join(neighbour_names)).startswith(name)


def linked_texts(kg: KG) -> list[tuple[str, str]]:
    """`linked_prefix` of every entity (only used for entities whose description is short)."""
    return [linked_prefix(n, d) for n, d in zip(kg.entity_names, kg.entity_descs)]
