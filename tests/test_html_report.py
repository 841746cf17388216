"""The demo report page: figures, commands and images, self-contained and parseable."""
from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from ldm.eval.html_report import Figure, format_figures, render_report, write_report


class _Page(HTMLParser):
    """Collects text, tags with attributes, and checks that every opened element is closed."""

    VOID = {"meta", "img", "br", "link", "hr", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.cells: list[str] = []
        self.pre: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)
            self._in.append(tag)
            if tag in ("td", "pre"):
                (self.cells if tag == "td" else self.pre).append("")

    def handle_endtag(self, tag):  # noqa: ANN001
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        self._in.pop()

    def handle_data(self, data):  # noqa: ANN001
        self.text.append(data)
        if self._in and self._in[-1] == "td":
            self.cells[-1] += data
        if "pre" in self._in:
            self.pre[-1] += data


def _png(path, colour) -> np.ndarray:  # noqa: ANN001
    arr = np.zeros((6, 10, 3), dtype=np.uint8)
    arr[:, :5] = colour
    Image.fromarray(arr).save(path)
    return arr


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    assert p.stack == [], f"unclosed elements {p.stack}"
    return p


def test_figures_met_and_formatting():
    psnr = Figure("AE PSNR", 29.456, unit="dB", target=28.0)
    fid = Figure("FID-like", 3.0, target=2.5, higher_is_better=False, digits=1)
    free = Figure("real accuracy", 0.991, digits=3)
    assert (psnr.met, fid.met, free.met) == (True, False, None)
    assert (psnr.value_text, psnr.target_text, psnr.met_text) == ("29.46 dB", "≥ 28.00 dB", "met")
    assert (fid.value_text, fid.target_text, fid.met_text) == ("3.0", "≤ 2.5", "not met")
    assert (free.target_text, free.met_text) == ("-", "-")
    assert Figure("edge", 28.0, target=28.0).met is True
    lines = format_figures([psnr, fid, free]).splitlines()
    assert len(lines) == 4 and lines[0].split() == ["figure", "value", "target"]
    assert lines[1].split() == ["AE", "PSNR", "29.46", "dB", "≥", "28.00", "dB", "met"]
    assert lines[2].endswith("not met") and lines[3].split() == ["real", "accuracy", "0.991", "-", "-"]


def test_report_holds_figures_commands_and_embedded_images(tmp_path):
    a = _png(tmp_path / "a.png", (255, 0, 0))
    # A JPEG is converted: the page only ever embeds PNG.
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "b.jpg")
    figures = [Figure("AE <PSNR> & more", 29.5, unit="dB", target=28.0, note="mean over 1000 'val' images"),
               Figure("class accuracy", 0.5, target=0.9)]
    commands = [["python", "main.py", "--base", "configs/demo/a b.yaml", "x=<1>&y"], 'echo "quoted" > out.txt']
    out = write_report(tmp_path / "sub" / "report.html", "Demo <report>", figures,
                       images=[("Reconstructions & inputs", tmp_path / "a.png"), ("second", tmp_path / "b.jpg")],
                       commands=commands, notes=["Trained on 2 cores & offline."])
    assert out == tmp_path / "sub" / "report.html" and out.is_file()
    assert out.stat().st_mode & 0o777 == 0o644
    page = out.read_text(encoding="utf-8")
    assert "<PSNR>" not in page and "&lt;PSNR&gt; &amp; more" in page  # escaped in the source
    p = _parse(page)
    text = "".join(p.text)
    assert "Demo <report>" in text and "Trained on 2 cores & offline." in text
    # One table row per figure, in order: name, value, target, met, note.
    assert p.cells == ["AE <PSNR> & more", "29.50 dB", "≥ 28.00 dB", "met", "mean over 1000 'val' images",
                       "class accuracy", "0.50", "≥ 0.90", "not met", ""]
    assert p.pre == ["python main.py --base 'configs/demo/a b.yaml' 'x=<1>&y'\necho \"quoted\" > out.txt"]
    imgs = [attrs for tag, attrs in p.tags if tag == "img"]
    assert [i["alt"] for i in imgs] == ["Reconstructions & inputs", "second"]
    decoded = []
    for i in imgs:
        prefix = "data:image/png;base64,"
        assert i["src"].startswith(prefix)
        decoded.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(i["src"][len(prefix):])))))
    np.testing.assert_array_equal(decoded[0], a)  # embedded byte for byte
    assert decoded[1].shape == (4, 4, 3)
    # Self-contained: nothing is fetched from anywhere.
    for _, attrs in p.tags:
        for key in ("src", "href"):
            assert key not in attrs or attrs[key].startswith("data:")


def test_missing_or_broken_image_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="report image not found: .*missing.png"):
        render_report("t", [], images=[("x", tmp_path / "missing.png")])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        render_report("t", [], images=[("x", tmp_path / "bad.png")])
    assert not list(tmp_path.glob("*.html"))


def test_empty_report_is_valid():
    p = _parse(render_report("Nothing yet", []))
    assert [t for t, _ in p.tags if t in ("table", "img", "pre")] == []
