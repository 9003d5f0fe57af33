"""Atomic writes: a model is written into a temporary folder beside its destination, verified
there, and renamed into place (data file first), so readers never see a half-written model."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bnfold.errors import OutputError
from bnfold.model import proto
from bnfold.model.reading import PROTOBUF_LIMIT, uses_external_data
from bnfold.model.store import TensorStore
from bnfold.model.writer import write_model


class StagedModel:
    """A model written into a temporary folder beside its destination, not yet visible there.

    Verification runs on ``path``; ``commit()`` renames the files into place (data file first),
    so readers of the destination never see a half-written or unverified model.
    """

    def __init__(self, tmpdir: Path, target: Path, data_name: str | None) -> None:
        self.tmpdir = tmpdir
        self.target = target
        self.data_name = data_name
        self.committed = False

    @property
    def path(self) -> Path:
        return self.tmpdir / self.target.name

    def commit(self) -> list[Path]:
        """Move the staged files into place; returns the files written.

        Model and data file change together or not at all: the data file goes first (so the
        new model never points into old data), and if the model then cannot be renamed into
        place (an immutable file, a full disk, a permission), the data file that was there is
        put back and nothing has changed.
        """
        data = self.tmpdir / self.data_name if self.data_name else None
        if data is None or not data.exists():
            self._replace(self.path, self.target)
            self.committed = True
            return [self.target]
        data_target = self.target.parent / data.name
        backup = self._keep(data_target)
        self._replace(data, data_target)
        try:
            self._replace(self.path, self.target)
        except OutputError:
            try:
                if backup is not None:
                    os.replace(backup, data_target)
                else:
                    data_target.unlink()
            except OSError as exc:
                raise OutputError(
                    f"{self.target}: cannot write, and {data_target} could not be restored "
                    f"({exc.strerror or exc}); the old data file is in {backup}"
                ) from None
            raise
        self.committed = True
        return [data_target, self.target]

    def _keep(self, path: Path) -> Path | None:
        """A second name for the file at ``path`` in the staging folder, to restore it from."""
        if not path.exists():
            return None
        backup = self.tmpdir / ".previous.data"
        try:
            os.link(path, backup)
        except OSError as exc:
            raise OutputError(
                f"{path}: cannot replace it safely ({exc.strerror or exc})",
                hint="check the output folder's permissions",
            ) from None
        return backup

    def _replace(self, staged: Path, target: Path) -> None:
        try:
            os.replace(staged, target)
        except OSError as exc:
            raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None


#: How often staging tries again when a parallel job removed the folder it had just created.
_STAGING_TRIES = 3


def make_folders(folder: Path, target: Path | None = None) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders this call created,
    outermost first (a folder a parallel job made at the same moment is not one of them).
    OutputError (naming ``target``, the file to be written there) when one cannot be created;
    the ones made before it are removed again."""
    name = target if target is not None else folder
    missing: list[Path] = []
    probe = folder
    while not _exists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if path.is_dir():
                continue  # a parallel job was first: its folder, not ours to remove
            remove_folders(created)
            raise OutputError(
                f"{name}: cannot create the output folder ({path} is a file)",
                hint="choose another -o/--output",
            ) from None
        except OSError as exc:
            remove_folders(created)
            raise OutputError(
                f"{name}: cannot create the output folder ({exc.strerror or exc})",
                hint="choose another -o/--output",
            ) from None
        created.append(path)
    return created


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a loop of links: let mkdir say what is wrong
        return False


def remove_folders(created: list[Path]) -> None:
    """Remove the folders ``make_folders`` created, innermost first, as far as they are empty
    (a parallel job may have written into one since: that one and its parents stay)."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return


def _staging_folder(target: Path, folder: Path, make: bool) -> tuple[Path, list[Path]]:
    """The temporary folder beside ``target`` and the output folders created for it (``make``:
    missing ones are created; else a missing folder is an OutputError)."""
    for _ in range(_STAGING_TRIES):
        created = make_folders(folder, target) if make else []
        if not folder.is_dir():
            raise OutputError(
                f"{target}: output folder {folder} does not exist",
                hint="create it, or choose another",
            )
        if not os.access(folder, os.W_OK):
            remove_folders(created)
            raise OutputError(
                f"{target}: output folder {folder} is not writable", hint="choose another output"
            )
        try:
            return Path(tempfile.mkdtemp(prefix=".bnfold-", dir=folder)), created
        except FileNotFoundError:
            if not make:
                raise OutputError(f"{target}: output folder {folder} does not exist") from None
            continue  # a parallel job removed the folder it had made: make it again
        except OSError as exc:
            remove_folders(created)
            raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    raise OutputError(f"{target}: cannot write (its folder {folder} keeps disappearing)")


@contextmanager
def stage_model(
    model: proto.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    store: TensorStore | None = None,
    create_folders: bool = False,
) -> Iterator[StagedModel]:
    """Write ``model`` into a temporary folder beside ``path``; removed again on exit.

    With external data (kept when the input had it, forced past protobuf's 2 GiB limit) the
    tensors go to ``<name>.data`` beside the model. ``source_dir`` is where tensors that still
    point at the input's external data file find it. With ``create_folders`` the output's missing
    folders are created, and removed again on exit unless the model was committed there.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    unloaded = uses_external_data(model)
    if unloaded and (external_data is False or source_dir is None):
        raise ValueError(
            "the model has tensors left in external data: write it with external data and the "
            "source folder (source_dir), or load the data first"
        )
    if unloaded:
        external_data = True
    tmpdir, created = _staging_folder(target, folder, create_folders)
    staged = StagedModel(tmpdir, target, target.name + ".data")
    try:
        try:
            write_model(
                model,
                staged.path,
                external=external_data,
                data_name=staged.data_name,
                source_dir=source_dir,
                limit=PROTOBUF_LIMIT,
                store=store,
            )
        except OSError as exc:
            raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
        yield staged
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if not staged.committed:
            remove_folders(created)


def save_model_atomic(
    model: proto.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
) -> list[Path]:
    """Write ``model`` to ``path`` so that readers never see a half-written file."""
    with stage_model(model, path, external_data=external_data) as staged:
        return staged.commit()
