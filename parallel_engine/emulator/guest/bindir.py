"""The PATH of an emulated VM: what Container-Optimized OS has, and nothing more.

COS has bash, coreutils, curl, docker and docker-credential-gcr (plus the usual grep, sed, awk,
tar, gzip, find, xargs, flock, ps, hostname); it has no gcloud, gsutil, python or jq. A startup
script that works with this PATH works on COS; one that reaches for python fails here as it would
there. `docker` is the real client, kept on the VM's own Docker socket (DOCKER_HOST, which the VM's
environment sets: docker_proxy.py), where every container is stamped as the VM's.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

#: Programs COS ships besides coreutils (looked up on this machine's PATH).
COS_EXTRAS = ("bash", "curl", "grep", "sed", "awk", "tar", "gzip", "find", "xargs", "flock", "ps", "hostname", "kill")
#: Fallback when dpkg cannot list coreutils (non-Debian machines).
_COREUTILS_FALLBACK = [
    "base64",
    "basename",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "du",
    "echo",
    "env",
    "expr",
    "false",
    "head",
    "id",
    "install",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mktemp",
    "mv",
    "nproc",
    "od",
    "printf",
    "pwd",
    "readlink",
    "realpath",
    "rm",
    "rmdir",
    "seq",
    "sha256sum",
    "sleep",
    "sort",
    "split",
    "stat",
    "stdbuf",
    "sync",
    "tail",
    "tee",
    "test",
    "timeout",
    "touch",
    "tr",
    "true",
    "truncate",
    "tty",
    "uname",
    "uniq",
    "wc",
    "whoami",
    "yes",
]

DOCKER_WRAPPER = r"""#!/bin/bash
# Emulated VM's docker: the real client, on this VM's own Docker socket (DOCKER_HOST, set in the
# VM's environment), which stamps every container with the VM's labels and metadata address so the
# emulator removes it when the VM goes. Without it the client would reach the machine's engine
# directly and its containers would outlive the VM: refused.
if [ -z "${DOCKER_HOST:-}" ]; then
  echo "docker: DOCKER_HOST is unset: on this emulated VM it names the VM's own Docker socket" >&2
  exit 125
fi
exec __REAL_DOCKER__ "$@"
"""

CREDENTIAL_HELPER = r"""#!/bin/bash
# Stand-in for Container-Optimized OS's docker-credential-gcr: `configure-docker` writes the
# credHelpers entries, `get` answers docker with the VM's service-account token from metadata.
set -u
case "${1:-}" in
  configure-docker)
    registries="gcr.io,us.gcr.io,eu.gcr.io,asia.gcr.io,marketplace.gcr.io"
    for arg in "${@:2}"; do
      case "$arg" in --registries=*) registries=${arg#--registries=} ;; esac
    done
    if [ -z "${DOCKER_CONFIG:-}" ]; then
      echo "ERROR: unable to write ${HOME:-/root}/.docker/config.json: read-only file system" >&2
      echo "(Container-Optimized OS: HOME is read-only; set DOCKER_CONFIG to a writable folder)" >&2
      exit 1
    fi
    mkdir -p "$DOCKER_CONFIG"
    entries=""
    IFS=',' read -ra regs <<< "$registries"
    for r in "${regs[@]}"; do
      entries="${entries:+$entries,}\"$r\": \"gcr\""
    done
    printf '{\n  "credHelpers": {%s}\n}\n' "$entries" > "$DOCKER_CONFIG/config.json"
    echo "Docker configuration file updated."
    ;;
  get)
    read -r server
    json=$(curl -sf -H 'Metadata-Flavor: Google' \
      "http://${GCE_METADATA_HOST}/computeMetadata/v1/instance/service-accounts/default/token") || exit 1
    [[ $json =~ \"access_token\":\ *\"([^\"]+)\" ]] || exit 1
    printf '{"ServerURL":"%s","Username":"_dcgcr_2_0_0_token","Secret":"%s"}\n' "$server" "${BASH_REMATCH[1]}"
    ;;
  store|erase) cat > /dev/null ;;
  version) echo "docker-credential-gcr (parallel-engine emulator stand-in)" ;;
  *) echo "usage: docker-credential-gcr configure-docker [--registries=...] | get" >&2; exit 1 ;;
esac
"""


def coreutils_programs() -> list[Path]:
    try:
        listed = subprocess.run(["dpkg", "-L", "coreutils"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    found = [
        Path(line)
        for line in listed.splitlines()
        if line.startswith(("/bin/", "/usr/bin/")) and os.access(line, os.X_OK) and not os.path.isdir(line)
    ]
    if found:
        return found
    return [Path(p) for name in _COREUTILS_FALLBACK if (p := shutil.which(name))]


def build_bin_dir(folder: Path) -> Path:
    """Fill `folder` with the VM PATH and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for program in coreutils_programs():
        _link(folder / program.name, program)
    for name in COS_EXTRAS:
        if found := shutil.which(name):
            _link(folder / name, Path(found))
    if bash := shutil.which("bash"):
        _link(folder / "sh", Path(bash))
    if docker := shutil.which("docker"):
        _write_exec(folder / "docker", DOCKER_WRAPPER.replace("__REAL_DOCKER__", shlex.quote(docker)))
    _write_exec(folder / "docker-credential-gcr", CREDENTIAL_HELPER)
    return folder


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        return
    link.symlink_to(target.resolve())


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)
