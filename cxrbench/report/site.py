"""The suite web page: one self-contained ``index.html`` (inline CSS, no script, relative links only).

``render_page`` turns plain data (``Page``) into HTML; every piece of text is escaped here, and the
only markup taken as it is are the table fragments the compare stage rendered (``tables.render``).
Links and image sources are bundle-relative, percent-encoded paths, so the folder works offline and
wherever it is moved.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fff}
header,main,footer{max-width:1200px;margin:0 auto;padding:0 1.2rem}
header{padding-top:1.5rem}
h1{margin:.2rem 0}
h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
nav ul{columns:3;padding-left:1.2rem}
.muted{color:#666}
dl.grid{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}
dl.grid dt{font-weight:600}
dl.grid dd{margin:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.6rem 0;font-size:13px}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #d0d0d0;padding:.2rem .45rem;text-align:left;vertical-align:top}
thead th{background:#f3f4f6}
tfoot td{font-size:12px;color:#555;border:none;padding-top:.4rem}
table.cxrbench td{white-space:nowrap}
table.cxrbench tfoot td{white-space:normal}
.figures{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;max-width:480px}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#444}
pre{background:#f6f8fa;padding:.7rem;overflow-x:auto;font-size:13px}
code{font-size:13px}
""".strip()


@dataclass(frozen=True)
class Link:
    """A bundle-relative file and the text shown for it."""

    path: str
    text: str


@dataclass(frozen=True)
class Figure:
    """A PNG shown on the page, linking to its PDF when there is one."""

    image: str
    caption: str
    pdf: str | None = None


@dataclass(frozen=True)
class Section:
    """One dataset: its significance table (compare's HTML fragment), downloads and figures."""

    title: str
    table_html: str | None
    note: str = ""
    downloads: Sequence[Link] = ()
    figures: Sequence[Figure] = ()


@dataclass(frozen=True)
class Page:
    """Everything ``index.html`` shows; plain strings, escaped by ``render_page``."""

    title: str
    subtitle: str
    facts: Sequence[tuple[str, str]]
    summary_html: str | None
    summary_note: str
    summary_downloads: Sequence[Link]
    sections: Sequence[Section]
    other_figures: Sequence[Figure] = ()
    commands: str = ""
    command_files: Sequence[Link] = ()
    environment: Sequence[tuple[str, str]] = ()
    stage_versions: Sequence[tuple[str, str]] = ()
    environment_files: Sequence[Link] = ()
    #: rows of (step, stage, manifest link, created, seconds)
    manifests: Sequence[tuple[str, str, Link, str, str]] = ()
    files: Sequence[Link] = field(default_factory=tuple)


def href(path: str) -> str:
    """A bundle-relative POSIX path as an escaped, percent-encoded attribute value."""
    return html.escape(quote(path, safe="/"), quote=True)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _links(links: Sequence[Link]) -> str:
    if not links:
        return ""
    items = " · ".join(f'<a href="{href(link.path)}">{_esc(link.text)}</a>' for link in links)
    return f'<p class="downloads">Download: {items}</p>'


def _figures(figures: Sequence[Figure]) -> str:
    if not figures:
        return ""
    parts = ['<div class="figures">']
    for fig in figures:
        img = f'<img src="{href(fig.image)}" alt="{_esc(fig.caption)}" loading="eager">'
        if fig.pdf:
            img = f'<a href="{href(fig.pdf)}">{img}</a>'
        parts.append(f"<figure>{img}<figcaption>{_esc(fig.caption)}</figcaption></figure>")
    parts.append("</div>")
    return "\n".join(parts)


def _pairs(rows: Sequence[tuple[str, str]], *, head: tuple[str, str]) -> str:
    body = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return (
        f'<table class="pairs"><thead><tr><th scope="col">{_esc(head[0])}</th>'
        f'<th scope="col">{_esc(head[1])}</th></tr></thead><tbody>{body}</tbody></table>'
    )


def anchor(index: int) -> str:
    """The id of the ``index``-th dataset section (ids never come from names)."""
    return f"dataset-{index + 1}"


def render_page(page: Page) -> str:
    """The whole ``index.html`` for ``page``."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(page.title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{_esc(page.title)}</h1>",
        f'<p class="muted">{_esc(page.subtitle)}</p>',
        "<nav><ul>",
        '<li><a href="#summary">Summary</a></li>',
        *(f'<li><a href="#{anchor(i)}">{_esc(s.title)}</a></li>' for i, s in enumerate(page.sections)),
        *(['<li><a href="#other-figures">Other figures</a></li>'] if page.other_figures else []),
        '<li><a href="#reproduce">Reproduce</a></li>',
        '<li><a href="#environment">Environment</a></li>',
        '<li><a href="#manifests">Stages and manifests</a></li>',
        '<li><a href="#files">Files</a></li>',
        "</ul></nav>",
        "</header>",
        "<main>",
        '<section id="summary">',
        "<h2>Summary</h2>",
        '<dl class="grid">',
        *(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in page.facts),
        "</dl>",
    ]
    if page.summary_html:
        out.append(f'<div class="scroll">\n{page.summary_html}</div>')
    if page.summary_note:
        out.append(f'<p class="muted">{_esc(page.summary_note)}</p>')
    out += [_links(page.summary_downloads), "</section>"]
    for i, section in enumerate(page.sections):
        out += [f'<section id="{anchor(i)}" class="dataset">', f"<h2>{_esc(section.title)}</h2>"]
        if section.table_html:
            out.append(f'<div class="scroll">\n{section.table_html}</div>')
        if section.note:
            out.append(f'<p class="muted">{_esc(section.note)}</p>')
        out += [_links(section.downloads), _figures(section.figures), "</section>"]
    if page.other_figures:
        out += ['<section id="other-figures">', "<h2>Other figures</h2>", _figures(page.other_figures), "</section>"]
    out += [
        '<section id="reproduce">',
        "<h2>Reproduce</h2>",
        f"<pre><code>{_esc(page.commands)}</code></pre>",
        _links(page.command_files),
        "</section>",
        '<section id="environment">',
        "<h2>Environment</h2>",
        "<h3>Where this bundle was exported</h3>",
        _pairs(page.environment, head=("what", "version")),
        "<h3>Versions recorded by the stages when they ran</h3>",
        _pairs(page.stage_versions, head=("package", "version (stages)")),
        _links(page.environment_files),
        "</section>",
        '<section id="manifests">',
        "<h2>Stages and manifests</h2>",
        '<div class="scroll"><table class="manifests"><thead><tr>',
        *(f'<th scope="col">{h}</th>' for h in ("step", "stage", "manifest", "created", "seconds")),
        "</tr></thead><tbody>",
        *(
            f'<tr><td>{_esc(step)}</td><td>{_esc(stage)}</td><td><a href="{href(link.path)}">{_esc(link.text)}</a>'
            f"</td><td>{_esc(created)}</td><td>{_esc(seconds)}</td></tr>"
            for step, stage, link, created, seconds in page.manifests
        ),
        "</tbody></table></div>",
        "</section>",
        '<section id="files">',
        "<h2>Files</h2>",
        "<ul>",
        *(
            f'<li><a href="{href(link.path)}">{_esc(link.path)}</a> <span class="muted">{_esc(link.text)}</span></li>'
            for link in page.files
        ),
        "</ul>",
        "</section>",
        "</main>",
        f'<footer><p class="muted">{_esc(page.subtitle)}</p></footer>',
        "</body>",
        "</html>",
    ]
    return "\n".join(part for part in out if part) + "\n"
