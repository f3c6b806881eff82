"""The bench HTML report renders in a real browser: headless Chromium (the plain CLI, no driver) loads a
small report, screenshots it, and dumps the DOM of a probed copy that records what the page laid out.

Skips when no Chromium is installed (Debian: ``apt-get install chromium``; scripts/test.sh installs it as
root). About 10 s: a 2-method quick bench on a 256-wide speed model, then two browser runs."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
Image = pytest.importorskip("PIL.Image", reason="Pillow (a matplotlib dependency) reads the screenshot")

WIDTH, HEIGHT = 1280, 1000
# Appended to a copy of the page: once everything has loaded, the title reports each image's decoded and
# rendered size and whether the page overflows the window sideways.
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({complete: i.complete, natural: i.naturalWidth,
                                              shown: Math.round(i.getBoundingClientRect().width)}));
  document.title = JSON.stringify({imgs, overflow: document.documentElement.scrollWidth > innerWidth});
});</script>"""


def _chromium(tmp_path, *args):
    # Own profile dir: parallel runs on a shared machine must not fight over one. --no-sandbox: CI runs as root.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
           "--virtual-time-budget=5000", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from sparseforge.bench import BenchConfig, run_bench
    from sparseforge.bench.report import to_html

    result = run_bench(BenchConfig(methods=["magnitude", "srste"], quick=True, speed_width=256, progress=False))
    path = tmp_path_factory.mktemp("report") / "bench.html"
    path.write_text(to_html(result))
    return path


def test_report_images_load_and_fit(report, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", probed.as_uri())
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    state = json.loads(html.unescape(title.group(1)))
    assert len(state["imgs"]) == 2, state
    for img in state["imgs"]:  # decoded (natural width) and laid out at a readable size, side by side
        assert img["complete"] and img["natural"] > 300 and 300 < img["shown"] < WIDTH / 2, state
    assert not state["overflow"], state


def test_report_screenshot_is_a_real_render(report, tmp_path):
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", report.as_uri())
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.shape == (HEIGHT, WIDTH, 3), px.shape
    ink = (px < 200).any(-1)  # anything clearly darker than the white page
    assert px.std() > 20 and ink.mean() > 0.02, f"{shot} looks blank"
    assert ink[:80].any(), f"{shot}: no heading at the top"

    def near(rgb):  # pixels of one matplotlib default colour: the plots' markers and bars were drawn
        return int((np.abs(px - np.array(rgb)).sum(-1) < 40).sum())

    # Which series get which colour, and how big their bars are, depends on the measured numbers (a
    # speedup near 1x draws a sliver on the log axis): ask for the plots' colours, not for each one.
    colours = {"C0 blue": (31, 119, 180), "C1 orange": (255, 127, 14), "C2 green": (44, 160, 44),
               "C3 red": (214, 39, 40)}
    counts = {name: near(rgb) for name, rgb in colours.items()}
    assert counts["C0 blue"] > 100, f"{shot}: the first series is missing ({counts}); the plots did not render"
    assert sum(c > 100 for c in counts.values()) >= 2 and sum(counts.values()) > 1000, \
        f"{shot}: too few plot colours ({counts}); the plots did not render"
    assert near((246, 246, 246)) > 10000, f"{shot}: the table's grey box is missing"
