#!/usr/bin/env bash
# The test suite: same environment plus the test-only extras, then pytest. Extra arguments go to pytest.
. "$(dirname "$0")/launch/env.sh" requirements.txt requirements-test.txt
set +e
exec python -m pytest "$@"
