#!/usr/bin/env bash
# System packages for babelora's corpus (Debian or Ubuntu), installed idempotently:
#   espeak-ng                         default voice engine (GPL-3.0)
#   libttspico-utils libttspico-data  SVOX Pico, default voice engine (Apache-2.0)
#   fillets-ng-data{,-nl,-cs}         Fish Fillets NG: dialogue text + Dutch/Czech voice acting,
#                                     the human-speech test set (GPL-2.0-or-later)
#   with --mbrola: mbrola + the default MBROLA voices (non-commercial voice licences, opt-in)
# and Weblate's wheel (a text source; not installed, only downloaded) into babelora's cache.
# Pico and MBROLA live in Debian's contrib/non-free areas (Ubuntu: multiverse), which a fresh
# machine does not enable: this script adds them to the apt sources (deb822
# /etc/apt/sources.list.d/*.sources or one-line /etc/apt/sources.list) and runs apt-get update.
# A second run changes nothing and downloads nothing.
#
#   bash scripts/install_system_deps.sh [--mbrola] [--no-weblate] [--areas-only]
set -euo pipefail

PYTHON=${PYTHON:-python3}
WEBLATE_VERSION=5.14.3  # keep in step with babelora/data/corpus/weblate.py
MBROLA_VOICES="de1 de2 de3 de4 de5 de6 de7 fr1 fr2 fr3 fr4 fr5 fr6 fr7 es3 es4 it1 it2 it3 it4
nl2 nl3 pt1 en1 us1 us2 us3"  # the defaults of babelora/data/corpus/mbrola.py

APT_ROOT=${APT_ROOT:-}  # tests point this at a copy of /etc/apt
with_mbrola=0
with_weblate=1
areas_only=0
for arg in "$@"; do
  case "$arg" in
    --mbrola) with_mbrola=1 ;;
    --no-weblate) with_weblate=0 ;;
    --areas-only) areas_only=1 ;;  # only enable the archive areas (no apt-get; for tests)
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" != 0 ] && [ -z "$APT_ROOT" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install_system_deps: run as root or install sudo" >&2; exit 1
  fi
fi

# Adds each area of $1 ("contrib non-free") to the Debian/Ubuntu archive entries of the apt
# sources under $APT_ROOT (default /): deb822 stanzas' Components: lines and one-line deb/deb-src
# entries. Other repositories are left alone; entries that have an area keep it once.
enable_areas() {
  local extra=$1 f c archive='(debian\.org|ubuntu\.com)'
  for f in "$APT_ROOT"/etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -Eq "^URIs:.*$archive" "$f" || continue
    for c in $extra; do
      if grep -E '^Components:' "$f" | grep -Evq "[[:space:]]$c([[:space:]]|\$)"; then
        $SUDO sed -i -E "/^Components:/{/[[:space:]]$c([[:space:]]|\$)/!s/[[:space:]]*\$/ $c/}" "$f"
        echo "install_system_deps: enabled '$c' in $f"
      fi
    done
  done
  f="$APT_ROOT/etc/apt/sources.list"
  [ -f "$f" ] || return 0
  for c in $extra; do
    if grep -E "^deb(-src)?[[:space:]].*$archive" "$f" | grep -Evq "[[:space:]]$c([[:space:]]|\$)"; then
      $SUDO sed -i -E "/^deb(-src)?[[:space:]].*$archive/{/[[:space:]]$c([[:space:]]|\$)/!s/[[:space:]]*\$/ $c/}" "$f"
      echo "install_system_deps: enabled '$c' in $f"
    fi
  done
}

archive_areas() {
  local release="$APT_ROOT/etc/os-release"
  [ -f "$release" ] || release=/etc/os-release
  # shellcheck disable=SC1090
  case "$(. "$release"; echo "${ID:-} ${ID_LIKE:-}")" in
    *ubuntu*) echo "universe multiverse" ;;
    *debian*) echo "contrib non-free" ;;
    *) echo "" ;;
  esac
}

if [ "$areas_only" = 1 ]; then
  enable_areas "$(archive_areas)"
  exit 0
fi

packages="espeak-ng libttspico-utils libttspico-data fillets-ng-data fillets-ng-data-nl fillets-ng-data-cs"
if [ "$with_mbrola" = 1 ]; then
  packages="$packages mbrola"
  for v in $MBROLA_VOICES; do packages="$packages mbrola-$v"; done
fi

missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

if [ -n "$missing" ]; then
  extra=$(archive_areas)
  if [ -z "$extra" ]; then
    echo "install_system_deps: not Debian or Ubuntu; install:$missing" >&2; exit 1
  fi
  enable_areas "$extra"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  echo "install_system_deps: installed$missing"
fi

if [ "$with_weblate" = 1 ]; then
  cache="${BABELORA_CACHE:-$HOME/.cache/babelora}/weblate"
  if ! ls "$cache"/weblate-*.whl >/dev/null 2>&1; then
    mkdir -p "$cache"
    "$PYTHON" -m pip download -q --no-deps "weblate==$WEBLATE_VERSION" -d "$cache"
    echo "install_system_deps: Weblate $WEBLATE_VERSION wheel in $cache (read, not installed)"
  fi
fi
