"""`ChainStore`: the stage store, a chain's run directory, which stages are done and their rows.

The chain trains one stage after another, each taught by the one before (chain.driver drives it, one Lightning
Trainer per stage). What carries over from stage to stage and from one invocation to the next lives here,
without Lightning:

- the layout: with stage keys (`stage_spec.stage_keys`: a hash of what determines a stage's outputs,
  its own settings, the data, the seed and the keys of the stages before it), a stage lives in
  `<run.root>/stage-store/<stage>-<key>/`, shared by every run under that root: a run, a comparison or a
  sweep trial that needs a stage already trained under the same key reuses it, and one interrupted in one
  run resumes in the next. The run directory links `stages/<stage>` to its entry, so its layout stays
  `stages/<stage>/` (the trainer directory), `stages/<stage>/export/` (written by
  `kgc_kd.chain.export.StageExporter`) and `stages/<stage>/predictions_test.jsonl`. Without keys (a run
  directory read on its own) `stages/<stage>/` is read as it is;
- the lock: `claim` holds the entry's lock file while a run trains it, so two runs never train one stage at
  once (the second waits and then reuses it);
- the records: an entry's `stage.json` (its key, its row and, the teacher, the untrained baseline) and the
  run's state file `chain_state.json`: `stages` (each finished stage's row), `keys` (the key each row was
  recorded under), `order` (the order they finished in, reused stages included) and the untrained baseline
  (`untrained_test`, `untrained_eval_s`), rewritten atomically whenever a stage is recorded. A stage is done
  when its row is recorded under its current key and its export is complete, so rerunning the same command
  skips it with its row untouched;
- the test split: a stage's key leaves the test split out (`stage_spec.stage_keys`), so every row records the
  test split its metrics are on (`test_data`: its SHA-256 and triple count, `data.fingerprint`). A reused
  stage whose row names another test split than this run's (`test_is_current`) is evaluated again by the
  driver and recorded with `retested`: new test metrics, predictions and export KG, the training untouched.

It only hands on the exporter (`export` writes through `StageExporter` where the layout says); the current
teacher, the frozen bi-encoder the next stage learns from, is the driver's (`chain.driver.CurrentTeacher`).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from kgc_kd.chain.export import StageExporter
from kgc_kd.chain.lock import exclusive
from kgc_kd.chain.report import write_predictions
from kgc_kd.data.kg import KG
from kgc_kd.data.kg_export import save_kg
from kgc_kd.data.tokens import TokenCache
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.runtime.files import write_json_atomic

STATE_FILE = "chain_state.json"
STORE_DIR = "stage-store"  # under run.root
ENTRY_FILE = "stage.json"


class ChainStore:
    def __init__(self, run_dir: str | Path, tokenizer=None, keys: dict[str, str] | None = None,
                 store_root: str | Path | None = None, writes: bool = True, test_data: dict[str, Any] | None = None):
        """`tokenizer`: the source tokenizer every stage reads, saved with each export (None: not saved).
        `keys`: stage name -> stage key; with them stages live in `store_root/stage-store/` (default root: the
        run directory's parent, i.e. run.root). `writes=False` (the non-zero ranks of a multi-process run):
        read the state, never write it. `test_data`: the test split of this run's KG ({"sha256", "triples"},
        `stage_spec.test_data`), recorded with every row (None: not recorded, every row counts as current)."""
        self.run_dir = Path(run_dir)
        self.test_data = dict(test_data) if test_data is not None else None
        self.writes = writes
        self.keys = dict(keys or {})
        self.store_dir = Path(store_root if store_root is not None else self.run_dir.parent) / STORE_DIR
        self.state_path = self.run_dir / STATE_FILE
        self._state = _read_state(self.state_path)
        self.exporter = StageExporter(tokenizer)

    @property
    def tokenizer(self):
        """The source tokenizer every stage reads (the exporter saves it with each export)."""
        return self.exporter.tokenizer

    # ---- the layout ------------------------------------------------------------------------------------
    def _link(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def _entry(self, name: str) -> Path | None:
        """The stage's store entry, or None: no key, or a run directory of the layout before the store (its
        `stages/<name>` a directory of its own, which then stays where it is)."""
        link = self._link(name)
        if name not in self.keys or (link.is_dir() and not link.is_symlink()):
            return None
        return self.store_dir / f"{name}-{self.keys[name]}"

    def stage_dir(self, name: str) -> Path:
        return self._entry(name) or self._link(name)

    def export_dir(self, name: str) -> Path:
        return self.stage_dir(name) / "export"

    def open_stage(self, name: str) -> Path:
        """Create the stage's directory (and the run's `stages/<name>` link to its store entry); returns it."""
        d = self.stage_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        link = self._link(name)
        if d != link and self.writes:
            _point_link(link, os.path.relpath(d, link.parent))
        return d

    # ---- the lock ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def claim(self, name: str, lock: bool = True, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the stage's lock while it is decided and trained: another run that needs the same stage waits
        here (told who holds it, again every minute), then finds it done. `timeout_s` (run.lock_timeout_s; None:
        no limit): `chain.lock.LockTimeout` naming the lock file and its holder once that long has passed.
        Under the lock, what a killed builder left is removed first: temporary files and directories (`*.tmp`)
        in the entry, and the run's `stages/.<name>.link.tmp`. `lock=False` (the non-zero ranks of a
        multi-process run): no lock."""
        from kgc_kd.runtime.files import clear_temporaries, remove

        entry = self._entry(name)
        if entry is None or not lock:
            yield
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(entry.with_name(entry.name + ".lock"), f"[chain] {name}: another run is training {entry}",
                       timeout_s=timeout_s):
            left = clear_temporaries(entry, self.store_dir)
            link_tmp = self._link(name).with_name(f".{name}.link.tmp")
            if remove(link_tmp, self.run_dir, "a temporary link", ignore_errors=True):
                left.append(link_tmp)
            if left:
                print(f"[chain] {name}: removed what a killed run left: {', '.join(map(str, left))}", flush=True)
            yield

    # ---- finished stages ---------------------------------------------------------------------------------
    def _entry_record(self, name: str) -> dict[str, Any] | None:
        entry = self._entry(name)
        path = entry / ENTRY_FILE if entry is not None else None
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

    def _state_row(self, name: str) -> dict[str, Any] | None:
        """This run's row of stage `name`, when it was recorded under the stage's current key (a row of another
        key, e.g. before the training data changed, is not this stage's; a run without keys: any row)."""
        row = self._state["stages"].get(name)
        if row is None or name not in self.keys or self._entry(name) is None:
            return row
        return row if self._state.get("keys", {}).get(name) == self.keys[name] else None

    def is_done(self, name: str) -> bool:
        """Recorded under its current key (in this run or in the stage store), and its export complete (an export
        is renamed into place only once it is whole)."""
        recorded = self._state_row(name) is not None or self._entry_record(name) is not None
        return recorded and (self.export_dir(name) / "biencoder.json").is_file()

    def record(self, name: str, row: dict[str, Any]) -> None:
        """A finished stage's row (after its export): kept in the state file, in the order stages finish, and in
        the stage's store entry for the runs that reuse it; with the test split its metrics are on."""
        if self.test_data is not None:
            row = {**row, "test_data": self.test_data}
        entry = self._entry(name)
        if entry is not None:
            extra = ({"untrained_test": self.untrained_test, "untrained_eval_s": self.untrained_eval_s}
                     if name == "teacher" else {})
            stored = {k: v for k, v in row.items() if k != "reused_from_store"}  # this run's, not the stage's
            write_json_atomic(entry / ENTRY_FILE, {"name": name, "key": self.keys[name], "row": stored, **extra})
        self._adopt(name, row)

    def _adopt(self, name: str, row: dict[str, Any]) -> None:
        self._state["stages"][name] = row
        if name in self.keys:
            self._state.setdefault("keys", {})[name] = self.keys[name]
        order = self._state.setdefault("order", [])
        if name not in order:
            order.append(name)
        if self.writes:
            write_json_atomic(self.state_path, self._state)

    def adopt(self, name: str) -> bool:
        """A done stage joins this run: its row (from the store entry when another run trained it) is recorded in
        the run's state and the run's link is made. True when it was trained by another run. The current
        teacher is the driver's (it loads the stage's export as the next teacher)."""
        record = self._entry_record(name)
        from_store = self._state_row(name) is None and record is not None
        if from_store:
            if name == "teacher" and "untrained_test" in record:
                self.set_untrained(record["untrained_test"], record["untrained_eval_s"])
            self._adopt(name, {**record["row"], "reused_from_store": True})
        if self._entry(name) is not None:
            self.open_stage(name)
        return from_store

    def row(self, name: str) -> dict[str, Any] | None:
        """The recorded row of stage `name` in this run (on a non-writing rank: as far as it knows)."""
        return self._state["stages"].get(name)

    # ---- the test split a row's metrics are on ---------------------------------------------------------------
    def test_is_current(self, name: str) -> bool:
        """Whether stage `name`'s row was tested on this run's test split (a row that does not say: not current;
        no test split known to this store: current)."""
        if self.test_data is None:
            return True
        recorded = (self.row(name) or {}).get("test_data") or {}
        return recorded.get("sha256") == self.test_data["sha256"]

    def retested(self, name: str, test: dict[str, float], kg: KG, evaluation: dict | None, *, max_length: int,
                 link_graph: bool) -> dict[str, Any]:
        """Stage `name`, done on another test split, evaluated again on this run's (`test`: its metrics,
        `evaluation`: the module's `last_eval["test"]` for the predictions, None: none written): its row gets the
        new metrics and `test_data`, the export's KG (kg.json + kg/, `kgc_kd.predict`'s filter and candidates;
        `max_length`, `link_graph` as `export` writes them) becomes this run's, and both records are rewritten.
        The stage's training and model files are untouched (the export's model files are what a `teacher.load`
        of it is keyed on). Returns the new row."""
        old = dict(self.row(name) or {})
        previous = (old.get("test_data") or {}).get("sha256")
        row = {**old, "test": dict(test), "retested_from": previous}
        if self.writes:
            # each file written to a new name and renamed: the copies hard-linked into other exports stay whole
            save_kg(kg, self.export_dir(name), max_length=max_length, link_graph=link_graph)
            if evaluation is not None:
                self.write_predictions(name, kg, evaluation)
        self.record(name, row)
        return self._state["stages"][name]

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

    # ---- what a finished stage leaves: written by the exporter, where the layout says ----------------------
    def export(self, name: str, net: BiEncoder, kg: KG, *, max_length: int, link_graph: bool,
               tokens: TokenCache | None = None) -> None:
        """The stage's export into `export_dir(name)` (`StageExporter.export`), confined to run.root."""
        self.exporter.export(self.export_dir(name), net, kg, max_length=max_length, link_graph=link_graph,
                             tokens=tokens, root=self.store_dir.parent)

    def write_predictions(self, name: str, kg: KG, evaluation: dict) -> None:
        """The stage's test predictions (`evaluation`: a module's `last_eval["test"]`), one JSON line per query."""
        write_predictions(self.stage_dir(name) / "predictions_test.jsonl", kg, evaluation)


def _read_state(path: Path) -> dict[str, Any]:
    """The run's state file as written (an empty one when there is none yet), with its `stages` table."""
    state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    state.setdefault("stages", {})
    return state


def _point_link(link: Path, target: str) -> None:
    """`link` -> `target` (a directory); atomic: an old link (another key) is replaced, never half-written."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
