"""Losses (docs/method.md) against slow, loop-based reference implementations written from the formulas.

The references below work on Python floats (double precision) with ``math.exp``/``math.log`` and explicit
loops over i, j; they never call icsd.losses. The configured loss (``icsd.losses.Criterion``, through
``icsd_loss`` below) computes in float32 (it casts features for AMP safety), so its comparisons use a
relative tolerance of 1e-5 on top of the absolute 1e-6; the pure per-direction functions are fed float64 and
compared at 1e-6 (and tighter).
"""
from __future__ import annotations

import math

import pytest
import torch

from icsd.config import config_from_dict
from icsd.losses import (
    Criterion,
    contrastive_loss,
    cosine_similarity_matrix,
    fuse_similarities,
    multi_positive_targets,
    soft_label_loss,
)

B = 7
IDS = [0, 1, 1, 2, 3, 3, 3]
D_INT = 6   # backbone (internal) feature size
D_HEAD = 5  # head output size
D_EXT_I = 9  # external image teacher size
D_EXT_T = 4  # external text teacher size
ATOL = 1e-6
RTOL32 = 1e-5  # icsd_loss works in float32


# ----------------------------------------------------------------------------------------------------
# Reference implementations (python loops, double precision)
# ----------------------------------------------------------------------------------------------------
def to_list(t: torch.Tensor) -> list:
    return t.detach().double().tolist()


def ref_targets(ids: list) -> list:
    n = len(ids)
    P = [[0.0] * n for _ in range(n)]
    for i in range(n):
        count = 0
        for k in range(n):
            if ids[i] == ids[k]:
                count += 1
        for j in range(n):
            P[i][j] = (1.0 if ids[i] == ids[j] else 0.0) / count
    return P


def ref_log_softmax(row: list) -> list:
    m = max(row)
    total = 0.0
    for v in row:
        total += math.exp(v - m)
    lse = m + math.log(total)
    return [v - lse for v in row]


def ref_softmax(row: list) -> list:
    return [math.exp(v) for v in ref_log_softmax(row)]


def ref_transpose(M: list) -> list:
    return [[M[i][j] for i in range(len(M))] for j in range(len(M[0]))]


def ref_matmul_t(A: list, Bm: list) -> list:
    """A B^T for row lists."""
    out = []
    for i in range(len(A)):
        row = []
        for j in range(len(Bm)):
            s = 0.0
            for d in range(len(A[i])):
                s += A[i][d] * Bm[j][d]
            row.append(s)
        out.append(row)
    return out


def ref_ce(L: list, P: list, tau: float, mode: str) -> float:
    """mean_i(-sum_j P[i][j] log softmax_j(L[i] / tau)); ``mean`` also divides by the number of columns."""
    rows, cols = len(L), len(L[0])
    total = 0.0
    for i in range(rows):
        logp = ref_log_softmax([L[i][j] / tau for j in range(cols)])
        for j in range(cols):
            total -= P[i][j] * logp[j]
    loss = total / rows
    if mode == "mean":
        loss /= cols
    return loss


def ref_cos(X: list) -> list:
    n = len(X)
    norms = [math.sqrt(sum(v * v for v in X[i])) for i in range(n)]
    S = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            dot = 0.0
            for d in range(len(X[i])):
                dot += X[i][d] * X[j][d]
            S[i][j] = dot / (norms[i] * norms[j])
    return S


def ref_fuse(S_int, S_ext, alpha: float) -> list:
    n = len(S_int) if S_int is not None else len(S_ext)
    F = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            a = S_int[i][j] if alpha > 0 else 0.0
            b = S_ext[i][j] if alpha < 1 else 0.0
            F[i][j] = alpha * a + (1.0 - alpha) * b
    return F


def ref_soft(L: list, Fm: list, tau_s: float, tau_t: float, kind: str = "kl", mode: str = "mean") -> float:
    """kl: (1/B) sum_i KL(Q[i] || softmax(L[i]/tau_s)), Q = softmax_rows(F/tau_t); ce: -sum Q log p, reduced
    as the contrastive loss."""
    rows, cols = len(L), len(L[0])
    total = 0.0
    for i in range(rows):
        logq = ref_log_softmax([Fm[i][j] / tau_t for j in range(cols)])
        logp = ref_log_softmax([L[i][j] / tau_s for j in range(cols)])
        for j in range(cols):
            q = math.exp(logq[j])
            if kind == "kl":
                total += q * (logq[j] - logp[j])
            else:
                total -= q * logp[j]
    loss = total / rows
    if kind == "ce" and mode == "mean":
        loss /= cols
    return loss


def ref_icsd(out: dict, ids: list, loss_raw: dict, ext_img=None, ext_txt=None) -> dict:
    """The total loss from the formulas (docs/method.md), as floats; ``loss_raw``: the raw ``loss:`` mapping."""
    c = {"weight": 1.0, "mode": "mean", **loss_raw.get("contrastive", {})}
    s = {"weight": 0.15, "kind": "kl", "mode": "mean", "alpha": 0.3, **loss_raw.get("soft_label", {})}
    f, g = to_list(out["f_img"]), to_list(out["f_txt"])
    L = ref_matmul_t(f, g)
    LT = ref_transpose(L)
    P = ref_targets(ids)
    tau = val(out["tau"].detach())
    l_i2t = ref_ce(L, P, tau, c["mode"])
    l_t2i = ref_ce(LT, ref_transpose(P), tau, c["mode"])
    res = {"contrastive_i2t": l_i2t, "contrastive_t2i": l_t2i,
           "loss_contrastive": c["weight"] * (l_i2t + l_t2i) / 2}
    if s["weight"] > 0:
        alpha = s["alpha"]
        SI = ref_cos(to_list(out["x_img"])) if alpha > 0 else None
        ST = ref_cos(to_list(out["x_txt"])) if alpha > 0 else None
        EI = ref_cos(to_list(ext_img)) if alpha < 1 else None
        ET = ref_cos(to_list(ext_txt)) if alpha < 1 else None
        FI, FT = ref_fuse(SI, EI, alpha), ref_fuse(ST, ET, alpha)
        tau_t = val(out["tau_t"].detach())
        kl_i2t = ref_soft(L, FI, val(out["tau_s_i2t"].detach()), tau_t, s["kind"], s["mode"])
        kl_t2i = ref_soft(LT, FT, val(out["tau_s_t2i"].detach()), tau_t, s["kind"], s["mode"])
        res.update(soft_i2t=kl_i2t, soft_t2i=kl_t2i, loss_soft=s["weight"] * (kl_i2t + kl_t2i) / 2)
    else:
        res["loss_soft"] = 0.0
    res["loss"] = res["loss_contrastive"] + res["loss_soft"]
    return res


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------
def loss_cfg(raw: dict):
    return config_from_dict({"loss": raw}).loss


class Temperatures:
    """The temperatures the terms read, from a test's ``out`` dict (the shared student temperature ``tau_s`` is
    ``out["tau_s_i2t"]``)."""

    def __init__(self, out: dict):
        self.out = out

    def temperature(self, name: str) -> torch.Tensor:
        return self.out["tau_s_i2t" if name == "tau_s" else name]

    def head(self, name: str):
        raise KeyError(name)


def icsd_loss(out: dict, ids: torch.Tensor, cfg, ext_img=None, ext_txt=None) -> dict:
    """The configured loss (``icsd.losses.Criterion``) on a test's features, temperatures and teachers."""
    batch = {"image_index": ids, **({"ext_img": ext_img} if ext_img is not None else {}),
             **({"ext_txt": ext_txt} if ext_txt is not None else {})}
    features = {k: out[k] for k in ("x_img", "x_txt", "f_img", "f_txt")}
    return Criterion(cfg)(features, batch, Temperatures(out))


def make_out(seed: int = 0, dtype=torch.float32, tau=0.07, tau_s_i2t=0.3, tau_s_t2i=None, tau_t=0.8,
             requires_grad: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(B, D_HEAD, generator=gen, dtype=torch.float64), dim=1)
    g = torch.nn.functional.normalize(torch.randn(B, D_HEAD, generator=gen, dtype=torch.float64), dim=1)
    out = {
        "x_img": torch.randn(B, D_INT, generator=gen, dtype=torch.float64),
        "x_txt": torch.randn(B, D_INT, generator=gen, dtype=torch.float64),
        "f_img": f, "f_txt": g,
        "tau": torch.tensor(tau, dtype=torch.float64),
        "tau_s_i2t": torch.tensor(tau_s_i2t, dtype=torch.float64),
        "tau_s_t2i": torch.tensor(tau_s_i2t if tau_s_t2i is None else tau_s_t2i, dtype=torch.float64),
        "tau_t": torch.tensor(tau_t, dtype=torch.float64),
    }
    return {k: v.to(dtype).requires_grad_(requires_grad) for k, v in out.items()}


def make_ext(seed: int = 1, dtype=torch.float32, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(seed)
    ext_img = torch.randn(B, D_EXT_I, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
    ext_txt = torch.randn(B, D_EXT_T, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
    return ext_img, ext_txt


def ids_tensor() -> torch.Tensor:
    return torch.tensor(IDS, dtype=torch.long)


def rand_logits(seed: int, rows: int = B, cols: int = B) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen, dtype=torch.float64)


def val(t) -> float:
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)


def close(actual, expected: float, rtol: float = 0.0, atol: float = ATOL) -> bool:
    a = float(actual.detach()) if isinstance(actual, torch.Tensor) else float(actual)
    return abs(a - expected) <= atol + rtol * abs(expected)


# ----------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------
def test_multi_positive_targets_match_loops():
    P = multi_positive_targets(ids_tensor())
    expected = ref_targets(IDS)
    assert tuple(P.shape) == (B, B)
    for i in range(B):
        for j in range(B):
            assert abs(float(P[i, j]) - expected[i][j]) <= 1e-7, (i, j)
    # spot checks from the definition: image 3 has three captions in the batch, image 0 one
    assert float(P[4, 6]) == pytest.approx(1 / 3) and float(P[0, 0]) == 1.0 and float(P[0, 1]) == 0.0
    assert torch.allclose(P.sum(dim=1).double(), torch.ones(B, dtype=torch.float64))


def test_multi_positive_targets_unsorted_ids():
    ids = [5, 2, 5, 9, 2, 5, 0]
    P = multi_positive_targets(torch.tensor(ids))
    expected = ref_targets(ids)
    for i in range(len(ids)):
        for j in range(len(ids)):
            assert abs(float(P[i, j]) - expected[i][j]) <= 1e-7, (i, j)


# ----------------------------------------------------------------------------------------------------
# Contrastive loss, both directions and both modes
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["mean", "sum"])
@pytest.mark.parametrize("tau", [0.05, 0.37])
def test_contrastive_loss_both_directions(mode, tau):
    gen = torch.Generator().manual_seed(3)
    f = torch.nn.functional.normalize(torch.randn(B, D_HEAD, generator=gen, dtype=torch.float64), dim=1)
    g = torch.nn.functional.normalize(torch.randn(B, D_HEAD, generator=gen, dtype=torch.float64), dim=1)
    L = f @ g.t()
    P_list = ref_targets(IDS)
    P = torch.tensor(P_list, dtype=torch.float64)
    t = torch.tensor(tau, dtype=torch.float64)
    L_list = ref_matmul_t(to_list(f), to_list(g))
    exp_i2t = ref_ce(L_list, P_list, tau, mode)
    exp_t2i = ref_ce(ref_transpose(L_list), ref_transpose(P_list), tau, mode)
    assert abs(exp_i2t - exp_t2i) > 1e-3  # the two directions really differ on this batch
    assert close(contrastive_loss(L, P, t, mode), exp_i2t, atol=1e-9)
    assert close(contrastive_loss(L.t(), P.t(), t, mode), exp_t2i, atol=1e-9)


def test_contrastive_mean_mode_is_sum_mode_over_columns():
    L = rand_logits(4)
    P = torch.tensor(ref_targets(IDS), dtype=torch.float64)
    t = torch.tensor(0.1, dtype=torch.float64)
    L_list, P_list = to_list(L), ref_targets(IDS)
    s = ref_ce(L_list, P_list, 0.1, "sum")
    assert close(contrastive_loss(L, P, t, "sum"), s, atol=1e-9)
    assert close(contrastive_loss(L, P, t, "mean"), s / B, atol=1e-9)
    # "sum" is the standard cross-entropy; with one positive per row it is torch's cross_entropy
    eye = torch.eye(B, dtype=torch.float64)
    expected_ce = torch.nn.functional.cross_entropy(L / 0.1, torch.arange(B)).item()
    assert close(contrastive_loss(L, eye, t, "sum"), expected_ce, atol=1e-9)


# ----------------------------------------------------------------------------------------------------
# ISF and the soft-label loss
# ----------------------------------------------------------------------------------------------------
def test_cosine_similarity_matrix_matches_loops():
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(B, D_EXT_I, generator=gen) * 3.0
    S = cosine_similarity_matrix(X)
    expected = ref_cos(to_list(X))
    for i in range(B):
        for j in range(B):
            assert close(S[i, j], expected[i][j], atol=1e-6), (i, j)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.75, 1.0])
def test_fusion_matches_formula(alpha):
    gen = torch.Generator().manual_seed(6)
    xi = torch.randn(B, D_INT, generator=gen, dtype=torch.float64)
    xe = torch.randn(B, D_EXT_I, generator=gen, dtype=torch.float64)
    S_int, S_ext = ref_cos(to_list(xi)), ref_cos(to_list(xe))
    expected = ref_fuse(S_int, S_ext, alpha)
    fused = fuse_similarities(torch.tensor(S_int, dtype=torch.float64), torch.tensor(S_ext, dtype=torch.float64),
                              alpha)
    for i in range(B):
        for j in range(B):
            assert close(fused[i, j], expected[i][j], atol=1e-12), (i, j)


@pytest.mark.parametrize("tau_s,tau_t", [(0.45, 1.0), (0.2, 0.6), (0.9, 0.15)])
def test_soft_label_kl_both_directions(tau_s, tau_t):
    gen = torch.Generator().manual_seed(7)
    f = torch.nn.functional.normalize(torch.randn(B, D_HEAD, generator=gen, dtype=torch.float64), dim=1)
    g = torch.nn.functional.normalize(torch.randn(B, D_HEAD, generator=gen, dtype=torch.float64), dim=1)
    FI = torch.tensor(ref_fuse(ref_cos(to_list(torch.randn(B, 6, generator=gen))),
                               ref_cos(to_list(torch.randn(B, 8, generator=gen))), 0.3), dtype=torch.float64)
    FT = torch.tensor(ref_fuse(ref_cos(to_list(torch.randn(B, 6, generator=gen))),
                               ref_cos(to_list(torch.randn(B, 3, generator=gen))), 0.3), dtype=torch.float64)
    L = f @ g.t()
    L_list = ref_matmul_t(to_list(f), to_list(g))
    ts, tt = torch.tensor(tau_s, dtype=torch.float64), torch.tensor(tau_t, dtype=torch.float64)
    exp_i2t = ref_soft(L_list, to_list(FI), tau_s, tau_t)
    exp_t2i = ref_soft(ref_transpose(L_list), to_list(FT), tau_s, tau_t)
    assert exp_i2t > 0 and exp_t2i > 0 and abs(exp_i2t - exp_t2i) > 1e-4
    assert close(soft_label_loss(L, FI, ts, tt, "kl"), exp_i2t, atol=1e-9)
    assert close(soft_label_loss(L.t(), FT, ts, tt, "kl"), exp_t2i, atol=1e-9)


def test_soft_label_kl_is_zero_when_student_equals_teacher():
    L = rand_logits(8)
    # Q = softmax(F / tau_t) equals softmax(L / tau_s) when F / tau_t == L / tau_s
    ts, tt = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64)
    assert abs(val(soft_label_loss(L, L * 0.5, ts, tt, "kl"))) < 1e-12
    assert val(soft_label_loss(L, L * 0.3, ts, tt, "kl")) > 1e-4


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_soft_label_ce_kind_both_reductions(mode):
    L, Fm = rand_logits(9), torch.tensor(ref_cos(to_list(rand_logits(10, B, 11))), dtype=torch.float64)
    ts, tt = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    expected = ref_soft(to_list(L), to_list(Fm), 0.3, 0.7, "ce", mode)
    assert close(soft_label_loss(L, Fm, ts, tt, "ce", mode), expected, atol=1e-9)
    expected_t = ref_soft(to_list(L.t()), to_list(Fm), 0.3, 0.7, "ce", mode)
    assert close(soft_label_loss(L.t(), Fm, ts, tt, "ce", mode), expected_t, atol=1e-9)
    # ce = KL + H(Q) (per row, then the same reduction), a different number from KL
    kl = ref_soft(to_list(L), to_list(Fm), 0.3, 0.7, "kl")
    assert abs(expected - kl) > 1e-3


# ----------------------------------------------------------------------------------------------------
# The combined loss
# ----------------------------------------------------------------------------------------------------
CONFIGS = {
    "default": {},
    "sum_modes": {"contrastive": {"mode": "sum", "weight": 0.7}, "soft_label": {"weight": 0.4}},
    "separate_tau": {"soft_label": {"shared_tau": False}},
    "external_only": {"soft_label": {"alpha": 0.0}},
    "internal_only": {"soft_label": {"alpha": 1.0}},
    "alpha_0.6_detached": {"soft_label": {"alpha": 0.6, "detach_internal": True}},
    "ce_mean": {"soft_label": {"kind": "ce", "mode": "mean", "weight": 0.5}},
    "ce_sum": {"soft_label": {"kind": "ce", "mode": "sum", "weight": 0.5},
               "contrastive": {"mode": "sum"}},
    "contrastive_only": {"soft_label": {"weight": 0.0}},
    "soft_only": {"contrastive": {"weight": 0.0}, "soft_label": {"weight": 1.0}},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_icsd_loss_matches_reference(name):
    raw = CONFIGS[name]
    cfg = loss_cfg(raw)
    separate = raw.get("soft_label", {}).get("shared_tau") is False
    out = make_out(seed=11, tau_s_i2t=0.3, tau_s_t2i=0.6 if separate else None)
    ext_img, ext_txt = make_ext(seed=12)
    terms = icsd_loss(out, ids_tensor(), cfg, ext_img, ext_txt)
    expected = ref_icsd(out, IDS, raw, ext_img, ext_txt)
    for key in ("loss", "loss_contrastive", "loss_soft"):
        assert close(terms[key], expected[key], rtol=RTOL32), (key, val(terms[key]), expected[key])
    # per-direction terms, where the implementation reports them
    for key in ("contrastive_i2t", "contrastive_t2i", "soft_i2t", "soft_t2i"):
        if key in terms and key in expected:
            assert close(terms[key], expected[key], rtol=RTOL32), (key, val(terms[key]), expected[key])
    assert close(terms["loss"], val(terms["loss_contrastive"]) + val(terms["loss_soft"]), rtol=1e-6)


def test_separate_student_temperatures_go_to_their_directions():
    """shared_tau false: i2t uses tau_s_i2t and t2i tau_s_t2i; swapping them changes the loss."""
    raw = {"soft_label": {"shared_tau": False, "alpha": 0.5}}
    cfg = loss_cfg(raw)
    ext_img, ext_txt = make_ext(seed=14)
    out = make_out(seed=13, tau_s_i2t=0.2, tau_s_t2i=0.8)
    swapped = dict(out, tau_s_i2t=out["tau_s_t2i"], tau_s_t2i=out["tau_s_i2t"])
    got = val(icsd_loss(out, ids_tensor(), cfg, ext_img, ext_txt)["loss_soft"])
    got_swapped = val(icsd_loss(swapped, ids_tensor(), cfg, ext_img, ext_txt)["loss_soft"])
    exp = ref_icsd(out, IDS, raw, ext_img, ext_txt)["loss_soft"]
    exp_swapped = ref_icsd(swapped, IDS, raw, ext_img, ext_txt)["loss_soft"]
    assert abs(exp - exp_swapped) > 1e-3
    assert close(got, exp, rtol=RTOL32) and close(got_swapped, exp_swapped, rtol=RTOL32)


def test_weight_zero_turns_soft_label_off():
    raw = {"soft_label": {"weight": 0.0}}
    out = make_out(seed=15)
    ext_img, ext_txt = make_ext(seed=16)
    terms = icsd_loss(out, ids_tensor(), loss_cfg(raw), ext_img, ext_txt)
    assert val(terms["loss_soft"]) == 0.0
    assert val(terms["loss"]) == val(terms["loss_contrastive"])
    assert close(terms["loss"], ref_icsd(out, IDS, raw)["loss_contrastive"], rtol=RTOL32)
    # the soft label is really off: internal features and teacher features do not matter
    nan = float("nan")
    bad = dict(out, x_img=torch.full_like(out["x_img"], nan), x_txt=torch.full_like(out["x_txt"], nan))
    terms_bad = icsd_loss(bad, ids_tensor(), loss_cfg(raw), None, None)
    assert val(terms_bad["loss"]) == val(terms["loss"])


def test_external_only_ignores_internal_features():
    """alpha = 0: x_img / x_txt take no part (NaN internal features give the same, finite loss)."""
    raw = {"soft_label": {"alpha": 0.0}}
    cfg = loss_cfg(raw)
    out = make_out(seed=17, requires_grad=True)
    ext_img, ext_txt = make_ext(seed=18)
    terms = icsd_loss(out, ids_tensor(), cfg, ext_img, ext_txt)
    assert close(terms["loss"], ref_icsd(out, IDS, raw, ext_img, ext_txt)["loss"], rtol=RTOL32)
    nan_x = torch.full((B, D_INT), float("nan"), requires_grad=True)
    other = dict(out, x_img=nan_x, x_txt=torch.randn(B, D_INT, requires_grad=True))
    terms_other = icsd_loss(other, ids_tensor(), cfg, ext_img, ext_txt)
    assert math.isfinite(val(terms_other["loss"]))
    assert val(terms_other["loss"]) == val(terms["loss"])
    terms_other["loss"].backward()
    for x in (other["x_img"], other["x_txt"]):
        assert x.grad is None or float(x.grad.abs().max()) == 0.0


def test_soft_label_differs_from_external_only_when_alpha_positive():
    """Guard for the test above: with alpha > 0 the internal features do change the loss."""
    raw = {"soft_label": {"alpha": 0.3}}
    out = make_out(seed=17)
    ext_img, ext_txt = make_ext(seed=18)
    a = val(icsd_loss(out, ids_tensor(), loss_cfg(raw), ext_img, ext_txt)["loss"])
    other = dict(out, x_img=torch.randn(B, D_INT, generator=torch.Generator().manual_seed(99)))
    b = val(icsd_loss(other, ids_tensor(), loss_cfg(raw), ext_img, ext_txt)["loss"])
    assert abs(a - b) > 1e-5


# ----------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------
def numerical_grad(out: dict, keys: tuple, raw: dict, ext_img, ext_txt, h: float = 1e-6) -> list:
    """Central differences of the reference total loss with respect to every entry of ``out[key]``, the
    entries of all ``keys`` moved together (one shared temperature used in two places)."""
    base = {k: v.detach().double().clone() for k, v in out.items()}
    flats = [base[key].reshape(-1) for key in keys]
    grads = []
    for n in range(flats[0].numel()):
        keep = float(flats[0][n])
        for flat in flats:
            flat[n] = keep + h
        plus = ref_icsd(base, IDS, raw, ext_img, ext_txt)["loss"]
        for flat in flats:
            flat[n] = keep - h
        minus = ref_icsd(base, IDS, raw, ext_img, ext_txt)["loss"]
        for flat in flats:
            flat[n] = keep
        grads.append((plus - minus) / (2 * h))
    return grads


@pytest.mark.parametrize("raw", [
    {},
    {"soft_label": {"shared_tau": False, "alpha": 0.6, "weight": 0.5}},
    {"contrastive": {"mode": "sum"}, "soft_label": {"kind": "ce", "mode": "sum", "alpha": 1.0}},
], ids=["default", "separate_tau", "ce_internal_only"])
def test_gradients_match_finite_differences_of_reference(raw):
    """Autograd through icsd_loss equals the numerical gradient of the loop reference, for the features,
    the internal features (through S_int, which keeps its gradient by default) and every temperature."""
    cfg = loss_cfg(raw)
    separate = raw.get("soft_label", {}).get("shared_tau") is False
    out = make_out(seed=21, tau_s_i2t=0.3, tau_s_t2i=0.55 if separate else None, tau_t=0.5, requires_grad=True)
    ext_img, ext_txt = make_ext(seed=22)
    icsd_loss(out, ids_tensor(), cfg, ext_img, ext_txt)["loss"].backward()
    students = [("tau_s_i2t",), ("tau_s_t2i",)] if separate else [("tau_s_i2t", "tau_s_t2i")]  # shared: one tau_s
    for keys in [("x_img",), ("x_txt",), ("f_img",), ("f_txt",), ("tau",), *students, ("tau_t",)]:
        key = keys[0]
        grad = out[key].grad
        assert grad is not None, key
        expected = numerical_grad(out, keys, raw, ext_img, ext_txt)
        got = grad.double().reshape(-1).tolist()
        for n, (a, e) in enumerate(zip(got, expected)):
            assert abs(a - e) <= 1e-5 + 1e-4 * abs(e), (key, n, a, e)
    assert val(out["x_img"].grad.abs().max()) > 1e-4  # the internal part really carries gradient


def test_detach_internal_stops_gradient_through_internal_similarity():
    out = make_out(seed=23, requires_grad=True)
    ext_img, ext_txt = make_ext(seed=24)
    # default: x_img / x_txt only enter through S_int, and receive gradient
    icsd_loss(out, ids_tensor(), loss_cfg({}), ext_img, ext_txt)["loss"].backward()
    for key in ("x_img", "x_txt"):
        assert out[key].grad is not None and val(out[key].grad.abs().max()) > 1e-4, key

    out = make_out(seed=23, requires_grad=True)
    raw = {"soft_label": {"detach_internal": True}}
    terms = icsd_loss(out, ids_tensor(), loss_cfg(raw), ext_img, ext_txt)
    # the value is unchanged (the target is the same, only constant) ...
    assert close(terms["loss"], ref_icsd(out, IDS, raw, ext_img, ext_txt)["loss"], rtol=RTOL32)
    terms["loss"].backward()
    for key in ("x_img", "x_txt"):
        assert out[key].grad is None or val(out[key].grad.abs().max()) == 0.0, key
    # ... and the student side still learns
    assert val(out["f_img"].grad.abs().max()) > 1e-4 and val(out["tau_s_i2t"].grad.abs()) > 0


def test_soft_only_gradient_reaches_internal_features_by_default():
    """Isolated: contrastive weight 0, the gradient of the features through S_int alone is non-zero."""
    out = make_out(seed=25, requires_grad=True)
    ext_img, ext_txt = make_ext(seed=26)
    raw = {"contrastive": {"weight": 0.0}, "soft_label": {"weight": 1.0}}
    icsd_loss(out, ids_tensor(), loss_cfg(raw), ext_img, ext_txt)["loss"].backward()
    assert val(out["x_img"].grad.abs().max()) > 1e-4
    assert val(out["x_txt"].grad.abs().max()) > 1e-4


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_external_teacher_features_never_get_gradient(alpha):
    out = make_out(seed=27, requires_grad=True)
    ext_img, ext_txt = make_ext(seed=28, requires_grad=True)
    icsd_loss(out, ids_tensor(), loss_cfg({"soft_label": {"alpha": alpha}}), ext_img, ext_txt)["loss"].backward()
    for ext in (ext_img, ext_txt):
        assert ext.grad is None or float(ext.grad.abs().max()) == 0.0
    assert val(out["f_img"].grad.abs().max()) > 0  # backward did run


# ----------------------------------------------------------------------------------------------------
# CUSA's uni-modal soft-label alignment
# ----------------------------------------------------------------------------------------------------
def ref_layernorm_linear(x: list, gamma: list, beta: list, W: list, b: list, eps: float = 1e-5) -> list:
    """``Linear(LayerNorm(x))`` of one row, in loops."""
    n = len(x)
    mean = sum(x) / n
    var = sum((v - mean) ** 2 for v in x) / n
    z = [(x[d] - mean) / math.sqrt(var + eps) * gamma[d] + beta[d] for d in range(n)]
    return [sum(W[o][d] * z[d] for d in range(n)) + b[o] for o in range(len(W))]


def ref_uni(x_img, x_txt, ext_img, ext_txt, heads: dict, temps: dict, weight: float) -> dict:
    """loss_uni = w * (KL_rows(softmax(S_ext^I/tau_t) || softmax(S_ii/tau_u_img)) + the same for texts) / 2."""
    res = {}
    for key, X, E, head, tau in (("uni_img", x_img, ext_img, "uni_image", "tau_u_img"),
                                 ("uni_txt", x_txt, ext_txt, "uni_text", "tau_u_txt")):
        ln, lin = heads[head][0], heads[head][1]
        U = [ref_layernorm_linear(row, to_list(ln.weight), to_list(ln.bias), to_list(lin.weight), to_list(lin.bias))
             for row in to_list(X)]
        U = [[v / math.sqrt(sum(w * w for w in u)) for v in u] for u in U]
        res[key] = ref_soft(ref_matmul_t(U, U), ref_cos(to_list(E)), temps[tau], temps["tau_t"], "kl")
    res["loss_uni"] = weight * (res["uni_img"] + res["uni_txt"]) / 2
    return res


class UniParameters:
    def __init__(self, heads: dict, temps: dict):
        self.heads, self.temps = heads, temps

    def temperature(self, name):
        return self.temps[name]

    def head(self, name):
        return self.heads[name]


def uni_setup(seed: int, requires_grad: bool = False):
    from icsd.losses.uni_modal import UniModal

    cfg = loss_cfg({"soft_label": {"alpha": 0.0, "weight": 0.1}, "uni_modal": {"weight": 0.5}})
    criterion = Criterion(cfg)
    (term,) = [t for t in criterion.active if isinstance(t, UniModal)]
    torch.manual_seed(seed)
    heads = {k: h.double() for k, h in term.heads(D_INT, 0.3).items()}
    for h in heads.values():  # LayerNorm affine away from (1, 0), so the reference tests it
        torch.nn.init.normal_(h[0].weight, 1.0, 0.2)
        torch.nn.init.normal_(h[0].bias, 0.0, 0.2)
    temps = {k: torch.tensor(v, dtype=torch.float64, requires_grad=requires_grad)
             for k, v in (("tau_u_img", 0.35), ("tau_u_txt", 0.6), ("tau_t", 0.9))}
    return cfg, term, heads, temps


def test_uni_modal_term_matches_reference():
    cfg, term, heads, temps = uni_setup(31)
    out = make_out(seed=32, dtype=torch.float64)
    ext_img, ext_txt = make_ext(seed=33, dtype=torch.float64)
    got = term(out, {"ext_img": ext_img, "ext_txt": ext_txt}, UniParameters(heads, temps))
    expected = ref_uni(out["x_img"], out["x_txt"], ext_img, ext_txt, heads, {k: val(v) for k, v in temps.items()}, 0.5)
    for key in ("uni_img", "uni_txt"):
        assert close(got[key], expected[key], rtol=RTOL32), key  # the teachers' similarities are float32
    assert close(0.5 * got["loss"], expected["loss_uni"], rtol=RTOL32)
    assert set(Criterion(cfg).temperatures()) == {"tau", "tau_s", "tau_t", "tau_u_img", "tau_u_txt"}


def test_uni_modal_gradients_match_finite_differences():
    """For the internal features, the term's own temperatures, the shared teacher temperature and its heads."""
    cfg, term, heads, temps = uni_setup(34, requires_grad=True)
    out = make_out(seed=35, dtype=torch.float64, requires_grad=True)
    ext_img, ext_txt = make_ext(seed=36, dtype=torch.float64)
    term(out, {"ext_img": ext_img, "ext_txt": ext_txt}, UniParameters(heads, temps))["loss"].backward()

    def reference_loss() -> float:
        r = ref_uni(out["x_img"], out["x_txt"], ext_img, ext_txt, heads, {k: val(v) for k, v in temps.items()}, 1.0)
        return r["loss_uni"]  # the term's unweighted loss (weight 1.0 above): (uni_img + uni_txt) / 2

    h = 1e-6
    checks = [("x_img", out["x_img"]), ("tau_u_img", temps["tau_u_img"]), ("tau_u_txt", temps["tau_u_txt"]),
              ("tau_t", temps["tau_t"]), ("uni_image.1.weight", heads["uni_image"][1].weight),
              ("uni_text.0.weight", heads["uni_text"][0].weight)]
    for name, tensor in checks:
        grad = tensor.grad.reshape(-1)
        flat = tensor.data.reshape(-1)
        for n in range(0, flat.numel(), max(1, flat.numel() // 6)):  # a spread of entries of each
            keep = float(flat[n])
            flat[n] = keep + h
            plus = reference_loss()
            flat[n] = keep - h
            minus = reference_loss()
            flat[n] = keep
            numerical = (plus - minus) / (2 * h)
            assert abs(float(grad[n]) - numerical) <= 1e-6 + 1e-4 * abs(numerical), (name, n, float(grad[n]), numerical)
    assert ext_img.grad is None
