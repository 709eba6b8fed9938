"""The benchmark harness (experiments/bench): its primitives exactly, and the whole CLI once on a tiny model.

No upper-bound timing assertions: the machine may be busy. Sleeps give lower bounds; counts, FLOPs,
shapes and the JSON/Markdown structure are exact.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest
import torch

from experiments.bench import evaluation, measure, peak
from experiments.bench.table import format_tables


# ---- measure.timed / summarize ------------------------------------------------------------------------------
def test_timed_calls_warmup_plus_repeats_times():
    calls = []
    r = measure.timed(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5
    assert r["repeats"] == 3
    assert 0 <= r["min_s"] <= r["median_s"] <= r["max_s"]


def test_timed_median_is_at_least_the_sleep():
    r = measure.timed(lambda: time.sleep(0.01), warmup=0, repeats=3)
    assert r["min_s"] >= 0.01 and r["median_s"] >= 0.01


@pytest.mark.parametrize("repeats", [0, -1])
def test_timed_rejects_no_repeats(repeats):
    calls = []
    with pytest.raises(ValueError, match="repeats"):
        measure.timed(lambda: calls.append(1), warmup=1, repeats=repeats)
    assert not calls


def test_summarize_exact():
    assert measure.summarize([3.0, 1.0, 2.0]) == {"median_s": 2.0, "min_s": 1.0, "max_s": 3.0, "repeats": 3}
    assert measure.summarize([4.0, 1.0, 2.0, 3.0]) == {"median_s": 2.5, "min_s": 1.0, "max_s": 4.0, "repeats": 4}
    assert measure.summarize([0.5]) == {"median_s": 0.5, "min_s": 0.5, "max_s": 0.5, "repeats": 1}


# ---- measure.PeakMemory -------------------------------------------------------------------------------------
MIB = 2**20


def test_peak_memory_sees_a_touched_allocation_even_after_it_is_freed():
    with measure.PeakMemory("cpu") as m:
        x = torch.ones(200 * MIB // 4)  # 200 MiB of float32, every page written
        del x
    if m.method == "unavailable":
        pytest.skip("this platform cannot reset the resident high-water mark")
    assert m.method == "VmHWM after reset"
    assert m.delta_mib >= 150
    assert m.peak_mib >= m.delta_mib


def test_peak_memory_of_an_empty_block_is_small():
    with measure.PeakMemory("cpu") as m:
        pass
    if m.method == "unavailable":
        pytest.skip("this platform cannot reset the resident high-water mark")
    assert m.peak_mib > 0 and 0 <= m.delta_mib < 50


# ---- peak.matmul_peak ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_matmul_peak(precision):
    r = peak.matmul_peak(precision, n=64, warmup=1, repeats=2)
    assert r["precision"] == precision and r["n"] == 64
    assert r["flops"] == 2 * 64**3
    assert r["repeats"] == 2
    assert r["flops_per_s"] > 0
    assert r["flops_per_s"] == pytest.approx(r["flops"] / r["median_s"])


# ---- evaluation.synthetic_ranking ---------------------------------------------------------------------------
SCALING_KEYS = {"num_entities", "num_queries", "dim", "chunk_size", "rank_s", "queries_ranked_per_s", "peak_mib",
                "peak_delta_mib", "memory_method", "embeddings_mib", "chunk_working_set_mib", "mrr"}


def brute_force_mrr(qv, ent, queries, num_relations, forward_triples, boost=None) -> float:
    """Filtered realistic ranks by hand (float64 scores, a Python set of known answers per (h, r)), MRR as
    the unweighted mean of the tail and head directions (SimKGC's convention, as direction_metrics).
    `boost`: a (Q, E) bonus added to the scores first (graph re-ranking)."""
    known = defaultdict(set)
    for h, r, t in forward_triples.tolist():
        known[(h, r)].add(t)
        known[(t, r + num_relations)].add(h)
    scores = qv.double() @ ent.double().T
    if boost is not None:
        scores = scores + boost.double()
    recip = {False: [], True: []}
    for i, (h, r, t) in enumerate(queries.tolist()):
        s, gold = scores[i], float(scores[i, t])
        rivals = [e for e in range(len(ent)) if e != t and e not in known[(h, r)]]
        greater = sum(1 for e in rivals if float(s[e]) > gold)
        ties = sum(1 for e in rivals if float(s[e]) == gold)
        recip[r >= num_relations].append(1.0 / (1 + greater + 0.5 * ties))
    per_dir = [sum(v) / len(v) for v in recip.values() if v]
    return sum(per_dir) / len(per_dir)


def test_synthetic_ranking_matches_a_brute_force_ranking(monkeypatch):
    seen = {}
    real_filter, real_eval = evaluation.build_filter_index, evaluation.evaluate_queries

    def spy_filter(sets, num_relations):
        seen["filter_sets"] = [s.clone() for s in sets]
        return real_filter(sets, num_relations)

    def spy_eval(qv, ent, queries, num_relations, filt, **kw):
        seen.update(qv=qv.clone(), ent=ent.clone(), queries=queries.clone(), num_relations=num_relations)
        return real_eval(qv, ent, queries, num_relations, filt, **kw)

    monkeypatch.setattr(evaluation, "build_filter_index", spy_filter)
    monkeypatch.setattr(evaluation, "evaluate_queries", spy_eval)
    n_e, n_q, dim, n_rel = 40, 24, 16, 3
    r = evaluation.synthetic_ranking(n_e, n_q, dim=dim, num_relations=n_rel, chunk_size=7, seed=3)
    assert set(r) == SCALING_KEYS
    assert (r["num_entities"], r["num_queries"], r["dim"], r["chunk_size"]) == (n_e, n_q, dim, 7)
    assert 0 < r["mrr"] <= 1
    assert r["rank_s"] > 0 and r["queries_ranked_per_s"] == pytest.approx(n_q / r["rank_s"])
    assert r["embeddings_mib"] == pytest.approx((n_e + n_q) * dim * 4 / MIB)
    assert r["chunk_working_set_mib"] == pytest.approx(7 * n_e * 8 / MIB)

    q, train_and_test = seen["queries"], seen["filter_sets"]
    train, test = train_and_test
    assert seen["num_relations"] == n_rel and len(q) == n_q and seen["qv"].shape == (n_q, dim)
    assert seen["ent"].shape == (n_e, dim)
    assert torch.allclose(seen["ent"].norm(dim=1), torch.ones(n_e))
    # half tail prediction (the test triples), half head prediction (their inverses)
    assert torch.equal(q[: n_q // 2], test) and (test[:, 1] < n_rel).all()
    assert torch.equal(q[n_q // 2:], torch.stack([test[:, 2], test[:, 1] + n_rel, test[:, 0]], 1))
    assert len(train) == 2 * n_e  # train_per_entity x entities
    expected = brute_force_mrr(seen["qv"], seen["ent"], q, n_rel, torch.cat([train, test]))
    assert r["mrr"] == pytest.approx(expected, rel=1e-6)


def test_synthetic_ranking_is_deterministic_in_its_seed():
    a = evaluation.synthetic_ranking(30, 10, dim=8, seed=1)
    b = evaluation.synthetic_ranking(30, 10, dim=8, seed=1)
    assert a["mrr"] == b["mrr"] and a["num_queries"] == 10


def test_synthetic_ranking_odd_query_count():
    assert evaluation.synthetic_ranking(30, 7, dim=8)["num_queries"] == 7


# ---- evaluation.rerank_evaluation ---------------------------------------------------------------------------
def write_kgbert(d, seed: int = 0, num_entities: int = 40, num_relations: int = 3):
    """A small random KG in the KG-BERT layout (as WN18RR ships: "lemma, definition" texts)."""
    g = torch.Generator().manual_seed(seed)
    d.mkdir(parents=True, exist_ok=True)
    (d / "entity2text.txt").write_text("".join(f"e{i}\tword{i}, a thing number {i}\n" for i in range(num_entities)))
    (d / "relation2text.txt").write_text("".join(f"r{i}\trelation {i}\n" for i in range(num_relations)))
    triples = torch.stack([torch.randint(0, num_entities, (140,), generator=g),
                           torch.randint(0, num_relations, (140,), generator=g),
                           torch.randint(0, num_entities, (140,), generator=g)], dim=1).unique(dim=0)
    triples = triples[torch.randperm(len(triples), generator=g)]
    for name, part in (("test.tsv", triples[:10]), ("dev.tsv", triples[10:20]), ("train.tsv", triples[20:])):
        (d / name).write_text("".join(f"e{h}\tr{r}\te{t}\n" for h, r, t in part.tolist()))
    return d


def bfs(adj, start, hops):
    seen, frontier = {start}, [start]
    for _ in range(hops):
        frontier = [nb for node in frontier for nb in adj[node] if nb not in seen and not seen.add(nb)]
    return sorted(seen)


def test_rerank_evaluation_measures_the_reranked_ranking(tmp_path):
    from kgc_kd.data.sources import load_kg

    d = write_kgbert(tmp_path / "kg")
    r = evaluation.rerank_evaluation(d, hops=2, weight=0.05, warmup=0, repeats=1, dim=16, chunk_size=7)
    kg = load_kg(str(d), name_separator=", ")
    assert (r["num_entities"], r["num_queries"], r["hops"], r["weight"]) == (40, 2 * len(kg.test), 2, 0.05)
    for key in ("graph_build_s", "neighbourhood_s", "rank_rerank_s", "rank_plain_s", "matmul_s", "in_batch_mask_s",
                "in_batch_mask_dense_s"):
        assert r[key] > 0, key
    assert r["mask_batch"] == min(1024, 2 * len(kg.train))
    assert r["queries_per_s"] == pytest.approx(r["num_queries"] / r["rank_rerank_s"])
    # neighbourhoods and MRR against an independent reference: a Python BFS and a brute-force ranking
    adj = defaultdict(set)
    for h, _, t in kg.train.tolist():
        adj[h].add(t)
        adj[t].add(h)
    queries, ent, qv = evaluation.rerank_problem(kg, dim=16)
    heads = sorted(set(queries[:, 0].tolist()))
    assert r["num_heads"] == len(heads) and r["cut_off_heads"] == 0
    assert r["mean_neighbourhood"] == pytest.approx(sum(len(bfs(adj, h, 2)) for h in heads) / len(heads))
    boost = torch.zeros(len(queries), 40)
    for i, h in enumerate(queries[:, 0].tolist()):
        boost[i, bfs(adj, h, 2)] = 0.05
    forward = torch.cat([kg.train, kg.valid, kg.test])
    assert r["mrr"] == pytest.approx(brute_force_mrr(qv, ent, queries, kg.num_relations, forward, boost), rel=1e-6)
    assert r["mrr"] != pytest.approx(brute_force_mrr(qv, ent, queries, kg.num_relations, forward), rel=1e-6)


def test_rerank_section_without_data_is_skipped_or_an_error(tmp_path, tiny_plm_dir, capsys, monkeypatch):
    from experiments.bench import __main__ as bench_main
    from experiments.bench.__main__ import main

    assert "rerank" in bench_main.SECTIONS
    absent = tmp_path / "no-wn18rr"
    argv = ["--out", str(tmp_path / "b" / "bench.json"), "--rerank-data", str(absent), "--warmup", "0",
            "--repeats", "1", "data.source=synthetic", f"model.plm={tiny_plm_dir}"]
    with pytest.raises(SystemExit) as exc:  # asked for by name: exit 2 before anything is written
        main(argv + ["--sections", "rerank"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"no WN18RR in the KG-BERT layout at {absent}" in err and "--rerank-data DIR" in err
    assert not (tmp_path / "b").exists()
    # among the default sections (here only two, to keep the test short): skipped, and said so on stderr,
    # in the JSON and in the table, while the other sections run
    monkeypatch.setattr(bench_main, "SECTIONS", ("scaling", "rerank"))
    b = main(argv + ["--scale-entities", "50", "--scale-queries", "8"])
    assert b["rerank_evaluation"]["skipped"].startswith(f"no WN18RR in the KG-BERT layout at {absent}")
    assert [r["num_entities"] for r in b["eval_scaling"]] == [50]
    assert "rerank section skipped: no WN18RR" in capsys.readouterr().err
    md = (tmp_path / "b" / "bench.md").read_text()
    assert f"## Re-ranked filtered ranking\n\nskipped: no WN18RR in the KG-BERT layout at {absent}" in md


def test_rerank_section_without_rerank_data_is_skipped_or_an_error(tmp_path, tiny_plm_dir, capsys):
    """No --rerank-data: the default run skips the section (the benchmark reads no data outside what it is
    given); named in --sections it is an error before anything is written."""
    from experiments.bench.__main__ import main, rerank_skip_reason

    assert rerank_skip_reason(None) == "no --rerank-data DIR (WN18RR in the KG-BERT layout) given"
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "b" / "bench.json"), f"model.plm={tiny_plm_dir}", "--sections", "rerank"])
    assert exc.value.code == 2
    assert "error: rerank section: no --rerank-data DIR" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# ---- table.format_tables ------------------------------------------------------------------------------------
HEADERS = {"matmul_peak": "## Matmul peak", "train_step": "## Training step", "evaluation": "## Evaluation",
           "eval_scaling": "## Ranking memory vs entities", "rerank_evaluation": "## Re-ranked filtered ranking",
           "stages": "## Stages", "chain": "## Chain"}


def minimal_result(**sections) -> dict:
    return {"date": "2025-01-01T00:00:00+00:00", "data": "toy KG", "plm": "tiny", "device": "cpu",
            "machine": {"threads": 2, "torch": "x"}, "repeats": 3, "warmup": 1, **sections}


def test_format_tables_renders_only_the_sections_present():
    b = minimal_result(
        matmul_peak={"fp32": {"n": 64, "flops_per_s": 2.5e9}},
        eval_scaling=[{"num_entities": 50, "num_queries": 64, "rank_s": 0.25, "queries_ranked_per_s": 256.0,
                       "peak_mib": None, "peak_delta_mib": None, "embeddings_mib": 1.0,
                       "chunk_working_set_mib": 0.5}])
    md = format_tables(b)
    assert md.startswith("# kgc-kd benchmark, 2025-01-01T00:00:00+00:00")
    assert "medians of 3 timed runs after 1 warm-up" in md
    for key, header in HEADERS.items():
        assert (header in md) == (key in b), key
    assert "| fp32 | 64 | 2.5 |" in md
    assert "| 50 | 64 | 0.25 | 256.0 | - | - | 1.0 | 0.5 |" in md  # unknown memory shows as '-'


def test_format_tables_header_only():
    md = format_tables(minimal_result())
    assert not any(h in md for h in HEADERS.values())


def test_format_tables_chain_with_missing_phases():
    chain = {"run_dir": "runs/x", "wall_time_s": 9.0, "stages": [
        {"stage": "teacher", "steps": 2, "fit_s": 3.0, "phases_s": {"data": 0.5, "train": 2.0}, "test_mrr": 0.25}]}
    md = format_tables(minimal_result(chain=chain))
    assert "## Chain: runs/x" in md and "wall 9.0 s" in md
    assert "| teacher | 2 | 3.0 | 0.5 | 2.0 | - | - | - | 0.2500 |" in md
    assert "## Matmul peak" not in md


# ---- the whole harness --------------------------------------------------------------------------------------
def bench_argv(tmp_path, plm, *extra) -> list[str]:
    kg = write_kgbert(tmp_path / "kgbert")
    return ["--out", str(tmp_path / "bench.json"), "--scale-entities", "50", "200", "--scale-queries", "64",
            "--matmul-n", "64", "--warmup", "1", "--repeats", "1", "--device", "cpu", "--rerank-data", str(kg),
            "--rerank-hops", "2",
            "data.source=synthetic", f"model.plm={plm}", "trainer.accelerator=cpu", "data.batch_size=16",
            "data.max_length=16", "teacher.epochs=1", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            "eval.untrained_baseline=false", "stages=[{name: s1, layers: 1, prune_vocab: true, shared_encoder: true}]",
            *extra]  # options after the overrides: --sections takes every word up to the next option


def test_whole_harness_on_a_tiny_model(tmp_path, tiny_plm_dir, capsys):
    from experiments.bench.__main__ import main

    result = main(bench_argv(tmp_path, tiny_plm_dir))
    out = tmp_path / "bench.json"
    b = json.loads(out.read_text())
    assert set(HEADERS) <= set(b)
    assert b["device"] == "cpu" and (b["warmup"], b["repeats"]) == (1, 1) and b["plm"] == str(tiny_plm_dir)
    assert b["matmul_peak"].keys() == result["matmul_peak"].keys()

    # matmul peak, per precision
    assert set(b["matmul_peak"]) == {"fp32", "bf16"}
    for p in b["matmul_peak"].values():
        assert p["n"] == 64 and p["flops"] == 2 * 64**3 and p["flops_per_s"] > 0

    # training step: teacher and s1 at both precisions
    rows = b["train_step"]
    assert [(r["stage"], r["precision"]) for r in rows] == [
        ("teacher", "32-true"), ("teacher", "bf16-mixed"), ("s1", "32-true"), ("s1", "bf16-mixed")]
    for r in rows:
        assert r["flops_per_step"] > 0 and r["examples_per_s"] > 0 and r["flops_per_s"] > 0
        assert r["batch_size"] == 16 and r["tokens_per_step"] > 0 and r["repeats"] == 1
        pk = b["matmul_peak"]["fp32" if r["precision"] == "32-true" else "bf16"]["flops_per_s"]
        assert r["peak_fraction"] == pytest.approx(r["flops_per_s"] / pk)
        if r["precision"] == "32-true":
            assert r["speedup_vs_fp32"] == 1.0

    # evaluation on the synthetic KG
    e = b["evaluation"]
    assert e["split"] == "test" and e["num_entities"] == 30 and e["num_queries"] > 0
    assert e["entities_per_s"] > 0 and e["queries_ranked_per_s"] > 0 and e["full_eval_s"] > 0

    # ranking scaling
    sc = b["eval_scaling"]
    assert [r["num_entities"] for r in sc] == [50, 200] and all(r["num_queries"] == 64 for r in sc)
    assert all(set(r) == SCALING_KEYS | {"process_peak_mib"} and 0 < r["mrr"] <= 1 for r in sc)
    assert all(r["process_peak_mib"] > 0 for r in sc)  # each size ran in its own process

    # re-ranking on the small KG-BERT directory
    rr = b["rerank_evaluation"]
    assert (rr["num_entities"], rr["hops"], rr["weight"], rr["chunk_size"]) == (40, 2, 0.05, 256)
    assert rr["neighbourhood_s"] > 0 and rr["rank_rerank_s"] > 0 and 0 < rr["mrr"] <= 1

    # stages: the pruned, shared 1-layer student against the teacher
    teacher, s1 = b["stages"]
    assert (teacher["stage"], s1["stage"]) == ("teacher", "s1")
    assert (teacher["layers"], s1["layers"]) == (2, 1)
    assert not teacher["shared_encoder"] and s1["shared_encoder"]
    assert s1["vocab_size"] < teacher["vocab_size"]
    assert s1["params_total"] < teacher["params_total"]
    assert teacher["params_ratio"] == 1.0 and 0 < s1["params_reduction_pct"] < 100

    # the chain, run as a child process
    c = b["chain"]
    assert c["peak_rss_mib"] > 0 and c["process_wall_s"] > 0
    assert [s["stage"] for s in c["stages"]] == ["teacher", "s1"]
    for s in c["stages"]:
        assert {"data", "train", "eval", "export"} <= set(s["phases_s"])
        assert s["steps"] == 2 and 0 < s["test_mrr"] <= 1
    assert (tmp_path / "chain-runs" / "bench-chain" / "report.json").is_file()

    md = (tmp_path / "bench.md").read_text()
    assert all(h in md for h in HEADERS.values())
    assert "| s1 | 1 | yes |" in md
    assert "wrote " in capsys.readouterr().out


def test_sections_select_what_is_measured(tmp_path, tiny_plm_dir):
    from experiments.bench.__main__ import main

    b = main(bench_argv(tmp_path, tiny_plm_dir, "--sections", "scaling", "stages"))
    assert "eval_scaling" in b and "stages" in b
    assert not {"matmul_peak", "train_step", "evaluation", "chain"} & set(b)
    md = (tmp_path / "bench.md").read_text()
    assert HEADERS["eval_scaling"] in md and HEADERS["stages"] in md
    assert HEADERS["train_step"] not in md and HEADERS["chain"] not in md
    assert json.loads((tmp_path / "bench.json").read_text()).keys() == b.keys()


def test_unknown_config_key_exits_2_naming_it(tmp_path, capsys):
    from experiments.bench.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "b" / "bench.json"), "data.no_such_key=1"])
    assert exc.value.code == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # nothing written


# ---- known gaps ---------------------------------------------------------------------------------------------
def test_train_step_student_is_built_as_the_chain_builds_it(tiny_plm_dir):
    from experiments.bench.train_step import build_module
    from kgc_kd.chain.driver import build_datamodule
    from kgc_kd.config import load_config
    from kgc_kd.models.plm import load_tokenizer

    cfg = load_config(["data.source=synthetic", f"model.plm={tiny_plm_dir}",
                       "stages=[{name: s1, layers: 1, shared_encoder: true, prune_vocab: true, score_loss: kl}]"])
    tok = load_tokenizer(str(tiny_plm_dir))
    module = build_module(cfg, "student", build_datamodule(cfg, tok), tok)
    assert module.net.shared and module.net.kept_ids is not None and {t["name"]: t for t in module.terms}["score"]["params"]["loss"] == "kl"


# ---- the command line ---------------------------------------------------------------------------------------
def test_help_shows_its_options_the_forms_and_the_groups_with_their_presets(capsys):
    from experiments.bench.__main__ import SECTIONS, main
    from test_cli import check_help

    check_help(capsys, main, "--help", "python -m experiments.bench ",
               ("--out", "--sections", "--repeats", *SECTIONS, "config=PATH", "GROUP=PRESET", "key=value",
                "docs/performance.md"))


def test_help_imports_no_torch():
    """`python -m experiments.bench --help` parses before importing torch, Lightning or the sections."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import runpy, sys\nsys.argv = ['bench', '--help']\ntry:\n    runpy.run_module('experiments.bench', "
            "run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'transformers')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m experiments.bench" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("argv,named", [
    (["--bogus"], "error: unrecognized arguments: --bogus"),
    (["--sections", "nope"], "error: argument --sections: invalid choice: 'nope'"),
    (["--sections", "eval", "--", "data.source=/no/such/kg"], "error: "),  # found after parsing: still exit 2
])
def test_bad_option_or_data_exits_2_before_anything_is_written(tmp_path, tiny_plm_dir, capsys, argv, named):
    from experiments.bench.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "b" / "bench.json"), f"model.plm={tiny_plm_dir}", *argv])
    assert exc.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "b" / "bench.json").exists()


# ---- the scale section (scale.py, scale_steps.py) -----------------------------------------------------------
def test_scale_fractions_parse_exactly():
    from fractions import Fraction

    from experiments.bench.scale import entities_at, fraction_label, parse_fraction

    assert parse_fraction("1/50") == Fraction(1, 50) and parse_fraction("0.1") == Fraction(1, 10)
    assert fraction_label(Fraction(1, 50)) == "1/50" and fraction_label(Fraction(3, 100)) == "0.03"
    assert entities_at(Fraction(1, 10)) == 459_448  # round(4,594,485 / 10)
    for bad in ("0", "1.5", "-1/10", "half"):
        with pytest.raises(ValueError):
            parse_fraction(bad)


def test_scale_fit_is_least_squares_and_a_measured_full_size_wins():
    from experiments.bench.scale import extrapolate, fit_line

    assert fit_line([(10, 3.0), (30, 7.0)]) == pytest.approx((1.0, 0.2))  # the line through both
    assert fit_line([(0, 1.0), (1, 3.0), (2, 2.0)]) == pytest.approx((1.5, 0.5))  # by hand
    assert fit_line([(4, 2.0)]) == (0.0, 0.5)  # one point: through the origin
    rows = [{"num_entities": 10, "seconds": 3.0}, {"num_entities": 30, "seconds": 7.0}]
    fit = extrapolate(rows, "seconds", "entities", 100)
    assert fit == {"value": pytest.approx(21.0), "formula": "a + b*n", "a": pytest.approx(1.0), "b": pytest.approx(0.2),
                   "n": 100, "n_of": "entities", "points": 2}
    rows.append({"num_entities": 100, "seconds": 50.0})
    assert extrapolate(rows, "seconds", "entities", 100) == {"value": 50.0, "formula": "measured", "n": 100,
                                                             "n_of": "entities"}


def test_scale_step_memory_is_growth_over_the_start(monkeypatch):
    """A step that peaks at 192 MiB and keeps 64 MiB: the runner reports those growths (plus slack for the
    allocator), positive seconds and the threads it set."""
    from experiments.bench import scale_steps

    def alloc_step(args):
        def measure():
            keep = torch.ones(64 * 2**20 // 4)  # 64 MiB, written: resident
            scratch = torch.ones(128 * 2**20 // 4)
            del scratch
            return {"kept_elements": keep.numel()}, keep
        return measure

    monkeypatch.setitem(scale_steps.STEPS, "alloc", alloc_step)
    threads = torch.get_num_threads()
    try:
        row = scale_steps.run_step("alloc", {"threads": 1})
    finally:
        torch.set_num_threads(threads)
    assert row["step"] == "alloc" and row["threads"] == 1 and row["seconds"] > 0
    assert row["kept_elements"] == 16 * 2**20
    if row["memory_method"] == "VmHWM after reset":  # Linux
        assert 190 <= row["peak_growth_mib"] <= 260
        assert 60 <= row["kept_growth_mib"] <= 100


@pytest.mark.slow
def test_scale_section_at_a_tiny_fraction(tmp_path, tiny_plm_dir):
    """`--sections scale` at 1/5000 of Wikidata5M (919 entities) and a 2,000-entity collate graph: every step
    ran in its own process, with positive seconds and memory figures; the fits pass through what was
    measured; the cache is written by the first run and read by the second; targets and tables are there."""
    from experiments.bench import scale
    from experiments.bench.__main__ import main

    b = main(["--out", str(tmp_path / "bench.json"), "--sections", "scale", "--scale-fractions", "1/5000",
              "--scale-link-graph-fractions", "1/5000", "--scale-collate-entities", "2000", "--scale-threads", "1", "2",
              "--scale-batches", "2", "--warmup", "1", "--", "data.source=synthetic", f"model.plm={tiny_plm_dir}"])
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(b))
    s = b["scale"]
    assert set(s["steps"]) == set(scale.STEPS) and [f["num_entities"] for f in s["fractions"]] == [919]
    assert not (tmp_path / "scale-work").exists()  # scratch files removed
    for name, step in s["steps"].items():
        assert step["measured"], name
        for r in step["measured"]:
            assert "error" not in r and "not_available" not in r, (name, r)
            assert r["seconds"] > 0 and r["start_rss_mib"] > 0, (name, r)
            assert r["peak_growth_mib"] >= 0 and r["kept_growth_mib"] >= 0, (name, r)
            assert r["peak_growth_mib"] >= r["kept_growth_mib"] - 1.0, (name, r)  # within a page table's slack
        assert step["full_scale"], name
    groups = lambda name, key: sorted(r[key] for r in s["steps"][name]["measured"])  # noqa: E731
    assert groups("tokens", "run") == groups("link_graph", "run") == groups("predict", "run") == ["first", "second"]
    assert groups("collate", "threads") == [1, 1, 2, 2] and groups("train_collate", "threads") == [1, 2]
    for name in ("tokens", "link_graph"):
        reads = {r["run"]: r["read_cache"] for r in s["steps"][name]["measured"]}
        assert reads == {"first": False, "second": True}, name

    # the collate: 919 and 2,000 entities, 1,024-example batches, the fit through both sizes per thread count
    collate = s["steps"]["collate"]
    for k in (1, 2):
        rows = sorted((r for r in collate["measured"] if r["threads"] == k), key=lambda r: r["num_keys"])
        assert [r["num_entities"] for r in rows] == [919, 2000]
        assert all(r["batch_size"] == 1024 and r["batches"] == 2 and 0 < r["median_ms"] <= r["max_ms"] for r in rows)
        assert all(r["num_keys"] == 2 * round(4_594_485 ** -1 * 20_614_279 * r["num_entities"]) for r in rows)
        fit = collate["full_scale"][f"threads={k}"]["median_ms"]
        assert fit["formula"] == "a + b*n" and fit["n"] == 2 * 20_614_279
        for r in rows:
            assert fit["a"] + fit["b"] * r["num_keys"] == pytest.approx(r["median_ms"])
        assert fit["value"] == pytest.approx(fit["a"] + fit["b"] * fit["n"])
    filt = s["steps"]["filter"]
    assert filt["n_of"] == "triples" and filt["full_scale"]["all"]["seconds"]["n"] == 20_614_279 + 5_163 + 5_133

    # the evaluation memory plan (full scale, both widths) and its CPU check
    plan = s["eval_plan"]
    assert set(plan["plans"]) == {"384", "768", "384+rerank", "768+rerank"} and plan["num_entities"] == 4_594_485
    assert plan["plans"]["768+rerank"]["total_bytes"] > plan["plans"]["768"]["total_bytes"]
    assert plan["cpu_check"]["num_entities"] == 919 and plan["cpu_check"]["plan_fp32_mib"] > 0
    names = [t["target"] for t in s["targets"]]
    assert names == ["collate mask median, threads=1", "collate mask median, threads=2",
                     "data preparation peak, first run", "data preparation kept, first run",
                     "data preparation peak, second run", "data preparation kept, second run", "filter index",
                     "second run reads the cached table", "evaluation memory plan, 768-d bf16, re-rank on"]
    assert all(t["pass"] in (True, False) for t in s["targets"])
    reads = next(t for t in s["targets"] if t["target"] == "second run reads the cached table")
    assert reads["pass"] is True and reads["from"] == "measured"
    md = (tmp_path / "bench.md").read_text()
    assert "## Scale: Wikidata5M-sized graphs" in md and "### Targets" in md
    assert "| tokens | 1/5000 | run=second |" in md and "cache read" in md
