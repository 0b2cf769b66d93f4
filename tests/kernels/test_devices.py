"""The analytic half on several JAX devices gives the one-device results.

Run in subprocesses: the host device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``). Gram matrices go through ``nt.batch``
over every device; a kernel machine's logits, loss gradients and output Jacobians split the test
points over the devices (``kernels.machine``), so NTK attacks do too, and the pair-indexed feature scores
split their examples and (example, feature) pairs the same way (``kernels._feature_rows``).

``kernels._jax`` itself, in the same way: ``point_sharding`` splits the points' first axis evenly
over both devices (each shard on its own device, half the rows), gives None on one device and for
a caller's tracers; the ``float64`` wrapper switches x64 on inside the call only and leaves a
caller's float32 trace at float32; logits and loss gradients of an odd number of points (padded
to the device count inside) come back with those points only, equal to the one-device ones
(float64, relative 1e-12). The 1-device interpreter there is also a one-process torchrun
(``WORLD_SIZE=1``, ``LOCAL_RANK=0``), whose GPU setting an import must leave alone; and in both,
neural-tangents' TensorFlow half stays unloaded behind its stand-in, even when a metadata probe
(``hasattr(module, "__wrapped__")``, as ``inspect`` does) looks at it.
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


def _start(devices: int, out: Path, script: str, drop: tuple[str, ...], env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", *drop)}
    clean |= {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu", **env}
    return subprocess.Popen([sys.executable, "-c", script, str(out)], env=clean, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen[str], out: Path) -> dict[str, np.ndarray]:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    with np.load(out) as found:
        return dict(found)


def _one_and_two_devices(
    tmp_path: Path, script: str, *, drop: tuple[str, ...] = (), one_device_env: dict[str, str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What ``script`` saved on 1 and on 2 host devices. Both interpreters run at once: most of
    each one's time is imports, on one core. ``drop``: variables of this process kept from both."""
    paths = {devices: tmp_path / f"{devices}.npz" for devices in (1, 2)}
    envs = {1: one_device_env or {}, 2: {}}
    runs = {devices: _start(devices, paths[devices], script, drop, envs[devices]) for devices in (1, 2)}
    try:
        one, two = (_finish(runs[devices], paths[devices]) for devices in (1, 2))
    finally:  # the other interpreter does not outlive a failed or timed-out one
        for process in runs.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return one, two


def test_two_devices_give_the_one_device_results(tmp_path: Path) -> None:
    one, two = _one_and_two_devices(tmp_path, _SCRIPT)
    assert int(one.pop("devices")) == 1 and int(two.pop("devices")) == 2
    assert not one.pop("sharded") and two.pop("sharded")  # the test points really were split
    assert list(one.pop("feature_devices")) == [1] and list(two.pop("feature_devices")) == [2]  # feature pairs too
    for name, value in one.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-12, atol=1e-12, err_msg=name)


_SWITCH_SCRIPT = r"""
import os
import sys
import numpy as np
import jax
import jax.numpy as jnp
from sklearn.datasets import load_digits

from ntkrobust.kernels import fit_kernel_machine, get_architecture
from ntkrobust.kernels._jax import float64, point_sharding, x64_enabled

found = {"devices": jax.local_device_count()}
# neural-tangents' TensorFlow half stays a stand-in, and a metadata probe does not load it
experimental = sys.modules["neural_tangents.experimental"]
found["probe"] = [type(experimental).__name__, hasattr(experimental, "__wrapped__"), "tensorflow" in sys.modules]
found["gpu_setting"] = str(jax.config.read("jax_cuda_visible_devices"))
found["preallocate"] = str(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))

points = jnp.arange(12.0).reshape(4, 3)
sharding = point_sharding((points,))
found["sharded"] = sharding is not None
if sharding is not None:
    placed = jax.device_put(points, sharding)
    found["shard_devices"] = sorted(shard.device.id for shard in placed.addressable_shards)
    found["shard_rows"] = [shard.data.shape[0] for shard in placed.addressable_shards]
    found["shard_data"] = np.concatenate([np.asarray(shard.data) for shard in placed.addressable_shards])
traced = []
jax.jit(lambda a: traced.append(point_sharding((a,))) or a)(points)
found["traced_sharding"] = traced[0] is not None


@float64
def inside(a):
    return x64_enabled(), jnp.ones(1).dtype.name, (a * 1.0).dtype.name


found["inside"] = list(inside(np.ones(2)))
found["outside"] = [x64_enabled(), jnp.ones(1).dtype.name]


@float64
def shifted(a):
    return a + jnp.ones(a.shape)  # float64 ones, and a float64 sum, only where x64 is on


# in a caller's float32 trace the wrapper leaves x64 off: the sum stays float32
found["under_jit"] = jax.jit(shifted)(jnp.ones(2, jnp.float32)).dtype.name
found["called"] = shifted(np.ones(2, np.float32)).dtype.name  # called directly: float64 inside

digits = load_digits()
x = (digits.images[:, None] / 16.0).astype(np.float64)
y = digits.target
machine = fit_kernel_machine(get_architecture("fc2"), x[:30], y[:30], classes=tuple(range(10)))
x_test = x[30:37]  # 7 points: the 2-device run pads them to 8
found["logits"] = np.asarray(machine.logits(x_test))
found["gradient"] = np.asarray(machine.loss_gradient(x_test, machine.target_index(y[30:37])))
found["logits_dtype"] = found["logits"].dtype.name
np.savez(sys.argv[1], **found)
"""

#: the variables the switch checks must not inherit from the suite (conftest sets x64 on)
_SWITCH_DROP = ("JAX_ENABLE_X64", "WORLD_SIZE", "LOCAL_RANK", "RANK", "XLA_PYTHON_CLIENT_PREALLOCATE")


def test_points_split_evenly_over_two_devices_and_the_results_are_the_one_device_ones(tmp_path: Path) -> None:
    # the suite's conftest turns x64 on for the process (JAX_ENABLE_X64): here it is left at JAX's
    # default; the 1-device run is also a one-process torchrun, with nothing to split
    one, two = _one_and_two_devices(
        tmp_path, _SWITCH_SCRIPT, drop=_SWITCH_DROP, one_device_env={"WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    )
    assert int(one["devices"]) == 1 and int(two["devices"]) == 2
    assert list(one["probe"]) == list(two["probe"]) == ["_DeferredModule", "False", "False"]
    assert str(one["gpu_setting"]) == "all" and str(one["preallocate"]) == "None"
    # one device: no sharding; two: both devices, two rows each, the rows in order
    assert not one["sharded"] and two["sharded"]
    assert list(two["shard_devices"]) == [0, 1] and list(two["shard_rows"]) == [2, 2]
    np.testing.assert_array_equal(two["shard_data"], np.arange(12.0).reshape(4, 3))
    assert not one["traced_sharding"] and not two["traced_sharding"]  # a caller's trace is left alone
    for run in (one, two):
        assert list(run["inside"]) == ["True", "float64", "float64"]
        assert list(run["outside"]) == ["False", "float32"]
        assert str(run["under_jit"]) == "float32"
        assert str(run["called"]) == "float64"
        assert str(run["logits_dtype"]) == "float64"
    assert one["logits"].shape == two["logits"].shape == (7, 10)  # the padding point is gone
    assert two["gradient"].shape == one["gradient"].shape == (7, 1, 8, 8)
    assert np.abs(one["logits"]).max() > 1e-3 and np.abs(one["gradient"]).max() > 1e-6
    for name in ("logits", "gradient"):
        np.testing.assert_allclose(two[name], one[name], rtol=1e-12, atol=1e-12, err_msg=name)


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
