"""Render docs/demo_page.png: the operator page of a real, running ``pyfundus demo``, in headless Chromium.

Starts ``pyfundus demo`` (the shipped model, the sample photos when fetched) as a subprocess, waits for
the verdict line of the capture named by --after, opens the printed page address and saves a screenshot
of the page as the operator sees it then. Needs chromium and chromium-driver (Debian) and selenium.

    python scripts/make_demo_screenshot.py [--out docs/demo_page.png] [--after IMG_0011.jpg]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

WINDOW = (1400, 1250)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_window_size(*WINDOW)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])  # the page itself at WINDOW
    return driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "demo_page.png")
    parser.add_argument("--after", default="IMG_0011.jpg", help="take the screenshot once this capture is graded")
    args = parser.parse_args()
    demo = subprocess.Popen([sys.executable, "-m", "pyfundus.cli", "demo"], stdout=subprocess.PIPE, text=True)
    driver = None
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            sys.stdout.write(line)
            if match := re.match(r"operator page: (http://\S+)", line):
                driver = browser()
                driver.get(match.group(1))  # open while the camera plays: the page follows the events live
            elif re.match(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d  {re.escape(args.after)} ", line):
                assert driver is not None, "the demo printed no page address"
                shown = "return document.getElementById('file').textContent === arguments[0] && " \
                        "document.getElementById('thumb').naturalWidth > 0"
                deadline = time.monotonic() + 10
                while not driver.execute_script(shown, args.after) and time.monotonic() < deadline:
                    time.sleep(0.05)  # the event, then its thumbnail, reach the page
                driver.save_screenshot(str(args.out))
                print(f"screenshot: {args.out}")
                return 0
        print(f"the demo ended before {args.after} was graded", file=sys.stderr)
        return 1
    finally:
        if driver is not None:
            driver.quit()
        demo.terminate()
        demo.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
