import pytest
import torch

from conftest import make_tiny_bert
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.size import autocast_dtype, parameter_counts, throughput


def _n(module, skip_embeddings=False):
    # independent of the code under test: walk the modules and their own parameters, deduplicated
    seen, total = set(), 0
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if id(p) in seen or (skip_embeddings and full.startswith("embeddings.")):
                continue
            seen.add(id(p))
            total += p.numel()
    return total


def test_parameter_counts_two_encoders():
    q = make_tiny_bert(num_layers=2, hidden=32)
    e = make_tiny_bert(num_layers=1, hidden=32, seed=1)
    net = BiEncoder(q, e)
    c = parameter_counts(net)
    assert c["params_query"] == _n(q) and c["params_entity"] == _n(e)
    assert c["params_total"] == _n(q) + _n(e) + 1
    assert c["params_no_embeddings"] == _n(q, True) + _n(e, True)
    emb = sum(p.numel() for p in q.embeddings.parameters()) + sum(p.numel() for p in e.embeddings.parameters())
    assert c["params_no_embeddings"] == _n(q) + _n(e) - emb
    # a layer of a tiny BERT (hidden 32, intermediate 64): 4 attention linears + 2 FFN linears + 2 LayerNorms
    layer = 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * (2 * 32)
    assert c["params_no_embeddings"] == 3 * layer


def test_parameter_counts_shared_encoder_counted_once():
    q = make_tiny_bert(num_layers=2)
    c = parameter_counts(BiEncoder(q, shared=True))
    assert c["params_total"] == _n(q) + 1
    assert c["params_no_embeddings"] == _n(q, True)
    assert c["params_query"] == _n(q)


def test_parameter_counts_fewer_layers_fewer_params():
    big = parameter_counts(BiEncoder(make_tiny_bert(num_layers=3)))
    small = parameter_counts(BiEncoder(make_tiny_bert(num_layers=1)))
    assert big["params_total"] > small["params_total"]
    assert big["params_no_embeddings"] == 3 * small["params_no_embeddings"]


def _loader(n_batches, batch_size, key="hr"):
    return [{key: {"input_ids": torch.full((batch_size, 4), 2), "attention_mask": torch.ones(batch_size, 4)},
             "other": "ignored"} for _ in range(n_batches)]


class Counter:
    def __init__(self):
        self.calls, self.items = 0, 0

    def __call__(self, inputs):
        assert set(inputs) == {"input_ids", "attention_mask"}
        assert torch.is_grad_enabled() is False
        self.calls += 1
        self.items += inputs["input_ids"].shape[0]
        return torch.zeros(inputs["input_ids"].shape[0], 3)


def test_throughput_positive_and_bounded_by_max_items():
    enc = Counter()
    out = throughput(enc, _loader(100, 8), torch.device("cpu"), "hr", max_items=40, warmup=1, repeats=1)
    assert isinstance(out, float) and out > 0
    # 5 batches of 8 reach 40 items: one warm-up call plus 4 timed ones; never the whole loader
    assert enc.calls == 5 and enc.items == 40


def test_throughput_stops_after_the_batch_that_crosses_max_items():
    enc = Counter()
    throughput(enc, _loader(100, 8), torch.device("cpu"), "hr", max_items=20, warmup=1, repeats=1)
    assert enc.items <= 20 + 8 and enc.calls == 3


def test_throughput_short_loader_still_times_something():
    enc = Counter()
    out = throughput(enc, _loader(1, 4, key="entity"), torch.device("cpu"), "entity", max_items=2048, warmup=1, repeats=1)
    assert out > 0 and enc.calls == 2  # the only batch is both warm-up and timed


def test_throughput_on_a_real_encoder():
    net = BiEncoder(make_tiny_bert(num_layers=1)).eval()
    loader = [{"hr": {"input_ids": torch.tensor([[2, 9, 3], [2, 10, 3]]),
                      "attention_mask": torch.ones(2, 3, dtype=torch.long)}} for _ in range(3)]
    assert throughput(net.encode_query, loader, torch.device("cpu"), "hr", max_items=4) > 0


def test_throughput_keeps_the_best_of_repeated_passes():
    enc = Counter()
    throughput(enc, _loader(100, 8), torch.device("cpu"), "hr", max_items=40, warmup=1, repeats=3)
    assert enc.calls == 1 + 3 * 4


class AutocastProbe:
    """Records the autocast state each call sees and runs a real Linear, whose output dtype shows it."""

    def __init__(self):
        self.seen, self.dtypes = set(), set()
        self.linear = torch.nn.Linear(4, 3)

    def __call__(self, inputs):
        enabled = torch.is_autocast_enabled("cpu")
        self.seen.add((enabled, torch.get_autocast_dtype("cpu") if enabled else None))
        out = self.linear(inputs["input_ids"].float())
        self.dtypes.add(out.dtype)
        return out


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16),
                                              ("32-true", None), (None, None), ("bf16-true", None)])
def test_throughput_runs_in_the_runs_precision(precision, dtype):
    enc = AutocastProbe()
    assert throughput(enc, _loader(4, 8), torch.device("cpu"), "hr", max_items=32, warmup=1, repeats=2,
                      precision=precision) > 0
    assert autocast_dtype(precision) is dtype
    if dtype is None:
        assert enc.seen == {(False, None)} and enc.dtypes == {torch.float32}
    else:  # warm-up and every timed pass under the run's autocast
        assert enc.seen == {(True, dtype)} and enc.dtypes == {dtype}
    assert not torch.is_autocast_enabled("cpu")  # and nothing left switched on

