"""Make the README's two pictures again: a prediction strip and a run in the MLflow UI (and, with --sweep, the
docs' two pictures of a sweep).

    .venv/bin/python docs/pictures.py            # writes docs/img/strip.png and docs/img/mlflow-run.png
    .venv/bin/python docs/pictures.py --sweep    # also docs/img/sweep-runs.png and docs/img/sweep-history.png

It trains the quickstart config (`make quickstart`'s run, without the logged model: 1.5 minutes on 2 CPU cores)
into a temporary directory, tracked by a local `mlflow server` it starts on 127.0.0.1 (sqlite backend, artifacts
in the temporary directory); copies the prediction strip the run logged for its first validation clip at the last
epoch, and screenshots the run's *Model metrics* page in Debian's Chromium driven by Playwright (as
tests/test_mlflow_ui.py does). With --sweep, it then runs `nfp sweep -c configs/quickstart.yaml` (its 4 trials, no
model logged: 4 minutes more) into an experiment of its own, screenshots the study's run with its trials under it in
the runs table, and copies the optimisation history the study logged. The server is stopped and the temporary
directory removed at the end. Needs the test extra (playwright) and `chromium`.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# The quickstart as `make quickstart` trains it (600 clips, 3 epochs), with two strips per epoch and no model logged.
OVERRIDES = ["train.images.num_clips=2", "tracking.log_model=false"]
# Headless, and no calls home (tests/test_mlflow_ui.py's flags).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
STRIP_KB, PAGE_KB = 100, 150
WIDTH, HEIGHT = 1280, 960  # the browser's viewport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", f"{tmp}/artifacts",
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "ab"), start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(tmp / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server not healthy after 90 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: it and its workers, nothing else
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def train(tmp: Path, uri: str) -> tuple[str, str]:
    """(run id, the run's page in the UI) of the quickstart run."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # the nfp beside this script
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=path)
    command = [sys.executable, "-m", "nfp", "train", "-c", "configs/quickstart.yaml", *OVERRIDES,
               f"data.dir={tmp}/data", f"train.output_dir={tmp}/out"]  # fmt: skip
    print("$", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr[-3000:])
    if done.returncode:
        raise SystemExit(f"nfp train failed (exit {done.returncode})")
    found = re.findall(r"MLflow run (\w+) \((http://\S+)\)$", done.stderr, re.MULTILINE)
    if not found:
        raise SystemExit("nfp train printed no link to its run")
    return found[-1]


def copy_strip(run_id: str, tmp: Path, out: Path) -> int:
    """The logged strip of the first validation clip at the last epoch, scaled down to a small PNG; that step."""
    import mlflow

    pattern = re.compile(r"images/predictions~clip_0\+step\+(\d+)\+.*\.png$")
    logged = {
        int(m.group(1)): a.path
        for a in mlflow.MlflowClient().list_artifacts(run_id, "images")
        if (m := pattern.match(a.path))
    }
    if not logged:
        raise SystemExit("the run logged no prediction strip for clip 0")
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=logged[max(logged)], dst_path=str(tmp))
    image = Image.open(path).convert("L")
    if image.width > 640:
        image = image.resize((640, round(image.height * 640 / image.width)), Image.Resampling.LANCZOS)
    save_small(image, out / "strip.png", STRIP_KB)
    return max(logged)


def screenshot(link: str, step: int, tmp: Path, out: Path) -> Path:
    """The run's Model metrics page in a 1280×960 browser, the prediction cards at `step`, charts drawn."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no Chromium: sudo apt-get install chromium")
    shot = tmp / "page.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(link)
            page.get_by_role("tab", name="Model metrics").click()
            image = page.locator("img[src*='get-artifact']").first
            image.wait_for(state="visible", timeout=90_000)
            for box in page.get_by_role("spinbutton").all():  # each card's step: the trained model's predictions
                box.fill(str(step))
                box.press("Enter")
                box.blur()
            page.wait_for_timeout(1000)
            for img in page.locator("img[src*='get-artifact']").all():
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
            page.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(3000)  # the charts' last redraw
            # The run's panel, without MLflow's assistant beside it (open in a fresh browser; closing it widens the
            # cards past their images' height, which cuts the strips off).
            add_chart = page.get_by_role("button", name="Add chart").first.bounding_box()
            right = min(WIDTH, add_chart["x"] + add_chart["width"] + 16)
            page.screenshot(path=shot, clip={"x": 0, "y": 0, "width": right, "height": HEIGHT})
        finally:
            browser.close()
    return save_small(Image.open(shot).convert("RGB"), out / "mlflow-run.png", PAGE_KB)


SWEEP_EXPERIMENT = "nfp-quickstart-sweep"


def sweep(tmp: Path, uri: str) -> tuple[str, str]:
    """(experiment id, the study's run id) of the quickstart's sweep."""
    import mlflow

    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=path)
    command = [sys.executable, "-m", "nfp", "sweep", "-c", "configs/quickstart.yaml", "tracking.log_model=false",
               f"tracking.experiment={SWEEP_EXPERIMENT}", f"data.dir={tmp}/data", f"sweep.output_dir={tmp}/sweeps"]  # fmt: skip
    print("$", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    print(done.stdout[-2000:])
    found = re.findall(r"^sweep: study '[^']+' \(run (\w+)\)", done.stdout, re.MULTILINE)
    if done.returncode or not found:
        raise SystemExit(f"nfp sweep failed (exit {done.returncode})")
    return mlflow.get_experiment_by_name(SWEEP_EXPERIMENT).experiment_id, found[-1]


def screenshot_sweep(uri: str, experiment_id: str, tmp: Path, out: Path) -> Path:
    """The experiment's runs table with the study's run expanded: its trials under it."""
    from playwright.sync_api import sync_playwright

    shot = tmp / "sweep-page.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 480})
            page.goto(f"{uri}/#/experiments/{experiment_id}/runs")
            page.get_by_role("columnheader", name="Run Name").first.wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(2000)
            if page.get_by_role("button", name="Got it").count():  # a first visit's tip
                page.get_by_role("button", name="Got it").first.click()
            assistant = page.get_by_text("MLflow Assistant").first
            if assistant.count() and assistant.is_visible():  # open in a fresh browser, beside the table: closed
                box = assistant.bounding_box()
                page.mouse.click(WIDTH - 36, box["y"] + box["height"] / 2)
            page.locator("button[data-component-id$='runnamecellrenderer.tsx_46']").first.click()  # the study's +
            page.wait_for_timeout(1500)
            header = page.get_by_role("columnheader", name="Run Name").first.bounding_box()
            edge, y = header["x"] + header["width"] - 2, header["y"] + header["height"] / 2
            page.mouse.move(edge, y)  # widen the names' column: the trials' names in full
            page.mouse.down()
            page.mouse.move(edge + 90, y, steps=10)
            page.mouse.up()
            page.wait_for_timeout(1000)
            page.screenshot(path=shot, clip={"x": 0, "y": 0, "width": WIDTH, "height": 480})
        finally:
            browser.close()
    return save_small(Image.open(shot).convert("RGB"), out / "sweep-runs.png", PAGE_KB)


def copy_sweep_history(study_run_id: str, tmp: Path, out: Path) -> Path:
    import mlflow

    path = mlflow.artifacts.download_artifacts(
        run_id=study_run_id, artifact_path="sweep/optimization_history.png", dst_path=str(tmp)
    )
    return save_small(Image.open(path).convert("RGB"), out / "sweep-history.png", STRIP_KB)


def save_small(image: Image.Image, path: Path, max_kb: int) -> Path:
    """PNG, optimised; on a palette of fewer colours until it is at most max_kb."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    for colours in (256, 128, 64, 32):
        if path.stat().st_size <= max_kb * 1024:
            break
        image.quantize(colours, method=Image.Quantize.MEDIANCUT if image.mode == "RGB" else None).save(
            path, optimize=True
        )
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
          f"{image.width}×{image.height}, {path.stat().st_size // 1024} KB")  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the PNGs go (docs/img)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (printed)")
    parser.add_argument("--sweep", action="store_true", help="also the sweep's pictures (docs/sweeps.md)")
    args = parser.parse_args()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="nfp-pictures-"))
    server = None
    try:
        server, uri = start_server(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        run_id, link = train(tmp, uri)
        step = copy_strip(run_id, tmp, args.out)
        screenshot(link, step, tmp, args.out)
        if args.sweep:
            experiment_id, study_run_id = sweep(tmp, uri)
            screenshot_sweep(uri, experiment_id, tmp, args.out)
            copy_sweep_history(study_run_id, tmp, args.out)
    finally:
        if server is not None:
            stop_server(server)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
