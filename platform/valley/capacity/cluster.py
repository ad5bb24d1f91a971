"""The GPU nodes a plan is sized for: read from ray_cluster.yaml, or given on the command line.

The cluster file names instance types, not devices, so the GPU behind each AWS type we know is listed
here (memory as the driver reports it, e.g. 81,559 MiB for an H100 80GB). Anything else needs the
`--gpu-mem` / `--gpu-name` flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from valley.errors import ConfigError

# instance type -> (device name, GiB of device memory per GPU)
INSTANCE_GPUS: dict[str, tuple[str, float]] = {
    "p5.48xlarge": ("H100", 79.6),
    "p5e.48xlarge": ("H200", 139.8),
    "p5en.48xlarge": ("H200", 139.8),
    "p4de.24xlarge": ("A100", 79.2),
    "p4d.24xlarge": ("A100", 39.4),
    "g6e.48xlarge": ("L40S", 44.4),
    "g5.48xlarge": ("A10G", 22.0),
}


@dataclass(frozen=True)
class GpuNode:
    """One node type's accelerators, and how many such nodes the study's schedule is predicted on."""

    node_type: str
    gpus_per_node: int
    gpu_name: str
    gpu_mem_gib: float
    nodes: int = 1  # the cluster file's max_workers of the type (what the autoscaler may bring up)
    cpus_per_node: float = 0.0  # 0: CPUs not counted in the schedule
    nodes_at_launch: int | None = None  # its min_workers: what a study sees when it starts (None: all)


DEFAULT_NODE = GpuNode("default", 8, "H100", 79.6)


def default_cluster_file() -> Path | None:
    """./ray_cluster.yaml, else the one beside the package's source tree."""
    for candidate in (Path("ray_cluster.yaml"), Path(__file__).resolve().parents[3] / "ray_cluster.yaml"):
        if candidate.is_file():
            return candidate
    return None


def gpu_node_from_cluster(path: str | Path) -> GpuNode:
    """The first node type of a Ray cluster launcher file whose resources include GPUs."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read cluster file {path}: {exc}") from exc
    for name, node in (data.get("available_node_types") or {}).items():
        gpus = int((node.get("resources") or {}).get("GPU", 0))
        if gpus <= 0:
            continue
        instance = (node.get("node_config") or {}).get("InstanceType", "")
        if instance not in INSTANCE_GPUS:
            raise ConfigError(f"{path}: node type {name!r} has instance type {instance!r}, whose GPU memory is "
                              f"not known here; pass --gpu-mem (GiB) and --gpu-name")
        gpu_name, mem = INSTANCE_GPUS[instance]
        most = max(1, int(node.get("max_workers", 1)))
        return GpuNode(name, gpus, gpu_name, mem, nodes=most,
                       cpus_per_node=float((node.get("resources") or {}).get("CPU", 0.0)),
                       nodes_at_launch=min(most, int(node.get("min_workers", 0))))
    raise ConfigError(f"{path}: no node type with GPU resources")


def resolve_node(cluster: str | None = None, gpus_per_node: int | None = None, gpu_mem_gib: float | None = None,
                 gpu_name: str | None = None, nodes: int | None = None) -> GpuNode:
    """Flags override the cluster file, which overrides the default (one node of 8× H100 80GB). `--nodes`
    means that many nodes are up when the study starts; per-node CPUs of the file are kept only while its
    GPU count is."""
    path = cluster or default_cluster_file()
    node = gpu_node_from_cluster(path) if path else DEFAULT_NODE
    cpus = node.cpus_per_node if gpus_per_node in (None, node.gpus_per_node) else 0.0
    return GpuNode(node.node_type if path else "flags", gpus_per_node or node.gpus_per_node,
                   gpu_name or node.gpu_name, gpu_mem_gib or node.gpu_mem_gib, nodes=nodes or node.nodes,
                   cpus_per_node=cpus, nodes_at_launch=None if nodes else node.nodes_at_launch)
