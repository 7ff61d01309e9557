#!/usr/bin/env bash
# The system packages the default run and the tests need beyond pip, on Debian/Ubuntu:
#   g++       the CUDA-emulation tests compile the kernels on the host;
#   chromium  the browser tests (Playwright drives Debian's chromium: no browser download) and
#             kaleido's PNG export of figures.
# Installs what is missing when it may (root, or sudo without a password) unless WORKBENCH_NO_APT=1;
# otherwise stops with one line naming the command. WORKBENCH_CHROMIUM: where chromium is looked for.
set -euo pipefail
missing=()
command -v g++ >/dev/null 2>&1 || missing+=(g++)
[ -x "${WORKBENCH_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
if [ "${WORKBENCH_NO_APT:-0}" = 1 ] || { [ -n "$sudo" ] && ! sudo -n true 2>/dev/null; }; then
  echo "missing system packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}  (then make again)" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
$sudo bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]}" >/dev/null
