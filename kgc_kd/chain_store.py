"""`ChainStore`: a chain's run directory, which stages are done, their rows, their exports and the current teacher.

The chain trains one stage after another, each taught by the one before (chain.py drives it, one Lightning
Trainer per stage). What carries over from stage to stage and from one invocation to the next lives here,
without Lightning:

- the layout: `stages/<stage>/` (a stage's trainer directory), `stages/<stage>/export/` (its Hugging Face
  directories, `biencoder.json` and `kg.json`) and `stages/<stage>/predictions_test.jsonl`;
- the state file `chain_state.json`: `stages` (each finished stage's row), `order` (the order they finished
  in) and the untrained baseline (`untrained_test`, `untrained_eval_s`), rewritten atomically whenever a
  stage is recorded. A stage is done when its row is recorded and its export is complete, so rerunning the
  same command skips it with its row untouched;
- the current teacher: the frozen bi-encoder the next stage learns from. The driver sets it after a stage
  is tested (`hand_over`) or, when a stage is skipped, loads it from that stage's export (`load_teacher`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from kgc_kd.data.kg import KG, kg_to_json
from kgc_kd.files import write_json_atomic
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.reporting import write_predictions

STATE_FILE = "chain_state.json"


def freeze(net: BiEncoder) -> BiEncoder:
    return net.requires_grad_(False).eval()


class ChainStore:
    def __init__(self, run_dir: str | Path, tokenizer=None):
        """`tokenizer`: the source tokenizer every stage reads, saved with each export (None: not saved)."""
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer
        self.state_path = self.run_dir / STATE_FILE
        self._state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self._state.setdefault("stages", {})
        self.teacher: BiEncoder | None = None

    # ---- the layout ------------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def export_dir(self, name: str) -> Path:
        return self.stage_dir(name) / "export"

    # ---- finished stages ---------------------------------------------------------------------------------
    def is_done(self, name: str) -> bool:
        """Recorded, and its export complete (an export is renamed into place only once it is whole)."""
        return name in self._state["stages"] and (self.export_dir(name) / "biencoder.json").is_file()

    def record(self, name: str, row: dict[str, Any]) -> None:
        """A finished stage's row (after its export): kept in the state file, in the order stages finish."""
        self._state["stages"][name] = row
        order = self._state.setdefault("order", [])
        if name not in order:
            order.append(name)
        write_json_atomic(self.state_path, self._state)

    def rows(self) -> list[dict[str, Any]]:
        """The finished stages' rows, in the order they finished."""
        return [self._state["stages"][n] for n in self._state.get("order", []) if n in self._state["stages"]]

    # ---- the untrained baseline ------------------------------------------------------------------------
    def set_untrained(self, metrics: dict[str, float] | None, seconds: float) -> None:
        """Test metrics of the encoder before training (None: not measured) and the seconds that took; written
        to the state file with the next recorded stage (the teacher's)."""
        self._state["untrained_test"] = metrics
        self._state["untrained_eval_s"] = seconds

    @property
    def untrained_test(self) -> dict[str, float] | None:
        return self._state.get("untrained_test")

    @property
    def untrained_eval_s(self) -> float | None:
        return self._state.get("untrained_eval_s")

    # ---- what a finished stage leaves --------------------------------------------------------------------
    def export(self, name: str, net: BiEncoder, kg: KG, *, max_length: int, link_graph: bool) -> None:
        """The stage as Hugging Face directories + `kg.json`. Written to a temporary directory and renamed, so
        a half-written export is never mistaken for one; a kill between the renames leaves the old one whole."""
        final = self.export_dir(name)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with torch.no_grad():
            net_cpu = copy.deepcopy(net).cpu()
        net_cpu.save_pretrained(tmp, self.tokenizer)
        meta = {"max_length": max_length, "link_graph": link_graph}  # predict builds the same inputs
        (tmp / "kg.json").write_text(json.dumps(kg_to_json(kg, **meta)))
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def write_predictions(self, name: str, kg: KG, evaluation: dict) -> None:
        """The stage's test predictions (`evaluation`: a module's `last_eval["test"]`), one JSON line per query."""
        write_predictions(self.stage_dir(name) / "predictions_test.jsonl", kg, evaluation)

    # ---- the teacher of the next stage -------------------------------------------------------------------
    def hand_over(self, net: BiEncoder) -> None:
        """A tested stage's bi-encoder teaches the next stage: a frozen copy, so training the next stage
        cannot change it."""
        self.teacher = freeze(copy.deepcopy(net))

    def load_teacher(self, name: str) -> None:
        """A finished stage is skipped: its export teaches the next stage (read with the source tokenizer's ids)."""
        self.teacher = freeze(BiEncoder.from_pretrained(self.export_dir(name), source_ids=True))
