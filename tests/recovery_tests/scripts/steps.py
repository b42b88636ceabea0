"""A training script that only reports steps (STEPS of STEP_S seconds each) through the SDK."""
import os
import time

from stoker.worker.sdk import Session

with Session.from_env() as s:
    for step in range(int(os.environ.get("STEPS", "60"))):
        time.sleep(float(os.environ.get("STEP_S", "0.5")))
        s.step(step)
