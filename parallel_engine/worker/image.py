"""The worker image's build context: the shipped Dockerfile, this installed copy of the package
(without the emulator) and the wheels of what the worker imports, downloaded here so the image
builds with no network (`docker build --network none`).

Its tag is a hash of that content: the same package and requirements give the same tag, so an
unchanged worker is never rebuilt.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from parallel_engine.errors import BuildError

#: What `python -m parallel_engine.worker` imports beyond the standard library (the `worker` extra).
REQUIREMENTS = (
    "google-cloud-storage>=2.16",
    "google-crc32c>=1.5",  # parallel_engine.worker.logs: the crc32c of the bytes a log appended
    "google-auth>=2.20",
    "requests>=2.31",
    "docker>=7",
    "pyyaml>=6",  # parallel_engine.config, through the worker settings' checks
    "jinja2>=3.1",  # parallel_engine.backends.gce.startup, where WorkerSettings lives
)
PYTHON = "3.11"  # the base image's
LEFT_OUT = ("emulator", "__pycache__", "project_template")


def package_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def content_hash() -> str:
    """sha256 over the Dockerfile, the requirements and every file of the package that goes in."""
    digest = hashlib.sha256()
    digest.update((Path(__file__).parent / "Dockerfile").read_bytes())
    digest.update("\n".join(REQUIREMENTS).encode())
    root = package_dir()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not _left_out(p.relative_to(root))):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def tag() -> str:
    return "worker-" + content_hash()[:16]


def _left_out(relative: Path) -> bool:
    return any(part in LEFT_OUT for part in relative.parts) or relative.suffix in (".pyc",)


def make_context(dest: Path) -> Path:
    """Write the build context into `dest` (created); returns it."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).parent / "Dockerfile", dest / "Dockerfile")
    shutil.copytree(package_dir(), dest / "parallel_engine",
                    ignore=lambda folder, names: [n for n in names if n in LEFT_OUT or n.endswith(".pyc")])
    wheels = dest / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), "--only-binary=:all:",
         "--python-version", PYTHON, "--implementation", "cp", "--platform", "manylinux2014_x86_64",
         "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64", *REQUIREMENTS],
        capture_output=True, text=True, check=False, timeout=600,
    )
    if done.returncode != 0:
        raise BuildError(f"cannot download the worker's wheels: {done.stderr.strip().splitlines()[-1:]}",
                         hint="pip must reach its package index from this machine")
    return dest
