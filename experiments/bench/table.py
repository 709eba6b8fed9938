"""The benchmark's JSON as Markdown tables: what a person reads, from what the machine reads."""

from __future__ import annotations


def _f(x, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def format_tables(b: dict) -> str:
    lines = [f"# kgc-kd benchmark, {b['date']}", "",
             f"{b['data']}; PLM {b['plm']}; device {b['device']}; {b['machine'].get('threads')} threads, torch "
             f"{b['machine'].get('torch')}; medians of {b['repeats']} timed runs after {b['warmup']} warm-up", ""]
    if "matmul_peak" in b:
        lines += ["## Matmul peak", ""]
        lines += _table(["precision", "n", "GFLOP/s"],
                        [[p, str(r["n"]), _f(r["flops_per_s"] / 1e9)] for p, r in b["matmul_peak"].items()])
        lines.append("")
    if "train_step" in b:
        lines += ["## Training step", ""]
        lines += _table(
            ["stage", "precision", "batch", "tokens", "s/step", "examples/s", "GFLOP/step", "GFLOP/s", "of peak",
             "vs fp32"],
            [[r["stage"], r["precision"], str(r["batch_size"]), str(r["tokens_per_step"]), _f(r["median_s"], "{:.3f}"),
              _f(r["examples_per_s"]), _f(r["flops_per_step"] and r["flops_per_step"] / 1e9), _f(r["flops_per_s"] and r["flops_per_s"] / 1e9),
              _f(r.get("peak_fraction"), "{:.0%}"), _f(r.get("speedup_vs_fp32"), "{:.2f}x")] for r in b["train_step"]])
        lines += ["", "FLOPs: torch FlopCounterMode over one step (forward + backward, teacher forward included); "
                  "'of peak' divides by the matmul peak at the same precision.", ""]
    if "evaluation" in b:
        e = b["evaluation"]
        lines += ["## Evaluation (full filtered ranking, " + f"{e['num_queries']} {e['split']} queries x "
                  f"{e['num_entities']} entities)", ""]
        lines += _table(["entities/s", "queries encoded/s", "queries ranked/s", "whole eval (s)", "peak MiB",
                         "eval's own MiB"],
                        [[_f(e["entities_per_s"]), _f(e["queries_encoded_per_s"]), _f(e["queries_ranked_per_s"]),
                          _f(e["full_eval_s"], "{:.2f}"), _f(e["peak_mib"]), _f(e["peak_delta_mib"])]])
        lines.append("")
    if "eval_scaling" in b:
        lines += ["## Ranking memory vs entities (random 384-d embeddings)", ""]
        lines += _table(["entities", "queries", "rank (s)", "queries/s", "process peak MiB", "ranking's own MiB",
                         "embeddings MiB", "one chunk MiB"],
                        [[str(r["num_entities"]), str(r["num_queries"]), _f(r["rank_s"], "{:.2f}"),
                          _f(r["queries_ranked_per_s"]), _f(r.get("process_peak_mib", r["peak_mib"])),
                          _f(r["peak_delta_mib"]),
                          _f(r["embeddings_mib"]), _f(r["chunk_working_set_mib"])] for r in b["eval_scaling"]])
        lines += ["", "process peak: a fresh process doing only this ranking (torch included); own: its growth "
                  "while ranking (one chunk's scores and masks, reused across chunks).", ""]
    if "rerank_evaluation" in b:
        r = b["rerank_evaluation"]
        if "skipped" in r:
            lines += ["## Re-ranked filtered ranking", "", f"skipped: {r['skipped']}", ""]
        else:
            name = r["data"].split(":")[0]
            lines += [f"## Re-ranked filtered ranking ({name} {r['split']}: {r['num_queries']} queries x "
                      f"{r['num_entities']} entities, {r['hops']} hops, weight {r['weight']:g}; random {r['dim']}-d "
                      "vectors)", ""]
            lines += _table(["heads", "mean neighbourhood", "cut off", "graph (s)", "neighbourhoods (s)",
                             "rank + re-rank (s)", "rank alone (s)", "scores alone (s)", "queries/s", "peak MiB",
                             "ranking's own MiB"],
                            [[str(r["num_heads"]), _f(r["mean_neighbourhood"]), str(r["cut_off_heads"]),
                              _f(r["graph_build_s"], "{:.2f}"), _f(r["neighbourhood_s"], "{:.2f}"),
                              _f(r["rank_rerank_s"], "{:.2f}"), _f(r["rank_plain_s"], "{:.2f}"),
                              _f(r.get("matmul_s"), "{:.2f}"),
                              _f(r["queries_per_s"]), _f(r["peak_mib"]), _f(r["peak_delta_mib"])]])
            lines += ["", "graph and neighbourhoods: once per run (every stage reuses them); rank: scores, re-ranking "
                      f"bonus, filtering and ranks of every query, chunk {r['chunk_size']}; scores alone: just the "
                      "float32 query x entity products, the floor of any exact ranking.", ""]
            if "in_batch_mask_s" in r:
                lines += [f"Training collate, in-batch false-negative mask of {r['mask_batch']} train examples (CPU): "
                          f"{1000 * r['in_batch_mask_s']:.1f} ms (all-pairs key search: "
                          f"{1000 * r['in_batch_mask_dense_s']:.1f} ms).", ""]
    if "stages" in b:
        lines += ["## Stages: size and inference latency", ""]
        lines += _table(["stage", "layers", "shared", "vocab", "params", "vs teacher", "query batch ms",
                         "entity batch ms", "query speed-up", "entity speed-up"],
                        [[r["stage"], str(r["layers"]), "yes" if r["shared_encoder"] else "no", str(r["vocab_size"]),
                          f"{r['params_total'] / 1e6:.2f}M", f"-{r['params_reduction_pct']:.1f}%",
                          _f(r["query_batch_ms"]), _f(r["entity_batch_ms"]), _f(r["query_speedup"], "{:.2f}x"),
                          _f(r["entity_speedup"], "{:.2f}x")] for r in b["stages"]])
        lines.append("")
    if "chain" in b:
        c = b["chain"]
        lines += [f"## Chain: {c['run_dir']}", "",
                  f"wall {c.get('process_wall_s', c.get('wall_time_s'))} s (setup {c.get('setup_s')} s, untrained "
                  f"baseline {c.get('untrained_eval_s')} s); peak resident memory {c.get('peak_rss_mib')} MiB "
                  f"({c.get('peak_rss_source')})", ""]
        names = ["data", "train", "eval", "latency", "export"]
        lines += _table(["stage", "steps", "fit (s)"] + [f"{n} (s)" for n in names] + ["test MRR"],
                        [[s["stage"], str(s.get("steps")), _f(s.get("fit_s"))]
                         + [_f(s["phases_s"].get(n), "{:.1f}") for n in names] + [_f(s.get("test_mrr"), "{:.4f}")]
                         for s in c["stages"]])
        lines.append("")
    if "scale" in b:
        lines += scale_tables(b["scale"])
    return "\n".join(lines)


def _scale_detail(r: dict) -> str:
    """A measured scale row's own figures, in words."""
    if "error" in r:
        return "error: " + r["error"].strip().splitlines()[-1][:120]
    parts = []
    if "median_ms" in r:
        parts.append(f"median {r['median_ms']:.1f} ms, max {r['max_ms']:.1f} ms per {r['batch_size']}-batch "
                     f"({r['batches']} batches); key set built in {r['known_build_s']:.2f} s")
    if "tokens_s" in r:
        parts.append(f"KG {r['kg_s']:.1f} s + tokens {r['tokens_s']:.1f} s; cache "
                     + ("read" if r["read_cache"] else f"written ({r['cache_files_written']} files)"))
    if "file_mib" in r:
        written = f", written in {r['write_s']:.1f} s" if r.get("write_s") else ""
        parts.append(f"{r['file_mib']:.0f} MiB of json{written}")
    if "start_s" in r:
        parts.append(f"start {r['start_s']:.2f} s (after {r['imports_s']:.1f} s of imports), first query "
                     f"{r['first_query_s']:.2f} s")
    return "; ".join(parts)


def _fit_text(fit: dict) -> str:
    if fit["formula"] == "measured":
        return "measured"
    if fit["formula"] == "composed":  # scale.compose_train_collate
        return (f"collator {fit['collator_n0']:.4g} - mask {fit['mask_n0']:.4g} at {fit['n0']:,} keys "
                f"+ mask {fit['mask_full']:.4g} at {fit['n']:,} keys")
    a = f"{fit['a']:.4g} + " if fit["formula"] == "a + b*n" else ""
    return f"{a}{fit['b']:.4g} x {fit['n']:,} {fit['n_of']}"


def scale_tables(s: dict) -> list[str]:
    fr = ", ".join(f"{f['label']} ({f['num_entities']:,} entities)" for f in s["fractions"])
    lines = [f"## Scale: Wikidata5M-sized graphs (a Wikidata-shaped synthetic graph at {fr}; seed {s['seed']}, "
             f"tokenizer {s['plm']}, max length {s['max_length']})", "",
             "Every step in a fresh process; memory is growth of resident memory over the process's start (peak: "
             "high-water mark while measuring; kept: after the step, its result still held). The section took "
             f"{s['seconds']:.0f} s.", ""]
    rows = []
    for name, step in s["steps"].items():
        for r in step["measured"]:
            group = ", ".join(f"{k}={r.get(k)}" for k in step["group_by"])
            rows.append([name, str(r.get("fraction")), group, _f(r.get("seconds"), "{:.2f}"),
                         _f(r.get("peak_growth_mib")), _f(r.get("kept_growth_mib")), _scale_detail(r)])
    lines += _table(["step", "scale", "run", "s", "peak +MiB", "kept +MiB", "detail"], rows)
    lines += ["", f"### Extrapolated to Wikidata5M ({s['full_n']['entities']:,} entities, {s['full_n']['triples']:,} "
              f"triples, {s['full_n']['keys']:,} train + inverse keys): cost = a + b x n through the fractions", ""]
    rows = [[name, group, fig, _f(fit["value"], "{:.4g}"), _fit_text(fit)]
            for name, step in s["steps"].items() for group, figs in step["full_scale"].items()
            for fig, fit in figs.items()]
    lines += _table(["step", "run", "figure", "at full scale", "from"], rows)
    plan = s["eval_plan"]
    lines.append("")
    lines += [f"### Evaluation memory plan at full scale ({plan['num_entities']:,} entities, "
              f"{plan['num_queries']:,} queries, {8 * plan['dtype_bytes']}-bit vectors)", ""]
    lines += _table(["dim", "held GiB", "ranking scratch GiB", "total GiB", "bytes per entity"],
                    [[d, _f(p.get("held_bytes") and p["held_bytes"] / 2**30, "{:.2f}"),
                      _f(p.get("ranking_scratch_bytes") and p["ranking_scratch_bytes"] / 2**30, "{:.2f}"),
                      _f(p.get("total_bytes") and p["total_bytes"] / 2**30, "{:.2f}"),
                      _f(p.get("bytes_per_entity"), "{:.0f}")] for d, p in plan["plans"].items()])
    lines.append("")
    cpu = plan.get("cpu_check", {})
    if "seconds" in cpu:
        lines += [f"CPU check of the plan ({cpu.get('fraction')}: {cpu['num_entities']:,} entities x "
                  f"{cpu['num_queries']:,} queries, {cpu['dim']}-d fp32, chunk {cpu['chunk_size']}): measured peak "
                  f"growth {_f(cpu['peak_growth_mib'])} MiB, plan {_f(cpu.get('plan_fp32_mib'))} MiB; ranking "
                  f"{cpu['rank_s']:.1f} s.", ""]
    elif cpu:
        lines += [f"CPU check of the plan: {_scale_detail(cpu)}", ""]
    lines += ["### Targets", ""]
    lines += _table(["target", "at", "value", "limit", "from", "pass"],
                    [[t["target"], t["at"],
                      str(t["value"]) if isinstance(t["value"], bool) else _f(t["value"], "{:.3g}"),
                      (f"<= {t['limit']:.4g} {t['unit']}" if t["unit"] else str(t["limit"])), t["from"],
                      {True: "pass", False: "FAIL", None: "-"}[t["pass"]]] for t in s["targets"]])
    lines.append("")
    return lines
