"""Write a reproduction's findings as JSON, Markdown and one self-contained HTML page.

``write_report(out, report)`` writes three files into OUT, each atomically (a temporary file in
OUT, then ``os.replace``), so a crash never leaves a half-written report behind:

- ``findings.json``: the input dict plus ``"summary"`` (the verdict counts), for machines;
- ``report.md``: summary table and one section per finding, figures as relative images, for
  reading next to the run's folder (e.g. on GitHub);
- ``report.html``: the same content as ONE file that opens offline: the style is inline, every
  figure is embedded as a base64 ``data:`` URI and nothing (script, font, stylesheet, image) is
  fetched from anywhere, so the page can be archived, mailed or opened on a machine without the
  run folder or a network and still shows everything.

A figure whose file is missing is reported as ``(figure missing: PATH)``, never an error. A figure
path that is absolute, climbs out of OUT (``..``) or leads out of it through a symbolic link (a
findings.json handed over with the folder can name any file) is neither read, embedded nor
linked: ``(figure outside the report's folder, not shown: PATH)``.
Standard library only.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ntkrobust._numbers import is_real

VERDICTS = ("agrees", "contradicts", "inconclusive")
_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_MARK = {"agrees": "✓", "contradicts": "✗", "inconclusive": "?"}
_COLUMNS = ("finding", "paper & reference", "claim", "paper's number", "measured here", "verdict")

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.5; color: #1f2328; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td:first-child { white-space: nowrap; }
.meta { color: #57606a; font-size: .92em; }
.agrees { background: #e6f4ea; color: #1a5e2d; font-weight: 600; white-space: nowrap; }
.contradicts { background: #fde8e8; color: #9b1c1c; font-weight: 600; white-space: nowrap; }
.inconclusive { background: #f4efe1; color: #6b5300; font-weight: 600; white-space: nowrap; }
p.verdict span { padding: .1em .45em; border-radius: 4px; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .9em; }
.missing { color: #9b1c1c; font-style: italic; }
.warned { background: #fff8c5; border: 1px solid #d4a72c; padding: .4em .8em; border-radius: 4px; }
.warned ul { margin: .3em 0; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: .85em; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
details { margin: .3em 0; } summary { cursor: pointer; color: #0969da; }
"""


def verdict_counts(findings: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many findings agree, contradict and are inconclusive (zero for absent verdicts)."""
    counts = dict.fromkeys(VERDICTS, 0)
    for finding in findings:
        verdict = finding.get("verdict")
        if verdict not in counts:
            raise ValueError(f"finding {finding.get('recipe')!r}: verdict {verdict!r} is not one of {VERDICTS}")
        counts[verdict] += 1
    return counts


def check_finding(finding: Any) -> None:
    """Raise ``ValueError`` (one line) where the report could not show ``finding``: a finding of
    findings.json kept from an earlier report is shown as it stands there, so this is checked
    before any compute, not found when the report is written after it."""
    if not isinstance(finding, Mapping):
        raise ValueError(f"a finding is {type(finding).__name__}, not an object")
    if finding.get("verdict") not in VERDICTS:
        raise ValueError(f"verdict {finding.get('verdict')!r} is not one of {VERDICTS}")
    for key in ("figures", "steps"):
        entries = finding.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(entry, Mapping) for entry in entries):
            raise ValueError(f"its {key} are not a list of objects")
    for what, record in [("it", finding)] + [(f"step {s.get('name')!r}", s) for s in finding.get("steps", [])]:
        seconds = record.get("seconds")
        if seconds is not None and not is_real(seconds):
            raise ValueError(f"{what} took {seconds!r} seconds, not a number")
        if not isinstance(record.get("warnings", []), (list, type(None))):
            raise ValueError(f"{what} has warnings {record.get('warnings')!r}, not a list")


def write_report(out: Path, report: Mapping[str, Any]) -> list[Path]:
    """Write OUT/findings.json, OUT/report.md and OUT/report.html from ``report``; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {**report, "summary": verdict_counts(report.get("findings", []))}
    texts = {
        "findings.json": json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable) + "\n",
        "report.md": render_markdown(report, out),
        "report.html": render_html(report, out),
    }
    for name, text in texts.items():
        _atomic_write(out / name, text)
    return [out / name for name in texts]


def summary_table_markdown(report: Mapping[str, Any], link_to: str | None = "") -> str:
    """The summary table alone, one row per finding.

    Recipe names link to ``link_to + "#anchor"`` (``""``: sections of the same document, as in
    report.md; a README passes the path of report.md); ``None`` leaves them unlinked.
    """
    findings = list(report.get("findings", []))
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for finding, anchor in zip(findings, _anchors(findings), strict=True):
        name = _md_cell(finding.get("recipe"))
        cells = [
            name if link_to is None else f"[{name}]({link_to}#{anchor})",
            _md_cell(_source(finding, short=True)),
            _md_cell(finding.get("claim")),
            _md_cell(finding.get("paper_number")),
            _md_cell(_measured(finding)),
            f"{_MARK.get(finding.get('verdict'), '')} **{_md_cell(finding.get('verdict'))}**{_verdict_marks(finding)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(report: Mapping[str, Any], out: Path | None = None) -> str:
    """report.md's text; figure paths are relative to ``out`` (default: the report's own ``out``)."""
    base = Path(out if out is not None else report.get("reproduction", {}).get("out", "."))
    findings = list(report.get("findings", []))
    caveat = _caveat(report)
    parts = [f"# ntkrobust reproduction: {_target(report)}", "", _meta_line(report), ""]
    parts += [f"**{caveat}**", ""] if caveat else []
    parts += ["## Summary", "", summary_table_markdown(report), _counts_text(findings), ""]
    for finding in findings:
        parts += _markdown_section(finding, base)
    return "\n".join(parts).rstrip() + "\n"


def render_html(report: Mapping[str, Any], out: Path) -> str:
    """report.html's text: one offline page, figures (resolved against ``out``) embedded."""
    base = Path(out)
    findings = list(report.get("findings", []))
    anchors = _anchors(findings)
    title = f"ntkrobust reproduction: {_target(report)}"
    caveat = _caveat(report)
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>",
        f'<h1>{_h(title)}</h1>\n<p class="meta">{_h(_meta_line(report))}</p>',
        f"<p><b>{_h(caveat)}</b></p>" if caveat else "",
        "<h2>Summary</h2>",
        _html_summary(findings, anchors),
        f"<p>{_h(_counts_text(findings))}</p>",
    ]
    parts += [_html_section(f, a, base) for f, a in zip(findings, anchors, strict=True)]
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _verdict_marks(finding: Mapping[str, Any]) -> str:
    """Beside the verdict in the summary: a finding kept from an earlier report, and one whose
    steps warned (the warnings stand in its section)."""
    return (" (kept)" if finding.get("kept") else "") + (" (steps warned)" if _step_warnings(finding) else "")


def _measured(finding: Mapping[str, Any]) -> str:
    """What was measured; a finding kept from an earlier report says when it was judged."""
    measured = str(finding.get("measured") or "")
    if not finding.get("kept"):
        return measured
    return (
        f"(kept from the report of {_when(finding.get('judged'))}: its steps are not all finished under this "
        f"version's configs; ntkrobust reproduce {finding.get('recipe')} into this folder measures it again) "
        f"{measured}"
    )


def _target(report: Mapping[str, Any]) -> str:
    rep = report.get("reproduction", {})
    return f"{rep.get('target', '?')} at scale {rep.get('scale', '?')}"


def _caveat(report: Mapping[str, Any]) -> str:
    """What a scale's verdicts are worth, where they are worth little: smoke's tiny runs check that
    every recipe runs, and a newcomer read its "agrees" as a finding."""
    if report.get("reproduction", {}).get("scale") == "smoke":
        return (
            "Scale smoke: tiny runs on scikit-learn's digits that check that every recipe runs; its verdicts "
            "say nothing about the papers' claims (--scale cpu or paper measures them)."
        )
    return ""


def _meta_line(report: Mapping[str, Any]) -> str:
    rep = report.get("reproduction", {})
    machine = rep.get("machine", {}) or {}
    cpus = f"{machine['cpus']} CPUs" if machine.get("cpus") else None
    gpu = f"GPU {machine.get('gpu') or 'none'}"
    hardware = ", ".join(str(x) for x in (machine.get("platform"), machine.get("processor"), cpus, gpu) if x)
    versions = ", ".join(f"{k} {v}" for k, v in (rep.get("versions", {}) or {}).items() if v)
    seconds = rep.get("seconds")
    if seconds is None:
        seconds = sum(f.get("seconds") or 0 for f in report.get("findings", []))
    items = [
        f"run {_when(rep.get('created'))} to {_when(rep.get('finished'))}",
        f"machine: {hardware}",
        f"versions: {versions}" if versions else None,
        f"data: {rep['data_root']}" if rep.get("data_root") else None,
        f"this invocation {_duration(seconds)}",
        f"the steps' own time {_duration(rep['steps_seconds'])} (reused steps: when they ran)"
        if rep.get("steps_seconds") is not None
        else None,
    ]
    return " · ".join(x for x in items if x)


def _when(stamp: Any) -> str:
    if not stamp:
        return "?"
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).isoformat(sep=" ", timespec="minutes")
    except ValueError:
        return str(stamp)


def _duration(seconds: float | None) -> str:
    if seconds is None or not 0 <= seconds < math.inf:  # not given, or a damaged record's
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def plural(n: int, word: str) -> str:
    """ "1 finding", "2 findings"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _counts_text(findings: list[Mapping[str, Any]]) -> str:
    counts = verdict_counts(findings)
    return f"{plural(len(findings), 'finding')}: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "."


def _source(finding: Mapping[str, Any], *, short: bool = False) -> str:
    """The paper and figure: its key in tables ("TK fig. 2"), its title in the sections."""
    who = (finding.get("paper") if short else None) or finding.get("paper_title") or finding.get("paper") or "?"
    return f"{who}, {finding['reference']}" if finding.get("reference") else str(who)


def _anchors(findings: list[Mapping[str, Any]]) -> list[str]:
    """GitHub-style heading slugs of the recipe names (``-1``, ``-2`` for repeats), also the HTML ids."""
    seen: dict[str, int] = {}
    anchors = []
    for finding in findings:
        slug = re.sub(r"[^\w\- ]", "", str(finding.get("recipe", "finding")).lower()).replace(" ", "-") or "finding"
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.append(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths and the like, for ``json.dumps(default=...)``."""
    for method in ("tolist", "item"):
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    return str(value)


def _step_line(step: Mapping[str, Any]) -> str:
    how = "reused" if step.get("reused") else "run"
    return f"study {step.get('study', '?')}, {_duration(step.get('seconds'))}, {how}"


def _md_text(value: Any) -> str:
    """One line of Markdown text; ``<`` before a letter is escaped so no renderer takes it for a tag."""
    text = "—" if value is None or value == "" else " ".join(str(value).split())
    return re.sub(r"<(?=[A-Za-z/!?])", r"\\<", text)


def _md_cell(value: Any) -> str:
    return _md_text(value).replace("|", "\\|")


def _fence(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _markdown_section(finding: Mapping[str, Any], base: Path) -> list[str]:
    verdict = finding.get("verdict")
    lines = [f"## {finding.get('recipe', 'finding')}", "", f"*{_md_text(_source(finding))}*", ""]
    lines += [f"**Claim.** {_md_text(finding.get('claim'))}", ""]
    lines += [f"**Paper's number.** {_md_text(finding.get('paper_number'))}", ""]
    lines += [f"**Measured here.** {_md_text(_measured(finding))}", ""]
    lines += [f"**Verdict: {_MARK.get(verdict or '', '')} {verdict}** (rule: {_md_text(finding.get('rule'))})", ""]
    warned = _step_warnings(finding)
    if warned:
        lines += ["**Its steps warned** (the verdict rests on them):", ""]
        lines += [f"- {_md_text(name)}: {_md_text(text)}" for name, text in warned] + [""]
    for figure in finding.get("figures", []):
        path, caption = str(figure.get("path", "")), str(figure.get("caption", ""))
        if _outside(path, base):
            lines += [f"*({_OUTSIDE}: {_md_text(path)})* {_md_text(caption)}", ""]
        elif (base / path).is_file():
            alt = _md_text(caption).replace("[", "\\[").replace("]", "\\]")
            lines += [f"![{alt}]({quote(path)})", ""] + ([f"*{_md_text(caption)}*", ""] if caption else [])
        else:
            lines += [f"*(figure missing: {_md_text(path)})* {_md_text(caption)}", ""]
    if finding.get("numbers"):
        lines += _md_details("numbers the check used", _pretty(finding["numbers"]))
    steps = finding.get("steps", [])
    if steps:
        lines += [f"<details><summary>{plural(len(steps), 'step')}, {_duration(finding.get('seconds'))}</summary>", ""]
        for step in steps:
            config = _pretty(step.get("config", {}))
            fence = _fence(config)
            lines += [f"- **{_md_text(step.get('name', '?'))}** ({_md_text(_step_line(step))})", ""]
            lines += [f"  {fence}json", *("  " + row for row in config.splitlines()), f"  {fence}", ""]
        lines += ["</details>", ""]
    return lines


def _step_warnings(finding: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(step, text) for each warning of the finding's steps, in step order."""
    return [
        (str(step.get("name", "?")), str(text))
        for step in finding.get("steps", [])
        if isinstance(step, Mapping)
        for text in step.get("warnings") or ()
    ]


def _md_details(summary: str, body: str) -> list[str]:
    fence = _fence(body)
    return [f"<details><summary>{summary}</summary>", "", f"{fence}json", body, fence, "", "</details>", ""]


def _h(value: Any) -> str:
    return html.escape("—" if value is None or value == "" else str(value))


def _html_verdict(verdict: Any, tag: str = "td", marks: str = "") -> str:
    cls = verdict if verdict in VERDICTS else "inconclusive"
    return f'<{tag} class="{cls}">{_MARK.get(verdict, "")} {_h(verdict)}{_h(marks) if marks else ""}</{tag}>'


def _html_summary(findings: list[Mapping[str, Any]], anchors: list[str]) -> str:
    rows = ["<table>", "<thead><tr>" + "".join(f"<th>{_h(c)}</th>" for c in _COLUMNS) + "</tr></thead>", "<tbody>"]
    for finding, anchor in zip(findings, anchors, strict=True):
        cells = [f'<td><a href="#{_h(anchor)}">{_h(finding.get("recipe"))}</a></td>']
        cells += [
            f"<td>{_h(x)}</td>"
            for x in (_source(finding, short=True), finding.get("claim"), finding.get("paper_number"))
        ]
        verdict = _html_verdict(finding.get("verdict"), marks=_verdict_marks(finding))
        cells += [f"<td>{_h(_measured(finding))}</td>", verdict]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join([*rows, "</tbody>", "</table>"])


def _html_section(finding: Mapping[str, Any], anchor: str, base: Path) -> str:
    parts = [
        f'<section id="{_h(anchor)}">',
        f"<h2>{_h(finding.get('recipe'))}</h2>",
        f'<p class="meta">{_h(_source(finding))}</p>',
        f"<p><b>Claim.</b> {_h(finding.get('claim'))}</p>",
        f"<p><b>Paper's number.</b> {_h(finding.get('paper_number'))}</p>",
        f"<p><b>Measured here.</b> {_h(_measured(finding))}</p>",
        f'<p class="verdict"><b>Verdict:</b> {_html_verdict(finding.get("verdict"), "span")}'
        f" (rule: <code>{_h(finding.get('rule'))}</code>)</p>",
    ]
    warned = _step_warnings(finding)
    if warned:
        items = "".join(f"<li><b>{_h(name)}</b>: {_h(text)}</li>" for name, text in warned)
        parts.append(f'<div class="warned"><b>Its steps warned</b> (the verdict rests on them):<ul>{items}</ul></div>')
    parts += [_html_figure(figure, base) for figure in finding.get("figures", [])]
    if finding.get("numbers"):
        parts.append(_html_details("numbers the check used", _pretty(finding["numbers"])))
    steps = finding.get("steps", [])
    if steps:
        parts.append(f"<h3>{plural(len(steps), 'step')}, {_h(_duration(finding.get('seconds')))}</h3>\n<ul>")
        for step in steps:
            config = _html_details("config", _pretty(step.get("config", {})))
            parts.append(f"<li><b>{_h(step.get('name'))}</b> ({_h(_step_line(step))}){config}</li>")
        parts.append("</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def _html_details(summary: str, body: str) -> str:
    return f"<details><summary>{_h(summary)}</summary><pre>{_h(body)}</pre></details>"


def _html_figure(figure: Mapping[str, Any], base: Path) -> str:
    path, caption = str(figure.get("path", "")), str(figure.get("caption", ""))
    mime = _MIME.get(Path(path).suffix.lower())
    if _outside(path, base):
        return f'<p class="missing">({_OUTSIDE}: {_h(path)}) {_h(caption)}</p>'
    try:
        if not (base / path).is_file():  # as report.md: a FIFO would block the read, /dev/zero never end it
            raise FileNotFoundError(path)
        data = (base / path).read_bytes()
    except OSError:
        return f'<p class="missing">(figure missing: {_h(path)}) {_h(caption)}</p>'
    if mime is None:
        return f'<p class="missing">(figure not embedded, not PNG/SVG/JPEG: {_h(path)}) {_h(caption)}</p>'
    src = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    # the page scales a wide figure down to its column; the file beside the report is full size
    full = f' · <a href="{_h(quote(path))}">{_h(path)}</a>'
    return f'<figure><img src="{src}" alt="{_h(caption)}"><figcaption>{_h(caption)}{full}</figcaption></figure>'


_OUTSIDE = "figure outside the report's folder, not shown"


def _outside(path: str, base: Path) -> bool:
    """Whether a figure's path is absolute, climbs out of the report's folder (``..``) or leads
    out of it through a symbolic link (one handed over with the folder can point anywhere)."""
    if Path(path).is_absolute() or ".." in Path(path).parts:
        return True
    try:
        return not (base / path).resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13): not shown either
        return True


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then move it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for a plain open
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
