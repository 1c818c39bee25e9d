"""The rating page end to end in a real headless Chromium (Selenium + Debian's chromium and chromium-driver).

A senior and a junior rater log in and score tiny images with the keyboard only; a reload, and a restart of
the server, resume each where they left off; neither sees the other's opinion before committing their own;
the admin opens the disagreement queue and adjusts one image; then `pyfundus mark export` must give what
`pyfundus mark aggregate` gives for the same opinions. Without chromium/chromedriver the test skips, except in
CI (CI=true), where its absence is a failure.
"""

from __future__ import annotations

import csv
import shutil

import pytest
from conftest import skip_or_fail
from mark_helpers import PASSWORDS, add_raters, make_dataset

from pyfundus.cli import main
from pyfundus.mark.order import rater_order
from pyfundus.mark.server import MarkServer
from pyfundus.mark.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900")  # fmt: skip
NAMES = ["p1.png", "p2.png", "p3.png", "p4.png"]


@pytest.fixture
def browser():
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        skip_or_fail(f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would otherwise try to download one (offline here).
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The rating page as a rater drives it: keys go to the page, as a person types them."""

    def __init__(self, driver, url: str) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url, self.By = driver, url, By
        # The page rebuilds its tables when data arrives: an element read mid-rebuild is looked up again.
        wait = WebDriverWait(driver, 10, poll_frequency=0.02, ignored_exceptions=(StaleElementReferenceException,))
        self.wait_until = lambda condition, what: wait.until(condition, what)

    def text(self, element_id: str) -> str:
        return self.driver.find_element(self.By.ID, element_id).text

    def shown(self, element_id: str) -> bool:
        return self.driver.find_element(self.By.ID, element_id).is_displayed()

    def caption(self) -> str:
        return self.text("caption").rsplit(" (", 1)[0]

    def log_in(self, name: str) -> None:
        self.driver.get(self.url)
        self.wait_until(lambda d: self.shown("login-view"), "the login form")
        self.driver.find_element(self.By.ID, "login-name").send_keys(name)
        self.driver.find_element(self.By.ID, "login-password").send_keys(PASSWORDS[name])
        self.driver.find_element(self.By.ID, "login-submit").click()
        self.wait_for_image()

    def wait_for_image(self) -> None:
        self.wait_until(lambda d: self.shown("rate-view") and self.text("caption")
                        and d.execute_script("const i = document.getElementById('photo');"
                                             "return i.complete && i.naturalWidth > 0"), "the image")  # fmt: skip

    def keys(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        chain = ActionChains(self.driver)
        for key in keys:
            chain.send_keys(key)
        chain.perform()

    def rate(self, *keys: str, saved: str) -> None:
        """Type a score and class, press Enter, wait for the page to say it saved ``saved``."""
        from selenium.webdriver.common.keys import Keys

        self.keys(*keys, Keys.ENTER)
        self.wait_until(lambda d: self.text("status").startswith(f"Saved {saved}") or "All" in self.text("status"),
                        f"{saved} saved")  # fmt: skip
        self.wait_for_image()

    def status_of(self, path: str) -> int:
        """What the server answers this browser (its cookie, its origin) for ``path``."""
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then((r) => done(r.status));", path)

    def log_out(self) -> None:
        self.driver.find_element(self.By.ID, "logout").click()
        self.wait_until(lambda d: self.shown("login-view"), "the login form after logging out")


def test_two_raters_score_by_keyboard_blind_resume_and_the_admin_adjusts_what_the_export_then_holds(tmp_path, browser):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    dataset = make_dataset(tmp_path / "captures", NAMES)
    store = Store(dataset)
    store.scan()
    add_raters(store)
    images = store.rating_set()
    ana_order = [i.path for i in rater_order(images, "ana", "random")]
    ben_order = [i.path for i in rater_order(images, "ben", "random")]
    by_name = {i.path: i.id for i in images}
    server = MarkServer(store, port=0)
    server.start()
    page = Page(browser, server.url)

    # ana (senior): digits, arrows, class keys, Enter; the page moves to her next unscored image each time.
    page.log_in("ana")
    assert page.caption() == ana_order[0] and page.text("progress") == "0 / 4 scored"
    assert page.text("score-value") == "–" and not page.shown("after")
    first = ana_order[0]
    page.rate("8", "2", "g", saved=first)  # 82, Good
    assert page.caption() == ana_order[1] and page.text("progress") == "1 / 4 scored"
    page.rate("4", "5", Keys.ARROW_UP, Keys.ARROW_UP, Keys.PAGE_DOWN, "u", saved=ana_order[1])  # 45 + 2 - 10 = 37
    assert page.text("progress") == "2 / 4 scored"
    browser.refresh()
    page.wait_for_image()
    assert page.caption() == ana_order[2] and page.text("progress") == "2 / 4 scored", "a reload resumes"
    page.log_out()

    # The server restarts (same dataset, new process state, new port): ben's session starts on it.
    server.close()
    store.close()
    store = Store(dataset)
    server = MarkServer(store, port=0)
    server.start()
    page = Page(browser, server.url)

    # ben (junior) reaches ana's first image; before he commits, nothing of hers is on his screen or his to fetch.
    page.log_in("ben")
    assert page.text("progress") == "0 / 4 scored"
    while page.caption() != first:
        page.keys(Keys.ARROW_RIGHT)
        page.wait_for_image()
    assert not page.shown("after") and "ana" not in browser.find_element(page.By.TAG_NAME, "body").text
    assert page.status_of(f"/api/image/{by_name[first]}/after") == 403
    page.rate("3", "0", "r", saved=first)  # 30, Reject
    page.wait_until(lambda d: page.shown("after") and "ana" in page.text("after-body"), "the others' opinions")
    assert "ana senior 82 Good" in page.text("after-body") and page.text("after-title").endswith(first)
    browser.refresh()
    page.wait_for_image()
    assert page.caption() == next(n for n in ben_order if n != first), "ben resumes at his first unscored image"
    page.log_out()

    # ana, back after the restart, resumes at her third image; she has not committed on anything ben did since.
    page.log_in("ana")
    assert page.caption() == ana_order[2] and page.text("progress") == "2 / 4 scored"
    page.log_out()

    # The admin: the disagreement queue holds the image ana and ben disagree on; she adjusts it.
    page.log_in("cleo")
    browser.find_element(page.By.ID, "tab-admin").click()
    page.wait_until(lambda d: len(d.find_elements(page.By.CSS_SELECTOR, "#queue tr[data-id]")) == 1, "the queue")
    row = browser.find_element(page.By.CSS_SELECTOR, "#queue tr[data-id]")
    assert row.text.split() == [first, "64.67", "Good", "36.77", "2"]  # (2 x 82 + 30) / 3; |82 - 30| / sqrt 2
    row.click()
    page.wait_until(lambda d: page.shown("detail"), "the image's opinions")
    assert "ana senior 82 Good yes" in page.text("detail-opinions") and "ben junior 30 Reject yes" in page.text("detail-opinions")
    score = browser.find_element(page.By.ID, "adjust-score")
    score.clear()
    score.send_keys("60")
    Select(browser.find_element(page.By.ID, "adjust-level")).select_by_visible_text("Usable")
    browser.find_element(page.By.ID, "adjust-reason").send_keys("discussed: the periphery is soft, the macula sharp")
    browser.find_element(page.By.ID, "adjust-save").click()
    page.wait_until(lambda d: "60 Usable" in d.find_element(page.By.CSS_SELECTOR, "#queue tr[data-id]").text,
                    "the adjustment in the queue")  # fmt: skip
    server.close()
    store.close()

    # The export holds what aggregating the same opinions gives, with the admin's adjustment on top.
    out, agg = tmp_path / "export", tmp_path / "aggregate"
    assert main(["mark", "export", "-d", str(dataset), "--out", str(out), "--json"]) == 0
    assert main(["mark", "aggregate", str(out / "ratings.csv"), "--out", str(agg), "--no-plots"]) == 0
    assert (out / "mos.csv").read_text() == (agg / "mos.csv").read_text()
    with open(agg / "mos.csv", newline="") as f:
        aggregated = {row["file_name"]: row for row in csv.DictReader(f)}
    with open(out / "labels.csv", newline="") as f:
        labels = {row["file_name"]: row for row in csv.DictReader(f)}
    assert set(labels) == set(aggregated) == {first, ana_order[1]}
    assert aggregated[first]["meanOpinionScore"] == "64.67" and labels[first]["meanOpinionScore"] == "60.00"
    assert labels[first]["qualityLevel"] == "1", "Usable, as adjusted"
    other = ana_order[1]
    assert (aggregated[other]["meanOpinionScore"], aggregated[other]["qualityLevel"]) == ("37.00", "Usable")
    assert (labels[other]["meanOpinionScore"], labels[other]["qualityLevel"]) == ("37.00", "1")
