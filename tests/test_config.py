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
