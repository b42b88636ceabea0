"""A training script with a bug: it reports steps through the SDK and raises the
same error at the same step every time (FAIL_AT_STEP, default 3); with FAIL_IN_INCARNATION
set, only in that incarnation (the operator's STOKER_INCARNATION)."""
import os
import sys
import time

from stoker.worker.sdk import Session


def main() -> int:
    fail_at = int(os.environ.get("FAIL_AT_STEP", "3"))
    only = os.environ.get("FAIL_IN_INCARNATION")
    if only is not None and only != os.environ.get("STOKER_INCARNATION"):
        fail_at = -1
    with Session.from_env() as s:
        for step in range(fail_at + 1):
            time.sleep(0.3)
            if step == fail_at:
                print("Traceback (most recent call last):", file=sys.stderr)
                raise ValueError(f"loss is NaN at step {step}: check the learning rate")
            s.step(step, loss=1.0 / (step + 1), step_time_seconds=0.3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
