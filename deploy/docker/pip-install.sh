#!/bin/sh
# `pip install` inside an image build: the host's CA bundle from the `pip_cert` build secret
# (never written to a layer) and any wheels bound at /wheels (.wheels/ in the build context).
set -e
if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi
if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_FIND_LINKS=/wheels; fi
exec pip install "$@"
