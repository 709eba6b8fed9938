"""The logit- and sequence-level terms (kgc_kd/distill/terms.py) on hand-built `Step`s with hand-computed values:
ce, score (mse, kl with temperature), mgfd (PMD), mgd (MGD) and pkd (Patient KD)."""

import math

import pytest
import torch

from kgc_kd.distill import terms as terms_module
from kgc_kd.distill.registry import Dims, Step, resolve_term, term_class

DIMS = Dims(2, 2, 4, 4, 1, 1, 3, 6)  # width 2, a 3-layer student under a 6-layer teacher


def _build(name, dims=DIMS, **params):
    spec = resolve_term({"name": name, **params}, dims)
    return term_class(name)(spec["params"], dims)


def _step(logits_s=None, logits_t=None, views=None, student=None, teacher=None, s_rows=None, t_rows=None):
    return Step(views=views or {}, student=student or {}, teacher=teacher, s_rows=s_rows or {}, t_rows=t_rows,
                logits_s=torch.zeros(1, 1) if logits_s is None else logits_s, logits_t=logits_t)


def _unit(v):
    return [x / math.hypot(*v) for x in v]


def test_flags_say_what_each_term_reads():
    flags = {n: (c.needs_teacher, c.needs_teacher_logits, c.masks_inputs, c.all_layers)
             for n in ("ce", "score", "mgfd", "mgd", "pkd") for c in [term_class(n)]}
    assert flags == {"ce": (False, False, False, False), "score": (True, True, False, False),
                     "mgfd": (True, False, True, False), "mgd": (True, False, False, False),
                     "pkd": (True, False, False, True)}


# ---- ce ------------------------------------------------------------------------------------------------------
def test_ce_is_infonce_in_both_directions():
    # 3 queries, 3 in-batch tails and one extra column (a pre-batch or self negative)
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0],
                           [0.0, 1.5, 0.5, -2.0],
                           [1.0, -0.5, 3.0, 0.0]])
    rows = logits.tolist()

    def nll(values, i):
        return math.log(sum(math.exp(v) for v in values)) - values[i]

    query_to_tail = sum(nll(rows[i], i) for i in range(3)) / 3  # over all 4 columns
    tail_to_query = sum(nll([rows[i][j] for i in range(3)], j) for j in range(3)) / 3  # the 3 x 3 block only
    got = _build("ce")(_step(logits_s=logits, teacher=None))
    assert got.item() == pytest.approx(query_to_tail + tail_to_query, rel=1e-6)
    # the extra column is a negative of the query direction only
    shifted = logits.clone()
    shifted[:, 3] += 1.0
    delta = _build("ce")(_step(logits_s=shifted)).item() - got.item()
    moved = sum(nll(r[:3] + [r[3] + 1.0], i) - nll(r, i) for i, r in enumerate(rows)) / 3
    assert delta == pytest.approx(moved, rel=1e-5)


# ---- score ---------------------------------------------------------------------------------------------------
S = torch.tensor([[2.0, -1.0, 0.0], [0.5, 1.0, -1e4]])
T = torch.tensor([[1.0, 0.0, 1.0], [0.5, 3.0, -1e4]])


def test_score_mse_hand_value():
    # (1 + 1 + 1) + (0 + 4 + 0) over 6 entries; the masked -1e4 pair adds 0 but counts
    got = _build("score")(_step(logits_s=S, logits_t=T))
    assert got.item() == pytest.approx(7 / 6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_score_kl_with_temperature_is_scaled_by_t_squared(temperature):
    def softmax(row):
        e = [math.exp(v / temperature) for v in row]
        return [x / sum(e) for x in e]

    kl = 0.0
    for srow, trow in zip(S.tolist(), T.tolist()):
        p, q = softmax(trow), softmax(srow)
        kl += sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)
    want = kl / 2 * temperature**2  # batch mean (2 rows), times T^2
    got = _build("score", loss="kl", temperature=temperature)(_step(logits_s=S, logits_t=T))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_score_checks_its_parameters():
    with pytest.raises(ValueError, match="loss='hinge'; expected one of mse, kl"):
        resolve_term({"name": "score", "loss": "hinge"})
    with pytest.raises(ValueError, match="temperature=-1"):
        resolve_term({"name": "score", "loss": "kl", "temperature": -1})


# ---- mgfd (PMD, Eq. 2) ---------------------------------------------------------------------------------------
def test_mgfd_is_pmd_eq2_with_counts_on_hr_and_tail():
    s_hr = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [7.0, 8.0]], [[9.0, 9.0], [0.0, 1.0], [5.0, 5.0]]])
    t_hr = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [7.0, 7.0]], [[9.0, 9.0], [1.0, 0.0], [5.0, 5.0]]])
    c_hr = torch.tensor([[0, 2, 1], [0, 1, 0]])  # position 1 of row 0 drawn twice: it weighs twice
    s_tail = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[0.0, 0.0], [1.0, 1.0], [1.0, -1.0]]])
    t_tail = torch.tensor([[[6.0, 5.0], [4.0, 3.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])
    c_tail = torch.tensor([[0, 0, 0], [0, 1, 1]])  # row 0 unmasked: 0 although the states differ
    # hr row 0: student (2 [3,4] + [7,8]) / 3 ~ [13, 16], teacher (2 [1,0] + [7,7]) / 3 ~ [9, 7]
    # hr row 1: student [0, 1], teacher [1, 0];  tail row 1: student [1, 0], teacher [0, 2] ~ [0, 1]
    err0 = sum((a - b) ** 2 for a, b in zip(_unit([13, 16]), _unit([9, 7])))
    want = (err0 + 2.0) / 4 + (0.0 + 2.0) / 4  # each: mean over B x d = 4 entries
    step = _step(views={"hr": {"side": "query", "counts": c_hr}},
                 student={"hr": {"hidden": s_hr}}, teacher={"hr": {"hidden": t_hr}},
                 s_rows={"tail_hidden": s_tail, "tail_counts": c_tail}, t_rows={"tail_hidden": t_tail})
    got = _build("mgfd")(step)
    assert got.item() == pytest.approx(want, rel=1e-6)
    none = _step(views={"hr": {"counts": torch.zeros_like(c_hr)}}, student={"hr": {"hidden": s_hr}},
                 teacher={"hr": {"hidden": t_hr}},
                 s_rows={"tail_hidden": s_tail, "tail_counts": torch.zeros_like(c_tail)},
                 t_rows={"tail_hidden": t_tail})
    assert _build("mgfd")(none).item() == 0.0  # mask rate 0: exactly 0


def test_mgfd_rejects_unequal_widths_once_dims_are_known():
    with pytest.raises(ValueError, match="use mgd, which aligns widths"):
        resolve_term({"name": "mgfd"}, Dims(2, 4, 4, 8, 1, 1, 3, 6))


# ---- mgd (MGD) -----------------------------------------------------------------------------------------------
def _centre_taps(generator, scale):
    """Conv1: the identity at the centre tap; conv2: `scale` times it: out = scale * relu(visible states)."""
    with torch.no_grad():
        for conv, s in ((generator.generate[0], 1.0), (generator.generate[2], scale)):
            conv.weight.zero_()
            conv.weight[:, :, 1] = s * torch.eye(conv.weight.shape[0])
            conv.bias.zero_()


def test_mgd_hand_value_per_side_generator_head_skipped(monkeypatch):
    hides = iter([torch.tensor([[False, True, False]]),  # hr, then tail (the views' order)
                  torch.tensor([[False, False, False], [False, True, False]])])
    rates = []

    def fixed_hide(mask, rate):
        rates.append(rate)
        return next(hides)

    monkeypatch.setattr(terms_module, "random_token_mask", fixed_hide)
    term = _build("mgd", hide_rate=0.3)
    assert set(term.generators) == {"query", "entity"}
    assert term.generators["query"] is not term.generators["entity"]
    _centre_taps(term.generators["query"], 1.0)
    _centre_taps(term.generators["entity"], 2.0)
    views = {"hr": {"side": "query", "inputs": {"attention_mask": torch.tensor([[1, 1, 1]])}},
             "tail": {"side": "entity", "inputs": {"attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}},
             "head": {"side": "entity", "inputs": {"attention_mask": torch.ones(1, 3, dtype=torch.long)}}}
    student = {"hr": {"hidden": torch.tensor([[[1.0, -1.0], [2.0, 3.0], [4.0, 0.0]]])},
               "tail": {"hidden": torch.tensor([[[1.0, 1.0], [-2.0, 5.0], [9.0, 9.0]],
                                                [[0.5, 0.0], [3.0, 3.0], [0.0, 0.0]]])},
               "head": {"hidden": torch.full((1, 3, 2), 50.0)}}
    teacher = {"hr": {"hidden": torch.tensor([[[1.0, 1.0], [1.0, 0.0], [2.0, 0.0]]])},
               "tail": {"hidden": torch.tensor([[[2.0, 2.0], [0.0, 8.0], [100.0, 100.0]],
                                                [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])},
               "head": {"hidden": torch.full((1, 3, 2), -50.0)}}
    # hr (query generator, out = relu): [1, 0], [0, 0] (hidden), [4, 0] vs the teacher: (0 + 1) + (1 + 0) + (4 + 0)
    #   = 6 over 3 tokens x 2 dims -> 1.0
    # tail (entity generator, out = 2 relu): row 0 [2, 2], [0, 10], padding; row 1 [1, 0], [0, 0] (hidden), [0, 0]
    #   errors (0 + 0) + (0 + 4) + (0 + 1) + (1 + 1) + (0 + 0) = 7 over 5 tokens x 2 dims -> 0.7
    got = term(_step(views=views, student=student, teacher=teacher))
    assert got.item() == pytest.approx(1.0 + 0.7, rel=1e-6)
    assert rates == [0.3, 0.3]  # the head view draws nothing


def test_mgd_generators_bridge_unequal_widths_and_get_gradients():
    dims = Dims(2, 4, 4, 8, 1, 1, 3, 6)
    term = _build("mgd", dims=dims)
    assert term.p == {"hide_rate": 0.65, "generator": "conv"}
    assert term.generators["query"].align.weight.shape == (4, 2)
    s = torch.randn(2, 5, 2, requires_grad=True)
    views = {"hr": {"side": "query", "inputs": {"attention_mask": torch.ones(2, 5, dtype=torch.long)}}}
    out = term(_step(views=views, student={"hr": {"hidden": s}}, teacher={"hr": {"hidden": torch.randn(2, 5, 4)}}))
    out.backward()
    assert s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in term.generators["query"].parameters())
    assert all(p.grad is None for p in term.generators["entity"].parameters())  # no entity view in this step


@pytest.mark.parametrize("params, message", [({"hide_rate": 0.0}, "hide_rate=0.0"), ({"hide_rate": 1}, "hide_rate=1"),
                                             ({"generator": "mlp"}, "per-token MLP")])
def test_mgd_checks_its_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        resolve_term({"name": "mgd", **params})


# ---- pkd -----------------------------------------------------------------------------------------------------
def _layer_states(n, length, fixed, seed):
    """n + 1 hidden states (embeddings first) of one row; `fixed[i]` = the vector every token of state i holds."""
    g = torch.Generator().manual_seed(seed)
    states = [torch.randn(1, length, 2, generator=g) * 3 for _ in range(n + 1)]
    for i, v in fixed.items():
        states[i] = torch.tensor(v).expand(1, length, 2).clone()
    return tuple(states)


def test_pkd_normalised_pooled_vectors_element_mean_layer_map():
    term = _build("pkd")
    assert term.layer_map == [1, 3, 5]  # 6 -> 3 uniform: pairs (student 1, teacher 2), (student 2, teacher 4)
    hr_s = _layer_states(3, 2, {1: [3.0, 4.0], 2: [1.0, 0.0]}, seed=0)
    hr_t = _layer_states(6, 2, {2: [1.0, 0.0], 4: [0.0, 5.0]}, seed=1)
    ent_s = _layer_states(3, 2, {1: [2.0, 0.0], 2: [-1.0, 0.0]}, seed=2)
    ent_t = _layer_states(6, 2, {2: [1.0, 0.0], 4: [1.0, 0.0]}, seed=3)
    ent_s[1][0, 1] = 100.0  # padding: never pooled
    ent_t[4][0, 1] = -100.0
    views = {"hr": {"side": "query", "inputs": {"attention_mask": torch.tensor([[1, 1]])}},
             "entities": {"side": "entity", "inputs": {"attention_mask": torch.tensor([[1, 0]])}}}
    step = _step(views=views, student={"hr": {"states": hr_s}, "entities": {"states": ent_s}},
                 teacher={"hr": {"states": hr_t}, "entities": {"states": ent_t}})
    # hr: [0.6, 0.8] vs [1, 0] -> (0.16 + 0.64) / 2 = 0.4; [1, 0] vs [0, 1] -> 2 / 2 = 1.0; pairs' mean 0.7
    # entities: [1, 0] vs [1, 0] -> 0; [-1, 0] vs [1, 0] -> 4 / 2 = 2.0; pairs' mean 1.0
    assert term(step).item() == pytest.approx((0.7 + 1.0) / 2, rel=1e-6)  # mean over the views
    step.pooling = "cls"  # the same here: every real token holds the same vector
    assert term(step).item() == pytest.approx(0.85, rel=1e-6)


def test_pkd_of_a_one_layer_student_is_zero():
    term = _build("pkd", dims=Dims(2, 2, 4, 4, 1, 1, 1, 6))
    assert term.layer_map == [5]
    views = {"hr": {"inputs": {"attention_mask": torch.ones(1, 2, dtype=torch.long)}}}
    step = _step(views=views, student={"hr": {"states": _layer_states(1, 2, {}, 4)}},
                 teacher={"hr": {"states": _layer_states(6, 2, {}, 5)}})
    assert term(step).item() == 0.0
