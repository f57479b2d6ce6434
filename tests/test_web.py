"""``faceage web`` in a real browser: the app runs as ``faceage web`` on a free local port and Chromium drives it.

Needs gradio and playwright (``pip install -e ".[dev]"``) and a Chromium installed by the system
(``apt-get install -y chromium``; ``playwright install`` needs the network). Skips, saying which is missing, where
they are not there. The run also writes the README's screenshot, ``docs/web.png``, when it is missing or
``FACEAGE_UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_web_engine import png_header, two_faces

from faceage.paths import EXAMPLE_PHOTO
from faceage.web.engine import between

pytest.importorskip("gradio", reason="the web app needs gradio: pip install -e '.[web]'")
playwright = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright: pip install playwright")

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "web.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Runs `faceage web` with an audit hook that logs every socket the server connects and every name it resolves.
AUDITED_CLI = """
import sys
log = open(sys.argv[1], "a", buffering=1)
def audit(event, args):
    if event == "socket.connect":
        log.write(f"connect {args[1]!r}\\n")
    elif event == "socket.getaddrinfo":
        log.write(f"resolve {args[0]!r}\\n")
sys.addaudithook(audit)
from faceage.cli import main
sys.exit(main(sys.argv[2:]))
"""
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_UPLOAD_MB = 20  # the defaults of `faceage web`, as the screenshot shows them
MAX_MEGAPIXELS = 25
WAIT_MS = 60_000


@dataclass
class Server:
    url: str
    tmp: Path  # the server's TMPDIR: its private upload folder is made in here
    process: subprocess.Popen
    sockets: Path  # the audit log: one line per connect / name lookup
    log: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        return [p for p in self.tmp.rglob("*") if p.is_file()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the browser tests need it")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ragan_dir) -> Server:
    """``faceage web`` with two methods (the bundled model and a tiny random one) and its own TMPDIR."""
    home = tmp_path_factory.mktemp("faceage_home")
    shutil.copytree(tiny_ragan_dir, home / "models" / "tiny")
    tmp = tmp_path_factory.mktemp("web_tmp")
    env = {**os.environ, "TMPDIR": str(tmp), "FACEAGE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    sockets = tmp_path_factory.mktemp("web_audit") / "sockets.log"
    command = [sys.executable, "-c", AUDITED_CLI, str(sockets), "web", "--port", str(_free_port())]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = Server("", tmp, process, sockets)
    started = threading.Event()

    def drain() -> None:  # keep reading stderr so the server never blocks on a full pipe
        for line in process.stderr:
            server.log.append(line)
            if line.startswith("faceage web: http"):
                server.url = line.split()[2]
                started.set()

    threading.Thread(target=drain, daemon=True).start()
    if not started.wait(120):
        process.kill()
        pytest.fail("faceage web did not start within 120 s:\n" + "".join(server.log))
    yield server
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, "".join(server.log)
    assert not list(tmp.glob("faceage-web-*")), "the private upload folder outlived the server"
    assert "Traceback" not in "".join(server.log), "".join(server.log)


@pytest.fixture(scope="module")
def browser(chromium):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def requests_seen() -> list[str]:
    return []


@pytest.fixture(scope="module")
def page(browser, server, requests_seen):
    """One browser tab for the module's tests, in order, as one user would use it; every request is recorded."""
    context = browser.new_context(viewport={"width": 1200, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.on("request", lambda request: requests_seen.append(request.url))
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url)
    page.wait_for_selector("#run")
    yield page
    context.close()


def _upload(page, path: Path) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(path))


def _message(page, contains: str) -> str:
    page.wait_for_function(
        "text => document.querySelector('#message').innerText.includes(text)", arg=contains, timeout=WAIT_MS
    )
    return page.locator("#message").inner_text()


def _download(page, selector: str) -> tuple[bytes, str]:
    with page.expect_download() as info:
        page.locator(selector).click()
    return Path(info.value.path()).read_bytes(), info.value.suggested_filename


def test_ages_the_astronaut(page, server, tmp_path):
    import faceage
    from faceage.face import align, detect
    from faceage.infer.paste import face_window
    from faceage.provenance import TRAINED_ALGORITHMIC_MEDIA, read_provenance

    _upload(page, EXAMPLE_PHOTO)
    _message(page, "astronaut: 512×512")
    page.wait_for_selector("#result img.faceage-before")

    slider = page.locator("#age input[type=range]").bounding_box()  # move the slider to about 40%
    page.mouse.click(slider["x"] + slider["width"] * 0.42, slider["y"] + slider["height"] / 2)
    page.wait_for_function("() => document.querySelector('#age input[type=number]').value !== '70'")
    years = int(page.locator("#age input[type=number]").input_value())
    ager = faceage.load()
    group, where = ager.labels[ager.group(years)], between(ager, years)  # the exact age, between two groups
    page.wait_for_function(
        "text => document.querySelector('#age-note').innerText.includes(text)", arg=f"{years} years → {where}"
    )

    page.locator("#run").click()
    after = page.wait_for_selector("#result img.faceage-after")
    _message(page, f"to {years} years ({where})")
    assert after.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [512, 512]
    data, filename = _download(page, "#result a.faceage-download")
    assert filename == f"astronaut_to{years}.png"

    before = np.asarray(Image.open(EXAMPLE_PHOTO).convert("RGB"))
    result = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert result.shape == before.shape  # the photo's size
    face = detect(before)[0]  # the largest face: the one the page ages unless told otherwise
    x0, y0, x1, y1 = (round(v) for v in face.box)
    assert np.abs(result[y0:y1, x0:x1].astype(int) - before[y0:y1, x0:x1]).mean() > 2  # the face changed
    matrix = align(before, face.landmarks, ager.image_size, preset=ager.align_preset).matrix
    wx0, wy0, wx1, wy1 = face_window(matrix, ager.image_size, before.shape)
    outside = np.ones(before.shape[:2], bool)
    outside[wy0:wy1, wx0:wx1] = False
    assert np.array_equal(result[outside], before[outside])  # nothing outside it did

    meta = read_provenance(data)
    assert meta["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert meta["faceage:model"] == "default (bundled)"
    assert (meta["faceage:target_age"], meta["faceage:age_group"]) == (str(years), group)
    assert meta["Software"].startswith("faceage ")
    _screenshot(page, tmp_path)


def _screenshot(page, tmp_path: Path) -> None:
    """The README's picture of the page, at 70 years; 256 colours keep it small."""
    page.locator("#age input[type=number]").fill("70")
    page.locator("#age input[type=number]").press("Enter")
    page.locator("#run").click()
    _message(page, "to 70 years")
    page.wait_for_function("() => !document.querySelector('.pending')")
    page.wait_for_timeout(800)  # the outputs' fade-in
    raw = tmp_path / "web.png"
    page.screenshot(path=str(raw))
    if SCREENSHOT.exists() and os.environ.get("FACEAGE_UPDATE_SCREENSHOTS") != "1":
        return
    image = Image.open(raw).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    image.save(SCREENSHOT, optimize=True)
    assert SCREENSHOT.stat().st_size < 300_000


def test_choose_one_face_of_several(page, tmp_path):
    pair_path = tmp_path / "pair.png"
    pair = two_faces(np.asarray(Image.open(EXAMPLE_PHOTO).convert("RGB")))
    Image.fromarray(pair).save(pair_path)
    _upload(page, pair_path)
    _message(page, "2 faces, numbered on the photo")
    page.locator("#face input").click()
    page.get_by_role("option", name="Face 2").click()
    page.locator("#run").click()
    _message(page, "Aged face 2")
    data, _ = _download(page, "#result a.faceage-download")
    result = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    diff = np.abs(result.astype(int) - pair).sum(axis=2)
    assert diff[:, :512].max() == 0 and diff[:, 512:].mean() > 0.5  # only the right-hand face changed

    page.locator("#face input").click()
    page.get_by_role("option", name="All faces").click()
    page.locator("#run").click()
    _message(page, "Aged all faces")
    data, _ = _download(page, "#result a.faceage-download")
    diff = np.abs(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int) - pair).sum(axis=2)
    assert diff[:, :512].mean() > 0.5 and diff[:, 512:].mean() > 0.5


def _fill_settled(box, text: str) -> None:
    """Fill a textbox so that the value stays: gradio 6.31 resets a tab's textbox to its initial value shortly
    after the tab is first shown, which swallows a fill made in that moment (seen in about half the runs)."""
    for _ in range(20):
        box.fill(text)
        box.press("Tab")
        time.sleep(0.5)
        if box.input_value() == text:
            return
    raise AssertionError(f"the textbox kept resetting to {box.input_value()!r}")


def test_progression_strip_and_compare_view(page):
    page.locator("#example").click()  # the bundled photo, from the server's package
    _message(page, "astronaut: 512×512")
    page.get_by_role("tab", name="Progression").click()
    ages = page.locator("#ages textarea, #ages input").first
    _fill_settled(ages, "5, 30, 80")
    page.locator("#run-strip").click()
    strip = page.wait_for_selector("#strip img.faceage-strip-image")
    assert strip.evaluate("img => img.naturalWidth") == 4 * 192  # the original and three ages
    data, filename = _download(page, "#strip a.faceage-download")
    assert filename == "astronaut_progression.png"
    from faceage.provenance import read_provenance

    assert read_provenance(data)["faceage:target_age"] == "5, 30, 80"

    page.get_by_role("tab", name="Compare methods").click()  # four methods are installed: the tab is there
    page.locator("#run-compare").click()
    _message(page, "by 4 methods")
    captions = page.locator("#compare figcaption").all_inner_texts()
    assert captions[0] == "original" and captions[1].startswith("default (bundled): ")
    assert captions[2].startswith("acgan: ") and captions[3].startswith("cycle: ")  # bundled ones first
    assert captions[4].startswith("tiny: ") and page.locator("#compare img").count() == 5


def test_no_face_and_unsupported_files_get_a_message(page, tmp_path):
    sky = tmp_path / "sky.jpg"
    Image.fromarray(np.tile(np.linspace(60, 220, 240, dtype=np.uint8)[:, None, None], (1, 320, 3))).save(sky)
    _upload(page, sky)
    assert "No face found in sky.jpg" in _message(page, "No face found")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    _upload(page, notes)
    _message(page, "notes.txt is not a supported format; upload a JPEG, PNG or WebP photo")
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(EXAMPLE_PHOTO.read_bytes()[:4000])
    _upload(page, damaged)
    _message(page, "could not read damaged.jpg")
    assert "Traceback" not in page.content()


def test_limits_are_stated(page, tmp_path):
    wide = tmp_path / "wide.png"  # 48 megapixels, over the limit, in a hundred bytes
    wide.write_bytes(png_header(8000, 6000))
    _upload(page, wide)
    _message(page, f"8000×6000 pixels (48.0 megapixels); the limit is {MAX_MEGAPIXELS:g} megapixels")
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(MAX_UPLOAD_MB * 2**20 + 1))
    _upload(page, big)  # refused by the browser before it is sent, with the limit
    toast = page.wait_for_selector(".toast-body")
    assert f"maximum allowed size of {MAX_UPLOAD_MB:.1f} Mb" in toast.inner_text()
    assert page.locator("#photo").inner_text().count(f"up to {MAX_UPLOAD_MB:g} MB and {MAX_MEGAPIXELS:g} megapixels")


def test_nothing_left_behind_and_nothing_sent_out(page, server, requests_seen):
    """After the session: no file in the server's temporary folders; neither the page nor the server reached
    anything but this computer."""
    page.close()  # the tab closes: the server drops the session's photo
    time.sleep(0.5)
    assert server.files() == []
    external = [u for u in requests_seen if not u.startswith((server.url, "data:", "blob:"))]
    assert external == [] and len(requests_seen) > 10
    seen = server.sockets.read_text().splitlines() if server.sockets.exists() else []
    outside = [line for line in seen if not any(f"'{host}'" in line for host in LOOPBACK) and "connect '/" not in line]
    assert outside == [], f"the server reached out: {outside}"
    assert "(this computer only" in "".join(server.log)
