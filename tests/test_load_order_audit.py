"""``_load_order.load_triton_first`` with a stand-in Triton (a package on the path that records the
``dlopen`` flags it is imported under) and a stand-in TensorFlow (a module in ``sys.modules``, or
a library in /proc/self/maps): Triton is imported when ``_load_order`` is, with the process's
flags when TensorFlow is absent, with those flags plus ``RTLD_DEEPBIND`` when it is present, and
the flags are the process's again afterwards. The real libraries' crash (exit 139) is the slow
``kernels/test_imports.py``; these fresh interpreters import nothing but the standard library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ntkrobust import _load_order

pytestmark = pytest.mark.skipif(not hasattr(os, "RTLD_DEEPBIND"), reason="dlopen flags of Linux")

_PROBE = """
import json, os, sys, types
before = sys.getdlopenflags()
if {tensorflow!r}:
    sys.modules[{tensorflow!r}] = types.ModuleType({tensorflow!r})
import ntkrobust._load_order
print(json.dumps({{
    "loaded": "triton" in sys.modules,
    "before": before,
    "during": getattr(sys.modules.get("triton"), "FLAGS", None),
    "after": sys.getdlopenflags(),
}}))
"""


def _probe(tmp_path: Path, tensorflow: str) -> dict[str, object]:
    fake = tmp_path / "triton"
    fake.mkdir(exist_ok=True)
    (fake / "__init__.py").write_text("import sys\nFLAGS = sys.getdlopenflags()\n")
    package_root = Path(_load_order.__file__).resolve().parents[1]  # where this ntkrobust is imported from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(package_root)]))
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(tensorflow=tensorflow)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_tensorflow_triton_loads_at_import_with_the_processs_flags(tmp_path):
    seen = _probe(tmp_path, "")
    assert seen["loaded"] is True
    assert seen["during"] == seen["before"] == seen["after"]


@pytest.mark.parametrize("tensorflow", ["tensorflow", "tensorflow.python"])
def test_after_tensorflow_triton_loads_isolated_and_the_flags_come_back(tmp_path, tensorflow):
    seen = _probe(tmp_path, tensorflow)
    before = seen["before"]
    assert isinstance(before, int) and not before & os.RTLD_DEEPBIND
    assert seen["loaded"] is True
    assert seen["during"] == before | os.RTLD_DEEPBIND
    assert seen["after"] == before


def test_tensorflow_libraries_in_the_process_maps_count_as_loaded(monkeypatch):
    """No tensorflow module, but its library mapped (loaded by another library): still loaded."""
    import io

    for name in [name for name in sys.modules if name == "tensorflow" or name.startswith("tensorflow.")]:
        monkeypatch.delitem(sys.modules, name)
    maps = {"text": "7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n"}

    def fake_open(path: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert path == "/proc/self/maps"
        return io.StringIO(maps["text"])

    monkeypatch.setattr(_load_order, "open", fake_open, raising=False)
    assert _load_order._tensorflow_loaded() is False
    maps["text"] += "7f02-7f03 r-xp 0 08:01 2 /venv/tensorflow/libtensorflow_framework.so.2\n"
    assert _load_order._tensorflow_loaded() is True
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    maps["text"] = ""
    assert _load_order._tensorflow_loaded() is True
