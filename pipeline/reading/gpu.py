"""Decoding batches of JPEGs on the GPU where torch with CUDA is present, on the CPU elsewhere.

The stream's workers leave the JPEGs as bytes (`stream(decode=None, batch_size=...)`) and the
training process decodes each batch where the model is:

    loader = open_dataset(OUT, "train").stream(decode=None, batch_size=256).loader(num_workers=8)
    for images, labels in decode_batches(loader):   # images: 3xHxW uint8 tensors on the GPU
        ...

On a CUDA device with torchvision, a batch is one call of `torchvision.io.decode_jpeg(..., device=
"cuda")` (nvJPEG). Without CUDA, the same call decodes on the CPU; without torchvision (PyPI's
torchvision does not import beside every torch build), PIL decodes, and the tensors are moved to the
device asked for. `decoder_for(device)` says which of the three a device gets. torch itself is
needed (an ImportError says so); nothing here imports it before a function is called.
"""
from __future__ import annotations

import io
import logging
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["cuda_available", "default_device", "decoder_for", "decode_jpegs", "decode_batches", "NVJPEG",
           "TORCHVISION_CPU", "PIL_CPU"]

log = logging.getLogger(__name__)

NVJPEG, TORCHVISION_CPU, PIL_CPU = "nvjpeg", "torchvision-cpu", "pil-cpu"


def _torch() -> Any:
    try:
        import torch  # an optional dependency
    except ModuleNotFoundError as exc:
        raise ImportError("decoding JPEGs to tensors needs PyTorch, which is not installed (pip install torch)") \
            from exc
    return torch


def _torchvision_io() -> Any:
    """torchvision.io, or None where torchvision is missing or does not load beside this torch (a
    RuntimeError such as "operator torchvision::nms does not exist")."""
    try:
        import torchvision.io  # an optional dependency
    except (ImportError, RuntimeError) as exc:
        log.debug("torchvision.io is not usable (%s): JPEGs are decoded with PIL", exc)
        return None
    return torchvision.io


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device."""
    try:
        return bool(_torch().cuda.is_available())
    except ImportError:
        return False


def default_device() -> str:
    """"cuda" where torch sees a CUDA device, else "cpu"."""
    return "cuda" if cuda_available() else "cpu"


def decoder_for(device: Optional[str] = None) -> str:
    """What decodes for `device` (default: default_device()): NVJPEG, TORCHVISION_CPU or PIL_CPU."""
    torch = _torch()
    target = torch.device(device or default_device())
    if target.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but torch sees no CUDA device (leave device unset "
                           "to decode on the CPU where there is none)")
    vision = _torchvision_io()
    if vision is None:
        return PIL_CPU
    return NVJPEG if target.type == "cuda" else TORCHVISION_CPU


def _pil_decode(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.ascontiguousarray(np.asarray(image.convert("RGB")).transpose(2, 0, 1))


def decode_jpegs(jpegs: Sequence[bytes], device: Optional[str] = None) -> List[Any]:
    """The JPEGs of a batch as 3xHxW uint8 RGB tensors on `device` (default: the GPU where there is
    one, else the CPU), decoded by nvJPEG on a CUDA device, else on the CPU (decoder_for says how)."""
    torch = _torch()
    target = torch.device(device or default_device())
    how = decoder_for(str(target))
    if not jpegs:
        return []
    if how == PIL_CPU:
        return [torch.from_numpy(_pil_decode(bytes(jpeg))).to(target) for jpeg in jpegs]
    vision = _torchvision_io()
    data = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in jpegs]
    decoded = vision.decode_jpeg(data, mode=vision.ImageReadMode.RGB, device=target if how == NVJPEG else "cpu")
    return [image.to(target) for image in decoded]


def decode_batches(batches: Iterable[Tuple[Sequence[bytes], Any]], device: Optional[str] = None) -> Iterator[tuple]:
    """(images, labels) for each (JPEG bytes, labels) batch of a stream with decode=None: the images
    decoded by decode_jpegs, the labels a tensor on the same device."""
    torch = _torch()
    target = torch.device(device or default_device())
    for jpegs, labels in batches:
        yield decode_jpegs(jpegs, str(target)), torch.as_tensor(labels).to(target)
