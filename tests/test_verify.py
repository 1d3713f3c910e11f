"""verify: a clean root passes; a flipped byte anywhere in a shard is found."""
from __future__ import annotations

import shutil

import pytest

from beit_data.verify import verify
from pipelines.shard import ShardOptions, run_shard_job


@pytest.fixture(scope="module")
def sharded(ray_session, corpora, tmp_path_factory):
    root = tmp_path_factory.mktemp("verify") / "root"
    run_shard_job(corpora["folder"].src, root, ShardOptions(samples_per_shard=8), quiet=True)
    return root


def test_clean_root_has_no_problems(sharded):
    assert list(verify(sharded)) == []
    assert list(verify(sharded, quick=True)) == []


@pytest.mark.parametrize("where", [0.0, 0.37, 0.999])
def test_one_flipped_byte_is_found(sharded, tmp_path, where):
    root = tmp_path / "copy"
    shutil.copytree(sharded, root)
    for tar in sorted((root / "images" / "train").glob("*.tar")):
        data = bytearray(tar.read_bytes())
        data[int(where * (len(data) - 1))] ^= 0x10
        tar.write_bytes(bytes(data))
        problems = list(verify(root))
        assert any(tar.name in p and "sha256" in p for p in problems), problems
        data[int(where * (len(data) - 1))] ^= 0x10
        tar.write_bytes(bytes(data))
    assert list(verify(root)) == []


def test_quick_mode_finds_missing_and_truncated_files(sharded, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(sharded, root)
    tars = sorted((root / "images" / "train").glob("*.tar"))
    tars[0].unlink()
    tars[1].write_bytes(tars[1].read_bytes()[:-512])
    problems = list(verify(root, quick=True))
    assert any("missing" in p for p in problems) and any("bytes, manifest says" in p for p in problems)
