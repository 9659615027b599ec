"""The emulated Cloud Build unpacks a build's source safely on every Python 3.11 (the tarfile
"data" filter exists only from 3.11.4; Debian 12's python3 is 3.11.2)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from parallel_engine.emulator.cloudbuild_runner import _unpack


def _tarball(*members: tarfile.TarInfo, content: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member in members:
            if member.isfile():
                member.size = len(content)
                archive.addfile(member, io.BytesIO(content))
            else:
                archive.addfile(member)
    return buffer.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.SYMTYPE, target
    return member


@pytest.fixture(params=["with the data filter", "without it (Python < 3.11.4)"])
def python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param.startswith("without"):  # as 3.11.2 is: no data_filter, no filter= argument
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        extractall = tarfile.TarFile.extractall

        def old_extractall(self: tarfile.TarFile, path: str | Path = ".", **kwargs: object) -> None:
            if "filter" in kwargs:
                raise TypeError("TarFile.extractall() got an unexpected keyword argument 'filter'")
            extractall(self, path, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)
    return str(request.param)


def test_a_plain_source_tree_unpacks(tmp_path: Path, python: str) -> None:
    _unpack(_tarball(_file("code/main.py"), _link("code/alias.py", "main.py")), tmp_path / "ws")
    assert (tmp_path / "ws" / "code" / "main.py").read_bytes() == b"x"
    assert (tmp_path / "ws" / "code" / "alias.py").read_bytes() == b"x"


@pytest.mark.parametrize("member", [_file("../escaped"), _file("/tmp/absolute-escape"), _link("out", "../../escaped")],
                         ids=["dot-dot", "absolute", "link out"])  # fmt: skip
def test_a_member_that_would_leave_the_workspace_never_writes_outside_it(
    tmp_path: Path, python: str, member: tarfile.TarInfo
) -> None:
    """Refused (a build error), or kept inside (the data filter drops an absolute name's "/")."""
    (tmp_path / "ws").mkdir()
    try:
        _unpack(_tarball(member), tmp_path / "ws")
    except (ValueError, tarfile.TarError):
        pass
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/absolute-escape").exists()
    assert not (tmp_path / "ws" / "out").exists() or (tmp_path / "ws" / "out").resolve().is_relative_to(tmp_path / "ws")
