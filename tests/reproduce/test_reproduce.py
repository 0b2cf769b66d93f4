"""``ntkrobust reproduce``: the whole smoke reproduction, its report, resuming, reuse and bad input."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ntkrobust import cli
from ntkrobust.reproduce import VERDICTS, all_recipes, select
from ntkrobust.reproduce._recipe import Context, step_key
from ntkrobust.reproduce.run import plan


def _reproduce(*args: str) -> int:
    return cli.main(["reproduce", *args, "--quiet"])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reproduce") / "smoke"
    assert _reproduce("all", "--scale", "smoke", "--out", str(out)) == 0
    return out


def _findings(out: Path) -> dict:
    return json.loads((out / "findings.json").read_text())


@pytest.mark.slow  # the whole smoke reproduction: 1.5-2.5 min
def test_every_finding_has_a_verdict(smoke: Path) -> None:
    report = _findings(smoke)
    assert [f["recipe"] for f in report["findings"]] == [r.name for r in all_recipes()]
    for finding in report["findings"]:
        assert finding["verdict"] in VERDICTS, finding["recipe"]
        assert finding["measured"] and finding["rule"] and finding["claim"]
        assert finding["steps"] and all(step["config"]["study"] for step in finding["steps"])
    assert sum(report["summary"].values()) == len(report["findings"])
    assert report["reproduction"]["scale"] == "smoke" and report["reproduction"]["versions"]["torch"]


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


@pytest.mark.slow  # the whole smoke reproduction: 1.5-2.5 min
def test_html_report_embeds_every_figure(smoke: Path) -> None:
    report = _findings(smoke)
    figures = [fig for f in report["findings"] for fig in f["figures"]]
    assert figures and all((smoke / fig["path"]).is_file() for fig in figures), "a recipe names a figure not drawn"
    parser = _Images()
    parser.feed((smoke / "report.html").read_text(encoding="utf-8"))
    assert len(parser.sources) == len(figures)
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)
    markdown = (smoke / "report.md").read_text(encoding="utf-8")
    assert all(f"[{r.name}]" in markdown for r in all_recipes())


@pytest.mark.slow  # the whole smoke reproduction: 1.5-2.5 min
def test_a_second_reproduction_reuses_every_step(smoke: Path) -> None:
    assert _reproduce("tk", "--scale", "smoke", "--out", str(smoke)) == 0
    steps = [step for f in _findings(smoke)["findings"] for step in f["steps"]]
    assert steps and all(step["reused"] for step in steps)


@pytest.mark.slow  # two partial smoke reproductions: 8-16 s
def test_an_interrupted_reproduction_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ntkrobust.studies import dynamics

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(dynamics, "run", interrupted)
        assert _reproduce("tk-fig6-kernel-growth", "--out", str(out)) == 130
    assert (out / "steps" / "mnist-standard.json").is_file() and not (out / "findings.json").exists()
    assert _reproduce("tk-fig6-kernel-growth", "--out", str(out)) == 0
    steps = {step["name"]: step["reused"] for step in _findings(out)["findings"][0]["steps"]}
    assert steps == {"mnist-standard": True, "mnist-pgd": True, "mnist-dynamics-standard-pgd": False}


def test_a_changed_or_edited_step_runs_again_or_says_what_to_delete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step whose key changed, or whose output was deleted or edited, runs again (a deleted output
    counted as finished, and every run of the command failed on the missing file; an edited one's
    numbers went into the report), and so does one whose folder a file or a link loop replaced (it
    ran, then failed with "Not a directory"); a record of an earlier version (no digest) edited into
    another shape, or a reproduction.json that is no object, is one line (tracebacks before).
    A check that fails on files as they finished is a bug of the recipe: its traceback stays."""
    import dataclasses
    import importlib

    reproduce_run = importlib.import_module("ntkrobust.reproduce.run")  # the package's `run` is a function
    out = tmp_path / "out"
    assert _reproduce("tk-fig2-features", "--out", str(out)) == 0

    def buggy(results: object) -> object:
        raise KeyError("a key the recipe misspelt")

    with monkeypatch.context() as patch:
        recipes = tuple(
            dataclasses.replace(r, check=buggy) if r.name == "tk-fig2-features" else r
            for r in reproduce_run.RECIPES["tk"]
        )
        patch.setitem(reproduce_run.RECIPES, "tk", recipes)
        with pytest.raises(KeyError, match="misspelt"):
            _reproduce("tk-fig2-features", "--out", str(out))
    record = out / "steps" / "mnist-features.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "key": "another config"}))
    assert _reproduce("tk-fig2-features", "--out", str(out)) == 0
    assert not _findings(out)["findings"][0]["steps"][0]["reused"]
    results = out / "steps" / "mnist-features" / "results.json"
    capsys.readouterr()
    # a rerun that may take hours is said even under --quiet (it was an info line, so silent)
    for damage, said in (
        (results.unlink, "its results.json is gone"),
        (lambda: record.write_text("{bad"), "its record mnist-features.json is unreadable"),
        (
            lambda: record.write_text(json.dumps({**json.loads(record.read_text()), "seconds": -1})),
            "its record mnist-features.json holds no time it took",
        ),
    ):
        damage()
        assert _reproduce("tk-fig2-features", "--out", str(out)) == 0
        assert f"mnist-features: {said}" in capsys.readouterr().err
        assert not _findings(out)["findings"][0]["steps"][0]["reused"] and results.is_file()
    step = out / "steps" / "mnist-features"
    for replace in (lambda: step.write_text("a file"), lambda: step.symlink_to(step.name)):  # "Not a directory"
        shutil.rmtree(step)
        replace()
        assert _reproduce("tk-fig2-features", "--out", str(out)) == 0
        assert step.is_dir() and not step.is_symlink() and results.is_file()
    # an edited results.json (valid, its numbers changed) runs again: its numbers reached the
    # report as measured before the record kept the file's digest
    measured = _findings(out)["findings"][0]["measured"]
    edited = json.loads(results.read_text())
    edited["architectures"]["fc2"]["spearman_index_robustness"] = 0.99
    results.write_text(json.dumps(edited))
    capsys.readouterr()
    assert cli.main(["reproduce", "tk-fig2-features", "--out", str(out)]) == 0
    assert "its results.json changed after the step finished: it runs again" in capsys.readouterr().err
    assert not _findings(out)["findings"][0]["steps"][0]["reused"]
    assert _findings(out)["findings"][0]["measured"] == measured and "0.99" not in measured
    # a record of an earlier version holds no digest: its files are read as they are
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "record_sha256"}))
    for path, text, said in (
        (results, '{"architectures": "x"}', "do not hold what it reads (TypeError"),
        (results, "{bad", "results.json: unreadable JSON (Expecting property name enclosed"),
        (out / "reproduction.json", "[1]", "reproduction.json is unreadable"),
    ):
        path.write_text(text)
        assert _reproduce("tk-fig2-features", "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


def test_the_key_is_the_resolved_config(tmp_path: Path) -> None:
    import dataclasses

    def keys(root: Path) -> dict[str, str]:
        ctx = Context("smoke", None, root / "steps")
        steps, _ = plan(select("tk-fig6-kernel-growth"), ctx)
        found: dict[str, str] = {}
        for name, step in steps.items():
            found[name] = step_key(step, ctx, [found[n] for n in step.needs])
        return found

    here, there = keys(tmp_path / "a"), keys(tmp_path / "b")
    assert here == there  # OUT's location is not part of a step's config
    ctx = Context("smoke", None, tmp_path / "steps")
    steps, _ = plan(select("tk-fig6-kernel-growth"), ctx)
    run = steps["mnist-standard"]
    longer = dataclasses.replace(run, settings=dataclasses.replace(run.settings, epochs=run.settings.epochs + 1))
    assert step_key(longer, ctx, []) != step_key(run, ctx, [])
    resumed = dataclasses.replace(run, settings=dataclasses.replace(run.settings, resume=True))
    assert step_key(resumed, ctx, []) == step_key(run, ctx, [])  # how it runs is not what it measures


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown recipe 'nope'"),
        (["tk-fig2"], "`reproduce --list` (did you mean tk-fig2-features?)"),  # a newcomer's shortening
        (["rat-fig1-threefol"], "(did you mean rat-fig1-threefold?)"),
        (["tk", "--scale", "huge"], "argument --scale: invalid choice: 'huge'"),
        (["tk", "--scale", "cpu"], "--scale cpu needs --data-root DIR holding mnist/t10k-images-idx3-ubyte.gz"),
        (["rat", "--scale", "cpu", "--data-root", "{empty}"], "reads mnist/t10k-images-idx3-ubyte.gz"),
        (["tk", "--scale", "cpu", "--data-root", "{missing}"], "is not a folder"),
        (["tk"], "reproduce needs TARGET and --out"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    args = [a.format(empty=empty, missing=tmp_path / "missing") for a in args]
    argv = ["reproduce", *args] + ([] if args == ["tk"] else ["--out", str(out)])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_another_reproductions_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "reproduction.json").write_text(json.dumps({"scale": "cpu", "data_root": "/data"}))
    assert _reproduce("tk", "--out", str(out)) == 2
    assert "holds a reproduction at scale cpu" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["reproduction.json"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    assert _reproduce("tk", "--out", str(tmp_path / "other")) == 2


def test_list_names_every_recipe_with_its_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["reproduce", "--list"]) == 0
    text = capsys.readouterr().out
    assert all(recipe.name in text for recipe in all_recipes())
    assert "all" in text and "GPU" in text


def test_a_second_target_adds_its_findings_to_the_folders_report(tmp_path: Path) -> None:
    """Reproducing another target into a folder replaced its report (the steps stayed): the
    report now keeps the earlier findings, judged again from their finished steps, or, when a
    step's config changed since, as the earlier report judged them, marked so (nothing reruns)."""
    out = tmp_path / "out"
    assert _reproduce("tk-fig2-features", "--out", str(out)) == 0
    first = _findings(out)["findings"][0]
    assert _reproduce("tk-fig4-two-layer", "--out", str(out)) == 0
    report = _findings(out)
    assert [f["recipe"] for f in report["findings"]] == ["tk-fig2-features", "tk-fig4-two-layer"]
    assert report["reproduction"]["target"] == "tk-fig2-features + tk-fig4-two-layer"
    again = report["findings"][0]
    assert again["steps"][0]["reused"] and again["measured"] == first["measured"] and "kept" not in again
    record = out / "steps" / "mnist-features.json"
    finished = json.loads(record.read_text())
    record.write_text(json.dumps({**finished, "key": "a config of another version"}))
    assert _reproduce("tk-fig4-two-layer", "--out", str(out)) == 0
    kept = _findings(out)["findings"][0]
    assert kept["kept"] and kept["measured"] == first["measured"] and kept["judged"]
    assert json.loads(record.read_text())["key"] == "a config of another version"  # not run again
    assert "(kept from the report of" in (out / "report.md").read_text(encoding="utf-8")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("agrees (kept)</td>") + html.count("contradicts (kept)</td>") == 1
    assert "—</td>" not in html  # a fresh verdict carries no mark (it carried a dash)
    # an earlier finding whose records no longer read stays as it was; the new target still reports
    record.write_text(json.dumps(finished))
    (out / "steps" / "mnist-features" / "results.json").write_text("{damaged")
    assert _reproduce("tk-fig4-two-layer", "--out", str(out)) == 0
    assert [f.get("kept", False) for f in _findings(out)["findings"]] == [True, False]


def test_a_steps_warnings_reach_the_report_and_stay_when_it_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verdict that rests on a step the study warned about (a net left at chance, a PGD that
    cannot reach ε) says so beside the verdict, also when a later invocation reuses the step."""
    from ntkrobust.studies import features

    real = features.run

    def warned(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        result.record.setdefault("warnings", []).append("a weak attack & <more>")
        return result

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(features, "run", warned)
        assert _reproduce("tk-fig2-features", "--out", str(out)) == 0
    for invocation in ("ran", "reused"):
        (step,) = _findings(out)["findings"][0]["steps"]
        assert step["reused"] == (invocation == "reused") and step["warnings"] == ["a weak attack & <more>"]
        markdown = (out / "report.md").read_text(encoding="utf-8")
        assert "**Its steps warned**" in markdown and "- mnist-features: a weak attack & \\<more>" in markdown
        assert "**agrees** (steps warned) |" in markdown or "**contradicts** (steps warned) |" in markdown
        html = (out / "report.html").read_text(encoding="utf-8")
        assert "<b>mnist-features</b>: a weak attack &amp; &lt;more&gt;</li>" in html
        assert _reproduce("tk-fig2-features", "--out", str(out)) == 0
