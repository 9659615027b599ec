"""The PATH of an emulated VM: what Container-Optimized OS has, and nothing more.

COS has bash, coreutils, curl, docker and docker-credential-gcr (plus the usual grep, sed, awk,
tar, gzip, find, xargs, flock, ps, hostname); it has no gcloud, gsutil, python or jq. A startup
script that works with this PATH works on COS; one that reaches for python fails here as it would
there. `docker` is a thin wrapper that labels every container with its VM, so the emulator can
remove a VM's containers when the VM goes (they belong to dockerd, not to the script), and passes
the VM's metadata address into the container (a `--network host` container then reaches it, as a
container on a real VM reaches metadata.google.internal).
"""

from __future__ import annotations

import os
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
# Emulated VM's docker: the real client, with `run`/`create` adding the labels that tie a container
# to its VM (emulator-vm=NAME, emulator-id=ID) so the emulator can remove it when the VM goes, and
# the metadata server's address (on Google a container on the host network reaches it by name).
__DOCKER_HOST__
real=__REAL_DOCKER__
name=$(curl -sf -H 'Metadata-Flavor: Google' "http://${GCE_METADATA_HOST}/computeMetadata/v1/instance/name")
args=("$@")
out=()
i=0
while [ "$i" -lt "${#args[@]}" ]; do
  a=${args[$i]}
  case "$a" in
    --config|-c|--context|-H|--host|-l|--log-level|--tlscacert|--tlscert|--tlskey)
      out+=("$a" "${args[$((i+1))]}"); i=$((i+2)) ;;
    -*) out+=("$a"); i=$((i+1)) ;;
    *) break ;;
  esac
done
labels=(--label "emulator-vm=${name}" --label "emulator-id=__EMULATOR_ID__"
        -e "GCE_METADATA_HOST=${GCE_METADATA_HOST}" -e "GCE_METADATA_IP=${GCE_METADATA_IP}")
case "${args[$i]}" in
  run|create) out+=("${args[$i]}" "${labels[@]}"); i=$((i+1)) ;;
  container)
    case "${args[$((i+1))]}" in
      run|create) out+=(container "${args[$((i+1))]}" "${labels[@]}"); i=$((i+2)) ;;
    esac ;;
esac
exec "$real" "${out[@]}" "${args[@]:$i}"
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


def build_bin_dir(folder: Path, emulator_id: str, docker_host: str | None = None) -> Path:
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
        host_line = f"export DOCKER_HOST={docker_host}" if docker_host else ""
        script = (
            DOCKER_WRAPPER.replace("__REAL_DOCKER__", docker)
            .replace("__EMULATOR_ID__", emulator_id)
            .replace("__DOCKER_HOST__", host_line)
        )
        _write_exec(folder / "docker", script)
    _write_exec(folder / "docker-credential-gcr", CREDENTIAL_HELPER)
    return folder


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        return
    link.symlink_to(target.resolve())


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)
