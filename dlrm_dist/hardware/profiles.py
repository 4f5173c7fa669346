"""Hardware profiles: what a GPU / node can do, as data the step-time model reads.

The shipped profiles (``profiles.yaml`` beside this file: A100 80GB, H100 SXM,
H200, B200, 8 per node) carry datasheet figures with a source each; ``dlrm-dist
calibrate`` writes a profile of the same shape measured on the machine it runs
on. ``dlrm-dist plan --hardware NAME|FILE`` loads one with :func:`load_profile`.

Why a profile and not TorchRec's constants: TorchRec's planner ships one set of
bandwidths (HBM 897 GB/s, NVLink 600 GB/s, 12.5 GB/s between hosts) and no
compute rate, so it cannot tell an A100 from a B200 nor say anything about the
MLPs. The profile feeds both TorchRec's kernel-bandwidth lookup and our own
dense / communication terms (``dlrm_dist.planner.step_time``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

DENSE_DTYPES = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class HardwareProfile:
    """One device kind and the node it sits in. Bandwidths GB/s (10^9 B/s) per
    device and direction, compute TFLOPS dense, capacities GiB."""

    name: str
    description: str
    device: str
    """cuda, or cpu (a rank is a process on the host's cores)."""
    gpus_per_node: int
    hbm_gb: float
    """Device memory per GPU (0 on a CPU profile)."""
    host_ram_gb: float
    peak_tflops: Dict[str, float]
    """Dense matmul rate per dtype (fp32, tf32, bf16); at least fp32."""
    hbm_gb_per_s: float
    """Memory bandwidth the embedding kernels and activations use: HBM on a GPU,
    DRAM (copy bandwidth) on a CPU profile."""
    host_link_gb_per_s: float
    """Device <-> host RAM (PCIe): UVM tables' rows come over it."""
    intra_host_gb_per_s: float
    """Rank to rank within a node (NVLink; shared memory / loopback on CPU)."""
    inter_host_gb_per_s: Optional[float]
    """Rank to rank across nodes: the NIC bandwidth per GPU; None when unmeasured."""
    efficiency: Dict[str, float] = field(default_factory=lambda: {"gemm": 1.0, "memory": 1.0, "link": 1.0})
    """Achieved fraction of the peaks above (1.0 for measured rates)."""
    latency_us: Dict[str, float] = field(default_factory=lambda: {"intra_host": 0.0, "inter_host": 0.0})
    input_samples_per_s_per_rank: Dict[str, float] = field(default_factory=dict)
    """Host input pipeline per rank (one_hot, multi_hot) for data.source=criteo."""
    step_overhead_ms: float = 0.0
    """Fixed host cost per training step (framework, not bytes or FLOPs)."""
    step_overhead_us_per_sample: float = 0.0
    """The framework's host cost that grows with the batch (KJT handling, the
    interaction's gathers, ranks waiting for each other), per sample per rank."""
    embedding_fixed_ms: float = 0.0
    """Fixed cost per fused embedding kernel call (forward + backward)."""
    gemm_tflops_by_min_dim: Dict[int, float] = field(default_factory=dict)
    """Measured fp32 matmul rate by a GEMM's smallest weight-side dimension (calibrated
    profiles; thin GEMMs run far below square ones on a CPU); empty: the flat rate."""
    bmm_tflops_by_min_dim: Dict[int, float] = field(default_factory=dict)
    """The same for batched per-sample products (the dot interaction's bmm); empty: as above."""
    elementwise_gb_per_s: Optional[float] = None
    """The dense step's work beside its matmuls, per byte of the model's activation count
    (calibrate: a reference DLRM's dense step less its matmuls); None: the memory
    bandwidth x the memory efficiency."""
    embedding_gb_per_s: Optional[float] = None
    """The fused embedding kernel's measured bandwidth (by the model's byte count);
    None: the memory bandwidth x the memory efficiency (datasheet profiles)."""
    by_local_ranks: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    """CPU profiles: figures measured per rank when N ranks share the host's cores
    (they share caches and memory bandwidth); :meth:`for_local_ranks` applies them."""
    sources: Dict[str, str] = field(default_factory=dict)
    measured: Dict[str, Any] = field(default_factory=dict)
    """What calibrate recorded (date, load average, versions); empty for datasheets."""

    def dense_tflops(self, dtype: str) -> float:
        """Achievable dense rate for ``dtype`` (the datasheet peak x the GEMM efficiency)."""
        if dtype not in self.peak_tflops:
            raise ValueError(f"profile {self.name} has no {dtype} rate (has {sorted(self.peak_tflops)})")
        return self.peak_tflops[dtype] * self.efficiency.get("gemm", 1.0)

    def for_local_ranks(self, n: int) -> "HardwareProfile":
        """The profile as one of ``n`` ranks on a node sees it. GPUs: unchanged. CPU:
        the figures measured with the most ranks <= n (the top level is one process);
        beyond every measured count the ranks split the cores, so compute and memory
        rates scale by measured / n."""
        if not self.by_local_ranks:
            return self
        keys = sorted(k for k in self.by_local_ranks if k <= n)
        if not keys:  # fewer ranks than any measured count: the top-level (one-process) figures
            return self
        k = keys[-1]
        prof = dataclasses.replace(self, **{key: v for key, v in self.by_local_ranks[k].items()})
        if n > k:
            share = k / n
            prof = dataclasses.replace(prof, peak_tflops={d: r * share for d, r in prof.peak_tflops.items()},
                                       gemm_tflops_by_min_dim={d: r * share for d, r in
                                                               prof.gemm_tflops_by_min_dim.items()},
                                       bmm_tflops_by_min_dim={d: r * share for d, r in
                                                              prof.bmm_tflops_by_min_dim.items()},
                                       hbm_gb_per_s=prof.hbm_gb_per_s * share,
                                       elementwise_gb_per_s=prof.elementwise_gb_per_s and prof.elementwise_gb_per_s * share)
        return prof

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


REQUIRED = [f.name for f in dataclasses.fields(HardwareProfile)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
KNOWN = {f.name for f in dataclasses.fields(HardwareProfile)}


def from_dict(name: str, raw: Dict[str, Any], where: str) -> HardwareProfile:
    """A profile from its YAML mapping; unknown or missing keys are errors (a typo
    would silently fall back to a default and mislead every prediction)."""
    data = {"name": name, **raw}
    unknown = sorted(set(data) - KNOWN)
    missing = [k for k in REQUIRED if k not in data]
    if unknown or missing:
        raise ValueError(f"{where}: profile {name!r}: unknown keys {unknown}, missing keys {missing}")
    if "fp32" not in data["peak_tflops"]:
        raise ValueError(f"{where}: profile {name!r}: peak_tflops needs fp32")
    data["by_local_ranks"] = {int(k): _int_keys(dict(v)) for k, v in (data.get("by_local_ranks") or {}).items()}
    data = _int_keys(data)
    return HardwareProfile(**data)


def _int_keys(data: Dict[str, Any]) -> Dict[str, Any]:
    """YAML written through JSON has string keys: make the by-dimension rates int-keyed."""
    for key in ("gemm_tflops_by_min_dim", "bmm_tflops_by_min_dim"):
        if data.get(key):
            data[key] = {int(k): float(v) for k, v in data[key].items()}
    return data


def _shipped() -> Dict[str, Any]:
    text = resources.files("dlrm_dist.hardware").joinpath("profiles.yaml").read_text()
    return yaml.safe_load(text)["profiles"]


def profile_names() -> List[str]:
    """Names of the shipped profiles (``--hardware NAME``)."""
    return sorted(_shipped())


def load_profile(spec: str) -> HardwareProfile:
    """``spec`` is a shipped profile's name or a YAML file: one profile (what
    ``dlrm-dist calibrate`` writes: a mapping with ``name``) or a ``profiles:``
    mapping holding exactly one."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        raw = yaml.safe_load(path.read_text())
        if isinstance(raw, dict) and "profiles" in raw:
            if len(raw["profiles"]) != 1:
                raise ValueError(f"{spec}: holds {len(raw['profiles'])} profiles; name one of them")
            (name, body), = raw["profiles"].items()
            return from_dict(name, body, spec)
        raw = dict(raw)
        return from_dict(raw.pop("name", path.stem), raw, spec)
    shipped = _shipped()
    if spec not in shipped:
        raise ValueError(f"unknown hardware profile {spec!r}: choose from {', '.join(sorted(shipped))} or a YAML file")
    return from_dict(spec, shipped[spec], "dlrm_dist/hardware/profiles.yaml")


def write_profile(profile: HardwareProfile, path: Path) -> None:
    """Write ``profile`` as YAML that :func:`load_profile` reads back."""
    import json

    plain = json.loads(json.dumps(profile.to_dict(), default=str))  # str subclasses (torch versions) -> str
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plain, sort_keys=False))
