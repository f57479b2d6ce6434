"""Dataset readers: every face-age dataset's own labelling turned into one list of :class:`Record`.

Each reader takes the dataset's root (a folder, or for CSV/.mat based datasets optionally the label
file itself) and returns a :class:`ReadResult`: the records it could label, and a :class:`Skip` for
every file or label row it could not, with the reason. Nothing is dropped silently. Readers only read
labels and check that files exist; decoding pixels is ``faceage prepare``'s job.

Conventions: ``gender`` is ``"male"`` / ``"female"`` / None; ``race`` uses UTKFace's codes (0 White,
1 Black, 2 Asian, 3 Indian, 4 Others); ``split`` is set only where the dataset defines one; ``group``
is set where the dataset labels age groups rather than ages (FFHQ-Aging), and ``age`` is then the
group's representative age.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from faceage.groups import SCHEMES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_AGE = 120

# Skip reasons shared by readers (prepare adds unreadable, truncated, too small, duplicate, ...).
MALFORMED = "malformed label"
MISSING = "missing file"
NOT_IMAGE = "not an image file"


@dataclass(frozen=True)
class Record:
    """One labelled face photo: where the file is and what the dataset says about the person."""

    path: Path
    age: float
    gender: str | None = None
    identity: str | None = None
    race: int | None = None
    split: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Skip:
    """A file or label row left out, with a short ``reason`` (counted) and a ``detail`` (reported)."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class ReadResult:
    """What a reader found: labelled records, skips, and the label files it read (for fingerprints)."""

    records: list[Record] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)


class DatasetError(ValueError):
    """A dataset root that cannot be read at all (missing label file, missing column...)."""


def read_dataset(name: str, root: str | os.PathLike) -> ReadResult:
    """Read dataset ``name`` (see ``READERS``) from ``root``; records come sorted by path."""
    if name not in READERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(READERS)}")
    root = Path(os.path.abspath(root))
    if not root.exists():
        raise DatasetError(f"{root} does not exist; point --root at the {name} folder")
    result = READERS[name](root)
    result.records.sort(key=lambda r: str(r.path))
    return result


# --------------------------------------------------------------------------------------------------
# UTKFace: labels in the file name, [age]_[gender]_[race]_[date&time].jpg(.chip.jpg)

_UTK_NAME = re.compile(r"(\d+)_([01])_([0-4])_(\d+)\.jpg(?:\.chip\.jpg)?", re.IGNORECASE)
_UTK_FIELDS = (("age", r"\d+"), ("gender", r"[01]"), ("race", r"[0-4]"), ("date&time", r"\d+"))


def read_utkface(root: Path) -> ReadResult:
    """UTKFace (aligned chips or in-the-wild): every image under ``root``, labelled by its file name.

    Names that do not follow the scheme exactly are skipped as malformed, never guessed at: a name
    with three fields could be age_gender_date or age_race_date, and a stray character in the date
    means the name was edited by hand. The detail says which field is wrong.
    """
    result = ReadResult()
    for path in _walk(root):
        if not _is_image(path):
            result.skipped.append(Skip(str(path), NOT_IMAGE, f"extension {path.suffix or '(none)'}"))
            continue
        m = _UTK_NAME.fullmatch(path.name)
        if m is None:
            result.skipped.append(Skip(str(path), MALFORMED, _utk_problem(path.name)))
        elif int(m[1]) > MAX_AGE:
            result.skipped.append(Skip(str(path), MALFORMED, f"age {m[1]} > {MAX_AGE}"))
        else:
            gender = "male" if m[2] == "0" else "female"
            result.records.append(Record(path, float(m[1]), gender=gender, race=int(m[3])))
    return result


def _utk_problem(name: str) -> str:
    """Say which part of a UTKFace file name is wrong."""
    lower = name.lower()
    suffix = next((s for s in (".jpg.chip.jpg", ".jpg") if lower.endswith(s)), None)
    if suffix is None:
        return "name does not end in .jpg"
    fields = name[: -len(suffix)].split("_")
    if len(fields) != len(_UTK_FIELDS):
        return f"{len(fields)} '_'-separated fields, expected 4: age_gender_race_date&time"
    for value, (what, pattern) in zip(fields, _UTK_FIELDS, strict=True):
        if not re.fullmatch(pattern, value):
            return f"bad {what} field {value!r}"
    return "name does not match age_gender_race_date&time.jpg[.chip.jpg]"


# --------------------------------------------------------------------------------------------------
# FFHQ-Aging: ffhq_aging_labels.csv (image_number, age_group, age_group_confidence, gender, ...)

FFHQ_TRAIN_LIMIT = 69000  # the usual split: image_number < 69000 is train, the rest test
FFHQ_GROUPS = ("0-2", "3-6", "7-9", "10-14", "15-19", "20-29", "30-39", "40-49", "50-69", "70-120")


def read_ffhq_aging(root: Path) -> ReadResult:
    """FFHQ-Aging: ten age groups from ``ffhq_aging_labels.csv``; images found by number under root.

    The images may sit in FFHQ's thousands folders (``00000/00042.png``), flat, or one folder deeper
    (``ffhq_aging256x256/...``); ``parsings`` folders (segmentation maps) are ignored.
    """
    labels = _label_file(root, ["ffhq_aging_labels.csv"], "FFHQ-Aging labels (ffhq_aging_labels.csv)")
    scheme = SCHEMES["ffhq10"]
    images = _index_by_stem(labels.parent if root.is_file() else root, ignore_dirs={"parsings"})
    result = ReadResult(sources=[labels])
    for row_no, row in _csv_rows(labels, required=["image_number", "age_group"]):
        where = f"{labels}:{row_no}"
        label = row["age_group"].strip()
        try:
            number = int(row["image_number"])
        except ValueError:
            result.skipped.append(Skip(where, MALFORMED, f"image_number {row['image_number']!r} is not an integer"))
            continue
        if label not in FFHQ_GROUPS:
            result.skipped.append(Skip(where, MALFORMED, f"age group {label!r} is not one of {', '.join(FFHQ_GROUPS)}"))
            continue
        group = scheme.parse("70+" if label == "70-120" else label)
        path = images.get(f"{number:05d}")
        if path is None:
            result.skipped.append(Skip(where, MISSING, f"no image {number:05d}.png/.jpg under {root}"))
            continue
        split = "train" if number < FFHQ_TRAIN_LIMIT else "test"
        age = scheme.representative_age(group)
        gender = _gender(row.get("gender"))
        result.records.append(Record(path, age, gender=gender, split=split, group=scheme.label(group)))
    return result


# --------------------------------------------------------------------------------------------------
# CACD: celebrity2000(_meta).mat, struct celebrityImageData with age, identity, year, name (file), ...

_CACD_LABELS = ["celebrity2000_meta.mat", "celebrity2000.mat", "celebrity2000.csv", "celebrity2000_meta.csv"]


def read_cacd(root: Path) -> ReadResult:
    """CACD: the ``celebrityImageData`` table (from the .mat release or a CSV export of its columns)."""
    labels = _label_file(root, _CACD_LABELS, "CACD metadata (celebrity2000_meta.mat or a CSV export)")
    if labels.suffix.lower() == ".mat":
        table = _mat_table(labels, "celebrityImageData", ["age", "identity", "name"])
        rows: Iterator[tuple[int, dict]] = ((i + 1, {k: table[k][i] for k in table}) for i in range(len(table["name"])))
    else:
        rows = _csv_rows(labels, required=["age", "identity", "name"])
    images = _index_by_name(labels.parent if root.is_file() else root)
    result = ReadResult(sources=[labels])
    for row_no, row in rows:
        where = f"{labels}:{row_no}"
        name = _text(row["name"])
        try:
            age = _age(row["age"])
            identity = _identity(row["identity"])
        except ValueError as e:
            result.skipped.append(Skip(where, MALFORMED, f"{name}: {e}"))
            continue
        path = images.get(name)
        if path is None:
            result.skipped.append(Skip(where, MISSING, f"{name!r} not found under {root}"))
            continue
        result.records.append(Record(path, age, identity=identity))
    return result


# --------------------------------------------------------------------------------------------------
# MORPH: CSV with a subject id and an age per photo (Album 2: id_num, picture_num, ..., age, photo)

_MORPH_RACE = {"W": 0, "B": 1, "A": 2, "I": 3, "H": 4, "O": 4}


def read_morph(root: Path) -> ReadResult:
    """MORPH: one CSV row per photo with subject id, age and the photo's path (relative to the CSV)."""
    labels = _label_file(root, ["morph_2008_nonCommercial.csv", "MORPH_Album2.csv"], "MORPH CSV", pattern="*.csv")
    result = ReadResult(sources=[labels])
    rows = list(_csv_rows(labels, required=[]))
    columns = rows[0][1].keys() if rows else []
    subject = _pick_column(columns, ["id_num", "subject_id", "subject", "id"], labels, "subject id")
    photo = _pick_column(columns, ["photo", "path", "file", "filename"], labels, "photo path")
    images = _index_by_name(labels.parent)
    for row_no, row in rows:
        where = f"{labels}:{row_no}"
        try:
            age = _age(row.get("age"))
            identity = _identity(row[subject])
            race = _MORPH_RACE.get((row.get("race") or "").strip().upper()[:1])
        except ValueError as e:
            result.skipped.append(Skip(where, MALFORMED, str(e)))
            continue
        path = _resolve(labels.parent, row[photo], images)
        if path is None:
            result.skipped.append(Skip(where, MISSING, f"{row[photo]!r} not found next to {labels.name}"))
            continue
        result.records.append(Record(path, age, gender=_gender(row.get("gender")), identity=identity, race=race))
    return result


# --------------------------------------------------------------------------------------------------
# IMDB-WIKI: imdb.mat / wiki.mat with dob (MATLAB datenum), photo_taken (year), full_path, gender, ...

IMDB_WIKI_MAX_AGE = 100


def read_imdb_wiki(root: Path) -> ReadResult:
    """IMDB-WIKI: ``imdb.mat`` and/or ``wiki.mat`` (in root, ``imdb_crop/`` or ``wiki_crop/``).

    Age is ``photo_taken - birth year``, minus one when the birthday falls after July 1 (the photo is
    assumed taken mid-year, as the dataset's authors do). Rows with no date of birth or photo year,
    ages outside 0-100, no face (``face_score`` -inf) or a second face are skipped with that reason.
    Identity is ``celeb_id`` (IMDB) or the name (Wikipedia).
    """
    result = ReadResult()
    for db in ("imdb", "wiki"):
        for mat in (root / f"{db}.mat", root / f"{db}_crop" / f"{db}.mat"):
            if mat.is_file():
                _read_imdb_wiki_mat(mat, db, result)
                break
    if root.is_file() and root.suffix == ".mat":
        _read_imdb_wiki_mat(root, root.stem, result)
    if not result.sources:
        raise DatasetError(f"no imdb.mat or wiki.mat in {root} (nor in imdb_crop/ or wiki_crop/ under it)")
    return result


def _read_imdb_wiki_mat(mat: Path, db: str, result: ReadResult) -> None:
    table = _mat_table(mat, db, ["dob", "photo_taken", "full_path"])
    result.sources.append(mat)
    n = len(table["full_path"])
    for i in range(n):
        rel = _text(table["full_path"][i])
        where = str(mat.parent / rel) if rel else f"{mat}:{i + 1}"
        reason, detail, age = _imdb_wiki_age(table["dob"][i], table["photo_taken"][i])
        if reason is None:
            reason, detail = _imdb_wiki_face(table, i)
        if reason is not None:
            result.skipped.append(Skip(where, reason, detail))
            continue
        path = mat.parent / rel
        if not rel or not path.is_file():
            result.skipped.append(Skip(where, MISSING, f"listed in {mat.name} row {i + 1}"))
            continue
        gender = {1.0: "male", 0.0: "female"}.get(_float(table["gender"][i])) if "gender" in table else None
        ident_key = next((k for k in ("celeb_id", "name") if k in table), None)
        identity = _identity(table[ident_key][i], allow_empty=True) if ident_key else None
        result.records.append(Record(path, float(age), gender=gender, identity=identity))


def _imdb_wiki_age(dob: object, taken: object) -> tuple[str | None, str, int]:
    dob, taken = _float(dob), _float(taken)
    if dob is None or taken is None or not np.isfinite(dob) or not np.isfinite(taken):
        return MALFORMED, f"no date of birth or photo year (dob={dob}, photo_taken={taken})", 0
    if not 1 <= dob - 366 <= date.max.toordinal():
        return MALFORMED, f"date of birth {dob} is not a valid MATLAB datenum", 0
    birth = date.fromordinal(int(dob) - 366)  # MATLAB day 1 is 1 Jan of year 0, Python's is year 1
    age = int(taken) - birth.year - (1 if birth.month >= 7 else 0)
    if not 0 <= age <= IMDB_WIKI_MAX_AGE:
        return MALFORMED, f"age {age} (born {birth}, photo {int(taken)}) outside 0-{IMDB_WIKI_MAX_AGE}", 0
    return None, "", age


def _imdb_wiki_face(table: dict[str, np.ndarray], i: int) -> tuple[str | None, str]:
    score = _float(table["face_score"][i]) if "face_score" in table else None
    if score is not None and not np.isfinite(score):
        return "no face", "face_score is -inf in the dataset's labels"
    second = _float(table["second_face_score"][i]) if "second_face_score" in table else None
    if second is not None and np.isfinite(second):
        return "several faces", f"second_face_score {second:.2f} in the dataset's labels"
    return None, ""


# --------------------------------------------------------------------------------------------------
# Generic CSV: path,age[,identity][,gender][,split]


def read_csv(root: Path) -> ReadResult:
    """Any folder of faces with a CSV ``path,age[,identity][,gender][,split]`` (paths relative to it)."""
    labels = _label_file(root, ["labels.csv"], "label CSV (path,age[,identity][,gender])")
    result = ReadResult(sources=[labels])
    for row_no, row in _csv_rows(labels, required=["path", "age"]):
        where = f"{labels}:{row_no}"
        try:
            age = _age(row["age"])
            gender = _gender(row.get("gender"), strict=True)
            split = _split(row.get("split"))
        except ValueError as e:
            result.skipped.append(Skip(where, MALFORMED, str(e)))
            continue
        path = _resolve(labels.parent, row["path"], None)
        if path is None:
            result.skipped.append(Skip(where, MISSING, f"{row['path']!r} not found next to {labels.name}"))
            continue
        identity = _identity(row.get("identity"), allow_empty=True)
        result.records.append(Record(path, age, gender=gender, identity=identity, split=split))
    return result


READERS: dict[str, Callable[[Path], ReadResult]] = {
    "utkface": read_utkface,
    "ffhq-aging": read_ffhq_aging,
    "cacd": read_cacd,
    "morph": read_morph,
    "imdb-wiki": read_imdb_wiki,
    "csv": read_csv,
}


# --------------------------------------------------------------------------------------------------
# helpers


def _walk(root: Path) -> list[Path]:
    """Every file under ``root``, sorted; linked folders are followed, each real folder once."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree would loop forever
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        found.extend(Path(folder) / f for f in sorted(files))
    return found


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _index_by_stem(root: Path, ignore_dirs: set[str] = frozenset()) -> dict[str, Path]:
    """Image files under root by file stem; the shallowest wins when a stem repeats."""
    index: dict[str, Path] = {}
    for path in _walk(root):
        if _is_image(path) and not ignore_dirs.intersection(path.relative_to(root).parts[:-1]):
            old = index.get(path.stem)
            if old is None or len(path.parts) < len(old.parts):
                index[path.stem] = path
    return index


def _index_by_name(root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in _walk(root):
        if _is_image(path):
            index.setdefault(path.name, path)
    return index


def _resolve(folder: Path, value: str, by_name: dict[str, Path] | None) -> Path | None:
    """A path from a label file: relative to the label file's folder, else found by its file name."""
    value = (value or "").strip()
    if not value:
        return None
    path = Path(os.path.abspath(folder / value))
    if path.is_file():
        return path
    return by_name.get(Path(value).name) if by_name is not None else None


def _label_file(root: Path, names: list[str], what: str, pattern: str | None = None) -> Path:
    if root.is_file():
        return root
    for name in names:
        if (root / name).is_file():
            return root / name
    matches = sorted(root.glob(pattern)) if pattern else []
    if len(matches) == 1:
        return matches[0]
    hint = f" (found {len(matches)} {pattern} files; pass the one to use as --root)" if len(matches) > 1 else ""
    raise DatasetError(f"no {what} in {root}; expected one of {', '.join(names)}{hint}")


def _csv_rows(path: Path, required: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header, numbered as in a text editor (the header is line 1)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; header is {','.join(header)}")
        reader.fieldnames = header
        for i, row in enumerate(reader, start=2):
            yield i, {k: (v if v is not None else "") for k, v in row.items() if k is not None}


def _pick_column(columns, candidates: list[str], path: Path, what: str) -> str:
    for c in candidates:
        if c in columns:
            return c
    raise DatasetError(f"{path}: no {what} column; expected one of {', '.join(candidates)}")


def _mat_table(path: Path, struct: str, required: list[str]) -> dict[str, np.ndarray]:
    """The fields of a MATLAB struct of equal-length columns, as 1-D numpy arrays."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=True)
    except (ValueError, OSError, NotImplementedError) as e:
        raise DatasetError(f"cannot read {path} as a MATLAB v5/v7 file (v7.3 is HDF5 and not supported): {e}") from e
    if struct not in mat:
        names = [k for k in mat if not k.startswith("__")]
        raise DatasetError(f"{path} has no {struct!r} struct; it holds {', '.join(names) or 'nothing'}")
    s = mat[struct]
    fields = s.dtype.names or ()
    missing = [f for f in required if f not in fields]
    if missing:
        raise DatasetError(f"{path}: struct {struct!r} lacks field(s) {', '.join(missing)}; has {', '.join(fields)}")
    # squeeze_me turns a 1x1 struct into a 0-d record whose fields each hold one column
    table = {f: np.atleast_1d(s[f].item()) for f in fields}
    n = len(table[required[0]])
    return {f: v for f, v in table.items() if len(v) == n}


def _text(value: object) -> str:
    """A MATLAB/CSV cell as a string ('' for an empty cell)."""
    if isinstance(value, np.ndarray):
        return _text(value.item()) if value.size == 1 else ""
    return "" if value is None else str(value).strip()


def _float(value: object) -> float | None:
    try:
        return float(_text(value) if isinstance(value, str | np.ndarray) else value)
    except (TypeError, ValueError):
        return None


def _age(value: object) -> float:
    age = _float(value)
    if age is None or not np.isfinite(age):
        raise ValueError(f"age {_text(value)!r} is not a number")
    if not 0 <= age <= MAX_AGE:
        raise ValueError(f"age {age:g} outside 0-{MAX_AGE}")
    return age


def _identity(value: object, allow_empty: bool = False) -> str | None:
    text = _text(value)
    if not text or text.lower() == "nan":
        if allow_empty:
            return None
        raise ValueError("no identity")
    f = _float(text)
    return str(int(f)) if f is not None and np.isfinite(f) and f == int(f) else text


def _gender(value: object, strict: bool = False) -> str | None:
    text = _text(value).lower()
    if text in ("m", "male"):
        return "male"
    if text in ("f", "female"):
        return "female"
    if strict and text:
        raise ValueError(f"gender {text!r} is not one of male, female, m, f")
    return None


def _split(value: object) -> str | None:
    text = _text(value).lower()
    if text and text not in ("train", "val", "test"):
        raise ValueError(f"split {text!r} is not one of train, val, test")
    return text or None
