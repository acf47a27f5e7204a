"""The label vocabulary: Open Images V7's 601 class names (YOLOv8-oiv7's order) or a user file."""

from __future__ import annotations

from pathlib import Path

DEFAULT_VOCABULARY = Path(__file__).resolve().parent.parent / "assets" / "oiv7_classes.txt"


def load_vocabulary(path: str | Path = "") -> list[str]:
    """Read a vocabulary file (one class name per line; blank lines ignored).

    Args:
        path: the file; "" = deteclap/assets/oiv7_classes.txt (601 Open Images V7 names in the
            order of ultralytics' open-images-v7.yaml, so YOLOv8-oiv7 class id i is entry i).
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no name or a name twice.
    """
    path = Path(path) if path else DEFAULT_VOCABULARY
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: the vocabulary holds no class name")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{path}: class name {name!r} appears twice")
        seen.add(name)
    return names
