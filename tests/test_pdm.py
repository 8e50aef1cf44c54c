"""PDM, heads, temperatures and the optimizer's weight-decay groups (docs/method.md, docs/training.md).

The PDM reference is written with explicit loops from the formula
``u = x/||x||; S = u u^T / t; A = softmax_rows(S) + softmax_cols(S); s = exp(theta); y = s*u - s*(A u);
out = LayerNorm(y)`` (eps 1e-6, affine) and never calls the module under test.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from icsd.config import PDMConfig
from icsd.models import build_model
from icsd.models.heads import build_head
from icsd.models.pdm import PDM
from icsd.train.optim import build_optimizer

ATOL = 1e-6


# ----------------------------------------------------------------------------------------------------
# Reference PDM (loops, python floats)
# ----------------------------------------------------------------------------------------------------
def ref_pdm(x: list, theta: list, ln_w: list, ln_b: list, t: float = 1.0, eps: float = 1e-6) -> list:
    n, d = len(x), len(x[0])
    u = []
    for i in range(n):
        norm = math.sqrt(sum(x[i][k] * x[i][k] for k in range(d)))
        u.append([x[i][k] / norm for k in range(d)])
    S = [[sum(u[i][k] * u[j][k] for k in range(d)) / t for j in range(n)] for i in range(n)]
    # softmax over each row (normalised along j) and over each column (normalised along i)
    row_sm = [[0.0] * n for _ in range(n)]
    col_sm = [[0.0] * n for _ in range(n)]
    for i in range(n):
        z = sum(math.exp(S[i][k]) for k in range(n))
        for j in range(n):
            row_sm[i][j] = math.exp(S[i][j]) / z
    for j in range(n):
        z = sum(math.exp(S[k][j]) for k in range(n))
        for i in range(n):
            col_sm[i][j] = math.exp(S[i][j]) / z
    A = [[row_sm[i][j] + col_sm[i][j] for j in range(n)] for i in range(n)]
    s = [math.exp(theta[k]) for k in range(d)]
    out = []
    for i in range(n):
        y = []
        for k in range(d):
            mix = 0.0
            for j in range(n):
                mix += A[i][j] * u[j][k]
            y.append(s[k] * u[i][k] - s[k] * mix)
        mean = sum(y) / d
        var = sum((v - mean) ** 2 for v in y) / d  # biased, as LayerNorm
        out.append([(y[k] - mean) / math.sqrt(var + eps) * ln_w[k] + ln_b[k] for k in range(d)])
    return out


def ref_layernorm_linear(x: list, ln_w, ln_b, W, bias, eps: float) -> list:
    out = []
    for row in x:
        d = len(row)
        mean = sum(row) / d
        var = sum((v - mean) ** 2 for v in row) / d
        z = [(row[k] - mean) / math.sqrt(var + eps) * ln_w[k] + ln_b[k] for k in range(d)]
        out.append([sum(W[o][k] * z[k] for k in range(d)) + bias[o] for o in range(len(W))])
    return out


def ref_linear(x: list, W, bias) -> list:
    return [[sum(W[o][k] * row[k] for k in range(len(row))) + bias[o] for o in range(len(W))] for row in x]


def val(t: torch.Tensor) -> float:
    return float(t.detach())


def lst(t: torch.Tensor) -> list:
    return t.detach().double().tolist()


def assert_matrix_close(actual: torch.Tensor, expected: list, atol: float = ATOL):
    assert tuple(actual.shape) == (len(expected), len(expected[0]))
    a = lst(actual)
    worst = max(abs(a[i][j] - expected[i][j]) for i in range(len(expected)) for j in range(len(expected[0])))
    assert worst <= atol, worst


def find_pdm(module: nn.Module) -> PDM:
    found = [m for m in module.modules() if isinstance(m, PDM)]
    assert len(found) == 1
    return found[0]


def pdm_params(pdm: PDM):
    """(theta, LayerNorm) of a PDM: theta is its only 1-D parameter outside the LayerNorm."""
    norms = [m for m in pdm.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 1
    norm_ids = {id(p) for p in norms[0].parameters()}
    others = [p for p in pdm.parameters() if id(p) not in norm_ids]
    assert len(others) == 1, "PDM should have exactly one parameter (theta) besides its LayerNorm"
    return others[0], norms[0]


# ----------------------------------------------------------------------------------------------------
# PDM
# ----------------------------------------------------------------------------------------------------
def randomise(pdm: PDM, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    theta, norm = pdm_params(pdm)
    with torch.no_grad():
        theta.copy_(torch.randn(theta.shape, generator=gen, dtype=theta.dtype) * 0.7 - 1.5)
        norm.weight.copy_(1.0 + 0.5 * torch.randn(norm.weight.shape, generator=gen, dtype=norm.weight.dtype))
        norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=gen, dtype=norm.bias.dtype))


def run_pdm_check(pdm: PDM, t: float, seed: int, n: int = 5, d: int = 8):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2.0
    theta, norm = pdm_params(pdm)
    expected = ref_pdm(lst(x), lst(theta), lst(norm.weight), lst(norm.bias), t=t, eps=1e-6)
    assert_matrix_close(pdm(x), expected)


def test_pdm_default_matches_formula():
    pdm = PDM(8).double()
    theta, _ = pdm_params(pdm)
    assert tuple(theta.shape) == (8,)
    run_pdm_check(pdm, 1.0, seed=0)


@pytest.mark.parametrize("t", [1.0, 0.2, 3.0])
def test_pdm_random_params_and_temperature_match_formula(t):
    pdm = PDM(8, scale_init=0.1, temperature=t).double()
    randomise(pdm, seed=1)
    run_pdm_check(pdm, t, seed=2)


def test_pdm_temperature_matters():
    """Guard: a wrong temperature is detectable on this input (so the test above can fail)."""
    pdm = PDM(8, temperature=0.2).double()
    randomise(pdm, seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 8, generator=gen, dtype=torch.float64) * 2.0
    theta, norm = pdm_params(pdm)
    wrong = ref_pdm(lst(x), lst(theta), lst(norm.weight), lst(norm.bias), t=1.0)
    a = lst(pdm(x))
    assert max(abs(a[i][j] - wrong[i][j]) for i in range(5) for j in range(8)) > 1e-3


def test_pdm_layernorm_eps_is_1e_6():
    """With small y (tiny scales) the LayerNorm eps is visible: 1e-6 is the reference's."""
    pdm = PDM(8, scale_init=1e-3).double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    theta, norm = pdm_params(pdm)
    expected = ref_pdm(lst(x), lst(theta), lst(norm.weight), lst(norm.bias), eps=1e-6)
    with_default_eps = ref_pdm(lst(x), lst(theta), lst(norm.weight), lst(norm.bias), eps=1e-5)
    assert_matrix_close(pdm(x), expected)
    assert max(abs(expected[i][j] - with_default_eps[i][j]) for i in range(5) for j in range(8)) > 1e-3


@pytest.mark.parametrize("scale_init", [0.1, 0.25, 2.0])
def test_pdm_theta_init_is_log_scale_init(scale_init):
    pdm = PDM(16, scale_init=scale_init)
    theta, _ = pdm_params(pdm)
    assert tuple(theta.shape) == (16,)
    assert torch.allclose(theta.double(), torch.full((16,), math.log(scale_init), dtype=torch.float64), atol=1e-6)


def test_pdm_scales_are_trainable():
    pdm = PDM(8).double()
    randomise(pdm, seed=4)
    theta, norm = pdm_params(pdm)
    assert theta.requires_grad and norm.weight.requires_grad and norm.bias.requires_grad
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    target = torch.randn(5, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ((pdm(x) - target) ** 2).sum().backward()
    assert theta.grad is not None and float(theta.grad.abs().max()) > 1e-6


def test_pdm_depends_on_the_batch():
    """The output of a row changes with the other rows of its batch (the mix is batch-wise)."""
    pdm = PDM(8).double()
    randomise(pdm, seed=7)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    y_full = pdm(x)[:3]
    y_part = pdm(x[:3])
    assert float((y_full - y_part).abs().max().detach()) > 1e-4


# ----------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------
def linears(module: nn.Module) -> list:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_head_with_pdm_is_pdm_then_linear():
    torch.manual_seed(0)
    head = build_head(8, PDMConfig(enabled=True, scale_init=0.1, temperature=0.5)).double()
    pdm = find_pdm(head)
    (linear,) = linears(head)
    assert linear.in_features == 8 and linear.out_features == 8
    randomise(pdm, seed=9)
    with torch.no_grad():
        linear.bias.copy_(torch.randn(8, dtype=torch.float64))
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    theta, norm = pdm_params(pdm)
    y = ref_pdm(lst(x), lst(theta), lst(norm.weight), lst(norm.bias), t=0.5)
    assert_matrix_close(head(x), ref_linear(y, lst(linear.weight), lst(linear.bias)))


def test_head_without_pdm_is_layernorm_then_linear():
    torch.manual_seed(0)
    head = build_head(8, PDMConfig(enabled=False)).double()
    assert not any(isinstance(m, PDM) for m in head.modules())
    norms = [m for m in head.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 1
    (linear,) = linears(head)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        norms[0].weight.copy_(1 + 0.3 * torch.randn(8, generator=gen, dtype=torch.float64))
        norms[0].bias.copy_(0.3 * torch.randn(8, generator=gen, dtype=torch.float64))
        linear.bias.copy_(torch.randn(8, generator=gen, dtype=torch.float64))
    x = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    expected = ref_layernorm_linear(lst(x), lst(norms[0].weight), lst(norms[0].bias), lst(linear.weight),
                                    lst(linear.bias), eps=norms[0].eps)
    assert_matrix_close(head(x), expected)
    # the baseline is row-wise: a row's output does not depend on the rest of the batch
    assert_matrix_close(head(x[:2]), expected[:2])


@pytest.mark.parametrize("enabled", [True, False])
def test_head_linear_init(enabled):
    torch.manual_seed(1)
    dim = 256
    head = build_head(dim, PDMConfig(enabled=enabled))
    (linear,) = linears(head)
    w = linear.weight.detach().double()
    assert tuple(w.shape) == (dim, dim)
    # 65,536 samples of N(0, 0.02): the empirical std is within ~0.3% (5 sigma) of 0.02, the mean ~0
    assert abs(float(w.std()) - 0.02) < 0.001
    assert abs(float(w.mean())) < 0.001
    # Gaussian, not uniform: about 68.3% of the weights lie within one std
    inside = float((w.abs() < 0.02).double().mean())
    assert abs(inside - 0.6827) < 0.01
    assert torch.count_nonzero(linear.bias) == 0


# ----------------------------------------------------------------------------------------------------
# The full model: heads, temperatures, optimizer groups
# ----------------------------------------------------------------------------------------------------
def model_from(example_cfg, **loss_overrides):
    from icsd.config import apply_overrides, config_from_dict, config_to_dict

    raw = config_to_dict(example_cfg)
    raw = apply_overrides(raw, [f"{k}={v}" for k, v in loss_overrides.items()])
    cfg = config_from_dict(raw)
    model, _ = build_model(cfg)
    return model, cfg


def temps(model) -> dict:
    """The temperatures the loss terms read from the model, by name (the shared student temperature ``tau_s``
    also under both directions' names), after a forward pass of a tiny batch, which returns the features
    alone."""
    torch.manual_seed(0)
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(2, 3, size, size)
    tokens = torch.randint(1, 1000, (2, model.clip.context_length))
    with torch.no_grad():
        out = model(images, tokens)
    assert sorted(out) == ["f_img", "f_txt", "x_img", "x_txt"]
    # f, g are L2-normalised
    assert torch.allclose(out["f_img"].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out["f_txt"].norm(dim=-1), torch.ones(2), atol=1e-5)
    found = {name: model.temperature(name) for name in model.temperatures}
    if "tau_s" in found:
        found["tau_s_i2t"] = found["tau_s_t2i"] = found["tau_s"]
    return found


def is_param(model, t: torch.Tensor) -> bool:
    return any(t is p for p in model.parameters())


def is_learnable(model, t: torch.Tensor) -> bool:
    return is_param(model, t) and t.requires_grad


def test_model_heads_follow_config(example_cfg):
    model, cfg = model_from(example_cfg, **{"model.pdm.scale_init": 0.2, "model.pdm.temperature": 0.5})
    for head in (model.image_head, model.text_head):
        pdm = find_pdm(head)
        theta, norm = pdm_params(pdm)
        assert torch.allclose(theta, torch.full_like(theta, math.log(0.2)), atol=1e-6)
        pdm = pdm.double()
        randomise(pdm, seed=12)
        run_pdm_check(pdm, 0.5, seed=13, n=5, d=theta.numel())
        (linear,) = linears(head)
        assert torch.count_nonzero(linear.bias) == 0
    model, _ = model_from(example_cfg, **{"model.pdm.enabled": "false"})
    for head in (model.image_head, model.text_head):
        assert not any(isinstance(m, PDM) for m in head.modules())
        assert sum(isinstance(m, nn.LayerNorm) for m in head.modules()) == 1 and len(linears(head)) == 1
    assert not any(isinstance(m, PDM) for m in model.modules())


def test_optimizer_no_decay_groups(example_cfg):
    model, cfg = model_from(example_cfg)
    opt = build_optimizer(model, cfg.train)
    assert isinstance(opt, torch.optim.AdamW)
    wd = cfg.train.optimizer.weight_decay
    assert wd > 0
    group_of = {}
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(cfg.train.optimizer.lr)
        for p in group["params"]:
            assert id(p) not in group_of, "a parameter is in two groups"
            group_of[id(p)] = group["weight_decay"]
    names = dict(model.named_parameters())
    trainable = {n: p for n, p in names.items() if p.requires_grad}
    assert set(group_of) == {id(p) for p in trainable.values()}, "every trainable parameter, once"

    no_decay, decay = set(), set()
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(mod, PDM):
            theta, _ = pdm_params(mod)
            no_decay |= {n for n, p in names.items() if p is theta}
        if isinstance(mod, (nn.LayerNorm,)) or type(mod).__name__.endswith("LayerNorm"):
            no_decay |= {prefix + n for n, _ in mod.named_parameters(recurse=False)}
        if isinstance(mod, nn.Linear):
            decay.add(prefix + "weight")
            if mod.bias is not None:
                no_decay.add(prefix + "bias")
    no_decay |= {n for n in names if n.endswith("bias")}
    out = temps(model)
    temp_params = {n for n, p in names.items() for k in ("tau", "tau_s_i2t", "tau_s_t2i") if p is out[k]}
    assert len(temp_params) == 2  # tau and the shared tau_s in the example config
    no_decay |= temp_params

    pdm_thetas = [n for n, p in names.items() for m in model.modules() if isinstance(m, PDM)
                  and p is pdm_params(m)[0]]
    assert len(pdm_thetas) == 2  # one PDM per modality
    assert any(n.startswith("image_head") for n in decay) and any(n.startswith("text_head") for n in decay)
    for n in no_decay:
        assert group_of[id(names[n])] == 0.0, f"{n} must not be weight-decayed"
    for n in decay:
        assert group_of[id(names[n])] == pytest.approx(wd), f"{n} (a Linear weight) must be weight-decayed"


def test_temperatures_default_example(example_cfg):
    model, cfg = model_from(example_cfg)
    out = temps(model)
    assert val(out["tau"]) == pytest.approx(0.05) and val(out["tau_s_i2t"]) == pytest.approx(0.45)
    assert val(out["tau_t"]) == pytest.approx(1.0)
    assert is_learnable(model, out["tau"]) and is_learnable(model, out["tau_s_i2t"])
    # shared: one parameter for both directions
    assert out["tau_s_i2t"] is out["tau_s_t2i"]
    # the teacher temperature is frozen, but still part of the state (saved with the model)
    assert not is_param(model, out["tau_t"]) and not out["tau_t"].requires_grad
    assert any(b is out["tau_t"] for b in model.buffers())


def test_temperatures_custom_init_and_separate_student(example_cfg):
    model, cfg = model_from(example_cfg, **{
        "loss.contrastive.tau": 0.07, "loss.soft_label.tau": 0.3, "loss.soft_label.teacher_tau": 0.8,
        "loss.soft_label.shared_tau": "false", "loss.soft_label.learn_teacher_tau": "true"})
    out = temps(model)
    assert val(out["tau"]) == pytest.approx(0.07) and val(out["tau_t"]) == pytest.approx(0.8)
    assert val(out["tau_s_i2t"]) == pytest.approx(0.3) and val(out["tau_s_t2i"]) == pytest.approx(0.3)
    for k in ("tau", "tau_s_i2t", "tau_s_t2i", "tau_t"):
        assert is_learnable(model, out[k]), k
    assert out["tau_s_i2t"] is not out["tau_s_t2i"]
    with torch.no_grad():
        out["tau_s_i2t"].fill_(0.5)
    again = temps(model)
    assert val(again["tau_s_i2t"]) == pytest.approx(0.5) and val(again["tau_s_t2i"]) == pytest.approx(0.3)


def test_temperatures_learn_flags_off(example_cfg):
    model, _ = model_from(example_cfg, **{"loss.contrastive.learn_tau": "false",
                                          "loss.soft_label.learn_tau": "false"})
    out = temps(model)
    for k in ("tau", "tau_s_i2t", "tau_s_t2i", "tau_t"):
        assert not is_param(model, out[k]) and not out[k].requires_grad, k
    assert val(out["tau"]) == pytest.approx(0.05) and val(out["tau_s_i2t"]) == pytest.approx(0.45)


def test_student_and_teacher_temperatures_absent_when_soft_weight_zero(example_cfg):
    """A loss term that is off creates no parameters (no DDP parameter without gradient, nothing saved)."""
    model, _ = model_from(example_cfg, **{"loss.soft_label.weight": 0.0, "loss.soft_label.learn_tau": "true",
                                          "loss.soft_label.learn_teacher_tau": "true",
                                          "loss.soft_label.shared_tau": "false"})
    out = temps(model)
    assert sorted(out) == ["tau"] and not any("tau_s" in k or "tau_t" in k for k in model.state_dict())
    assert is_learnable(model, out["tau"])  # the contrastive term is still on


def set_temp(t: torch.Tensor, value: float) -> None:
    with torch.no_grad():
        t.fill_(value)


@pytest.mark.parametrize("shared", [True, False])
def test_clamp_temperatures(example_cfg, shared):
    model, _ = model_from(example_cfg, **{"loss.soft_label.learn_teacher_tau": "true",
                                          "loss.soft_label.shared_tau": str(shared).lower()})
    params_before = [p for p in model.parameters()]
    # the tensors the forward pass hands out are the stored temperatures; clamping works in place, so
    # they (and the optimizer's references) follow it
    out = temps(model)
    bounds = {"tau": (0.01, 0.10), "tau_s_i2t": (0.10, 0.99), "tau_s_t2i": (0.10, 0.99), "tau_t": (0.10, 1.00)}
    for direction, pick in (("above", 1), ("below", 0)):
        for k, (lo, hi) in bounds.items():
            set_temp(out[k], hi * 5.0 if pick else lo / 4.0)
        model.clamp_temperatures_()
        for k, (lo, hi) in bounds.items():
            assert val(out[k]) == pytest.approx(hi if pick else lo, abs=1e-7), (direction, k, val(out[k]))
    # values inside the range are left alone
    inside = {"tau": 0.033, "tau_s_i2t": 0.5, "tau_s_t2i": 0.5 if shared else 0.71, "tau_t": 0.6}
    for k, v in inside.items():
        set_temp(out[k], v)
    model.clamp_temperatures_()
    now = temps(model)  # and a fresh forward pass sees the same values
    for k, v in inside.items():
        assert val(out[k]) == pytest.approx(v, abs=1e-7), k
        assert val(now[k]) == pytest.approx(v, abs=1e-7), k
    assert all(a is b for a, b in zip(params_before, model.parameters()))
    assert len(params_before) == len(list(model.parameters()))


def test_clamp_uses_configured_bounds(example_cfg):
    model, _ = model_from(example_cfg, **{"loss.contrastive.tau_min": 0.02, "loss.contrastive.tau_max": 0.2,
                                          "loss.soft_label.tau_min": 0.3, "loss.soft_label.tau_max": 0.6})
    out = temps(model)
    set_temp(out["tau"], 0.5)
    set_temp(out["tau_s_i2t"], 0.05)
    model.clamp_temperatures_()
    assert val(out["tau"]) == pytest.approx(0.2) and val(out["tau_s_i2t"]) == pytest.approx(0.3)
    set_temp(out["tau"], 0.001)
    set_temp(out["tau_s_i2t"], 0.95)
    model.clamp_temperatures_()
    now = temps(model)
    assert val(now["tau"]) == pytest.approx(0.02) and val(now["tau_s_i2t"]) == pytest.approx(0.6)


@pytest.mark.parametrize("overrides", [{}, {"loss.soft_label.weight": 0.0, "model.pdm.enabled": "false"}],
                         ids=["icsd", "contrastive_only_baseline"])
def test_every_trainable_parameter_gets_a_gradient(example_cfg, overrides):
    """DDP (without find_unused_parameters) fails on the second step if a trainable parameter takes no part
    in the loss; a term that is off therefore creates no parameters. Every trainable parameter of the model
    must receive a gradient from the configured loss."""
    from icsd.losses import Criterion

    model, cfg = model_from(example_cfg, **overrides)
    torch.manual_seed(0)
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    out = model(torch.randn(4, 3, size, size), torch.randint(1, 1000, (4, model.clip.context_length)))
    ids = torch.tensor([0, 1, 1, 2])
    terms = Criterion(cfg.loss)(out, {"image_index": ids, "ext_img": torch.randn(4, 10),
                                      "ext_txt": torch.randn(4, 7)}, model)
    terms["loss"].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"trainable parameters without gradient (DDP would fail): {unused}"
