"""The report in a real browser: headless Chromium, network off, opened from file://.

Checks that every figure rendered (``<img>`` complete with naturalWidth > 0), that
no error reached the console or the window (script errors, failed resource loads),
and saves a full-page screenshot (``report_screenshot.png`` beside the report; also
copied to ``$WIDTHWISE_SCREENSHOT_DIR`` when set). Needs Debian's ``chromium``
(``apt-get install -y chromium``); skipped with that hint when it is not installed.

How: the page is copied with a small script injected at the top of ``<head>``; it
records ``console.error`` calls and every ``error`` event (capture phase, so failed
image loads count too), and on ``load`` writes a JSON summary into the DOM, which
``--dump-dom`` prints after the virtual-time budget has run out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import report_of, section_ids

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NETWORK_OFF = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
    # any request that still leaves the page fails at once: no DNS, a dead proxy
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
)

PROBE = """<script>
window.__wwErrors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__wwErrors.push("error: " + (e.message || (t && (t.src || t.href)) || "resource"));
}, true);
(function () {
  var original = console.error;
  console.error = function () {
    window.__wwErrors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
})();
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var result = {
    images: imgs.length,
    rendered: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
      .map(function (i) { return i.alt; }),
    svgs: document.querySelectorAll("svg").length,
    errors: window.__wwErrors,
    sections: Array.prototype.map.call(document.querySelectorAll("section"),
      function (s) { return s.id; }),
    height: Math.ceil(document.documentElement.scrollHeight)
  };
  var pre = document.createElement("pre");
  pre.id = "ww-result";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, *NETWORK_OFF, f"--user-data-dir={profile}", *args]
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)


@pytest.fixture(scope="module")
def browser() -> str:
    path = _browser()
    if path is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return path


def test_report_renders_in_headless_chromium(browser, tmp_path_factory, tmp_path):
    page_path = report_of("probes", tmp_path_factory)
    page = page_path.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")

    res = _run(
        browser,
        tmp_path / "profile1",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probed.as_uri(),
    )
    found = re.search(r'<pre id="ww-result">(.*?)</pre>', res.stdout, re.S)
    assert found, f"no result from chromium (rc {res.returncode}): {res.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    n_img = len(re.findall(r"<img ", page))
    assert result["images"] == n_img > 0
    assert result["broken"] == [] and result["rendered"] == n_img
    assert result["errors"] == []
    assert set(result["sections"]) == section_ids(page)
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console

    # full-page screenshot of the report itself (no injected script)
    shot = page_path.parent / "report_screenshot.png"
    height = min(max(int(result["height"]) + 400, 800), 16000)  # + room for window chrome
    _run(
        browser,
        tmp_path / "profile2",
        f"--window-size=1280,{height}",
        "--virtual-time-budget=10000",
        f"--screenshot={shot}",
        page_path.as_uri(),
    )
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert pixels.shape[1] == 1280 and pixels.std() > 10  # not blank
    target = os.environ.get("WIDTHWISE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / "report_screenshot.png")
