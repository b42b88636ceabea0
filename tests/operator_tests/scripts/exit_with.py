"""Test trainer that fails at once: exits with $EXIT_CODE (after noting its run)."""
import os
import sys

out = os.environ.get("OUT_DIR")
if out:
    with open(os.path.join(out, f"{os.environ['STOKER_POD_NAME']}.runs"), "a") as f:
        f.write("run\n")
sys.exit(int(os.environ.get("EXIT_CODE", "3")))
