"""Human similarity triplets: NIGHTS and a generic CSV, and a small offline fixture.

A triplet is a reference image, two distortions `a` and `b`, and the share of people
who judged `a` the closer one (`p_a`; 1 or 0 for a single vote).

- `nights:ROOT`: NIGHTS layout, `ROOT/data.csv` with columns id, left_vote, right_vote,
  votes, ref_path, left_path, right_path, split, is_imagenet (paths relative to ROOT; the
  left/right votes as counts adding up to votes, or as shares adding up to 1);
  rows with votes >= 6 are kept, as in the NIGHTS paper. Splits: train, val, and test in
  two parts as DreamSim reports it, test_imagenet and test_no_imagenet (by is_imagenet).
- `triplets:CSV`: columns ref, a, b, choice (a or b), optional split (default train);
  paths relative to the CSV's folder.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch.utils.data import Dataset

from adapt.data.images import open_rgb
from adapt.errors import AdaptError

MIN_VOTES = 6


@dataclass(frozen=True)
class Triplet:
    ref: Path
    a: Path
    b: Path
    p_a: float  # share of votes for "a is closer to ref"


class TripletDataset(Dataset):
    def __init__(self, triplets: list[Triplet], transform: Callable[[Image.Image], torch.Tensor]):
        self.triplets = triplets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        t = self.triplets[index]
        return self.transform(open_rgb(t.ref)), self.transform(open_rgb(t.a)), self.transform(open_rgb(t.b)), t.p_a


def _rows(csv_path: Path, required: set[str]) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise AdaptError(f"triplet file not found: {csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:  # Excel's "CSV UTF-8" starts with a BOM
            reader = csv.DictReader(handle)
            missing = required - set(reader.fieldnames or [])
            if missing:
                raise AdaptError(f"{csv_path} lacks column(s) {', '.join(sorted(missing))}")
            return list(reader)
    except UnicodeDecodeError as error:
        raise AdaptError(f"{csv_path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except csv.Error as error:
        raise AdaptError(f"{csv_path} is not a readable CSV file ({error})") from None


def _existing(root: Path, relative: str, csv_path: Path, row: int) -> Path:
    path = root / relative.strip()
    if not relative.strip() or not path.is_file():
        raise AdaptError(f"{csv_path} row {row}: image not found: {path}")
    return path


def _split_name(row: dict[str, str], csv_path: Path, number: int) -> str:
    """NIGHTS' test split is reported in two parts, as DreamSim does: test_imagenet and
    test_no_imagenet (by the is_imagenet column); other split names are kept as they are."""
    split = row["split"].strip()
    if split != "test" or row.get("is_imagenet") is None:
        return split
    flag = row["is_imagenet"].strip().lower()
    if flag not in ("true", "false", "1", "0"):
        raise AdaptError(f"{csv_path} row {number}: is_imagenet must be True or False, got {row['is_imagenet']!r}")
    return "test_imagenet" if flag in ("true", "1") else "test_no_imagenet"


def _vote_share(row: dict[str, str], csv_path: Path, number: int) -> tuple[float, float]:
    """(votes, share of them for left) of a NIGHTS row (the share unread when votes < MIN_VOTES).

    left_vote/right_vote are read either as counts that add up to `votes` (whole numbers, `5.0`
    too) or as vote shares in [0, 1] that add up to 1 (DreamSim reads the right share as its
    target). Anything else (a negative vote, counts that do not add up) is refused by row."""
    where = f"{csv_path} row {number}"
    try:
        left, right, votes = (float(row[k]) for k in ("left_vote", "right_vote", "votes"))
    except ValueError:
        raise AdaptError(f"{where}: left_vote, right_vote and votes must be numbers") from None
    if not all(np.isfinite(v) and v >= 0 for v in (left, right, votes)):
        raise AdaptError(f"{where}: votes must be finite and >= 0, got left {left:g}, right {right:g}, votes {votes:g}")
    if votes != int(votes):
        raise AdaptError(f"{where}: votes must be a whole number, got {votes:g}")
    if votes < MIN_VOTES:  # dropped, as the official loader drops it, before its votes are read
        return votes, 0.5
    if abs(left + right - votes) < 1e-6 and left == int(left) and right == int(right):
        share = left / votes  # counts
    elif left <= 1 and right <= 1 and abs(left + right - 1) < 1e-6:
        share = left  # vote shares
    else:
        raise AdaptError(f"{where}: left_vote {left:g} and right_vote {right:g} are neither counts adding up to votes "
                         f"({votes:g}) nor shares adding up to 1")  # fmt: skip
    return votes, share


def read_nights(root: Path) -> dict[str, list[Triplet]]:
    csv_path = root / "data.csv"
    columns = {"left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split"}
    splits: dict[str, list[Triplet]] = {}
    for number, row in enumerate(_rows(csv_path, columns), start=2):  # row 1 is the header
        votes, share = _vote_share(row, csv_path, number)
        if votes < MIN_VOTES:
            continue
        split = _split_name(row, csv_path, number)
        triplet = Triplet(*(_existing(root, row[k], csv_path, number) for k in ("ref_path", "left_path", "right_path")),
                          p_a=share)  # fmt: skip
        splits.setdefault(split, []).append(triplet)
    return splits


def read_triplet_csv(csv_path: Path) -> dict[str, list[Triplet]]:
    splits: dict[str, list[Triplet]] = {}
    for number, row in enumerate(_rows(csv_path, {"ref", "a", "b", "choice"}), start=2):
        choice = row["choice"].strip().lower()
        if choice not in ("a", "b"):
            raise AdaptError(f"{csv_path} row {number}: choice must be 'a' or 'b', got {row['choice']!r}")
        paths = (_existing(csv_path.parent, row[k], csv_path, number) for k in ("ref", "a", "b"))
        splits.setdefault((row.get("split") or "train").strip(), []).append(Triplet(*paths, p_a=float(choice == "a")))
    return splits


def load_triplets(spec: str) -> dict[str, list[Triplet]]:
    """Splits of triplets from `nights:ROOT` or `triplets:CSV`."""
    kind, _, rest = spec.partition(":")
    if kind == "nights" and rest:
        return read_nights(Path(rest).expanduser())
    if kind == "triplets" and rest:
        return read_triplet_csv(Path(rest).expanduser())
    raise AdaptError(f"unknown triplet data {spec!r}: use nights:ROOT or triplets:CSV")


# -- the offline fixture ------------------------------------------------------------------

DISTORTIONS = ("blur", "noise", "colour", "jpeg", "contrast", "pixelate", "sharpen", "posterize", "saturation",
               "shift", "rotate")  # fmt: skip


def _distort(image: Image.Image, kind: str, strength: float, rng: np.random.Generator) -> Image.Image:
    """One of DISTORTIONS at a strength in [0, 1]."""
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=0.5 + 4 * strength))
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(60 - 55 * strength))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "pixelate":
        side = max(2, int(image.width / (1.5 + 10 * strength)))
        return image.resize((side, side), Image.BILINEAR).resize(image.size, Image.NEAREST)
    if kind == "sharpen":
        return image.filter(ImageFilter.UnsharpMask(radius=1 + 3 * strength, percent=int(80 + 400 * strength), threshold=0))
    if kind == "posterize":
        return ImageOps.posterize(image, max(1, 6 - round(5 * strength)))
    if kind == "saturation":
        return ImageEnhance.Color(image).enhance(1 + (3 * strength if rng.integers(2) else -0.95 * strength))
    if kind == "rotate":
        return image.rotate(float(rng.choice([-1, 1])) * (3 + 40 * strength), resample=Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    if kind == "noise":
        array = array + rng.normal(0, 10 + 90 * strength, array.shape)
    elif kind == "colour":
        array = array + np.array([1, -1, 0.5]) * (15 + 120 * strength)
    elif kind == "shift":
        step = max(1, round(image.width * (0.03 + 0.3 * strength)))
        array = np.roll(array, (step, -step // 2), axis=(0, 1))
    else:  # contrast: towards the mean grey
        array = array.mean() + (array - array.mean()) * (0.85 - 0.75 * strength)
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


class _Sources:
    """Reference images from what installed packages ship. Natural photos (is_imagenet): sklearn's two
    sample photos and matplotlib's Grace Hopper portrait, as random crops. Others: sklearn's digits,
    matplotlib's terrain elevation maps through a colour map, its sample illustration, and gratings."""

    def __init__(self, size: int, rng: np.random.Generator):
        import matplotlib
        from matplotlib import cbook
        from sklearn.datasets import load_digits, load_sample_images

        self.size, self.rng = size, rng
        sample = lambda name: cbook.get_sample_data(name, asfileobj=False)  # noqa: E731
        self.photos = [Image.fromarray(p) for p in load_sample_images().images]
        self.photos.append(Image.open(sample("grace_hopper.jpg")).convert("RGB"))
        self.digits = load_digits().images
        colours = matplotlib.colormaps["terrain"]
        maps = [np.load(sample("jacksboro_fault_dem.npz"))["elevation"], np.load(sample("topobathy.npz"))["topo"]]
        self.maps = [Image.fromarray((colours((m - m.min()) / np.ptp(m))[..., :3] * 255).astype(np.uint8)) for m in maps]
        self.maps.append(Image.open(sample("Minduka_Present_Blue_Pack.png")).convert("RGB"))

    def _crop(self, image: Image.Image) -> Image.Image:
        low = min(self.size, min(image.size) // 2)
        side = int(self.rng.integers(low, min(image.size) // 2 + 1))
        x, y = int(self.rng.integers(image.size[0] - side + 1)), int(self.rng.integers(image.size[1] - side + 1))
        return image.crop((x, y, x + side, y + side)).resize((self.size, self.size), Image.BICUBIC)

    def _grating(self) -> Image.Image:
        axis = np.linspace(0, 1, self.size)
        x, y = np.meshgrid(axis, axis)
        angle, frequency = self.rng.uniform(0, np.pi), self.rng.uniform(2, 12)
        wave = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)))
        colour_a, colour_b = self.rng.uniform(0, 255, 3), self.rng.uniform(0, 255, 3)
        mix = (wave[..., None] + 1) / 2
        return Image.fromarray((colour_a * mix + colour_b * (1 - mix)).astype(np.uint8))

    def reference(self) -> tuple[Image.Image, bool]:
        """(image, is_natural): a photo crop two times in three, else one of the others."""
        pick = int(self.rng.integers(6))
        if pick < 4:
            return self._crop(self.photos[pick % len(self.photos)]), True
        kind = int(self.rng.integers(3))
        if kind == 0:
            pixels = (self.digits[self.rng.integers(len(self.digits))] * 255 / 16).astype(np.uint8)
            return Image.fromarray(pixels).resize((self.size, self.size), Image.BILINEAR).convert("RGB"), False
        if kind == 1:
            return self._crop(self.maps[int(self.rng.integers(len(self.maps)))]), False
        return self._grating(), False


def make_fixture(root: str | Path, count: int = 120, size: int = 64, seed: int = 0) -> Path:
    """Write a NIGHTS-layout set built from the images installed packages ship (`_Sources`).

    Each reference is a crop of a real photo (or a digit, a terrain map, an illustration or a
    grating); `a` and `b` are two different distortion families (DISTORTIONS, eleven), one weak
    and one strong, in random order.
    Six to ten simulated voters each pick the weaker one with a probability that grows with
    the gap in strength (0.6 to 1), so most but not all votes are unanimous; rows with a tie
    are dropped. Splits 60/20/20 (train/val/test), test marked is_imagenet for photo crops.
    It exercises the mechanics of perceptual initialization on real image statistics; it
    says nothing about human perception.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    sources = _Sources(size, rng)
    rows = []
    i = 0
    while len(rows) < count:
        ref, natural = sources.reference()
        weak_kind, strong_kind = rng.choice(DISTORTIONS, size=2, replace=False)  # no shortcut by family alone
        weak, strong = rng.uniform(0.0, 0.4), rng.uniform(0.6, 1.0)
        votes = int(rng.integers(6, 11))
        weak_votes = int(rng.binomial(votes, 0.6 + 0.4 * (strong - weak)))
        i += 1
        if 2 * weak_votes == votes:
            continue
        number = len(rows)
        left_is_weak = bool(rng.integers(2))
        left, right = ((weak_kind, weak), (strong_kind, strong)) if left_is_weak else ((strong_kind, strong), (weak_kind, weak))
        folder = f"{number // 100:03d}"  # NIGHTS keeps 100 per folder
        names = {"ref": f"ref/{folder}/{number:03d}.png", "left": f"distort/{folder}/{number:03d}_0.png",
                 "right": f"distort/{folder}/{number:03d}_1.png"}  # fmt: skip
        for key, image in (("ref", ref), ("left", _distort(ref, *left, rng)), ("right", _distort(ref, *right, rng))):
            (root / names[key]).parent.mkdir(parents=True, exist_ok=True)
            image.save(root / names[key])
        split = "train" if number < count * 0.6 else ("val" if number < count * 0.8 else "test")
        left_votes = weak_votes if left_is_weak else votes - weak_votes
        rows.append([number, left_votes, votes - left_votes, votes, names["ref"], names["left"], names["right"], split,
                     natural])  # fmt: skip
    with open(root / "data.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet"])
        writer.writerows(rows)
    return root
