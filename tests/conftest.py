"""Strict numerics and seeded fixtures shared by the suite.

- numpy raises on invalid operations, overflow and division by zero inside tests;
- JAX runs in float64 (``kernels._jax`` enables it) and refuses implicit rank promotion;
- every random draw is seeded; the Gram cache lives in a per-session temporary folder;
- nothing here needs ``../shared`` (real data tests are marked ``shared_data`` and skip).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _strict_numpy():
    with np.errstate(all="raise", under="ignore"):  # underflow to 0 is benign (exp of -large)
        yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    os.environ["NTKROBUST_CACHE"] = str(tmp_path_factory.mktemp("gram-cache"))
    yield


@pytest.fixture(scope="session")
def jax_strict():
    from ntkrobust.kernels._jax import jax

    jax.config.update("jax_numpy_rank_promotion", "raise")
    return jax


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits_binary():
    """Digits 3 vs 8: a hard-ish binary task (120 train, 60 test)."""
    from ntkrobust.bridge.data import load_dataset

    return load_dataset("digits", classes=[3, 8], n_train=120, n_test=60, seed=0)


@pytest.fixture(scope="session")
def digits_multiclass():
    """All ten digits (200 train, 100 test)."""
    from ntkrobust.bridge.data import load_dataset

    return load_dataset("digits", n_train=200, n_test=100, seed=0)


@pytest.fixture(scope="session")
def fc2_binary(digits_binary, jax_strict):
    from ntkrobust.kernels import fit_kernel_machine, get_architecture

    return fit_kernel_machine(
        get_architecture("fc2"), digits_binary.x_train, digits_binary.y_train, classes=digits_binary.classes
    )


@pytest.fixture(scope="session")
def fc2_multiclass(digits_multiclass, jax_strict):
    from ntkrobust.kernels import fit_kernel_machine, get_architecture

    return fit_kernel_machine(get_architecture("fc2"), digits_multiclass.x_train, digits_multiclass.y_train)


@pytest.fixture
def run_cli(capsys):
    """``run_cli(argv) -> (exit status, stdout, stderr)`` through ``cli.main``."""
    from ntkrobust import cli

    def run(argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def assert_refused(run_cli, tmp_path):
    """``assert_refused(argv, message)``: bad input is one line naming ``message`` on stderr,
    exit status 2, no traceback, and nothing written (not even a staging folder)."""

    def check(argv, message):
        out = tmp_path / "out"
        code, _, stderr = run_cli([*argv, "--out", out])
        assert code == 2
        assert stderr.count("\n") == 1 and message in stderr, stderr
        assert "Traceback" not in stderr
        assert not out.exists() and not list(tmp_path.glob(".*partial"))

    return check


def _assert_real_png(path: Path, min_bytes: int = 8000, colours: int = 20) -> tuple[int, int]:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes, path.name
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200, path.name
    # colours counted on packed RGBA integers: np.unique over pixel rows takes seconds per
    # figure on two busy cores, this a few milliseconds
    channels = np.round(pixels * 255).astype(np.uint32).reshape(-1, pixels.shape[-1])
    packed = np.zeros(channels.shape[0], dtype=np.uint32)
    for c in range(channels.shape[1]):
        packed = (packed << np.uint32(8)) | channels[:, c]
    assert np.unique(packed).size > colours, path.name
    return pixels.shape[0], pixels.shape[1]


@pytest.fixture
def assert_real_png():
    """``assert_real_png(path, colours=20) -> (height, width)``: a PNG with the right signature, a
    plausible size, and more than ``colours`` colours in it (not blank, not a stub)."""
    return _assert_real_png


def shared_data_or_skip(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path
