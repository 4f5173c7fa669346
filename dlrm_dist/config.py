"""Typed configuration: dataclass sections, YAML files and dotted CLI overrides.

A config is a YAML mapping of sections (``data``, ``model``, ``sharding``,
``optim``, ``train``, ``metrics``, ``dist``); each section is a dataclass below,
and each builder receives only its own section. Loading is strict: an unknown
key, a value of the wrong type or a missing file raises :class:`ConfigError`
naming the key and the file, so a typo never silently trains the wrong model.

Overrides use dotted keys: ``train.batch_size=512 model.bottom_mlp=[512,256,64]``;
the value is parsed as YAML, then type-checked like a file value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import yaml

from dlrm_dist.core.criteo import NUM_SPARSE_FEATURES, SPARSE_FEATURE_NAMES
from dlrm_dist.core.errors import UserError

# Names checked at load time (kept here so loading a config needs no TorchRec import;
# tests/unit/test_config.py checks they match TorchRec's enums).
EMBEDDING_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
DENSE_OPTIMIZERS = ("sgd", "adagrad", "adam")
SHARDING_TYPES = (
    "data_parallel", "table_wise", "column_wise", "row_wise",
    "table_row_wise", "table_column_wise", "grid_shard",
)
COMPUTE_KERNELS = ("dense", "fused", "fused_uvm", "fused_uvm_caching", "key_value")


class ConfigError(UserError, ValueError):
    """A config file or override is wrong; the message names the key and the source."""


@dataclass
class DataConfig:
    source: Literal["random", "synthetic", "criteo"] = "synthetic"
    """Where batches come from: TorchRec's RandomRecDataset, the seeded synthetic
    teacher (learnable), or preprocessed Criteo npy days under ``path``."""
    path: str = ""
    """Folder of ``day_{i}_{dense,sparse,labels}.npy`` files (source=criteo)."""
    seed: int = 0
    """Seed of the synthetic teacher and of every random draw in the data."""
    train_samples: int = 262144
    """Training samples in one epoch (random / synthetic sources)."""
    val_samples: int = 32768
    """Validation samples (random / synthetic sources)."""
    test_samples: int = 32768
    """Test samples (random / synthetic sources)."""
    zipf_exponent: float = 1.1
    """Skew of synthetic categorical ids: P(rank r) ~ r^-s, as in real click logs."""
    teacher_scale: float = 1.0
    """Strength of the synthetic teacher's logit; larger means an easier task."""
    multi_hot_sizes: Optional[List[int]] = None
    """Ids per sample for each of the 26 features (DLRM-DCNv2); None means one-hot."""
    multi_hot_distribution: Literal["uniform", "pareto"] = "uniform"
    """How MLPerf's synthetic multi-hot expansion draws the extra ids."""
    shuffle_batches: bool = False
    """Shuffle the order of training batches each epoch (criteo source)."""
    shuffle_rows: bool = False
    """Shuffle training rows within each day of a rank's slice each epoch (criteo
    source); random reads, so fast only while the days sit in page cache."""
    eval_batch_size: int = 0
    """Per-rank batch size for validation and test; 0 means train.batch_size."""
    num_workers: int = 0
    """DataLoader worker processes per rank that build batches while the step runs
    (0: in the training process). Batches and their order are the same for any
    number; on CUDA hashing and multi-hot expansion run on the GPU after the copy.
    0 by default: on a CPU host the workers compete with the step for the same
    cores (benchmarks/loader.py measured 1.2M samples/s with 2 workers against
    3.0M in one process on 2 cores); the GPU configs in configs/ set 2."""
    prefetch_factor: int = 2
    """Batches each worker keeps ready (num_workers > 0)."""


@dataclass
class ModelConfig:
    embedding_dim: int = 16
    """D: width of every embedding row; the bottom MLP's last layer must equal it."""
    num_embeddings: int = 100000
    """Rows per table when ``num_embeddings_per_feature`` is not given."""
    num_embeddings_per_feature: Optional[List[int]] = None
    """Rows of each of the 26 tables (cat_0 ... cat_25)."""
    bottom_mlp: List[int] = field(default_factory=lambda: [512, 256, 16])
    """Layer sizes of the dense arch; input is the 13 dense features."""
    top_mlp: List[int] = field(default_factory=lambda: [512, 256, 1])
    """Layer sizes of the over arch; the last must be 1 (the logit)."""
    interaction: Literal["dot", "dcn"] = "dot"
    """Pairwise dot products (DLRM) or a low-rank cross network (DLRM-DCNv2)."""
    dcn_num_layers: int = 3
    """Cross layers of DCNv2 (interaction=dcn)."""
    dcn_low_rank_dim: int = 512
    """Rank of each DCNv2 cross layer's weight (interaction=dcn)."""
    embedding_dtype: Literal["fp32", "fp16"] = "fp32"
    """Storage type of the embedding rows; fp16 halves the tables (FBGEMM keeps
    the optimizer state in fp32 either way)."""

    def table_sizes(self) -> List[int]:
        if self.num_embeddings_per_feature is not None:
            return list(self.num_embeddings_per_feature)
        return [self.num_embeddings] * NUM_SPARSE_FEATURES


@dataclass
class TableConstraintConfig:
    sharding_types: List[str] = field(default_factory=list)
    """Allowed TorchRec sharding types (table_wise, row_wise, column_wise,
    table_row_wise, table_column_wise, data_parallel); empty lets the planner choose."""
    compute_kernels: List[str] = field(default_factory=list)
    """Allowed compute kernels (fused, fused_uvm, fused_uvm_caching, dense); empty: any."""


@dataclass
class ShardingConfig:
    sharding_types: List[str] = field(default_factory=list)
    """Sharding types allowed for every table; empty lets the planner choose."""
    compute_kernels: List[str] = field(default_factory=list)
    """Compute kernels allowed for every table; empty lets the planner choose."""
    tables: Dict[str, TableConstraintConfig] = field(default_factory=dict)
    """Per-table constraints by feature name (cat_0 ...), overriding the two above."""
    hbm_gb: Optional[float] = None
    """HBM per GPU the planner may use; None reads it from the device."""
    ddr_gb: Optional[float] = None
    """Host memory per rank the planner may use; None: this host's RAM / local ranks."""
    storage_reservation: float = 0.15
    """Fraction of each device's memory the planner keeps free for activations etc."""


@dataclass
class OptimizerConfig:
    name: str = "adagrad"
    """sgd | adagrad | adam, and rowwise_adagrad for embeddings."""
    lr: float = 0.01
    """Peak learning rate."""
    eps: float = 1e-8
    """Epsilon of Adagrad / Adam."""
    weight_decay: float = 0.0
    """L2 weight decay."""
    momentum: float = 0.0
    """SGD momentum (dense optimizer only)."""


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0
    """Linear warm-up from 0 to the peak LR over this many steps (MLPerf)."""
    decay_start_step: int = 0
    """Step at which polynomial decay starts; 0 with decay_steps=0 means no decay."""
    decay_steps: int = 0
    """Length of the polynomial decay; the LR reaches end_lr_factor * peak at its end."""
    decay_power: float = 2.0
    """Power of the polynomial decay (MLPerf uses 2)."""
    end_lr_factor: float = 0.0
    """Final LR as a fraction of the peak."""


@dataclass
class OptimConfig:
    embedding: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adagrad", lr=0.05))
    """Optimizer fused into the embedding backward (FBGEMM)."""
    dense: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adagrad", lr=0.05))
    """Optimizer of the data-parallel MLPs."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """LR schedule applied to both optimizers."""


@dataclass
class TrainConfig:
    batch_size: int = 2048
    """Samples per rank per step; the global batch is this times the world size."""
    epochs: int = 1
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Stop after this many steps; 0 trains for ``epochs``."""
    eval_every: int = 0
    """Validate every N steps; 0 validates only at the end."""
    max_eval_batches: int = 0
    """Cap per-rank batches in a periodic validation; 0 reads the whole split."""
    seed: int = 0
    """Seed of the model's initial weights."""
    checkpoint_every: int = 0
    """Save a checkpoint every N steps; 0 saves none during training."""
    checkpoint_at_end: bool = False
    """Also save one after the last step (off by default: a Terabyte model's
    checkpoint is hundreds of GB)."""
    checkpoint_dir: str = ""
    """Folder of ``step-N/`` checkpoints and the ``latest`` pointer; empty means
    ``<run_dir>/checkpoints``."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept (the newest); older ones are deleted. 0 keeps all."""
    resume: str = ""
    """Where to start from: "" a fresh model; "latest" the checkpoint that
    ``<checkpoint_dir>/latest`` names (a fresh model when there is none yet, so a
    restarted job can always pass it); or the path of a ``step-N`` folder."""
    pipeline: Literal["base", "sparse_dist", "semi_sync"] = "sparse_dist"
    """TorchRec train pipeline: sparse_dist (TrainPipelineSparseDist) overlaps the
    next batch's input all-to-all with this step; base (TrainPipelineBase) runs
    the stages in order; semi_sync (TrainPipelineSemiSync) also overlaps the next
    batch's embedding lookup, with embeddings one step stale."""
    profile_steps: List[int] = field(default_factory=list)
    """``[start, stop]``: record a torch.profiler trace of steps start ... stop-1
    (0-based) into ``<run_dir>/profile/`` and log the top ops; empty: no profiling."""
    profile_ranks: List[int] = field(default_factory=lambda: [0])
    """Ranks that profile when ``profile_steps`` is set (each writes its own trace)."""


@dataclass
class MetricsConfig:
    log_every: int = 50
    """Log training loss and throughput every N steps."""
    tensorboard: bool = False
    """Also write TensorBoard events under the run directory."""
    auroc_thresholds: int = 0
    """0: exact AUROC over all predictions; N: binned into N thresholds (constant memory)."""
    progress_bar: bool = True
    """Show a tqdm progress bar on rank 0."""


@dataclass
class DistConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Compute device; auto picks CUDA when it is there."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend; auto is nccl on CUDA, gloo on CPU."""
    check_host_memory: bool = True
    """Refuse to start when the host has less free RAM than the job needs."""
    timeout_s: float = 600.0
    """Longest any collective may wait for its peers (process-group timeout): a
    rank that stops answering makes the others fail after this many seconds
    instead of holding the job (torch's default is 30 minutes)."""
    num_threads: int = 0
    """Intra-op CPU threads per rank; 0: OMP_NUM_THREADS when set, else this
    process's cores / ranks on the host, so ranks never oversubscribe the CPU."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# --------------------------------------------------------------------------- #
# Strict conversion of plain YAML values into the dataclasses above.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(msg: str = "") -> ConfigError:
        detail = msg or f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        return ConfigError(f"{source}: key '{key}': {detail}")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key, source)
    if origin is Literal:
        if value not in args:
            raise fail(f"must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise fail()
        return [_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise fail()
        return {str(k): _convert(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a mapping (section), got {type(value).__name__}")
        return _build_section(tp, value, key, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise fail(f"unsupported annotation {tp}")  # pragma: no cover - programming error


def _build_section(cls: type, values: Dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if k not in hints:
            raise ConfigError(
                f"{source}: unknown key '{dotted}'; "
                f"known keys{' of ' + prefix if prefix else ''}: {', '.join(names)}"
            )
        kwargs[k] = _convert(v, hints[k], dotted, source)
    return cls(**kwargs)


def _merge(base: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = base
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{key}': '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.batch_size=512'`` -> ``('train.batch_size', 512)``; value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML: {e}") from None
    return key.strip(), value


SHIPPED_CONFIGS = Path(__file__).parent / "configs"
"""The configs that travel with the package (``configs/`` in a checkout links here)."""


def shipped_config_names() -> List[str]:
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """A config file: ``path`` when it is a file, else the shipped config of that name
    (``smoke``, ``criteo_kaggle``, ``criteo_1tb``, ``mlperf_dcnv2``; ``.yaml`` optional),
    so ``--config smoke`` works from an installed package, outside any checkout."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = SHIPPED_CONFIGS / (p.name if p.suffix == ".yaml" else f"{p.name}.yaml")
    if p.parent == Path(".") and shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {p} (a path, or a shipped config: "
                      f"{', '.join(shipped_config_names())})")


def load_config(path: Optional[str | Path] = None, overrides: Optional[List[str]] = None) -> Config:
    """Read ``path`` (a YAML file, or a shipped config's name), apply dotted
    ``overrides`` and validate everything."""
    raw: Dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = resolve_config(path)
        source = str(path) if Path(path).is_file() else str(p)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
    cfg = _build_section(Config, raw, "", source)
    return apply_overrides(cfg, overrides or [], source)


def apply_overrides(cfg: Config, overrides: List[str], source: str = "config") -> Config:
    """A new Config: ``cfg`` with dotted ``overrides`` applied, validated again
    (``dlrm-dist plan`` tries its remedies this way without rereading the YAML)."""
    for text in overrides:
        key, value = parse_override(text)
        merged = dataclasses.asdict(cfg)
        _merge(merged, key, value)
        cfg = _build_section(Config, merged, "", f"override '{text}'")
    validate(cfg, source)
    return cfg


def parse_config(raw: Dict[str, Any], source: str) -> Config:
    """A mapping of sections (e.g. a resolved config saved beside a model) -> a
    validated Config; ``source`` names where it came from in error messages."""
    return apply_overrides(_build_section(Config, raw, "", source), [], source)


def validate(cfg: Config, source: str = "config") -> None:
    """Checks that span keys (types are checked while loading)."""
    m, t = cfg.model, cfg.train
    sizes = m.table_sizes()
    if len(sizes) != NUM_SPARSE_FEATURES:
        raise ConfigError(
            f"{source}: key 'model.num_embeddings_per_feature': needs "
            f"{NUM_SPARSE_FEATURES} sizes, got {len(sizes)}"
        )
    if any(s <= 0 for s in sizes):
        raise ConfigError(f"{source}: key 'model.num_embeddings_per_feature': sizes must be > 0")
    if not m.bottom_mlp or m.bottom_mlp[-1] != m.embedding_dim:
        raise ConfigError(
            f"{source}: key 'model.bottom_mlp': last layer must equal "
            f"model.embedding_dim={m.embedding_dim}, got {m.bottom_mlp}"
        )
    if not m.top_mlp or m.top_mlp[-1] != 1:
        raise ConfigError(f"{source}: key 'model.top_mlp': last layer must be 1, got {m.top_mlp}")
    if t.batch_size <= 0:
        raise ConfigError(f"{source}: key 'train.batch_size': must be > 0")
    if cfg.dist.timeout_s <= 0:
        raise ConfigError(f"{source}: key 'dist.timeout_s': must be > 0, got {cfg.dist.timeout_s}")
    if t.profile_steps and (len(t.profile_steps) != 2 or not 0 <= t.profile_steps[0] < t.profile_steps[1]):
        raise ConfigError(f"{source}: key 'train.profile_steps': expected [start, stop] with "
                          f"0 <= start < stop, got {t.profile_steps}")
    if cfg.dist.num_threads < 0:
        raise ConfigError(f"{source}: key 'dist.num_threads': must be >= 0")
    for key in ("checkpoint_every", "keep_checkpoints"):
        if getattr(t, key) < 0:
            raise ConfigError(f"{source}: key 'train.{key}': must be >= 0")
    mh = cfg.data.multi_hot_sizes
    if mh is not None and (len(mh) != NUM_SPARSE_FEATURES or min(mh) < 1):
        raise ConfigError(
            f"{source}: key 'data.multi_hot_sizes': needs {NUM_SPARSE_FEATURES} sizes >= 1"
        )
    if cfg.data.num_workers < 0 or cfg.data.prefetch_factor < 1:
        raise ConfigError(f"{source}: keys 'data.num_workers' (>= 0) and 'data.prefetch_factor' (>= 1): "
                          f"got {cfg.data.num_workers}, {cfg.data.prefetch_factor}")
    if cfg.data.source == "criteo" and not cfg.data.path:
        raise ConfigError(f"{source}: key 'data.path': required when data.source=criteo")
    for key, opt, allowed in (("optim.embedding", cfg.optim.embedding, EMBEDDING_OPTIMIZERS),
                              ("optim.dense", cfg.optim.dense, DENSE_OPTIMIZERS)):
        if opt.name not in allowed:
            raise ConfigError(f"{source}: key '{key}.name': unknown optimizer '{opt.name}'; "
                              f"choose from {', '.join(allowed)}")
    constraints = [("sharding", cfg.sharding.sharding_types, cfg.sharding.compute_kernels)]
    constraints += [(f"sharding.tables.{n}", t.sharding_types, t.compute_kernels)
                    for n, t in cfg.sharding.tables.items()]
    for key, types_, kernels in constraints:
        for value, allowed, what in ((types_, SHARDING_TYPES, "sharding_types"),
                                     (kernels, COMPUTE_KERNELS, "compute_kernels")):
            unknown = [v for v in value if v not in allowed]
            if unknown:
                raise ConfigError(f"{source}: key '{key}.{what}': unknown {unknown}; "
                                  f"choose from {', '.join(allowed)}")
    for name in cfg.sharding.tables:
        if name not in SPARSE_FEATURE_NAMES:
            raise ConfigError(
                f"{source}: key 'sharding.tables.{name}': no such table; "
                f"tables are cat_0 ... cat_{NUM_SPARSE_FEATURES - 1}"
            )


def to_yaml(cfg: Config) -> str:
    """The resolved config, loadable again by :func:`load_config`."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
