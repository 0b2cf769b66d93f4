"""Eighteenth audit (mutation testing of ``transfer --examples``: ``studies._saved_examples``, its
wiring in ``studies.transfer`` and ``bridge.files.read_npz(keys=None)``): examples built here by
hand from the run's own test points (chosen pixels raised by chosen amounts, so every size is
known without the code under test) instead of an attack's. The suite fed only FGSM examples,
which move every point by exactly ε, so a check of the mean size over the points, of the ℓ∞
size under an ℓ2 threat, or of ten times the slack passed it, as did a maximum taken for the mean
ℓ2 size; it named files only by absolute paths in distinct folders of distinct names (a folder
read from the path unresolved, a file named twice through ``..`` or a name collision with a net
or between three files passed it), hashed files under 1 MiB only, compared the points only where
they differ by whole pixels (a tolerance passed it), gave labels of the wrong shape only beside
points of the wrong shape, values outside [0, 1] only above 1, a forged .npy header only to the
other readers of .npz files, and checked the missing file only before the nets load, not before
the data does; ``read_npz`` was not asked for no keys (None, all of them, must stay apart from an
empty list)."""

from __future__ import annotations

import hashlib
import io
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_study_transfer_examples import EPS, NO_COMPUTE  # tests/studies/ is on sys.path (prepend mode)

from ntkrobust.bridge import transfer as bridge_transfer
from ntkrobust.studies import DataSettings, ThreatSettings, transfer
from ntkrobust.studies.transfer import TransferSettings


@pytest.fixture(scope="module")
def points(binary_task):
    """The run's test points and labels: (40, 1, 8, 8) float32, every point with 24 or more
    pixels at 0 (where a pixel can be raised by any amount up to 1 and stay in [0, 1])."""
    data = binary_task.load()
    return data.x_test, data.y_test


def _raised(x, sizes, pixels=1, dtype=np.float32):
    """``x`` with the first ``pixels`` zero pixels of point i set to ``sizes[i]``: a move of
    ℓ∞ size |sizes[i]| and ℓ2 size |sizes[i]|·√pixels."""
    out = x.astype(dtype).reshape(len(x), -1)
    for i, size in enumerate(sizes):
        out[i, np.flatnonzero(x.reshape(len(x), -1)[i] == 0)[:pixels]] = size
    return out.reshape(x.shape)


def _file(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return str(path)


def test_names_sizes_digests_and_dtype_of_three_files_beside_a_net_of_their_name(
    points, two_layer_nets, binary_task, tmp_path, monkeypatch
):
    """A target whose file is ``file a.pt`` is labelled "file a": three files in folders named
    ``a`` become "file a (2)", "(3)" and "(4)" (numbered from the base name, after the net's
    label), the third given relative to the working folder (whose name it takes). Their sizes
    are those built in; each sha256 is its own file's, the first file over 1 MiB (a
    ``random_sign`` of 300,000 float64, read by no source); float64 examples reach the targets
    as float32, the test points' dtype."""
    x, y = points
    n = len(x)
    target = tmp_path / "file a.pt"
    shutil.copy(two_layer_nets[1] / "net_w300_s0.pt", target)
    ramp = 0.2 * np.arange(1, n + 1) / n  # point i raised by 0.2 (i + 1) / 40 on two pixels
    first = _file(
        tmp_path / "one" / "a" / "examples.npz",
        x=x,
        y=y,
        x_adv=_raised(x, ramp, pixels=2, dtype=np.float64),
        random_sign=np.zeros(300_000),
    )
    second = _file(tmp_path / "two" / "a" / "adversarial.npz", x=x, y=y, x_adv=_raised(x, [0.1] * n))
    _file(tmp_path / "three" / "a" / "examples.npz", x=x, y=y, x_adv=x)
    monkeypatch.chdir(tmp_path / "three" / "a")
    seen = {}
    evaluate = bridge_transfer.evaluate_target

    def recording(model, x_test, y_index, attack, sources, **kwargs):
        seen.update({name: examples.dtype for name, examples in sources.items()})
        return evaluate(model, x_test, y_index, attack, sources, **kwargs)

    monkeypatch.setattr("ntkrobust.bridge.transfer.evaluate_target", recording)
    settings = TransferSettings(
        target=(str(target),), data=binary_task, examples=(first, second, "examples.npz"), threat=EPS
    )
    record = transfer.run(settings).record
    files = [s for s in record["sources"] if s["kind"] == "file"]
    assert [s["name"] for s in files] == ["file a (2)", "file a (3)", "file a (4)"]
    assert list(record["targets"][0]["file_attack_accuracy"]) == ["a (2)", "a (3)", "a (4)"]
    assert record["matrix"]["columns"][-1] == "file a"  # the net, after the files
    for source, path in zip(files, (first, second, tmp_path / "three" / "a" / "examples.npz"), strict=True):
        with open(path, "rb") as f:
            assert source["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert (tmp_path / "one" / "a" / "examples.npz").stat().st_size > 1 << 20
    assert files[0]["linf_max"] == pytest.approx(0.2, abs=1e-6)
    assert files[0]["l2_mean"] == pytest.approx(math.sqrt(2) * 0.2 * (n + 1) / (2 * n), rel=1e-6)  # √2 · mean
    assert files[1]["linf_max"] == pytest.approx(0.1, abs=1e-6)
    assert files[1]["l2_mean"] == pytest.approx(0.1, rel=1e-6)
    assert files[2]["linf_max"] == files[2]["l2_mean"] == 0
    assert {seen[s["name"]] for s in files} == {np.dtype(np.float32)}


def test_refusals_of_points_labels_and_sizes_the_suite_left_open(
    points, two_layer_nets, binary_task, tmp_path, refuses
):
    x, y = points
    n = len(x)
    target = (str(two_layer_nets[1] / "net_w300_s0.pt"),)

    def refused(name, message, threat=EPS, **arrays):
        path = _file(tmp_path / f"{name}.npz", **{"x": x, "y": y, "x_adv": x, **arrays})
        settings = TransferSettings(target=target, data=binary_task, examples=(path,), threat=threat)
        return refuses(transfer, settings, message, NO_COMPUTE)

    # the run's points bit for bit: one pixel of point 11 one float32 step above its value
    ulp = x.copy()
    ulp[11, 0, 4, 4] = np.nextafter(ulp[11, 0, 4, 4], np.float32(1))
    refused("ulp", "its x differs from this run's test points at 1 of 40 points (the first at 11)", x=ulp)
    # labels of another length beside the right points
    refused("short_y", "its y is int64 of shape (30,), not (40,) class ids", y=y[:30])
    # below 0, within ε of the point
    below = _raised(x, [-0.1] + [0.0] * (n - 1))
    refused("below", "its array x_adv holds values outside [0, 1]", x_adv=below)
    # one point of forty beyond ε: the largest size is the one held to ε
    one_far = _raised(x, [0.0] * 9 + [0.25] + [0.0] * (n - 10))
    refused("one_far", "its array x_adv moves a point 0.25 from it in linf, beyond this run's --eps 0.2", x_adv=one_far)
    # 5e-6 beyond ε: past the slack of 1e-6
    past = _raised(x, [0.2 + 5e-6] * n)
    refused("past_slack", "its array x_adv moves a point 0.2 from it in linf, beyond this run's --eps 0.2", x_adv=past)
    # an ℓ2 threat reads ℓ2 sizes: 0.4 on four pixels is 0.8 in ℓ2 (0.4 in ℓ∞, within 0.5)
    l2_far = _raised(x, [0.4] * n, pixels=4)
    refused(
        "l2_far",
        "its array x_adv moves a point 0.8 from it in l2, beyond this run's --eps 0.5",
        threat=ThreatSettings(norm="l2", eps=0.5),
        x_adv=l2_far,
    )


def test_a_forged_header_in_an_examples_file_is_refused_before_allocating(
    points, two_layer_nets, binary_task, tmp_path, refuses
):
    """``read_npz(keys=None)`` holds every member to the sizes its .npy header declares, as the
    named keys are: an x_adv declaring 3.6 TiB in no bytes is refused naming that."""
    x, y = points
    path = tmp_path / "forged.npz"
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1, 1000, 1000), }"
    text += " " * ((len(text) + 11 + 63) // 64 * 64 - len(text) - 11) + "\n"
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in (("x", x), ("y", y)):
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{key}.npy", buffer.getvalue())
        archive.writestr("x_adv.npy", b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode())
    settings = TransferSettings(
        target=(str(two_layer_nets[1] / "net_w300_s0.pt"),), data=binary_task, examples=(str(path),), threat=EPS
    )
    refuses(transfer, settings, "x_adv declares shape (1000000, 1, 1000, 1000) of float32 (3.64 TiB) but holds 0 bytes")


def test_missing_and_repeated_files_are_refused_before_the_data_loads(
    points, two_layer_nets, binary_task, tmp_path, monkeypatch, refuses
):
    """A file named twice through ``..`` (a path pathlib keeps as written) is the same file."""
    x, y = points
    good = _file(tmp_path / "good.npz", x=x, y=y, x_adv=x)
    target = (str(two_layer_nets[1] / "net_w300_s0.pt"),)
    (tmp_path / "sub").mkdir()
    monkeypatch.setattr(DataSettings, "load", lambda self: pytest.fail("data loaded before the refusal"))

    def refused(examples, message):
        return refuses(transfer, TransferSettings(target=target, data=binary_task, examples=examples), message)

    refused((str(tmp_path / "none.npz"),), f"--examples {tmp_path / 'none.npz'} does not exist")
    twice = str(tmp_path / "sub" / ".." / "good.npz")
    refused((good, twice), f"--examples {twice} is named twice (also as {good})")


def test_read_npz_reads_all_arrays_for_none_and_none_for_no_keys(tmp_path):
    """None (``--examples``' reading) is every array, in the order they were written (not sorted);
    an empty list of keys is no array, as before None existed."""
    from ntkrobust.bridge.files import read_npz

    path = _file(tmp_path / "order.npz", z=np.zeros(2), a=np.arange(3), m=np.ones((1, 2)))
    arrays = read_npz(Path(path), None)
    assert list(arrays) == ["z", "a", "m"]
    np.testing.assert_array_equal(arrays["a"], [0, 1, 2])
    assert read_npz(Path(path), ()) == {}
