"""The analytic half on several JAX devices gives the one-device results.

Run in subprocesses: the host device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``). Gram matrices go through ``nt.batch``
over every device; a kernel machine's logits, loss gradients and output Jacobians split the test
points over the devices (``kernels.machine``), so NTK attacks do too, and the pair-indexed feature scores
split their examples and (example, feature) pairs the same way (``kernels._feature_rows``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

_SCRIPT = r"""
import sys
import numpy as np
import jax
from sklearn.datasets import load_digits

from ntkrobust.attacks import AttackSpec
from ntkrobust.attacks.threat import ThreatModel
from ntkrobust.kernels import craft_adversarial, feature_scores, fit_kernel_machine, get_architecture
from ntkrobust.kernels.gram import compute_gram

digits = load_digits()
x = (digits.images[:, None] / 16.0).astype(np.float64)
y = digits.target
x_train, y_train, x_test, y_test = x[:150], y[:150], x[150:213], y[150:213]  # 63 test points: odd
arch = get_architecture("fc2")
machine = fit_kernel_machine(arch, x_train, y_train, classes=tuple(range(10)))
pgd = AttackSpec("pgd", 0.1, "linf", 0.025, 5, random_start=True, seed=3)
from ntkrobust.kernels import _feature_rows

placed = []  # the devices of every block and pair chunk that the pair-indexed feature route placed
put = _feature_rows._Placement.put
_feature_rows._Placement.put = lambda self, a: placed.append(len(put(self, a).sharding.device_set)) or put(self, a)
scores = feature_scores(machine, x_test, y_test, ThreatModel(norm="linf", eps=0.1), n_features=12)
pgd_scores = feature_scores(
    machine, x_test, y_test, ThreatModel(norm="linf", eps=0.1), n_features=12, attack="pgd", step=0.05, steps=3
)
from ntkrobust.kernels._jax import point_sharding

np.savez(
    sys.argv[1],
    devices=jax.local_device_count(),
    sharded=point_sharding((jax.numpy.zeros((4, 3)),)) is not None,
    gram=np.asarray(compute_gram(arch, x_train[:40], x_test[:30])),
    logits=np.asarray(machine.logits(x_test)),
    gradient=np.asarray(machine.loss_gradient(x_test, machine.target_index(y_test))),
    pgd=craft_adversarial(machine, x_test, y_test, pgd),
    usefulness=scores.usefulness,
    robustness=scores.robustness,
    pgd_robustness=pgd_scores.robustness,
    feature_devices=sorted(set(placed)),
)
"""


def _start(devices: int, out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(out)], env=env, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen[str], out: Path) -> dict[str, np.ndarray]:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    with np.load(out) as found:
        return dict(found)


def test_two_devices_give_the_one_device_results(tmp_path: Path) -> None:
    # both interpreters at once: most of each one's time is imports, on one core
    paths = {devices: tmp_path / f"{devices}.npz" for devices in (1, 2)}
    runs = {devices: _start(devices, path) for devices, path in paths.items()}
    try:
        one, two = (_finish(runs[devices], paths[devices]) for devices in (1, 2))
    finally:  # the other interpreter does not outlive a failed or timed-out one
        for process in runs.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert int(one.pop("devices")) == 1 and int(two.pop("devices")) == 2
    assert not one.pop("sharded") and two.pop("sharded")  # the test points really were split
    assert list(one.pop("feature_devices")) == [1] and list(two.pop("feature_devices")) == [2]  # feature pairs too
    for name, value in one.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-12, atol=1e-12, err_msg=name)


_TORCHRUN_PROBE = r"""
import os
from ntkrobust.kernels import _jax
print(_jax.jax.config.read("jax_cuda_visible_devices"), os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))
"""


def test_under_torchrun_each_process_takes_its_own_gpu(tmp_path: Path) -> None:
    """A process of a torchrun launch gives JAX only its own GPU (``LOCAL_RANK``) and no
    preallocation: N processes would otherwise each shard over every GPU and take 75% of each.
    Alone, or with the user's own settings, an import changes nothing."""

    def probe(**env: str) -> str:
        clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
        clean.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
        done = subprocess.run(
            [sys.executable, "-c", _TORCHRUN_PROBE], env=clean | env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert probe(WORLD_SIZE="2", LOCAL_RANK="1") == "1 false"
    assert probe() == "all None"
    assert probe(WORLD_SIZE="2", LOCAL_RANK="1", XLA_PYTHON_CLIENT_PREALLOCATE="true") == "1 true"
