"""``transfer --examples FILE``: adversarial examples saved by an earlier run attack the targets
as black-box sources, without being crafted again: ``attack``'s ``adversarial.npz`` (TK sec. 3:
the NTK machine's examples, the tool's main job) and ``transfer``'s own ``examples.npz`` (every
array but ``x``, ``y`` and ``random_sign``). A column from a file compares with the run's other
columns only on the same points and within the same threat model, so both are checked before
any compute: the file's ``x`` and ``y`` equal the run's test points and labels bit for bit, and
every example lies in [0, 1] within the run's ε of its point (``attacks.EPS_SLACK``, as for the
attacks' own contract). The arrays are read without unpickling (``bridge.files.read_npz``). What
made a file is recorded as found: the command and config of the ``results.json`` beside it, which
this tool writes there (read as plain JSON, not checked against the file; absent when there is
none or it cannot be read: a file from elsewhere has its path and sha256 alone).

Shapes, written once: x (N, C, H, W) float32 in [0, 1]; y (N,) class ids; every examples array
of a file has x's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust._numbers import pixel_radius
from ntkrobust.bridge.files import file_digest
from ntkrobust.studies._errors import StudyError

#: the arrays of a saved file that are no source's examples: the points, the labels and
#: ``transfer``'s random-sign baseline (the run makes its own)
NOT_EXAMPLES = ("x", "y", "random_sign")

#: the kind of a source read from a file, in ``results.json``'s ``sources``
KIND = "file"


def check_example_files(paths: Sequence[str]) -> None:
    """Refuse a missing, unreadable or repeated ``--examples`` file: before the data loads."""
    from ntkrobust.bridge.files import not_a_file
    from ntkrobust.studies._common import check_distinct_files

    for spec in paths:
        why = not_a_file(Path(spec))
        if why:
            raise StudyError(f"--examples {spec} {why}")
    check_distinct_files(paths, "--examples")  # as a net named twice is refused


def saved_examples(
    paths: Sequence[str], x: np.ndarray, y: np.ndarray, attack: Any, taken: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """The examples of every file of ``paths`` by source name ("file FOLDER", or "file FOLDER KEY"
    for a file of several arrays; names of ``taken`` and of each other numbered), and what each
    is: its file, array, sha256 and perturbation sizes. ``StudyError`` for a file whose points,
    labels or examples do not fit the run (``x``, ``y``, ``attack``'s norm and ε)."""
    sources: dict[str, np.ndarray] = {}
    about: dict[str, dict[str, Any]] = {}
    names = set(taken)
    for spec in paths:
        arrays = _read(spec, x, y)
        digest = file_digest(Path(spec))
        keys = [k for k in arrays if k not in NOT_EXAMPLES]
        if not keys:
            raise StudyError(f"--examples {spec} holds no examples, only {', '.join(arrays)}")
        folder = Path(spec).resolve().parent.name or Path(spec).stem
        made_by = _made_by(Path(spec).resolve().parent / "results.json")
        for key in keys:
            examples, sizes = _checked(spec, key, arrays[key], x, attack)
            name = f"{KIND} {folder}" if len(keys) == 1 else f"{KIND} {folder} {key}"
            base, i = name, 2
            while name in names:
                name, i = f"{base} ({i})", i + 1
            names.add(name)
            sources[name] = examples
            about[name] = {"kind": KIND, "file": str(spec), "array": key, "sha256": digest, **sizes, **made_by}
    return sources, about


def _read(spec: str, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The file's arrays, once its ``x`` and ``y`` are the run's test points and labels."""
    from ntkrobust.bridge.files import NpzError, read_npz

    try:
        arrays = read_npz(Path(spec), None, required=("x", "y"))
    except NpzError as err:
        raise StudyError(f"--examples {spec}: {err}") from None
    hint = "give the data flags of the run that made it"
    points, labels = arrays["x"], arrays["y"]
    if points.shape != x.shape:
        raise StudyError(
            f"--examples {spec}: its x holds points of shape {points.shape}, this run's test points {x.shape}: {hint}"
        )
    if labels.shape != y.shape or not np.issubdtype(labels.dtype, np.integer):
        raise StudyError(f"--examples {spec}: its y is {labels.dtype} of shape {labels.shape}, not {y.shape} class ids")
    for what, theirs, ours in (("x", points, x), ("y", labels, y)):
        differ = np.flatnonzero((theirs != ours).reshape(len(ours), -1).any(axis=1))
        if differ.size:  # other points, or the same in another order: its column would measure another set
            raise StudyError(
                f"--examples {spec}: its {what} differs from this run's test {'points' if what == 'x' else 'labels'} "
                f"at {differ.size} of {len(ours)} points (the first at {differ[0]}): {hint}"
            )
    return arrays


def _checked(
    spec: str, key: str, examples: np.ndarray, x: np.ndarray, attack: Any
) -> tuple[np.ndarray, dict[str, float]]:
    """``examples`` as x's dtype, once they are images in [0, 1] within ``attack``'s ε of x, and
    their sizes: the largest ℓ∞ move and the mean ℓ2 move."""
    where = f"--examples {spec}: its array {key}"
    if examples.shape != x.shape:
        raise StudyError(f"{where} has shape {examples.shape}, not its points' {x.shape}")
    if not np.issubdtype(examples.dtype, np.floating):
        raise StudyError(f"{where} holds {examples.dtype}, not images of floats in [0, 1]")
    examples = examples.astype(x.dtype, copy=False)  # as the run's own examples are (float32)
    if not np.isfinite(examples).all() or examples.min(initial=0.0) < 0 or examples.max(initial=0.0) > 1:
        raise StudyError(f"{where} holds values outside [0, 1]: not images as this tool writes them")
    from ntkrobust.attacks import EPS_SLACK, perturbation_norms

    norms = perturbation_norms(examples, x)
    size = float(norms[attack.norm].max(initial=0.0))
    if size > attack.eps + EPS_SLACK:  # a larger ε than the other columns': no comparison
        raise StudyError(
            f"{where} moves a point {size:.4g} from it in {attack.norm}, beyond this run's --eps "
            f"{pixel_radius(attack.eps)}: give the ε it was made with"
        )
    return examples, {"linf_max": float(norms["linf"].max(initial=0.0)), "l2_mean": float(norms["l2"].mean())}


#: the largest ``results.json`` read for a file's provenance (this tool's are kilobytes)
RECORD_BYTES = 1 << 20


def _made_by(record: Path) -> dict[str, Any]:
    """``{"made_by": {"command", "config"}}`` of the run record ``record`` where it is one of this
    tool's (a JSON object naming its command and config), else nothing."""
    from ntkrobust.bridge.files import JsonFileError, read_json

    try:
        if not record.is_file() or record.stat().st_size > RECORD_BYTES:
            return {}
        found = read_json(record)
    except (JsonFileError, OSError):
        return {}
    if not (
        isinstance(found, dict) and isinstance(found.get("command"), str) and isinstance(found.get("config"), dict)
    ):
        return {}
    return {"made_by": {"command": found["command"], "config": found["config"]}}
