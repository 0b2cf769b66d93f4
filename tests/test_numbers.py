"""The shared number checks of ``ntkrobust._numbers``, and that each layer's checks use them alike."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from ntkrobust._numbers import is_real, is_whole, pixel_radius


@pytest.mark.parametrize("value", [0, 1, -3, 2**70, np.int8(3), np.int64(-1), np.uint16(5)])
def test_whole_numbers(value):
    assert is_whole(value)


@pytest.mark.parametrize(
    "value", [True, False, np.bool_(True), 2.0, np.float64(2.0), "2", None, Fraction(2, 1), [2], np.array([2])]
)
def test_not_whole_numbers(value):
    # True == 1 and 2.0 == 2 in Python: neither is taken as a count
    assert not is_whole(value)


@pytest.mark.parametrize(
    "value", [0, -1.5, 2**70, 10**400, np.float32(0.25), np.int64(3), Fraction(1, 3), math.inf, math.nan]
)
def test_real_numbers(value):
    assert is_real(value)


@pytest.mark.parametrize("value", [True, np.bool_(False), "1.0", None, 1j, np.array(1.0), [1.0]])
def test_not_real_numbers(value):
    assert not is_real(value) and not is_real(value, finite=True)


@pytest.mark.parametrize(
    "value", [math.inf, -math.inf, math.nan, np.float32("inf"), np.float64("nan"), 10**400, -(10**400)]
)
def test_not_finite(value):
    # an int beyond float's range makes math.isfinite raise OverflowError: it is no finite float
    assert is_real(value) and not is_real(value, finite=True)


@pytest.mark.parametrize("value", [0, -2.5, 1e308, 2**1000, np.float16(3), Fraction(1, 7)])
def test_finite(value):
    assert is_real(value, finite=True)


def test_every_layer_refuses_a_bool_and_an_overflowing_int():
    from ntkrobust.attacks.spec import image_type
    from ntkrobust.attacks.threat import ThreatModel, check_batch_size, check_schedule, check_seed
    from ntkrobust.kernels.architectures import fully_connected
    from ntkrobust.studies._common import StudyError, check_count

    for call in (
        lambda: ThreatModel("linf", True),  # was a ball of radius 1.0
        lambda: ThreatModel("linf", 10**400),  # was numpy's TypeError
        lambda: check_schedule(True, 10),
        lambda: check_schedule(0.1, True),
        lambda: check_schedule(10**400, 10),  # was math.isfinite's OverflowError, a traceback
        lambda: check_batch_size(True),
        lambda: check_seed(False),
        lambda: image_type(True),
        lambda: fully_connected(True),
        lambda: fully_connected(2, W_std=10**400),
        lambda: fully_connected(2, b_std=True),
    ):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(StudyError):
        check_count(True, 1, "--steps")
    assert ThreatModel("linf", np.float32(0.25)).eps == 0.25 and ThreatModel("l2", 0).eps == 0
    check_schedule(np.float32(0.1), np.int64(10))  # numpy's numbers are numbers
    check_count(np.int64(3), 1, "--steps")
    assert image_type(np.int64(3)) == "colour"


def test_a_recorded_true_is_no_metric_value():
    """A kernel metric recorded as JSON ``true`` is not drawn as 1.0 in the dynamics figures."""
    from ntkrobust.plots._runs import _metric_series

    run = {"kernels": [{"epoch": 0, "c_ntk": {"trace": True}}, {"epoch": 1, "c_ntk": {"trace": 2.5}}]}
    epochs, values, reason = _metric_series(run, "c_ntk", "trace")  # type: ignore[arg-type]
    assert epochs.tolist() == [1.0] and values.tolist() == [2.5]
    assert reason == "not recorded; 1 of the 2 tracked kernels"


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (8 / 255, "8/255"),  # was 0.03137: a command given --eps 8/255 says 8/255 back
        (2 / 255, "2/255"),
        (float(np.float32(8 / 255)), "8/255"),  # a radius that went through float32
        (0.3, "0.3"),  # a short decimal stays one: 0.2 is not written 51/255
        (0.2, "0.2"),
        (0.3 * 2 / 3, "0.2"),  # 0.19999999999999998, a warm-up's reach: not 51/255
        (float(np.float32(0.2)), "0.2"),
        (0.0, "0"),
        (0.01, "0.01"),
        (1.0, "1"),
        (2.0, "2"),  # ℓ2 radii
        (0.03137, "0.03137"),  # a decimal near 8/255 is not rounded to it
        (0.123456, "0.1235"),
    ],
)
def test_pixel_radius_is_written_as_the_papers_write_it(value, printed):
    assert pixel_radius(value) == printed
