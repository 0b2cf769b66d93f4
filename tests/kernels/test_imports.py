"""Import orders (TensorFlow's and Triton's LLVM) and JAX's float64 flag, in fresh interpreters.

TensorFlow, which ``import neural_tangents`` used to load, and Triton, which torch loads at the
first ``torch.func`` transform, each carry an LLVM; Triton loaded after TensorFlow killed the
process (exit 139). ``kernels._jax`` loads Triton first, or isolated (``RTLD_DEEPBIND``) when
TensorFlow is already there, and keeps neural-tangents' TensorFlow half unloaded. Each order runs
a kernel machine and a torch forward/backward plus ``torch.func.jacrev`` in one process.

The package also no longer switches ``jax_enable_x64`` on for the process: its own computations
run in float64 while the user's JAX code keeps float32 defaults.

The interpreters run concurrently (about 10 s each, mostly imports), so the file takes 30-70 s on
2 cores: it is marked slow and runs with ``pytest -m slow``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap

import pytest

#: eight fresh interpreters that import TensorFlow, JAX and torch: about a minute on 2 cores
pytestmark = pytest.mark.slow

_HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
_HAS_TRITON = importlib.util.find_spec("triton") is not None

#: Both halves at work: a kernel machine (JAX, neural-tangents) and a torch net whose
#: ``torch.func.jacrev`` goes through torch._dynamo, which imports Triton.
_WORKLOAD = """
import sys
import jax
import jax.numpy as jnp
import numpy as np
import torch
from ntkrobust.bridge.data import load_dataset
from ntkrobust.kernels import fit_kernel_machine, get_architecture

data = load_dataset("digits", n_train=20, n_test=5)
machine = fit_kernel_machine(get_architecture("fc2"), data.x_train, data.y_train)
assert machine.logits(data.x_test).dtype == jnp.float64
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
x = torch.randn(3, 4)
net(x).square().sum().backward()
params = dict(net.named_parameters())
jac = torch.func.jacrev(lambda p: torch.func.functional_call(net, p, (x,)))(params)
assert jac["0.weight"].shape == (3, 2, 8, 4)
assert not jax.config.jax_enable_x64 and jnp.ones(2).dtype == jnp.float32
print("TENSORFLOW LOADED" if "tensorflow" in sys.modules else "TENSORFLOW NOT LOADED")
"""

#: What the user runs before the workload.
_ORDERS = {
    "neural_tangents first": "import neural_tangents",
    "tensorflow first": "import tensorflow",
    "torch, then neural_tangents": "import torch\nimport neural_tangents",
    "jax first": "import jax\nimport jax.numpy as jnp\njnp.ones(1)",
    "kernel package first": "import ntkrobust.kernels._jax",
    "kernel package, then neural_tangents.experimental": (
        "import ntkrobust.kernels._jax\n"
        "import neural_tangents as nt\n"
        "assert 'tensorflow' not in sys.modules\n"
        "assert callable(nt.experimental.empirical_ntk_fn_tf)  # the real module, TensorFlow and all\n"
        "assert 'tensorflow' in sys.modules"
    ),
}
_LOADS_TENSORFLOW = {"neural_tangents first", "tensorflow first", "torch, then neural_tangents"}

#: TensorFlow, then the torch half's torch.func (here the bridge's empirical NTK) without the
#: kernel package: the bridge's own Triton guard (``ntkrobust._load_order``) keeps it alive.
_TORCH_HALF_ALONE = """
import tensorflow
import torch
from ntkrobust.bridge.entk import empirical_ntk

net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
assert empirical_ntk(net, torch.rand(3, 1, 4, 4)).shape == (3, 3)
print("ok")
"""

_X64 = """
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import enable_x64

import ntkrobust.kernels._jax
from ntkrobust.bridge.data import load_dataset
from ntkrobust.kernels import compute_gram, fit_kernel_machine, get_architecture

assert not jax.config.jax_enable_x64 and jnp.ones(2).dtype == jnp.float32, "import switched x64 on"
data = load_dataset("digits", n_train=20, n_test=5)
arch = get_architecture("fc2")
gram = compute_gram(arch, data.x_train)
machine = fit_kernel_machine(arch, data.x_train, data.y_train)
logits = machine.logits(data.x_test)
assert not jax.config.jax_enable_x64 and jnp.ones(2).dtype == jnp.float32, "fitting switched x64 on"
assert jax.random.uniform(jax.random.PRNGKey(0), (2,)).dtype == jnp.float32

# The project's numbers are float64: the Gram matches the kernel evaluated in float64 to
# rounding (a float32 evaluation is ~1e-7 off), and so do the logits.
with enable_x64():
    flat = jnp.asarray(data.x_train.reshape(20, -1), dtype=jnp.float64)
    reference = np.asarray(arch.kernel_fn(flat, flat, "ntk"))
assert gram.dtype == np.float64 and machine.x_train.dtype == jnp.float64
np.testing.assert_allclose(gram, reference, rtol=1e-13)
assert logits.dtype == jnp.float64
assert machine.with_precision("float32").logits(data.x_test).dtype == jnp.float32

# A third-party JAX attack in the user's float32 world: float32 in, float32 out, and
# jax.grad straight through the machine works (at the caller's float32 precision).
x = jnp.asarray(data.x_test)
index = jnp.asarray(machine.target_index(data.y_test))
loss = lambda x_: -jnp.sum(jax.nn.log_softmax(machine.logits(x_))[jnp.arange(5), index])
noise = 0.01 * jax.random.uniform(jax.random.PRNGKey(1), x.shape)
x_adv = jnp.clip(x + 0.1 * jnp.sign(jax.grad(loss)(x)) + noise, 0, 1)
assert x_adv.dtype == jnp.float32
expected = machine.loss_gradient(data.x_test, np.asarray(index))
np.testing.assert_allclose(jax.grad(loss)(x), expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))
assert jax.jit(machine.logits)(x).dtype == jnp.float32
assert not jax.config.jax_enable_x64 and jnp.ones(2).dtype == jnp.float32
print("ok")
"""

_CASES = {
    **{order: f"import sys\n{prefix}\n{_WORKLOAD}" for order, prefix in _ORDERS.items()},
    "x64": _X64,
    "torch half alone after tensorflow": _TORCH_HALF_ALONE,
}


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("JAX_ENABLE_X64", None)  # the user's default: float32
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> dict[str, subprocess.Popen[str]]:
    """The selected cases' interpreters, all started at once."""
    wanted = {
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params
    }
    started = {
        case: subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_CASES[case])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_environment(),
        )
        for case in sorted(wanted)
    }
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


def _finish(runs: dict[str, subprocess.Popen[str]], case: str) -> str:
    process = runs[case]
    output, _ = process.communicate(timeout=300)
    if process.returncode != 0:
        code = process.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        pytest.fail(f"{case}: {how}\n{output[-3000:]}")
    return output


_needs_tensorflow = pytest.mark.skipif(not _HAS_TENSORFLOW, reason="TensorFlow is not installed")


@pytest.mark.parametrize(
    "case", [pytest.param(order, marks=[_needs_tensorflow] if order in _LOADS_TENSORFLOW else []) for order in _ORDERS]
)
def test_any_import_order_runs_both_halves(runs, case):
    output = _finish(runs, case)
    loaded = case in _LOADS_TENSORFLOW or case.endswith("experimental")
    assert ("TENSORFLOW LOADED" if loaded else "TENSORFLOW NOT LOADED") in output


@pytest.mark.parametrize("case", ["x64"])
def test_float64_stays_inside_the_package(runs, case):
    assert "ok" in _finish(runs, case)


@pytest.mark.parametrize("case", [pytest.param("torch half alone after tensorflow", marks=_needs_tensorflow)])
def test_torch_half_alone_after_tensorflow(runs, case):
    """The torch half's torch.func modules run the same Triton guard (``ntkrobust._load_order``)."""
    assert "ok" in _finish(runs, case)
