"""Parts of split blobs kept aside between imports (mirror/bundle/importing.py): volumes can
then be imported one at a time, as one disk drive reads them, and a blob split across them is
assembled when its last volume arrives. They live in the store's `partial/bundle-parts/`, each
checked against the blake3 the index gives before it is kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import blake3

from peer import atomic
from peer.errors import BadRequest, IntegrityError
from peer.hashing import read_chunks

from .index import Blob
from .reading import Bundle, volume_label


class SnapshotFailed(Exception):
    """One snapshot cannot be published from this bundle (the others go on)."""

    def __init__(self, reason: str, missing: list[str] | None = None,
                 volume: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.missing = missing or []
        #: the volume whose file is wrong, where one is (a repair from parity may save it)
        self.volume = volume


class Staging:
    """The parts kept aside, one file each: `<blob sha256>.<part number>`."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, blob: Blob, k: int) -> Path:
        return self.folder / f"{blob.sha256}.{k + 1:03d}"

    def absent(self, bundle: Bundle, blob: Blob) -> set[int]:
        """The volumes holding parts of the blob that are neither given nor kept aside."""
        return {p.volume for k, p in enumerate(blob.parts)
                if p.volume not in bundle.volumes and not self.path(blob, k).is_file()}

    def keep(self, bundle: Bundle, blob: Blob, progress: Callable[[int], None]) -> None:
        for k, part in enumerate(blob.parts):
            dest = self.path(blob, k)
            if part.volume not in bundle.volumes or dest.is_file():
                continue
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            source = bundle.file(part.volume, part.path)
            try:
                with open(source, "rb") as f, atomic.replacing(dest) as out:
                    for chunk in read_chunks(f, part.size):
                        hasher.update(chunk)
                        out.write(chunk)
                        progress(len(chunk))
                    if hasher.hexdigest() != part.blake3:
                        raise IntegrityError("blake3", part.blake3, hasher.hexdigest())
            except (IntegrityError, OSError, BadRequest) as e:
                raise SnapshotFailed(f"{volume_label(part.volume)}/{part.path}: {e} (a part of "
                                     f"blob {blob.sha256}); nothing of it was kept",
                                     volume=part.volume) from None

    def drop(self, blob: Blob) -> None:
        for k in range(len(blob.parts)):
            self.path(blob, k).unlink(missing_ok=True)
