"""ImageCoDe descriptions and image sets: both published layouts, the folder checks, the video/static split.

Layouts read (facts from McGill-NLP/imagecode and the Hugging Face copy BennoKrojer/ImageCoDe):

* the official JSON label files: ``{set_name: {"target_index": description}}`` (train, valid) and
  ``{set_name: [description, ...]}`` for the unlabeled test file;
* the Hugging Face JSONL rows ``{"image_set", "image_index", "description"}`` (``image_index`` a string such as
  ``"8"``; absent, null or empty for unlabeled rows).

Images live at ``<root>/<set_name>/imgX.jpg``, ten per set. The official scripts sort a set's files by the number
after ``img`` (``int(name[3:])``: img10 after img9), and the target index is the position in that order. A set is
static (Open Images) when ``"open-images"`` is in its name, else its images are video frames.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError, L2VError

CANDIDATES = 10
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"validation": "valid", "val": "valid", "dev": "valid"}
# The file names of each split in the two layouts, first match wins (test_data.json: a labelled test file, if a
# user has one).
SPLIT_FILES = {
    "train": ("train_data.json", "train_data.jsonl"),
    "valid": ("valid_data.json", "valid_data.jsonl"),
    "test": ("test_data.json", "test_data_unlabeled.json", "test_data.jsonl", "test_data_unlabeled.jsonl"),
}
DOWNLOAD_HINT = ("download image-sets.zip (13.8 GB) from https://zenodo.org/record/6518944/files/image-sets.zip "
                 "(or the Google Drive / Hugging Face links in https://github.com/McGill-NLP/imagecode#data), unzip "
                 "it and pass the unzipped image-sets folder")
_IMAGE_NAME = re.compile(r"^img(\d+)$", re.IGNORECASE)
# The video sources named in the image sets' names (the README's acknowledgement lists these three and Open Images).
VIDEO_SOURCES = ("MSR-VTT", "video-storytelling", "YouCook")


@dataclass(frozen=True)
class Example:
    """One description: its image set, its target index (None when unlabeled) and its place in the file."""

    set_name: str
    description: str
    target: int | None
    position: int  # order in the file: the leaderboard file lists predictions in this order per set

    @property
    def static(self) -> bool:
        return is_static(self.set_name)


def is_static(set_name: str) -> bool:
    """Open Images sets are static pictures; every other set is frames of one video (the official rule)."""
    return "open-images" in set_name


def source_of(set_name: str) -> str:
    """The data set a set comes from, read from its name: open-images, MSR-VTT, video-storytelling, YouCook, or
    "other" for a name none of them starts."""
    if is_static(set_name):
        return "open-images"
    for source in VIDEO_SOURCES:
        if set_name.startswith(source):
            return source
    return "other"


def canonical_split(split: str) -> str:
    name = SPLIT_ALIASES.get(split.lower(), split.lower())
    if name not in SPLITS:
        raise L2VError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)} (or validation)")
    return name


# ---------------------------------------------------------------------- descriptions
def _target(value, path: Path, where: str) -> int:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not text.isdigit() or not 0 <= int(text) < CANDIDATES:
        raise InputFileError(f"{path}: {where}: target index must be 0-{CANDIDATES - 1}, got {value!r}")
    return int(text)


def _description(value, path: Path, where: str) -> str:
    if not isinstance(value, str):
        raise InputFileError(f"{path}: {where}: the description must be a string, got {type(value).__name__}")
    return value


def _read_official(path: Path) -> list[Example]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputFileError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected an object {{set_name: {{index: description}}}} or {{set_name: [description, ...]}}, "
                             f"got {type(data).__name__}")
    examples: list[Example] = []
    for set_name, entry in data.items():
        if isinstance(entry, dict):
            for index, text in entry.items():
                where = f"set {set_name!r}, index {index!r}"
                examples.append(Example(set_name, _description(text, path, where), _target(index, path, where), len(examples)))
        elif isinstance(entry, list):
            for number, text in enumerate(entry):
                examples.append(Example(set_name, _description(text, path, f"set {set_name!r}, description {number}"), None,
                                        len(examples)))
        else:
            raise InputFileError(f"{path}: set {set_name!r} must map to {{index: description}} or a list of descriptions, "
                                 f"got {type(entry).__name__}")
    return examples


def _read_rows(path: Path) -> list[Example]:
    from ..fileio import iter_json_records

    examples: list[Example] = []
    for number, record in iter_json_records(path, skip_blank=True,
                                            expect="a JSON object with 'image_set', 'description' and 'image_index'"):
        for field in ("image_set", "description"):
            if field not in record:
                raise InputFileError(f"{path}: line {number} has no {field!r} field")
        if not isinstance(record["image_set"], str) or not record["image_set"]:
            raise InputFileError(f"{path}: line {number}: 'image_set' must be a non-empty string")
        index = record.get("image_index")
        target = None if index is None or index == "" else _target(index, path, f"line {number}")
        examples.append(Example(record["image_set"], _description(record["description"], path, f"line {number}"), target,
                                len(examples)))
    return examples


def read_descriptions(path: str | Path) -> list[Example]:
    """Every description of a split file, in file order: ``.json`` (official layout) or ``.jsonl`` (Hugging Face
    rows). A file mixing labelled and unlabeled descriptions is an error."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"description file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        examples = _read_official(path)
    elif suffix == ".jsonl":
        examples = _read_rows(path)
    else:
        raise InputFileError(f"{path}: unsupported description file {path.suffix or '(no extension)'!r}; use the official "
                             ".json label files or the Hugging Face .jsonl rows")
    if not examples:
        raise InputFileError(f"{path}: no descriptions")
    labelled = sum(e.target is not None for e in examples)
    if 0 < labelled < len(examples):
        raise InputFileError(f"{path}: {labelled} of {len(examples)} descriptions have a target index; a file must be "
                             "all labelled or all unlabeled")
    return examples


def split_file(data: str | Path, split: str) -> Path:
    """The description file of ``split`` in folder ``data`` (either layout); ``data`` may also be the file."""
    data = Path(data)
    if data.is_file():
        return data
    if not data.is_dir():
        raise InputFileError(f"ImageCoDe description folder not found: {data} (the official files are in "
                             "https://github.com/McGill-NLP/imagecode/tree/main/data; pass --data FOLDER)")
    split = canonical_split(split)
    for name in SPLIT_FILES[split]:
        if (data / name).is_file():
            return data / name
    raise InputFileError(f"{data}: no {split} descriptions (looked for {', '.join(SPLIT_FILES[split])})")


def load_split(data: str | Path, split: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """The descriptions of ``split``; ``limit``: a seeded sample of that many, kept in file order."""
    examples = read_descriptions(split_file(data, split))
    return subsample(examples, limit, seed)


def subsample(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    if limit is None or limit >= len(examples):
        return examples
    if limit < 1:
        raise L2VError(f"limit must be at least 1, got {limit}")
    import numpy as np

    chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=limit, replace=False))
    return [examples[i] for i in chosen]


# ---------------------------------------------------------------------- image sets
def image_number(name: str) -> int | None:
    """The number X of an image file ``imgX.jpg`` (None for a file that is not a set image)."""
    path = Path(name)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    match = _IMAGE_NAME.match(path.stem)
    return int(match.group(1)) if match else None


def sort_image_names(names: list[str]) -> list[str]:
    """Set images in the official order: by the number after ``img`` (img2, img9, img10, ...), not by text."""
    numbered = [(image_number(n), n) for n in names]
    bad = [n for number, n in numbered if number is None]
    if bad:
        raise L2VError(f"not ImageCoDe image names (imgX.jpg): {', '.join(sorted(bad)[:5])}")
    counts = Counter(number for number, _ in numbered)
    clashes = sorted(n for number, n in numbered if counts[number] > 1)
    if clashes:
        raise L2VError(f"image names with the same number: {', '.join(clashes)}")
    return [n for _, n in sorted(numbered)]


def resolve_image_root(images: str | Path) -> Path:
    """The folder holding the set folders: ``images`` itself, or its ``image-sets`` sub-folder when the zip was
    unpacked into it. A missing folder is an error that says where the images come from."""
    root = Path(images)
    if not root.is_dir():
        raise InputFileError(f"ImageCoDe image folder not found: {root}; {DOWNLOAD_HINT} as --images")
    nested = root / "image-sets"
    return nested if nested.is_dir() else root


def image_set_files(root: Path, set_name: str) -> list[Path]:
    """The ten images of one set in the official order; anything else is an error naming the set."""
    folder = root / set_name
    if not folder.is_dir():
        raise InputFileError(f"image set {set_name!r} not found under {root} (expected the folder {folder})")
    names = [p.name for p in folder.iterdir() if p.is_file() and image_number(p.name) is not None]
    if len(names) != CANDIDATES:
        raise InputFileError(f"image set {set_name!r} ({folder}) has {len(names)} images named imgX.jpg; ImageCoDe sets have "
                             f"exactly {CANDIDATES}")
    try:
        ordered = sort_image_names(names)
    except L2VError as error:
        raise InputFileError(f"image set {set_name!r} ({folder}): {error}") from None
    return [folder / name for name in ordered]


def check_image_sets(images: str | Path, examples: list[Example]) -> dict[str, list[Path]]:
    """Every set the descriptions name, checked (ten images each, every target index in range): set name -> its
    ten files in order. Sets missing from the folder are counted and the first few named in one error."""
    root = resolve_image_root(images)
    names = list(dict.fromkeys(e.set_name for e in examples))
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise InputFileError(f"{len(missing)} of {len(names)} image sets are not in {root}: {shown}; is this the "
                             f"unzipped image-sets folder? ({DOWNLOAD_HINT})")
    sets = {name: image_set_files(root, name) for name in names}
    for example in examples:
        if example.target is not None and not 0 <= example.target < len(sets[example.set_name]):
            raise InputFileError(f"image set {example.set_name!r}: target index {example.target} is out of range")
    return sets


def description_stats(examples: list[Example]) -> dict:
    """Counts per kind and source, and how often each target index is the answer (labelled files)."""
    stats = {
        "descriptions": len(examples),
        "sets": len({e.set_name for e in examples}),
        "video": sum(not e.static for e in examples),
        "static": sum(e.static for e in examples),
        "per_source": dict(sorted(Counter(source_of(e.set_name) for e in examples).items())),
    }
    if examples and examples[0].target is not None:
        stats["target_counts"] = {str(i): sum(e.target == i for e in examples) for i in range(CANDIDATES)}
    return stats
