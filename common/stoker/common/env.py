"""Environment variable names the operator sets on worker pods and the worker
runtime (SDK, trainer) reads. One place, so both sides agree."""

# Identity of the job and of this worker.
JOB_NAME = "STOKER_JOB_NAME"
JOB_NAMESPACE = "STOKER_JOB_NAMESPACE"
JOB_UID = "STOKER_JOB_UID"
POD_NAME = "STOKER_POD_NAME"
POD_UID = "STOKER_POD_UID"    # a pod of the same name created again is another pod (its memory is new)
POD_IP = "STOKER_POD_IP"
NODE_NAME = "STOKER_NODE_NAME"
REPLICA_INDEX = "STOKER_REPLICA_INDEX"
INCARNATION = "STOKER_INCARNATION"

# Operator's gRPC heartbeat service and the per-job token that authenticates it.
OPERATOR_ADDR = "STOKER_OPERATOR_ADDR"     # host:port, an IP literal (no DNS needed)
JOB_TOKEN = "STOKER_JOB_TOKEN"             # from the job's Secret, never literal
HEARTBEAT_INTERVAL = "STOKER_HEARTBEAT_INTERVAL_SECONDS"

# The pod's terminationGracePeriodSeconds. On SIGTERM (preemption, eviction) the launcher
# (stoker.operator.launch) gives the trainer up to this, less a safety margin, to checkpoint
# and stop when the operator asks it to (STOP_AFTER_CHECKPOINT), then stops torchrun.
TERMINATION_GRACE = "STOKER_TERMINATION_GRACE_SECONDS"

# Checkpoints.
CHECKPOINT_URI = "STOKER_CHECKPOINT_URI"   # s3://bucket/prefix or a local path
CHECKPOINT_INTERVAL_STEPS = "STOKER_CHECKPOINT_INTERVAL_STEPS"
CHECKPOINT_INTERVAL_SECONDS = "STOKER_CHECKPOINT_INTERVAL_SECONDS"
CHECKPOINT_KEEP = "STOKER_CHECKPOINT_KEEP"
# spec.checkpoint.memoryIntervalSteps: each rank also keeps its state in the pod's memory every N
# steps, for in-place restarts (stoker.worker.checkpoint.memory).
CHECKPOINT_MEMORY_INTERVAL_STEPS = "STOKER_CHECKPOINT_MEMORY_INTERVAL_STEPS"

# spec.health as a JSON object of the trainer's health.* fields (stoker.worker.config.HealthConfig),
# and the sample ranges earlier incarnations' rollbacks skipped ("START:END,...").
HEALTH = "STOKER_HEALTH"

# S3 endpoint and credentials (credentials come from a Secret via secretKeyRef).
S3_ENDPOINT = "AWS_ENDPOINT_URL_S3"
S3_REGION = "AWS_DEFAULT_REGION"
S3_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
S3_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"

# Testing and drills: a folder where every worker process appends what it reports
# (each step, where it resumed, each checkpoint outcome) to a file of its own that
# nothing ever rewrites (stoker.worker.journal). Unset in production.
STEP_JOURNAL_DIR = "STOKER_STEP_JOURNAL_DIR"

# Set by the launcher (stoker.operator.launch) for its trainers: a private folder where each
# trainer's Session keeps its last completed step (stoker.common.last_step), so the launcher
# can say at which step a worker died, even of SIGKILL.
LAST_STEP_DIR = "STOKER_LAST_STEP_DIR"

# Set by the operator when it hosts the locked rendezvous (stoker.common.rdzv_lock): the
# launcher then reaches it through a local forwarder that presents the job's token.
RENDEZVOUS_LOCKED = "STOKER_RENDEZVOUS_LOCKED"

# Set by the operator on a fixed-size job's workers when a trainer that exits with an error is
# restarted in place (spec.failurePolicy.inPlaceRestarts, rendered as torchrun --max-restarts):
# the launcher reports each such exit to the operator at once (WorkerMessage.launcher).
IN_PLACE_RESTARTS = "STOKER_IN_PLACE_RESTARTS"

# Set by the operator on the pods of a job with hot spares (spec.spares): the launcher waits as a
# spare when the round is full and takes a lost worker's place (stoker.operator.launch_spare).
SPARES = "STOKER_SPARES"
