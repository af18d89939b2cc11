#!/usr/bin/env bash
# The test suite: same environment plus the test-only extras, then pytest. Extra arguments go to pytest.
# The tests that need the team stack (PostgreSQL + an MLflow tracking server, launch/services.sh) get it
# here: one stack per checkout in /tmp (or ANKH3_SERVICES_DIR), started when it is not running and
# stopped at the end when this script started it. ANKH3_TEST_STACK=0 runs without it (those tests then
# skip, with the reason, and fail under CI=true).
. "$(dirname "$0")/launch/env.sh" requirements.txt requirements-test.txt
set +e
export ANKH3_SERVICES_DIR="${ANKH3_SERVICES_DIR:-/tmp/ankh3-stack-$(printf %s "$PWD" | sha1sum | cut -c1-12)}"
started=0
if [ "${ANKH3_TEST_STACK:-1}" != 0 ]; then
  launch/services.sh status >/dev/null 2>&1 || started=1
  # the tests get the stack's URIs under their own names, so nothing else in them is redirected to it
  exports="$(launch/services.sh up)" || echo "[test] the team stack did not start (see above); its tests will not run" >&2
  eval "$(printf '%s\n' "$exports" | sed -e 's/^export MLFLOW_TRACKING_URI=/export ANKH3_TEST_MLFLOW_URI=/' \
                                         -e 's/^export OPTUNA_STORAGE=/export ANKH3_TEST_OPTUNA_STORAGE=/')"
fi
stop_stack() { [ "$started" = 1 ] && launch/services.sh down 2>/dev/null; }
trap stop_stack EXIT
python -m pytest "$@"
