"""Open the report site in a headless Chromium (the system's, through Playwright) and take screenshots.

    python -m evalkit.report.browser reports/site/index.html reports/site/dnerf/scenes/lego.html --out shots/

Used by the browser test (tests/report/test_report_html_browser.py) and to make the README's
screenshots. Playwright's own browser download is not needed: it drives ``/usr/bin/chromium``
(Debian's ``chromium`` package) or ``$EVALKIT_CHROMIUM``. The flags keep Chromium from stalling on a
closed network and let it run as root.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    """The Chromium executable: ``$EVALKIT_CHROMIUM``, else chromium / chromium-browser on PATH."""
    env = os.environ.get("EVALKIT_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def why_no_browser() -> str | None:
    """None when a headless browser can be driven here, else the reason."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the 'playwright' package is not installed (pip install -e '.[test]')"
    if find_chromium() is None:
        return "no chromium executable (apt-get install -y chromium, or set $EVALKIT_CHROMIUM)"
    return None


@dataclass
class PageLog:
    """What the page reported: console errors, uncaught exceptions, failed requests."""

    errors: list[str] = field(default_factory=list)


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[tuple[object, PageLog]]:
    """A fresh headless Chromium page (fresh profile) and the log of its errors."""
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        raise RuntimeError(why_no_browser() or "no chromium")
    with tempfile.TemporaryDirectory(prefix="evalkit-chromium-") as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": width, "height": height})
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            log = PageLog()
            page.on("console", lambda m: log.errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: log.errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: log.errors.append(f"request failed: {r.url} ({r.failure})"))
            yield page, log
        finally:
            ctx.close()


def open_site_page(page, path: Path, timeout_ms: int = 30000) -> None:
    """Load a site page from disk and wait until every plot is drawn and every image loaded."""
    page.goto(Path(path).resolve().as_uri())
    page.wait_for_function("Array.from(document.querySelectorAll('div.plot')).every(d => d.dataset.ready === '1')",
                           timeout=timeout_ms)
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=timeout_ms)


def screenshot(pages: list[Path], out: Path, full_page: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with browser_page() as (page, log):
        for p in pages:
            open_site_page(page, p)
            target = out / f"{p.parent.name}_{p.stem}.png" if p.stem != "index" else out / "index.png"
            page.screenshot(path=str(target), full_page=full_page)
            written.append(target)
        if log.errors:
            raise RuntimeError("the site reported errors: " + "; ".join(log.errors))
    return written


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a tool
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--viewport-only", action="store_true", help="Screenshot the first screen, not the whole page.")
    a = ap.parse_args(argv)
    for p in screenshot(a.pages, a.out, full_page=not a.viewport_only):
        print(f"wrote {p}")


if __name__ == "__main__":  # pragma: no cover
    main()
