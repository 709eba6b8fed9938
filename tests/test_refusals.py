"""A refused run leaves nothing (issue 28, cases 2 and 6): the real entry point (`kgc_kd.fit.main`, in-process)
with one bad value per key exits 2 with an `error:` line naming the key, and neither `run.root` nor the
directories beside it (nor the working directory) hold anything new: no config.yaml, no token-cache entry, no
stage-store directory, no lock, nothing written through a name that climbs out of the root.

Every key with a range (`kgc_kd.config.RANGES`) has its case (a test checks the list covers them), so a range
added without its refusal here fails. The config-level refusals come before any data or model is loaded (a few
milliseconds each); `data.max_length` beyond the PLM's positions needs the PLM's config.json and is refused by
the preflight checks, after loading the default KG and tokenizer but still before anything is written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kgc_kd import fit
from kgc_kd.config import OBJECTIVE_KEYS, RANGES

# One bad value per key of RANGES (a stage's key as stages.N.x, given for one stage), as the command line gives it.
BAD = {
    "data.max_length": "4",
    "data.batch_size": "1",
    "data.eval_batch_size": "0",  # issue 28: a DataLoader traceback after writing config.yaml and a token cache
    "data.num_workers": "-1",
    "data.synthetic.num_entities": "1",
    "data.synthetic.num_relations": "0",
    "data.synthetic.num_triples": "9",
    "data.synthetic.seed": "-1",
    "model.temperature": "0",
    "model.margin": "-0.1",
    "model.pre_batch": "-1",
    "model.pre_batch_weight": "-0.5",
    "optim.lr": "-1e-4",
    "optim.weight_decay": "-0.1",
    "optim.warmup_steps": "-1",
    "optim.betas": "[0.9,1.5]",
    "optim.eps": "0",
    "optim.check_finite_every_n_steps": "0",
    "trainer.devices": "0",
    "trainer.num_nodes": "0",
    "trainer.max_epochs": "0",
    "trainer.max_steps": "0",
    "trainer.gradient_clip_val": "-1",
    "trainer.accumulate_grad_batches": "0",
    "trainer.check_val_every_n_epoch": "0",
    "trainer.val_check_interval": "1.5",
    "trainer.limit_train_batches": "-1",
    "trainer.limit_val_batches": "2.5",
    "trainer.log_every_n_steps": "0",
    "trainer.num_sanity_val_steps": "-2",
    "eval.chunk_size": "0",
    "eval.memory_budget_gb": "0",
    "eval.rerank_weight": "-0.05",
    "eval.rerank_hops": "-1",
    "eval.topk": "0",
    "eval.val_max_queries": "0",
    "teacher.epochs": "-3",  # issue 28: a Lightning traceback after writing config.yaml, a cache entry, a store dir
    "teacher.lr": "0",
    "distill.alpha": "1.5",
    "distill.beta": "-0.1",
    "distill.pkd": "2",
    "distill.kd_temperature": "0",
    "stages.0.layers": "0",
    "stages.0.layer_map": "[-1,0,1,2,3,4]",
    "stages.1.mask_rate": "1.0",
    "stages.0.pre_batch": "-1",
    "stages.2.epochs": "0",
    "stages.0.lr": "-1",
    "run.seed": "-1",
    "run.lock_timeout_s": "0",
    "run.checkpoint_every_n_steps": "-1",
}
# More refusals of the same kind: the names (case 2), a stage's own objective key, Lightning's endless stage, and
# issue 28's max_length, which only the PLM's config.json can refuse (kgc_kd/chain/preflight.py).
MORE = {
    "stage name": (["stages.0.name=../../../victim"], "stages[0].name"),
    "run name": (["run.name=../x"], "run.name"),
    "absolute run name": (["run.name=/tmp/kgc-kd-victim"], "run.name"),
    "stage objective key": (["stages.1.alpha=1.5"], "stages[1].alpha"),
    "no epoch or step limit": (["trainer.max_epochs=-1"], "trainer.max_epochs"),
    "max_length beyond the PLM's positions": (["data.max_length=100000000"], "data.max_length"),
}


def _shown(key: str) -> str:
    """The key as the error line names it: stages[i].x for stages.i.x."""
    return re.sub(r"^stages\.(\d+)\.", r"stages[\1].", key)


CASES = {f"{key}={value}": ([f"{key}={value}"], _shown(key)) for key, value in BAD.items()} | MORE


def test_every_range_has_its_refusal():
    covered = {re.sub(r"^stages\.\d+\.", "stages.N.", key) for key in BAD}
    stage_objective = {f"stages.N.{k}" for k in OBJECTIVE_KEYS}
    assert covered - stage_objective == set(RANGES)


def _tree(root: Path) -> dict[str, int]:
    """Every path under `root` (links not followed) with its size: what a run could have written."""
    return {str(p.relative_to(root)): (p.lstat().st_size if not p.is_dir() or p.is_symlink() else -1)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_run_exits_2_naming_the_key_and_leaves_nothing(tmp_path, monkeypatch, capsys, case):
    items, key = CASES[case]
    parent = tmp_path / "parent"  # run.root's parent: where `../x` names would land
    root = parent / "runs"
    root.mkdir(parents=True)
    (parent / "victim").mkdir()  # what case 2 deleted: a directory beside the root, with a file
    (parent / "victim" / "keep.txt").write_text("not the run's\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # anything written relative to the working directory lands in the snapshot too
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as exc:
        fit.main([f"run.root={root}", "run.logger=csv", *items])
    err = capsys.readouterr().err
    assert exc.value.code == fit.EXIT_BAD_INPUT == 2, err
    assert re.search(rf"^error: {re.escape(key)}=", err, re.M), err
    assert "Traceback" not in err
    assert _tree(tmp_path) == before  # nothing new, nothing removed, nothing changed in size
