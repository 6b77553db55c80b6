"""A byte-level corpus of Python source that every machine with Python has offline: the standard library.

Usage::

    python benchmarks/make_code_corpus.py [OUT] [--max-bytes N] [--gzip]
    # default OUT: runs/quality_data/python-stdlib.txt (--gzip: OUT.gz)

The ``.py`` files under the running interpreter's ``sysconfig.get_paths()["stdlib"]``, sorted by their path
relative to it (``/``-separated), without any file below a directory named ``test``, ``tests``, ``idlelib``,
``lib2to3`` or ``site-packages`` (nor ``dist-packages``, ``__pycache__``). Each file is preceded by one separator
line naming it, ``# ===== file: <relative path> =====``, and ends with a newline; bytes that are not UTF-8 are
replaced (U+FFFD). ``--max-bytes`` keeps the first N bytes (cut back to a whole UTF-8 character).

The corpus depends only on the Python version (and its build's stdlib): its sha256, byte count, file count and
the version are printed and written to ``OUT.json`` beside it (``OUT.gz.json`` with ``--gzip``; the sha256 and
bytes there are the *uncompressed* text's -- what ``arbitor``'s text task checks on resume -- plus the .gz
file's own). ``--gzip`` writes a reproducible gzip (no name, mtime 0), e.g. to carry the file to another
machine; ``benchmarks/quality.py`` reads a ``.gz`` directly.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import platform
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitor.train.checkpoint import atomic_write_bytes  # noqa: E402

EXCLUDED_DIRS = ("test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__")


def stdlib_files(root: Path) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of every included ``.py`` file under ``root``, sorted by the relative path."""
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]) or not p.is_file():
            continue
        out.append((rel.as_posix(), p))
    return sorted(out)


def build_corpus(root: Path, max_bytes: int = 0) -> tuple[bytes, int]:
    """The corpus as UTF-8 bytes (module doc) and the number of files in it."""
    buf = io.BytesIO()
    n = 0
    for rel, p in stdlib_files(root):
        text = p.read_bytes().decode("utf-8", errors="replace")
        if text and not text.endswith("\n"):
            text += "\n"
        buf.write(f"# ===== file: {rel} =====\n".encode())
        buf.write(text.encode("utf-8"))
        n += 1
        if max_bytes and buf.tell() >= max_bytes:
            break
    data = buf.getvalue()
    if max_bytes and len(data) > max_bytes:
        data = data[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")
    return data, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="runs/quality_data/python-stdlib.txt", help="output text file")
    ap.add_argument("--max-bytes", type=int, default=0, help="keep the first N bytes (0: all)")
    ap.add_argument("--gzip", action="store_true", help="write OUT.gz (reproducible gzip) instead of OUT")
    ap.add_argument("--stdlib", default=None, help=argparse.SUPPRESS)   # another tree (tests)
    args = ap.parse_args(argv)
    if args.max_bytes < 0:
        ap.error(f"--max-bytes must be >= 0, got {args.max_bytes}")
    root = Path(args.stdlib or sysconfig.get_paths()["stdlib"])
    data, files = build_corpus(root, args.max_bytes)
    if not data:
        ap.error(f"no Python sources under {root}")
    out = Path(args.out)
    info = {"python_version": platform.python_version(), "implementation": platform.python_implementation(),
            "sys_version": sys.version, "stdlib": str(root), "excluded_dirs": list(EXCLUDED_DIRS),
            "max_bytes": args.max_bytes, "files": files, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}
    if args.gzip:
        if out.suffix != ".gz":
            out = out.with_name(out.name + ".gz")
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
            gz.write(data)
        blob = buf.getvalue()
        info.update({"gzip_bytes": len(blob), "gzip_sha256": hashlib.sha256(blob).hexdigest()})
        atomic_write_bytes(out, blob)
    else:
        atomic_write_bytes(out, data)
    info["file"] = out.name
    atomic_write_bytes(out.with_name(out.name + ".json"), (json.dumps(info, indent=1) + "\n").encode())
    print(f"{out}: {files} files, {len(data):,} bytes (UTF-8 text), sha256 {info['sha256']}, Python "
          f"{info['python_version']} ({info['implementation']})"
          + (f"; gzip {info['gzip_bytes']:,} bytes, sha256 {info['gzip_sha256']}" if args.gzip else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
