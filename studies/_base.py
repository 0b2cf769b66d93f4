"""What every study shares: the results envelope and the result that saves itself.

A study's result is saved by ``StudyResult.save(out)``: its files are written into a hidden
staging folder beside ``out`` (``studies._output``) and moved into place only when all of them
succeeded, so a crash never leaves a half-written result. Every results record carries the same envelope (command,
config, dataset, seed, warnings, seconds, versions, argv), written here once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import Field, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ntkrobust.studies._errors import StudyError, StudyWarning
from ntkrobust.studies._output import StagedOutput, check_out_dir, holds_files

__all__ = [
    "UNKEYED_AT_DEFAULT",
    "Clock",
    "StagedOutput",
    "StudyError",
    "StudyResult",
    "StudyWarning",
    "check_out_dir",
    "checked_together",
    "envelope",
    "gpu_record",
    "keyed",
    "number_text",
    "peak_gpu_memory",
    "restart_gpu_peak",
    "versions",
    "warn",
    "warned_after_checks",
]

#: ``field(metadata=UNKEYED_AT_DEFAULT)`` marks a setting added after reproductions were recorded:
#: at its default a ``reproduce`` step's key leaves it out (``reproduce._recipe.canonical``), so
#: the steps finished before it existed keep their keys and are not run again.
UNKEYED_AT_DEFAULT = {"unkeyed_at_default": True}


def keyed(setting: Field[Any], value: Any) -> bool:
    """Whether ``setting`` (a field of a study's settings) holding ``value`` belongs in a
    ``reproduce`` step's key: every one does but a field marked ``UNKEYED_AT_DEFAULT`` at its default."""
    return not (setting.metadata.get("unkeyed_at_default") and value == setting.default)


#: Distributions whose versions every result records.
_VERSIONED = ("ntkrobust", "numpy", "jax", "jaxlib", "neural-tangents", "scikit-learn", "torch", "torchvision")


def warn(notes: list[str], *texts: str | None) -> None:
    """Record each text in ``notes`` (the results' warnings) and raise it as a ``StudyWarning``
    now, so that a long run says it at the start, not at the end."""
    for text in texts:
        if text:
            notes.append(text)
            warnings.warn(text, StudyWarning, stacklevel=2)


def changed_flags(settings: Any, names: Sequence[str], flags: dict[str, str] | None = None) -> list[str]:
    """The flags (``--name``, or as ``flags`` names them) of the fields ``names`` of the settings
    dataclass ``settings`` that differ from their defaults: the flags given (one given at its
    default value cannot be told apart, and changes nothing)."""
    defaults = {f.name: f.default for f in fields(settings)}
    spelled = flags or {}
    return [spelled.get(n, "--" + n.replace("_", "-")) for n in names if getattr(settings, n) != defaults[n]]


def number_text(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` decimals; "undefined" where there is none (None, or not finite: a
    measure with nothing to measure, such as τ where the own attack lowers no accuracy)."""
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "undefined"


def flags_do(flags: Sequence[str], verb: str) -> str:
    """ "--a sets" or "--a / --b set": the flags as the subject of ``verb``, in number."""
    return f"{' / '.join(flags)} {verb}s" if len(flags) == 1 else f"{' / '.join(flags)} {verb}"


@contextlib.contextmanager
def warned_after_checks() -> Iterator[None]:
    """The ``StudyWarning``s raised by the checks in the ``with`` body, held back and said when
    the body ends without an error: bad input then reads as its one error line, not as the
    warnings found before the check that refused it (``train --epochs 1 --milestones 5,1``
    warned that 5 comes after the last epoch, then refused the order)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StudyWarning)
        yield
    for held in caught:
        warnings.warn_explicit(held.message, held.category, held.filename, held.lineno)


def checked_together() -> AbstractContextManager[None]:
    """Under torchrun, ``bridge.distributed.failing_together``: the checks in the ``with`` body
    pass on every process or stop every process (the first to fail says why). Elsewhere nothing:
    looked up, not imported (a group exists only once the command line has imported it), so a
    single process never imports torch for it."""
    import sys

    distributed = sys.modules.get("ntkrobust.bridge.distributed")
    return contextlib.nullcontext() if distributed is None else distributed.failing_together()


def _torch_on_cuda() -> Any:
    """torch, when this process has used CUDA through it (else None); looked up, not imported, so
    the analytic half's records stay torch-free."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch


def peak_gpu_memory() -> float | None:
    """MiB of GPU memory torch held at its peak since this process started or since the last
    ``restart_gpu_peak`` (None without CUDA in use)."""
    torch = _torch_on_cuda()
    return None if torch is None else float(torch.cuda.max_memory_allocated()) / 2**20


def restart_gpu_peak() -> None:
    """Count ``peak_gpu_memory`` from now: where one process runs several studies (``reproduce``'s
    steps, ``train --seeds``), each record holds its own peak, not the largest before it."""
    torch = _torch_on_cuda()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()


def gpu_precision() -> dict[str, Any] | None:
    """The GPU and the float32 arithmetic torch gave it (None without CUDA in use): on Ampere and
    later GPUs, cuDNN's float32 convolutions run in TF32 by PyTorch's default (10-bit mantissa,
    about 1e-3 relative), so float32 kernels and trainings differ from the CPU's by more than
    rounding; float64 never takes TF32."""
    torch = _torch_on_cuda()
    if torch is None:
        return None
    # TF32 units: Ampere and later, unless NVIDIA_TF32_OVERRIDE=0 turns them off for cuBLAS and cuDNN
    tensor_float = torch.cuda.get_device_capability() >= (8, 0) and os.environ.get("NVIDIA_TF32_OVERRIDE") != "0"
    return {
        "name": torch.cuda.get_device_name(),
        "tf32_convolutions": tensor_float and bool(torch.backends.cudnn.allow_tf32),
        "tf32_matmul": tensor_float and bool(torch.backends.cuda.matmul.allow_tf32),
    }


def gpu_record() -> dict[str, Any]:
    """What a record holds of the GPU where this process used CUDA (else nothing): the peak memory
    (``peak_gpu_memory_mib``) and the arithmetic it got (``gpu``, ``gpu_precision``)."""
    peak, gpu = peak_gpu_memory(), gpu_precision()
    return ({} if peak is None else {"peak_gpu_memory_mib": peak}) | ({} if gpu is None else {"gpu": gpu})


def versions() -> dict[str, str]:
    """Python's and every relevant package's version."""
    out = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


#: one line per finished stage, for logs and for stderr that is not a terminal (the command line
#: shows them unless --quiet; progress bars cover the stages while they run)
log = logging.getLogger("ntkrobust")


class Clock:
    """Seconds between named marks: ``clock.mark("data")``, ``clock.between("start", "data")``;
    ``clock.mark("data", "data loaded")`` also logs the stage with its seconds."""

    def __init__(self) -> None:
        self.marks = {"start": time.perf_counter()}

    def mark(self, name: str, stage: str | None = None) -> None:
        now = time.perf_counter()
        if stage is not None:
            log.info(f"{stage} ({now - max(self.marks.values()):.1f} s)")
        self.marks[name] = now

    def between(self, first: str, last: str) -> float:
        return self.marks[last] - self.marks[first]

    def since_start(self) -> float:
        return time.perf_counter() - self.marks["start"]


def envelope(
    command: str,
    metrics: dict[str, Any],
    config: dict[str, Any],
    *,
    seconds: dict[str, float] | None,
    argv: Sequence[str] | None,
    seed: int | None = None,
    dataset: dict[str, Any] | None = None,
    warnings: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A results record: the command, the study's own ``metrics``, then the keys every record
    shares (those given): config, seed, dataset, warnings, seconds, versions, argv."""
    record: dict[str, Any] = {"command": command, **metrics, "config": config}
    if seed is not None:
        record["seed"] = seed
    if dataset is not None:
        record["dataset"] = dataset
    if warnings is not None:
        record["warnings"] = list(warnings)
    if seconds is not None:
        record["seconds"] = seconds
    record |= gpu_record()
    record |= {"versions": versions(), "argv": None if argv is None else list(argv)}
    return record


@dataclass
class StudyResult:
    """A study's outcome: ``record`` (the results JSON) and whatever its files are made from.

    Subclasses write their arrays and figures in ``write_files`` and phrase ``summary``; ``save``
    stages everything and moves it into ``out`` only if all of it was written.
    """

    record: dict[str, Any]
    #: name of the results JSON inside ``out``
    results_file: str = field(default="results.json", kw_only=True)

    def write_files(self, staged: StagedOutput) -> None:
        """Arrays and figures beside the results JSON (none by default)."""

    def summary(self) -> str:
        raise NotImplementedError

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """The files in folder ``out`` (made if missing), all or none. A folder that holds files
        already is refused (``StudyError``) unless ``overwrite``: then these files replace those
        of the same names and the others stay, as the command line's ``--force`` does (a second
        study saved into the first's folder left a mix, one's results beside the other's figure)."""
        from ntkrobust.bridge.files import write_json

        out = Path(out)
        if not overwrite and holds_files(out):
            raise StudyError(
                f"{out} holds files already: save(out, overwrite=True) replaces those of the same names, "
                "or choose an empty or new folder"
            )
        staged = None
        try:  # an interrupt at any point leaves no staging folder behind (a kill: the next run removes it)
            staged = StagedOutput(out)
            self.write_files(staged)
            write_json(staged.path(self.results_file), self.record)
            staged.commit()
        except BaseException:
            if staged is not None:
                staged.discard()
            raise
        return out


@contextlib.contextmanager
def kept_if_stopped(finished: Callable[[], StudyResult | None]) -> Iterator[None]:
    """A study's long loop whose finished part is worth keeping (``evaluate``'s nets): an error or
    an interrupt leaving it carries ``finished()`` (None: nothing finished yet) for the command
    line to save (``partial_result``) before it says what stopped the run."""
    try:
        yield
    except BaseException as err:
        with contextlib.suppress(Exception):  # what the user must hear about is ``err``
            result = finished()
            if result is not None:
                err.ntkrobust_partial_result = result  # type: ignore[attr-defined]
        raise


def partial_result(err: BaseException) -> StudyResult | None:
    """The finished part of a study that ``err`` stopped (``kept_if_stopped``), or None."""
    result = getattr(err, "ntkrobust_partial_result", None)
    return result if isinstance(result, StudyResult) else None
