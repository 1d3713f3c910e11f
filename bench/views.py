"""Benchmark: views/s of sample_view + render_views (224 bicubic + 112 lanczos) vs BEiT's
two-picture pipeline built from torchvision, on the same JPEG bytes, same run.

Baseline (unilm/beit ``DataAugmentationForBEiT``): decode the whole image,
``ColorJitter(0.4, 0.4, 0.4)`` on it, ``RandomHorizontalFlip``, one ``RandomResizedCrop``
box rendered twice (224 bicubic, 112 lanczos). Measured: ``open_image``, ``sample_view``,
``render_views(image, view, [(224, "bicubic"), (112, "lanczos")])``: crop first, JPEG draft
mode for large crops, jitter on the small pictures.

Photos: scikit-image's bundled photos saved as JPEG (q90) in a temporary folder, plus
larger ones made from them (upscaled, with grain). Both pipelines run on one thread, and
rates count process CPU time (``time.process_time``), best of ``--repeats`` rounds taken in
turn. No goal is set; the ratio is reported.

    python -m bench.views [--repeats 3] [--views 4]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle"]
LARGE = {"astronaut": (2400, 1800), "coffee": (3000, 2000), "rocket": (4000, 3000)}


def pil_build() -> str:
    import PIL

    try:
        simd = metadata.version("pillow-simd")
    except metadata.PackageNotFoundError:
        simd = None
    is_simd = "post" in PIL.__version__ or simd is not None
    return f"PIL {PIL.__version__} ({'pillow-simd' + (f' {simd}' if simd else '') if is_simd else 'plain Pillow'})"


def make_photos(folder: Path) -> dict[str, list[bytes]]:
    """JPEG bytes of the bundled photos and of larger photos made from them, written to ``folder``."""
    import numpy as np
    from PIL import Image
    from skimage import data

    groups: dict[str, list[bytes]] = {"bundled photos": [], "large photos": []}
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        pixels = getattr(data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels
        image = Image.fromarray(pixels[..., :3])
        sources = [("bundled photos", name, image)]
        if name in LARGE:
            big = np.asarray(image.resize(LARGE[name], Image.Resampling.BICUBIC), float)
            grain = Image.fromarray(np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8))
            sources.append(("large photos", f"{name}-{LARGE[name][0]}x{LARGE[name][1]}", grain))
        for group, label, picture in sources:
            path = folder / f"{label}.jpg"
            picture.save(path, "JPEG", quality=90)
            groups[group].append(path.read_bytes())
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--views", type=int, default=4, help="views per photo in each round")
    args = parser.parse_args()

    import torch
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision import transforms

    from beit_data.views import draft_scale, open_image, render_views, sample_view
    from bench.report import best_rates, report

    torch.set_num_threads(1)
    torch.manual_seed(0)
    pair = [(224, "bicubic"), (112, "lanczos")]
    jitter, flip = transforms.ColorJitter(0.4, 0.4, 0.4), transforms.RandomHorizontalFlip()

    def beit(data: bytes) -> None:
        image = flip(jitter(Image.open(io.BytesIO(data)).convert("RGB")))
        top, left, h, w = transforms.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        TF.resized_crop(image, top, left, h, w, [224, 224], transforms.InterpolationMode.BICUBIC)
        TF.resized_crop(image, top, left, h, w, [112, 112], transforms.InterpolationMode.LANCZOS)

    def ours(data: bytes, key: str, index: int) -> None:
        image = open_image(data)
        render_views(image, sample_view(0, key, index, *image.size), pair)

    print(pil_build())
    with tempfile.TemporaryDirectory(prefix="bench-views-") as folder:
        groups = make_photos(Path(folder))
    totals = {"ours": 0.0, "beit": 0.0}
    count = 0
    for group, photos in groups.items():
        n = len(photos) * args.views
        images = [open_image(data) for data in photos]
        drafted = sum(draft_scale(image, sample_view(0, f"p{i}", v, *image.size), pair) > 1
                      for i, image in enumerate(images) for v in range(args.views))

        def run_ours() -> None:
            for i, data in enumerate(photos):
                for v in range(args.views):
                    ours(data, f"p{i}", v)

        def run_beit() -> None:
            for data in photos:
                for _ in range(args.views):
                    beit(data)

        rates = best_rates(args.repeats, {"ours": (n, run_ours), "beit": (n, run_beit)})
        sizes = ", ".join(f"{image.width}x{image.height}" for image in images)
        print(f"{group}: {sizes}; {drafted} of {n} views decoded in draft mode")
        report(f"sample_view + render_views 224+112, {group}", rates["ours"], "BEiT torchvision pipeline",
               rates["beit"], "views/s")
        for name in totals:
            totals[name] += n / rates[name]
        count += n
    report("sample_view + render_views 224+112, all photos", count / totals["ours"], "BEiT torchvision pipeline",
           count / totals["beit"], "views/s")


if __name__ == "__main__":
    main()
