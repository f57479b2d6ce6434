"""The Gradio page of ``faceage web``: upload a photo, pick a face, a method and an age, see and download the result.

Importing this module makes the process private before Gradio is imported (Gradio reads these at import):
analytics and Hugging Face Hub access off, loopback never proxied, and Gradio's upload folder a fresh private
temporary folder that is deleted at exit. Each upload is read into memory and deleted from that folder at once;
results are sent inside the page (``faceage.web.render``), never written to disk.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _private_environment() -> Path:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no usage reports, no version check
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"
    loopback = "127.0.0.1,localhost,::1"
    for key in ("NO_PROXY", "no_proxy"):  # Gradio calls its own server at start-up: never through a proxy
        os.environ[key] = ",".join(filter(None, [os.environ.get(key), loopback]))
    folder = Path(tempfile.mkdtemp(prefix="faceage-web-"))  # mode 0700
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


TEMP_DIR = _private_environment()

import gradio as gr  # noqa: E402  (after the environment above)
import numpy as np  # noqa: E402

from faceage.infer.strip import progression_strip  # noqa: E402
from faceage.provenance import Provenance, png_bytes  # noqa: E402
from faceage.web import render  # noqa: E402
from faceage.web.engine import (  # noqa: E402
    Limits,
    Methods,
    Runner,
    Sessions,
    Upload,
    WebError,
    age_faces,
    between,
    close_up,
    close_up_box,
    cpu_cores,
    open_upload,
    parse_ages,
    take_upload,
    target_note,
)

DEFAULT_AGE = 70
DEFAULT_STRIP_AGES = "5, 20, 40, 70"
STRIP_TILE = 192
ALL_FACES = "All faces"
HEAVY = "faceage"  # the concurrency group every event that runs a model shares


def _guarded(outputs: int, on_error: Callable[[], tuple] | None = None) -> Callable:
    """An event handler whose failures become a message in its last output, never a stack trace in the page.

    On a failure the other outputs keep their values, or take ``on_error()``'s.
    """

    def decorate(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        @functools.wraps(fn)  # Gradio finds the gr.Request parameter through the wrapped signature
        def handler(*args: Any, **kwargs: Any) -> tuple:
            try:
                return fn(*args, **kwargs)
            except WebError as e:
                text = str(e)
            except Exception:  # a bug: the traceback goes to the server's log, a sentence to the page
                traceback.print_exc(file=sys.stderr)
                text = "Something went wrong; see the server's log."
            rest = on_error() if on_error else (gr.update(),) * (outputs - 1)
            return (*rest, _message(text, error=True))

        return handler

    return decorate


def _no_photo() -> tuple:
    """What an upload that failed leaves: an empty file box, no photo, no face choice, no results."""
    return None, "", gr.update(choices=[], value=None, visible=False), "", ""


def _message(text: str, error: bool = False) -> str:
    return f"⚠ **{text}**" if error else text


@dataclass
class App:
    """The page's event handlers and what they share: the methods, the limits, the workers and the uploads."""

    methods: Methods
    limits: Limits
    runner: Runner
    sessions: Sessions
    # Gradio keeps each session's component values (so the results, images and all) until it has more sessions
    # than ``state_session_capacity``; set by ``start`` to that store, so a closed tab's are dropped at once.
    gradio_sessions: dict | None = None

    @_guarded(outputs=6, on_error=_no_photo)
    def on_upload(self, payload: dict | None, request: gr.Request) -> tuple:
        """A dropped file: read into memory and deleted, decoded, faces found; the file box is emptied again.

        The event skips Gradio's preprocessing (``gr.File`` would leave an empty temporary file behind per call),
        so ``payload`` is the raw file record and ``take_upload`` checks that its path lies in the upload folder.
        """
        if payload is None:
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        self.sessions.drop(request.session_hash)
        data, name = take_upload(payload, TEMP_DIR, self.limits)
        return self._opened(self.runner(self._open, data, name), request, None)

    @_guarded(outputs=6, on_error=_no_photo)
    def on_example(self, request: gr.Request) -> tuple:
        """The bundled example photo (public domain), read from the package."""
        from faceage.paths import EXAMPLE_PHOTO

        self.sessions.drop(request.session_hash)
        data = EXAMPLE_PHOTO.read_bytes()
        return self._opened(self.runner(self._open, data, EXAMPLE_PHOTO.name), request, gr.update())

    def _open(self, data: bytes, name: str) -> Upload:
        """Decode the photo and find its faces as the first method would (every method detects alike)."""
        return open_upload(data, name, self.limits, self.methods.get(self.methods.default))

    def _opened(self, upload: Upload, request: gr.Request, file_box: Any) -> tuple:
        self.sessions.put(request.session_hash, upload)
        (h, w), n = upload.photo.shape[:2], len(upload.faces)
        text = f"{upload.name}: {w}×{h}, one face. Choose an age and press **Age**."
        if n > 1:
            text = (
                f"{upload.name}: {w}×{h}, {n} faces, numbered on the photo. The largest is selected: pick another, "
                "or all of them, under **Face**."
            )
        clear = gr.update(value="")
        return file_box, render.photo_view(upload.photo, upload.faces), face_choices(upload), clear, clear, text

    @_guarded(outputs=2)
    def on_note(self, method: str, years: float) -> tuple:
        """The slider's label: where the age lies among the method's age groups (loads a method on first choice)."""
        return target_note(self.methods.get(method), years), gr.update()

    @_guarded(outputs=2)
    def on_age(self, choice: str | None, method: str, years: float, request: gr.Request) -> tuple:
        """The photo with the chosen faces aged to ``years``: before / after, the face close up, a PNG to download."""
        upload = self.sessions.get(request.session_hash)
        faces = self.face_indices(upload, choice)
        start = time.perf_counter()
        view, where = self.runner(self._age, upload, faces, method, float(years))
        which = "all faces" if len(faces) > 1 else f"face {faces[0] + 1}"
        return view, f"Aged {which} to {years:g} years ({where}) in {time.perf_counter() - start:.1f} s."

    def _age(self, upload: Upload, faces: list[int], method: str, years: float) -> tuple[str, str]:
        """The before / after view and where the age lies among the method's groups (:func:`between`)."""
        ager = self.methods.get(method)
        (aged,) = age_faces(ager, upload.photo, [upload.faces[i] for i in faces], [years])
        group, where = ager.labels[ager.group(years)], between(ager, years)
        png = png_bytes(aged, Provenance(model=method, target=f"{years:g}", group=group))
        box = close_up_box(upload.faces[faces[0]], upload.photo.shape)
        view = render.before_after(
            upload.photo,
            aged,
            png,
            caption=f"After: {years:g} years ({where}), {method}",
            filename=f"{upload.name}_to{years:g}.png",
            close_ups=(close_up(upload.photo, box), close_up(aged, box)),
        )
        return view, where

    @_guarded(outputs=2)
    def on_strip(self, choice: str | None, method: str, text: str, request: gr.Request) -> tuple:
        """One face aged to each age of a list, close up, side by side after the original."""
        upload = self.sessions.get(request.session_hash)
        ages = parse_ages(text, self.limits)
        index = self.face_indices(upload, choice)[0]
        view = self.runner(self._strip, upload, index, method, ages)
        return view, f"Progression of face {index + 1} over {len(ages)} ages."

    def _strip(self, upload: Upload, index: int, method: str, ages: list[float]) -> str:
        ager = self.methods.get(method)
        aged = age_faces(ager, upload.photo, [upload.faces[index]], ages)
        box = close_up_box(upload.faces[index], upload.photo.shape)
        tiles = [close_up(upload.photo, box, STRIP_TILE)] + [close_up(a, box, STRIP_TILE) for a in aged]
        labels = ["original"] + [f"{a:g} years" for a in ages]
        png = png_bytes(
            progression_strip(tiles, labels), Provenance(model=method, target=", ".join(f"{a:g}" for a in ages))
        )
        return render.strip_view(png, f"{upload.name}_progression.png")

    @_guarded(outputs=2)
    def on_compare(self, choice: str | None, years: float, request: gr.Request) -> tuple:
        """The same face aged to ``years`` by every method, side by side."""
        upload = self.sessions.get(request.session_hash)
        index = self.face_indices(upload, choice)[0]
        view = self.runner(self._compare, upload, index, float(years))
        return view, f"Face {index + 1} aged to {years:g} years by {len(self.methods.labels)} methods."

    def _compare(self, upload: Upload, index: int, years: float) -> str:
        box = close_up_box(upload.faces[index], upload.photo.shape)
        tiles: list[tuple[np.ndarray | None, str]] = [(close_up(upload.photo, box), "original")]
        for label in self.methods.labels:
            try:
                ager = self.methods.get(label)
                (aged,) = age_faces(ager, upload.photo, [upload.faces[index]], [years])
                tiles.append((close_up(aged, box), f"{label}: {between(ager, years)}"))
            except WebError as e:  # a method that cannot load says so in its tile; the others still show
                tiles.append((None, f"{label}: {e}"))
        return render.tiles_view(tiles)

    def on_unload(self, request: gr.Request) -> None:
        """The tab was closed: forget its photo, and Gradio's copy of the page's values (the results), now."""
        self.sessions.drop(request.session_hash)
        if self.gradio_sessions is not None:
            self.gradio_sessions.pop(request.session_hash, None)

    def face_indices(self, upload: Upload, choice: str | None) -> list[int]:
        """The faces a "Face" choice names: all, or one (the largest when there is nothing to choose)."""
        if choice == ALL_FACES:
            return list(range(len(upload.faces)))
        words = (choice or "").split()
        if len(words) > 1 and words[0] == "Face" and words[1].isdigit() and 0 < int(words[1]) <= len(upload.faces):
            return [int(words[1]) - 1]
        return [0]


def face_choices(upload: Upload) -> Any:
    """The "Face" dropdown: shown only when there are several faces, with the largest selected."""
    if len(upload.faces) < 2:
        return gr.update(choices=[], value=None, visible=False)
    faces = [f"Face {i} (largest)" if i == 1 else f"Face {i}" for i in range(1, len(upload.faces) + 1)]
    return gr.update(choices=[*faces, ALL_FACES], value=faces[0], visible=True)


INTRO = """# faceage
Age a face in a photo, on this computer. Your photo stays in this server's memory for this browser tab only and
is never written to disk or sent anywhere; every result is labelled as synthetic inside the PNG."""


def build(app: App) -> gr.Blocks:
    """The page: inputs on the left; before / after, progression and (with several methods) compare on the right."""
    limits, methods = app.limits, app.methods
    first_note = target_note(methods.get(methods.default), DEFAULT_AGE)
    with gr.Blocks(title="faceage", analytics_enabled=False, delete_cache=(300, 300)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                photo = gr.File(
                    label=f"Photo: JPEG, PNG or WebP, up to {limits.max_upload_mb:g} MB and {limits.max_megapixels:g} "
                    "megapixels",
                    file_count="single",
                    type="filepath",
                    elem_id="photo",
                )
                example = gr.Button("Use the example photo", size="sm", elem_id="example")
                face = gr.Dropdown(label="Face", choices=[], visible=False, elem_id="face")
                method = gr.Dropdown(label="Method", choices=methods.labels, value=methods.default, elem_id="method")
                years = gr.Slider(0, 100, value=DEFAULT_AGE, step=1, label="Target age (years)", elem_id="age")
                note = gr.Markdown(first_note, elem_id="age-note")
                run = gr.Button("Age", variant="primary", elem_id="run")
                status = gr.Markdown(elem_id="message")
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Before / after"):
                        result = gr.HTML(elem_id="result")
                    with gr.Tab("Progression"):
                        ages = gr.Textbox(DEFAULT_STRIP_AGES, label="Ages (years)", elem_id="ages")
                        strip_button = gr.Button("Make the strip", elem_id="run-strip")
                        strip = gr.HTML(elem_id="strip")
                    with gr.Tab("Compare methods", visible=len(methods.labels) > 1):
                        compare_button = gr.Button("Compare", elem_id="run-compare")
                        comparison = gr.HTML(elem_id="compare")
        heavy = {"concurrency_id": HEAVY, "concurrency_limit": app.runner.workers, "show_progress": "minimal"}
        opened = [photo, result, face, strip, comparison, status]
        photo.upload(app.on_upload, [photo], opened, api_name="upload", preprocess=False, **heavy)
        example.click(app.on_example, [], opened, api_name="example", **heavy)
        for trigger in (method.change, years.change):
            trigger(app.on_note, [method, years], [note, status], queue=False, show_progress="hidden")
        run.click(app.on_age, [face, method, years], [result, status], api_name="age", **heavy)
        strip_button.click(app.on_strip, [face, method, ages], [strip, status], api_name="strip", **heavy)
        compare_button.click(app.on_compare, [face, years], [comparison, status], api_name="compare", **heavy)
        demo.unload(app.on_unload)
    return demo


def _warm_up() -> None:
    """Load dlib's detector and landmark model now, so the first user does not wait for them."""
    from faceage.face import detect
    from faceage.face.detection import shape_predictor

    detect(np.zeros((64, 64, 3), np.uint8))
    shape_predictor()


def default_concurrency() -> int:
    """Requests computed at once: one per CPU core this process may use, at most 4 (each gets its share of cores)."""
    return max(1, min(4, cpu_cores()))


@dataclass
class Server:
    """A running ``faceage web``: its address, and ``close()`` to stop it."""

    url: str
    demo: gr.Blocks
    app: App

    def close(self) -> None:
        self.demo.close(verbose=False)
        self.app.runner.close()


def start(
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    model: str | None = None,
    limits: Limits | None = None,
    concurrency: int | None = None,
    queue_size: int = 64,
) -> Server:
    """Load the methods and serve the page on ``host:port`` in a background thread.

    ``concurrency`` requests run models at once (default :func:`default_concurrency`), each on its share of the
    CPU's cores; up to ``queue_size`` more wait their turn.
    """
    import torch

    limits = limits or Limits()
    concurrency = concurrency or default_concurrency()
    torch.set_num_threads(max(1, cpu_cores() // concurrency))
    app = App(Methods(model), limits, Runner(concurrency, limits.timeout_s), Sessions())
    _warm_up()
    demo = build(app).queue(default_concurrency_limit=concurrency, max_size=queue_size)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        share=False,
        inbrowser=False,
        quiet=True,
        show_error=False,
        max_file_size=limits.max_upload_bytes,
        state_session_capacity=app.sessions.capacity,
        footer_links=[],
        run_history=False,
        enable_monitoring=False,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        css=render.CSS,
    )
    app.gradio_sessions = demo.state_holder.session_data
    shown = f"[{host}]" if ":" in host else host
    return Server(f"http://{shown}:{demo.server_port}/", demo, app)
