"""The reproduction report, seventh audit: each test here failed on a plausible bug of
``reproduce.report`` that the earlier tests let pass. A report may be written from records that
came with a folder someone handed over (the findings of an earlier report are kept as they stand
in its findings.json), so every text of a finding must reach report.html as text (no tag, no
attribute, no ``javascript:`` link) and report.md on its own line (no heading, tag or table cell
of its own), and no figure outside the report's folder is read, embedded or linked. Expected
values are written out by hand; the HTML is read back with ``html.parser``."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_report import Checker, fed, finding, make_report, parse, sections, tiny_png

from ntkrobust.reproduce import report as report_module
from ntkrobust.reproduce.report import render_html, render_markdown, summary_table_markdown, write_report

# a text that is a tag, an attribute and a heading wherever it is not escaped
EVIL = 'x" onerror="alert(1)" <img src=y onerror=alert(2)> <!-- c </b> <?p\n## injected'
# what report.md makes of it: one line, each "<" before a letter, "/", "!" or "?" escaped
EVIL_MD = 'x" onerror="alert(1)" \\<img src=y onerror=alert(2)> \\<!-- c \\</b> \\<?p ## injected'
MD_TAGS = ("<details>", "<summary>", "</summary>", "</details>")  # the only tags report.md writes itself


class Tags(Checker):
    """``Checker`` that also keeps every start tag with its attributes, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        super().handle_starttag(tag, attrs)
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def read_html(text: str) -> Tags:
    return fed(Tags(), text)


def unescaped_tags(md: str) -> list[str]:
    """What follows each ``<`` of report.md, outside its fenced code blocks, that no ``\\`` escapes
    and that a renderer could take for a tag, comment or processing instruction, less the tags
    report.md writes itself."""
    prose, fence = [], ""
    for line in md.splitlines():
        opening = re.fullmatch(r"\s*(`{3,})\w*", line)
        if fence:
            fence = "" if line.strip() == fence else fence
        elif opening:
            fence = opening.group(1)
        else:
            prose.append(line)
    text = "\n".join(prose)
    found = [text[m.start() : m.start() + 12] for m in re.finditer(r"(?<!\\)<[A-Za-z/!?]", text)]
    return [f for f in found if not f.startswith(MD_TAGS)]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "report"
    (folder / "steps" / "a").mkdir(parents=True)
    (folder / "steps" / "a" / "fig.png").write_bytes(tiny_png())
    return folder


def handed_over(out: Path) -> dict[str, Any]:
    """A finding whose every text is EVIL, with figures that exist, are missing, or are no image."""
    (out / "steps" / "a" / "<i>odd.png").write_bytes(tiny_png())
    (out / "steps" / "a" / "fig.pdf").write_bytes(b"%PDF-1.4")
    figures = [
        {"path": "steps/a/<i>odd.png", "caption": EVIL},
        {"path": f"steps/{EVIL}.png", "caption": EVIL},
        {"path": "steps/a/fig.pdf", "caption": EVIL},
    ]
    steps = [{"name": EVIL, "study": EVIL, "config": {"s": EVIL}, "seconds": 1.0, "reused": False,
              "warnings": [EVIL]}]  # fmt: skip
    texts = ("paper", "paper_title", "reference", "claim", "paper_number", "measured", "rule")
    return finding("tk-a", "agrees", figures, steps=steps, numbers={"s": EVIL}, **dict.fromkeys(texts, EVIL))


def test_html_shows_every_text_of_a_handed_over_finding_as_text(out: Path) -> None:
    """Every text of a finding (paper, claim, numbers, measured, rule, step names and studies,
    warnings, captions, figure paths) reaches report.html escaped: no ``img`` but the embedded
    figure, no attribute a page would run, and each text readable as it was."""
    page = read_html(render_html(make_report([handed_over(out)], out), out))
    assert {tag for tag, _ in page.elements} <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "table", "thead", "tbody", "tr",
        "th", "td", "a", "section", "b", "code", "span", "div", "ul", "li", "details", "summary", "pre", "figure",
        "img", "figcaption",
    }  # fmt: skip
    names = {name for _, attrs in page.elements for name in attrs}
    assert names <= {"lang", "charset", "name", "content", "class", "id", "href", "src", "alt"}
    images = [attrs for tag, attrs in page.elements if tag == "img"]
    assert len(images) == 1 and str(images[0]["src"]).startswith("data:image/png;base64,")
    assert images[0]["alt"] == EVIL
    text = "".join(page.text)
    # summary: paper and reference, claim, number, measured; section: paper title and reference,
    # claim, number, measured, rule; warning: name, text; step: name, study; figures: 3 captions and
    # the missing one's path
    assert text.count(EVIL) == 5 + 6 + 2 + 2 + 4
    assert "(figure missing: steps/" + EVIL + ".png) " + EVIL in text
    assert "(figure not embedded, not PNG/SVG/JPEG: steps/a/fig.pdf) " + EVIL in text
    assert "· steps/a/<i>odd.png" in text  # the link's words, the path as it is
    assert [h for h in page.hrefs if not h.startswith("#")] == ["steps/a/%3Ci%3Eodd.png"]
    assert f"(study {EVIL}, 1.0 s, run)" in text
    assert json.dumps({"s": EVIL}, indent=2) in text  # numbers and config in their <pre>


def test_a_recipe_name_with_markup_is_text_in_the_summary_and_its_heading(out: Path) -> None:
    """The recipe name is written in the summary's link and the section heading: escaped in both,
    its anchor made of letters, digits and ``-`` only."""
    page = read_html(render_html(make_report([finding("<b>tk</b>", "agrees")], out), out))
    plain = read_html(render_html(make_report([finding("tk", "agrees")], out), out))
    assert [tag for tag, _ in page.elements] == [tag for tag, _ in plain.elements]
    assert "".join(page.text).count("<b>tk</b>") == 2
    assert page.ids == {"btkb"} and "#btkb" in page.hrefs


def test_the_target_is_text_in_the_title_and_heading(out: Path) -> None:
    """The target (recipe names) is escaped in ``<title>`` and ``<h1>``."""
    report = make_report([finding("tk-a", "agrees")], out)
    report["reproduction"]["target"] = "<i>tk</i> & more"
    html_text = render_html(report, out)
    assert "<title>ntkrobust reproduction: &lt;i&gt;tk&lt;/i&gt; &amp; more at scale smoke</title>" in html_text
    assert "<h1>ntkrobust reproduction: &lt;i&gt;tk&lt;/i&gt; &amp; more at scale smoke</h1>" in html_text
    assert "i" not in {tag for tag, _ in read_html(html_text).elements}


def test_a_folder_named_like_a_javascript_link_gives_a_relative_link(out: Path) -> None:
    """A figure under a folder named ``javascript:alert(1)`` is linked percent-encoded, a relative
    path; written as it is, the caption's link would run script when clicked."""
    folder = out / "steps" / "javascript:alert(1)"
    folder.mkdir()
    (folder / "fig.png").write_bytes(tiny_png())
    figures = [{"path": "steps/javascript:alert(1)/fig.png", "caption": "c"}]
    page = parse(render_html(make_report([finding("tk-a", "agrees", figures)], out), out))
    assert [h for h in page.hrefs if not h.startswith("#")] == ["steps/javascript%3Aalert%281%29/fig.png"]


def test_markdown_keeps_every_text_of_a_handed_over_finding_on_its_line(out: Path) -> None:
    """In report.md each text of the finding is one line with its ``<`` escaped (an HTML comment
    ``<!--`` would hide the rest of the page): the only headings are the report's own, the only
    tags ``<details>`` and ``<summary>``, and each field reads as written by hand below."""
    md = render_markdown(make_report([handed_over(out)], out), out)
    assert [line for line in md.splitlines() if line.startswith("#")] == [
        "# ntkrobust reproduction: tk at scale smoke", "## Summary", "## tk-a",
    ]  # fmt: skip
    assert unescaped_tags(md) == []
    lines = sections(md, "## ")["tk-a"].split("\n")
    assert lines[:12] == [
        "tk-a", "", f"*{EVIL_MD}, {EVIL_MD}*", "", f"**Claim.** {EVIL_MD}", "", f"**Paper's number.** {EVIL_MD}", "",
        f"**Measured here.** {EVIL_MD}", "", f"**Verdict: ✓ agrees** (rule: {EVIL_MD})", "",
    ]  # fmt: skip
    assert f"- {EVIL_MD}: {EVIL_MD}" in lines  # the step's warning
    assert f"- **{EVIL_MD}** (study {EVIL_MD}, 1.0 s, run)" in lines
    assert f"*(figure missing: steps/{EVIL_MD}.png)* {EVIL_MD}" in lines
    assert f"*{EVIL_MD}*" in lines  # the embedded figure's caption below it
    assert md.count("<details>") == md.count("</details>") == 2  # numbers, steps


def test_markdown_figure_links_and_captions(out: Path) -> None:
    """An image's alt text escapes ``[`` and ``]`` and its path is percent-encoded (a space or a
    parenthesis would end the link); a figure without caption gets no caption line; a folder is no
    figure (missing in both files, not an error)."""
    folder = out / "steps" / "a b"
    folder.mkdir()
    (folder / "fig (1).png").write_bytes(tiny_png())
    figures = [
        {"path": "steps/a b/fig (1).png", "caption": "x ] [y"},
        {"path": "steps/a/fig.png"},
        {"path": "steps", "caption": "a folder"},
        {"path": "steps/a.png", "caption": "a folder named .png"},
    ]
    (out / "steps" / "a.png").mkdir()
    report = make_report([finding("tk-a", "agrees", figures)], out)
    lines = sections(render_markdown(report, out), "## ")["tk-a"].split("\n")
    start = lines.index("![x \\] \\[y](steps/a%20b/fig%20%281%29.png)")
    assert lines[start : start + 10] == [
        "![x \\] \\[y](steps/a%20b/fig%20%281%29.png)", "", "*x ] [y*", "",
        "![—](steps/a/fig.png)", "",
        "*(figure missing: steps)* a folder", "",
        "*(figure missing: steps/a.png)* a folder named .png", "",
    ]  # fmt: skip
    html_text = render_html(report, out)
    assert '<p class="missing">(figure missing: steps) a folder</p>' in html_text
    assert '<p class="missing">(figure missing: steps/a.png) a folder named .png</p>' in html_text


def test_only_png_svg_and_jpeg_are_embedded_whatever_the_case_of_the_suffix(out: Path) -> None:
    """``FIG.PNG`` is a PNG (embedded as one); a PDF is linked from nowhere and not embedded."""
    (out / "steps" / "a" / "FIG.PNG").write_bytes(tiny_png())
    (out / "steps" / "a" / "fig.pdf").write_bytes(b"%PDF-1.4")
    figures = [{"path": "steps/a/FIG.PNG", "caption": "upper"}, {"path": "steps/a/fig.pdf", "caption": "pdf"}]
    html_text = render_html(make_report([finding("tk-a", "agrees", figures)], out), out)
    page = parse(html_text)
    assert page.srcs == ["data:image/png;base64," + base64.b64encode(tiny_png()).decode("ascii")]
    assert '<p class="missing">(figure not embedded, not PNG/SVG/JPEG: steps/a/fig.pdf) pdf</p>' in html_text


def test_a_figure_outside_the_report_folder_is_neither_read_nor_linked(out: Path) -> None:
    """A findings.json handed over with a folder can name any file as a figure: one at an absolute
    path or one that climbs out with ``..`` is said to be outside, never embedded into report.html
    (which would carry that file to whoever gets the page) nor linked from either report."""
    private = out.parent / "private.png"
    private.write_bytes(tiny_png(3, 1))
    (out.parent / "private <b>.png").write_bytes(tiny_png(3, 1))
    paths = ["../private.png", str(private), "steps/../../private.png", "../private <b>.png"]
    figures = [{"path": p, "caption": f"c{i} <i>"} for i, p in enumerate(paths)]
    report = make_report([finding("tk-a", "agrees", figures)], out)
    html_text = render_html(report, out)
    page = parse(html_text)
    assert page.srcs == [] and [h for h in page.hrefs if not h.startswith("#")] == []
    assert base64.b64encode(tiny_png(3, 1)).decode("ascii")[8:40] not in html_text
    for i, path in enumerate(paths):
        shown = path.replace("<", "&lt;").replace(">", "&gt;")
        assert (
            f'<p class="missing">(figure outside the report\'s folder, not shown: {shown}) c{i} &lt;i&gt;</p>'
            in html_text
        )
    lines = sections(render_markdown(report, out), "## ")["tk-a"].split("\n")
    assert [line for line in lines if "private" in line] == [
        f"*(figure outside the report's folder, not shown: {path.replace('<', chr(92) + '<')})* c{i} \\<i>"
        for i, path in enumerate(paths)
    ]
    # a ".." inside a name is no step up: the figure shows
    (out / "steps" / "a" / "x..y.png").write_bytes(tiny_png())
    inside = make_report([finding("tk-a", "agrees", [{"path": "steps/a/x..y.png", "caption": "c"}])], out)
    assert len(parse(render_html(inside, out)).srcs) == 1


def test_a_link_that_leads_out_of_the_report_folder_is_not_followed(out: Path) -> None:
    """A folder handed over may hold a symbolic link where a figure should be, or a step folder
    that is one: a figure it leads to outside the report's folder is neither embedded nor linked,
    a loop of links is no error, and a link that stays inside the folder shows its figure."""
    (out.parent / "private.png").write_bytes(tiny_png(3, 1))
    (out / "steps" / "a" / "out.png").symlink_to(out.parent / "private.png")
    (out / "steps" / "b").symlink_to(out.parent)  # a step folder that is a link out
    (out / "steps" / "a" / "loop.png").symlink_to(out / "steps" / "a" / "loop.png")
    (out / "steps" / "a" / "same.png").symlink_to(out / "steps" / "a" / "fig.png")
    paths = ["steps/a/out.png", "steps/b/private.png", "steps/a/loop.png"]
    figures = [{"path": p, "caption": f"c{i}"} for i, p in enumerate(paths)]
    figures.append({"path": "steps/a/same.png", "caption": "inside"})
    report = make_report([finding("tk-a", "agrees", figures)], out)
    html_text = render_html(report, out)
    page = parse(html_text)
    assert page.srcs == ["data:image/png;base64," + base64.b64encode(tiny_png()).decode("ascii")]
    assert base64.b64encode(tiny_png(3, 1)).decode("ascii")[8:40] not in html_text
    for i, path in enumerate(paths):
        assert f'<p class="missing">(figure outside the report\'s folder, not shown: {path}) c{i}</p>' in html_text
    md = render_markdown(report, out)
    assert [line for line in md.splitlines() if line.startswith("![")] == ["![inside](steps/a/same.png)"]
    for i, path in enumerate(paths):
        assert f"*(figure outside the report's folder, not shown: {path})* c{i}" in md


def test_empty_values_show_a_dash_in_both_reports(out: Path) -> None:
    """A paper's number and a measured text of None read as ``—`` in the table and the section
    of both files, never as the word None."""
    report = make_report([finding("tk-a", "agrees", paper_number=None, measured=None)], out)
    row = summary_table_markdown(report).splitlines()[2]
    assert row.endswith("| low-index features are less robust | — | — | ✓ **agrees** |")
    md = render_markdown(report, out)
    assert "**Paper's number.** —\n" in md and "**Measured here.** —\n" in md and "None" not in md
    html_text = render_html(report, out)
    assert "<p><b>Paper's number.</b> —</p>" in html_text and "<p><b>Measured here.</b> —</p>" in html_text
    assert "<td>—</td><td>—</td>" in html_text and "None" not in html_text


def test_a_pipe_in_a_recipe_name_stays_in_its_cell(out: Path) -> None:
    """The recipe's cell of the summary table escapes ``|``: every row has six cells."""
    table = summary_table_markdown(make_report([finding("tk|a", "agrees")], out), link_to=None)
    rows = [row.replace("\\|", "") for row in table.strip().splitlines()]
    assert [row.count("|") for row in rows] == [7, 7, 7]
    assert table.splitlines()[2].startswith("| tk\\|a | TK, fig. 2 |")


def test_anchors_are_github_slugs_numbered_on_repeats(out: Path) -> None:
    """Anchors as GitHub makes them from headings: lower case, punctuation but ``-`` and ``_``
    dropped, spaces as ``-``, repeats ``-1``, ``-2``, ``-3``; a name of punctuation only ``finding``."""
    names = ["TK Fig.2", "tk fig2", "tk-fig2", "tk-fig2", "!!!", "ε_x"]
    report = make_report([finding(name, "agrees") for name in names], out)
    slugs = ["tk-fig2", "tk-fig2-1", "tk-fig2-2", "tk-fig2-3", "finding", "ε_x"]
    links = [row.split("](", 1)[1].split(")", 1)[0] for row in summary_table_markdown(report).splitlines()[2:]]
    assert links == [f"#{slug}" for slug in slugs]
    assert re.findall(r'<section id="([^"]*)">', render_html(report, out)) == slugs


def test_numbers_of_numpy_and_paths_are_written_as_plain_json(out: Path) -> None:
    """A numpy array is its list, a numpy scalar its number and a path its text, in findings.json
    and in the numbers both reports show; a finding without numbers shows none."""
    numbers = {"a": np.array([1, 2]), "s": np.float64(0.5), "p": Path("x/y")}
    report = make_report([finding("tk-a", "agrees", numbers=numbers), finding("tk-b", "agrees", numbers={})], out)
    write_report(out, report)
    assert json.loads((out / "findings.json").read_text(encoding="utf-8"))["findings"][0]["numbers"] == {
        "a": [1, 2], "s": 0.5, "p": "x/y",
    }  # fmt: skip
    pretty = '{\n  "a": [\n    1,\n    2\n  ],\n  "s": 0.5,\n  "p": "x/y"\n}'
    md = sections((out / "report.md").read_text(encoding="utf-8"), "## ")
    assert f"<details><summary>numbers the check used</summary>\n\n```json\n{pretty}\n```\n\n</details>" in md["tk-a"]
    assert "numbers the check used" not in md["tk-b"]
    found = sections((out / "report.html").read_text(encoding="utf-8"), '<section id="')
    assert (
        f"<details><summary>numbers the check used</summary><pre>{pretty.replace(chr(34), '&quot;')}</pre>"
        in (found["tk-a"])
    )
    assert "numbers the check used" not in found["tk-b"]


def test_backticks_in_numbers_and_configs_get_a_longer_fence(out: Path) -> None:
    """A JSON text holding three backticks is fenced with four (three would end the block early)."""
    report = make_report([finding("tk-a", "agrees", numbers={"s": "```"})], out)
    report["findings"][0]["steps"][0]["config"] = {"s": "a ``` b"}
    md = render_markdown(report, out)
    assert '\n````json\n{\n  "s": "```"\n}\n````\n' in md
    assert '\n  ````json\n  {\n    "s": "a ``` b"\n  }\n  ````\n' in md
    assert md.count("<details>") == md.count("</details>") == 2


@pytest.mark.parametrize(
    ("rep", "seconds", "meta"),
    [
        (
            {"created": "", "finished": "yesterday", "machine": None, "versions": {"python": "3.11", "jax": None},
             "data_root": "/data/d&r", "steps_seconds": 0},
            [None, 2.5, 4.0],
            "run ? to yesterday · machine: GPU none · versions: python 3.11 · data: /data/d&r · this invocation "
            "6.5 s · the steps' own time 0.0 s (reused steps: when they ran)",
        ),
        (
            {"created": "2024-05-01T12:00:00+02:00", "machine": {"platform": "Linux", "cpus": 0, "gpu": "H100"},
             "seconds": 75.0},
            [1.0],
            "run 2024-05-01 12:00+02:00 to ? · machine: Linux, GPU H100 · this invocation 1 min 15 s",
        ),
    ],
)  # fmt: skip
def test_the_meta_line_of_a_sparse_record(out: Path, rep: dict[str, Any], seconds: list[Any], meta: str) -> None:
    """The meta line leaves out what the record lacks (no CPU count, a version not installed, no
    steps' time), says ``?`` for a time not given and the stamp as written when it is no ISO
    date, and without the invocation's seconds adds up the findings' (one not timed as 0)."""
    findings = [finding(f"tk-{i}", "agrees", seconds=s) for i, s in enumerate(seconds)]
    report = {"reproduction": {"target": "tk", "scale": "smoke", **rep}, "findings": findings}
    assert render_markdown(report, out).split("\n")[2] == meta
    html_meta = meta.replace("&", "&amp;").replace("'", "&#x27;")
    assert f'<p class="meta">{html_meta}</p>' in render_html(report, out)


def test_a_kept_finding_judged_at_no_iso_date_says_the_stamp_as_written(out: Path) -> None:
    """The date an earlier report judged a kept finding is shown as written when it is no ISO date."""
    report = make_report([finding("tk-a", "agrees", kept=True, judged="last week")], out)
    assert "(kept from the report of last week: its steps" in summary_table_markdown(report)


def test_warnings_of_none_are_no_warnings(out: Path) -> None:
    """A step record whose warnings are null warns of nothing: no "(steps warned)" mark."""
    report = make_report([finding("tk-a", "agrees")], out)
    report["findings"][0]["steps"][0]["warnings"] = None
    assert summary_table_markdown(report).splitlines()[2].endswith("| ✓ **agrees** |")
    assert "steps warned" not in render_html(report, out)


def test_write_report_makes_its_folder_and_writes_findings_json_readable(tmp_path: Path) -> None:
    """OUT is made when missing; findings.json keeps non-ASCII text as it is (``ε``, not ``\\u03b5``)
    and, like each file, ends with a newline."""
    out = tmp_path / "new" / "folder"
    write_report(out, make_report([finding("tk-a", "agrees", claim="ε = 0.3")], out))
    text = (out / "findings.json").read_text(encoding="utf-8")
    assert '"claim": "ε = 0.3"' in text
    assert all((out / name).read_text(encoding="utf-8").endswith("}\n" if name.endswith("json") else "\n")
               for name in ("findings.json", "report.md", "report.html"))  # fmt: skip


def test_figures_resolve_against_the_folder_written_to(tmp_path: Path) -> None:
    """write_report finds the figures in the folder it writes to, even when the record names
    another ``out`` (a result saved elsewhere); render_markdown without a folder uses the record's."""
    here, there = tmp_path / "here", tmp_path / "there"
    for folder in (here, there):
        (folder / "steps").mkdir(parents=True)
    (here / "steps" / "h.png").write_bytes(tiny_png())
    (there / "steps" / "t.png").write_bytes(tiny_png())
    figures = [{"path": "steps/h.png", "caption": "h"}, {"path": "steps/t.png", "caption": "t"}]
    report = make_report([finding("tk-a", "agrees", figures)], there)
    write_report(here, report)
    md = (here / "report.md").read_text(encoding="utf-8")
    assert "![h](steps/h.png)" in md and "*(figure missing: steps/t.png)* t" in md
    md = render_markdown(report)
    assert "![t](steps/t.png)" in md and "*(figure missing: steps/h.png)* h" in md


def test_each_file_is_synced_before_it_replaces_the_old_one_and_ctrl_c_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each temporary file is synced before it is moved over the old one (else a power cut can
    leave an empty file under the report's name); Ctrl-C while the second is synced leaves the
    first file new, the others as they were, and no temporary file."""
    write_report(tmp_path, make_report([finding("tk-a", "agrees")], tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def synced(fd: int) -> None:
        events.append("fsync")
        if events.count("fsync") == 2:
            raise KeyboardInterrupt
        fsync(fd)

    monkeypatch.setattr(report_module.os, "fsync", synced)
    monkeypatch.setattr(report_module.os, "replace", lambda a, b: (events.append("replace"), replace(a, b))[1])
    with pytest.raises(KeyboardInterrupt):
        write_report(tmp_path, make_report([finding("tk-a", "contradicts")], tmp_path))
    monkeypatch.undo()
    assert events == ["fsync", "replace", "fsync"]
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(after) == ["findings.json", "report.html", "report.md"]
    assert (after["report.md"], after["report.html"]) == (before["report.md"], before["report.html"])
    assert json.loads(after["findings.json"])["findings"][0]["verdict"] == "contradicts"
