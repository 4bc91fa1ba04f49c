import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DivergencePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIVERGENCE_POLICY_UNSPECIFIED: _ClassVar[DivergencePolicy]
    FAIL: _ClassVar[DivergencePolicy]
    ROLLBACK: _ClassVar[DivergencePolicy]

class Preprocessing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREPROCESSING_UNSPECIFIED: _ClassVar[Preprocessing]
    SCALE: _ClassVar[Preprocessing]
    STANDARDIZE: _ClassVar[Preprocessing]
    NONE: _ClassVar[Preprocessing]

class Initializer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INITIALIZER_UNSPECIFIED: _ClassVar[Initializer]
    HE_NORMAL: _ClassVar[Initializer]
    HE_UNIFORM: _ClassVar[Initializer]
    GLOROT_NORMAL: _ClassVar[Initializer]
    GLOROT_UNIFORM: _ClassVar[Initializer]

class Activation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVATION_UNSPECIFIED: _ClassVar[Activation]
    RELU: _ClassVar[Activation]
    SIGMOID: _ClassVar[Activation]
    TANH: _ClassVar[Activation]
    IDENTITY: _ClassVar[Activation]
    LEAKY_RELU: _ClassVar[Activation]
    ELU: _ClassVar[Activation]
    GELU: _ClassVar[Activation]
    SOFTPLUS: _ClassVar[Activation]

class Loss(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOSS_UNSPECIFIED: _ClassVar[Loss]
    SOFTMAX_CROSS_ENTROPY: _ClassVar[Loss]
    MEAN_SQUARED_ERROR: _ClassVar[Loss]
    BINARY_CROSS_ENTROPY: _ClassVar[Loss]
    MEAN_ABSOLUTE_ERROR: _ClassVar[Loss]
    HUBER: _ClassVar[Loss]

class OptimizerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[OptimizerKind]
    SGD: _ClassVar[OptimizerKind]
    MOMENTUM: _ClassVar[OptimizerKind]
    ADAM: _ClassVar[OptimizerKind]
    NESTEROV: _ClassVar[OptimizerKind]
    ADAMW: _ClassVar[OptimizerKind]
    RMSPROP: _ClassVar[OptimizerKind]
    ADAGRAD: _ClassVar[OptimizerKind]

class ScheduleKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_UNSPECIFIED: _ClassVar[ScheduleKind]
    CONSTANT: _ClassVar[ScheduleKind]
    STEP: _ClassVar[ScheduleKind]
    COSINE: _ClassVar[ScheduleKind]
    MULTI_STEP: _ClassVar[ScheduleKind]
    EXPONENTIAL: _ClassVar[ScheduleKind]
    ONE_CYCLE: _ClassVar[ScheduleKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
DIVERGENCE_POLICY_UNSPECIFIED: DivergencePolicy
FAIL: DivergencePolicy
ROLLBACK: DivergencePolicy
PREPROCESSING_UNSPECIFIED: Preprocessing
SCALE: Preprocessing
STANDARDIZE: Preprocessing
NONE: Preprocessing
INITIALIZER_UNSPECIFIED: Initializer
HE_NORMAL: Initializer
HE_UNIFORM: Initializer
GLOROT_NORMAL: Initializer
GLOROT_UNIFORM: Initializer
ACTIVATION_UNSPECIFIED: Activation
RELU: Activation
SIGMOID: Activation
TANH: Activation
IDENTITY: Activation
LEAKY_RELU: Activation
ELU: Activation
GELU: Activation
SOFTPLUS: Activation
LOSS_UNSPECIFIED: Loss
SOFTMAX_CROSS_ENTROPY: Loss
MEAN_SQUARED_ERROR: Loss
BINARY_CROSS_ENTROPY: Loss
MEAN_ABSOLUTE_ERROR: Loss
HUBER: Loss
OPTIMIZER_UNSPECIFIED: OptimizerKind
SGD: OptimizerKind
MOMENTUM: OptimizerKind
ADAM: OptimizerKind
NESTEROV: OptimizerKind
ADAMW: OptimizerKind
RMSPROP: OptimizerKind
ADAGRAD: OptimizerKind
SCHEDULE_UNSPECIFIED: ScheduleKind
CONSTANT: ScheduleKind
STEP: ScheduleKind
COSINE: ScheduleKind
MULTI_STEP: ScheduleKind
EXPONENTIAL: ScheduleKind
ONE_CYCLE: ScheduleKind
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState

class JobSpec(_message.Message):
    __slots__ = ("name", "dataset", "layers", "loss", "optimizer", "batch_size", "epochs", "num_workers", "seed", "eval_every_steps", "micro_shards", "label_smoothing", "huber_delta", "eval_top_k", "request_id", "checkpoint_every_steps", "on_divergence", "rollback_lr_factor", "max_rollbacks", "max_worker_restarts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    MICRO_SHARDS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    HUBER_DELTA_FIELD_NUMBER: _ClassVar[int]
    EVAL_TOP_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    ON_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_LR_FACTOR_FIELD_NUMBER: _ClassVar[int]
    MAX_ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dataset: DatasetSpec
    layers: _containers.RepeatedCompositeFieldContainer[LayerSpec]
    loss: Loss
    optimizer: OptimizerSpec
    batch_size: int
    epochs: int
    num_workers: int
    seed: int
    eval_every_steps: int
    micro_shards: int
    label_smoothing: float
    huber_delta: float
    eval_top_k: int
    request_id: str
    checkpoint_every_steps: int
    on_divergence: DivergencePolicy
    rollback_lr_factor: float
    max_rollbacks: int
    max_worker_restarts: int
    def __init__(self, name: _Optional[str] = ..., dataset: _Optional[_Union[DatasetSpec, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[LayerSpec, _Mapping]]] = ..., loss: _Optional[_Union[Loss, str]] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., batch_size: _Optional[int] = ..., epochs: _Optional[int] = ..., num_workers: _Optional[int] = ..., seed: _Optional[int] = ..., eval_every_steps: _Optional[int] = ..., micro_shards: _Optional[int] = ..., label_smoothing: _Optional[float] = ..., huber_delta: _Optional[float] = ..., eval_top_k: _Optional[int] = ..., request_id: _Optional[str] = ..., checkpoint_every_steps: _Optional[int] = ..., on_divergence: _Optional[_Union[DivergencePolicy, str]] = ..., rollback_lr_factor: _Optional[float] = ..., max_rollbacks: _Optional[int] = ..., max_worker_restarts: _Optional[int] = ...) -> None: ...

class DatasetSpec(_message.Message):
    __slots__ = ("uri", "preprocessing", "max_train_samples", "max_test_samples")
    URI_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_TEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    uri: str
    preprocessing: Preprocessing
    max_train_samples: int
    max_test_samples: int
    def __init__(self, uri: _Optional[str] = ..., preprocessing: _Optional[_Union[Preprocessing, str]] = ..., max_train_samples: _Optional[int] = ..., max_test_samples: _Optional[int] = ...) -> None: ...

class LayerSpec(_message.Message):
    __slots__ = ("units", "activation", "slope", "init", "dropout")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    SLOPE_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    units: int
    activation: Activation
    slope: float
    init: Initializer
    dropout: float
    def __init__(self, units: _Optional[int] = ..., activation: _Optional[_Union[Activation, str]] = ..., slope: _Optional[float] = ..., init: _Optional[_Union[Initializer, str]] = ..., dropout: _Optional[float] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("kind", "learning_rate", "momentum", "beta1", "beta2", "epsilon", "schedule", "weight_decay", "clip_norm", "rho")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    kind: OptimizerKind
    learning_rate: float
    momentum: float
    beta1: float
    beta2: float
    epsilon: float
    schedule: ScheduleSpec
    weight_decay: float
    clip_norm: float
    rho: float
    def __init__(self, kind: _Optional[_Union[OptimizerKind, str]] = ..., learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., epsilon: _Optional[float] = ..., schedule: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., weight_decay: _Optional[float] = ..., clip_norm: _Optional[float] = ..., rho: _Optional[float] = ...) -> None: ...

class ScheduleSpec(_message.Message):
    __slots__ = ("kind", "gamma", "step_epochs", "min_learning_rate", "milestones", "warmup_steps", "pct_start", "div_factor", "final_div_factor")
    KIND_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    STEP_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MIN_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MILESTONES_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    PCT_START_FIELD_NUMBER: _ClassVar[int]
    DIV_FACTOR_FIELD_NUMBER: _ClassVar[int]
    FINAL_DIV_FACTOR_FIELD_NUMBER: _ClassVar[int]
    kind: ScheduleKind
    gamma: float
    step_epochs: int
    min_learning_rate: float
    milestones: _containers.RepeatedScalarFieldContainer[int]
    warmup_steps: int
    pct_start: float
    div_factor: float
    final_div_factor: float
    def __init__(self, kind: _Optional[_Union[ScheduleKind, str]] = ..., gamma: _Optional[float] = ..., step_epochs: _Optional[int] = ..., min_learning_rate: _Optional[float] = ..., milestones: _Optional[_Iterable[int]] = ..., warmup_steps: _Optional[int] = ..., pct_start: _Optional[float] = ..., div_factor: _Optional[float] = ..., final_div_factor: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("epoch", "step", "total_steps", "samples_trained", "loss", "eval_loss", "eval_accuracy", "samples_per_second", "has_eval", "learning_rate", "eval_top_k_accuracy", "eval_mse", "eval_mae", "eval_r2", "eval_label_accuracy", "checkpoint_step", "rollbacks", "worker_restarts", "server_restarts")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TRAINED_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    HAS_EVAL_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EVAL_TOP_K_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVAL_MSE_FIELD_NUMBER: _ClassVar[int]
    EVAL_MAE_FIELD_NUMBER: _ClassVar[int]
    EVAL_R2_FIELD_NUMBER: _ClassVar[int]
    EVAL_LABEL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    SERVER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    step: int
    total_steps: int
    samples_trained: int
    loss: float
    eval_loss: float
    eval_accuracy: float
    samples_per_second: float
    has_eval: bool
    learning_rate: float
    eval_top_k_accuracy: float
    eval_mse: float
    eval_mae: float
    eval_r2: float
    eval_label_accuracy: float
    checkpoint_step: int
    rollbacks: int
    worker_restarts: int
    server_restarts: int
    def __init__(self, epoch: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., samples_trained: _Optional[int] = ..., loss: _Optional[float] = ..., eval_loss: _Optional[float] = ..., eval_accuracy: _Optional[float] = ..., samples_per_second: _Optional[float] = ..., has_eval: _Optional[bool] = ..., learning_rate: _Optional[float] = ..., eval_top_k_accuracy: _Optional[float] = ..., eval_mse: _Optional[float] = ..., eval_mae: _Optional[float] = ..., eval_r2: _Optional[float] = ..., eval_label_accuracy: _Optional[float] = ..., checkpoint_step: _Optional[int] = ..., rollbacks: _Optional[int] = ..., worker_restarts: _Optional[int] = ..., server_restarts: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "spec", "state", "progress", "message", "created_at", "started_at", "finished_at", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: JobSpec
    state: JobState
    progress: Progress
    message: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    owner: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., message: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ScaleJobRequest(_message.Message):
    __slots__ = ("job_id", "num_workers")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    num_workers: int
    def __init__(self, job_id: _Optional[str] = ..., num_workers: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("kind", "job", "time")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[JobEvent.Kind]
        STATE: _ClassVar[JobEvent.Kind]
        PROGRESS: _ClassVar[JobEvent.Kind]
        EVAL: _ClassVar[JobEvent.Kind]
        ROLLBACK: _ClassVar[JobEvent.Kind]
        RECOVERED: _ClassVar[JobEvent.Kind]
        CHECKPOINT: _ClassVar[JobEvent.Kind]
    KIND_UNSPECIFIED: JobEvent.Kind
    STATE: JobEvent.Kind
    PROGRESS: JobEvent.Kind
    EVAL: JobEvent.Kind
    ROLLBACK: JobEvent.Kind
    RECOVERED: JobEvent.Kind
    CHECKPOINT: JobEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    kind: JobEvent.Kind
    job: Job
    time: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[_Union[JobEvent.Kind, str]] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data", "offset", "total_size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_size: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ...) -> None: ...
