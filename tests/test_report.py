"""dlphase report: the page opens in headless Chromium with no JavaScript errors and every plot drawn; hostile
strings in a cube or a plugin render as text, run nothing and load nothing; a cube is only read."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import xarray as xr

from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import install_package, run_cli
from tests.synthetic_cubes import fluctuation_cube

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

#: every <canvas>, through the shadow roots Bokeh 3 draws into: [width, height, painted pixels (capped)]
CANVASES_JS = """
function walk(root, out) {
  for (const el of root.querySelectorAll('*')) {
    if (el.tagName === 'CANVAS') out.push(el);
    if (el.shadowRoot) walk(el.shadowRoot, out);
  }
  return out;
}
return walk(document, []).map(c => {
  let painted = 0;
  try {
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < data.length && painted < 500; i += 4) if (data[i] !== 0) painted++;
  } catch (e) { painted = -1; }
  return [c.width, c.height, painted];
});
"""


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_report_renders_in_headless_chromium(tmp_path, browser):
    cube = tmp_path / "cube.nc"
    fluctuation_cube(seeds=6, n_test=100).to_netcdf(cube)
    out = tmp_path / "report.html"
    res = run_cli("report", cube, "-o", out)
    assert res.returncode == 0, res.stderr
    assert "phase_diagram, double_descent, divergence, ensemble, fluctuation_scaling" in res.stdout
    page = out.read_text()
    assert "<script" in page and "cdn.bokeh.org" not in page  # self-contained: Bokeh inline, no network
    assert "fluctuation: N^-0.2" in page and "[grid]" in page and "learning_curve" in page  # skipped, and why

    browser.get(Path(out).as_uri())
    n_plots = int(browser.title.split(": ")[1].split()[0])
    assert n_plots >= 7  # 2 heatmaps, 2 double-descent panels, 1 divergence, 1 ensemble, 2 fluctuation panels

    def drawn(driver):
        canvases = driver.execute_script(CANVASES_JS)
        painted = [c for c in canvases if c[0] > 0 and c[1] > 0 and c[2] > 0]
        return painted if len(painted) >= n_plots else False

    painted = WebDriverWait(browser, 60, poll_frequency=0.5).until(drawn)
    assert len(painted) >= n_plots
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors


def test_a_cube_is_only_read(tmp_path):
    """analyze, plot and report read a cube and execute nothing stored in it: strings that are Python code,
    format fields or HTML stay text (escaped in the page), and no payload runs."""
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    cube = fluctuation_cube(seeds=4, n_test=50)
    cube.attrs["spec_toml"] = f"# {code}\n<script>alert(1)</script>\"><img src=x onerror=alert(2)>"
    cube.attrs["eval_me"] = code
    cube.attrs["format_me"] = "{0.__class__.__mro__[1].__subclasses__()}"
    cube["test_error"].attrs["long_name"] = f"<script>{code}</script>"
    path = tmp_path / "cube.nc"
    cube.to_netcdf(path)
    before = path.read_bytes()
    for args in (("analyze", "fluctuation_scaling", path), ("plot", "phase-diagram", path, "-o", tmp_path / "p.html"),
                 ("report", path, "-o", tmp_path / "r.html")):
        res = run_cli(*args)
        assert res.returncode == 0, res.stderr
    page = (tmp_path / "r.html").read_text()
    # the spec is shown as text (escaped once more where it sits inside the embedded plot documents)
    assert re.search(r"(&amp;|&)lt;script(&amp;|&)gt;alert\(1\)", page) and "<script>alert(1)" not in page
    assert "<img src=x onerror" not in page
    assert not marker.exists()
    assert path.read_bytes() == before


#: strings that would run script, draw elements or load from the network if they reached the page as HTML
HOSTILE = ["<script>alert('xss:script')</script>", "\"><img src=x onerror=alert('xss:img')>",
           "'><svg onload=alert('xss:svg')>", "</pre></div><script>console.log('xss:close')</script>",
           "<a href=\"javascript:alert('xss:href')\">link</a>", "<iframe src=\"http://127.0.0.1:9/xss\"></iframe>",
           "<img src=\"http://127.0.0.1:9/xss.png\">", "</script><script>alert('xss:json')</script>",
           "<style>@import 'http://127.0.0.1:9/xss.css';</style>", "${alert('xss:template')}"]
PAYLOAD = " ".join(HOSTILE)

HOSTILE_PLUGIN = f"""# A third-party plugin whose every string is hostile HTML.

from typing import ClassVar

import attrs

import dlphase

PAYLOAD = {PAYLOAD!r}


@attrs.frozen(kw_only=True)
class Hostile(dlphase.Analysis):
    name: ClassVar[str] = "hostile"
    requires: ClassVar = ("test_error",)

    def compute(self, cube):
        var = cube["test_error"].mean("seed").assign_attrs(long_name=PAYLOAD, units=PAYLOAD)
        return var.to_dataset(name="v" + PAYLOAD)

    def summary(self, result):
        return ["summary " + PAYLOAD]

    def plot(self, result, backend="bokeh"):
        import holoviews as hv

        title = PAYLOAD.replace("{{", "{{{{").replace("}}", "}}}}")  # holoviews formats titles: braces doubled
        return hv.Curve(([1, 2], [3, 4]), hv.Dimension("x", label=PAYLOAD), "y", label=PAYLOAD).opts(title=title)


Hostile.__doc__ = "docstring " + PAYLOAD


@attrs.frozen(kw_only=True)
class HostileBroken(Hostile):
    name: ClassVar[str] = "hostile_broken"

    def plot(self, result, backend="bokeh"):
        raise ValueError("raised " + PAYLOAD)


@attrs.frozen(kw_only=True)
class HostileSkipped(Hostile):
    name: ClassVar[str] = "hostile_skipped"

    def applies(self, cube):
        return "reason " + PAYLOAD


@dlphase.hookimpl
def register_analyses(register):
    register(Hostile)
    register(HostileBroken)
    register(HostileSkipped)
"""

CANVAS_SIZES_JS = CANVASES_JS.split("return walk")[0] + "return walk(document, []).map(c => [c.width, c.height]);"

#: every element's own text and attributes, through the shadow roots Bokeh draws into
DOM_JS = """
const texts = [], attrs = [], tags = [];
function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    tags.push(el.tagName.toLowerCase());
    for (const a of el.attributes) attrs.push(a.name + '=' + a.value);
    for (const n of el.childNodes) if (n.nodeType === 3) texts.push(n.textContent);
    if (el.shadowRoot) walk(el.shadowRoot);
  }
}
walk(document);
return {texts: texts.join(' '), attrs: attrs, tags: tags, fired: window.__fired || null,
        resources: performance.getEntriesByType('resource').map(e => e.name)};
"""


def test_hostile_strings_in_a_cube_and_a_plugin_render_as_text_in_chromium(tmp_path, browser, monkeypatch):
    """Script, markup and links in the spec, the cube's attributes, run messages, the cube's file name and a
    third-party analysis (docstring, summary, skip reason, variable names, plot labels): in headless Chromium
    the report shows them as text, no script runs (no alert, no console entry), and nothing is loaded from the
    network (the browser's network log holds the page alone)."""
    install_package(tmp_path, monkeypatch, "dlphase_hostile", HOSTILE_PLUGIN)

    cube = fluctuation_cube(seeds=4, n_test=50)
    cube.attrs.update(spec_toml="# spec " + PAYLOAD, data_source="data " + PAYLOAD)
    cube["message"] = xr.full_like(cube["test_error"], "", dtype=object)
    cube["message"][0, 0, 0, 0] = "message " + PAYLOAD
    path = tmp_path / "c\"><img src=x onerror=alert('xss:path')>.nc"
    cube.to_netcdf(path)
    out = tmp_path / "report.html"
    res = run_cli("report", path, "-o", out)
    assert res.returncode == 0, res.stderr
    assert "fluctuation_scaling, hostile, hostile_broken)" in res.stdout, res.stdout
    assert res.stderr.startswith("warning: the hostile_broken analysis failed to plot: ValueError: raised <script>")
    assert len(res.stderr.splitlines()) == 1, res.stderr

    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": """
        window.__fired = [];
        for (const f of ['alert', 'confirm', 'prompt', 'print', 'open'])
          window[f] = (...args) => window.__fired.push(f + ': ' + args.join(' '));"""})
    browser.execute_cdp_cmd("Network.enable", {})
    browser.get(out.as_uri())
    n_plots = int(browser.title.split(": ")[1].split()[0])
    # the plots are drawn (canvases sized; their pixels are not read, which would log WebGL warnings)
    WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: len([c for c in d.execute_script(CANVAS_SIZES_JS) if c[0] > 0 and c[1] > 0]) >= n_plots)
    time.sleep(1)  # a payload's event handlers (onload, onerror) would have fired by now
    dom = browser.execute_script(DOM_JS)

    assert dom["fired"] == [], dom["fired"]
    # the console holds Bokeh's own log line and Chromium's software-WebGL notes, nothing from the page's strings
    console = browser.get_log("browser")
    foreign = [e for e in console if not (e["source"] == "rendering" or '"[bokeh ' in e["message"])]
    assert foreign == [] and not [e for e in console if "xss" in e["message"]], console
    assert "iframe" not in dom["tags"] and "svg" not in [t for t in dom["tags"] if t != "svg"]
    assert not [a for a in dom["attrs"] if a.startswith(("onerror=", "onload=")) or "javascript:" in a
                or a.startswith("src=") and ("127.0.0.1" in a or a == "src=x")], dom["attrs"]
    for where in ("docstring", "summary", "reason", "# spec", "data", "raised"):
        assert f"{where} {PAYLOAD}" in dom["texts"], where  # shown as text, whole
    assert "onerror=alert('xss:path')>.nc" in dom["texts"]
    urls = [entry["params"]["request"]["url"] for entry in map(lambda e: json.loads(e["message"])["message"],
                                                                 browser.get_log("performance"))
            if entry["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file:", "data:", "blob:", "about:")) for u in urls), urls
    assert all(u.startswith(("file:", "data:", "blob:")) for u in dom["resources"]), dom["resources"]
    assert [u for u in urls if u.startswith("file:")] == [out.as_uri()], urls
