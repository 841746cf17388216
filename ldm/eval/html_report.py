"""A one-page, self-contained HTML report: image grids, a table of figures against their targets,
and the commands that produced them.

Images are embedded as base64 PNG (``data:`` URIs), so the page can be mailed or archived alone
and loads nothing from the network. Every text is HTML-escaped.

    figures = [Figure("Autoencoder PSNR", 29.3, target=28.0, unit="dB")]
    write_report("logs/demo_report.html", "Demo", figures, images=[("Reconstructions", "rec.png")],
                 commands=["python main.py --base configs/demo/autoencoder_kl.yaml -t"])
"""
from __future__ import annotations

import base64
import html
import io
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from ldm.checkpoint import atomic_path

__all__ = ["Figure", "format_figures", "render_report", "write_report"]

PathLike = Union[str, os.PathLike]
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Figure:
    """One measured number and the target it is held against."""

    name: str                          # what was measured, with the image set and protocol
    value: float
    unit: str = ""                     # shown after the value and the target ("dB", "%")
    target: Optional[float] = None     # None: reported without a target
    higher_is_better: bool = True      # met when value >= target (else value <= target)
    digits: int = 2                    # decimals shown
    note: str = ""                     # how it was computed, caveats

    @property
    def met(self) -> Optional[bool]:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def _num(self, x: float) -> str:
        return f"{x:.{self.digits}f}" + (f" {self.unit}" if self.unit else "")

    @property
    def value_text(self) -> str:
        return self._num(self.value)

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return ("≥ " if self.higher_is_better else "≤ ") + self._num(self.target)

    @property
    def met_text(self) -> str:
        return {None: "-", True: "met", False: "not met"}[self.met]


def format_figures(figures: Sequence[Figure]) -> str:
    """The figures as a plain-text table (for the terminal)."""
    rows = [("figure", "value", "target", "")] + [(f.name, f.value_text, f.target_text, f.met_text) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _png_data_uri(path: PathLike) -> str:
    """The image file as a ``data:image/png;base64`` URI (other formats are converted to PNG)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"report image not found: {p}")
    data = p.read_bytes()
    if not data.startswith(_PNG_MAGIC):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                buf = io.BytesIO()
                im.save(buf, format="PNG")
        except OSError as exc:
            raise ValueError(f"report image {p}: not a readable image ({exc})") from None
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _command_text(cmd: Union[str, Sequence[str]]) -> str:
    return cmd if isinstance(cmd, str) else shlex.join([str(c) for c in cmd])


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .7em;text-align:left}
td.met{color:#176117;font-weight:bold}td.notmet{color:#a11;font-weight:bold}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
img{image-rendering:pixelated;max-width:100%}pre{background:#f4f4f4;padding:.6em;white-space:pre-wrap;word-break:break-all}"""


def render_report(title: str, figures: Sequence[Figure], images: Sequence[tuple[str, PathLike]] = (),
                  commands: Sequence[Union[str, Sequence[str]]] = (), notes: Sequence[str] = (),
                  image_width: int = 512) -> str:
    """The page as a string. ``images``: (caption, file) pairs, embedded in that order;
    ``commands``: strings or argument lists (shell-quoted for display); ``notes``: paragraphs."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{esc(title)}</title>",
           f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{esc(title)}</h1>"]
    out += [f"<p>{esc(n)}</p>" for n in notes]
    if figures:
        out += ["<h2>Figures</h2>", "<table>", "<tr><th>Figure</th><th>Value</th><th>Target</th><th>Met</th>"
                "<th>How</th></tr>"]
        for f in figures:
            cls = {None: "", True: ' class="met"', False: ' class="notmet"'}[f.met]
            out.append(f"<tr><td>{esc(f.name)}</td><td>{esc(f.value_text)}</td><td>{esc(f.target_text)}</td>"
                       f"<td{cls}>{esc(f.met_text)}</td><td>{esc(f.note)}</td></tr>")
        out.append("</table>")
    if images:
        out.append("<h2>Images</h2>")
        for caption, path in images:
            out.append(f'<figure><img src="{_png_data_uri(path)}" alt="{esc(caption)}" width="{int(image_width)}">'
                       f"<figcaption>{esc(caption)}</figcaption></figure>")
    if commands:
        out += ["<h2>Commands</h2>", "<pre>" + "\n".join(esc(_command_text(c)) for c in commands) + "</pre>"]
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def write_report(path: PathLike, title: str, figures: Sequence[Figure], images: Sequence[tuple[str, PathLike]] = (),
                 commands: Sequence[Union[str, Sequence[str]]] = (), notes: Sequence[str] = (),
                 image_width: int = 512) -> Path:
    """Write :func:`render_report`'s page to ``path`` atomically; return the path."""
    page = render_report(title, figures, images, commands, notes, image_width)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
        os.chmod(tmp, 0o644)  # a page to share: not the private mode of the temporary file
    return Path(path)
