import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from kgc_kd import fit
from kgc_kd.data import synthetic_kg

FAST = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false", "data.batch_size=8",
        "data.eval_batch_size=32", "data.max_length=24", "optim.lr=1e-3", "run.logger=csv"]


def _write_kgbert_dir(d):
    """A hand-written KG in the KG-BERT layout (.txt text tables, .tsv splits, no final newline)."""
    d.mkdir()
    ents = {f"e{i}": name for i, name in enumerate(
        ["red thing", "green thing", "blue thing", "small thing", "large thing", "old thing", "new thing",
         "fast thing", "slow thing", "warm thing"])}
    (d / "entity2text.txt").write_text("\n".join(f"{k}\t{v}" for k, v in ents.items()))
    (d / "relation2text.txt").write_text("r_plus\tplus\nr_is\tis a")
    triples = [(f"e{i}", "r_plus", f"e{(i + 1) % 10}") for i in range(10)]
    triples += [(f"e{i}", "r_is", f"e{(i + 3) % 10}") for i in range(10)]
    lines = ["\t".join(t) for t in triples]
    (d / "train.tsv").write_text("\n".join(lines[:16]))
    (d / "dev.tsv").write_text("\n".join(lines[16:18]) + "\n")
    (d / "test.tsv").write_text("\n".join(lines[18:]) + "\n")
    return d


def test_fit_teacher_only_writes_run_directory(tmp_path, tiny_plm_dir):
    argv = FAST + ["data=synthetic", f"model.plm={tiny_plm_dir}", "trainer.max_epochs=2", f"run.root={tmp_path}",
                   "run.name=e2e", "teacher.only=true"]
    result = fit.main(argv)
    run = tmp_path / "e2e"
    metrics = json.loads((run / "metrics.json").read_text())
    (teacher,) = metrics["stages"]
    assert teacher["name"] == "teacher" and teacher["steps"] == result["stages"][0]["steps"] > 0
    for key in ("mrr", "mr", "hits@1", "hits@3", "hits@10", "tail/mrr", "head/mrr"):
        assert key in teacher["test"]
    assert metrics["untrained_test"]["mrr"] > 0
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.data.source == "synthetic" and cfg.trainer.max_epochs == 2
    preds = [json.loads(line) for line in (run / "stages/teacher/predictions_test.jsonl").read_text().splitlines()]
    n_test = len(synthetic_kg(30, 3, 90, seed=0).test)  # SyntheticCfg defaults
    assert len(preds) == 2 * n_test and {p["direction"] for p in preds} == {"head", "tail"}
    assert all(len(p["topk"]) == 10 for p in preds)
    # checkpoints hold plain containers only: torch's default weights_only=True load must work
    ckpt = torch.load(teacher["best_checkpoint"])
    assert ckpt["hyper_parameters"]["model"]["plm"] == str(tiny_plm_dir)
    assert (run / "stages/teacher/checkpoints/last.ckpt").is_file()
    for name in ("report.json", "report.md", "report.png", "summary.txt"):
        assert (run / name).is_file()


def test_fit_on_hand_written_kgbert_directory(tmp_path, tiny_plm_dir):
    kg_dir = _write_kgbert_dir(tmp_path / "mykg")
    result = fit.main(FAST + [f"data={kg_dir}", f"model.plm={tiny_plm_dir}", "trainer.max_epochs=1",
                              f"run.root={tmp_path / 'runs'}", "eval.untrained_baseline=false", "teacher.only=true"])
    assert result["data"].startswith("mykg: 10 entities, 2 relations, 16 / 2 / 2")
    assert list((tmp_path / "runs").glob("mykg-*/metrics.json"))
    assert result["stages"][0]["test"]["mrr"] > 0


def test_cli_rejects_unknown_key_with_its_name(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kgc_kd.fit", "trainer.max_epoch=3", f"run.root={tmp_path}"],
                          capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "trainer.max_epoch" in proc.stderr


def test_cli_bad_data_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        fit.main([f"data={tmp_path / 'empty'}", f"run.root={tmp_path / 'runs'}"])
    assert exc.value.code == 2
    assert not (tmp_path / "runs").exists()  # nothing written for a run that could not start
