"""The suite page: names from input are escaped, paths percent-encoded, and nothing but the tables is raw markup."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import unquote

from cxrbench.report import site

NASTY = "<script>alert('x')</script> & \"q\" </table>"


class _Collect(HTMLParser):
    """Tags, attributes and text as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _page(**changes) -> site.Page:
    figure = site.Figure("comparisons/plots/a b#1?.png", NASTY, "comparisons/plots/a b#1?.pdf")
    fields = {
        "title": f"cxrbench suite {NASTY}",
        "subtitle": NASTY,
        "facts": [("encoders", f"file:/w/{NASTY}.pt")],
        "summary_html": '<table class="cxrbench"><caption>s</caption><tbody><tr><td>1</td></tr></tbody></table>',
        "summary_note": NASTY,
        "summary_downloads": [site.Link("comparisons/summary.csv", "csv")],
        "sections": [site.Section(NASTY, None, note=NASTY, figures=[figure])],
        "commands": f"cxrbench run --suite '{NASTY}'",
        "environment": [("python", NASTY)],
        "stage_versions": [("torch", NASTY)],
        "manifests": [(NASTY, "probe", site.Link("manifests/x y.json", NASTY), "now", "1.0")],
        "files": [site.Link("comparisons/plots/a b#1?.png", NASTY)],
    }
    fields.update(changes)
    return site.Page(**fields)


def test_text_from_input_is_escaped() -> None:
    page = site.render_page(_page())
    parsed = _Collect()
    parsed.feed(page)
    assert "script" not in parsed.tags
    assert parsed.tags.count("table") == 4  # the summary fragment, two environment tables, manifests: none injected
    text = "".join(parsed.text)
    assert text.count(NASTY) >= 8  # shown as text, character for character
    assert f"cxrbench run --suite '{NASTY}'" in text


def test_links_are_relative_and_percent_encoded() -> None:
    parsed = _Collect()
    parsed.feed(site.render_page(_page()))
    targets = [a.get("href") or a.get("src") for tag, a in parsed.attrs if tag in ("a", "img")]
    files = [t for t in targets if not t.startswith("#")]
    assert files and all("://" not in t and not t.startswith("/") for t in files)
    assert "comparisons/plots/a%20b%231%3F.png" in files  # a '#' or '?' in a name is not a fragment or query
    assert {unquote(t) for t in files} >= {"comparisons/plots/a b#1?.png", "comparisons/plots/a b#1?.pdf"}
    anchors = {t[1:] for t in targets if t.startswith("#")}
    ids = {a["id"] for _, a in parsed.attrs if "id" in a}
    assert anchors <= ids and site.anchor(0) in ids


def test_no_external_resource() -> None:
    page = site.render_page(_page())
    assert "http://" not in page and "https://" not in page and "<script" not in page
