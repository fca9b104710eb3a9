"""What every benchmark here shares: one place for each piece of plumbing.

* ``results``: the environment line, markdown tables, ``write`` (``results/<name>.md`` and
  ``.json``) and ``Deadline``;
* ``summary``: median and spread of repeated rounds, and ratios of two figures;
* ``process``: this process's resident memory and CPU time (and another's, by pid), a
  free loopback port, the open-files limit raised, CPUs to pin a server and its clients
  to, a helper's commands from its driver and its answers;
* ``children``: helper processes spoken to by lines on stdin/stdout (``Child``);
* ``cli``: the command line every benchmark shares (``--smoke``, ``--quick``, ``--json``,
  ``--no-write``) around its ``measure(config)`` and ``render(results)``;
* ``redis``: the throw-away ``redis-server`` the tests use (``wsfleet.testing.redis``),
  imported only by the benchmarks that need one.
"""

from __future__ import annotations

from _harness.children import PYTHON, Child, Failed
from _harness.process import (
    commands,
    cpu_seconds,
    cpus,
    free_port,
    pin,
    proc_cpu,
    proc_rss,
    raise_nofile,
    rss,
    say,
)
from _harness.results import RESULTS, Deadline, environment, table, write
from _harness.summary import Summary, ratio, summarise

__all__ = [
    "PYTHON",
    "RESULTS",
    "Child",
    "Deadline",
    "Failed",
    "Summary",
    "commands",
    "cpu_seconds",
    "cpus",
    "environment",
    "free_port",
    "pin",
    "proc_cpu",
    "proc_rss",
    "raise_nofile",
    "ratio",
    "rss",
    "say",
    "summarise",
    "table",
    "write",
]
