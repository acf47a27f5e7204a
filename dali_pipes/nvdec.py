"""Does this machine have an NVDEC that decodes the shards' video? Asked of the driver, without DALI.

    python -m dali_pipes.nvdec [--device 0] [--size 224]     # one verdict line; exit 0 yes, 3 no

`probe_nvdec(device, width, height)` loads the driver's `libnvcuvid.so.1` and `libcuda.so.1` with
ctypes (standard library only: it runs on a fresh GPU machine before any wheel is installed), makes
the device's primary CUDA context current (cuInit, cuDevicePrimaryCtxRetain, cuCtxPushCurrent: the
one torch and DALI use, so no second context is made) and asks `cuvidGetDecoderCaps` whether VP9
8-bit 4:2:0 decodes at width x height. It returns None when it does, else the reason, in words: the
library is missing (no driver video component, e.g. a container started without the `video`
capability), no CUDA device, no decoder on this device (a MIG slice without NVDEC engines), or a
size outside the decoder's range. dali_pipes.iterator asks it before building a pipeline that
decodes with NVDEC (`data.video_decode`). The driver's folder on lent GPU machines is a separate
read-only mount, so a file search (find -xdev) is no probe: loading the library is.
"""

from __future__ import annotations

import argparse
import ctypes
import sys

CUDA_VIDEO_CODEC_VP9 = 10          # cudaVideoCodec_VP9 (cuviddec.h)
CUDA_VIDEO_CHROMA_420 = 1          # cudaVideoChromaFormat_420
NVCUVID = "libnvcuvid.so.1"
LIBCUDA = "libcuda.so.1"


class DecodeCaps(ctypes.Structure):
    """CUVIDDECODECAPS (cuviddec.h); the IN fields first, 88 bytes."""
    _fields_ = [("eCodecType", ctypes.c_int), ("eChromaFormat", ctypes.c_int),
                ("nBitDepthMinus8", ctypes.c_uint), ("reserved1", ctypes.c_uint * 3),
                ("bIsSupported", ctypes.c_ubyte), ("nNumNVDECs", ctypes.c_ubyte),
                ("nOutputFormatMask", ctypes.c_ushort), ("nMaxWidth", ctypes.c_uint),
                ("nMaxHeight", ctypes.c_uint), ("nMaxMBCount", ctypes.c_uint),
                ("nMinWidth", ctypes.c_ushort), ("nMinHeight", ctypes.c_ushort),
                ("reserved3", ctypes.c_uint * 11)]


def _symbol(lib: ctypes.CDLL, *names: str) -> ctypes._CFuncPtr:
    """The first of `names` the library exports (CUDA's versioned entry points first)."""
    for name in names:
        try:
            return getattr(lib, name)
        except AttributeError:
            continue
    raise AttributeError(f"none of {names} in {lib._name}")


def decoder_caps(device: int = 0, codec: int = CUDA_VIDEO_CODEC_VP9, chroma: int = CUDA_VIDEO_CHROMA_420,
                 bit_depth: int = 8) -> DecodeCaps | str:
    """The driver's decoder caps for one codec / chroma / depth on `device`, or why they cannot be read."""
    try:
        cuvid = ctypes.CDLL(NVCUVID)
    except OSError as err:
        return f"{NVCUVID} cannot be loaded ({err}): the driver's video decode library is not on this machine"
    try:
        cuda = ctypes.CDLL(LIBCUDA)
    except OSError as err:
        return f"{LIBCUDA} cannot be loaded ({err}): no NVIDIA driver"
    handle, context = ctypes.c_int(), ctypes.c_void_p()
    if (code := cuda.cuInit(0)) != 0:
        return f"cuInit failed (CUresult {code}): no usable CUDA device"
    if (code := cuda.cuDeviceGet(ctypes.byref(handle), device)) != 0:
        return f"cuDeviceGet({device}) failed (CUresult {code})"
    if (code := cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), handle)) != 0:
        return f"cuDevicePrimaryCtxRetain failed (CUresult {code})"
    try:
        if (code := _symbol(cuda, "cuCtxPushCurrent_v2", "cuCtxPushCurrent")(context)) != 0:
            return f"cuCtxPushCurrent failed (CUresult {code})"
        caps = DecodeCaps(eCodecType=codec, eChromaFormat=chroma, nBitDepthMinus8=bit_depth - 8)
        code = cuvid.cuvidGetDecoderCaps(ctypes.byref(caps))
        _symbol(cuda, "cuCtxPopCurrent_v2", "cuCtxPopCurrent")(ctypes.byref(ctypes.c_void_p()))
        if code != 0:
            return f"cuvidGetDecoderCaps failed (CUresult {code})"
        return caps
    finally:
        _symbol(cuda, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease")(handle)


def _unsupported(caps: DecodeCaps, device: int, width: int, height: int) -> str | None:
    """Why these caps do not decode width x height (None: they do)."""
    if not caps.bIsSupported or caps.nNumNVDECs == 0:
        return (f"device {device} has no NVDEC for VP9 8-bit 4:2:0 (supported={caps.bIsSupported}, "
                f"decoders={caps.nNumNVDECs}; a MIG slice may have none)")
    if not (caps.nMinWidth <= width <= caps.nMaxWidth and caps.nMinHeight <= height <= caps.nMaxHeight):
        return (f"VP9 {width}x{height} is outside NVDEC's range on device {device} "
                f"({caps.nMinWidth}x{caps.nMinHeight} .. {caps.nMaxWidth}x{caps.nMaxHeight})")
    return None


def probe_nvdec(device: int = 0, width: int = 224, height: int = 224) -> str | None:
    """None when NVDEC decodes VP9 8-bit 4:2:0 at width x height on `device`, else the reason."""
    caps = decoder_caps(device)
    return caps if isinstance(caps, str) else _unsupported(caps, device, width, height)


def verdict(device: int = 0, width: int = 224, height: int = 224) -> tuple[bool, str]:
    """(NVDEC usable, one line saying so and why)."""
    caps = decoder_caps(device)
    reason = caps if isinstance(caps, str) else _unsupported(caps, device, width, height)
    if reason is not None:
        return False, f"NVDEC: no ({reason})"
    return True, (f"NVDEC: yes, VP9 8-bit 4:2:0 {width}x{height} on device {device} ({caps.nNumNVDECs} decoders, "
                  f"up to {caps.nMaxWidth}x{caps.nMaxHeight})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--size", type=int, default=224, help="frame width and height to ask about")
    args = parser.parse_args(argv)
    ok, line = verdict(args.device, args.size, args.size)
    print(line, flush=True)
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
