"""What a batch job reads and writes: the input list, each image's output files, and what is done.

INPUT is a folder (searched recursively for image files), a glob (``photos/**/*.jpg``), or a text
file with one image path per line. The output tree mirrors the input tree below the input's root
(the folder, the glob's fixed leading part, or the listed files' common folder), so images with the
same name in different folders never collide.

An output file exists only once it is complete (every map is written to a temporary name beside
it and renamed), so "done" is simply "all of its files exist": a rerun skips those images, even
after ``kill -9``. Temporary files a killed run left behind are removed before a run starts.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, OutputError
from ..outputs import suffixes

#: File name endings read from folders and globs (what Pillow decodes); other files are ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")

# depthrt.imageio writes through ".<name>.<12 hex>.tmp" beside the target: what a killed run leaves.
_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


@dataclass(frozen=True)
class Job:
    """One input image and the files it becomes."""

    source: str  # the input path, as listed
    relative: str  # its path below the input root (posix), used for the output tree and errors.jsonl
    targets: tuple[tuple[str, str], ...]  # (save kind, output path) pairs

    def missing(self) -> list[tuple[str, str]]:
        """The outputs not written yet."""
        return [(kind, path) for kind, path in self.targets if not os.path.exists(path)]


def list_inputs(spec: str) -> tuple[Path, list[str]]:
    """INPUT -> (root the output tree mirrors, sorted input paths). Raises InputError when empty."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(str(p) for p in _walk(path))
        if not files:
            raise InputError(f"input folder '{spec}' holds no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...); "
                             "check the path")
        return path, files
    if glob.has_magic(spec):
        files = sorted(p for p in glob.glob(spec, recursive=True)
                       if os.path.isfile(p) and p.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise InputError(f"no image files match '{spec}'; check the pattern (quote it so the shell "
                             "does not expand it)")
        fixed = []
        for part in Path(spec).parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        return Path(*fixed) if fixed else Path("."), files
    if path.is_file():
        return _read_list(path)
    raise InputError(f"input '{spec}' does not exist; give a folder, a glob or a text file of image paths")


def _walk(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                yield Path(dirpath) / name


def _read_list(path: Path) -> tuple[Path, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list of images '{path}' ({exc}); give a folder, a glob or a "
                         "UTF-8 text file with one image path per line") from None
    if path.suffix.lower() in IMAGE_SUFFIXES or "\0" in text:
        raise InputError(f"input '{path}' is one image; use `depthrt predict` for single images, or give a "
                         "folder, a glob or a text file of image paths")
    base = path.parent
    files = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            files.append(line if os.path.isabs(line) else str(base / line))  # relative to the list file
    if not files:
        raise InputError(f"the list of images '{path}' is empty; put one image path per line")
    root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return Path(root), files


def check_output_place(root: Path, out: Path) -> None:
    """Refuse an output folder inside the input folder: the next run would read its maps as images."""
    inside = Path(os.path.abspath(out)), Path(os.path.abspath(root))
    if inside[0] == inside[1] or inside[1] in inside[0].parents:
        raise OutputError(f"--out '{out}' is inside the input folder '{root}', so its maps would be read as input "
                          "images by the next run; choose an --out outside it")


def outside(files: list[str], out: Path) -> list[str]:
    """The inputs that are not inside ``out``: a glob such as ``'**/*.png'`` also matches earlier maps."""
    top = os.path.abspath(out) + os.sep
    return [f for f in files if not os.path.abspath(f).startswith(top)]


def make_jobs(root: Path, files: list[str], out: Path, kinds: list[str], normals: bool) -> list[Job]:
    """Each input's output paths: the input's folder below ``root`` inside ``out``, its stem plus the
    save kind's suffix. Two inputs in one folder with the same stem (a.jpg, a.png) keep their
    extension in the name (a.jpg.depth.png), so names never depend on which other files exist."""
    suffix = suffixes(normals)
    root_abs = os.path.abspath(root)
    rels = []
    for f in files:
        rel = os.path.relpath(os.path.abspath(f), root_abs)
        rels.append(rel if not rel.startswith("..") else os.path.basename(f))
    stems: dict[tuple[str, str], int] = {}
    for rel in dict.fromkeys(rels):  # a file listed twice is one input: it must not look like a same-stem pair
        key = (os.path.dirname(rel), Path(rel).stem)
        stems[key] = stems.get(key, 0) + 1
    jobs, seen = [], set()
    for f, rel in zip(files, rels):
        folder, stem = os.path.dirname(rel), Path(rel).stem
        base = stem if stems[(folder, stem)] == 1 else Path(rel).name
        if rel in seen:  # the same file listed twice
            continue
        seen.add(rel)
        target_dir = out / folder
        jobs.append(Job(f, Path(rel).as_posix(), tuple((k, str(target_dir / (base + suffix[k]))) for k in kinds)))
    return jobs


def remove_stale_temps(out: Path) -> int:
    """Delete the temporary files a killed run left in ``out``; returns how many."""
    removed = 0
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            if _TEMP.match(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed
