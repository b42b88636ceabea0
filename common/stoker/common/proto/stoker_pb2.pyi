import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    STARTING: _ClassVar[Phase]
    RESTORING: _ClassVar[Phase]
    TRAINING: _ClassVar[Phase]
    CHECKPOINTING: _ClassVar[Phase]
    FINISHED: _ClassVar[Phase]
    FAILED: _ClassVar[Phase]

class CommandType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_NONE: _ClassVar[CommandType]
    CHECKPOINT_NOW: _ClassVar[CommandType]
    STOP_AFTER_CHECKPOINT: _ClassVar[CommandType]

class AckState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_UNSPECIFIED: _ClassVar[AckState]
    RECEIVED: _ClassVar[AckState]
    DONE: _ClassVar[AckState]
    REJECTED: _ClassVar[AckState]
PHASE_UNSPECIFIED: Phase
STARTING: Phase
RESTORING: Phase
TRAINING: Phase
CHECKPOINTING: Phase
FINISHED: Phase
FAILED: Phase
COMMAND_NONE: CommandType
CHECKPOINT_NOW: CommandType
STOP_AFTER_CHECKPOINT: CommandType
ACK_UNSPECIFIED: AckState
RECEIVED: AckState
DONE: AckState
REJECTED: AckState

class JobIdentity(_message.Message):
    __slots__ = ("namespace", "job_name", "job_uid", "incarnation", "rank", "world_size", "replica_index", "pod_name", "node_name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_UID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_INDEX_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    job_name: str
    job_uid: str
    incarnation: int
    rank: int
    world_size: int
    replica_index: int
    pod_name: str
    node_name: str
    def __init__(self, namespace: _Optional[str] = ..., job_name: _Optional[str] = ..., job_uid: _Optional[str] = ..., incarnation: _Optional[int] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., replica_index: _Optional[int] = ..., pod_name: _Optional[str] = ..., node_name: _Optional[str] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("loss", "tokens_per_second", "grad_norm", "memory_bytes", "step_time_seconds", "checkpoint_duration_seconds", "checkpoint_bytes", "checkpoint_step", "checkpoint_ok", "last_committed_step", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_OK_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    loss: float
    tokens_per_second: float
    grad_norm: float
    memory_bytes: int
    step_time_seconds: float
    checkpoint_duration_seconds: float
    checkpoint_bytes: int
    checkpoint_step: int
    checkpoint_ok: bool
    last_committed_step: int
    extra: _containers.ScalarMap[str, float]
    def __init__(self, loss: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., grad_norm: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., step_time_seconds: _Optional[float] = ..., checkpoint_duration_seconds: _Optional[float] = ..., checkpoint_bytes: _Optional[int] = ..., checkpoint_step: _Optional[int] = ..., checkpoint_ok: _Optional[bool] = ..., last_committed_step: _Optional[int] = ..., extra: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CommandAck(_message.Message):
    __slots__ = ("request_id", "type", "state", "message", "step")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    type: CommandType
    state: AckState
    message: str
    step: int
    def __init__(self, request_id: _Optional[str] = ..., type: _Optional[_Union[CommandType, str]] = ..., state: _Optional[_Union[AckState, str]] = ..., message: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("identity", "seq", "step", "phase", "sent_at", "step_at", "started_at", "metrics", "acks", "error", "anomalies", "finish_reason", "launcher", "activity", "activity_seconds")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    STEP_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ANOMALIES_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    identity: JobIdentity
    seq: int
    step: int
    phase: Phase
    sent_at: _timestamp_pb2.Timestamp
    step_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    metrics: Metrics
    acks: _containers.RepeatedCompositeFieldContainer[CommandAck]
    error: str
    anomalies: _containers.RepeatedCompositeFieldContainer[Anomaly]
    finish_reason: str
    launcher: LauncherReport
    activity: str
    activity_seconds: float
    def __init__(self, identity: _Optional[_Union[JobIdentity, _Mapping]] = ..., seq: _Optional[int] = ..., step: _Optional[int] = ..., phase: _Optional[_Union[Phase, str]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., acks: _Optional[_Iterable[_Union[CommandAck, _Mapping]]] = ..., error: _Optional[str] = ..., anomalies: _Optional[_Iterable[_Union[Anomaly, _Mapping]]] = ..., finish_reason: _Optional[str] = ..., launcher: _Optional[_Union[LauncherReport, _Mapping]] = ..., activity: _Optional[str] = ..., activity_seconds: _Optional[float] = ...) -> None: ...

class LauncherReport(_message.Message):
    __slots__ = ("exit_code", "step", "error", "failed_at", "restart", "restarts_left")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_LEFT_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    step: int
    error: str
    failed_at: _timestamp_pb2.Timestamp
    restart: int
    restarts_left: int
    def __init__(self, exit_code: _Optional[int] = ..., step: _Optional[int] = ..., error: _Optional[str] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., restart: _Optional[int] = ..., restarts_left: _Optional[int] = ...) -> None: ...

class LauncherKeepalive(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: JobIdentity
    def __init__(self, identity: _Optional[_Union[JobIdentity, _Mapping]] = ...) -> None: ...

class LauncherKeepaliveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Anomaly(_message.Message):
    __slots__ = ("seq", "step", "kind", "statistic", "action", "rolled_back_to", "skip_from", "skip_to", "batches_skipped", "rollbacks")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_TO_FIELD_NUMBER: _ClassVar[int]
    SKIP_FROM_FIELD_NUMBER: _ClassVar[int]
    SKIP_TO_FIELD_NUMBER: _ClassVar[int]
    BATCHES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    step: int
    kind: str
    statistic: str
    action: str
    rolled_back_to: int
    skip_from: int
    skip_to: int
    batches_skipped: int
    rollbacks: int
    def __init__(self, seq: _Optional[int] = ..., step: _Optional[int] = ..., kind: _Optional[str] = ..., statistic: _Optional[str] = ..., action: _Optional[str] = ..., rolled_back_to: _Optional[int] = ..., skip_from: _Optional[int] = ..., skip_to: _Optional[int] = ..., batches_skipped: _Optional[int] = ..., rollbacks: _Optional[int] = ...) -> None: ...

class OperatorCommand(_message.Message):
    __slots__ = ("type", "request_id", "issued_at", "reason")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    type: CommandType
    request_id: str
    issued_at: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, type: _Optional[_Union[CommandType, str]] = ..., request_id: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...
