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
