"""The reproduction report: findings.json, report.md and the self-contained report.html."""

from __future__ import annotations

import json
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ntkrobust.reproduce.report import (
    render_html,
    render_markdown,
    summary_table_markdown,
    verdict_counts,
    write_report,
)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG, all red."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def finding(recipe: str, verdict: str, figures: list[dict[str, str]] | None = None, **extra: Any) -> dict[str, Any]:
    base = {
        "recipe": recipe,
        "paper": "TK",
        "paper_title": "Tsilivis & Kempe 2022",
        "reference": "fig. 2",
        "claim": "low-index features are less robust",
        "paper_number": None,
        "measured": "Spearman -0.81 over 10 features",
        "numbers": {"spearman": -0.81, "n": 10},
        "verdict": verdict,
        "rule": "Spearman(index, robustness) < 0",
        "figures": figures or [],
        "steps": [
            {"name": "mnist-features", "study": "features", "config": {"width": 512}, "seconds": 12.3, "reused": True},
            {"name": "mnist-train", "study": "train", "config": {"epochs": 2}, "seconds": 1.5, "reused": False},
        ],
        "seconds": 13.8,
    }
    return {**base, **extra}


def make_report(findings: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    return {
        "reproduction": {
            "target": "tk",
            "scale": "smoke",
            "data_root": None,
            "out": str(out),
            "created": "2024-05-01T12:00:00+00:00",
            "finished": "2024-05-01T12:03:10+00:00",
            "machine": {"platform": "Linux-6.1", "processor": "x86_64", "cpus": 2, "gpu": None},
            "versions": {"python": "3.11.4", "torch": "2.3.1", "jax": "0.4.38"},
            "seconds": 190.0,
        },
        "findings": findings,
    }


@pytest.fixture
def out(tmp_path: Path) -> Path:
    (tmp_path / "steps" / "a").mkdir(parents=True)
    (tmp_path / "steps" / "a" / "fig.png").write_bytes(tiny_png())
    return tmp_path


class Checker(HTMLParser):
    """Fails on unbalanced non-void tags; collects ids, links and image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if "href" in values:
            self.hrefs.append(str(values["href"]))
        if "src" in values:
            self.srcs.append(str(values["src"]))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID, f"end tag for void element <{tag}>"
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


CheckerT = TypeVar("CheckerT", bound=Checker)


def fed(checker: CheckerT, text: str) -> CheckerT:
    """``checker`` (a ``Checker`` or a subclass) having read ``text``, every tag closed."""
    checker.feed(text)
    checker.close()
    assert checker.stack == [], f"unclosed tags {checker.stack}"
    return checker


def parse(text: str) -> Checker:
    return fed(Checker(), text)


def test_writes_three_files_and_json_round_trips(out: Path) -> None:
    fig = [{"path": "steps/a/fig.png", "caption": "usefulness"}]
    findings = [finding("tk-a", "agrees", fig), finding("tk-b", "contradicts"), finding("tk-c", "agrees")]
    report = make_report(findings, out)
    paths = write_report(out, report)
    assert [p.name for p in paths] == ["findings.json", "report.md", "report.html"]
    assert all(p.is_file() and p.parent == out for p in paths)
    data = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    assert data["summary"] == {"agrees": 2, "contradicts": 1, "inconclusive": 0}
    assert {k: v for k, v in data.items() if k != "summary"} == report
    assert [f["recipe"] for f in data["findings"]] == ["tk-a", "tk-b", "tk-c"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# ntkrobust reproduction: tk at scale smoke\n")
    assert summary_table_markdown(report) in md
    assert "![usefulness](steps/a/fig.png)" in md
    assert "```json" in md and '"width": 512' in md


def test_no_temp_files_left(out: Path) -> None:
    write_report(out, make_report([finding("tk-a", "agrees")], out))
    write_report(out, make_report([finding("tk-a", "inconclusive")], out))  # overwrites in place
    assert sorted(p.name for p in out.iterdir()) == ["findings.json", "report.html", "report.md", "steps"]
    plain = out / "plain.txt"
    plain.write_text("x")  # the temporary file's permissions follow the umask, like a plain write
    assert {p.stat().st_mode & 0o777 for p in out.glob("*.*")} == {plain.stat().st_mode & 0o777}


def test_html_is_self_contained_and_balanced(out: Path) -> None:
    figures = [{"path": "steps/a/fig.png", "caption": "fc2 usefulness"}]
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="2" height="2"/>'
    (out / "steps" / "a" / "fig.svg").write_bytes(svg)
    figures.append({"path": "steps/a/fig.svg", "caption": "vector"})
    findings = [finding("tk-fig2", "agrees", figures), finding("loo-x", "inconclusive")]
    findings.append(finding("rat-y", "contradicts"))
    text = render_html(make_report(findings, out), out)
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    checker = parse(text)
    assert checker.srcs and all(src.startswith("data:image/") for src in checker.srcs)
    assert any(src.startswith("data:image/png;base64,") for src in checker.srcs)
    assert any(src.startswith("data:image/svg+xml;base64,") for src in checker.srcs)
    assert not [u for u in checker.hrefs + checker.srcs if u.startswith(("http://", "https://", "//"))]
    assert "http://" not in text and "https://" not in text
    assert not {"script", "link", "iframe"} & set(checker.tags)
    for name in ("tk-fig2", "loo-x", "rat-y"):
        assert name in checker.ids and f"#{name}" in checker.hrefs
    assert 'class="agrees"' in text and 'class="contradicts"' in text and 'class="inconclusive"' in text
    assert "<details><summary>config</summary><pre>" in text
    assert 'alt="fc2 usefulness"' in text
    # each caption links the figure's file (relative: beside the report, full size)
    assert [h for h in checker.hrefs if not h.startswith("#")] == ["steps/a/fig.png", "steps/a/fig.svg"]


def test_missing_figure_is_reported_not_fatal(out: Path) -> None:
    figures = [{"path": "steps/nowhere/gone.png", "caption": "lost"}]
    report = make_report([finding("tk-a", "agrees", figures)], out)
    paths = write_report(out, report)
    md, html_text = paths[1].read_text(encoding="utf-8"), paths[2].read_text(encoding="utf-8")
    assert "(figure missing: steps/nowhere/gone.png)" in md
    assert "(figure missing: steps/nowhere/gone.png)" in html_text
    assert parse(html_text).srcs == []


def test_special_characters_are_escaped(out: Path) -> None:
    nasty = finding(
        "tk-a",
        "agrees",
        claim="a <b> & c | d\nsecond line",
        measured="x < 0 | y & z\r\nmore",
        paper_number="1 | 2",
    )
    report = make_report([nasty, finding("tk-b", "contradicts")], out)
    html_text = render_html(report, out)
    parse(html_text)
    assert "a &lt;b&gt; &amp; c | d" in html_text and "<b> &" not in html_text
    assert "x &lt; 0 | y &amp; z" in html_text
    table = summary_table_markdown(report)
    rows = table.strip().splitlines()
    assert len(rows) == 2 + 2  # header, rule, one row per finding
    assert "a \\<b> & c \\| d second line" in rows[2]  # \\< : no renderer takes it for a tag
    assert "x < 0 \\| y & z more" in rows[2]
    unescaped = [row.replace("\\|", "") for row in rows]
    assert {row.count("|") for row in unescaped} == {7}
    assert summary_table_markdown(report) in render_markdown(report, out)


def test_summary_table_links() -> None:
    report = make_report([finding("tk-a", "agrees"), finding("tk-a", "agrees")], Path("."))
    table = summary_table_markdown(report)
    assert "[tk-a](#tk-a)" in table and "[tk-a](#tk-a-1)" in table
    assert "[tk-a](runs/x/report.md#tk-a)" in summary_table_markdown(report, link_to="runs/x/report.md")
    assert "](" not in summary_table_markdown(report, link_to=None)


def test_verdict_counts() -> None:
    assert verdict_counts([]) == {"agrees": 0, "contradicts": 0, "inconclusive": 0}
    findings = [{"verdict": "agrees"}, {"verdict": "inconclusive"}, {"verdict": "agrees"}]
    assert verdict_counts(findings) == {"agrees": 2, "contradicts": 0, "inconclusive": 1}
    with pytest.raises(ValueError, match="maybe"):
        verdict_counts([{"recipe": "r", "verdict": "maybe"}])


# ---------------------------------------------------------------- every cell and line in its place


def distinct(recipe: str, verdict: str, n: int, **extra: Any) -> dict[str, Any]:
    """A finding whose every text differs from every other finding's."""
    return finding(
        recipe,
        verdict,
        claim=f"claim {n}",
        paper_number=f"number {n}",
        measured=f"measured {n}",
        rule=f"rule {n} < 0",
        numbers={"n": n},
        reference=f"fig. {n}",
        paper_title=f"Paper {n} title",
        **extra,
    )


def sections(text: str, start: str) -> dict[str, str]:
    """The text of each finding's section, by the recipe name that opens it (``start``: what
    precedes the name, "## " in report.md, '<section id="' in report.html)."""
    parts = text.split("\n" + start)[1:]
    return {part.split("\n", 1)[0].split('"', 1)[0]: part for part in parts}


def html_rows(text: str) -> list[list[str]]:
    """The summary table's rows as the cells' text."""

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append("".join(self.cell))
                self.cell = None

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell.append(data)

    parser = Rows()
    parser.feed(text.split("</table>", 1)[0])
    return parser.rows


def three(out: Path) -> dict[str, Any]:
    figures = [{"path": "steps/a/fig.png", "caption": "usefulness"}]
    return make_report(
        [distinct("tk-a", "agrees", 1, figures=figures), distinct("loo-b", "contradicts", 2),
         distinct("rat-c", "inconclusive", 3)],
        out,
    )  # fmt: skip


def test_summary_table_rows_cell_by_cell(out: Path) -> None:
    table = summary_table_markdown(three(out)).splitlines()
    assert table[0] == "| finding | paper & reference | claim | paper's number | measured here | verdict |"
    assert table[2:] == [
        "| [tk-a](#tk-a) | TK, fig. 1 | claim 1 | number 1 | measured 1 | ✓ **agrees** |",
        "| [loo-b](#loo-b) | TK, fig. 2 | claim 2 | number 2 | measured 2 | ✗ **contradicts** |",
        "| [rat-c](#rat-c) | TK, fig. 3 | claim 3 | number 3 | measured 3 | ? **inconclusive** |",
    ]
    rows = html_rows(render_html(three(out), out))
    assert rows[0] == ["finding", "paper & reference", "claim", "paper's number", "measured here", "verdict"]
    assert rows[1:] == [
        ["tk-a", "TK, fig. 1", "claim 1", "number 1", "measured 1", "✓ agrees"],
        ["loo-b", "TK, fig. 2", "claim 2", "number 2", "measured 2", "✗ contradicts"],
        ["rat-c", "TK, fig. 3", "claim 3", "number 3", "measured 3", "? inconclusive"],
    ]
    html_text = render_html(three(out), out)
    for verdict, mark in (("agrees", "✓"), ("contradicts", "✗"), ("inconclusive", "?")):
        assert f'<td class="{verdict}">{mark} {verdict}</td>' in html_text
        assert f'<span class="{verdict}">{mark} {verdict}</span>' in html_text


@pytest.mark.parametrize(
    ("verdicts", "text"),
    [
        ([], "0 findings: 0 agrees, 0 contradicts, 0 inconclusive."),
        (["inconclusive"], "1 finding: 0 agrees, 0 contradicts, 1 inconclusive."),
        (["agrees", "contradicts", "agrees", "inconclusive", "agrees", "contradicts"],
         "6 findings: 3 agrees, 2 contradicts, 1 inconclusive."),
    ],
)  # fmt: skip
def test_summary_counts_in_every_file(out: Path, verdicts: list[str], text: str) -> None:
    report = make_report([finding(f"tk-{i}", v) for i, v in enumerate(verdicts)], out)
    write_report(out, report)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.split("## Summary\n\n", 1)[1].split("\n\n", 2)[1].strip() == text  # right below the table
    assert f"<p>{text}</p>" in (out / "report.html").read_text(encoding="utf-8")
    summary = json.loads((out / "findings.json").read_text(encoding="utf-8"))["summary"]
    assert summary == {v: verdicts.count(v) for v in ("agrees", "contradicts", "inconclusive")}


def test_markdown_sections_line_by_line(out: Path) -> None:
    md = render_markdown(three(out), out)
    found = sections(md, "## ")
    assert list(found) == ["Summary", "tk-a", "loo-b", "rat-c"]
    lines = found["loo-b"].split("\n")
    assert lines[:12] == [
        "loo-b", "", "*Paper 2 title, fig. 2*", "", "**Claim.** claim 2", "", "**Paper's number.** number 2", "",
        "**Measured here.** measured 2", "", "**Verdict: ✗ contradicts** (rule: rule 2 < 0)", "",
    ]  # fmt: skip
    steps = found["loo-b"].split("<details><summary>2 steps, 13.8 s</summary>", 1)[1]
    assert "- **mnist-features** (study features, 12.3 s, reused)" in steps
    assert "- **mnist-train** (study train, 1.5 s, run)" in steps
    first, second = steps.split("- **mnist-train**")
    assert '"width": 512' in first and '"epochs": 2' in second  # each step's own config
    # the figure and its caption in the section of its own finding, and only there
    assert "![usefulness](steps/a/fig.png)\n\n*usefulness*\n" in found["tk-a"]
    assert "fig.png" not in found["loo-b"] + found["rat-c"]


def test_html_sections_line_by_line(out: Path) -> None:
    html_text = render_html(three(out), out)
    found = sections(html_text, '<section id="')
    assert list(found) == ["tk-a", "loo-b", "rat-c"]
    for n, (name, verdict, mark) in enumerate(
        (("tk-a", "agrees", "✓"), ("loo-b", "contradicts", "✗"), ("rat-c", "inconclusive", "?")), 1
    ):
        section = found[name]
        assert section.split("\n")[:7] == [
            f'{name}">',
            f"<h2>{name}</h2>",
            f'<p class="meta">Paper {n} title, fig. {n}</p>',
            f"<p><b>Claim.</b> claim {n}</p>",
            f"<p><b>Paper's number.</b> number {n}</p>",
            f"<p><b>Measured here.</b> measured {n}</p>",
            f'<p class="verdict"><b>Verdict:</b> <span class="{verdict}">{mark} {verdict}</span> (rule: <code>rule {n} '
            "&lt; 0</code>)</p>",
        ]
        assert "<h3>2 steps, 13.8 s</h3>" in section
        first, second = section.split("<li><b>mnist-train</b> (study train, 1.5 s, run)")
        assert "<li><b>mnist-features</b> (study features, 12.3 s, reused)" in first and "width" in first
        assert "epochs" in second and "width" not in second
        assert ("<figcaption>usefulness · " in section) == (name == "tk-a")
    figure = found["tk-a"].split("<figure>", 1)[1].split("</figure>", 1)[0]
    assert 'alt="usefulness"' in figure
    assert figure.endswith('<figcaption>usefulness · <a href="steps/a/fig.png">steps/a/fig.png</a></figcaption>')


def test_durations_and_the_meta_line(out: Path) -> None:
    report = make_report([finding("tk-a", "agrees")], out)
    report["reproduction"]["steps_seconds"] = 3725
    report["findings"][0]["steps"][0]["seconds"] = 125
    report["findings"][0]["steps"][1]["seconds"] = 59.94
    report["findings"][0]["seconds"] = 7384.0
    md = render_markdown(report, out)
    meta = (
        "run 2024-05-01 12:00+00:00 to 2024-05-01 12:03+00:00 · machine: Linux-6.1, x86_64, 2 CPUs, GPU none · "
        "versions: python 3.11.4, torch 2.3.1, jax 0.4.38 · this invocation 3 min 10 s · the steps' own time "
        "1 h 2 min (reused steps: when they ran)"
    )
    assert md.split("\n")[2] == meta
    assert f'<p class="meta">{meta.replace(chr(39), "&#x27;")}</p>' in render_html(report, out)
    assert "<details><summary>2 steps, 2 h 3 min</summary>" in md
    assert "(study features, 2 min 5 s, reused)" in md and "(study train, 59.9 s, run)" in md
    report["findings"][0]["steps"][1]["seconds"] = None
    assert "(study train, ?, run)" in render_markdown(report, out)


def test_kept_and_warned_findings_say_so_everywhere(out: Path) -> None:
    kept = finding("tk-a", "agrees", kept=True, judged="2024-04-30T09:15:00+00:00")
    warned = finding("tk-b", "contradicts")
    warned["steps"][1]["warnings"] = ["loss rose in epoch 2"]
    report = make_report([kept, warned, finding("tk-c", "agrees")], out)
    note = (
        "(kept from the report of 2024-04-30 09:15+00:00: its steps are not all finished under this version's "
        "configs; ntkrobust reproduce tk-a into this folder measures it again) Spearman -0.81 over 10 features"
    )
    rows = summary_table_markdown(report).splitlines()[2:]
    assert rows[0].endswith(f"| {note} | ✓ **agrees** (kept) |")
    assert rows[1].endswith("| Spearman -0.81 over 10 features | ✗ **contradicts** (steps warned) |")
    assert rows[2].endswith("| Spearman -0.81 over 10 features | ✓ **agrees** |")
    md = sections(render_markdown(report, out), "## ")
    assert f"**Measured here.** {note}\n" in md["tk-a"]
    assert "**Its steps warned** (the verdict rests on them):\n\n- mnist-train: loss rose in epoch 2\n" in md["tk-b"]
    assert "warned" not in md["tk-a"] + md["tk-c"]
    html_text = render_html(report, out)
    assert [row[-1] for row in html_rows(html_text)[1:]] == ["✓ agrees (kept)", "✗ contradicts (steps warned)",
                                                              "✓ agrees"]  # fmt: skip
    assert html_rows(html_text)[1][4] == note
    found = sections(html_text, '<section id="')
    assert f"<p><b>Measured here.</b> {note.replace(chr(39), '&#x27;')}</p>" in found["tk-a"]
    assert "<li><b>mnist-train</b>: loss rose in epoch 2</li>" in found["tk-b"]
    assert "warned" not in found["tk-a"] + found["tk-c"]


def test_a_smoke_report_says_its_verdicts_are_no_evidence(out):
    """A newcomer read a smoke report's plain "✓ agrees" as a finding (2026-12-06): the README says
    smoke only checks that recipes run, the report did not. Now both renderings say it under the
    title, and a cpu report does not."""
    report = make_report([finding("tk-a", "agrees")], out)
    caveat = "that check that every recipe runs; its verdicts say nothing about the papers"
    markdown, html = render_markdown(report), render_html(report, out)
    assert caveat in markdown and markdown.index(caveat) < markdown.index("## Summary")
    assert caveat in html and html.index(caveat) < html.index("<h2>Summary</h2>")
    report["reproduction"]["scale"] = "cpu"
    assert "Scale smoke" not in render_markdown(report) and "Scale smoke" not in render_html(report, out)
