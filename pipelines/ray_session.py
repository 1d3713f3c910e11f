"""Start or join Ray: an embedded local instance by default, a cluster with an address."""
from __future__ import annotations

import os

import ray

import beit_data
import pipelines
import tokenizer


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               object_store_memory: int | None = None) -> None:
    """Make sure this process is connected to Ray.

    Reuses an existing connection; joins ``address`` (or ``RAY_ADDRESS``, as set
    by ``ray job submit``) when given; otherwise starts a local Ray with
    ``num_cpus`` CPUs (all by default).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        in_job = "RAY_JOB_ID" in os.environ or "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        runtime_env = None if in_job else {"py_modules": [beit_data, tokenizer, pipelines]}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # 2 GiB holds the rendered inputs of ~25 in-flight shards of 1000 images at 112 px
    ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory or 2 * 1024 ** 3,
             include_dashboard=False, log_to_driver=False,
             _temp_dir=os.environ.get("BEIT_DATA_RAY_TMP"))


def cluster_cpus() -> int:
    """CPUs in the connected cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
