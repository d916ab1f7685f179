"""Benchmark: decode + preprocess throughput of build_cache, worker processes vs one process.

Run as a script (``python tests/perf/bench_decode.py``); it generates 1024x1024 16-bit PNGs and
DICOMs in a temporary folder, prints images/s and speed-up, then peak memory at two cache sizes
(each measured in a fresh process, parent and workers separately) to show it stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_radiograph(rng: np.random.Generator, side: int) -> np.ndarray:
    """A 12-bit chest-like image: smooth body and lung fields plus quantum noise (compresses like
    a real film, unlike pure noise)."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    body = 2600 - 1800 * ((xx - 0.5) ** 2 + 0.6 * (yy - 0.55) ** 2)
    lungs = 900 * (
        np.exp(-(((xx - 0.32) / 0.13) ** 2 + ((yy - 0.45) / 0.25) ** 2))
        + np.exp(-(((xx - 0.68) / 0.13) ** 2 + ((yy - 0.45) / 0.25) ** 2))
    )
    image = body - lungs + rng.normal(0, 40, (side, side))
    return np.clip(image, 0, 4095).astype(np.uint16)


def generate(folder: Path, kind: str, n: int, side: int, *, distinct: int = 8) -> list[str]:
    """Write ``n`` images of ``kind`` (png|dicom), ``distinct`` different ones then copies (the
    decode cost is the same, generation is much quicker); return their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = synthetic_radiograph(rng, side)
    paths = []
    for i in range(n):
        path = folder / f"img{i:05d}.{'png' if kind == 'png' else 'dcm'}"
        if i >= distinct:
            shutil.copyfile(paths[i % distinct], path)
        else:
            image = np.roll(base, 7 * i, axis=1) + rng.integers(0, 8, base.shape, dtype=np.uint16)
            if kind == "png":
                Image.fromarray(image).save(path, compress_level=6)
            else:
                _write_dicom(path, image)
        paths.append(str(path))
    return paths


def _write_dicom(path: Path, image: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "DX"
    ds.set_pixel_data(image, "MONOCHROME1", 12)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.save_as(path, enforce_file_format=True)


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped workers, i.e. finished pools
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_build(paths: list[str], out: Path, workers: int, size: int) -> tuple[float, float]:
    """Return (wall seconds, CPU seconds of this process and its workers) for one fresh build."""
    from cxrbench.data.cache import build_cache
    from cxrbench.data.transforms import Preprocess

    shutil.rmtree(out, ignore_errors=True)
    cpu0, start = _cpu_seconds(), time.perf_counter()
    reasons = build_cache(paths, out, settings=Preprocess(size=size), workers=workers)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    assert all(r is None for r in reasons), [r for r in reasons if r][:3]
    return elapsed, cpu


def measure_memory(args: argparse.Namespace) -> None:
    """Child mode: build one cache, print peak RSS (MiB) of this process and of its workers."""
    paths = json.loads(Path(args.paths_file).read_text())
    timed_build(paths, Path(args.out), args.workers, args.size)
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"parent_mib": round(self_peak, 1), "worker_mib": round(child_peak, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256, help="images per format for throughput")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    parser.add_argument("--memory-sizes", default="32,256", help="two cache sizes for peak memory")
    parser.add_argument("--formats", default="png,dicom")
    parser.add_argument("--measure-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        measure_memory(args)
        return

    sizes = [int(s) for s in args.memory_sizes.split(",")]
    n_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"load average {os.getloadavg()[0]:.1f}  cores: {n_cores}  workers: {args.workers}  "
        f"images: {args.side}^2 16-bit "
        f"-> {args.size}^2 uint8"
    )
    with tempfile.TemporaryDirectory(prefix="cxrbench-bench-") as tmp:
        root = Path(tmp)
        for kind in args.formats.split(","):
            n_files = max(args.n, max(sizes))
            t0 = time.perf_counter()
            paths = generate(root / kind, kind, n_files, args.side)
            mb = sum(os.path.getsize(p) for p in paths) / len(paths) / 2**20
            print(f"\n[{kind}] generated {n_files} files ({mb:.1f} MiB each) in {time.perf_counter() - t0:.1f}s")
            subset = paths[: args.n]
            serial, serial_cpu = min(timed_build(subset, root / "out", 0, args.size) for _ in range(args.repeats))
            parallel, parallel_cpu = min(
                timed_build(subset, root / "out", args.workers, args.size) for _ in range(args.repeats)
            )
            print(
                f"  single process : {args.n / serial:7.1f} images/s ({serial:.2f}s wall, "
                f"{1000 * serial_cpu / args.n:.1f} ms CPU/image)"
            )
            print(
                f"  {args.workers} workers      : {args.n / parallel:7.1f} images/s "
                f"({parallel:.2f}s wall incl. spawn start-up, "
                f"{1000 * parallel_cpu / args.n:.1f} ms CPU/image)"
            )
            print(f"  speed-up       : {serial / parallel:.2f}x wall (goal >= 1.7x on 2 free cores)")
            ideal = min(args.workers, n_cores) * serial_cpu / parallel_cpu
            print(f"  CPU-bound bound: {ideal:.2f}x (workers x serial CPU / parallel CPU)")
            for n in sizes:
                paths_file = root / f"paths-{kind}-{n}.json"
                paths_file.write_text(json.dumps(paths[:n]))
                cmd = [
                    sys.executable,
                    __file__,
                    "--measure-memory",
                    "--paths-file",
                    str(paths_file),
                    "--out",
                    str(root / "mem"),
                    "--workers",
                    str(args.workers),
                    "--size",
                    str(args.size),
                ]
                result = json.loads(
                    subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                )
                print(
                    f"  peak RSS, {n:5d} images: parent {result['parent_mib']:7.1f} MiB, "
                    f"largest worker {result['worker_mib']:7.1f} MiB"
                )


if __name__ == "__main__":
    main()
