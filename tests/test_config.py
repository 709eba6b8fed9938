"""kgc_kd.config: defaults, overrides, presets, validation, plain export and run names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from kgc_kd.config import ConfigError, TrainerCfg, conf_dir, config_hash, load_config, run_name, to_plain


@pytest.fixture(autouse=True)
def empty_conf(tmp_path, monkeypatch):
    """Isolate from the checkout's conf/ (edited concurrently): presets come from an empty tmp dir."""
    d = tmp_path / "conf-empty"
    d.mkdir()
    monkeypatch.setenv("KGC_KD_CONF", str(d))
    return d


@pytest.fixture
def conf(tmp_path, monkeypatch):
    d = tmp_path / "conf"
    (d / "trainer").mkdir(parents=True)
    (d / "trainer" / "fast.yaml").write_text("max_epochs: 7\n")
    (d / "trainer" / "gpu.yaml").write_text("accelerator: gpu\nprecision: bf16-mixed\n")
    monkeypatch.setenv("KGC_KD_CONF", str(d))
    return d


# ---- defaults and dotlist overrides --------------------------------------------------------------------
def test_defaults_without_arguments():
    for argv in ([], None):
        cfg = load_config(argv)
        assert cfg.data.source == "umls"
        assert cfg.model.plm == "minilm"
        assert cfg.trainer.max_epochs == TrainerCfg().max_epochs == 1
        assert cfg.model.pooling == "mean"
        assert cfg.run.name is None


def test_dotlist_overrides_convert_types():
    cfg = load_config(["trainer.max_epochs=3", "model.margin=0.0", "data.dedup_entities=false",
                       "data.synthetic.seed=4"])
    assert cfg.trainer.max_epochs == 3 and type(cfg.trainer.max_epochs) is int
    assert cfg.model.margin == 0.0 and type(cfg.model.margin) is float
    assert cfg.data.dedup_entities is False
    assert cfg.data.synthetic.seed == 4
    # untouched keys keep their defaults
    assert cfg.model.temperature == 0.05


@pytest.mark.parametrize("arg,key", [
    ("trainer.max_epoch=5", "trainer.max_epoch"),
    ("data.nope=1", "data.nope"),
    ("data.synthetic.nope=1", "data.synthetic.nope"),
])
def test_unknown_key_is_named(arg, key):
    with pytest.raises(ConfigError) as exc:
        load_config([arg])
    assert key in str(exc.value)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        load_config(["data.batch_size=abc"])


@pytest.mark.parametrize("arg", ["+x=1", "+trainer.max_epochs=1", "~model.margin=1"])
def test_hydra_prefixes_rejected(arg):
    with pytest.raises(ConfigError, match=r"prefix"):
        load_config([arg])


def test_argument_without_equals_rejected():
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        load_config(["trainer.max_epochs"])


# ---- config=PATH ----------------------------------------------------------------------------------------
def test_config_file_is_merged(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("trainer:\n  max_epochs: 9\nmodel:\n  margin: 0.5\ndata:\n  source: nations\n")
    cfg = load_config([f"config={f}"])
    assert cfg.trainer.max_epochs == 9
    assert cfg.model.margin == 0.5
    assert cfg.data.source == "nations"
    assert cfg.model.plm == "minilm"  # not in the file: default kept


def test_config_file_with_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("trainer:\n  max_epochs: 9\nmodel:\n  bogus: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config([f"config={f}"])
    assert "model.bogus" in str(exc.value)
    assert str(f) in str(exc.value)


def test_missing_config_file(tmp_path):
    f = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(f))):
        load_config([f"config={f}"])


# ---- GROUP=PRESET and data=DIR ---------------------------------------------------------------------------
def test_data_directory_sets_source(tmp_path):
    d = tmp_path / "MyKG"
    d.mkdir()
    cfg = load_config([f"data={d}"])
    assert cfg.data.source == str(d)
    assert run_name(cfg).startswith("MyKG-")


def test_data_directory_with_sibling_yaml_is_still_a_source(tmp_path):
    d = tmp_path / "KG"
    d.mkdir()
    (tmp_path / "KG.yaml").write_text("max_length: 77\n")  # not a preset: it is outside conf/data
    cfg = load_config([f"data={d}"])
    assert cfg.data.source == str(d)
    assert cfg.data.max_length == 50


def test_group_preset_loaded_from_conf_dir(conf):
    cfg = load_config(["trainer=fast"])
    assert cfg.trainer.max_epochs == 7
    assert cfg.trainer.accelerator == "auto"  # the rest of the group keeps its defaults
    cfg = load_config(["trainer=gpu"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.max_epochs == TrainerCfg().max_epochs


def test_unknown_preset_lists_available(conf):
    with pytest.raises(ConfigError) as exc:
        load_config(["trainer=nope"])
    msg = str(exc.value)
    assert "nope" in msg and "fast" in msg and "gpu" in msg


def test_preset_with_unknown_key_is_named(conf):
    (conf / "trainer" / "typo.yaml").write_text("max_epoch: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(["trainer=typo"])
    assert "trainer.max_epoch" in str(exc.value)
    assert "typo.yaml" in str(exc.value)


# ---- validation and order ------------------------------------------------------------------------------
@pytest.mark.parametrize("arg,fragment", [
    ("data.batch_size=1", "data.batch_size"),
    ("model.pooling=max", "model.pooling"),
    ("run.logger=wandbx", "run.logger"),
    ("optim.lr=0", "optim.lr"),
])
def test_validate_rejects(arg, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config([arg])


@pytest.mark.parametrize("args,message", [
    (["stages=[]"], "stages: the list has no stages; a chain needs at least one student stage (to train and "
                    "evaluate the teacher alone, set teacher.only=true)"),
    (["stages.1.alpha=0.95"], "stages[1] (pmd4): stages[1].alpha + distill.beta + distill.pkd = 0.95 + 0.1 + 0 > 1; "
                              "expected at most 1"),
    (["distill.pkd=0.85"], "stages[0] (pmd6): distill.alpha + distill.beta + distill.pkd = 0.1 + 0.1 + 0.85 > 1"),
    (["distill.alpha=-0.1"], "distill.alpha=-0.1: expected a weight in [0, 1]"),
    (["stages.2.mask_rate=1.0"], "stages[2].mask_rate=1.0: expected a rate in [0, 1)"),
    (["stages.0.mask_rate=-0.1"], "stages[0].mask_rate=-0.1: expected a rate in [0, 1)"),
    (["stages.0.layer_map=[1,2]"], "stages[0].layer_map=[1, 2]: expected 6 entries, one per student layer"),
    (["stages.1.layers=0"], "stages[1].layers=0: expected >= 1"),
    (["eval.val_max_queries=0"], "eval.val_max_queries=0: expected >= 1 (queries; or null: all)"),
    (["eval.val_max_queries=-5"], "eval.val_max_queries=-5: expected >= 1"),
    (["eval.memory_budget_gb=0"], "eval.memory_budget_gb=0.0: expected > 0 (GB; or null: no budget)"),
    (["eval.memory_budget_gb=-2"], "eval.memory_budget_gb=-2.0: expected > 0"),
])
def test_validate_names_the_key_and_the_expectation(args, message):
    with pytest.raises(ConfigError) as exc:
        load_config(args)
    assert message in str(exc.value)


def test_weights_summing_to_one_and_explicit_terms_pass():
    load_config(["distill.alpha=0.5", "distill.beta=0.5"])  # CE weight 0 is allowed
    cfg = load_config(["distill.alpha=0.9", "distill.beta=0.9", "distill.terms=[{name: ce}, {name: score}]"])
    assert [t.name for t in cfg.distill.terms] == ["ce", "score"]  # an explicit list does not use alpha/beta
    with pytest.raises(ConfigError, match="stages\\[0\\] \\(pmd6\\): distill.alpha"):
        load_config(["distill.alpha=0.9", "distill.beta=0.9", "stages.1.terms=[{name: ce}]"])  # stage 0 uses them


def test_teacher_only_runs_no_stage_and_says_so_in_the_resolved_config():
    cfg = load_config(["teacher.only=true"])
    assert cfg.teacher.only and len(cfg.stages) == 0
    assert "stages: []" in OmegaConf.to_yaml(cfg)


def test_valid_edge_values_pass():
    cfg = load_config(["data.batch_size=2", "model.pooling=cls", "run.logger=none"])
    assert (cfg.data.batch_size, cfg.model.pooling, cfg.run.logger) == (2, "cls", "none")
    assert load_config([]).eval.val_max_queries is None  # default: every validation query
    assert load_config(["eval.val_max_queries=1"]).eval.val_max_queries == 1
    assert load_config(["eval.val_max_queries=5", "eval.val_max_queries=null"]).eval.val_max_queries is None
    assert load_config([]).eval.memory_budget_gb == 8.0  # default: 8 GB of ranking scratch
    assert load_config(["eval.memory_budget_gb=null"]).eval.memory_budget_gb is None  # eval.chunk_size alone
    assert load_config(["eval.memory_budget_gb=0.25"]).eval.memory_budget_gb == 0.25


def test_later_override_wins(conf, tmp_path):
    assert load_config(["trainer.max_epochs=2", "trainer.max_epochs=4"]).trainer.max_epochs == 4
    assert load_config(["trainer=fast", "trainer.max_epochs=2"]).trainer.max_epochs == 2
    assert load_config(["trainer.max_epochs=2", "trainer=fast"]).trainer.max_epochs == 7
    f = tmp_path / "exp.yaml"
    f.write_text("trainer:\n  max_epochs: 9\n")
    assert load_config([f"config={f}", "trainer=fast"]).trainer.max_epochs == 7
    assert load_config(["trainer=fast", f"config={f}"]).trainer.max_epochs == 9


# ---- to_plain -------------------------------------------------------------------------------------------
def _assert_builtin(obj, path="cfg"):
    # tuple is accepted: the structured `optim.betas: tuple[float, float]` comes back as a tuple
    assert not isinstance(obj, (DictConfig, ListConfig)), path
    assert type(obj) in (dict, list, tuple, str, int, float, bool, type(None)), f"{path}: {type(obj)}"
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str, path
            _assert_builtin(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _assert_builtin(v, f"{path}[{i}]")


def test_to_plain_is_builtin_only():
    cfg = load_config(["optim.betas=[0.8,0.99]", "trainer.devices=[0,1]"])
    plain = to_plain(cfg)
    assert type(plain) is dict
    _assert_builtin(plain)
    assert plain["data"]["source"] == "umls"
    assert list(plain["optim"]["betas"]) == [0.8, 0.99]
    assert list(plain["trainer"]["devices"]) == [0, 1]
    assert plain["run"]["name"] is None
    assert set(plain) == {"data", "model", "optim", "trainer", "eval", "teacher", "distill", "stages", "run"}
    assert [s["name"] for s in plain["stages"]] == ["pmd6", "pmd4", "pmd2"]


# ---- run names ------------------------------------------------------------------------------------------
def test_explicit_run_name_wins():
    assert run_name(load_config(["run.name=my-run"])) == "my-run"


def test_default_run_name_is_stable_hash():
    name = run_name(load_config(["trainer.max_epochs=3"]))
    assert re.fullmatch(r"umls-[0-9a-f]{8}", name)
    assert run_name(load_config(["trainer.max_epochs=3"])) == name


def test_run_name_uses_basename_of_source(tmp_path):
    d = tmp_path / "WN18RR"
    d.mkdir()
    for src in (str(d), str(d) + "/"):
        assert re.fullmatch(r"WN18RR-[0-9a-f]{8}", run_name(load_config([f"data.source={src}"])))


@pytest.mark.parametrize("arg", ["trainer.max_epochs=6", "model.margin=0.03", "data.source=nations",
                                 "data.synthetic.seed=1", "optim.lr=0.0002", "run.seed=1", "model.pooling=cls"])
def test_run_name_changes_with_any_other_key(arg):
    assert run_name(load_config([arg])) != run_name(load_config([]))


def test_config_hash_ignores_run_name():
    base = load_config([])
    named = load_config(["run.name=foo"])
    assert config_hash(named) == config_hash(base)
    assert named.run.name == "foo"  # hashing does not strip the name from the config itself
    assert run_name(named) == "foo"
    assert config_hash(load_config(["run.name=bar", "trainer.max_epochs=3"])) == \
        config_hash(load_config(["trainer.max_epochs=3"]))


REPO_CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("path", sorted(REPO_CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO_CONF)))
def test_every_shipped_yaml_loads(path, monkeypatch):
    monkeypatch.setenv("KGC_KD_CONF", str(REPO_CONF))
    group = path.parent.name
    fill = ["data.source=/some/kg", "model.plm=/some/plm"]
    argv = [f"config={path}"] if group == "experiment" else [f"{group}={path.stem}"]
    cfg = load_config(argv + fill)
    assert not OmegaConf.missing_keys(cfg)


def test_required_value_in_a_preset_is_not_silently_defaulted(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.yaml").write_text("source: ???\nbatch_size: 512\n")
    monkeypatch.setenv("KGC_KD_CONF", str(tmp_path))
    with pytest.raises(ConfigError, match="data.source"):
        load_config(["data=big"])
    assert load_config(["data=big", "data.source=nations"]).data.source == "nations"


def test_value_that_is_not_yaml_is_taken_literally():
    assert load_config(["data.name_separator=, "]).data.name_separator == ", "


def test_checkpoint_every_n_steps_is_checked_and_not_part_of_the_run_directory():
    with pytest.raises(ConfigError) as exc:
        load_config(["run.checkpoint_every_n_steps=-1"])
    assert "run.checkpoint_every_n_steps=-1: expected >= 0" in str(exc.value)
    assert load_config([]).run.checkpoint_every_n_steps == 1000
    assert load_config(["run.checkpoint_every_n_steps=0"]).run.checkpoint_every_n_steps == 0  # epoch ends only
    # how often a run saves is not what it trains: a rerun with another interval resumes the same directory
    assert run_name(load_config(["run.checkpoint_every_n_steps=50"])) == run_name(load_config([]))


@pytest.mark.parametrize("preset, epochs", [("wn18rr_simkgc", 50), ("fb15k237_simkgc", 10), ("wn18rr_pmd", 50),
                                            ("fb15k237_pmd", 10)])
def test_the_paper_recipes_train_their_teacher_for_the_papers_epochs(preset, epochs):
    """SimKGC: 50 epochs on WN18RR, 10 on FB15k-237 (the teacher's epochs are teacher.epochs, else
    trainer.max_epochs; the embedded default chain's teacher.epochs=2 must not leak into a recipe)."""
    cfg = load_config([f"config=conf/experiment/{preset}.yaml", "data.source=x", "model.plm=y"])
    assert (cfg.teacher.epochs if cfg.teacher.epochs is not None else cfg.trainer.max_epochs) == epochs


# ---- loader workers / pinned memory and the finite-loss check: unset means auto --------------------------------
def test_loader_and_finite_check_keys_default_to_auto_and_take_values():
    cfg = load_config([])
    assert cfg.data.num_workers is None and cfg.data.pin_memory is None
    assert cfg.optim.check_finite_every_n_steps is None
    cfg = load_config(["data.num_workers=3", "data.pin_memory=false", "optim.check_finite_every_n_steps=25"])
    assert cfg.data.num_workers == 3 and cfg.data.pin_memory is False and cfg.optim.check_finite_every_n_steps == 25


@pytest.mark.parametrize("arg, key", [("data.pin_memroy=true", "pin_memroy"), ("optim.check_finite=5", "check_finite"),
                                      ("data.workers=2", "workers")])
def test_misspelt_loader_and_check_keys_are_errors(arg, key):
    with pytest.raises(ConfigError, match=key):
        load_config([arg])


@pytest.mark.parametrize("arg, fragment", [("data.num_workers=-1", "data.num_workers=-1: expected >= 0"),
                                           ("optim.check_finite_every_n_steps=0",
                                            "optim.check_finite_every_n_steps=0: expected >= 1")])
def test_loader_and_check_values_are_validated(arg, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config([arg])


# ---- experiment=NAME and an objective replaced, not merged ---------------------------------------------------
@pytest.fixture
def recipes(tmp_path, monkeypatch):
    """A recipe in the alpha/beta form and a distill preset with a term list (the shapes of wn18rr_pmd, mgd)."""
    d = tmp_path / "conf"
    (d / "experiment").mkdir(parents=True)
    (d / "distill").mkdir()
    (d / "trainer").mkdir()
    (d / "experiment" / "recipe.yaml").write_text(
        "stages:\n  - {name: s4, layers: 4}\n  - {name: s2, layers: 2}\n"
        "distill:\n  alpha: 0.3\n  beta: 0.2\n  score_loss: kl\n")
    (d / "distill" / "listed.yaml").write_text("terms:\n  - {name: ce, weight: 0.9}\n  - {name: mgd, weight: 0.1}\n")
    (d / "trainer" / "ddp.yaml").write_text("strategy: ddp\n")
    monkeypatch.setenv("KGC_KD_CONF", str(d))
    return d


def test_experiment_names_a_recipe_as_config_would_merge_it(recipes):
    by_name = load_config(["experiment=recipe"])
    by_path = load_config([f"config={recipes / 'experiment' / 'recipe.yaml'}"])
    assert to_plain(by_name) == to_plain(by_path)
    assert [s.name for s in by_name.stages] == ["s4", "s2"] and by_name.distill.alpha == 0.3
    with pytest.raises(ConfigError, match=r"experiment=nope: no preset 'nope' .*\['recipe'\]"):
        load_config(["experiment=nope"])
    with pytest.raises(ConfigError, match="no preset"):
        load_config(["experiment=../experiment/recipe"])  # a name, never a path


@pytest.mark.parametrize("order", ["preset last", "recipe last"])
def test_the_objective_given_last_replaces_the_one_before(recipes, order):
    items = ["experiment=recipe", "distill=listed"] if order == "preset last" else ["distill=listed", "experiment=recipe"]
    cfg = load_config([*items, "trainer=ddp"])
    assert [s.name for s in cfg.stages] == ["s4", "s2"] and cfg.trainer.strategy == "ddp"
    if order == "preset last":  # the preset's term list, none of the recipe's alpha/beta keys left beside it
        assert [t["name"] for t in cfg.distill.terms] == ["ce", "mgd"]
        assert (cfg.distill.alpha, cfg.distill.beta, cfg.distill.score_loss) == (0.1, 0.1, None)  # the defaults
    else:  # the recipe's alpha/beta form, the preset's terms gone
        assert list(cfg.distill.terms) == [] and (cfg.distill.alpha, cfg.distill.score_loss) == (0.3, "kl")
        # a single key still merges into the objective in force
        assert load_config([*items, "distill.beta=0.25"]).distill.alpha == 0.3


# ---- ranges of the numeric keys and names under a root (issue 28) ---------------------------------------------
def _numeric_keys() -> list[str]:
    """Every key of the schema that holds a number (or numbers): int/float fields, optional or in a tuple/list, and
    the trainer keys typed Any that Lightning reads as numbers; a stage's keys as `stages.N.x`."""
    import dataclasses
    import typing

    from kgc_kd.config import Config, StageCfg

    def numeric(hint, untyped: bool) -> bool:
        """int/float, Optional of one, a tuple or list of them; `untyped`: Any too (Lightning's number-or-text keys)."""
        if hint in (int, float) or (untyped and hint is typing.Any):
            return True
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (typing.get_origin(hint) in (typing.Union, tuple, list) and bool(args)
                and all(numeric(a, untyped) for a in args))

    def walk(cls, prefix: str) -> list[str]:
        keys = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint, key = hints[f.name], f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hint):
                keys += walk(hint, key + ".")
            elif key == "stages":
                keys += walk(StageCfg, "stages.N.")
            elif numeric(hint, untyped=prefix == "trainer."):
                keys.append(key)
        return keys

    return walk(Config, "")


def test_every_numeric_key_has_a_range_and_every_range_a_key():
    from kgc_kd.config import OBJECTIVE_KEYS, RANGES

    keys = _numeric_keys()
    assert {"trainer.devices", "trainer.val_check_interval", "optim.betas", "stages.N.epochs",
            "data.synthetic.num_triples", "run.lock_timeout_s"} <= set(keys)  # the walk sees every kind of field
    # a stage's objective keys share the distill group's range (one entry, `distill.x`)
    keys = [k for k in keys if not (k.startswith("stages.N.") and k.split(".")[-1] in OBJECTIVE_KEYS)]
    assert sorted(keys) == sorted(RANGES)


@pytest.mark.parametrize("arg, message", [
    ("teacher.epochs=-3", "teacher.epochs=-3: expected >= 1 (or null: trainer.max_epochs)"),
    ("teacher.epochs=0", "teacher.epochs=0: expected >= 1"),
    ("stages.1.epochs=0", "stages[1].epochs=0: expected >= 1 (or null: trainer.max_epochs)"),
    ("trainer.max_epochs=0",
     "trainer.max_epochs=0: expected >= 1 (or -1: no epoch limit, with trainer.max_steps >= 1)"),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1 (no epoch limit) with trainer.max_steps=-1 (no step limit): a "
                              "stage would never end"),
    ("trainer.max_steps=0", "trainer.max_steps=0: expected >= 1 (or -1: no step limit)"),
    ("data.eval_batch_size=0", "data.eval_batch_size=0: expected >= 1"),
    ("data.batch_size=1", "data.batch_size=1: expected >= 2 (in-batch negatives)"),
    ("data.max_length=4", "data.max_length=4: expected >= 5"),
    ("data.synthetic.num_triples=9", "data.synthetic.num_triples=9: expected >= 10"),
    ("optim.betas=[0.9,1.0]", "optim.betas=[0.9, 1.0]: expected 2 values, each in [0, 1)"),
    ("optim.eps=0", "optim.eps=0.0: expected > 0"),
    ("optim.lr=inf", "optim.lr=inf: expected > 0"),
    ("optim.weight_decay=nan", "optim.weight_decay=nan: expected >= 0"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1.0: expected >= 0 (0: no clipping; or null: as 0)"),
    ("trainer.devices=0", "trainer.devices=0: expected a number of devices >= 1, -1 (all), 'auto', or distinct"),
    ("trainer.devices=[1,1]", "trainer.devices=[1, 1]: expected a number of devices"),
    ("trainer.devices=gpu", "trainer.devices='gpu': expected a number of devices"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches=1.5: expected a number of batches >= 0, or a "
                                        "fraction in [0, 1] (or null: every batch)"),
    ("trainer.limit_val_batches=true", "trainer.limit_val_batches=True: expected a number of batches >= 0"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0: expected a number of training batches >= 1, or a "
                                     "fraction of the epoch in (0, 1], or a duration 'DD:HH:MM:SS'"),
    ("trainer.val_check_interval=00:00:00:00", "trainer.val_check_interval='00:00:00:00': expected"),
    ("trainer.num_sanity_val_steps=-2",
     "trainer.num_sanity_val_steps=-2: expected >= 0 (or -1: every validation batch)"),
    ("stages.2.kd_temperature=0", "stages[2].kd_temperature=0.0: expected > 0 (or null: distill.kd_temperature)"),
    ("stages.0.layer_map=[0,1,2,3,4,-1]", "stages[0].layer_map=[0, 1, 2, 3, 4, -1]: expected layer indices, each >= 0"),
    ("run.seed=-1", "run.seed=-1: expected a seed in [0, 4294967295]"),
    ("run.seed=4294967296", "run.seed=4294967296: expected a seed in [0, 4294967295]"),
    ("run.lock_timeout_s=0", "run.lock_timeout_s=0.0: expected > 0 (seconds; or null: wait as long as it takes)"),
    ("model.margin=-0.1", "model.margin=-0.1: expected >= 0"),
    ("eval.topk=0", "eval.topk=0: expected >= 1"),
])
def test_a_number_out_of_its_range_is_refused_naming_key_value_and_range(arg, message):
    with pytest.raises(ConfigError) as exc:
        load_config([arg])
    assert message in str(exc.value)


@pytest.mark.parametrize("args", [
    ["trainer.max_epochs=-1", "trainer.max_steps=100"], ["trainer.devices=-1"], ["trainer.devices=auto"],
    ["trainer.devices=[0, 1]"], ["trainer.devices=0,1"], ["trainer.devices=2"], ["trainer.val_check_interval=0.25"],
    ["trainer.val_check_interval=50"], ["trainer.val_check_interval=00:01:30:00"], ["trainer.limit_train_batches=0"],
    ["trainer.limit_val_batches=1.0"], ["trainer.limit_val_batches=0.5"], ["trainer.gradient_clip_val=null"],
    ["trainer.gradient_clip_val=0"], ["trainer.num_sanity_val_steps=-1"], ["optim.betas=[0, 0.5]"], ["run.seed=0"],
    ["run.seed=4294967295"], ["run.lock_timeout_s=0.5"], ["teacher.epochs=null"], ["stages.0.epochs=1"],
    ["data.synthetic.num_entities=2", "data.synthetic.num_triples=10"], ["eval.rerank_weight=0", "eval.rerank_hops=0"],
    ["model.margin=0", "model.pre_batch_weight=0", "optim.weight_decay=0", "optim.warmup_steps=0"],
])
def test_edges_and_special_values_of_the_ranges_pass(args):
    load_config(args)


@pytest.mark.parametrize("arg, key", [
    ("stages.0.name=../../../victim", "stages[0].name='../../../victim'"), ("stages.1.name=..", "stages[1].name='..'"),
    ("stages.2.name=a/b", "stages[2].name='a/b'"), ("stages.0.name=.", "stages[0].name='.'"),
    ("run.name=../x", "run.name='../x'"), ("run.name=/tmp/x", "run.name='/tmp/x'"), ("run.name=..", "run.name='..'"),
    (f"run.name={'x' * 101}", "run.name='xxx"), ("run.name=a b", "run.name='a b'"),
])
def test_a_name_that_is_not_one_path_component_is_refused(arg, key):
    with pytest.raises(ConfigError) as exc:
        load_config([arg])
    assert str(exc.value).startswith(key) and "letters, digits, '_', '.' and '-'" in str(exc.value)


def test_names_of_the_pattern_pass_and_an_unset_run_name_is_derived():
    cfg = load_config(["run.name=My_run-1.2", "stages.0.name=s.6", f"stages.1.name={'a' * 100}"])
    assert (cfg.run.name, cfg.stages[0].name) == ("My_run-1.2", "s.6")
    assert run_name(load_config(["run.name=null"])) == run_name(load_config([]))


def test_lock_timeout_is_not_part_of_the_run_directory():
    """Where a run waits for another run's stage is not what it trains: the same run directory."""
    assert run_name(load_config(["run.lock_timeout_s=30"])) == run_name(load_config([]))


def test_the_configuration_page_lists_every_range_as_the_checks_do():
    from kgc_kd.config import NAME_PATTERN, ranges_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert ranges_table() in page
    assert f"`{NAME_PATTERN}`" in page
