"""A stage's objective: its resolved terms (distill/registry.py), built for one student/teacher pair and summed.

`Objective(terms, dims)` takes the resolved spec's term list ({name, weight, params} each, as
kgc_kd/chain/stage_spec.py resolves it) and builds every registered term; it answers what the step must compute
(`needs_teacher`, `needs_teacher_logits`, `masks_inputs`, `all_layers`, the features to capture per model)
and `forward(step)` returns each term's value by name. Modules the terms own (projections, generators)
train with the student and are never exported.
"""

from __future__ import annotations

from torch import Tensor, nn

from kgc_kd.distill.registry import Dims, Step, term_class

FLAGS = ("needs_teacher", "needs_teacher_logits", "masks_inputs", "all_layers")


class Objective(nn.Module):
    def __init__(self, terms: list[dict], dims: Dims):
        super().__init__()
        self.shared = nn.ModuleDict()  # modules several terms use (TinyBERT's fit_dense)
        self.weights = {t["name"]: float(t["weight"]) for t in terms}
        built = {}
        for t in terms:
            built[t["name"]] = term_class(t["name"])(t["params"], dims, shared=self.shared)
        self.terms = nn.ModuleDict(built)

    def __getattr__(self, flag: str):
        """`needs_teacher`, `needs_teacher_logits`, `masks_inputs`, `all_layers`: whether any term declares it."""
        if flag in FLAGS:
            return any(getattr(term, flag) for term in self.terms.values())
        return super().__getattr__(flag)

    def wanted(self, role: str) -> dict[str, list[int]]:
        """Which captured features each model must provide: {kind: [layer, ...]}, over every term."""
        out: dict[str, set[int]] = {}
        for term in self.terms.values():
            for kind, layers in term.wanted(role).items():
                out.setdefault(kind, set()).update(layers)
        return {k: sorted(v) for k, v in out.items()}

    def forward(self, step: Step) -> dict[str, Tensor]:
        return {name: term(step) for name, term in self.terms.items()}
