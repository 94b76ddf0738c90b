"""The self-contained report page: inline CSS, figures embedded as base64 PNG, no script.

The page references nothing outside itself (no links to files, no fonts, no network),
so it opens offline from anywhere; the same figures are written beside it as PNG and
SVG and every plotted number as CSV.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence

from widthwise.report.section import Banner, Section

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #dde1e8; --accent: #2f6f9f; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: #f6f7f9; }
header { background: #1f2d3d; color: #fff; padding: 18px 28px; }
header h1 { margin: 0; font-size: 22px; font-weight: 600; }
header p { margin: 4px 0 0; color: #c8d3df; font-size: 14px; }
nav { background: #fff; border-bottom: 1px solid var(--line); padding: 8px 28px;
  position: sticky; top: 0; z-index: 1; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
main { max-width: 1100px; margin: 0 auto; padding: 12px 20px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 14px 22px 18px; margin: 18px 0; }
section h2 { margin: 0 0 4px; font-size: 19px; }
.paper { color: var(--muted); font-size: 13px; font-weight: 400; margin-left: 8px; }
section > p { margin: 6px 0 10px; max-width: 78ch; }
figure { margin: 12px 0; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 18px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 10px 0; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; text-align: left; }
th { color: var(--muted); font-weight: 600; }
.note { color: #8a5a00; background: #fff8e6; border-left: 3px solid #e0a800;
  padding: 4px 10px; font-size: 14px; }
.banner { background: #fff4e5; border: 1px solid #e0a800; border-left: 5px solid #c77700;
  border-radius: 8px; padding: 10px 22px; margin: 18px 0 0; }
.banner p { margin: 4px 0; max-width: 90ch; }
.banner ul { margin: 4px 0 6px; padding-left: 20px; }
.files { color: var(--muted); font-size: 12px; margin-top: 8px; }
.files code { font-size: 12px; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 10px; }
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def img_tag(png: bytes, alt: str, width_px: int) -> str:
    """``<img>`` with the PNG embedded as a data URI, shown at ``width_px`` CSS pixels."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}" '
        f'width="{width_px}" loading="eager">'
    )


def _section_html(sec: Section, images: Mapping[str, tuple[bytes, int]]) -> str:
    paper = f'<span class="paper">paper {esc(sec.paper)}</span>' if sec.paper else ""
    parts = [
        f'<section id="{esc(sec.id)}" data-section="{esc(sec.id)}">',
        f"<h2>{esc(sec.title)}{paper}</h2>",
        f"<p>{esc(sec.text)}</p>",
    ]
    if sec.facts:
        parts.append('<dl class="facts">')
        parts += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in sec.facts]
        parts.append("</dl>")
    if sec.table:
        header, rows = sec.table
        parts.append("<table><thead><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in header]
        parts.append("</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</tbody></table>")
    for note in sec.notes:
        parts.append(f'<p class="note">{esc(note)}</p>')
    for panel in sec.panels:
        png, width = images[panel.name]
        parts.append(f'<figure id="fig-{esc(panel.name)}">')
        parts.append(img_tag(png, f"{sec.title}: {panel.name}", width))
        parts.append(f"<figcaption>{esc(panel.caption)}</figcaption></figure>")
    files = [f"figures/{p.name}.png, .svg" for p in sec.panels]
    files += [f"csv/{name}.csv" for name in sec.tables]
    if files:
        listed = ", ".join(f"<code>{esc(f)}</code>" for f in files)
        parts.append(f'<p class="files">Files beside this page: {listed}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def banner_html(banner: Banner) -> str:
    """The box above every section of a partial or diverged study: one item per width
    (``data-width``, ``data-state``: the word ``widthwise show`` prints)."""
    parts = [
        '<div class="banner" id="banner" role="note">',
        f"<p><strong>{esc(banner.headline)}</strong></p>",
        "<ul>",
    ]
    parts += [
        f'<li data-width="{w}" data-state="{esc(state)}">{esc(line)}</li>'
        for w, state, line in banner.widths
    ]
    parts.append("</ul>")
    parts += [f"<p>{esc(note)}</p>" for note in banner.notes]
    parts.append("</div>")
    return "\n".join(parts)


def render_html(
    title: str,
    subtitle: str,
    sections: Sequence[Section],
    images: Mapping[str, tuple[bytes, int]],
    footer: str = "",
    banner: Banner | None = None,
) -> str:
    """The whole page. ``images`` maps a panel name to (PNG bytes, display width in px);
    ``banner`` (a partial or diverged study) goes above the first section."""
    nav = " ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(_section_html(s, images) for s in sections)
    if banner is not None:
        body = banner_html(banner) + "\n" + body
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>\n"
        f"<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
        f"<footer>{esc(footer)}</footer>\n</body></html>\n"
    )
