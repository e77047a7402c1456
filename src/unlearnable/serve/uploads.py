"""Taking a person's files into a job's folder, and nothing out of it.

Rules, each one a plain reason on the page when it refuses something:

* **Names.** An uploaded file's name is one file name: no ``/`` or ``\\``, not ``.`` or
  ``..``, no control characters, at most 255 bytes, not hidden (a leading ``.``). A zip
  entry's name is split on ``/``; every part obeys the same rule, and an absolute name, a
  drive letter or a ``..`` part refuses the entry. Symbolic links inside a zip are refused.
  Folders, hidden files and macOS resource forks in a zip are ignored.
* **Sizes** (:class:`Limits`): every file and every zip entry at most ``file_bytes``, all
  of a job's files together at most ``job_bytes``, at most ``files`` images per job. Sizes
  are counted while the bytes arrive (a zip's own header is not trusted), so a
  decompression bomb stops at the limit instead of filling the disk; an image with more
  pixels than Pillow's ``MAX_IMAGE_PIXELS`` is refused when it is checked.
* **Content.** Every stored file is decoded completely (:func:`..protect.images.load_image`);
  a file that does not decode is removed and listed with the reason.
* **Place.** Bytes are written to a hidden temporary file inside the job's input folder
  and renamed into place only when complete; a refused or interrupted upload leaves
  nothing behind. Nothing is written outside the job's folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnlearnableError
from ..protect.images import UnreadableImage, load_image

CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    file_bytes: int = 50 * 2**20  # one image, or one zip entry
    job_bytes: int = 2 * 2**30  # a job's files together (an uploaded zip counts while it is read)
    files: int = 2000  # images per job

    def describe(self) -> str:
        return (f"each image at most {_mib(self.file_bytes)}, all files of a job at most {_mib(self.job_bytes)}, "
                f"at most {self.files} images")


def _mib(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


class Refused(UnlearnableError):
    """A file that is not taken; the message is the reason shown beside its name."""


@dataclass
class Received:
    added: list[str] = field(default_factory=list)  # paths relative to the input folder
    refused: list[dict] = field(default_factory=list)  # {"name", "reason"}
    ignored: list[str] = field(default_factory=list)  # folders, hidden files, resource forks

    def merge(self, other: "Received") -> None:
        self.added += other.added
        self.refused += other.refused
        self.ignored += other.ignored

    def to_dict(self) -> dict:
        return {"added": self.added, "refused": self.refused, "ignored": self.ignored}


def check_part(part: str) -> str:
    """One path component, or :class:`Refused` naming what is wrong with it."""
    if part in ("", ".", ".."):
        raise Refused(f"{part!r} is not a file name")
    if "/" in part or "\\" in part:
        raise Refused("a file name cannot contain a folder separator")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in part):
        raise Refused("the name contains control characters")
    if len(part.encode("utf-8", "surrogatepass")) > 255:
        raise Refused("the name is longer than 255 bytes")
    return part


def entry_parts(name: str) -> list[str] | None:
    """The parts of a zip entry's name; None for an entry to ignore (a folder, a hidden
    file, a macOS resource fork); :class:`Refused` for a name that points elsewhere."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise Refused("an absolute path inside the zip")
    if "\\" in name:
        raise Refused("a backslash in a zip entry's name")
    parts = name.split("/")
    if ".." in parts:
        raise Refused("a '..' in the name points outside the zip")
    if name.endswith("/"):
        return None
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return [check_part(p) for p in parts]


class Inbox:
    """A job's input folder, with what it already holds counted against the limits."""

    def __init__(self, root: str | os.PathLike, limits: Limits = Limits()):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        files = [p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith(".")]
        self.count = len(files)
        self.bytes = sum(p.stat().st_size for p in files)

    def check_room(self, size: int, replacing: int = 0, *, whole_zip: bool = False) -> None:
        """Refuse ``size`` bytes (replacing a file of ``replacing`` bytes) over the limits; a
        zip as a whole is held to the job's total only (its entries, one by one, to both)."""
        if whole_zip:
            if self.bytes + size > self.limits.job_bytes:
                raise Refused(f"larger than the job's limit of {_mib(self.limits.job_bytes)}")
            return
        if size > self.limits.file_bytes:
            raise Refused(f"larger than the limit of {_mib(self.limits.file_bytes)} per file")
        if self.bytes - replacing + size > self.limits.job_bytes:
            raise Refused(f"the job's files would exceed {_mib(self.limits.job_bytes)} in all")

    def receive(self, name: str, chunks) -> Received:
        """Store one uploaded file from an iterable of byte chunks (see :meth:`upload`)."""
        with self.upload(name) as up:
            for chunk in chunks:
                up.write(chunk)
            return up.finish()

    def upload(self, name: str) -> "Upload":
        """Receive one file piece by piece: an image, or a zip of images (by its name's
        suffix). Use as a context manager: leaving it without :meth:`Upload.finish` (a lost
        connection) leaves nothing behind."""
        return Upload(self, name)

    def place(self, tmp: Path, dest: Path, size: int) -> None:
        """Check that the complete file at ``tmp`` decodes as an image, then move it to ``dest``."""
        if size == 0:
            raise Refused("the file is empty")
        if self.count >= self.limits.files and not dest.is_file():
            raise Refused(f"the job already has the maximum of {self.limits.files} images")
        try:
            load_image(tmp)
        except UnreadableImage as e:  # the reason of a too-large image is plain; others name the temporary file
            raise Refused(str(e) if str(e).startswith("image too large") else
                          "not an image this tool can read (an unknown format or a damaged file)") from None
        if dest.is_dir() or dest.is_symlink():
            raise Refused("a folder of that name is already there")
        old = dest.stat().st_size if dest.is_file() else 0
        os.replace(tmp, dest)
        self.count += 0 if old else 1
        self.bytes += size - old

    def temp(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=folder)
        os.close(fd)
        return Path(tmp)

    def unzip(self, name: str, path: Path) -> Received:
        out = Received()
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise Refused(f"not a readable zip file ({e})") from None
        with archive:
            for info in archive.infolist():
                out.merge(self._entry(name, archive, info))
        return out

    def _entry(self, zip_name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Received:
        label = f"{zip_name}: {info.filename}"
        try:
            parts = entry_parts(info.filename)
            if parts is None:
                return Received(ignored=[label])
            if stat.S_ISLNK(info.external_attr >> 16):
                raise Refused("a symbolic link inside the zip")
            if info.flag_bits & 0x1:
                raise Refused("the entry is encrypted")
            dest = self.root.joinpath(*parts)
            for parent in dest.relative_to(self.root).parents:
                p = self.root / parent
                if p.is_symlink() or (p.exists() and not p.is_dir()):
                    raise Refused(f"{parent} is not a folder")
            replacing = dest.stat().st_size if dest.is_file() else 0  # an entry sent again replaces its copy
            tmp = self.temp(dest.parent)
            try:
                with archive.open(info) as src, open(tmp, "wb") as f:
                    size = 0
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        size += len(chunk)  # counted as it inflates: the header's size is not trusted
                        self.check_room(size, replacing)
                        f.write(chunk)
                self.place(tmp, dest, size)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return Received(added=["/".join(parts)])
        except Refused as e:
            return Received(refused=[{"name": label, "reason": str(e)}])
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
            return Received(refused=[{"name": label, "reason": f"cannot extract ({type(e).__name__}: {e})"}])


class Upload:
    """One file arriving in pieces. After a refusal the remaining pieces are read and
    dropped (so the sender still gets the answer), and :meth:`finish` reports the reason."""

    def __init__(self, inbox: Inbox, name: str):
        self.inbox, self.name, self.size = inbox, name, 0
        self.zip = name.lower().endswith(".zip")
        self.refused: str | None = None
        self.tmp: Path | None = None
        self._file = None
        self.replacing = 0  # the size of the file this one replaces, counted once
        try:
            check_part(name)
            if name.startswith("."):
                raise Refused("hidden files are not taken")
            dest = inbox.root / name
            if not self.zip and dest.is_file():
                self.replacing = dest.stat().st_size
            self.tmp = inbox.temp(inbox.root)
            self._file = open(self.tmp, "wb")
        except Refused as e:
            self.refused = str(e)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.discard()

    def write(self, chunk: bytes) -> None:
        if self.refused is not None:
            return
        self.size += len(chunk)
        try:
            self.inbox.check_room(self.size, self.replacing, whole_zip=self.zip)
        except Refused as e:
            self.refused = str(e)
            self.discard()
            return
        self._file.write(chunk)

    def finish(self) -> Received:
        """Check and place what arrived; the refusals, with their reasons."""
        try:
            if self.refused is not None:
                raise Refused(self.refused)
            self._file.close()
            if self.zip:
                return self.inbox.unzip(self.name, self.tmp)
            self.inbox.place(self.tmp, self.inbox.root / self.name, self.size)
            return Received(added=[self.name])
        except Refused as e:
            return Received(refused=[{"name": self.name, "reason": str(e)}])
        finally:
            self.discard()

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            self.tmp = None
