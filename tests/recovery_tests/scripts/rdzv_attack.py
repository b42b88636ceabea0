"""Run as a TrainingJob's pod in another namespace: try to reach a victim job's rendezvous
state (the key torch's c10d backend keeps, ``torch.rendezvous.<rdzv-id>``) three ways and
write what happened to RESULT_PATH:

  raw           a plain TCPStore client at the operator's rendezvous port
  victim_token  the gateway, naming the victim job with this pod's own (valid) token
  own_store     this job's own store, through its own forwarder: does it hold the key?
"""
import datetime as dt
import json
import os

from torch.distributed import TCPStore

from stoker.common import rdzv_lock

host, port = rdzv_lock.split_endpoint(os.environ["GATEWAY"])
key = os.environ["VICTIM_KEY"]
token, ns, job = os.environ["STOKER_JOB_TOKEN"], os.environ["STOKER_JOB_NAMESPACE"], os.environ["STOKER_JOB_NAME"]


def probe(port_: int, host_: str = "127.0.0.1") -> str:
    try:
        store = TCPStore(host_, port_, is_master=False, timeout=dt.timedelta(seconds=5))
        return "sees the key" if store.check([key]) else "reached a store without the key"
    except Exception as e:  # noqa: BLE001 - refused is the expected answer
        return f"refused: {type(e).__name__}"


victim = rdzv_lock.Forwarder((host, port), os.environ["VICTIM_NAMESPACE"], os.environ["VICTIM_JOB"], token)
own = rdzv_lock.Forwarder((host, port), ns, job, token)
result = {"raw": probe(port, host), "victim_token": probe(victim.port), "own_store": probe(own.port)}
with open(os.environ["RESULT_PATH"], "w") as f:
    json.dump(result, f)
print(json.dumps(result), flush=True)
