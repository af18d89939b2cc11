#!/usr/bin/env bash
# The main job: pretrain the tiny Ankh3 recipe on the bundled data, then evaluate it downstream.
# Extra arguments go to launch/run.py, e.g. ./run.sh --config=experiments/ablate_completion.py:0.75
. "$(dirname "$0")/launch/env.sh" requirements.txt
set +e
exec python launch/run.py "${@:---config=experiments/base.py}"
