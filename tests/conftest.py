"""Shared fixtures: one local Ray per test session, mini-ImageNet corpora."""
from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray started once for the whole test session."""
    import ray

    from pipelines.ray_session import ensure_ray

    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    os.environ["BEIT_DATA_RAY_TMP"] = tmp
    ensure_ray(num_cpus=2, object_store_memory=200 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def corpora(tmp_path_factory):
    """Train corpora in both layouts and a validation corpus, built once."""
    from beit_data.corpus import build_train, build_val

    base = tmp_path_factory.mktemp("corpora")
    return {
        "folder": build_train(base / "train", layout="folder"),
        "tar": build_train(base / "ILSVRC2012_img_train.tar", layout="tar"),
        "val": build_val(base / "val", layout="folder"),
        "val_tar": build_val(base / "ILSVRC2012_img_val.tar", layout="tar", labels="txt"),
    }


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, which thrash on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
