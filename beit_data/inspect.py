"""Look at a dataset: a text summary, or one picture per sample of what the model sees.

The picture has one row per stored view: the source photo with that view's
crop box, the view's picture at the token set's resolution, the same with the
blockwise mask overlaid, the token grid as a colour map and, when decoder
weights are given, the dVAE decoder's reconstruction from the tokens.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from .errors import BeitDataError
from .manifest import load_manifest
from .masks import unpack_masks
from .shards import iter_samples
from .sidecars import load_token_manifest, read_sidecar
from .views import View, ViewPolicy, render_views

TILE = 224


def token_sets(root: Path) -> list[str]:
    """Ids of the token sets under ``root/tokens``."""
    tokens = Path(root) / "tokens"
    return sorted(p.name for p in tokens.glob("*") if (p / "manifest.json").exists()) if tokens.exists() else []


def summary(root: Path) -> str:
    """A text summary of splits, classes, counts, repairs, quarantine and token sets."""
    manifest = load_manifest(root)
    lines = [f"dataset {root}: {len(manifest['classes'])} classes"]
    for split, e in manifest["splits"].items():
        lines.append(f"  {split}: {e['count']} images in {len(e['shards'])} shards, {e['bytes'] / 1e6:,.1f} MB; "
                     f"{e['repaired']} repaired, {len(e['quarantine'])} quarantined of {e['inputs']} inputs")
        for q in e["quarantine"][:10]:
            lines.append(f"    quarantined {q['source']}: {q['reason']}")
        if len(e["quarantine"]) > 10:
            lines.append(f"    ... {len(e['quarantine']) - 10} more in manifest.json")
    for token_id in token_sets(root):
        t = load_token_manifest(root, token_id)
        tok, mp = t["tokenizer"], t["mask_policy"]
        lines.append(f"  tokens {token_id}: {tok['kind']} vocab {tok['vocab_size']} (weights {tok['weights_sha256'][:12]}), "
                     f"{t['resolution']} px / {tok['input_size']} px tokenizer input, grid {t['grid'][0]}x{t['grid'][1]}, "
                     f"{t['views']} views, seed {t['seed']}")
        lines.append(f"    views {t['view_policy']}; masks {mp['num_masking']} patches min {mp['min_patches']}"
                     f"{' exact' if mp.get('exact') else ''}; " +
                     ", ".join(f"{s}: {v['count']} images" for s, v in t["splits"].items()))
    return "\n".join(lines)


def find_sample(root: Path, split: str, key: str | None, index: int | None) -> tuple[str, int, str, dict[str, bytes]]:
    """(shard name, position in shard, key, parts) of the sample asked for."""
    manifest = load_manifest(root)
    if split not in manifest["splits"]:
        raise BeitDataError(f"split {split!r} not in {root}/manifest.json (has: {', '.join(manifest['splits'])})")
    wanted = index if key is None else None
    seen = 0
    for shard in manifest["splits"][split]["shards"]:
        if wanted is not None and seen + shard["count"] <= wanted:
            seen += shard["count"]
            continue
        with open(Path(root) / shard["name"], "rb") as f:
            for pos, (k, parts) in enumerate(iter_samples(f, shard["name"])):
                if k == key or (wanted is not None and seen + pos == wanted):
                    return shard["name"], pos, k, parts
        seen += shard["count"]
    raise BeitDataError(f"no sample {key if key is not None else f'#{index}'} in split {split} of {root}")


def _token_colours(tokens: np.ndarray, grid: tuple[int, int]) -> Image.Image:
    codes = tokens.astype(np.uint32).reshape(grid)
    rgb = np.stack([(codes * 2654435761 >> s) & 255 for s in (0, 8, 16)], -1).astype(np.uint8)
    return Image.fromarray(rgb).resize((TILE, TILE), Image.NEAREST)


def _overlay(picture: Image.Image, mask: np.ndarray) -> Image.Image:
    big = Image.fromarray((mask * 255).astype(np.uint8)).resize(picture.size, Image.NEAREST)
    tinted = Image.blend(picture, Image.new("RGB", picture.size, (40, 40, 160)), 0.7)
    return Image.composite(tinted, picture, big)


def sample_picture(root: Path, split: str = "train", key: str | None = None, index: int | None = 0,
                   token_id: str | None = None,
                   decode: Callable[[np.ndarray, tuple[int, int]], Image.Image] | None = None) -> Image.Image:
    """The per-view picture described in the module docstring."""
    shard, pos, key, parts = find_sample(root, split, key, index)
    ids = token_sets(root) if token_id is None else [token_id]
    if not ids:
        raise BeitDataError(f"no token sets under {root}/tokens: run 'beit-data tokenize' first")
    t = load_token_manifest(root, ids[0])
    grid = tuple(t["grid"])
    cars = {c["image_shard"]: c for c in t["splits"].get(split, {}).get("sidecars", [])}
    if shard not in cars:
        raise BeitDataError(f"token set {ids[0]} has no sidecar for {shard}")
    rows = read_sidecar(Path(root) / cars[shard]["name"])
    source = Image.open(io.BytesIO(parts["jpg"])).convert("RGB")
    scale = TILE / max(source.size)
    thumb = source.resize((max(1, round(source.width * scale)), max(1, round(source.height * scale))))
    policy = ViewPolicy.from_dict(t["view_policy"])
    columns = 4 + (decode is not None)
    head = 40
    sheet = Image.new("RGB", (columns * (TILE + 8), rows.views * (TILE + 8) + head), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), f"{key} ({json.loads(parts['json'])['synset']}) - token set {ids[0]}, {policy}"[:170],
              fill="black")
    titles = ["source + crop box", f"view at {t['resolution']} px", f"mask ({t['grid'][0]}x{t['grid'][1]})",
              "visual tokens", "dVAE reconstruction"]
    for c in range(columns):
        draw.text((c * (TILE + 8) + 4, 22), titles[c], fill=(90, 90, 90))
    masks = unpack_masks(rows.mask[pos], grid)
    for v in range(rows.views):
        y = head + v * (TILE + 8)
        view = View(tuple(int(x) for x in rows.box[pos, v]), bool(rows.flip[pos, v]),
                    tuple(float(x) for x in rows.jitter[pos, v]), tuple(int(x) for x in rows.jitter_order[pos, v]))
        top, left, h, w = view.box
        framed = thumb.copy()
        ImageDraw.Draw(framed).rectangle([left * scale, top * scale, (left + w) * scale, (top + h) * scale],
                                          outline=(255, 40, 40), width=3)
        (picture,) = render_views(parts["jpg"], view, [(t["resolution"], "bicubic")])
        picture = picture.resize((TILE, TILE), Image.BICUBIC)
        tiles = [framed, picture, _overlay(picture, masks[v]), _token_colours(rows.tokens[pos, v], grid)]
        if decode is not None:
            tiles.append(decode(rows.tokens[pos, v], grid).resize((TILE, TILE), Image.BICUBIC))
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * (TILE + 8), y))
    return sheet


def dalle_decoder(path: Path, trust_pickle: bool) -> Callable[[np.ndarray, tuple[int, int]], Image.Image]:
    """A function tokens -> picture through OpenAI's pickled dVAE decoder (``decoder.pkl``)."""
    import torch
    from dall_e import unmap_pixels

    if not trust_pickle:
        raise BeitDataError(f"{path} is a pickle: pass --trust-pickle if you trust it (unpickling runs its code)")
    decoder = torch.load(path, map_location="cpu", weights_only=False).float().eval()

    def decode(tokens: np.ndarray, grid: tuple[int, int]) -> Image.Image:
        z = torch.nn.functional.one_hot(torch.from_numpy(tokens.astype(np.int64)).view(1, *grid),
                                        decoder.vocab_size).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            x = unmap_pixels(torch.sigmoid(decoder(z)[:, :3]))
        return Image.fromarray((x[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))

    return decode
