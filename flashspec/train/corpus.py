"""Real text every machine has without a download: Python source and the English prose shipped beside it.

Code is every ``*.py`` of the standard library and the interpreter's site-packages. Prose is the Debian
documentation (``/usr/share/doc``, common licences, English man pages), the licence/README/METADATA files
in the Python trees, and the docstrings of the Python files. Every source is optional: a machine gets
whatever of it exists.

Each file has a ``key`` (source label + path inside its root) that does not depend on where the root is
mounted, so file order, the sample taken under a size cap and the held-out split are the same on every
machine that has the file. A file's docstrings share its key, so they land in the same split as its code.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import os
import re
import site
import sysconfig
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 1 << 20  # bigger files are generated tables or giant changelogs: skip them
MIN_DOC_CHARS = 64
PACKAGE_TREES = {"site-packages", "dist-packages"}
PROSE_NAME = re.compile(
    r"^(copyright|changelog|changes|news|readme|authors|thanks|todo|license|licence|copying|notice|faq|"
    r"history|metadata)|\.(txt|md|rst)$",
    re.IGNORECASE,
)
DOC_ROOT = Path("/usr/share/doc")
LICENSES_ROOT = Path("/usr/share/common-licenses")
MAN_ROOT = Path("/usr/share/man")


@dataclass(frozen=True)
class FileRef:
    key: str  # "<source>/<path inside the source root>": stable across machines
    path: Path
    size: int  # bytes on disk
    kind: str  # "code" | "prose": what the file is counted as under a size cap
    reader: str  # "py" | "text" | "man"


@dataclass(frozen=True)
class Doc:
    key: str
    kind: str  # "code" | "prose"
    text: str


def unit_hash(key: str, salt: str) -> float:
    """A uniform number in [0, 1) from a key; the salt keeps the sample order and the split independent."""
    digest = hashlib.sha1(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(key: str, heldout_frac: float) -> bool:
    return unit_hash(key, "split") < heldout_frac


# --- discovery ---------------------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[Path]:
    """Files under root in sorted order; symlinked directories are not followed, and nested package
    trees are pruned (the stdlib holds a site-packages that is not this interpreter's, or is counted
    once, as its own root)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in PACKAGE_TREES)
        for name in sorted(filenames):
            yield Path(dirpath, name)


def python_roots() -> list[tuple[str, Path]]:
    """(label, root) of the stdlib and of this interpreter's site-packages, each real directory once."""
    paths = sysconfig.get_paths()
    candidates = [("stdlib", paths["stdlib"])]
    site_dirs = [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
    candidates += [("site-packages", p) for p in site_dirs]
    seen: set[Path] = set()
    roots = []
    for label, p in candidates:
        real = Path(p).resolve()
        if real.is_dir() and real not in seen:
            seen.add(real)
            roots.append((label, real))
    return roots


def _python_refs(label: str, root: Path) -> Iterator[FileRef]:
    for path in _walk(root):
        if path.suffix == ".py":
            yield _ref(label, root, path, "code", "py")
        elif PROSE_NAME.search(path.name):
            yield _ref(label, root, path, "prose", "text")


def _ref(label: str, root: Path, path: Path, kind: str, reader: str) -> FileRef:
    return FileRef(f"{label}/{path.relative_to(root).as_posix()}", path, _size(path), kind, reader)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else -1
    except OSError:
        return -1


def discover() -> list[FileRef]:
    """Every candidate file of this machine, sorted by key, each key once."""
    refs = [ref for label, root in python_roots() for ref in _python_refs(label, root)]
    if DOC_ROOT.is_dir():
        refs += [_ref("doc", DOC_ROOT, p, "prose", "text") for p in _walk(DOC_ROOT)
                 if PROSE_NAME.search(p.name.removesuffix(".gz"))]
    if LICENSES_ROOT.is_dir():
        refs += [_ref("licenses", LICENSES_ROOT, p, "prose", "text") for p in _walk(LICENSES_ROOT)]
    for section in sorted(MAN_ROOT.glob("man[1-9]")):  # manN only: the other folders are translations
        refs += [_ref("man", MAN_ROOT, p, "prose", "man") for p in _walk(section)]
    unique = {ref.key: ref for ref in refs if 0 < ref.size <= MAX_FILE_BYTES}
    return sorted(unique.values(), key=lambda r: r.key)


def sample(refs: list[FileRef], max_mb_per_kind: float | None) -> list[FileRef]:
    """A hash-ordered sample of at most max_mb_per_kind on-disk MB of each kind (all files when None)."""
    if max_mb_per_kind is None:
        return refs
    budget = {"code": max_mb_per_kind * 1e6, "prose": max_mb_per_kind * 1e6}
    chosen = []
    for ref in sorted(refs, key=lambda r: unit_hash(r.key, "order")):
        if budget[ref.kind] > 0:
            budget[ref.kind] -= ref.size
            chosen.append(ref)
    return sorted(chosen, key=lambda r: r.key)


# --- reading -----------------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    """UTF-8 text of a (possibly gzipped) file; None for binary, non-UTF-8 or oversized content."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                data = f.read(MAX_FILE_BYTES + 1)
        else:
            data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
        return None
    if len(data) > MAX_FILE_BYTES or "\x00" in text:
        return None
    return text


def looks_like_prose(text: str) -> bool:
    """Mostly letters and spaces: drops data tables, hex dumps and markup-heavy files."""
    return len(text) >= MIN_DOC_CHARS and sum(c.isalpha() or c == " " for c in text) >= 0.7 * len(text)


_ROFF_TEXT_MACRO = re.compile(r"^\.(SH|SS|B|I|BR|RB|IR|RI|BI|IB|SM|SB)\s+(.*)$")
_ROFF_HEADING = re.compile(r"^\.(SH|SS)\b")
_ROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?\d"), ""),  # size changes
    (re.compile(r"\\\((em|en)"), "-"),
    (re.compile(r"\\\((dq|lq|rq)"), '"'),
    (re.compile(r"\\\((oq|cq|aq)"), "'"),
    (re.compile(r"\\-"), "-"),
    (re.compile(r"\\e"), r"\\"),
    (re.compile(r"\\ "), " "),
    (re.compile(r"\\(\(..|\*\(..|\*\[[^\]]*\]|\[[^\]]*\]|\*.|[&|^/,%])"), ""),  # the rest: drop
]


def roff_to_text(source: str) -> str:
    """Plain text of a man page, reflowed the way man fills it: text lines and the arguments of font and
    heading requests joined into paragraphs; every other request ends a paragraph."""
    paragraphs: list[list[str]] = [[]]
    for line in source.splitlines():
        heading = bool(_ROFF_HEADING.match(line))
        if line.startswith((".", "'")):
            m = _ROFF_TEXT_MACRO.match(line)
            if heading or not m:
                paragraphs.append([])
            if not m:
                continue
            line = m.group(2).replace('"', "")
        for pattern, repl in _ROFF_ESCAPES:
            line = pattern.sub(repl, line)
        if line.strip():
            paragraphs[-1].append(line.strip())
        if heading or not line.strip():
            paragraphs.append([])
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def docstrings(source: str) -> str:
    """The module, class and function docstrings of a Python file, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):  # Python 2 files, deliberately broken test data
        return ""
    nodes = (n for n in ast.walk(tree) if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef
                                                      | ast.AsyncFunctionDef))
    return "\n\n".join(d for n in nodes if (d := ast.get_docstring(n)))


def load(ref: FileRef) -> list[Doc]:
    """The documents of one file: a Python file gives its code and, as prose, its docstrings."""
    text = _read_text(ref.path)
    if text is None:
        return []
    if ref.reader == "py":
        docs = [Doc(ref.key, "code", text)] if len(text) >= MIN_DOC_CHARS else []
        prose = docstrings(text)
        return docs + ([Doc(ref.key, "prose", prose)] if looks_like_prose(prose) else [])
    if ref.reader == "man":
        text = roff_to_text(text)
    return [Doc(ref.key, "prose", text)] if looks_like_prose(text) else []


def load_all(refs: list[FileRef], workers: int) -> list[Doc]:
    """Documents of all refs in key order, each distinct text once (copies of a licence would leak)."""
    with ProcessPoolExecutor(workers) as pool:
        loaded = pool.map(load, refs, chunksize=64)
        docs = [doc for batch in loaded for doc in batch]
    seen: set[bytes] = set()
    unique = []
    for doc in docs:
        digest = hashlib.sha1(doc.text.encode()).digest()
        if digest not in seen:
            seen.add(digest)
            unique.append(doc)
    return unique
