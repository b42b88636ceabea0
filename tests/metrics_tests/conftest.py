"""The recovery e2e fixtures (an operator with heartbeats, a pool of process nodes), reused."""
from tests.operator_tests.conftest import crd, start_operator  # noqa: F401  (fixtures)
from tests.recovery_tests.conftest import heartbeat_operator, recovery_pool, trainer_run  # noqa: F401  (fixtures)
