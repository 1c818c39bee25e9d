"""Render docs/mark_rating.png and docs/mark_admin.png from the real rating app in headless Chromium.

A temporary dataset holds licence-clear sample photos (CHASE_DB1 and HRF, CC-BY-4.0; scikit-image's retina,
CC0) and degraded copies of them (pyfundus.data.degrade). Six raters' opinions are drawn around each copy's
proxy MOS (pyfundus.data.proxy) through the app's own store; the admin marks four reference images. Then the
shipped model scores every image (for the uncertain-first order and the view after a commit), the real
server runs, and Selenium, like a rater, types a score on the rating page and opens the admin's
disagreement view. Needs chromium, chromium-driver and the fetched samples (pyfundus data fetch-samples).

    python scripts/make_mark_screenshots.py [--out docs] [--samples ~/.cache/pyfundus/samples]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pyfundus.api import load_model
from pyfundus.data.degrade import degrade
from pyfundus.data.proxy import proxy_mos
from pyfundus.data.samples import samples_dir
from pyfundus.io import read_image
from pyfundus.mark.order import score_unscored
from pyfundus.mark.server import MarkServer
from pyfundus.mark.store import Store

SOURCES = ("CHASEDB1_08L.png", "CHASEDB1_12R.png", "HRF_04_g.jpg", "HRF_07_dr.jpg", "skimage_retina.png")
VARIANTS = 3  # degraded copies per source photo, besides the clean one
RATERS = (("ana", "senior", True), ("ben", "senior", False), ("chen", "senior", False),
          ("dara", "junior", False), ("eli", "junior", False), ("fay", "junior", False))  # fmt: skip
PASSWORD = "screenshot-password"
WINDOW = (1400, 900)


def build_dataset(samples: Path, folder: Path, rng: np.random.Generator) -> dict[str, float]:
    """Clean and degraded JPEGs named as a camera would; returns each file's proxy MOS."""
    truth = {}
    number = 0
    for source in SOURCES:
        photo = read_image(samples / source).pixels
        scale = 1200 / max(photo.shape[:2])  # keep the demo light; the viewer zooms anyway
        photo = np.asarray(Image.fromarray(photo).resize((round(photo.shape[1] * scale), round(photo.shape[0] * scale))))
        versions = [(photo, 95.0)]
        for _ in range(VARIANTS):
            degraded, record = degrade(photo, rng)
            versions.append((degraded, proxy_mos([step["severity"] for step in record.steps])))
        for pixels, mos in versions:
            number += 1
            name = f"2026-11-23_{9 + number // 6:02d}{number % 6 * 9:02d}_{'R' if number % 2 else 'L'}.jpg"
            Image.fromarray(pixels).save(folder / name, quality=90)
            truth[name] = mos
    return truth


def level_of(score: float) -> str:
    return "Good" if score >= 70 else "Reject" if score < 40 else "Usable"


def seed_opinions(store: Store, truth: dict[str, float], rng: np.random.Generator, skip: set[str]) -> None:
    """Every rater but ``skip`` scores every image: the proxy MOS plus a rater's bias and noise."""
    images = {image.path: image.id for image in store.rating_set()}
    for name, level, _ in RATERS:
        if name in skip:
            continue
        rater = store.rater(name)
        bias = rng.normal(0, 4)
        for path, image_id in images.items():
            noise = rng.normal(0, 14 if rng.uniform() < 0.15 else 5)  # now and then a rater sees it very differently
            score = int(np.clip(round(truth[path] + bias + noise), 0, 100))
            store.set_opinion(rater, image_id, score, level_of(score + rng.normal(0, 3)))


def add_references(store: Store, truth: dict[str, float]) -> None:
    admin = store.rater("ana")
    comments = {"Good": "Vessels sharp to the periphery; disc and macula well lit.",
                "Usable": "Gradable centre; the periphery is soft. Enough for DR screening.",
                "Reject": "Macula not gradable: retake."}  # fmt: skip
    by_path = {image.path: image.id for image in store.images()}
    ranked = sorted(truth, key=truth.get)
    for path in (ranked[-1], ranked[len(ranked) * 3 // 4], ranked[len(ranked) // 2], ranked[1]):
        score = int(round(truth[path]))
        store.set_anchor(admin, by_path[path], score, level_of(score), comments[level_of(score)])


def screenshots(url: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_window_size(*WINDOW)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])  # the page itself at WINDOW
    wait = WebDriverWait(driver, 20, poll_frequency=0.05)

    def log_in(name: str) -> None:
        driver.delete_all_cookies()
        driver.get(url)
        wait.until(lambda d: d.find_element(By.ID, "login-name").is_displayed())
        driver.find_element(By.ID, "login-name").send_keys(name)
        driver.find_element(By.ID, "login-password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-submit").click()
        picture_loaded()

    def picture_loaded(element: str = "photo") -> None:
        wait.until(lambda d: d.execute_script(f"const i = document.getElementById('{element}');"
                                              "return !i.hidden && i.complete && i.naturalWidth > 0"))  # fmt: skip
        time.sleep(0.3)  # the field-of-view fit runs on load

    try:
        log_in("fay")  # a junior rater: commits one image, then types the next one's score
        ActionChains(driver).send_keys("6", "4", "u", Keys.ENTER).perform()
        wait.until(lambda d: d.find_element(By.ID, "after").is_displayed())
        picture_loaded()
        ActionChains(driver).send_keys("8", "1", Keys.ARROW_DOWN, "g").perform()
        driver.save_screenshot(str(out / "mark_rating.png"))

        log_in("ana")
        driver.find_element(By.ID, "tab-admin").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#queue tr[data-id]"))
        for row in driver.find_elements(By.CSS_SELECTOR, "#queue tr[data-id]"):  # one whose raters chose two classes
            row.click()
            classes = {cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#detail-opinions .tag")}
            if len(classes) > 1:
                break
        picture_loaded("admin-photo")
        driver.find_element(By.ID, "adjust-reason").send_keys("Discussed at the weekly review (minutes of 2026-11-25)")
        driver.save_screenshot(str(out / "mark_admin.png"))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--samples", type=Path, default=None, help="the fetched sample photos (default: the cache)")
    args = parser.parse_args()
    samples = args.samples or samples_dir()
    rng = np.random.default_rng(20)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "clinic-captures-2026-11"
        dataset.mkdir()
        truth = build_dataset(samples, dataset, rng)
        store = Store(dataset)
        store.scan()
        score_unscored(store, load_model())  # what `pyfundus mark serve --order uncertain` does first
        for name, level, admin in RATERS:
            store.add_rater(name, level, PASSWORD, admin=admin, actor="screenshot script")
        add_references(store, truth)
        seed_opinions(store, truth, rng, skip={"fay"})
        server = MarkServer(store, port=0, order="uncertain")
        server.start()
        try:
            screenshots(server.url, args.out)
        finally:
            server.close()
            store.close()
    for name in ("mark_rating.png", "mark_admin.png"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
