"""The page of `unlearnable serve` in a real headless browser (Debian's Chromium): two bad
inputs, then three images protected at the lowest strength, progress to 100%, the
before / after view, the zip downloaded and checked, and the check's verdict and chart.

With UNLEARNABLE_SCREENSHOTS=DIR the main states are saved there as PNG (docs/protect.md)."""

import io
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_harness import TINY, TOKEN, photo_png, reference_npz, start_server
from unlearnable.serve import Options

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
                                reason="needs Debian's chromium and chromium-driver (make test installs them as root)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    root = tmp_path_factory.mktemp("browser")
    options = Options(reference=reference_npz(root / "ref.npz"), device="cpu", protect=TINY,
                      verify={"epochs": 1, "mi": False, "attackers": False})
    server = start_server(root / "work", options)
    downloads = root / "downloads"
    downloads.mkdir()
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    # The closed network refuses Chromium's background connections; these flags keep it quiet.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,1000", f"--user-data-dir={root / 'profile'}"):
        o.add_argument(flag)
    o.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                        "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=o, service=Service(DRIVER))
    driver.get(f"{server.url}/?token={TOKEN}")
    try:
        yield driver, server, root, downloads
    finally:
        driver.quit()
        server.stop()


def wait_for(check, timeout=180, what="the page"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not get there in {timeout} s")


def shot(driver, name, element=None):
    folder = os.environ.get("UNLEARNABLE_SCREENSHOTS")
    if folder:
        from selenium.webdriver.common.by import By
        driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.ID, element or "choose"))
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"serve-{name}.png"))


def message(driver):
    from selenium.webdriver.common.by import By
    m = driver.find_element(By.ID, "message")
    return m.text if m.is_displayed() else ""


def test_the_page_protects_shows_downloads_and_checks(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    driver, server, root, downloads = page
    find = lambda i: driver.find_element(By.ID, i)  # noqa: E731
    wait_for(lambda: "at most" in find("limits").text, 30, "the limits line")
    shot(driver, "1-choose")

    # Bad input 1: nothing chosen.
    find("start").click()
    assert "choose one or more images" in wait_for(lambda: message(driver), 10)

    # Bad input 2: a file that is not an image, and a zip entry that points outside the zip.
    notes = root / "notes.png"
    notes.write_bytes(b"a text file with a picture's name")
    bad_zip = root / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as z:
        z.writestr("../escape.png", photo_png(0))
    find("files").send_keys(f"{notes}\n{bad_zip}")
    find("start").click()
    text = wait_for(lambda: "none of the files" in message(driver) and message(driver), 30)
    assert "notes.png" in text and "not an image" in text and "outside" in text
    assert not list(root.rglob("escape.png")) and not find("start").get_attribute("disabled")
    shot(driver, "2-bad-input", "start")

    # Three images at the lowest strength.
    originals = {}
    for i in range(3):
        path = root / f"photo{i}.png"
        path.write_bytes(photo_png(i, 150, 110, 2))
        originals[path.name] = path
    files = find("files")
    files.clear()
    files.send_keys("\n".join(str(p) for p in originals.values()))
    Select(find("strength")).select_by_value("low")
    find("start").click()
    wait_for(lambda: find("progress-box").is_displayed(), 30, "the progress bar")
    shot(driver, "3-progress", "progress-box")
    wait_for(lambda: find("pct").text == "100%" and find("results").is_displayed(), 240, "100%")
    assert message(driver) == ""
    rows = driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == sorted(originals)
    imgs = driver.find_elements(By.CSS_SELECTOR, "#images tbody img")
    assert len(imgs) == 9
    for img in imgs:
        driver.execute_script("arguments[0].scrollIntoView()", img)
        wait_for(lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img),
                 30, "a preview")
    assert "3 image(s) protected" in find("summary").text and "budget of 4/255" in find("summary").text
    shot(driver, "4-results", "results")

    # The download: a zip of lossless PNGs within the budget, and the manifest.
    find("download").click()
    zpath = wait_for(lambda: [p for p in downloads.glob("*.zip")], 60, "the download")[0]
    with zipfile.ZipFile(zpath) as z:
        assert sorted(z.namelist()) == ["manifest.json", *sorted(originals)]
        for name, src in originals.items():
            with Image.open(io.BytesIO(z.read(name))) as a, Image.open(src) as b:
                assert a.format == "PNG" and a.size == b.size
                diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
            assert 0 < diff.max() <= 4

    # Check it: the verdict as verify writes it, the table and the chart.
    find("verify").click()
    verdict = wait_for(lambda: find("verify-box").is_displayed() and find("verdict").text, 240, "the verdict")
    report = server.call("GET", f"/api/jobs/{driver.execute_script('return jobId')}")[1]["verify_result"]["report"]
    assert verdict == report["verdict"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#verify-table tbody tr")) == 2 * len(report["results"])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#chart svg rect")) == 2 + 2 * len(report["results"])
    shot(driver, "5-check", "verify")

    # Reloading the page shows the same job, finished.
    driver.refresh()
    wait_for(lambda: find("results").is_displayed() and find("pct").text == "100%", 30, "the reloaded page")
    shutil.rmtree(downloads)
