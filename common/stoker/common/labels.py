"""Label and annotation keys on every object the operator creates."""

GROUP = "stoker.dev"
VERSION = "v1alpha1"
KIND = "TrainingJob"
PLURAL = "trainingjobs"

# Standard app.kubernetes.io labels.
APP_NAME = "app.kubernetes.io/name"
APP_INSTANCE = "app.kubernetes.io/instance"
APP_COMPONENT = "app.kubernetes.io/component"
APP_MANAGED_BY = "app.kubernetes.io/managed-by"
APP_PART_OF = "app.kubernetes.io/part-of"

MANAGED_BY_VALUE = "stoker-operator"
COMPONENT_WORKER = "worker"

# Stoker's own labels.
JOB_NAME = f"{GROUP}/job-name"            # the TrainingJob's name
REPLICA_INDEX = f"{GROUP}/replica-index"  # 0..replicas-1, stable across restarts
INCARNATION = f"{GROUP}/incarnation"      # bumps on every coordinated whole-job restart
OPERATOR_ACTIVE = f"{GROUP}/operator-active"  # on operator pods (peering): "true" on the one that acts

# Annotations.
RDZV_ID = f"{GROUP}/rendezvous-id"
LAST_APPLIED_REPLICAS = f"{GROUP}/replicas"

# On-call requests (`stoker checkpoint` / `stoker restart` / `stoker drain`), set by the CLI on the
# TrainingJob; the operator acts on each new value once. Value: a request id
# "<UTC yyyymmddThhmmssZ>-<6 hex>" (unique per request; re-setting the same id is a no-op).
#   checkpoint-request: send CHECKPOINT_NOW to every rank over the heartbeat stream; workers commit
#                       a checkpoint at once and status.lastCheckpoint advances.
#   restart-request:    restart the whole job now (new incarnation), like a failure that does not
#                       count against failurePolicy.maxRestarts.
# After acting, the operator sets the matching *-handled annotation to the same id (the CLI shows
# that the request was picked up; `checkpoint --wait` then waits for status.lastCheckpoint).
CHECKPOINT_REQUEST = f"{GROUP}/checkpoint-request"
CHECKPOINT_REQUEST_HANDLED = f"{GROUP}/checkpoint-request-handled"
RESTART_REQUEST = f"{GROUP}/restart-request"
RESTART_REQUEST_HANDLED = f"{GROUP}/restart-request-handled"
