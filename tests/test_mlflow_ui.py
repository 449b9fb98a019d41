"""nfp's runs in the MLflow UI, as a user sees them: a real `mlflow server`, a real headless Chromium (Debian's,
driven by Playwright).

`make test` installs Chromium with apt-get when it is missing and it runs as root; elsewhere these tests skip,
saying how to get it (`sudo apt-get install chromium`).
"""

import re
import shutil
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from nfp.config import load_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium to drive: `sudo apt-get install chromium` (Debian), or `make test` as root"
)
# Headless, and no calls home: this machine's network refuses them, many at a time.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
FRAME_PX = 16  # tiny_overrides' frames; nfp draws them 4× (64 px) in the strips


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def test_the_prediction_strips_read_well_in_the_mlflow_ui(
    mlflow_server, tiny_overrides, monkeypatch, tmp_path, capsys, page
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from nfp.training.train import train

    cfg = load_config(None, [*tiny_overrides, "tracking.experiment=ui", "tracking.log_model=false"])
    run_id = train(cfg)["run_id"]
    import mlflow

    # The full-size image of clip 0 at step 0 (the untrained model), as logged: MLflow files key
    # "predictions/clip_0" as images/predictions~clip_0+step+0+….png, with a 256 px .webp thumbnail beside it.
    (logged,) = [
        a.path
        for a in mlflow.MlflowClient().list_artifacts(run_id, "images")
        if a.path.startswith("images/predictions~clip_0+step+0+") and a.path.endswith(".png")
    ]
    logged = Image.open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=logged, dst_path=tmp_path))

    # nfp's last line links the run's page, opened in MLflow's model-training views (MLflow 3 defaults to GenAI).
    (link,) = re.findall(rf"MLflow run {run_id} \((http://\S+)\)$", capsys.readouterr().err, re.MULTILINE)
    # clip 0's card: the innermost block with its title and an image, and no other clip's (before clip 0's image is
    # drawn, the innermost block with an image is the row holding every card). MLflow up to 3.17 links the image's
    # artifact; 3.18 fetches it and draws it from a blob: the artifacts the page fetched tell which image it is.
    fetched = []
    page.on("request", lambda request: fetched.append(urllib.parse.unquote(request.url)))
    drawn = "img[src*='get-artifact'], img[src^='blob:']"
    other_clip = page.get_by_text(re.compile(r"^predictions/clip_[1-9]\d*$"))
    card = page.locator("div").filter(has=page.get_by_text("predictions/clip_0", exact=True)).filter(
        has=page.locator(drawn), has_not=other_clip
    ).last  # fmt: skip
    image = card.locator(drawn).first
    for attempt in range(3):  # the UI under load can leave a card's image undrawn: the page again, as a person would
        page.goto(link)
        page.get_by_role("tab", name="Model metrics").click()
        try:
            image.wait_for(state="visible", timeout=30_000)
            break
        except PlaywrightTimeout:
            page.screenshot(path=tmp_path / f"model-metrics-undrawn-{attempt}.png")
            if attempt == 2:
                raise
    page.screenshot(path=tmp_path / "model-metrics.png")
    assert page.get_by_role("link", name="Runs").count() and not page.get_by_text("Evaluation runs").count()
    assert page.get_by_text("predictions/clip_1", exact=True).count()  # one card per clip

    # The step slider opens on step 0, and there is an image for it.
    assert card.get_by_role("spinbutton").input_value() == "0"
    src = urllib.parse.unquote(image.get_attribute("src"))
    step_0 = "clip_0+step+0+"
    assert step_0 in src or (src.startswith("blob:") and any(step_0 in url for url in fetched))
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())

    # MLflow lists the run's params above the image (its "Show run parameters", on in a fresh browser, untouched
    # here): nfp logs the few that runs are compared by, so the strip is in view at the default card size, big
    # enough to read.
    page.wait_for_timeout(1000)
    shown, inside = image.bounding_box(), card.bounding_box()
    page.screenshot(path=tmp_path / "strip-card.png")
    assert inside["y"] <= shown["y"] and shown["y"] + shown["height"] <= inside["y"] + inside["height"]
    frame_on_screen = FRAME_PX * 4 * max(shown["width"], shown["height"]) / max(logged.size)
    assert frame_on_screen >= 40, f"frames drawn {frame_on_screen:.0f} px in the card"

    # A click shows the strip at full size: frames at 64 px, labelled rows as nfp drew them.
    image.click()
    full = page.locator("img.rc-image-preview-img")
    full.wait_for(state="visible")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=full.element_handle())
    assert full.evaluate("img => [img.naturalWidth, img.naturalHeight]") == list(logged.size)
    page.screenshot(path=tmp_path / "strip-full.png")
    pixels = np.asarray(Image.open(tmp_path / "strip-full.png").convert("L"))
    assert pixels.std() > 20  # an image is on screen, not a blank overlay
