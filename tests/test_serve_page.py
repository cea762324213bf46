"""The service's page in a real headless Chromium (Selenium + Debian's chromium-driver).

Skipped, with the reason, when chromium or chromedriver is missing (`make system-deps` installs them).
"""

from __future__ import annotations

import base64
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from captioner.data.images import decode_image
from captioner.inference.api import Captioner
from captioner.serve import CaptionModel, create_app
from captioner.viz.overlay import HEATMAP, attention_map

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs chromium and chromedriver on PATH (`make system-deps` installs Debian's chromium, chromium-driver)",
)
WAIT_S = 60


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    """The app under uvicorn on 127.0.0.1 (a free port), in a thread; yields its base URL."""
    import uvicorn

    model = CaptionModel(Captioner.from_checkpoint(tiny_checkpoint, device="cpu"), checkpoint=tiny_checkpoint)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(model), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", model
    server.should_exit = True
    thread.join(timeout=WAIT_S)
    sock.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1100,800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait_state(driver, state: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") == state
    )


def _heat_pixels(driver) -> np.ndarray:
    """The heat canvas as (H, W, 4) uint8."""
    encoded, width, height = driver.execute_script(
        """
        const canvas = document.getElementById("heat");
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let text = "";
        for (let i = 0; i < data.length; i += 8192) text += String.fromCharCode.apply(null, data.subarray(i, i + 8192));
        return [btoa(text), canvas.width, canvas.height];
        """
    )
    return np.frombuffer(base64.b64decode(encoded), dtype=np.uint8).reshape(height, width, 4)


def _expected_heat(grid: list, size: tuple[int, int]) -> np.ndarray:
    """What captioner.viz.overlay draws for this word's grid at this size: the same rules."""
    rows, cols = len(grid), len(grid[0])
    return HEATMAP.colorize(attention_map(np.array(grid).ravel(), (rows, cols), size, smooth=True), rows * cols)


def _assert_heat_matches(pixels: np.ndarray, grid: list) -> None:
    height, width = pixels.shape[:2]
    expected = _expected_heat(grid, (width, height))
    assert (pixels[..., 3] == 255).all()
    same = (pixels[..., :3] == expected).all(axis=-1).mean()
    # Float rounding may move a rare pixel into the neighbouring colour-map entry.
    assert same > 0.99 and np.abs(pixels[..., :3].astype(int) - expected).max() <= 16


def test_the_header_names_the_metrics_in_words(server, browser):
    base_url, _ = server
    browser.get(base_url + "/")
    _wait_state(browser, "ready")
    metrics = {"test/BLEU-4": 0.9, "test/pointing_game": 0.824, "test/chance_pointing_game": 0.093, "test/METEOR": 0.5}
    header = browser.execute_script("return describeMetrics(arguments[0])", metrics)
    assert header == " · BLEU-4 0.900, pointing game 0.824, pointing game by chance 0.093"


def test_upload_caption_hover_focus_and_beam_size(server, browser, synth_data, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base_url, model = server
    source = sorted((synth_data / "test").glob("*.png"))[0]
    upload = tmp_path / "shapes.png"
    Image.open(source).convert("RGB").resize((320, 240), Image.Resampling.NEAREST).save(upload)
    # The service decodes an upload shrunk early to the model's scale (`decode_image`).
    shrunk, _ = decode_image(upload.read_bytes(), upload.name, target=model.captioner.image_size)
    expected = model.captioner.caption(shrunk, beam_size=3)[0]

    browser.get(base_url + "/")
    _wait_state(browser, "ready")
    assert "resnet18, 4×4 attention grid" in browser.find_element(By.ID, "model-info").text
    browser.find_element(By.ID, "file").send_keys(str(upload))
    _wait_state(browser, "captioned")

    words = browser.find_elements(By.CSS_SELECTOR, "button.word")
    assert [w.text for w in words] == expected.words
    assert f"score {expected.score:.3f}" in browser.find_element(By.ID, "score").text
    assert _heat_pixels(browser)[..., 3].max() == 0  # nothing drawn before a word is chosen
    result = browser.execute_script("return page.result")
    assert result["image"] == {"width": 320, "height": 240}

    ActionChains(browser).move_to_element(words[0]).perform()
    first = _heat_pixels(browser)
    assert first.shape == (240, 320, 4)
    _assert_heat_matches(first, result["attention"][0])
    assert "shown" in words[0].get_attribute("class")
    # Beside the map: the word's spread and deletion test, as the service computed them.
    word = result["faithfulness"][0]
    shown = browser.find_element(By.ID, "faithfulness").text
    assert shown.startswith(
        f"half of α on {round(100 * word['spread'])}% of the image · "
        f"without its look: {word['p']:.2f} → {word['p_no_look']:.2f}"
    )
    if word["faithful"] is None:
        assert shown.endswith(", does not depend on the image")
    else:
        assert shown.endswith(
            f"erasing cells by α: area {word['area_attention']:.2f}, random orders ≥ "
            f"{word['area_random_min']:.2f}: {'faithful' if word['faithful'] else 'not faithful'}"
        )
    ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#legend-ticks span")]
    assert ticks == [label.replace("\n", " ") for _, label in HEATMAP.legend(16)]

    # Keyboard: focus a word, arrow to the next one; its own map is drawn.
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()  # off the words
    browser.execute_script("arguments[0].focus()", words[0])
    words[0].send_keys(Keys.ARROW_RIGHT)
    assert browser.switch_to.active_element == words[1]
    second = _heat_pixels(browser)
    _assert_heat_matches(second, result["attention"][1])
    # On one scale, two near-uniform words may both be drawn all dark; maps that differ must differ.
    if (_expected_heat(result["attention"][0], (320, 240)) != _expected_heat(result["attention"][1], (320, 240))).any():
        assert (second != first).any()
    # The page's scale on a sharp look too (a tiny model's maps are near uniform, so all dark).
    sharp = np.full((4, 4), 0.4 / 15)
    sharp[1, 2] = 0.6
    browser.execute_script("page.result.attention[1] = arguments[0]; drawAttention(1);", sharp.tolist())
    drawn = _heat_pixels(browser)
    _assert_heat_matches(drawn, sharp.tolist())
    assert (drawn[..., :3].astype(int).sum(-1) > 300).any()  # bright where α = 0.6
    browser.save_screenshot(str(tmp_path / "serve_page.png"))
    words[1].send_keys(Keys.ESCAPE)
    browser.execute_script("document.activeElement.blur()")
    assert _heat_pixels(browser)[..., 3].max() == 0  # cleared when no word is chosen

    # The beam size control re-captions the image.
    beam = browser.find_element(By.ID, "beam")
    beam.clear()
    beam.send_keys("1", Keys.TAB)
    greedy = model.captioner.caption(shrunk, beam_size=1)[0]
    _wait_state(browser, "captioned")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT_S).until(lambda d: f"score {greedy.score:.3f}" in d.find_element(By.ID, "score").text)
    assert [w.text for w in browser.find_elements(By.CSS_SELECTOR, "button.word")] == greedy.words

    with Image.open(tmp_path / "serve_page.png") as shot:
        assert len(shot.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # image, heat map and text, not blank


def test_an_unreadable_file_shows_the_reason(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    base_url, _ = server
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image\n")
    browser.get(base_url + "/")
    _wait_state(browser, "ready")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    _wait_state(browser, "error")
    assert "notes.png: not an image file" in browser.find_element(By.ID, "status").text
