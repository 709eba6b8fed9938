import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import save_tiny_plm
from kgc_kd import fit
import kgc_kd.compare.report as compare_report
from kgc_kd.compare.__main__ import main
from kgc_kd.compare.aggregate import aggregate, beats_baseline, mean_std
from kgc_kd.compare.plan import build_plan
from kgc_kd.compare.report import format_markdown, verdict_lines
from kgc_kd.config import ConfigError, conf_dir, load_config, run_name
from kgc_kd.lit.distill_module import DistillModule
from kgc_kd.lit.kgc_module import KGCModule
from kgc_kd.chain.plan import plan_config
from kgc_kd.chain.tracking import init_kwargs


# ---- aggregation: pure functions on hand-made per-seed metrics -------------------------------------------------
def _rec(seed, **grades):
    return {"seed": seed, "run_dir": f"runs/r{seed}",
            "test": {g: {"mrr": v[0], "hits@1": v[1], "hits@10": v[2]} for g, v in grades.items()}}


HAND = {
    "none": [_rec(1, g4=(0.5, 0.4, 0.9), g2=(0.30, 0.2, 0.8)), _rec(2, g4=(0.6, 0.5, 0.9), g2=(0.31, 0.2, 0.8)),
             _rec(3, g4=(0.7, 0.6, 1.0), g2=(0.32, 0.2, 0.8))],
    "pmd": [_rec(1, g4=(0.55, 0.4, 0.9), g2=(0.40, 0.3, 0.8)), _rec(2, g4=(0.62, 0.5, 0.9), g2=(0.42, 0.3, 0.9)),
            _rec(3, g4=(0.69, 0.6, 1.0), g2=(0.44, 0.3, 0.9))],
}


def test_aggregate_matches_hand_computed_means_sample_stds_and_paired_differences():
    out = aggregate(HAND, ["g4", "g2"])
    none, pmd = out["g4"]["none"], out["g4"]["pmd"]
    # none g4: 0.5, 0.6, 0.7 -> mean 0.6, sample std sqrt((0.01 + 0 + 0.01) / 2) = 0.1
    assert none["n"] == 3 and none["mrr_mean"] == pytest.approx(0.6) and none["mrr_std"] == pytest.approx(0.1)
    # pmd g4: 0.55, 0.62, 0.69 -> mean 0.62, std sqrt((0.0049 * 2) / 2) = 0.07
    assert pmd["mrr_mean"] == pytest.approx(0.62) and pmd["mrr_std"] == pytest.approx(0.07)
    assert pmd["hits@1_mean"] == pytest.approx(0.5) and pmd["hits@10_mean"] == pytest.approx(2.8 / 3)
    assert pmd["per_seed"]["mrr"] == [0.55, 0.62, 0.69] and pmd["seeds"] == [1, 2, 3]
    assert pmd["run_dirs"] == ["runs/r1", "runs/r2", "runs/r3"]
    # paired by seed: +0.05, +0.02, -0.01 -> mean 0.02, std 0.03, two positive; 0.02 < max(0.07, 0.1)
    d = pmd["vs_none"]
    assert d["per_seed"] == pytest.approx([0.05, 0.02, -0.01])
    assert (d["mean"], d["std"], d["positive"], d["n"]) == (pytest.approx(0.02), pytest.approx(0.03), 2, 3)
    assert d["seed_spread"] == pytest.approx(0.1) and d["beyond_spread"] is False
    assert "vs_none" not in none
    # g2: none 0.30/0.31/0.32 (std 0.01), pmd 0.40/0.42/0.44 (std 0.02): gain 0.11 > 0.02, won on every seed
    d2 = out["g2"]["pmd"]["vs_none"]
    assert d2["mean"] == pytest.approx(0.11) and d2["std"] == pytest.approx(0.01) and d2["positive"] == 3
    assert d2["seed_spread"] == pytest.approx(0.02) and d2["beyond_spread"] is True
    assert beats_baseline(out, "pmd") == {"g4": False, "g2": True}


def test_one_seed_has_no_spread_and_pairs_use_common_seeds_only():
    assert mean_std([0.25]) == (0.25, None)
    runs = {"none": [HAND["none"][0], HAND["none"][1]], "pmd": [HAND["pmd"][1]]}  # pmd ran seed 2 only
    out = aggregate(runs, ["g4"])
    pmd = out["g4"]["pmd"]
    assert pmd["n"] == 1 and pmd["mrr_std"] is None and pmd["mrr_mean"] == 0.62
    assert pmd["vs_none"]["seeds"] == [2] and pmd["vs_none"]["mean"] == pytest.approx(0.02)
    assert pmd["vs_none"]["std"] is None and pmd["vs_none"]["beyond_spread"] is None
    without_baseline = aggregate({"pmd": HAND["pmd"]}, ["g4"])
    assert "vs_none" not in without_baseline["g4"]["pmd"]


# ---- the plan: arguments of every chain, checked before anything trains ---------------------------------------
def test_plan_from_the_umls_comparison_file():
    cfg_file = conf_dir() / "experiment" / "compare_umls.yaml"
    plan = build_plan("none,pmd,logit_kd", "3", [f"config={cfg_file}", "distill.kd_temperature=2.0"])
    assert plan.teacher.cfg.teacher.only and plan.teacher.cfg.teacher.epochs == 3
    assert plan.teacher.cfg.data.source == "umls" and list(plan.teacher.cfg.stages) == []
    assert plan.teacher_export == str(plan.teacher.run_dir / "stages" / "teacher" / "export")
    assert plan.grades == ["pmd6", "pmd4", "pmd2"] and plan.seeds == [42, 43, 44]
    assert [(c.objective, c.seed) for c in plan.chains] == [(o, s) for s in (42, 43, 44) for o in ("none", "pmd", "logit_kd")]
    assert len({c.run_dir for c in plan.chains}) == 9 and plan.out_dir == Path("runs") / "compare" / plan.name
    for c in plan.chains:
        assert c.cfg.run.seed == c.seed and c.cfg.teacher.load == plan.teacher_export and c.cfg.teacher.epochs == 3
        assert c.cfg.run.wandb_group == plan.name
        # the directory is the one `fit` derives from the same items: the W&B group is not part of it
        assert c.run_dir.name == run_name(load_config(c.argv[:-1]))
    none, logit = plan.chains[0].cfg.distill, plan.chains[2].cfg.distill
    assert (none.alpha, none.beta, list(none.terms)) == (0.0, 0.0, [])
    assert (logit.alpha, logit.score_loss, logit.kd_temperature) == (0.5, "kl", 2.0)  # the item after its preset
    # (a shorthand key such as distill.kd_temperature is refused by an objective spelt as a term list, e.g. makd)
    with pytest.raises(ConfigError, match=r"distill\.kd_temperature=2\.0 belongs to the alpha/beta form"):
        build_plan("none,makd", "1", [f"config={cfg_file}", "distill.kd_temperature=2.0"])
    explicit = build_plan("pmd", "7,9", [], teacher="some/export", name="mine")
    assert explicit.teacher is None and explicit.seeds == [7, 9] and explicit.name == "mine"
    assert [c.cfg.teacher.load for c in explicit.chains] == ["some/export"] * 2


def test_a_variant_is_a_row_of_its_own_and_leaves_the_other_chains_unchanged():
    items = ["data=umls", "teacher.epochs=3", "stages.0.mask_rate=0.2"]
    plain = build_plan("none,pmd", "2", items, teacher="t/export", name="x")
    spec = "pmd_kl=pmd distill.score_loss=kl distill.kd_temperature=4 stages.0.mask_rate=0"  # overrides the 0.2
    plan = build_plan("none,pmd", "2", items, teacher="t/export", name="x", variants=[spec])
    assert plan.objectives == ["none", "pmd", "pmd_kl"]
    assert plan.variants == {"pmd_kl": {"preset": "pmd", "items": spec.split()[1:]}}
    assert [(c.objective, c.seed) for c in plan.chains] == [(o, s) for s in (42, 43) for o in ("none", "pmd", "pmd_kl")]
    same = {(c.objective, c.seed): c.run_dir for c in plain.chains}
    for c in plan.chains:
        if c.objective != "pmd_kl":  # finished runs of the other rows are found again
            assert c.run_dir == same[(c.objective, c.seed)] and c.argv == next(
                p.argv for p in plain.chains if (p.objective, p.seed) == (c.objective, c.seed))
    v = [c.cfg for c in plan.chains if c.objective == "pmd_kl"]
    p = [c.cfg for c in plan.chains if c.objective == "pmd"]
    assert [(c.distill.score_loss, c.distill.kd_temperature, c.stages[0].mask_rate) for c in v] == [("kl", 4.0, 0.0)] * 2
    assert [(c.distill.score_loss, c.distill.kd_temperature, c.stages[0].mask_rate) for c in p] == [("mse", None, 0.2)] * 2
    assert v[0].distill.alpha == p[0].distill.alpha == 0.1  # the rest is the preset's
    only = build_plan("", "1", items, teacher="t/export", name="y", variants=["a=none", "b=pmd distill.alpha=0.3"])
    assert only.objectives == ["a", "b"] and only.chains[1].cfg.distill.alpha == 0.3


def test_every_challenger_gets_its_verdict_and_variants_are_spelled_out():
    grades = aggregate({"none": HAND["none"], "pmd": HAND["pmd"], "pmd_kl": HAND["pmd"][:1]}, ["g4", "g2"])
    comparison = {"name": "c", "date": "d", "command": "cmd", "objectives": ["none", "pmd", "pmd_kl"],
                  "variants": {"pmd_kl": {"preset": "pmd", "items": ["distill.score_loss=kl"]}}, "seeds": [1, 2, 3],
                  "grades": grades, "teacher": {"export": "t", "test": {"mrr": 0.9, "hits@1": 0.8, "hits@10": 1.0}},
                  "chains": []}
    lines = verdict_lines(comparison)
    assert lines[0].startswith("`pmd` beats `none`") and "g2 (+0.1100 vs spread 0.0200)" in lines[0]
    assert "Not beyond the spread at: g4" in lines[1]
    assert lines[2].startswith("`pmd_kl` beats `none`") and lines[3] == "Cannot tell (a single seed, no spread) at: g4, g2."
    md = format_markdown(comparison)
    assert "Variant `pmd_kl`: `distill=pmd` `distill.score_loss=kl`." in md
    assert "loaded unchanged by every chain: checked when every chain is done." in md  # not yet known: not "NO"
    comparison["teacher"]["same_in_every_chain"] = False
    assert "loaded unchanged by every chain: NO." in format_markdown(comparison)


def test_wandb_group_names_the_comparison_and_leaves_the_run_directory_alone(tmp_path):
    cfg = load_config(["run.wandb_group=cmp"])
    assert run_name(cfg) == run_name(load_config([]))
    assert init_kwargs(plan_config(cfg), "pmd4", "pmd4", {})["group"] == "cmp"
    assert init_kwargs(plan_config(load_config([])), "pmd4", "pmd4", {})["group"] == run_name(cfg)


BAD = {
    "unknown objective": (["--objectives", "none,nope"], r"unknown objective(s) nope"),
    "unknown key": (["--objectives", "none", "trainer.max_epoch=3"], "trainer.max_epoch"),
    "distill item": (["--objectives", "none", "distill=pmd"], "--objectives"),
    "run.name": (["--objectives", "none", "run.name=x"], "--name"),
    "stage loss override": (["--objectives", "none", "stages=[{name: s, layers: 1, alpha: 0.5}]"], "stages[0].alpha"),
    "zero seeds": (["--objectives", "none", "--seeds", "0"], "--seeds 0"),
    "stage deeper than the teacher": (["--objectives", "none", "stages=[{name: s, layers: 9}]"], "stages[0].layers=9"),
    "no objective": (["--seeds", "1"], "no objective given"),
    "variant without preset": (["--objectives", "none", "--variant", "kl"], "expected 'LABEL=PRESET"),
    "variant of an unknown preset": (["--objectives", "none", "--variant", "kl=nope"], "unknown objective 'nope'"),
    "variant label taken": (["--objectives", "none,pmd", "--variant", "pmd=makd"], "already compared"),
    "variant bad item": (["--objectives", "none", "--variant", "v=pmd distill.alphx=1"], "distill.alphx"),
    "distilling baseline": (["--objectives", "none,pmd", "distill.alpha=0.3"], "baseline `none` distil"),
    "name leaving the root": (["--objectives", "none", "--name", "../x"], "--name='../x'"),  # one name, never a path
    "name of the parent": (["--objectives", "none", "--name", ".."], "--name='..'"),
    "name with a plus": (["--objectives", "none", "--name", "a+b"], "--name='a+b'"),  # the one pattern
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_before_anything_is_written(tmp_path, tiny_plm_dir, capsys, case):
    args, expected = BAD[case]
    with pytest.raises(SystemExit) as exc:
        main([*args, "data=nations", f"model.plm={tiny_plm_dir}", f"run.root={tmp_path / 'runs'}"])
    assert exc.value.code == fit.EXIT_BAD_INPUT
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-bert"]  # nor anything beside it (the PLM is the test's)


def test_a_compare_directory_that_leads_out_of_the_root_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "compare").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match="lies outside its root"):
        build_plan("none", "1", ["data=nations", f"run.root={tmp_path / 'runs'}"], name="mine")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_the_default_name_is_a_name_whatever_the_data_directory_is_called():
    from kgc_kd.compare.plan import default_name
    from kgc_kd.config import check_name

    cfg = load_config(["data=nations"])
    cfg.data.source = "/data/my KG+v2 (copy)/"
    name = default_name(cfg, ["none", "pmd"], [1, 2])
    assert check_name(name, "--name") == name and name.startswith("my_KG_v2__copy_-")
    long = default_name(cfg, [f"variant_{i}" for i in range(20)], [1])
    assert check_name(long, "--name") == long and len(long) == 93


# ---- end to end: a tiny comparison, none vs pmd over two seeds --------------------------------------------------
def fast_items(plm, root):
    return ["data=synthetic", f"model.plm={plm}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "data.batch_size=16", "data.max_length=24", "optim.lr=1e-3", "teacher.epochs=1", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", "eval.untrained_baseline=false", "eval.save_predictions=false",
            "run.logger=csv", f"run.root={root}", "stages=[{name: g2, layers: 2, mask_rate: 0.2}, {name: g1, layers: 1}]"]


def _count_steps(mp, calls):
    for cls in (KGCModule, DistillModule):
        original = cls.training_step

        def counted(self, batch, batch_idx, _original=original, _name=cls.__name__):
            calls.append(_name)
            return _original(self, batch, batch_idx)

        mp.setattr(cls, "training_step", counted)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    plm = save_tiny_plm(base / "plm4", num_layers=4)
    argv = ["--objectives", "none,pmd", "--seeds", "2", "--name", "tiny", *fast_items(plm, base / "runs")]
    calls: list[str] = []
    writes: list[dict] = []  # what each write of the comparison's files held (the real write still runs)

    def spy(out_dir, comparison, _write=compare_report.write):
        text = _write(out_dir, comparison)
        writes.append({**json.loads((out_dir / "compare.json").read_text()), "md": (out_dir / "compare.md").read_text()})
        return text

    with pytest.MonkeyPatch.context() as mp:
        _count_steps(mp, calls)
        mp.setattr(compare_report, "write", spy)  # compare() imports it when it runs
        result = main(argv)
    return {"root": base / "runs", "plm": plm, "argv": argv, "result": result, "calls": calls, "writes": writes}


def test_files_are_rewritten_after_every_chain_so_an_interrupted_comparison_shows_its_seeds(compared):
    w = compared["writes"]
    assert [(x["complete"], x["chains_done"], x["chains_planned"]) for x in w] == [
        (False, 1, 4), (False, 2, 4), (False, 3, 4), (True, 4, 4)]
    # seed by seed: after two chains seed 42 has both objectives, and the paired difference exists
    assert [(c["objective"], c["seed"]) for c in w[1]["chains"]] == [("none", 42), ("pmd", 42)]
    assert w[1]["grades"]["g1"]["pmd"]["vs_none"]["n"] == 1 and w[1]["grades"]["g1"]["pmd"]["mrr_std"] is None
    assert "**In progress: 2 of 4 chains done**" in w[1]["md"] and "In progress" not in w[-1]["md"]


def test_compare_writes_json_markdown_and_plot_with_every_field(compared):
    out = compared["root"] / "compare" / "tiny"
    data = json.loads((out / "compare.json").read_text())
    assert data["seeds"] == [42, 43] and data["objectives"] == ["none", "pmd"]
    assert data["command"].startswith("python -m kgc_kd.compare --objectives none,pmd --seeds 2")
    assert data["date"][:2] == "20" and list(data["grades"]) == ["g2", "g1"]
    for grade in ("g2", "g1"):
        for obj in ("none", "pmd"):
            s = data["grades"][grade][obj]
            assert {"mrr_mean", "mrr_std", "n", "hits@1_mean", "hits@10_mean", "per_seed", "run_dirs"} <= set(s)
            assert s["n"] == 2 and s["seeds"] == [42, 43] and len(s["run_dirs"]) == 2
        d = data["grades"][grade]["pmd"]["vs_none"]
        assert {"mean", "std", "positive", "n"} <= set(d) and d["n"] == 2
    assert len(data["chains"]) == 4 and all(c["status"] == "ran" for c in data["chains"])
    md = (out / "compare.md").read_text()
    assert "## g2" in md and "## g1" in md and "| pmd | " in md and "/2 |" in md
    assert "`pmd` beats `none` by more than the seed spread" in md
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG" and (out / "compare.png").stat().st_size > 5000


def test_compare_statistics_are_those_of_the_runs_reports(compared):
    """Recomputed independently from each chain's own report.json (statistics.stdev is the sample std)."""
    data = compared["result"]
    for grade, by_obj in data["grades"].items():
        per = {}
        for obj, s in by_obj.items():
            rows = [next(r for r in json.loads((Path(d) / "report.json").read_text())["stages"] if r["name"] == grade)
                    for d in s["run_dirs"]]
            mrr = [r["test"]["mrr"] for r in rows]
            per[obj] = mrr
            assert s["mrr_mean"] == pytest.approx(sum(mrr) / 2, abs=1e-12)
            assert s["mrr_std"] == pytest.approx(statistics.stdev(mrr), abs=1e-12)
            assert s["mrr_std"] == pytest.approx(abs(mrr[0] - mrr[1]) / math.sqrt(2), abs=1e-12)
            assert s["hits@10_mean"] == pytest.approx(sum(r["test"]["hits@10"] for r in rows) / 2, abs=1e-12)
        diffs = [p - n for p, n in zip(per["pmd"], per["none"])]
        d = by_obj["pmd"]["vs_none"]
        assert d["per_seed"] == pytest.approx(diffs, abs=1e-12) and d["positive"] == sum(x > 0 for x in diffs)
    # the seed reaches the students: the two seeds of one objective do not train the same students
    g2 = data["grades"]["g2"]["none"]["per_seed"]
    assert g2["mrr"][0] != g2["mrr"][1] or g2["hits@1"][0] != g2["hits@1"][1]


def test_the_teacher_is_trained_once_and_every_chain_loads_it_unchanged(compared):
    data, root = compared["result"], compared["root"]
    # 2 teacher steps (one epoch of trainer.limit_train_batches=2), then 4 chains x 2 grades x 2 student steps
    assert compared["calls"].count("KGCModule") == 2 and compared["calls"].count("DistillModule") == 16
    t = data["teacher"]
    trained = [p.parent.parent.parent for p in root.glob("*/stages/teacher/checkpoints")]
    assert trained == [Path(t["run_dir"])] and t["trained_steps"] == 2 and t["seed"] == 42
    assert OmegaConf.load(Path(t["run_dir"]) / "config.yaml").teacher.only
    assert t["export"] == str(Path(t["run_dir"]) / "stages" / "teacher" / "export") and t["same_in_every_chain"]
    for c in data["chains"]:
        assert c["teacher_loaded_from"] == t["export"]
        assert c["teacher_test"] == data["chains"][0]["teacher_test"]
        cfg = OmegaConf.load(Path(c["run_dir"]) / "config.yaml")
        assert cfg.run.seed == c["seed"] and cfg.teacher.load == t["export"]
    for k, v in t["test"].items():  # the export reproduces the teacher run's own test metrics
        assert data["chains"][0]["teacher_test"][k] == pytest.approx(v, abs=1e-6)


def test_rerun_reads_finished_chains_without_training(compared):
    calls: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        _count_steps(mp, calls)
        again = main(compared["argv"])
    assert calls == []
    assert again["teacher"]["status"] == "done before" and all(c["status"] == "done before" for c in again["chains"])
    assert again["grades"] == compared["result"]["grades"]


def test_a_chain_gives_the_same_metrics_as_alone_under_fit(compared, tmp_path):
    """Nothing leaks from the chains run before it in the same process: the last chain (pmd, seed 43),
    rerun on its own in another directory, gives the same test metrics."""
    chain = compared["result"]["chains"][-1]
    assert (chain["objective"], chain["seed"]) == ("pmd", 43)
    root = f"run.root={compared['root']}"
    assert root in chain["argv"] and chain["argv"][-1].startswith("run.wandb_group=")
    items = [f"run.root={tmp_path}" if a == root else a for a in chain["argv"][:-1]]
    alone = {r["name"]: r["test"] for r in fit.main(items)["stages"]}
    report = json.loads((Path(chain["run_dir"]) / "report.json").read_text())
    assert {r["name"]: r["test"] for r in report["stages"]} == alone


def _pb_string(field: int, text: str) -> bytes:
    """A short string field as protobuf encodes it: W&B's run record has run_group = 6, display_name = 8."""
    data = text.encode()
    return bytes([(field << 3) | 2, len(data)]) + data


@pytest.mark.slow  # a child process
def test_wandb_offline_groups_the_chains_and_logs_the_table(compared, tmp_path):
    """A fresh process (wandb keeps process-wide state): the chain's stage runs are in the comparison's
    group, and the comparison's own run, in the same group, holds the table and the plot."""
    export = compared["result"]["teacher"]["export"]
    items = [i for i in fast_items(compared["plm"], tmp_path / "runs") if not i.startswith(("run.logger", "stages"))]
    proc = subprocess.run([sys.executable, "-m", "kgc_kd.compare", "--objectives", "none", "--seeds", "1",
                           "--teacher", export, "--name", "cmp-wb", *items, "run.logger=wandb",
                           "stages=[{name: g1, layers: 1}]"],
                          env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "compare" / "cmp-wb"
    data = json.loads((out / "compare.json").read_text())
    chain_dir = Path(data["chains"][0]["run_dir"])
    records = [next(r.glob("run-*.wandb")).read_bytes() for r in (chain_dir / "wandb").glob("offline-run-*")]
    (stage,) = [r for r in records if _pb_string(8, f"{chain_dir.name}/g1") in r]
    assert _pb_string(6, "cmp-wb") in stage
    (cmp_run,) = list((out / "wandb").glob("offline-run-*"))
    record = next(cmp_run.glob("run-*.wandb")).read_bytes()
    assert _pb_string(6, "cmp-wb") in record and _pb_string(8, "cmp-wb/compare") in record
    (table,) = list((cmp_run / "files" / "media").rglob("*.table.json"))
    rows = json.loads(table.read_text())["data"]
    assert [(r[0], r[1], r[2]) for r in rows] == [("g1", "none", 1)]
    assert rows[0][3] == pytest.approx(data["grades"]["g1"]["none"]["mrr_mean"])
    assert list((cmp_run / "files" / "media").rglob("*.png"))


# ---- the command line ---------------------------------------------------------------------------------------
def test_help_shows_its_options_the_forms_and_the_groups_with_their_presets(capsys):
    from test_cli import check_help

    # the objectives are the distill group's presets
    check_help(capsys, main, "-h", "python -m kgc_kd.compare ",
               ("--objectives", "--variant", "--seeds", "--teacher", "config=PATH", "GROUP=PRESET", "key=value",
                "docs/compare.md", "  3    a non-finite loss", "  143  stopped by SIGTERM"))


def test_unknown_option_exits_2_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--objectives", "none", "--bogus", f"run.root={tmp_path / 'runs'}"])
    assert exc.value.code == fit.EXIT_BAD_INPUT
    assert "error: unrecognized arguments: --bogus" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_validation_mrr_is_aggregated_and_paired_beside_test():
    """Hand-computed: val MRR per seed (0.50, 0.54) vs none (0.40, 0.42): paired gains 0.10, 0.12 (mean 0.11,
    beyond the larger seed std 0.0283); compare.md shows val beside test and says so."""
    from kgc_kd.compare.aggregate import aggregate
    from kgc_kd.compare.report import format_markdown

    t = {"mrr": 0.3, "hits@1": 0.2, "hits@10": 0.5}
    runs = {"none": [{"seed": 1, "run_dir": "a", "test": {"g": t}, "val": {"g": 0.40}},
                     {"seed": 2, "run_dir": "b", "test": {"g": t}, "val": {"g": 0.42}}],
            "pmd": [{"seed": 1, "run_dir": "c", "test": {"g": t}, "val": {"g": 0.50}},
                    {"seed": 2, "run_dir": "d", "test": {"g": t}, "val": {"g": 0.54}}]}
    grades = aggregate(runs, ["g"])
    s = grades["g"]["pmd"]
    assert s["val_mrr_mean"] == pytest.approx(0.52) and s["val_mrr_std"] == pytest.approx(statistics.stdev([0.5, 0.54]))
    dv = s["val_vs_none"]
    assert dv["mean"] == pytest.approx(0.11) and dv["seed_spread"] == pytest.approx(0.0282843, abs=1e-6)
    assert dv["beyond_spread"] is True and s["vs_none"]["mean"] == pytest.approx(0.0)
    md = format_markdown({"name": "x", "date": "d", "command": "c", "teacher": {"export": "e", "test": t},
                          "seeds": [1, 2], "objectives": ["none", "pmd"], "grades": grades, "chains": []})
    assert "| pmd | 0.5200 ± 0.0283 | +0.1100 ± 0.0141 | 0.3000 ± 0.0000 |" in md
    assert "On validation (what a choice may use), beyond the spread at: g." in md
