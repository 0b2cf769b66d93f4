"""AutoAttack's seed against the net: how far one evaluation's AutoAttack number moves when only
the attack's random draws change (Square's 5000 random queries, APGD's and FAB's random starts).

    python benchmarks/autoattack_seeds.py RESULTS_JSON [--net LABEL] [--parts square] [--seeds 0,1,2,3,4] [--out DIR]

RESULTS_JSON is the ``results.json`` of an ``evaluate`` run (or of a ``reproduce`` step that ran
it): its nets and test points are taken again exactly (the data config and ``--seed`` it
recorded). For each net (all, or those labelled ``--net``) AutoAttack's ``--parts`` (default:
the standard version's, as ``evaluate`` runs them) attack the points once per seed of
``--seeds``; each run is ``evaluate``'s with its seed replaced (runs of ``--batch-size`` points,
each seeded by the seed + its first row). Seed 0 with every part repeats ``evaluate``'s own
number. Prints each net's accuracy per seed with its spread and writes autoattack_seeds.json
(config, versions, every point's verdict) to --out.

Why: a net whose gradients mislead APGD (``masking_suspected``) is left to Square, a random
search, and its verdicts on points near the boundary can hang on the draws. Two runs of the
same reproduction step on two machines gave 0.540 and 0.320 (``loo-table2-centered-at``); this
tells the seed's share of such a gap from the net's.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from ntkrobust._cli_flags import _seed_list
from ntkrobust.bridge.files import write_atomically


def _seeds(text: str) -> list[int]:
    """The CLI's ``--seeds`` list (``_cli_flags``), distinct: each seed is one run of the table."""
    seeds = list(_seed_list(text))
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"distinct integers, comma-separated: {text!r}")
    return seeds


def _spec(net: dict[str, Any]) -> str:
    """The NET argument that names ``net`` (an entry of the record's nets) to ``evaluate``."""
    if net["kind"] == "state-dict":
        width = f":{net['width']}" if net.get("width") is not None else ""
        return f"{net['model']}{width}={net['path']}"
    return str(net["path"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json of an evaluate run")
    parser.add_argument("--net", action="append", default=None, help="a net's label in it (default: every net)")
    parser.add_argument("--parts", default=None, help="AutoAttack's parts, e.g. square (default: the standard ones)")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2, 3, 4])
    parser.add_argument("--batch-size", type=int, default=None, help="default: the evaluation's")
    parser.add_argument("--out", type=Path, default=Path("runs/autoattack-seeds"))
    parser.add_argument("--trust-model-code", action="store_true", help="as evaluate's: for TorchScript / .pt2 nets")
    args = parser.parse_args()

    import torch

    from ntkrobust.bridge.data import task_indices
    from ntkrobust.bridge.evaluation import autoattack_attacks, robust_correct
    from ntkrobust.studies._common import DataSettings, load_targets, quiet_torch_warnings

    quiet_torch_warnings()
    # AutoAttack's own lines (each part's robust accuracy, as evaluate prints them): a seed of
    # Square on a few hundred points takes minutes on a CPU
    progress = logging.getLogger("ntkrobust")
    progress.addHandler(logging.StreamHandler(sys.stderr))
    progress.setLevel(logging.INFO)

    record = json.loads(args.results.read_text())
    if record.get("command") != "evaluate":
        sys.exit(f"autoattack_seeds: {args.results} is not the results.json of an evaluate run")
    config = record["config"]
    nets = [n for n in record["nets"] if args.net is None or n["label"] in args.net]
    if not nets:
        sys.exit(f"autoattack_seeds: no net labelled {args.net} in {args.results}")
    data_config = config["data"]
    settings = DataSettings(
        data=data_config["data"],
        data_root=None if data_config["data_root"] is None else Path(data_config["data_root"]),
        from_test_split=data_config["from_test_split"],
        classes=data_config["classes"],
        n_train=data_config["n_train"],
        n_test=data_config["n_test"],
        seed=record["seed"],
    )
    data = settings.load()
    classes = len(data.classes)
    parts = autoattack_attacks(classes) if args.parts is None else [p.strip() for p in args.parts.split(",")]
    batch_size = args.batch_size or config.get("autoattack_batch_size") or 250
    x = torch.as_tensor(data.x_test).float()
    y = torch.as_tensor(task_indices(data.y_test, data.classes)).long()
    targets = load_targets([_spec(n["net"]) for n in nets], data, "cpu", trust_code=args.trust_model_code)
    print(f"{len(x)} test points, eps {config['eps']:g}, AutoAttack parts {','.join(parts)}, seeds {args.seeds}")
    rows: list[dict[str, Any]] = []
    for described, target in zip(nets, targets, strict=True):
        model = target.model.float().eval()
        verdicts, seconds = {}, {}
        for seed in args.seeds:
            start = time.perf_counter()
            correct = robust_correct(
                model, x, y, eps=config["eps"], channels=data.image_shape[0], attacks=("autoattack",), seed=seed,
                batch_size=batch_size, autoattack_parts=parts,
            )["autoattack"]  # fmt: skip
            seconds[seed] = time.perf_counter() - start
            verdicts[seed] = correct
            print(f"{described['label']}: seed {seed}: {correct.mean():.3f} ({seconds[seed]:.0f} s)", flush=True)
        accuracy = [float(v.mean()) for v in verdicts.values()]
        stacked = np.stack(list(verdicts.values()))
        every = float(stacked.all(axis=0).mean())  # robust under every seed: the union of the attacks
        print(
            f"{described['label']}: mean {statistics.mean(accuracy):.3f}, min {min(accuracy):.3f}, "
            f"max {max(accuracy):.3f}, sd {statistics.pstdev(accuracy):.3f}; robust under every seed {every:.3f}; "
            f"evaluate's AutoAttack {described['accuracy'].get('autoattack', float('nan')):.3f}"
        )
        rows.append(
            {
                "label": described["label"],
                "net": described["net"],
                "evaluate_autoattack": described["accuracy"].get("autoattack"),
                "accuracy": dict(zip(map(str, args.seeds), accuracy, strict=True)),
                "robust_under_every_seed": every,
                "seconds": {str(s): t for s, t in seconds.items()},
                "correct": {str(s): v.astype(int).tolist() for s, v in verdicts.items()},
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "results": str(args.results),
        "config": {
            "data": data_config,
            "seed": record["seed"],
            "eps": config["eps"],
            "parts": parts,
            "seeds": args.seeds,
            "batch_size": batch_size,
        },
        "nets": rows,
        "machine": platform.platform(),
        "versions": {name: version(name) for name in ("torch", "pyautoattack", "ntkrobust")},
    }
    text = json.dumps(result, indent=1)
    write_atomically(args.out / "autoattack_seeds.json", lambda path: path.write_text(text))
    print(f"wrote {args.out / 'autoattack_seeds.json'}")


if __name__ == "__main__":
    main()
