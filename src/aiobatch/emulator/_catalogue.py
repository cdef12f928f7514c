"""The VM sizes and images a pool may use, read from ``catalogue.json`` (data, beside this module).

A pool create (and a PATCH of an empty pool's size or image) is checked against it (`_wire.check_catalogue`): a
size or image the catalogue does not hold gets the service's 400 ``InvalidPropertyValue`` naming the property, as
Azure answers a size it does not offer (``Invalid property value for vmSize``). ``GET /supportedimages`` lists the
images. The emulator's ``strict_catalogue=False`` (``--any-vm-size``) accepts any size and image, for users of
custom images and sizes the file does not list; cores then come from the size's name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class VmSize:
    """A VM size as the catalogue lists it."""

    name: str
    cores: int
    memory_gib: float


@dataclass(frozen=True)
class Catalogue:
    """VM sizes by lower-cased name, and the supported images as ``GET /supportedimages`` renders them."""

    sizes: Mapping[str, VmSize]
    images: Sequence[Mapping[str, Any]]

    def image(self, reference: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The supported image a pool's ``imageReference`` names (publisher, offer, sku, case-insensitively)."""
        key = _image_key(reference)
        return next((image for image in self.images if _image_key(image["imageReference"]) == key), None)


def _image_key(reference: Mapping[str, Any]) -> tuple[str, str, str]:
    return tuple(str(reference.get(part) or "").lower() for part in ("publisher", "offer", "sku"))  # type: ignore[return-value]


@cache
def catalogue() -> Catalogue:
    """The catalogue shipped beside this module (read once)."""
    raw = json.loads(resources.files(__package__).joinpath("catalogue.json").read_text(encoding="utf-8"))
    sizes = {s["name"].lower(): VmSize(s["name"], int(s["vCPUs"]), float(s["memoryGiB"])) for s in raw["vmSizes"]}
    return Catalogue(sizes=sizes, images=tuple(raw["images"]))


def cores_of(vm_size: str) -> int:
    """VCPUs of a VM size: the catalogue's, else read from its name (``Standard_D2s_v3`` -> 2), else 1."""
    known = catalogue().sizes.get(vm_size.lower())
    if known is not None:
        return known.cores
    match = re.search(r"_[A-Za-z]+(\d+)", vm_size)
    return max(1, int(match.group(1))) if match else 1


__all__ = ["Catalogue", "VmSize", "catalogue", "cores_of"]
