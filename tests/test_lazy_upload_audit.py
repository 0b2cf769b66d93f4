"""The lazy public surfaces (``_lazy.lazy_surface``) and ``_upload.upload`` on the CPU, against
what Python and torch say by themselves: ``dir`` of a module is its ``__dir__`` sorted, a name of
a table is the attribute of the module the table names (read with ``importlib``), a missing name
is an ``AttributeError`` naming the package; an upload has the dtype asked for (else ``like``'s),
lies on ``like``'s device, and on the CPU shares the host array's memory (nothing is copied)."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch

from ntkrobust._lazy import lazy_surface
from ntkrobust._upload import upload


@pytest.mark.parametrize("package", ["kernels", "bridge"])
def test_dir_of_a_lazy_package_is_its_public_names(package):
    module = importlib.import_module(f"ntkrobust.{package}")
    assert dir(module) == sorted(module.__all__)


@pytest.mark.parametrize("package", ["kernels", "bridge"])
def test_a_missing_name_is_an_attribute_error_naming_the_package(package):
    module = importlib.import_module(f"ntkrobust.{package}")
    with pytest.raises(AttributeError, match=rf"^module 'ntkrobust\.{package}' has no attribute 'no_such_name'$"):
        module.no_such_name  # noqa: B018
    assert not hasattr(module, "no_such_name")


def test_a_table_loads_each_name_from_the_module_it_names():
    """Two modules defining ``loads`` and ``dumps``: each name comes from its own table entry."""
    getattr_, dir_ = lazy_surface("pkg", {"loads": "json", "dumps": "pickle", "sqrt": "math"}, ["sqrt", "loads"])
    import pickle

    assert getattr_("loads") is json.loads and getattr_("dumps") is pickle.dumps and getattr_("sqrt") is math.sqrt
    assert dir_() == ["sqrt", "loads"]
    with pytest.raises(AttributeError, match="module 'pkg' has no attribute 'cos'"):
        getattr_("cos")  # math has it, but the table does not name it


def test_an_upload_has_the_asked_dtype_else_likes():
    like = torch.zeros(2, dtype=torch.float16)
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    out = upload(host, like)
    assert (out.dtype, out.device.type) == (torch.float16, "cpu")
    np.testing.assert_array_equal(out.numpy(), host.astype(np.float16))
    assert upload(host, like, dtype=torch.int64).dtype == torch.int64
    assert upload(torch.ones(3, dtype=torch.float32), like, dtype=torch.float64).dtype == torch.float64


def test_an_upload_on_the_cpu_is_the_host_memory_itself():
    host = np.arange(5, dtype=np.float32)
    out = upload(host, torch.zeros(1, dtype=torch.float32))
    assert out.data_ptr() == host.ctypes.data
    tensor = torch.arange(4, dtype=torch.float64)
    assert upload(tensor, torch.zeros(1, dtype=torch.float64)) is tensor


def test_an_upload_reaches_another_device():
    out = upload(np.zeros((2, 2), dtype=np.float32), torch.zeros(1, device="meta"))
    assert (out.device.type, out.dtype, tuple(out.shape)) == ("meta", torch.float32, (2, 2))
