"""Test trainer: writes the STOKER_*/AWS_*/torchrun environment it got to $OUT_DIR/<pod>.env.json."""
import json
import os

keys = {k: v for k, v in os.environ.items()
        if k.startswith(("STOKER_", "AWS_", "MASTER_", "WORLD_", "RANK", "LOCAL_RANK", "TORCHELASTIC_"))}
with open(os.path.join(os.environ["OUT_DIR"], f"{os.environ['STOKER_POD_NAME']}.env.json"), "w") as f:
    json.dump(keys, f)
