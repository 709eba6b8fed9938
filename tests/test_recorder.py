"""kgc_kd.chain.recorder: StageRecorder, a stage's fit facts, test metrics and throughput, into its row."""

from __future__ import annotations

import torch

from kgc_kd.chain import recorder


def test_stage_latency_passes_the_trainers_precision(monkeypatch):
    """StageRecorder._latency times each side in the stage's own precision (trainer.precision)."""
    from types import SimpleNamespace

    calls = []
    monkeypatch.setattr(recorder, "throughput", lambda *a, **k: calls.append(k.get("precision")) or 1.0)
    net = torch.nn.Linear(2, 2)
    net.encode_query = net.encode_entity = None
    dm = SimpleNamespace(query_dataloader=lambda split: [], entity_dataloader=lambda: [])
    trainer = SimpleNamespace(datamodule=dm, precision="bf16-mixed")
    recorder.StageRecorder._latency(None, trainer, net)
    assert calls == ["bf16-mixed", "bf16-mixed"]


def test_compression_is_the_teachers_parameters_over_the_stages():
    teacher = {"params_total": 100, "params_no_embeddings": 60}
    row = {"params_total": 25, "params_no_embeddings": 10}
    assert recorder.compression(teacher, row) == {"params_total": 4.0, "params_no_embeddings": 6.0}
    assert recorder.compression(None, teacher) == {"params_total": 1.0, "params_no_embeddings": 1.0}  # the teacher
    assert recorder.compression({"params_total": 100}, row)["params_no_embeddings"] is None  # not recorded: none


def test_vocab_size_counts_a_pruned_vocabulary_kept_ids(tiny_bert):
    from kgc_kd.models.biencoder import BiEncoder

    net = BiEncoder(tiny_bert)
    assert recorder.vocab_size(net) == tiny_bert.config.vocab_size
    net.prune_vocabulary([0, 1, 2, 3, 5, 7], tiny_bert.config.vocab_size)
    assert recorder.vocab_size(net) == 6


def test_peak_memory_holds_the_process_peak_resident_memory():
    peak = recorder.peak_memory(torch.device("cpu"))
    assert set(peak) == {"peak_rss_mib"} and peak["peak_rss_mib"] > 0
