"""``camssl download cifar10 DIR`` (needs internet)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("download", parents=parents, help="download a data set (needs internet)")
    p.add_argument("dataset", choices=["cifar10"])
    p.add_argument("dir", help="destination folder")
    p.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    from camssl.data import download_cifar10

    path = download_cifar10(args.dir)
    print(f"CIFAR-10 archive ready: {path}  (train with: camssl train --config cpu --data {path})")
    return 0
