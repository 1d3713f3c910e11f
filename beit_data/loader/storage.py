"""Files under a dataset root, local or remote, opened through a filesystem abstraction.

``root`` is a local path or an fsspec URL (``file://``, ``s3://`` with s3fs, ...); or ``filesystem`` is
an fsspec filesystem or a ``pyarrow.fs`` filesystem (``S3FileSystem``, ``SubTreeFileSystem``, ...) and
``root`` a path inside it. Files are read as buffered sequential streams. Every name taken from a
manifest must be a plain relative path: no scheme, no ``pipe:``, no absolute path, no ``..``; nothing
is ever handed to a shell.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, BinaryIO

import fsspec
import pyarrow.fs

from ..errors import BeitDataError

BLOCK = 4 << 20  # read-ahead per open file
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")


def check_name(name: object, source: str) -> str:
    """``name`` when it is a plain relative path, else a BeitDataError naming ``source``."""
    if not isinstance(name, str) or not _PLAIN.match(name):
        raise BeitDataError(f"{source} names {name!r}, which is not a plain relative path under the dataset root; "
                            "refusing to open it: rewrite the manifest with the beit-data job that made it")
    return name


class Storage:
    """Opens files named relative to a dataset root."""

    def __init__(self, root: str | os.PathLike, filesystem: Any = None) -> None:
        self.root = os.fspath(root).rstrip("/")
        if filesystem is None:
            filesystem, base = fsspec.core.url_to_fs(os.fspath(root))
        else:
            base = self.root
        self.fs, self.base = filesystem, base.rstrip("/")
        self.arrow = isinstance(filesystem, pyarrow.fs.FileSystem)

    def where(self, name: str) -> str:
        """``name`` as the user knows it, for messages."""
        return f"{self.root}/{name}" if self.root else name

    def open(self, name: str) -> BinaryIO:
        """A buffered sequential stream of ``name``; FileNotFoundError when it is missing."""
        path = f"{self.base}/{name}" if self.base else name
        if self.arrow:
            return self.fs.open_input_stream(path, buffer_size=BLOCK)
        return self.fs.open(path, "rb", block_size=BLOCK)

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def read_json(self, name: str, fix: str) -> dict[str, Any]:
        """A JSON file, or one clear error naming it and ``fix``."""
        try:
            return json.loads(self.read_bytes(name))
        except FileNotFoundError:
            raise BeitDataError(f"no {name} under {self.root or 'the filesystem root'}: {fix}") from None
        except (OSError, ValueError) as e:
            raise BeitDataError(f"cannot read {self.where(name)} ({e}): {fix}") from None
