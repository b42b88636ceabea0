"""Test trainer for `stoker logs`: prints a greeting and LINES numbered lines
(PAUSE seconds apart), then exits 0. Torch-free; runs under torchrun."""
import os
import time

pod = os.environ.get("STOKER_POD_NAME", "?")
print(f"hello from {pod}", flush=True)
for i in range(int(os.environ.get("LINES", "5"))):
    time.sleep(float(os.environ.get("PAUSE", "0.2")))
    print(f"{pod} line {i}", flush=True)
