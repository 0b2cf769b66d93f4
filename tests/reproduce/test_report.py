"""The reproduction report: findings.json, report.md and the self-contained report.html."""

from __future__ import annotations

import json
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

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


def parse(text: str) -> Checker:
    checker = Checker()
    checker.feed(text)
    checker.close()
    assert checker.stack == [], f"unclosed tags {checker.stack}"
    return checker


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
