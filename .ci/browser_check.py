"""Open every page of the built book in headless Chromium, screenshot it, and fail on what a reader would see:
a traceback or papermill's "An Exception was encountered", an empty section, a table wider than the content
column that does not scroll inside it, a figure (an image in the article) without a caption, a broken
internal link (a missing file, or a missing #anchor).

    python3 .ci/browser_check.py CHROMIUM book/_build/html book/_build/screenshots
    python3 .ci/browser_check.py CHROMIUM --self-test      # the check must fail on a crafted page

Layout is measured in the browser at 1280 px: a copy of each page with a probe script that writes its findings
into the DOM is loaded with --dump-dom after --virtual-time-budget. Links are checked on the HTML files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=10000"]
WIDTH, MAX_HEIGHT = 1280, 16000  # px: the page is laid out 1280 wide; the screenshot holds the whole page
SKIP = {"genindex.html", "search.html"}

# Runs where it is inserted (end of body: DOM parsed, stylesheets applied) and again once the page has loaded
# (MathJax typeset, images sized); each pass writes its findings as JSON into one <pre>, "loaded" saying which.
PROBE = r"""
<script>
const fitmmCheck = (loaded) => {
  const problems = [];
  const article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  const column = article.getBoundingClientRect();
  const text = article.innerText;
  for (const marker of ["Traceback (most recent call last)", "An Exception was encountered"]) {
    if (text.includes(marker)) problems.push(`traceback: "${marker}"`);
  }
  if (article.querySelector(".output.traceback, .output.error, div.cell_output .traceback")) {
    problems.push("traceback: an error output cell");
  }
  for (const section of article.querySelectorAll("section")) {
    const clone = section.cloneNode(true);
    for (const h of clone.querySelectorAll(":scope > h1, :scope > h2, :scope > h3, :scope > h4")) h.remove();
    const empty = !clone.textContent.trim() && !clone.querySelector("img, table, svg, figure");
    if (empty) problems.push(`empty section: "${(section.querySelector("h1,h2,h3,h4") || {}).textContent || section.id}"`);
  }
  for (const table of article.querySelectorAll("table")) {
    const width = table.getBoundingClientRect().width;
    if (width <= column.width + 1) continue;
    let node = table.parentElement, scrolls = false;
    while (node && node !== article) {
      const style = getComputedStyle(node);
      if (["auto", "scroll"].includes(style.overflowX) && node.getBoundingClientRect().width <= column.width + 1) {
        scrolls = true;
        break;
      }
      node = node.parentElement;
    }
    if (!scrolls) {
      const caption = (table.querySelector("caption") || {}).textContent || table.innerText.slice(0, 60);
      problems.push(`table wider than the column (${Math.round(width)} > ${Math.round(column.width)} px): "${caption.trim().slice(0, 80)}"`);
    }
  }
  for (const img of article.querySelectorAll("img")) {
    const figure = img.closest("figure");
    const caption = figure && figure.querySelector("figcaption");
    if (!caption || !caption.textContent.trim()) problems.push(`figure without a caption: ${img.src.slice(0, 60)}`);
  }
  let out = document.getElementById("fitmm-check");
  if (!out) {
    out = document.createElement("pre");
    out.id = "fitmm-check";
    document.body.appendChild(out);
  }
  out.textContent = JSON.stringify({problems, loaded, column: column.width, height: document.documentElement.scrollHeight});
};
fitmmCheck(false);
window.addEventListener("load", () => setTimeout(() => fitmmCheck(true), 500));
</script>
"""


class Anchors(HTMLParser):
    """The ids and the internal links (href values) of an HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def parse(path: Path) -> Anchors:
    parser = Anchors()
    parser.feed(path.read_text(errors="replace"))
    return parser


def broken_links(page: Path, root: Path, cache: dict) -> list[str]:
    """Internal links of `page` whose file (under `root`) or #anchor does not exist."""
    problems = []
    for href in cache.setdefault(page, parse(page)).links:
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")):
            continue
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"broken link: {href}")
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in cache.setdefault(target, parse(target)).ids:
            problems.append(f"broken link: {href} (no #{parts.fragment} in {target.relative_to(root)})")
    return problems


def probe(chromium: str, page: Path) -> tuple[list[str], int]:
    """Load a copy of `page` holding the probe script; return what it found and the page's height (px)."""
    copy = page.with_name(f".check-{page.name}")
    text = page.read_text(errors="replace")
    copy.write_text(text.replace("</body>", PROBE + "</body>") if "</body>" in text else text + PROBE)
    result = None
    try:
        for _ in range(5):  # on a loaded machine Chromium sometimes dumps the DOM before the load event (a large
            # page, 3 s after start, whatever the virtual-time budget): then the end-of-body pass is what it found
            done = subprocess.run([chromium, *FLAGS, f"--window-size={WIDTH},2000", "--dump-dom", copy.as_uri()],
                                  capture_output=True, text=True, timeout=120)
            found = re.search(r'<pre id="fitmm-check"[^>]*>(.*?)</pre>', done.stdout, re.S)  # the theme adds tabindex
            if found:
                result = json.loads(unescape(found.group(1)))
                if result["loaded"]:
                    break
    finally:
        copy.unlink()
    if result is None:
        return [f"the probe did not run (chromium exit {done.returncode})"], 2000
    return result["problems"], min(int(result["height"]), MAX_HEIGHT)


def check(chromium: str, html: Path, shots: Path | None) -> dict[str, list[str]]:
    """Every page's problems (pages without any are left out); a screenshot of each page into `shots`."""
    pages = sorted(p for p in html.rglob("*.html") if p.name not in SKIP and not p.name.startswith(".")
                   and not {"_static", "_sources", "_images"} & set(p.relative_to(html).parts))
    cache, report = {}, {}
    for page in pages:
        name = str(page.relative_to(html))
        redirect = re.search(r'http-equiv="refresh" content="\d+;\s*url=([^"]+)"', page.read_text(), re.I)
        if redirect:  # index.html: a redirect to the root page, checked as a link
            missing = not (page.parent / redirect.group(1)).exists()
            print(f"{'FAIL' if missing else 'ok  '} {name} (redirect to {redirect.group(1)})")
            if missing:
                report[name] = [f"broken redirect: {redirect.group(1)}"]
            continue
        found, height = probe(chromium, page)
        problems = broken_links(page, html, cache) + found
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            shot = shots / (name.replace("/", "__").removesuffix(".html") + ".png")
            subprocess.run([chromium, *FLAGS, f"--window-size={WIDTH},{height}", f"--screenshot={shot}", page.as_uri()],
                           capture_output=True, timeout=120)
            if not shot.exists():
                problems.append("no screenshot")
        print(f"{'FAIL' if problems else 'ok  '} {name}")
        if problems:
            report[name] = problems
    return report


CRAFTED = """<html><head><style>article { width: 600px; }</style></head><body><main><article class="bd-article">
<section id="a"><h1>A page with every fault</h1><p>Text.</p>
<pre>Traceback (most recent call last):
  File "x.py", line 1</pre>
<table><tr><td style="min-width: 900px">a wide table with no scrolling box</td></tr></table>
<div style="overflow-x: auto"><table><tr><td style="min-width: 900px">a wide table that scrolls</td></tr></table></div>
<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==">
<figure><img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="><figcaption>A captioned figure.</figcaption></figure>
<a href="missing.html">a broken link</a> <a href="#nowhere">a broken anchor</a> <a href="#a">a good anchor</a>
<section id="b"><h2>An empty section</h2></section>
</section></article></main></body></html>"""
EXPECTED = ("traceback:", "empty section:", "table wider than the column", "figure without a caption", "broken link: missing.html",
            "broken link: #nowhere")


def self_test(chromium: str) -> int:
    """The check must report each fault of a crafted page once, and nothing on the faults' good twins."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "page.html").write_text(CRAFTED)
        problems = check(chromium, Path(tmp), None).get("page.html", [])
    missed = [e for e in EXPECTED if sum(p.startswith(e) for p in problems) != 1]
    if missed:
        print(f"self-test failed: expected one each of {missed}; found {problems}")
        return 1
    print(f"self-test: the check fails on a crafted page, as it should ({len(problems)} problems)")
    return 0


def main(argv: list[str]) -> int:
    chromium = argv[0]
    if argv[1:] == ["--self-test"]:
        return self_test(chromium)
    html, shots = Path(argv[1]).resolve(), Path(argv[2]).resolve()
    shutil.rmtree(shots, ignore_errors=True)
    report = check(chromium, html, shots)
    for page, problems in report.items():
        print(f"{page}:\n  " + "\n  ".join(problems))
    print(f"browser check: {len(report)} page(s) with problems; screenshots in {shots}")
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
