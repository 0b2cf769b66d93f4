"""Twin convergence: the empirical NTK of each torch twin approaches its analytic kernel as width grows.

    python benchmarks/twin_convergence.py [--data mnist|digits] [--n 24] [--seeds 3] [--conv-seeds 8] [--out DIR]

For every analytic architecture (fc1..fc5, two-layer, conv1, conv2) and a ladder of widths it
builds the torch twin (``bridge.models``, NTK parameterisation, --num-classes outputs) at --seeds
initialisations (--conv-seeds for the conv twins: cheap, and their errors fluctuate more),
computes the empirical NTK at initialisation on N fixed inputs
(``bridge.entk.empirical_ntk``, kind "trace": the mean of the per-output blocks, which is the
per-output kernel itself when --num-classes is 1) and compares it with the analytic Θ
(``kernels.compute_gram``) by the relative Frobenius error ‖Θ_emp − Θ‖_F / ‖Θ‖_F.
Jacot et al. (2018): the empirical NTK at initialisation tends to Θ with fluctuations ∝ 1/√width,
so the slope of log(error) against log(width) should be about −0.5; it is fitted and printed.

Width is hidden units for the dense nets and channels for the conv twins. Dense widths whose twin
has more than --max-params parameters are skipped (the deep ones get expensive on a CPU). Data:
real MNIST (cut from the official test set) when --mnist exists and --data is mnist, else the
scikit-learn 8x8 digits; the conv twins see MNIST 2x2-average-pooled to 14x14 (--conv-pool).
Writes twin_convergence.png (error vs width, log-log, std over seeds as error bars, a dashed
1/√width guide) and twin_convergence.json (config, versions, every error) to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, SHARED_MNIST, load_mnist

# kernels (JAX, neural-tangents, TensorFlow's LLVM) must be imported before any torch.func code
# runs; kernels/_jax.py sorts out the load order. The torch half is imported in main().
from ntkrobust.bridge.files import write_atomically
from ntkrobust.kernels import compute_gram, get_architecture

DENSE = ("fc1", "fc2", "fc3", "fc4", "fc5", "two-layer")
CONV = ("conv1", "conv2")
DEFAULT_DENSE_WIDTHS = "32,64,128,256,512,1024,2048,4096,8192"
DEFAULT_CONV_WIDTHS = "8,16,32,64,128,256,512"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(DENSE + CONV))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown architecture(s): {', '.join(unknown)}")
    return names


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _dense_params(name: str, width: int, fan_in: int, num_classes: int) -> int:
    """Parameter count of a dense twin (weights and biases; the two-layer net trains W only)."""
    if name == "two-layer":
        return fan_in * width
    depth = int(name[2:])
    return (fan_in + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * num_classes


def _pool(x: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return x
    n, c, h, w = x.shape
    h, w = h - h % factor, w - w % factor
    return x[:, :, :h, :w].reshape(n, c, h // factor, factor, w // factor, factor).mean(axis=(3, 5))


def _fit_slope(widths: list[int], errors: list[float]) -> tuple[float, float]:
    """Least-squares slope of log(error) on log(width) and its standard error."""
    lx, ly = np.log(widths), np.log(errors)
    (slope, _intercept), residuals, *_ = np.polyfit(lx, ly, 1, full=True)
    dof = len(widths) - 2
    if dof <= 0:
        return float(slope), float("nan")
    sigma2 = float(residuals[0]) / dof if len(residuals) else 0.0
    return float(slope), math.sqrt(sigma2 / float(np.sum((lx - lx.mean()) ** 2)))


def _load(data: str, mnist: Path, n: int) -> tuple[np.ndarray, str]:
    if data == "mnist" and mnist.exists():
        x, _, _, _, source = load_mnist(mnist, n, 1, seed=0)
        return x, source
    from ntkrobust.bridge.data import load_dataset

    if data == "mnist":
        print(f"no MNIST at {mnist}: using the scikit-learn digits instead")
    return load_dataset("digits", n_train=n, n_test=1, seed=0).x_train, "scikit-learn 8x8 digits"


def _plot(path: Path, results: dict, title: str, panels: list[tuple[str, list[str], str]]) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in panels if any(name in results for name in p[1])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.6), sharey=True, squeeze=False)
    markers = dict(zip(DENSE + CONV, "osD^v*ph", strict=True))
    palette = plt.get_cmap("tab10").colors

    def minus(value: float) -> str:  # a typographic minus sign
        return f"{value:+.2f}".replace("-", "\u2212")

    all_errors = [e for r in results.values() for row in r["rows"] for e in row["errors"]]
    for ax, (heading, names, xlabel) in zip(axes[0], panels, strict=True):
        names = [name for name in names if name in results]
        for index, name in enumerate(names):
            rows = results[name]["rows"]
            w = np.array([row["width"] for row in rows], dtype=float)
            mean = np.array([row["mean"] for row in rows])
            std = np.array([row["std"] for row in rows])
            lower = np.minimum(std, 0.9 * mean)  # keep the bars on a log axis
            colour = palette[index % len(palette)]
            slope, slope_se = results[name]["slope"], results[name]["slope_se"]
            ax.errorbar(
                w,
                mean,
                yerr=[lower, std],
                marker=markers[name],
                markersize=5,
                capsize=2.5,
                linewidth=1.4,
                color=colour,
                label=f"{name}: slope {minus(slope)} ± {slope_se:.2f}",
            )
        # 1/√width guide through the geometric mean of the panel's errors at its middle width
        widths = sorted({row["width"] for name in names for row in results[name]["rows"]})
        mid = widths[len(widths) // 2]
        at_mid = [row["mean"] for name in names for row in results[name]["rows"] if row["width"] == mid]
        anchor = float(np.exp(np.mean(np.log(at_mid))))
        guide = np.array([widths[0], widths[-1]], dtype=float)
        ax.plot(guide, anchor * np.sqrt(mid / guide), "k--", linewidth=1.2, label=r"$\propto 1/\sqrt{\mathrm{width}}$")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(widths)
        ax.set_xticklabels([str(v) for v in widths], rotation=45 if len(widths) > 7 else 0)
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_title(heading, fontsize=11)
        ax.grid(True, which="major", alpha=0.3)
        columns = 2 if len(names) > 2 else 1
        ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=columns, frameon=False)
    axes[0][0].set_ylabel(r"relative error  $\|\Theta_{\mathrm{emp}} - \Theta\|_F \,/\, \|\Theta\|_F$")
    axes[0][0].set_ylim(min(all_errors) / 2.5, max(all_errors) * 1.6)
    fig.suptitle(title, fontsize=11.5)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=160))
    plt.close(fig)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=("mnist", "digits"))
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST)
    parser.add_argument("--n", type=int, default=24, help="number of inputs (the kernels are N x N)")
    parser.add_argument("--seeds", type=int, default=3, help="initialisations per width, dense twins")
    parser.add_argument("--conv-seeds", type=int, default=8, help="initialisations per width, conv twins")
    parser.add_argument("--archs", type=_names, default=list(DENSE + CONV), help="comma-separated")
    parser.add_argument("--widths", type=_ints, default=_ints(DEFAULT_DENSE_WIDTHS), help="dense widths")
    parser.add_argument("--conv-widths", type=_ints, default=_ints(DEFAULT_CONV_WIDTHS), help="conv channels")
    parser.add_argument("--max-params", type=float, default=19e6, help="skip dense twins with more parameters")
    parser.add_argument("--conv-pool", type=int, help="input pooling for the conv twins (default 2 on 28x28, else 1)")
    parser.add_argument("--num-classes", type=int, default=1, help="twin outputs (trace kernel = their mean)")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="eNTK compute dtype")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "twin-convergence")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON in --out")
    return parser.parse_args()


def _width_row(
    name: str, inputs: np.ndarray, width: int, analytic: np.ndarray, args: argparse.Namespace, dtype: Any
) -> dict[str, Any]:
    """The relative errors of the twin ``name`` of ``width`` over its seeds, printed as one line."""
    from ntkrobust.bridge.entk import empirical_ntk
    from ntkrobust.bridge.models import build_model, model_config

    norm = float(np.linalg.norm(analytic))
    t0 = time.perf_counter()
    errors = []
    for seed in range(args.conv_seeds if name in CONV else args.seeds):
        config = model_config(name, inputs.shape[1:], args.num_classes, width=width, seed=seed)
        model = build_model(config)
        empirical = empirical_ntk(model, inputs, kind="trace", dtype=dtype)
        errors.append(float(np.linalg.norm(empirical - analytic) / norm))
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row = {
        "width": width,
        "params": params,
        "errors": errors,
        "mean": float(np.mean(errors)),
        "std": float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0,
        "seconds": seconds,
    }
    print(f"  {name:<9} width {width:>5}  error {row['mean']:.4f} ± {row['std']:.4f}  ({seconds:.1f} s)", flush=True)
    return row


def _architecture(name: str, inputs: np.ndarray, args: argparse.Namespace, dtype: Any) -> dict[str, Any]:
    """Every width of the twin ``name`` against its analytic kernel, and the fitted slope."""
    analytic = np.asarray(compute_gram(get_architecture(name), inputs), dtype=np.float64)
    norm = float(np.linalg.norm(analytic))
    fan_in = math.prod(inputs.shape[1:])
    if name in CONV:
        widths = args.conv_widths
    else:
        widths = [w for w in args.widths if _dense_params(name, w, fan_in, args.num_classes) <= args.max_params]
    rows = [_width_row(name, inputs, width, analytic, args, dtype) for width in widths]
    slope, slope_se = _fit_slope([r["width"] for r in rows], [r["mean"] for r in rows])
    falls = all(b["mean"] < a["mean"] for a, b in itertools.pairwise(rows))
    return {
        "input_shape": list(inputs.shape[1:]),
        "analytic_fro_norm": norm,
        "rows": rows,
        "slope": slope,
        "slope_se": slope_se,
        "monotone_decrease": falls,
        "overall_ratio": rows[0]["mean"] / rows[-1]["mean"],
    }


def _print_summary(results: dict[str, dict], total: float) -> None:  # type: ignore[type-arg]
    print()
    print(f"{'architecture':<13}{'width':>7}{'mean error':>13}{'std':>10}")
    for name, result in results.items():
        for row in result["rows"]:
            print(f"{name:<13}{row['width']:>7}{row['mean']:>13.4f}{row['std']:>10.4f}")
    print()
    print("fitted slope of log(error) vs log(width) (expected ≈ -0.5):")
    for name, result in results.items():
        rows = result["rows"]
        print(
            f"  {name:<9} {result['slope']:+.3f} ± {result['slope_se']:.3f}   "
            f"widths {rows[0]['width']}..{rows[-1]['width']}, "
            f"error {rows[0]['mean']:.3g} -> {rows[-1]['mean']:.3g} ({result['overall_ratio']:.1f}x smaller), "
            f"falls at every step: {'yes' if result['monotone_decrease'] else 'NO'}"
        )
    print(f"total {total:.0f} s")


def _figure(
    args: argparse.Namespace, source: str, x: np.ndarray, x_conv: np.ndarray, pool: int
) -> tuple[str, list[tuple[str, list[str], str]]]:
    """The figure's title and its panels (heading, architectures, x label)."""
    side, conv_side = "x".join(map(str, x.shape[-2:])), "x".join(map(str, x_conv.shape[-2:]))
    data_name = "MNIST" if source.startswith("real MNIST") else "sklearn digits"
    outputs = "1 output" if args.num_classes == 1 else f"{args.num_classes} outputs, trace kernel"
    title = (
        "Empirical NTK of the torch twins at initialisation vs the analytic (infinite-width) NTK\n"
        f"{data_name}, N = {x.shape[0]} inputs, {outputs}; mean ± std over seeds; "
        "slope: least-squares fit of log error on log width"
    )
    pooled = f" ({pool}x{pool}-average-pooled)" if pool > 1 else ""
    panels = [
        (f"fully connected: {side} inputs, {args.seeds} seeds", list(DENSE), "width (hidden units)"),
        (f"convolutional: {conv_side} inputs{pooled}, {args.conv_seeds} seeds", list(CONV), "width (channels)"),
    ]
    return title, panels


def _config(args: argparse.Namespace, source: str, x: np.ndarray, x_conv: np.ndarray, pool: int) -> dict[str, Any]:
    """The benchmark's settings as twin_convergence.json records them."""
    return {
        "data": source,
        "n": int(x.shape[0]),
        "input_shape": list(x.shape[1:]),
        "conv_input_shape": list(x_conv.shape[1:]),
        "conv_pool": pool,
        "seeds_dense": list(range(args.seeds)),
        "seeds_conv": list(range(args.conv_seeds)),
        "dense_widths": args.widths,
        "conv_widths": args.conv_widths,
        "max_params": args.max_params,
        "num_classes": args.num_classes,
        "kernel_kind": "trace",
        "entk_dtype": args.dtype,
        "metric": "||Theta_emp - Theta||_F / ||Theta||_F",
    }


def main() -> None:
    args = _parse_args()
    png, js = args.out / "twin_convergence.png", args.out / "twin_convergence.json"
    if args.replot:
        saved = json.loads(js.read_text())
        _plot(png, saved["results"], saved["figure"]["title"], [tuple(p) for p in saved["figure"]["panels"]])
        print(f"wrote {png}")
        return

    import torch  # after kernels: see the import of kernels above

    x, source = _load(args.data, args.mnist, args.n)
    pool = args.conv_pool if args.conv_pool is not None else (2 if x.shape[-1] >= 28 else 1)
    x_conv = _pool(x, pool)
    dtype = getattr(torch, args.dtype)
    conv_side = "x".join(map(str, x_conv.shape[-2:]))
    print(f"data: {source}; N = {x.shape[0]} inputs {tuple(x.shape[1:])}; conv twins on {conv_side} (pool {pool})")
    print(
        f"seeds per width: {args.seeds} (dense), {args.conv_seeds} (conv); {args.num_classes} output(s); "
        f"eNTK in {args.dtype}; {torch.get_num_threads()} torch threads"
    )

    started = time.perf_counter()
    results = {name: _architecture(name, x_conv if name in CONV else x, args, dtype) for name in args.archs}
    total = time.perf_counter() - started
    _print_summary(results, total)

    args.out.mkdir(parents=True, exist_ok=True)
    title, panels = _figure(args, source, x, x_conv, pool)
    _plot(png, results, title, panels)
    record = {
        "config": _config(args, source, x, x_conv, pool),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "jax": _version("jax"),
            "neural-tangents": _version("neural-tangents"),
            "numpy": np.__version__,
        },
        "total_seconds": total,
        "figure": {"title": title, "panels": panels},
        "results": results,
    }
    write_atomically(js, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    print(f"wrote {png} and {js}")


if __name__ == "__main__":
    main()
