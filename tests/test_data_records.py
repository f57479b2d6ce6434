"""Dataset readers: real UTKFace labels, and every other reader on a fixture in its documented format."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from faceage.data.records import (
    MALFORMED,
    MISSING,
    NOT_IMAGE,
    DatasetError,
    read_dataset,
)

UTK_MALFORMED = {
    "24_0_1_20170116220224657 .jpg.chip.jpg",
    "39_1_20170116174525125.jpg.chip.jpg",
    "55_0_0_20170116232725357jpg.chip.jpg",
    "61_1_20170109142408075.jpg.chip.jpg",
    "61_1_20170109150557335.jpg.chip.jpg",
}


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"image bytes are not read by readers")
    return path


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _by_name(result) -> dict:
    return {r.path.name: r for r in result.records}


def _skips(result) -> dict[str, tuple[str, str]]:
    return {Path(s.path).name: (s.reason, s.detail) for s in result.skipped}


# --------------------------------------------------------------------------------------------------
# UTKFace


def test_utkface_real_labels(utkface_dir):
    result = read_dataset("utkface", utkface_dir)
    assert len(result.records) == 21707 - 5
    assert {Path(s.path).name for s in result.skipped} == UTK_MALFORMED
    assert all(s.reason == MALFORMED for s in result.skipped)
    records = _by_name(result)
    r = records["100_0_0_20170112213500903.jpg.chip.jpg"]
    assert (r.age, r.gender, r.race, r.identity, r.split) == (100.0, "male", 0, None, None)
    r = records["1_1_2_20161219140604000.jpg.chip.jpg"]
    assert (r.age, r.gender, r.race) == (1.0, "female", 2)
    ages = np.array([r.age for r in result.records])
    assert ages.min() == 1 and ages.max() == 116
    assert [str(r.path) for r in result.records] == sorted(str(r.path) for r in result.records)


def test_utkface_says_what_is_wrong_with_a_name(tmp_path):
    for name in [*UTK_MALFORMED, "100_0_0_20170112213500903.jpg.chip.jpg"]:  # the real folder's bad names
        _touch(tmp_path / name)
    result = read_dataset("utkface", tmp_path)
    assert [r.path.name for r in result.records] == ["100_0_0_20170112213500903.jpg.chip.jpg"]
    skips = _skips(result)
    assert set(skips) == UTK_MALFORMED and {reason for reason, _ in skips.values()} == {MALFORMED}
    assert "3 '_'-separated fields" in skips["39_1_20170116174525125.jpg.chip.jpg"][1]
    assert "date&time" in skips["24_0_1_20170116220224657 .jpg.chip.jpg"][1]
    assert "date&time" in skips["55_0_0_20170116232725357jpg.chip.jpg"][1]


def test_utkface_in_the_wild_names_and_junk(tmp_path):
    _touch(tmp_path / "part1" / "25_1_3_20170104223702587.jpg")
    _touch(tmp_path / "130_0_0_20170104223702587.jpg")
    _touch(tmp_path / "7_2_0_20170104223702587.jpg")
    _touch(tmp_path / "notes.txt")
    result = read_dataset("utkface", tmp_path)
    assert [(r.path.name, r.age, r.gender, r.race) for r in result.records] == [
        ("25_1_3_20170104223702587.jpg", 25.0, "female", 3)
    ]
    skips = _skips(result)
    assert skips["130_0_0_20170104223702587.jpg"] == (MALFORMED, "age 130 > 120")
    assert skips["7_2_0_20170104223702587.jpg"] == (MALFORMED, "bad gender field '2'")
    assert skips["notes.txt"][0] == NOT_IMAGE


def test_a_link_loop_in_the_dataset_folder_ends(tmp_path):
    _touch(tmp_path / "faces" / "25_1_3_20170104223702587.jpg")
    (tmp_path / "faces" / "again").symlink_to(tmp_path / "faces")
    assert len(read_dataset("utkface", tmp_path).records) == 1


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'utk'.*utkface"):
        read_dataset("utk", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset("utkface", tmp_path / "nope")


# --------------------------------------------------------------------------------------------------
# FFHQ-Aging

FFHQ_HEADER = [
    "image_number", "age_group", "age_group_confidence", "gender", "gender_confidence", "head_pitch",
    "head_roll", "head_yaw", "left_eye_occluded", "right_eye_occluded", "glasses",
]  # fmt: skip


def _ffhq_row(number, group, gender="female"):
    return [number, group, 0.95, gender, 0.99, -3.1, 1.2, 10.5, 5.0, 4.0, "None"]


def test_ffhq_aging(tmp_path):
    images = tmp_path / "ffhq_aging256x256"
    for n in (0, 1, 5, 68999, 69000):
        _touch(images / f"{n - n % 1000:05d}" / f"{n:05d}.png")
    _touch(images / "00000" / "parsings" / "00007.png")  # a segmentation map, not a photo
    _write_csv(
        tmp_path / "ffhq_aging_labels.csv",
        FFHQ_HEADER,
        [
            _ffhq_row(0, "0-2", "male"),
            _ffhq_row(1, "70-120"),
            _ffhq_row(5, "25-34"),
            _ffhq_row(7, "30-39"),
            _ffhq_row(68999, "30-39"),
            _ffhq_row(69000, "50-69", "male"),
        ],
    )
    result = read_dataset("ffhq-aging", tmp_path)
    got = {r.path.name: (r.age, r.group, r.gender, r.split) for r in result.records}
    assert got == {
        "00000.png": (1.0, "0-2", "male", "train"),
        "00001.png": (75.0, "70+", "female", "train"),
        "68999.png": (34.5, "30-39", "female", "train"),
        "69000.png": (59.5, "50-69", "male", "test"),
    }
    reasons = sorted((s.path.rsplit(":", 1)[1], s.reason) for s in result.skipped)
    assert reasons == [("4", MALFORMED), ("5", MISSING)]  # CSV lines: header is line 1
    assert result.sources == [tmp_path / "ffhq_aging_labels.csv"]


def test_ffhq_aging_without_labels(tmp_path):
    with pytest.raises(DatasetError, match="ffhq_aging_labels.csv"):
        read_dataset("ffhq-aging", tmp_path)


# --------------------------------------------------------------------------------------------------
# CACD

CACD_NAMES = ["53_Robin_Williams_0001.jpg", "54_Robin_Williams_0002.jpg", "23_Emma_Watson_0001.jpg", "x_0001.jpg"]


def _cacd_columns():
    n = len(CACD_NAMES)
    return {
        "age": np.array([[53.0], [54.0], [23.0], [np.nan]]),
        "identity": np.array([[1.0], [1.0], [2.0], [3.0]]),
        "year": np.array([[2004.0], [2005.0], [2013.0], [2010.0]]),
        "feature": np.zeros((n, 4)),
        "rank": np.array([[1.0], [1.0], [2.0], [3.0]]),
        "lfw": np.zeros((n, 1)),
        "birth": np.array([[1951.0], [1951.0], [1990.0], [1980.0]]),
        "name": np.array([[s] for s in CACD_NAMES], dtype=object),
    }


def _cacd_images(root: Path) -> None:
    for name in CACD_NAMES[:2] + CACD_NAMES[3:]:  # Emma Watson's photo is missing
        _touch(root / "CACD2000" / name)


def _check_cacd(result) -> None:
    got = {r.path.name: (r.age, r.identity) for r in result.records}
    assert got == {"53_Robin_Williams_0001.jpg": (53.0, "1"), "54_Robin_Williams_0002.jpg": (54.0, "1")}
    reasons = sorted(s.reason for s in result.skipped)
    assert reasons == [MALFORMED, MISSING]
    assert any("23_Emma_Watson_0001.jpg" in s.detail for s in result.skipped)


def test_cacd_mat(tmp_path):
    _cacd_images(tmp_path)
    celebrity_data = {"name": np.array([["Robin_Williams"], ["Emma_Watson"]], dtype=object)}
    savemat(
        tmp_path / "celebrity2000_meta.mat", {"celebrityImageData": _cacd_columns(), "celebrityData": celebrity_data}
    )
    _check_cacd(read_dataset("cacd", tmp_path))


def test_cacd_csv_export(tmp_path):
    _cacd_images(tmp_path)
    cols = _cacd_columns()
    keys = ["age", "identity", "year", "name"]
    rows = [[cols[k][i][0] for k in keys] for i in range(len(CACD_NAMES))]
    _write_csv(tmp_path / "celebrity2000.csv", keys, rows)
    _check_cacd(read_dataset("cacd", tmp_path))


def test_cacd_mat_without_struct(tmp_path):
    savemat(tmp_path / "celebrity2000.mat", {"something": np.zeros(3)})
    with pytest.raises(DatasetError, match="no 'celebrityImageData' struct"):
        read_dataset("cacd", tmp_path)


# --------------------------------------------------------------------------------------------------
# MORPH


def test_morph(tmp_path):
    header = ["id_num", "picture_num", "dob", "doe", "race", "gender", "facial_hair", "age", "age_diff", "glasses"]
    header.append("photo")
    _touch(tmp_path / "Album2" / "003295_00M22.JPG")
    _touch(tmp_path / "Album2" / "003295_01M25.JPG")
    _touch(tmp_path / "Album2" / "012345_00F41.JPG")
    rows = [
        ["003295", 0, "1/2/1981", "5/6/2003", "B", "M", 0, 22, 0, 0, "Album2/003295_00M22.JPG"],
        ["003295", 1, "1/2/1981", "5/6/2006", "B", "M", 0, 25, 3, 0, "Album2/003295_01M25.JPG"],
        ["012345", 0, "3/4/1962", "5/6/2003", "W", "F", 0, 41, 0, 1, "Album2/012345_00F41.JPG"],
        ["054321", 0, "3/4/1962", "5/6/2003", "W", "F", 0, "", 0, 1, "Album2/054321_00F41.JPG"],
        ["054322", 0, "3/4/1962", "5/6/2003", "W", "F", 0, 40, 0, 1, "Album2/054322_00F40.JPG"],
    ]
    _write_csv(tmp_path / "morph_2008_nonCommercial.csv", header, rows)
    result = read_dataset("morph", tmp_path)
    got = [(r.path.name, r.age, r.identity, r.gender, r.race) for r in result.records]
    assert got == [
        ("003295_00M22.JPG", 22.0, "3295", "male", 1),
        ("003295_01M25.JPG", 25.0, "3295", "male", 1),
        ("012345_00F41.JPG", 41.0, "12345", "female", 0),
    ]
    assert sorted(s.reason for s in result.skipped) == [MALFORMED, MISSING]


def test_morph_without_photo_column(tmp_path):
    _write_csv(tmp_path / "labels.csv", ["id_num", "age"], [["1", 30]])
    with pytest.raises(DatasetError, match="no photo path column"):
        read_dataset("morph", tmp_path)


# --------------------------------------------------------------------------------------------------
# IMDB-WIKI


def _datenum(d: date) -> float:
    """MATLAB serial date number of a day (day 1 is 1 January of year 0)."""
    return float(d.toordinal() + 366)


def test_imdb_wiki(tmp_path):
    wiki = tmp_path / "wiki_crop"
    rows = [  # full_path, dob, photo_taken, gender, face_score, second_face_score
        ("17/a_1980-03-15_2010.jpg", _datenum(date(1980, 3, 15)), 2010, 1.0, 4.2, np.nan),
        ("17/b_1980-09-15_2010.jpg", _datenum(date(1980, 9, 15)), 2010, 0.0, 3.1, np.nan),
        ("17/c.jpg", np.nan, 2010, 1.0, 2.0, np.nan),
        ("17/d.jpg", _datenum(date(1800, 1, 1)), 2010, 1.0, 2.0, np.nan),
        ("17/e.jpg", _datenum(date(1970, 1, 1)), 2000, 1.0, -np.inf, np.nan),
        ("17/f.jpg", _datenum(date(1970, 1, 1)), 2000, np.nan, 3.0, 2.5),
        ("17/g.jpg", _datenum(date(1970, 1, 1)), 2000, 1.0, 3.0, np.nan),  # not on disk
    ]
    for path, *_ in rows[:6]:
        _touch(wiki / path)
    n = len(rows)
    savemat(
        wiki / "wiki.mat",
        {
            "wiki": {
                "dob": np.array([[r[1] for r in rows]]),
                "photo_taken": np.array([[r[2] for r in rows]], dtype=np.uint16),
                "full_path": np.array([[r[0] for r in rows]], dtype=object),
                "gender": np.array([[r[3] for r in rows]]),
                "name": np.array([[f"Person {i}" for i in range(n)]], dtype=object),
                "face_location": np.array([[np.array([[1.0, 2.0, 50.0, 60.0]]) for _ in range(n)]], dtype=object),
                "face_score": np.array([[r[4] for r in rows]]),
                "second_face_score": np.array([[r[5] for r in rows]]),
            }
        },
    )
    result = read_dataset("imdb-wiki", tmp_path)
    got = [(r.path.name, r.age, r.gender, r.identity) for r in result.records]
    assert got == [
        ("a_1980-03-15_2010.jpg", 30.0, "male", "Person 0"),
        ("b_1980-09-15_2010.jpg", 29.0, "female", "Person 1"),  # born after July 1: one year less
    ]
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert reasons == {
        "c.jpg": MALFORMED,
        "d.jpg": MALFORMED,
        "e.jpg": "no face",
        "f.jpg": "several faces",
        "g.jpg": MISSING,
    }
    details = {Path(s.path).name: s.detail for s in result.skipped}
    assert "outside 0-100" in details["d.jpg"] and "no date of birth" in details["c.jpg"]


def test_imdb_mat_uses_celeb_id(tmp_path):
    imdb = tmp_path / "imdb_crop"
    _touch(imdb / "01" / "nm0000001_rm1_1899-5-10_1968.jpg")
    savemat(
        imdb / "imdb.mat",
        {
            "imdb": {
                "dob": np.array([[_datenum(date(1899, 5, 10))]]),
                "photo_taken": np.array([[1968]]),
                "full_path": np.array([["01/nm0000001_rm1_1899-5-10_1968.jpg"]], dtype=object),
                "gender": np.array([[1.0]]),
                "name": np.array([["Fred Astaire"]], dtype=object),
                "face_score": np.array([[1.5]]),
                "second_face_score": np.array([[np.nan]]),
                "celeb_names": np.array([["Fred Astaire", "Other"]], dtype=object),
                "celeb_id": np.array([[6488]]),
            }
        },
    )
    (r,) = read_dataset("imdb-wiki", tmp_path).records
    assert (r.age, r.gender, r.identity) == (69.0, "male", "6488")


def test_imdb_wiki_without_mat(tmp_path):
    with pytest.raises(DatasetError, match="no imdb.mat or wiki.mat"):
        read_dataset("imdb-wiki", tmp_path)


# --------------------------------------------------------------------------------------------------
# generic CSV


def test_generic_csv(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        _touch(tmp_path / "faces" / name)
    _write_csv(
        tmp_path / "labels.csv",
        ["path", "age", "identity", "gender"],
        [
            ["faces/a.jpg", 31, "p1", "F"],
            ["faces/b.jpg", "31.5", "", ""],
            ["faces/c.jpg", "abc", "p2", "m"],
            ["faces/d.jpg", 20, "p2", "x"],
            ["faces/e.jpg", -3, "p2", "m"],
            ["faces/missing.jpg", 20, "p3", "m"],
        ],
    )
    result = read_dataset("csv", tmp_path)
    got = [(r.path.name, r.age, r.identity, r.gender) for r in result.records]
    assert got == [("a.jpg", 31.0, "p1", "female"), ("b.jpg", 31.5, None, None)]
    details = sorted((s.reason, s.detail) for s in result.skipped)
    assert details == [
        (MALFORMED, "age 'abc' is not a number"),
        (MALFORMED, "age -3 outside 0-120"),
        (MALFORMED, "gender 'x' is not one of male, female, m, f"),
        (MISSING, "'faces/missing.jpg' not found next to labels.csv"),
    ]
    # the label file itself may be given as --root
    assert len(read_dataset("csv", tmp_path / "labels.csv").records) == 2


def test_generic_csv_needs_path_and_age(tmp_path):
    _write_csv(tmp_path / "labels.csv", ["file", "age"], [["a.jpg", 3]])
    with pytest.raises(DatasetError, match="missing column\\(s\\) path"):
        read_dataset("csv", tmp_path)
