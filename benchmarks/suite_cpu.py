"""CPU seconds of each test, for planning the suite on a shared machine (wall time there says more about the
other jobs than about the test).

As a pytest plugin it appends one row per test to ``$SUITE_CPU_OUT`` (TSV: test id, CPU seconds of the pytest
process, CPU seconds of the child processes it reaped during the test, wall seconds, load average); setup and
teardown count with their test, so a shared fixture counts with the first test that asks for it. Under ``-n``
every worker appends its own rows. Run as a script it sums a file's rows per test file, largest first::

    SUITE_CPU_OUT=/tmp/cpu.tsv PYTHONPATH=benchmarks python -m pytest -p suite_cpu
    python benchmarks/suite_cpu.py /tmp/cpu.tsv
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    own, children = _cpu()
    start = time.perf_counter()
    yield
    wall = time.perf_counter() - start
    own_after, children_after = _cpu()
    row = [item.nodeid, own_after - own, children_after - children, wall, os.getloadavg()[0]]
    with open(os.environ.get("SUITE_CPU_OUT", "suite_cpu.tsv"), "a") as out:
        out.write("\t".join(f"{v:.2f}" if isinstance(v, float) else v for v in row) + "\n")


def main(path: str) -> None:
    cpu: dict[str, float] = defaultdict(float)
    wall: dict[str, float] = defaultdict(float)
    for line in open(path):
        test, own, children, seconds, _ = line.rstrip("\n").split("\t")
        cpu[test.split("::")[0]] += float(own) + float(children)
        wall[test.split("::")[0]] += float(seconds)
    print(f"{'CPU s':>8} {'wall s':>8}  file")
    for name in sorted(cpu, key=cpu.__getitem__, reverse=True):
        print(f"{cpu[name]:8.1f} {wall[name]:8.1f}  {name}")
    print(f"{sum(cpu.values()):8.1f} {sum(wall.values()):8.1f}  all {len(cpu)} files")


if __name__ == "__main__":
    main(sys.argv[1])
