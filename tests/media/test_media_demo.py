"""The Gradio demo in a real headless browser (Debian chromium + chromedriver, Selenium)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket

import numpy as np
import pytest

from media_helpers import FACES_MISSING

MISSING = [m for m in ("gradio", "selenium") if importlib.util.find_spec(m) is None]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(bool(FACES_MISSING), reason=f"face extra not installed (missing {FACES_MISSING}): pip install -e '.[faces]'"),
    pytest.mark.skipif(bool(MISSING), reason=f"demo extra not installed (missing {MISSING}): pip install -e '.[demo]'"),
    pytest.mark.skipif(not (CHROMIUM and DRIVER),
                       reason="no headless browser: apt-get install -y chromium chromium-driver"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def test_demo_in_headless_chromium(media_dir, tiny_detector, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from r2m.demo import build_demo
    from r2m.predict import Predictor

    predictor = Predictor(tiny_detector, device="cpu", n_frames=4)
    port = _free_port()
    demo = build_demo(predictor)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False,
                ssr_mode=False, quiet=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 90)
        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#r2m-upload input[type=file]")))
        before = _png(driver.get_screenshot_as_png())
        upload.send_keys(str(media_dir["video"]))
        wait.until(EC.text_to_be_present_in_element((By.ID, "r2m-verdict"), "p(fake) ="))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#r2m-faces img")) >= 4)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#r2m-plot img, #r2m-plot svg, #r2m-plot canvas"))
        verdict = driver.find_element(By.ID, "r2m-verdict").text
        assert "moving.mp4" in verdict and ("FAKE" in verdict or "REAL" in verdict) and "4 frame(s)" in verdict
        shot_path = tmp_path / "demo.png"
        driver.save_screenshot(str(shot_path))
        if os.environ.get("R2M_SCREENSHOT_DIR"):  # keep the screenshot for a person to look at
            shutil.copy(shot_path, os.path.join(os.environ["R2M_SCREENSHOT_DIR"], "demo.png"))
        shot = _png(shot_path.read_bytes())
        assert shot.shape[1] >= 1000 and shot.shape[0] >= 800
        assert np.abs(shot.astype(int) - before.astype(int)).sum(-1).astype(bool).mean() > 0.02  # the page changed
        # the score-over-time line (#c0392b) is on the screen
        red = (np.abs(shot[..., 0].astype(int) - 192) < 30) & (shot[..., 1] < 90) & (shot[..., 2] < 90)
        assert red.sum() > 50, red.sum()
        faces = _png(driver.find_element(By.ID, "r2m-faces").screenshot_as_png)
        assert faces.std() > 20  # face crops, not an empty panel
    finally:
        driver.quit()
        demo.close()
