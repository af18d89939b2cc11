"""Test configuration: four virtual CPU devices so sharding code is exercised, and the team stack.

The team stack (launch/services.sh: PostgreSQL + an MLflow tracking server with proxied artifacts) is
started by ./test.sh, which passes its URIs as ANKH3_TEST_MLFLOW_URI and ANKH3_TEST_OPTUNA_STORAGE.
Without them its tests skip with the reason; under CI (CI=true) they fail instead.
"""
import os
import uuid
from typing import NamedTuple

import pytest

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


class TeamStack(NamedTuple):
    tracking_uri: str  # http://127.0.0.1:PORT, an MLflow server backed by PostgreSQL
    storage: str  # postgresql://..., the Optuna database


@pytest.fixture(scope="session")
def team_stack() -> TeamStack:
    tracking, storage = os.environ.get("ANKH3_TEST_MLFLOW_URI"), os.environ.get("ANKH3_TEST_OPTUNA_STORAGE")
    if tracking and storage:
        return TeamStack(tracking, storage)
    why = ("the team stack is not running: run the tests with ./test.sh, or eval \"$(launch/services.sh up)\" and "
           "export ANKH3_TEST_MLFLOW_URI=$MLFLOW_TRACKING_URI ANKH3_TEST_OPTUNA_STORAGE=$OPTUNA_STORAGE")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def tracking_server_uri(team_stack) -> str:
    """The team stack's MLflow tracking server (PostgreSQL store, proxied artifacts)."""
    return team_stack.tracking_uri


@pytest.fixture
def postgres_storage(team_stack) -> str:
    """The team stack's Optuna storage URL (PostgreSQL)."""
    return team_stack.storage


@pytest.fixture
def unique_name(request) -> str:
    """A name no earlier session used: the stack keeps its experiments and studies between test runs."""
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
