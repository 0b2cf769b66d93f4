"""Strict numerics and seeded fixtures shared by the suite.

- numpy raises on invalid operations, overflow and division by zero inside tests;
- JAX runs in float64 for the whole session (set here: the package itself switches float64 on
  only around its own computations, leaving the user's process default alone) and refuses
  implicit rank promotion;
- every random draw is seeded; the Gram cache lives in a per-session temporary folder;
- nothing here needs ``../shared`` (real data tests are marked ``shared_data`` and skip without it:
  ``shared_file``).
- the studies' tests share their expensive runs here (training runs, two-layer nets).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

# test modules import each other's helpers by module name ("from test_machine_audit import ..."):
# pytest puts a test file's folder on sys.path only once it collects a file there, so every test
# folder is put there now, for a file that reuses the helpers of another folder's audit
for _folder in sorted(Path(__file__).resolve().parent.iterdir()):
    if _folder.is_dir() and not _folder.name.startswith(("_", ".")) and str(_folder) not in sys.path:
        sys.path.append(str(_folder))

# before anything imports jax: the tests build their own float64 arrays and compare at 1e-12
os.environ["JAX_ENABLE_X64"] = "1"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown
def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker collects its garbage before it tells the controller that it is done, and
    freezes the rest. Seen on 2026-12-06: after the last test, pytest's own collection at
    unconfigure took 5.2 s (353,417 objects) on a worker's heap of torch, JAX and the cached runs,
    past execnet's 5 s for a worker to finish once told to; execnet then interrupts it, and the
    ``KeyboardInterrupt`` lands in JAX's gc callback, a ``PytestUnraisableExceptionWarning`` at
    the end of 2 of 4 CI runs. Here, before the controller's clock starts, the collection is
    free to take its time, and the frozen heap makes pytest's later collections quick."""
    if hasattr(session.config, "workerinput"):
        import gc

        gc.collect()
        gc.freeze()


@pytest.fixture(autouse=True)
def _strict_numpy():
    with np.errstate(all="raise", under="ignore"):  # underflow to 0 is benign (exp of -large)
        yield


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Every worker runs torch with one intra-op thread: the tests' tensors are tiny, and a second
    thread only spins on a shared 2-core machine where pytest-xdist already runs two workers."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _shared_data_or_skip(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture
def shared_file():
    """``shared_file(*parts) -> Path`` under ``../shared/data``; the test skips where it is absent."""
    return _shared_data_or_skip


# -- studies -----------------------------------------------------------------------------------


def _never(*args, **kwargs):
    raise AssertionError("a refused setting reached the compute")


@pytest.fixture
def refuses(monkeypatch):
    """``refuses(study, settings, message, compute=())``: ``study.run(settings)`` raises a one-line
    ``StudyError`` naming ``message`` before it reaches any of ``compute`` (dotted paths of the
    study's expensive steps, patched to fail); the error is returned."""
    from ntkrobust.studies import StudyError

    def check(study, settings, message, compute=()):
        with monkeypatch.context() as patched:
            for target in compute:
                patched.setattr(target, _never)
            with pytest.raises(StudyError, match=re.escape(message)) as caught:
                study.run(settings)
        assert "\n" not in str(caught.value)
        return caught.value

    return check


def _own_class_images(data):
    first = {int(c): data.x_train[np.flatnonzero(data.y_train == c)[0]] for c in data.classes}

    def attack(machine, x, y, spec, progress=False):
        return np.stack([first[int(label)] for label in y]).astype(x.dtype)

    return attack


@pytest.fixture
def own_class_attack():
    """``own_class_attack(data)``: a stand-in for ``kernels.adversarial.craft_adversarial`` that
    moves every point onto a training image of its own class. A point the machine gets wrong at x
    is right "under attack", so only the robust-accuracy convention (correct at x and at the
    attack) tells the two counts apart."""
    return _own_class_images


#: small and fast training (fc2 of width 32, PGD of 2 steps, kernels of 20 probe points); lr 0.5 in
#: batches of 10 (10 steps an epoch) so that the net learns: its test clean accuracy goes 0.067,
#: 0.133, 0.283 over two epochs (at lr 0.1 in batches of 50 it stayed at 0.067, every epoch and run
#: alike, and the tests that tell epochs or runs apart by their accuracies could not fail)
SMALL_TRAINING = {
    "model": "fc2",
    "width": 32,
    "lr": 0.5,
    "batch_size": 10,
    "eps": 0.1,
    "pgd_steps": 2,
    "eval_pgd_steps": 2,
    "full_eval_steps": 3,
    "track_kernel": 20,
    "eval_n": 30,
}


@pytest.fixture(scope="session")
def small_training():
    """``small_training(out, **changes) -> TrainSettings``: digits (100 train, 60 test) and the
    settings of ``SMALL_TRAINING``, with ``changes``; its PGD steps only in modes that read them."""
    from ntkrobust.bridge.training import PGD_MODES
    from ntkrobust.studies import DataSettings
    from ntkrobust.studies.train import TrainSettings

    def make(out, **changes):
        fields = {"data": DataSettings(n_train=100, n_test=60), **SMALL_TRAINING, **changes}
        if fields.get("mode", "standard") not in PGD_MODES and "pgd_steps" not in changes:
            del fields["pgd_steps"]
        return TrainSettings(out=Path(out), **fields)

    return make


@pytest.fixture(scope="session")
def tracked_runs(tmp_path_factory, small_training):
    """``{mode: TrainResult}``: a standard and a PGD run of two epochs with tracked kernels
    (read them only: copy a run to change it)."""
    from ntkrobust.studies import train

    root = tmp_path_factory.mktemp("tracked")
    return {mode: train.run(small_training(root / mode, mode=mode, epochs=2)) for mode in ("standard", "pgd")}


@pytest.fixture(scope="session")
def untracked_run(tmp_path_factory, small_training):
    """A standard run of one epoch without kernels (``track_kernel=0``), read only."""
    from ntkrobust.studies import train

    return train.run(small_training(tmp_path_factory.mktemp("untracked") / "run", epochs=1, track_kernel=0))


@pytest.fixture(scope="session")
def binary_task():
    """``DataSettings`` of digits 3 vs 8 (60 train, 40 test): the two-layer and transfer task."""
    from ntkrobust.studies import DataSettings

    return DataSettings(classes=(3, 8), n_train=60, n_test=40)


@pytest.fixture(scope="session")
def two_layer_nets(tmp_path_factory, binary_task):
    """TK supp. C, small: two nets of width 300 trained 20 epochs on ``binary_task`` against
    their NTK (FGSM eps 0.2), saved: ``(TwoLayerResult, folder)``."""
    from ntkrobust.studies import ThreatSettings, two_layer

    settings = two_layer.TwoLayerSettings(
        data=binary_task, width=(300,), nets=2, epochs=20, threat=ThreatSettings(eps=0.2)
    )
    result = two_layer.run(settings)
    return result, result.save(tmp_path_factory.mktemp("two-layer") / "run")


# -- what the figures show (the figure objects, caught as they are saved) ----------------------


@pytest.fixture
def drawn(monkeypatch) -> dict[str, object]:
    """The figures saved while a test runs, by file name (each still drawable)."""
    from matplotlib.figure import Figure

    figures: dict[str, object] = {}
    save = Figure.savefig

    def record(fig, path, *args, **kwargs):
        figures[Path(path).name] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def _assert_heading(fig, subtitle: str) -> None:
    """One short title line that fits the figure; the details, ``subtitle`` among them, in a
    separate subtitle under it that overlaps no panel; no panel title runs off the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # pyplot closed the figure as it saved it
    canvas.draw()
    renderer = canvas.get_renderer()
    title = fig.get_suptitle().strip()
    assert title and "\n" not in title, title
    assert fig._suptitle.get_window_extent(renderer).width <= fig.bbox.width
    (note,) = [a for a in fig.artists if a.get_gid() == "subtitle"]
    assert subtitle in note.get_text().replace("\n", " ")
    box = note.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), f"the subtitle covers a panel: {ax.get_title()!r}"
        title = ax.title.get_window_extent(renderer)
        assert title.x0 >= 0 and title.x1 <= fig.bbox.width, f"a panel title runs off the figure: {ax.get_title()!r}"


@pytest.fixture
def assert_heading():
    """``assert_heading(fig, subtitle)``: a figure's one-line title and its subtitle (see above)."""
    return _assert_heading


@pytest.fixture
def one_process_sharing(monkeypatch: pytest.MonkeyPatch) -> None:
    """GlobalBatchNorm's shared-batch path in one process: sharing on, and the gather over the
    processes this process's one row (the two-process runs are in tests/bridge/test_distributed.py)."""
    from ntkrobust.bridge import global_batchnorm

    monkeypatch.setattr(global_batchnorm, "sharing", lambda: True)
    monkeypatch.setattr(global_batchnorm, "_gather_over_processes", lambda local: local.unsqueeze(0))
