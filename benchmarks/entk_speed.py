"""Speed and memory of the empirical NTK against the torch.func tutorial, as ratios measured in one run.

    python benchmarks/entk_speed.py [--mnist ../shared/data/mnist] [--cifar ../shared/data/cifar10/cifar10_subset.npz]
        [--cases mnist,resnet] [--repeats 1] [--memory-limit-gb 16] [--device cpu|cuda] [--resnet-kinds N:KIND,...]

Compares ``bridge.entk.empirical_ntk`` (dense layers by their outer-product structure, plain
convolutions as g P^T rows when those fit a quarter of the budget, every other parameter through
vmap(jacrev) in groups chunked under its memory budget, default 40% of the free memory) with the
two methods of PyTorch's "Neural Tangent Kernels" tutorial (torch.func):
- jacobian contraction: ``vmap(jacrev(f))`` over all of x1 and of x2, flattened, and
  ``einsum('Naf,Mbf->NMab')`` (full) or ``'Naf,Maf->NM'`` (trace) summed over parameters;
- NTK-vector products: ``vmap`` over every pair (x1_n, x2_m) of a ``vjp`` then a ``jvp`` per
  identity basis vector, giving the full kernel (its trace taken afterwards);
and with a per-sample autograd loop (one ``torch.autograd.grad`` per example and output, then the
Gram matrix of the flattened gradients), timed on 20 (MNIST) or 4 (ResNet) examples and scaled to N (gradients
linearly, the Gram product quadratically). The tutorial's trace is a sum over the C classes, ours
a mean: theirs is divided by C before the kernels are compared.

Cases (the issue's): [1] the MNIST CNN (~824K parameters), trace kernel, N = 300; [2] ResNet-18
(3x3 stem, ~11.2M parameters, eval-mode BatchNorm) on CIFAR-shaped inputs, full kernel, C = 10,
N = 50. The tutorial methods materialise whole Jacobians (N x C x P floats each), so every method
runs in its own subprocess; the parent polls its resident memory and kills it above
--memory-limit-gb, or above what the machine has available less 1 GB when that is lower ("over the
limit"); a child killed by the kernel reads "out of memory". GB are 2^30 bytes. Where a
tutorial method does not fit at the issue's N, all methods also run at smaller N (where they fit)
for a like-for-like timing. Every kernel is checked against ours at the same N: max |K - K_ours| /
max |K_ours| (float32: ~1e-4 is agreement). [1]/[2] print tutorial seconds / ours (goal >= 1)
against the faster tutorial method at the largest N where one ran.
[3] (--resnet-kinds POINTS:KIND,..., off by default: slow) ours alone on ResNet-18 and CIFAR-shaped
points, one child per case: the kernel's seconds, peak memory (goal: within this machine's 24 GB)
and, where the full kind ran earlier at the same N, the ratio to it; then the child's CPU time (all
threads: on a loaded machine it moves less than the wall time) and where ours spent it
(Jacobian sub-batches, structured layers' factors and rows, contractions); e.g.
``--resnet-kinds 50:full,50:class-blocks,50:rademacher:2,500:class-blocks,500:rademacher:2``.
Ours' Jacobian work grows with N^2 once the parameters need several groups (each group's pass
covers all N points, and the groups' number grows with N), and its contraction with N^2; a
500-point full kernel takes about 16 minutes on 2 CPU cores (959 s; class blocks 309 s); --budget-gb (with
--memory-limit-gb above it) trades memory for fewer groups.

Peak memory: the child's peak resident set (VmHWM; it includes ~0.7-0.9 GB of torch and the model,
printed as the baseline) on CPU, ``torch.cuda.max_memory_allocated`` with --device cuda.
Each child warms up on 2 examples (first-call costs), then times --repeats calls (median); the
numbers are wall times on a shared machine, so only ratios within one run mean anything.
Uses real MNIST (cut from the official test set) and the CIFAR-10 subset when present, else
uniform noise images.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from _common import ALLOCATOR, ROOT, SHARED_MNIST, against_goal, load_mnist, wait_for_device

SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_subset.npz"

GOAL_TUTORIAL_RATIO = 1.0  # tutorial seconds / ours, against the faster tutorial method
GOAL_RESNET_GB = 24.0  # this machine's memory

OURS, CONTRACTION, NTK_VPS, LOOP = "ours", "contraction", "ntk-vps", "loop"
TUTORIAL = (CONTRACTION, NTK_VPS)
LABELS = {
    OURS: "ours (empirical_ntk)",
    CONTRACTION: "tutorial: jacobian contraction",
    NTK_VPS: "tutorial: NTK-vector products",
    LOOP: "per-sample autograd loop",
}


@dataclass(frozen=True)
class Case:
    label: str  # [1], [2], [3]
    title: str
    model: str
    input_shape: tuple[int, int, int]
    kind: str
    n: int
    smaller: tuple[int, ...]  # like-for-like sizes, tried in order while a tutorial method fails
    loop_n: int
    data: str  # "mnist" or "cifar"


CASES = {
    "mnist": Case("[1]", "MNIST CNN", "mnist-cnn", (1, 28, 28), "trace", 300, (100, 20), 20, "mnist"),
    "resnet": Case("[2]", "ResNet-18 (3x3 stem)", "resnet18", (3, 32, 32), "full", 50, (8, 2), 4, "cifar"),
}
RESNET_KINDS = Case("[3]", "ResNet-18 (3x3 stem)", "resnet18", (3, 32, 32), "full", 0, (), 0, "cifar")


# -- the child: one method, one N ------------------------------------------------------------


def _status_kib(field: str, pid: int | str = "self") -> int:
    """A memory line of /proc/PID/status (or of /proc/meminfo) in KiB; 0 once the process is gone."""
    path = Path("/proc/meminfo") if pid == "meminfo" else Path(f"/proc/{pid}/status")
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _methods(model, kind: str, num_classes: int, device, budget: int | None):  # type: ignore[no-untyped-def]
    """method name -> fn(x numpy) -> kernel (float64 numpy), the x2 = x1 kernel of ``kind``."""
    import torch
    from torch.func import functional_call, jacrev, jvp, vjp, vmap

    from ntkrobust.bridge.entk import empirical_ntk

    full = kind == "full"
    params = {k: v.detach() for k, v in model.named_parameters()}

    def fnet_single(params, x):  # type: ignore[no-untyped-def]
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

    def finish(result) -> np.ndarray:  # type: ignore[no-untyped-def]
        return (result if full else result / num_classes).to(torch.float64).cpu().numpy()

    def ours(x: np.ndarray) -> np.ndarray:
        extra = {} if budget is None else {"memory_budget": budget}
        for key in OURS_PARTS:
            phases[key] = 0
        return empirical_ntk(model, x, kind=kind, device=device, **extra)

    def contraction(x: np.ndarray) -> np.ndarray:  # the tutorial's, x2 = x1 passed like any x2
        x1 = x2 = torch.as_tensor(x, device=device)
        jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
        jac1 = [j.flatten(2) for j in jac1.values()]
        jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
        jac2 = [j.flatten(2) for j in jac2.values()]
        expr = "Naf,Mbf->NMab" if full else "Naf,Maf->NM"
        return finish(torch.stack([torch.einsum(expr, j1, j2) for j1, j2 in zip(jac1, jac2, strict=True)]).sum(0))

    def ntk_vps(x: np.ndarray) -> np.ndarray:  # the tutorial's
        x1 = x2 = torch.as_tensor(x, device=device)

        def get_ntk(x1, x2):  # type: ignore[no-untyped-def]
            def func_x1(params):  # type: ignore[no-untyped-def]
                return fnet_single(params, x1)

            def func_x2(params):  # type: ignore[no-untyped-def]
                return fnet_single(params, x2)

            output, vjp_fn = vjp(func_x1, params)

            def get_ntk_slice(vec):  # type: ignore[no-untyped-def]
                vjps = vjp_fn(vec)
                _, jvps = jvp(func_x2, (params,), vjps)
                return jvps

            basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device).view(output.numel(), -1)
            return vmap(get_ntk_slice)(basis)

        result = vmap(vmap(get_ntk, (None, 0)), (0, None))(x1, x2)
        return finish(result if full else torch.einsum("NMKK->NM", result))

    phases: dict[str, float] = {"gradients": 0.0, "gram": 0.0}
    _time_ours_parts(phases, device)

    def loop(x: np.ndarray) -> np.ndarray:
        weights = [p for p in model.parameters() if p.requires_grad]
        xs = torch.as_tensor(x, device=device)
        n = xs.shape[0]
        start = time.perf_counter()
        rows = []
        for i in range(n):
            out = model(xs[i : i + 1])[0]
            for c in range(num_classes):
                grads = torch.autograd.grad(out[c], weights, retain_graph=c < num_classes - 1)
                rows.append(torch.cat([g.reshape(-1) for g in grads]))
        g = torch.stack(rows).reshape(n, num_classes, -1)
        wait_for_device(device)
        middle = time.perf_counter()
        if full:
            flat = g.reshape(n * num_classes, -1)
            kernel = (flat @ flat.T).reshape(n, num_classes, n, num_classes).permute(0, 2, 1, 3)
        else:
            kernel = torch.bmm(g.transpose(0, 1), g.permute(1, 2, 0)).sum(0)
        out_np = finish(kernel)
        phases["gradients"], phases["gram"] = middle - start, time.perf_counter() - middle
        return out_np

    return {OURS: ours, CONTRACTION: contraction, NTK_VPS: ntk_vps, LOOP: loop}, phases


#: Where ours spends its time, timed from outside by wrapping bridge.entk's internals (in the child).
OURS_PARTS = ("jacobians", "jacobian_calls", "factors", "contraction", "contractions")


def _time_ours_parts(phases: dict[str, float], device) -> None:  # type: ignore[no-untyped-def]
    """Wrap ``JacobianEngine.jacobian`` (one vmap(jacrev) sub-batch of one parameter group),
    ``JacobianEngine.factors`` (the dense layers' g and h and the convolutions' rows or Gram factors of
    one sub-batch), ``_contract`` (one J1 J2^T) and ``add_gram_share`` (one Gram convolution's share)
    with timers."""
    import functools

    from ntkrobust.bridge import entk, jacobians

    def timed(fn, key: str, count: str | None = None):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            wait_for_device(device)
            phases[key] = phases.get(key, 0) + time.perf_counter() - start
            if count:
                phases[count] = phases.get(count, 0) + 1
            return result

        return wrapper

    engine = jacobians.JacobianEngine
    engine.jacobian = timed(engine.jacobian, "jacobians", "jacobian_calls")  # type: ignore[method-assign]
    engine.factors = timed(engine.factors, "factors")  # type: ignore[method-assign]
    entk._contract = timed(entk._contract, "contraction", "contractions")
    entk.add_gram_share = timed(entk.add_gram_share, "contraction", "contractions")


def worker(spec: dict) -> None:
    """Run one method at one N; save the kernel; print one JSON line (seconds, peak memory)."""
    import torch

    from ntkrobust.bridge.models import build_model, model_config

    device = torch.device(spec["device"])
    model = build_model(model_config(spec["model"], spec["input_shape"], spec["num_classes"])).eval().to(device)
    x = np.load(spec["inputs"])[: spec["n"]]
    methods, phases = _methods(model, spec["kind"], spec["num_classes"], device, spec["budget"])
    compute = methods[spec["method"]]
    try:
        compute(x[:2])  # warm-up: first-call costs, on 2 examples
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        baseline = _status_kib("VmRSS") * 1024
        times, cpu_times, phase_times = [], [], []
        for _ in range(spec["repeats"]):
            phases.clear()
            start, cpu_start = time.perf_counter(), time.process_time()
            kernel = compute(x)
            wait_for_device(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)  # every thread's: comparable across loads
            phase_times.append(dict(phases))
    except torch.OutOfMemoryError:
        print(json.dumps({"error": "out of GPU memory"}), flush=True)
        sys.exit(3)
    except RuntimeError as error:
        if "can't allocate memory" not in str(error):
            raise
        print(json.dumps({"error": "out of memory (allocation failed)"}), flush=True)
        sys.exit(3)
    np.save(spec["output"], kernel)
    middle = len(times) // 2
    order = sorted(range(len(times)), key=times.__getitem__)
    result = {
        "seconds": statistics.median(times),
        "cpu_seconds": cpu_times[order[middle]],
        "phases": phase_times[order[middle]],
        "baseline_bytes": baseline,
        "peak_bytes": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status_kib("VmHWM") * 1024
        ),
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    print(json.dumps(result), flush=True)


# -- the parent: children under a memory watch -------------------------------------------------


@dataclass
class Run:
    method: str
    n: int
    seconds: float | None = None  # None: did not complete
    peak_gb: float | None = None
    baseline_gb: float | None = None
    status: str = ""
    kernel: np.ndarray | None = None
    phases: dict | None = None
    params: int | None = None
    cpu_seconds: float | None = None
    scaled_from: int | None = None  # the loop: measured on this many examples


class Runner:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir

    def run(self, case: Case, inputs: Path, method: str, n: int, *, timeout: float | None) -> Run:
        tag = f"{case.model}-{case.kind}-{method}-{n}"
        spec = {
            "model": case.model,
            "input_shape": list(case.input_shape),
            "num_classes": 10,
            "kind": case.kind,
            "method": method,
            "n": n,
            "inputs": str(inputs),
            "output": str(self.workdir / f"{tag}.npy"),
            "device": self.args.device,
            "repeats": self.args.repeats,
            "budget": None if self.args.budget_gb is None else int(self.args.budget_gb * 2**30),
        }
        print(f"  running {LABELS[method]}, N = {n} ...", end="", flush=True, file=sys.stderr)
        with open(self.workdir / f"{tag}.out", "w+") as out, open(self.workdir / f"{tag}.err", "w+") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)], stdout=out, stderr=err
            )
            # the machine is shared: never let a child take the last free GiB (the OOM killer's pick)
            limit = min(self.args.memory_limit_gb, _status_kib("MemAvailable", "meminfo") / 2**20 - 1.0)
            peak, verdict = 0, None
            while proc.poll() is None:
                rss = _status_kib("VmRSS", proc.pid) * 1024
                peak = max(peak, rss)
                elapsed = time.perf_counter() - start
                if rss > limit * 2**30:
                    verdict = f"over the {limit:.3g} GB limit (killed after {elapsed:.0f} s)"
                elif timeout is not None and elapsed > timeout:
                    verdict = f"over the {timeout / 60:g} min time limit (killed)"
                if verdict:
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            lines, errors = out.read().strip().splitlines(), err.read().strip().splitlines()
        print(f" {elapsed:.0f} s", file=sys.stderr, flush=True)
        run = Run(method, n, peak_gb=peak / 2**30)
        if verdict:
            run.status = verdict
        elif proc.returncode == -9:
            run.status = f"out of memory (killed after {elapsed:.0f} s)"
        elif lines and lines[-1].startswith("{") and "error" in json.loads(lines[-1]):
            run.status = json.loads(lines[-1])["error"]
        elif proc.returncode != 0 or not lines:
            run.status = f"failed (exit {proc.returncode}): {errors[-1] if errors else 'no output'}"
        else:
            result = json.loads(lines[-1])
            run.seconds, run.phases, run.params = result["seconds"], result["phases"], result["params"]
            run.cpu_seconds = result["cpu_seconds"]
            run.peak_gb, run.baseline_gb = result["peak_bytes"] / 2**30, result["baseline_bytes"] / 2**30
            run.kernel = np.load(spec["output"])
        return run


def _inputs(case: Case, args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    n = case.n
    if case.data == "mnist":
        x, _, _, _, source = load_mnist(args.mnist, n, 10)
    elif args.cifar.exists():
        x = np.load(args.cifar)["x_train"][:n].astype(np.float32) / 255.0
        source = f"CIFAR-10 images from {args.cifar}"
    else:
        x = np.random.default_rng(0).uniform(0, 1, size=(n, *case.input_shape)).astype(np.float32)
        source = "synthetic uniform 3x32x32 images"
    if x.shape[0] < n:
        raise SystemExit(f"only {x.shape[0]} images available for {case.title}, N = {n} wanted")
    path = workdir / f"{case.model}-{n}-inputs.npy"
    np.save(path, np.ascontiguousarray(x[:n], dtype=np.float32))
    return path, source


def _rel_diff(kernel: np.ndarray, reference: np.ndarray) -> float:
    block = reference[tuple(slice(0, s) for s in kernel.shape)]
    return float(np.max(np.abs(kernel - block)) / np.max(np.abs(block)))


def _scaled_loop(loop: Run, n: int) -> Run:
    """The loop's time at ``n`` from its measurement at ``loop.n``: gradients ~ n, Gram ~ n^2."""
    factor = n / loop.n
    seconds = None
    if loop.seconds is not None and loop.phases is not None:
        seconds = loop.phases["gradients"] * factor + loop.phases["gram"] * factor**2
    return Run(LOOP, n, seconds, loop.peak_gb, loop.baseline_gb, loop.status, loop.kernel, scaled_from=loop.n)


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_case(case: Case, args: argparse.Namespace, runner: Runner, workdir: Path) -> None:
    inputs, source = _inputs(case, args, workdir)
    print(f"\n== {case.label} {case.title}, {case.kind} kernel, C = 10, N = {case.n} ({args.device}) ==", flush=True)
    print(f"data: {source}", flush=True)
    timeout = args.child_timeout_min * 60
    ours = {case.n: runner.run(case, inputs, OURS, case.n, timeout=None)}
    runs = [ours[case.n]]
    for method in TUTORIAL:
        runs.append(runner.run(case, inputs, method, case.n, timeout=timeout))
    loop = runner.run(case, inputs, LOOP, min(case.loop_n, case.n), timeout=timeout)
    runs.append(_scaled_loop(loop, case.n))
    failed = [m for m in TUTORIAL if not any(r.method == m and r.seconds is not None for r in runs)]
    first = True
    for n in case.smaller:
        if not failed or n >= case.n:
            continue
        todo = list(TUTORIAL) if first else failed
        first = False
        ours[n] = runner.run(case, inputs, OURS, n, timeout=None)
        runs.append(ours[n])
        runs += [runner.run(case, inputs, m, n, timeout=timeout) for m in todo]
        runs.append(_scaled_loop(loop, n))
        failed = [m for m in failed if not any(r.method == m and r.n == n and r.seconds is not None for r in runs)]

    params = next((r.params for r in runs if r.params), None)
    if params:
        jac_gb = case.n * 10 * params * 4 / 2**30
        print(
            f"{params:,} parameters; one Jacobian J(X) of the N = {case.n} inputs is {jac_gb:.1f} GB in float32 "
            f"(the tutorial's contraction holds two, for x1 and x2)"
        )
    if ours[case.n].baseline_gb is not None:
        print(f"peak memory includes the child's baseline (torch + model): {ours[case.n].baseline_gb:.2f} GB")
    memory = "peak GPU GB" if args.device == "cuda" else "peak RSS GB"
    print(f"{'method':32s} {'N':>4s} {'seconds':>9s} {memory:>12s}  max rel. diff to ours / status")
    for run in runs:
        reference = ours.get(run.n)
        if run.seconds is None:
            note = run.status
        elif run.method == OURS:
            note = "(reference)"
        elif reference is None or reference.kernel is None or run.kernel is None:
            note = "ours did not complete at this N"
        else:
            note = f"{_rel_diff(run.kernel, reference.kernel):.1e}"
        label = LABELS[run.method]
        if run.scaled_from is not None:
            label = f"{label} (n={run.scaled_from})"
            if run.seconds is not None:
                note += f"; time scaled from n = {run.scaled_from}, memory at n"
        seconds = "-" if run.seconds is None else f"{run.seconds:.1f}"
        print(f"{label:32s} {run.n:4d} {seconds:>9s} {_gb(run.peak_gb):>12s}  {note}")
    print(f"ours' peak memory at N = {case.n}: {_gb(ours[case.n].peak_gb)} GB ({memory.split()[1]})")
    for n, run in ours.items():
        if run.seconds is not None and run.phases and run.phases.get("contractions"):
            p = run.phases
            parts = p["jacobians"] + p["factors"] + p["contraction"]
            print(
                f"ours at N = {n}: {p['jacobian_calls']:.0f} vmap(jacrev) sub-batches of parameter groups "
                f"{p['jacobians']:.1f} s, structured layers' factors {p['factors']:.1f} s, "
                f"{p['contractions']:.0f} contractions {p['contraction']:.1f} s, other {run.seconds - parts:.1f} s"
            )

    # the goal: at the largest N where ours and a tutorial method both completed
    for n in (case.n, *case.smaller):
        ran = [r for r in runs if r.n == n and r.method in TUTORIAL and r.seconds is not None]
        if n in ours and ours[n].seconds is not None and ran:
            fastest = min(ran, key=lambda r: r.seconds or 0.0)
            ratio = (fastest.seconds or 0.0) / (ours[n].seconds or 1.0)
            where = "" if n == case.n else f" (at N = {case.n} no tutorial method completed)"
            shown, met = against_goal(ratio, GOAL_TUTORIAL_RATIO, at_most=False, digits=2)
            print(
                f"{case.label} tutorial/ours at N = {n}, the faster tutorial method "
                f"({LABELS[fastest.method].split(': ')[1]}: {fastest.seconds:.1f} s vs ours "
                f"{ours[n].seconds:.1f} s) = {shown}   goal >= {GOAL_TUTORIAL_RATIO:g}: {met}{where}"
            )
            break
    else:
        print(f"{case.label} no N where ours and a tutorial method both completed: no ratio")


def _split(run: Run) -> str:
    """Where a run of ours spent its time, and its CPU time (all threads; on shared cores the wall
    time depends on the load, the CPU time much less)."""
    cpu = f"CPU {run.cpu_seconds:.0f} s ({100 * (run.cpu_seconds or 0) / (run.seconds or 1):.0f}% of one core)"
    p = run.phases or {}
    if not p.get("contractions"):
        return cpu
    return (
        f"{cpu}; {p['jacobian_calls']:.0f} vmap(jacrev) sub-batches {p['jacobians']:.0f} s, structured layers' factors "
        f"{p['factors']:.0f} s, {p['contractions']:.0f} contractions {p['contraction']:.0f} s"
    )


def run_resnet_kinds(args: argparse.Namespace, runner: Runner, workdir: Path) -> None:
    """[3]: ours alone on ResNet-18, one child per POINTS:KIND of --resnet-kinds."""
    cases = [(int(points), kind) for points, kind in (item.split(":", 1) for item in args.resnet_kinds.split(","))]
    inputs, source = _inputs(replace(RESNET_KINDS, n=max(points for points, _ in cases)), args, workdir)
    print(f"\n== {RESNET_KINDS.label} {RESNET_KINDS.title}, ours only, by kernel kind ({args.device}) ==")
    print(f"data: {source}; allocator: {ALLOCATOR}", flush=True)
    seconds: dict[tuple[int, str], float] = {}
    for points, kind in cases:
        run = runner.run(replace(RESNET_KINDS, kind=kind, n=points), inputs, OURS, points, timeout=None)
        head = f"{RESNET_KINDS.label} N = {points:>4}, {kind:>14}:"
        if run.seconds is None:
            print(f"{head} {run.status} (peak seen {_gb(run.peak_gb)} GB)   goal <= {GOAL_RESNET_GB:g} GB: NOT met")
            continue
        seconds[(points, kind)] = run.seconds
        full = seconds.get((points, "full"))
        ratio = f", {run.seconds / full:.2f} of full" if full and kind != "full" else ""
        shown, met = against_goal(run.peak_gb or 0.0, GOAL_RESNET_GB, at_most=True, digits=2)
        memory = f"peak memory {shown} GB   goal <= {GOAL_RESNET_GB:g} GB: {met}"
        print(f"{head} {run.seconds:.0f} s{ratio}, {memory}", flush=True)
        print(f"{' ' * len(head)} {_split(run)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST)
    parser.add_argument("--cifar", type=Path, default=SHARED_CIFAR)
    parser.add_argument("--cases", default="mnist,resnet", help="comma-separated: mnist, resnet (or none)")
    parser.add_argument("--n-mnist", type=int, default=CASES["mnist"].n)
    parser.add_argument("--n-resnet", type=int, default=CASES["resnet"].n)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per child (median); slow, so 1")
    parser.add_argument("--memory-limit-gb", type=float, default=16.0, help="kill a child above this resident size")
    parser.add_argument("--child-timeout-min", type=float, default=30.0, help="kill a tutorial/loop child after")
    parser.add_argument("--budget-gb", type=float, default=None, help="ours' memory_budget (default: its own)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--resnet-kinds", default="", help="also [3]: ours alone on ResNet-18, POINTS:KIND,...")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    cases = {"mnist": args.n_mnist, "resnet": args.n_resnet}
    wanted = [name for name in args.cases.split(",") if name and name != "none"]
    unknown = set(wanted) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {sorted(CASES)}")
    with tempfile.TemporaryDirectory(prefix="entk_speed_") as tmp:
        workdir = Path(tmp)
        runner = Runner(args, workdir)
        for name in wanted:
            run_case(replace(CASES[name], n=cases[name]), args, runner, workdir)
        if args.resnet_kinds:
            run_resnet_kinds(args, runner, workdir)


if __name__ == "__main__":
    main()
