#!/bin/sh
# The image's install steps, in one place: the Containerfile runs them, and so does the test that builds
# the same root filesystem from Debian's packages without a container engine (tests/e2e/test_container.py).
#
#   install.sh WHEELHOUSE    # a folder with the asr-actors wheel and every dependency as a wheel
#
# The server goes into the virtual environment /opt/asr-actors (the models come inside its packages), runs
# as the system user `asr`, and keeps its state (records, local apps) in /var/lib/asr-actors.
set -eu
wheelhouse="$1"
python3 -m venv /opt/asr-actors
/opt/asr-actors/bin/pip install --quiet --no-index --no-cache-dir --find-links "$wheelhouse" asr-actors
if ! id asr >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/asr-actors --create-home --shell /usr/sbin/nologin asr
fi
mkdir -p /etc/asr-actors
chmod 700 /var/lib/asr-actors
