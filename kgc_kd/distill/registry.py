"""Loss terms registered by name (as torchdistill's and PyKEEN's registries do), each declaring its parameters.

A term is one class: its registered `name`, the `params` it takes (with their defaults), whether it reads the
frozen teacher (`needs_teacher`), which layer internals it needs captured (`features`, see
models/features.py), whether the stage's input masking applies to it (`masks_inputs`: PMD's MGFD reads the
same masked inputs in teacher and student) and whether it needs every layer's hidden states
(`all_layers`). `check` validates a parameter set without building anything (the config layer and
preflight resolve a stage's objective this way before any model exists); the constructor builds the term
for a concrete student/teacher pair (`Dims`), and `forward(step)` returns its value for one training step.

This module imports nothing of kgc_kd.distill (torchdistill's way): the package's `__init__` imports the
modules that register the shipped terms, so any import of the registry through the package (`from
kgc_kd.distill.registry import ...`) knows them all. Adding a term = one new registered class in a module
of kgc_kd/distill/, that module listed in kgc_kd/distill/__init__.py, plus its test;
docs/configuration.md ("Adding a loss term") shows a short example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

TERMS: dict[str, type[LossTerm]] = {}


@dataclass(frozen=True)
class Dims:
    """What a term may need to know of the two encoders (query side; both sides have the same shape)."""

    student_hidden: int
    teacher_hidden: int
    student_intermediate: int
    teacher_intermediate: int
    student_heads: int
    teacher_heads: int
    student_layers: int
    teacher_layers: int

    @classmethod
    def of(cls, student_config: Any, teacher_config: Any) -> Dims:
        s, t = student_config, teacher_config
        return cls(s.hidden_size, t.hidden_size, s.intermediate_size, t.intermediate_size, s.num_attention_heads,
                   t.num_attention_heads, s.num_hidden_layers, t.num_hidden_layers)


@dataclass
class Step:
    """One training step's shared computations, made once by the stage module and read by every term.

    `views[key]` = {"side": query|entity, "inputs": masked inputs, "counts": mask counts} for key in hr and
    entities (deduplicated batch) or tail/head; `student[key]` / `teacher[key]` = {"vec", "hidden", "states",
    "features"}; `s_rows` / `t_rows` = per-batch-row vectors (hr, tail, head, tail_hidden, tail_counts);
    `logits_s` / `logits_t` = the (global-batch) contrastive logits of student and teacher (teacher without
    margin); `pooling` = the student's pooling."""

    views: dict[str, dict]
    student: dict[str, dict]
    teacher: dict[str, dict] | None
    s_rows: dict[str, Tensor]
    t_rows: dict[str, Tensor] | None
    logits_s: Tensor
    logits_t: Tensor | None = None
    pooling: str = "mean"


class LossTerm(nn.Module):
    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    needs_teacher: ClassVar[bool] = True
    needs_teacher_logits: ClassVar[bool] = False
    features: ClassVar[tuple[str, ...]] = ()
    masks_inputs: ClassVar[bool] = False
    all_layers: ClassVar[bool] = False

    def __init__(self, params: dict[str, Any], dims: Dims, shared: nn.ModuleDict | None = None):
        """`shared`: the objective's modules that several terms use (TinyBERT's fit_dense)."""
        super().__init__()
        self.p = dict(params)
        self.dims = dims

    @classmethod
    def check(cls, params: dict[str, Any], dims: Dims | None = None) -> None:
        """Raise ValueError naming the parameter when a value is not one this term takes. `dims` (None when no
        model is known yet, as in the config layer) allows checks against the encoders' shapes."""

    def wanted(self, role: str) -> dict[str, list[int]]:
        """Captured features this term needs from the student or the teacher: {kind: [layer, ...]}."""
        return {}

    def forward(self, step: Step) -> Tensor:
        raise NotImplementedError


def register(cls: type[LossTerm]) -> type[LossTerm]:
    """Class decorator: make the term available by its `name` in configs."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in TERMS and TERMS[cls.name] is not cls:
        raise ValueError(f"loss term {cls.name!r} is registered twice ({TERMS[cls.name].__name__}, {cls.__name__})")
    TERMS[cls.name] = cls
    return cls


def term_class(name: str) -> type[LossTerm]:
    if name not in TERMS:
        raise ValueError(f"unknown loss term {name!r}; known: {', '.join(sorted(TERMS))}")
    return TERMS[name]


def known_terms() -> list[str]:
    return sorted(TERMS)


def resolve_term(entry: dict[str, Any], dims: Dims | None = None) -> dict[str, Any]:
    """{name, weight, params}: the term's declared defaults filled in; a parameter it does not declare, a
    missing name or a bad value is a ValueError that names it. Entries may give parameters flat
    (`{name: score, weight: 0.1, loss: kl}`, the YAML form) or under `params`; None means the default."""
    entry = {k: v for k, v in dict(entry).items() if v is not None}
    name = entry.pop("name", None)
    if not name:
        raise ValueError(f"a loss term without a name: {entry}")
    cls = term_class(str(name))
    weight = float(entry.pop("weight", 1.0))
    given = {**{k: v for k, v in dict(entry.pop("params", {}) or {}).items() if v is not None}, **entry}
    unknown = sorted(set(given) - set(cls.params))
    if unknown:
        takes = ", ".join(cls.params) or "none"
        raise ValueError(f"loss term {name!r} has no parameter {unknown[0]!r}; its parameters: {takes}")
    if weight < 0:
        raise ValueError(f"loss term {name!r}: weight={weight:g}; expected >= 0")
    params = {**cls.params, **given}
    cls.check(params, dims)
    return {"name": str(name), "weight": weight, "params": params}
