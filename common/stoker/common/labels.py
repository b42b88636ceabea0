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

# Annotations.
RDZV_ID = f"{GROUP}/rendezvous-id"
LAST_APPLIED_REPLICAS = f"{GROUP}/replicas"
