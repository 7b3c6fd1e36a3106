#!/bin/sh
# ensure.sh LABEL DEBIAN_PACKAGE WHAT_SKIPS CHECK_COMMAND...
# Is LABEL on this machine (CHECK_COMMAND succeeds)? If not, install DEBIAN_PACKAGE with apt where apt is usable
# (root). Still missing: with CI=true, one line on stderr and exit 1 (a CI run never goes green without it);
# otherwise a note that WHAT_SKIPS will skip (pytest -rs lists each skip with its reason).
label=$1 package=$2 skips=$3
shift 3
if "$@" >/dev/null 2>&1; then echo "$label: found"; exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package") >/dev/null 2>&1
    if "$@" >/dev/null 2>&1; then echo "$label: installed (Debian package $package)"; exit 0; fi
    why="the Debian package $package did not install"
else
    why="apt-get is not usable here (needs root); install the Debian package $package"
fi
if [ "$CI" = true ]; then
    echo "CI=true: $label is missing ($why)" >&2
    exit 1
fi
echo "$label is missing ($why): $skips will skip"
