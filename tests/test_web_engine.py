"""The web app's engine without a browser or Gradio: upload checks, limits, methods, ageing, deadlines, sessions."""

from __future__ import annotations

import io
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from faceage.paths import EXAMPLE_PHOTO
from faceage.web.engine import (
    BUNDLED,
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
    open_upload,
    parse_ages,
    read_photo,
    take_upload,
    target_note,
)

LIMITS = Limits(max_upload_mb=1, max_megapixels=1, timeout_s=5)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a hundred bytes (its pixel data is cut short)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _encoded(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLE_PHOTO).convert("RGB"))


@pytest.fixture(scope="module")
def ager():
    import faceage

    return faceage.load()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_read_photo_decodes_the_accepted_formats(fmt):
    array = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    decoded = read_photo(_encoded(array, fmt, **({"lossless": True} if fmt == "WEBP" else {})), "x", LIMITS)
    assert decoded.shape == (40, 60, 3) and decoded.dtype == np.uint8
    if fmt != "JPEG":
        np.testing.assert_array_equal(decoded, array)


def test_read_photo_says_what_is_wrong():
    small = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(WebError, match=r"anim\.gif is a GIF image; upload a JPEG, PNG or WebP"):
        read_photo(_encoded(small, "GIF"), "anim.gif", LIMITS)
    with pytest.raises(WebError, match=r"notes\.txt is not a supported format"):
        read_photo(b"just some text", "notes.txt", LIMITS)
    with pytest.raises(WebError, match=r"could not read cut\.jpg: the file is damaged"):
        read_photo(_encoded(np.full((200, 200, 3), 90, np.uint8), "JPEG")[:300], "cut.jpg", LIMITS)
    with pytest.raises(WebError, match=r"could not read fake\.jpg: the file is damaged or not really an image"):
        read_photo(b"not a jpeg at all", "fake.jpg", LIMITS)
    big = _encoded(np.zeros((1000, 1200, 3), np.uint8), "PNG")  # 1.2 megapixels, a few kB
    with pytest.raises(WebError, match=r"1200×1000 pixels \(1\.2 megapixels\); the limit is 1 megapixels"):
        read_photo(big, "wide.png", LIMITS)
    with pytest.raises(WebError, match=r"bomb\.png is far too many pixels; the limit is 1 megapixels"):
        read_photo(png_header(20_000, 10_000), "bomb.png", LIMITS)  # past Pillow's own guard: refused from the header
    with pytest.raises(WebError, match=r"is 2\.0 MB; the limit is 1 MB"):
        read_photo(b"\0" * 2 * 2**20, "huge.png", LIMITS)


def test_take_upload_reads_then_deletes_and_stays_in_its_folder(tmp_path):
    folder = tmp_path / "uploads"
    (folder / "abc").mkdir(parents=True)
    upload = folder / "abc" / "photo.jpg"
    upload.write_bytes(b"bytes")
    assert take_upload({"path": str(upload), "orig_name": "My photo.jpg"}, folder, LIMITS) == (b"bytes", "My photo.jpg")
    assert not upload.exists() and not upload.parent.exists()  # the file and the folder Gradio made for it

    too_big = folder / "def" / "big.png"
    too_big.parent.mkdir()
    too_big.write_bytes(b"\0" * (2**20 + 1))
    with pytest.raises(WebError, match="the limit is 1 MB"):
        take_upload({"path": str(too_big)}, folder, LIMITS)
    assert not too_big.exists()  # deleted even when refused

    outside = tmp_path / "secret.txt"
    outside.write_text("keep me")
    for path in (outside, folder / ".." / "secret.txt"):
        with pytest.raises(WebError, match="not a file this server received"):
            take_upload({"path": str(path)}, folder, LIMITS)
    assert outside.read_text() == "keep me"


def test_open_upload_finds_faces_or_says_there_are_none(photo, ager):
    upload = open_upload(EXAMPLE_PHOTO.read_bytes(), "astronaut.jpg", Limits(), ager)
    assert upload.name == "astronaut" and upload.photo.shape == photo.shape and upload.faces
    areas = [f.area for f in upload.faces]
    assert areas == sorted(areas, reverse=True)  # largest first: "Face 1" is the largest
    sky = np.tile(np.linspace(80, 220, 300, dtype=np.uint8)[:, None, None], (1, 400, 3))
    with pytest.raises(WebError, match=r"No face found in sky\.png"):
        open_upload(_encoded(sky, "PNG"), "sky.png", Limits(), ager)


def test_age_faces_is_the_core_pipeline(ager, photo):
    """Faces found at upload, aged, equal ``Ager.transform`` bit for bit: the page ages as the CLI and API do."""
    upload = open_upload(EXAMPLE_PHOTO.read_bytes(), "astronaut.jpg", Limits(), ager)
    mine = age_faces(ager, upload.photo, upload.faces, [70, 5])
    core = ager.transform(upload.photo, [70, 5]).images
    for a, b in zip(mine, core, strict=True):
        assert a.size == b.size
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def two_faces(photo: np.ndarray) -> np.ndarray:
    """The astronaut beside her mirror image: a 1024x512 photo with two faces."""
    return np.ascontiguousarray(np.concatenate([photo, photo[:, ::-1]], axis=1))


def test_age_faces_can_age_one_face_of_several(ager, photo):
    from faceage.face import align
    from faceage.infer.paste import face_window

    pair = two_faces(photo)
    upload = open_upload(_encoded(pair, "PNG"), "pair.png", Limits(), ager)
    assert len(upload.faces) == 2
    aged = np.asarray(age_faces(ager, upload.photo, upload.faces[1:], [70])[0])
    matrix = align(pair, upload.faces[1].landmarks, ager.image_size, preset=ager.align_preset).matrix
    x0, y0, x1, y1 = face_window(matrix, ager.image_size, pair.shape)
    outside = np.ones(pair.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(aged[outside], pair[outside])  # the other face and the background are untouched
    for face, changed in [(upload.faces[1], True), (upload.faces[0], False)]:
        fx0, fy0, fx1, fy1 = (round(v) for v in face.box)
        assert (np.abs(aged[fy0:fy1, fx0:fx1].astype(int) - pair[fy0:fy1, fx0:fx1]).mean() > 2) == changed


def test_close_up_is_a_square_inside_the_photo(photo, ager):
    upload = open_upload(EXAMPLE_PHOTO.read_bytes(), "a.jpg", Limits(), ager)
    x0, y0, x1, y1 = close_up_box(upload.faces[0], photo.shape, zoom=10)
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512 and x1 - x0 == y1 - y0
    assert close_up(photo, (x0, y0, x1, y1), 96).shape == (96, 96, 3)


def test_target_note_says_where_the_age_lies_among_the_groups(ager):
    assert target_note(ager, 37).startswith("37 years → between 30-39 and 40-49 (group position 6.25)")
    assert target_note(ager, 34.5).startswith("34.5 years → group 30-39 (group position 6.00)")
    assert target_note(ager, 80).startswith("80 years → group 70+ (group position 9.00)")
    assert between(ager, 70) == "between 50-69 and 70+"


def test_age_faces_ages_to_the_exact_age(ager, photo):
    upload = open_upload(EXAMPLE_PHOTO.read_bytes(), "astronaut.jpg", Limits(), ager)
    at_37, at_37_5 = (np.asarray(a) for a in age_faces(ager, upload.photo, upload.faces, [37, 37.4]))
    np.testing.assert_array_equal(at_37_5, np.asarray(ager.transform(upload.photo, [37, 37.4]).images[1]))
    assert not np.array_equal(at_37, at_37_5), "the slider's age is not rounded or snapped to a group"


def test_parse_ages():
    assert parse_ages("5, 20 40,70", LIMITS) == [5, 20, 40, 70]
    assert parse_ages("37.5", LIMITS) == [37.5]
    bad = [("", "type the ages"), ("5, old", "numbers of years"), ("-3", "between 0 and 120"), ("nan", "0 and 120")]
    for text, match in bad:
        with pytest.raises(WebError, match=match):
            parse_ages(text, LIMITS)
    with pytest.raises(WebError, match="at most 12 ages"):
        parse_ages(" ".join(["30"] * 13), LIMITS)


def test_methods_list_the_bundled_model_first_then_installed_ones(tmp_path, monkeypatch, tiny_ragan_dir):
    shutil.copytree(tiny_ragan_dir, tmp_path / "models" / "tiny")
    monkeypatch.setenv("FACEAGE_HOME", str(tmp_path))
    methods = Methods()
    assert methods.labels == [BUNDLED, "acgan", "cycle", "tiny"] and methods.default == BUNDLED  # bundled ones first
    assert methods.get("tiny").image_size == 32
    assert methods.get("tiny") is methods.get("tiny")  # loaded once
    assert Methods("tiny").default == "tiny"
    assert Methods(str(tiny_ragan_dir)).labels == [BUNDLED, "acgan", "cycle", "tiny", str(tiny_ragan_dir)]  # a path
    same_folder = Methods(str(tmp_path / "models" / "tiny"))
    assert same_folder.labels == [BUNDLED, "acgan", "cycle", "tiny"]  # no new entry
    with pytest.raises(WebError, match="unknown method 'nope'; known: default \\(bundled\\), acgan, cycle, tiny"):
        methods.get("nope")


def test_runner_keeps_its_deadline_and_its_bound():
    runner = Runner(workers=2, timeout_s=0.3)
    running, peak, lock = [0], [0], threading.Lock()

    def work(seconds: float) -> float:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(seconds)
        with lock:
            running[0] -= 1
        return seconds

    assert runner(work, 0.01) == 0.01
    threads = [threading.Thread(target=runner, args=(work, 0.05)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2  # six requests at once, two computing
    start = time.perf_counter()
    with pytest.raises(WebError, match="longer than the 0.3 s limit"):
        runner(work, 1.0)
    assert time.perf_counter() - start < 0.9  # the request returns at its deadline, not when the work ends
    runner.close()


def test_sessions_forget_photos():
    upload = Upload("a", np.zeros((4, 4, 3), np.uint8), [])
    sessions = Sessions(ttl_s=0.2, capacity=2)
    sessions.put("a", upload)
    assert sessions.get("a") is upload
    sessions.drop("a")  # the tab was closed
    with pytest.raises(WebError, match="Upload a photo first"):
        sessions.get("a")
    for key in "bcd":
        sessions.put(key, upload)
    assert len(sessions) == 2  # over capacity: the oldest goes
    time.sleep(0.3)
    assert len(sessions) == 0  # idle past the time to live
