"""Linearized and centered networks (LOO sec. 2, 4): against the parent, explicit Jacobians,
hand-made SGD steps, the parent's eNTK, and checkpoints. float64 wherever values are compared."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from ntkrobust.bridge.entk import empirical_ntk
from ntkrobust.bridge.linearized import LinearizedNetwork, relative_magnitude
from ntkrobust.bridge.models import MODELS, ModelConfig, build_model, model_config

EXACT = 1e-12  # float64: the same arithmetic, at most reordered
TOL = 1e-10  # float64: hand-made steps and kernels through different routes

CASES = {  # name: (input shape, width)
    "fc2": ((1, 4, 4), 8),
    "conv1": ((1, 5, 5), 3),
    "mnist-cnn": ((1, 8, 8), 2),
    "resnet18": ((3, 6, 6), 2),
}


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def parent_network(name: str, *, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A small registry net in eval mode; BatchNorm running statistics made non-trivial."""
    shape, width = CASES[name]
    model = build_model(model_config(name, shape, 3, width=width, seed=seed)).to(dtype)
    if has_batchnorm(model):
        generator = torch.Generator().manual_seed(seed)
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.rand(8, *shape, generator=generator, dtype=dtype) * 2)
    return model.eval()


def inputs(name: str, n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, *CASES[name][0], generator=torch.Generator().manual_seed(seed), dtype=dtype)


def explicit_jacobian(parent: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J (N·C, P): row (i, c) is ∇θ f_c(x_i) at the parent's parameters, in their order; one
    autograd call per example and output."""
    params = [p for p in parent.parameters() if p.requires_grad]
    rows = []
    for example in x:
        out = parent(example[None])[0]
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def shifted(model: LinearizedNetwork, delta: torch.Tensor) -> LinearizedNetwork:
    """``model`` with θ = θt + delta (flat, in θ's order)."""
    anchor = flat(model.tangent_network().parameters())
    with torch.no_grad():
        start = 0
        for p in model.parameters():
            p.copy_((anchor[start : start + p.numel()] + delta[start : start + p.numel()]).reshape(p.shape))
            start += p.numel()
    return model


def sgd_steps(model: LinearizedNetwork, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


# --- 1, 2: at spawn --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_a_fresh_wrapper_is_its_parent_and_a_fresh_centered_one_is_zero(name):
    parent = parent_network(name)
    x = inputs(name, 5)
    expected = parent(x).detach()
    model = LinearizedNetwork(parent)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=EXACT)
    f0, delta = model.components(x)
    torch.testing.assert_close(f0, expected, rtol=0, atol=EXACT)
    assert torch.equal(delta, torch.zeros_like(delta))
    centered = LinearizedNetwork(parent, centered=True)
    assert centered.centered and not model.centered
    assert torch.equal(centered(x), torch.zeros_like(expected))  # LOO sec. 2: no warm start
    # θ only, in the parent's order and shapes; the parent is copied, not shared
    names = [n for n, _ in parent.named_parameters()]
    assert [n for n, _ in model.named_parameters()] == ["theta." + n.replace(".", "-") for n in names]
    assert [p.shape for p in model.parameters()] == [p.shape for p in parent.parameters()]
    with torch.no_grad():
        for p in parent.parameters():
            p.add_(1.0)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=EXACT)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registry_model_linearizes_and_trains(name):
    shape = (3, 6, 6) if name in ("cifar-cnn", "resnet18") else (1, 8, 8)
    parent = build_model(model_config(name, shape, 3, width=4, seed=2)).eval()
    model = LinearizedNetwork(parent)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    out = model(x)
    torch.testing.assert_close(out, parent(x), rtol=1e-5, atol=1e-6)  # float32
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    tangent = model.tangent_network()
    assert [(n, p.shape) for n, p in tangent.named_parameters()] == [(n, p.shape) for n, p in parent.named_parameters()]
    assert tangent.state_dict().keys() == parent.state_dict().keys()
    assert not tangent.training


# --- 3, 4: linear dynamics -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "loss", "centered"),
    [("fc2", "mse", False), ("fc2", "ce", True), ("resnet18", "ce", False), ("mnist-cnn", "mse", True)],
)
def test_sgd_steps_are_the_hand_computed_ones(name, loss, centered):
    """θ ← θ − η Jᵀ ∂L/∂f with the explicit J (N·C × P); f = [f0 +] J (θ − θt); two steps, so
    the second starts away from θt."""
    parent = parent_network(name)
    x = inputs(name, 4)
    y = torch.tensor([0, 2, 1, 2])
    jacobian = explicit_jacobian(parent, x)
    f0 = parent(x).detach()
    model = LinearizedNetwork(parent, centered=centered)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    delta = torch.zeros(jacobian.shape[1], dtype=torch.float64)
    target = F.one_hot(y, 3).to(torch.float64)
    for _ in range(2):
        by_hand = (0 if centered else f0) + (jacobian @ delta).reshape(4, 3)
        if loss == "mse":  # L = ½ mean_i |f_i − t_i|²: ∂L/∂f = (f − t)/N
            residual = (by_hand - target) / 4
        else:  # L = mean_i CE: ∂L/∂f = (softmax(f) − t)/N
            residual = (torch.softmax(by_hand, 1) - target) / 4
        delta = delta - 0.3 * jacobian.T @ residual.reshape(-1)
        optimizer.zero_grad()
        out = model(x)
        torch.testing.assert_close(out, by_hand, rtol=0, atol=TOL)
        value = 0.5 * (out - target).square().sum(1).mean() if loss == "mse" else F.cross_entropy(out, y)
        value.backward()
        optimizer.step()
    anchor = flat(model.tangent_network().parameters())
    torch.testing.assert_close(flat(model.parameters()), anchor + delta, rtol=0, atol=TOL)
    torch.testing.assert_close(model(x), (0 if centered else f0) + (jacobian @ delta).reshape(4, 3), rtol=0, atol=TOL)
    assert delta.abs().max() > 1e-3  # the steps went somewhere


@pytest.mark.parametrize("name", ["mnist-cnn", "resnet18"])
def test_the_output_is_linear_in_theta_minus_theta_t(name):
    parent = parent_network(name)
    x = inputs(name, 4)
    size = sum(p.numel() for p in parent.parameters())
    generator = torch.Generator().manual_seed(5)
    d1, d2 = (torch.randn(size, generator=generator, dtype=torch.float64) for _ in range(2))
    model = LinearizedNetwork(parent)

    def change(delta: torch.Tensor) -> torch.Tensor:
        return shifted(model, delta).components(x)[1].detach()

    combined, one, two = change(0.7 * d1 - 1.3 * d2), change(d1), change(d2)
    scale = float(combined.abs().max())
    torch.testing.assert_close(combined / scale, (0.7 * one - 1.3 * two) / scale, rtol=0, atol=EXACT)
    torch.testing.assert_close(model(x) - parent(x), two, rtol=0, atol=EXACT * scale)  # θ = θt + d2 now
    torch.testing.assert_close(change(-d1), -one, rtol=0, atol=EXACT * scale)


def test_input_gradients_for_attacks_match_finite_differences():
    model = LinearizedNetwork(parent_network("mnist-cnn"))
    shifted(model, 0.1 * torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64))
    x = inputs("mnist-cnn", 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: model(v), (x,), eps=1e-6, atol=1e-7)


# --- 5, 6: frozen kernel, frozen BatchNorm ---------------------------------------------------


@pytest.mark.parametrize("name", ["fc2", "resnet18"])
def test_the_kernel_is_the_parents_at_spawn_however_far_theta_moves(name):
    parent = parent_network(name)
    x = inputs(name, 4)
    reference = empirical_ntk(parent, x, kind="full")  # structured dense layers for the parent
    jacobian = explicit_jacobian(parent, x)
    explicit = torch.einsum("iap,jbp->ijab", *(jacobian.reshape(4, 3, -1),) * 2).numpy()
    model = LinearizedNetwork(parent, centered=name == "fc2")
    sgd_steps(model, x, torch.tensor([0, 1, 2, 0]), steps=3, lr=1.0)
    moved = flat(model.parameters()) - flat(model.tangent_network().parameters())
    assert moved.abs().max() > 1e-2  # far enough for a standard net's kernel to change

    def relative(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / np.abs(b).max())

    assert relative(reference, explicit) < TOL
    assert relative(empirical_ntk(model, x, kind="full"), reference) < TOL
    assert relative(empirical_ntk(model, x), empirical_ntk(parent, x)) < TOL  # default arguments: trace
    assert relative(empirical_ntk(model, x, kind="full", structured=False), reference) < TOL
    assert relative(empirical_ntk(model.tangent_network(), x, kind="full"), reference) < TOL


def test_batchnorm_stays_frozen_in_train_mode():
    parent = parent_network("resnet18")
    x = inputs("resnet18", 6)
    model = LinearizedNetwork(parent)
    sgd_steps(model, x, torch.tensor([0, 1, 2, 0, 1, 2]), steps=1, lr=0.5)  # in eval mode
    model.eval()
    expected = model(x).detach()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("parent.")}
    assert any("running_var" in k for k in frozen)
    container = torch.nn.Sequential(model).train()  # train() reaches the wrapper from outside too
    assert model.training and not any(m.training for m in model.parent.modules())
    for _ in range(2):
        out = model(x * 1.5)
        out.square().sum().backward()
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # running statistics, not the batch's
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items() if k.startswith("parent."))
    assert not container.eval().training and not model.training
    assert not LinearizedNetwork(parent.train()).parent.training  # a parent in train mode is frozen too


# --- 7: relative magnitude -------------------------------------------------------------------


def test_relative_magnitude_by_hand():
    """Moving the last layer's bias by v gives Δf = b_scale·v for every x (NTKLinear)."""
    parent = parent_network("fc2")
    x = inputs("fc2", 7)
    model = LinearizedNetwork(parent)
    assert relative_magnitude(model, x) == 0.0
    v = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    with torch.no_grad():
        model.theta["5-bias"].add_(v)
    f0 = parent(x).detach()
    expected = float((0.1**2 * v.square().sum() / f0.square().sum(1)).mean())
    assert relative_magnitude(model, x) == pytest.approx(expected, rel=1e-12)
    assert relative_magnitude(model, x, batch_size=3) == pytest.approx(expected, rel=1e-12)
    assert relative_magnitude(model, x.float().numpy()) == pytest.approx(expected, rel=1e-6)  # cast to the model's
    model.centered = True  # f0 is still the parent's output: the same ratio
    assert relative_magnitude(model, x, batch_size=2) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        relative_magnitude(model, x, batch_size=0)


# --- 8: state dict, checkpoints, devices -----------------------------------------------------


def trained_wrapper(name: str, centered: bool) -> tuple[LinearizedNetwork, torch.nn.Module, ModelConfig]:
    """A float32 wrapper whose θ, θt and BatchNorm statistics all differ from a fresh build."""
    shape, width = CASES[name]
    config = model_config(name, shape, 3, width=width, seed=4)
    parent = build_model(config)
    with torch.no_grad():
        for p in parent.parameters():
            p.add_(0.25)
        parent.train()
        parent(torch.rand(8, *shape))
    model = LinearizedNetwork(parent.eval(), centered=centered)
    sgd_steps(model, torch.rand(4, *shape), torch.tensor([0, 1, 2, 1]), steps=2, lr=0.5)
    return model, parent, config


@pytest.mark.parametrize("centered", [False, True])
def test_state_dict_restores_theta_anchor_and_buffers(centered):
    model, _, config = trained_wrapper("resnet18", centered)
    state = model.state_dict()
    assert any(k.startswith("theta.") for k in state) and any(k.endswith("running_mean") for k in state)
    fresh = LinearizedNetwork(build_model(config), centered=centered)
    assert not all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())
    fresh.load_state_dict(state)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())
    x = inputs("resnet18", 3, dtype=torch.float32)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("centered", [False, True])
def test_checkpoint_rebuilds_the_wrapper(tmp_path, centered):
    model, _, config = trained_wrapper("resnet18", centered)
    path = save_checkpoint(tmp_path / "lin.pt", model, config, epoch=2)
    assert read_checkpoint(path)["linearization"] == {"centered": centered}
    rebuilt, loaded, payload = load_checkpoint(path)
    assert isinstance(rebuilt, LinearizedNetwork) and rebuilt.centered == centered
    assert loaded == config and payload["epoch"] == 2
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in model.state_dict().items())
    x = inputs("resnet18", 3, dtype=torch.float32)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    # a loaded payload passed on as extras agrees with the model; a contradicting one does not
    save_checkpoint(tmp_path / "again.pt", rebuilt, config, **{k: payload[k] for k in ("epoch", "linearization")})
    with pytest.raises(ValueError, match="linearization"):
        save_checkpoint(tmp_path / "bad.pt", rebuilt, config, linearization={"centered": not centered})


def test_plain_checkpoints_stay_plain_and_bad_linearizations_are_refused(tmp_path):
    _, parent, config = trained_wrapper("fc2", False)
    path = save_checkpoint(tmp_path / "plain.pt", parent, config)
    assert "linearization" not in read_checkpoint(path)
    model, _, _ = load_checkpoint(path)
    assert not isinstance(model, LinearizedNetwork)
    x = inputs("fc2", 2, dtype=torch.float32)
    torch.testing.assert_close(model(x), parent(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="linearization"):
        save_checkpoint(tmp_path / "no.pt", parent, config, linearization={"centered": True})
    payload = read_checkpoint(path)
    bad_entries = ({"centered": "yes"}, [True], None, {"centered": True, "kind": "standard", "batchnorm": "bogus"},
                   {"centered": True, "kind": "other"})  # fmt: skip
    for entry in bad_entries:
        torch.save({**payload, "linearization": entry}, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="cannot rebuild") as error:
            load_checkpoint(tmp_path / "bad.pt")
        assert "\n" not in str(error.value)
    torch.save({**payload, "linearization": {"centered": False}}, tmp_path / "mismatch.pt")  # a plain state dict
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_to_moves_theta_anchor_and_buffers():
    model = LinearizedNetwork(build_model(model_config("two-layer", (1, 4, 4), 3, width=8)))
    assert model.to(torch.float64) is model
    assert all(v.dtype == torch.float64 for v in model.state_dict().values())  # θ, θt, the readout buffer
    assert model(torch.rand(2, 1, 4, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_the_gpu_as_on_the_cpu():
    model = LinearizedNetwork(parent_network("resnet18"))
    x = inputs("resnet18", 4)
    sgd_steps(model, x, torch.tensor([0, 1, 2, 0]), steps=1, lr=0.5)
    expected = model(x).detach()
    model.to("cuda")
    assert all(v.device.type == "cuda" for v in model.state_dict().values())
    torch.testing.assert_close(model(x.cuda()).cpu(), expected, rtol=0, atol=1e-10)
    sgd_steps(model, x.cuda(), torch.tensor([0, 1, 2, 0]).cuda(), steps=1, lr=0.5)
    assert relative_magnitude(model, x) > 0


def test_unlinearizable_parents_are_refused():
    tied = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="shared"):
        LinearizedNetwork(tied)
    frozen = torch.nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        LinearizedNetwork(frozen)
    partly = torch.nn.Linear(3, 2)
    partly.weight.requires_grad_(False)  # a frozen parameter stays fixed, outside θ
    model = LinearizedNetwork(partly)
    assert [n for n, _ in model.named_parameters()] == ["theta.bias"]
    tangent = model.tangent_network()
    assert [(n, p.requires_grad) for n, p in tangent.named_parameters()] == [("weight", False), ("bias", True)]


# -- the centered standard network f_θ − f_θt (LOO table 1) -------------------------------------


def _resnet(seed: int = 0) -> torch.nn.Module:
    return build_model(model_config("resnet18", (3, 8, 8), 3, width=2, seed=seed))


@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_the_centered_standard_network_is_zero_at_spawn_and_trains_the_full_net(batchnorm):
    from ntkrobust.bridge.linearized import CenteredStandardNetwork

    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    parent = _resnet().eval()
    net = CenteredStandardNetwork(parent, batchnorm=batchnorm)
    assert float(net.eval()(x).detach().abs().max()) == 0.0
    trained = [p for p in net.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trained) == sum(p.numel() for p in parent.parameters())
    before = {k: v.clone() for k, v in net.network.state_dict().items() if "running" in k}
    net.train()
    optimizer = torch.optim.SGD(trained, lr=0.1)
    optimizer.zero_grad()
    F.cross_entropy(net(x), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    optimizer.step()
    moved = {k: not torch.equal(v, net.network.state_dict()[k]) for k, v in before.items()}
    assert any(moved.values()) == (batchnorm == "train")  # frozen: the spawn's statistics stay
    assert not net.spawn.training and float(net.eval()(x).detach().abs().max()) > 0  # θ moved, the spawn did not
    # its kernel is the trained network's, which moves with θ (unlike the linearized networks')
    np.testing.assert_allclose(
        empirical_ntk(net, x, kind="trace"), empirical_ntk(net.tangent_network(), x, kind="trace"), rtol=1e-5
    )


def test_the_centered_standard_networks_input_gradient_takes_the_spawns_term():
    """An attack on f_θ − f_θt follows ∇x f_θ − ∇x f_θt (it followed ∇x f_θ alone before: the
    spawn's output was taken without gradients, and PGD on these nets was too weak)."""
    from ntkrobust.bridge.linearized import CenteredStandardNetwork

    parent = parent_network("mnist-cnn")
    net = CenteredStandardNetwork(parent)
    with torch.no_grad():
        for p in net.network.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    x = inputs("mnist-cnn", 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: net(v), (x,), eps=1e-6, atol=1e-7)
    (gradient,) = torch.autograd.grad(net(x).sum(), x)
    (trained,) = torch.autograd.grad(net.network(x).sum(), x)
    (spawn,) = torch.autograd.grad(parent(x).sum(), x)
    torch.testing.assert_close(gradient, trained - spawn, rtol=1e-12, atol=1e-12)


def test_a_checkpoint_rebuilds_the_centered_standard_network(tmp_path):
    from ntkrobust.bridge.linearized import CenteredStandardNetwork

    config = model_config("resnet18", (3, 8, 8), 3, width=2, seed=0)
    net = CenteredStandardNetwork(build_model(config), batchnorm="train")
    with torch.no_grad():
        for p in net.network.parameters():
            p.add_(0.01)
    save_checkpoint(tmp_path / "c.pt", net, config, epoch=1)
    loaded, _, payload = load_checkpoint(tmp_path / "c.pt")
    assert isinstance(loaded, CenteredStandardNetwork) and loaded.batchnorm == "train"
    assert payload["linearization"] == {"centered": True, "kind": "standard", "batchnorm": "train"}
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(loaded.eval()(x), net.eval()(x))
