"""The shard job: an ImageNet source -> image shards + manifest, on Ray.

The driver lists the source (names, sizes and offsets only: about 200 bytes per
input, ~250 MB for the 1.28 M training images; image bytes never pass through
it), shuffles the list with the seed, cuts it into shards and runs one Ray task
per shard with a bounded number in flight. Each task reads, checks and writes
its shard through a temporary name, then commits a small record under
``ROOT/.state``; a rerun keeps every committed shard and redoes the rest, so
the output is byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import ray

from beit_data.atomic import dump_json, write_json
from beit_data.classes import ClassIndex
from beit_data.errors import BeitDataError, Quarantined
from beit_data.imagecheck import DEFAULT_MAX_PIXELS, check_image
from beit_data.manifest import load_manifest, save_split
from beit_data.progress import Progress
from beit_data.rng import rng_for
from beit_data.shards import Sample, shard_name, write_shard
from beit_data.sources import Entry, EntryReader, Listing, Rejected, list_source

from .ray_session import cluster_cpus
from .resume import claim, committed


@dataclass(frozen=True)
class ShardOptions:
    """Everything that decides the bytes of the output."""

    split: str = "train"
    seed: int = 0
    samples_per_shard: int = 1000
    max_shard_bytes: int = 1 << 30
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_check: bool = True

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1 or self.max_shard_bytes < 1:
            raise BeitDataError("--samples-per-shard and --max-shard-bytes must be positive")
        if not self.split.replace("_", "").isalnum():
            raise BeitDataError(f"split name {self.split!r} must be letters, digits or '_'")


def plan_shards(entries: list[Entry], options: ShardOptions) -> list[list[Entry]]:
    """Shuffle ``entries`` with the seed and cut them into shards by count and source bytes."""
    order = rng_for(options.seed, "shard-shuffle", options.split).permutation(len(entries))
    shards: list[list[Entry]] = [[]]
    size = 0
    for i in order:
        e = entries[i]
        current = shards[-1]
        if current and (len(current) >= options.samples_per_shard or size + e.size > options.max_shard_bytes):
            shards.append([])
            current, size = shards[-1], 0
        current.append(e)
        size += e.size
    return shards if shards[0] else []


def _fingerprint(options: ShardOptions, classes: ClassIndex, listing: Listing) -> str:
    h = hashlib.sha256(dump_json({"options": asdict(options), "classes": classes.to_manifest()}).encode())
    for e in listing.entries:
        h.update(f"{e.key}\t{e.synset}\t{e.source}\t{e.size}\n".encode())
    for r in listing.rejected:
        h.update(f"{r.source}\t{r.reason}\n".encode())
    return h.hexdigest()


def _samples(entries: list[Entry], class_ids: dict[str, int], options: ShardOptions,
             quarantine: list[dict[str, str]], repaired: list[str]) -> Iterator[Sample]:
    with EntryReader() as reader:
        for e in entries:
            try:
                checked = check_image(reader.read(e), options.max_pixels, options.decode_check)
            except Quarantined as q:
                quarantine.append({"source": e.source, "reason": str(q)})
                continue
            except OSError as err:
                quarantine.append({"source": e.source, "reason": f"cannot read: {err}"})
                continue
            if checked.repaired:
                repaired.append(e.key)
            meta = {"key": e.key, "synset": e.synset, "class": class_ids[e.synset], "source": e.source,
                    "width": checked.width, "height": checked.height, "repaired": checked.repaired}
            yield Sample(e.key, checked.data, class_ids[e.synset], meta)


def write_one_shard(root: str, index: int, entries: list[Entry], class_ids: dict[str, int],
                    options: ShardOptions) -> dict[str, Any]:
    """Write shard ``index`` and commit its record; returns the record."""
    quarantine: list[dict[str, str]] = []
    repaired: list[str] = []
    split = options.split
    name = shard_name(split, index)
    written = write_shard(Path(root) / "images" / split / name,
                          _samples(entries, class_ids, options, quarantine, repaired))
    record = {"name": f"images/{split}/{name}", "count": written.count, "bytes": written.bytes,
              "sha256": written.sha256, "inputs": len(entries), "source_bytes": sum(e.size for e in entries),
              "repaired": repaired, "quarantine": quarantine}
    write_json(_state_dir(Path(root), split) / f"{name}.json", record)
    return record


_write_task = ray.remote(num_cpus=1, max_retries=3)(write_one_shard)


def _state_dir(root: Path, split: str) -> Path:
    return root / ".state" / "images" / split


def resolve_classes(root: Path, listing: Listing, classes_file_index: ClassIndex | None,
                    names: dict[str, str]) -> ClassIndex:
    """The class index: the manifest's if the root has one, else the given list, else sorted synsets."""
    manifest = load_manifest(root, required=False)
    if manifest is not None:
        existing = ClassIndex.from_manifest(manifest["classes"])
        if classes_file_index is not None and classes_file_index.synsets != existing.synsets:
            raise BeitDataError(f"--classes disagrees with the class index already in {root}/manifest.json: "
                                "use the same class file for every split, or another OUT")
        return ClassIndex(existing.synsets, {**existing.names, **names})
    if classes_file_index is not None:
        return ClassIndex(classes_file_index.synsets, {**classes_file_index.names, **names})
    return ClassIndex.sorted_from((e.synset for e in listing.entries), names)


def run_shard_job(src: Path, root: Path, options: ShardOptions, *, labels: dict[str, str] | None = None,
                  classes: ClassIndex | None = None, names: dict[str, str] | None = None,
                  overwrite: bool = False, max_in_flight: int | None = None,
                  quiet: bool = False) -> dict[str, Any]:
    """Shard ``src`` into ``root`` (Ray must be connected); returns a summary of the run."""
    root = Path(root)
    listing = list_source(Path(src), labels)
    index = resolve_classes(root, listing, classes, names or {})
    known = [e for e in listing.entries if index.id_of(e.synset) is not None]
    listing = Listing(known, sorted(listing.rejected + [
        Rejected(e.source, f"synset {e.synset!r} is not in the class index (see --classes)")
        for e in listing.entries if index.id_of(e.synset) is None]))
    images = root / "images" / options.split
    claim(images, _state_dir(root, options.split), _fingerprint(options, index, listing), overwrite,
          f"{images} already holds shards made from other inputs or options: "
          "use the same command to resume, another OUT, or --overwrite")
    shards = plan_shards(listing.entries, options)
    progress = Progress(f"shard {options.split}", len(listing.entries), quiet=quiet)
    records: dict[int, dict[str, Any]] = {}
    for i in range(len(shards)):
        if (done := committed(root, _state_dir(root, options.split) / f"{shard_name(options.split, i)}.json")):
            records[i] = done
            progress.skip(done["inputs"])
    class_ids = {s: i for i, s in enumerate(index.synsets)}
    resumed = len(records)
    todo = [i for i in range(len(shards)) if i not in records]
    window = max_in_flight or 2 * cluster_cpus()
    pending: dict[Any, int] = {}
    failures: list[str] = []
    while todo or pending:
        while todo and len(pending) < window:
            i = todo.pop(0)
            shard_ids = {e.synset: class_ids[e.synset] for e in shards[i]}
            pending[_write_task.remote(str(root), i, shards[i], shard_ids, options)] = i
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            records[i] = ray.get(ready[0])
        except Exception as e:  # a task that died after its retries: report, keep the rest going
            cause = getattr(e, "cause", None) or e
            failures.append(f"{shard_name(options.split, i)}: {type(cause).__name__}: {cause}")
            continue
        progress.update(records[i]["inputs"], records[i]["source_bytes"])
    progress.close()
    if failures:
        raise BeitDataError(f"{len(failures)} shard(s) failed; rerun the same command to retry them:\n  "
                            + "\n  ".join(failures))
    entry = _split_entry(options, listing, [records[i] for i in range(len(shards))])
    save_split(root, index.to_manifest(), options.split, entry)
    return {"split": options.split, "inputs": entry["inputs"], "written": entry["count"],
            "repaired": entry["repaired"], "quarantined": len(entry["quarantine"]),
            "shards": len(entry["shards"]), "resumed_shards": resumed,
            "bytes": entry["bytes"], "seconds": round(progress.elapsed, 2)}


def _split_entry(options: ShardOptions, listing: Listing, records: list[dict[str, Any]]) -> dict[str, Any]:
    quarantine = [{"source": r.source, "reason": r.reason} for r in listing.rejected]
    for rec in records:
        quarantine.extend(rec["quarantine"])
    quarantine.sort(key=lambda q: q["source"])
    count = sum(r["count"] for r in records)
    inputs = len(listing.entries) + len(listing.rejected)
    if count + len(quarantine) != inputs:
        raise RuntimeError(f"accounting error: {count} written + {len(quarantine)} quarantined != {inputs} inputs")
    return {
        "count": count, "inputs": inputs, "repaired": sum(len(r["repaired"]) for r in records),
        "bytes": sum(r["bytes"] for r in records),
        "shards": [{k: r[k] for k in ("name", "count", "bytes", "sha256")} for r in records],
        "quarantine": quarantine, "options": asdict(options),
    }
