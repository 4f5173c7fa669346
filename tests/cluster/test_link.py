"""``launchers/local_slurm.sh up --link-mbit N``: each node's link carries at most N Mbit/s.

What a user checks before measuring cross-host cost at a given bandwidth: ``status``
shows the limit, a transfer between the two node namespaces runs near it (both ways),
``--link-mbit 0`` lifts it on a running cluster, and ``down`` leaves nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import time

from tests.cluster.local_cluster import NODES, SCRIPT, STATE, transfer_mbit, why_not
from tests.conftest import skip_unless_ci

LIMIT = 50  # Mbit/s: slow enough that nothing else on a 2-core host limits the transfer
# TCP goodput over a limited link: 1448 payload bytes per 1514-byte frame is 95.6% of the line rate
NEAR = (0.85 * LIMIT, 1.02 * LIMIT)


def _sh(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_link_mbit_limits_each_node_link_status_shows_it_and_down_removes_it():
    reason = why_not()
    if reason:
        skip_unless_ci(reason)
    owned = _sh("status").returncode != 0  # a developer's cluster is used and left up (unlimited)
    t0 = time.monotonic()
    up = _sh("up", "--link-mbit", str(LIMIT))
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        status = _sh("status").stdout
        for node in NODES:
            assert f"link {node}: out {LIMIT}Mbit, in {LIMIT}Mbit (tc tbf)" in status, status
        there, back = transfer_mbit("dlrm-n1", "dlrm-n2"), transfer_mbit("dlrm-n2", "dlrm-n1")
        assert NEAR[0] < there < NEAR[1] and NEAR[0] < back < NEAR[1], (there, back)

        lifted = _sh("up", "--link-mbit", "0")  # on the running cluster: unlimited again
        assert lifted.returncode == 0, lifted.stderr[-3000:]
        status = _sh("status").stdout
        assert all(f"link {node}: unlimited" in status for node in NODES), status
        free = transfer_mbit("dlrm-n1", "dlrm-n2")
        assert free > 4 * LIMIT, free
        print(f"\n--link-mbit {LIMIT}: {there:.1f} / {back:.1f} Mbit/s (n1->n2 / n2->n1); unlimited {free:.0f} "
              f"Mbit/s; {time.monotonic() - t0:.1f} s (load {os.getloadavg()[0]:.1f})")
        if owned:  # down with a limit on: nothing of it is left (no veth, no qdisc, no state)
            assert _sh("up", "--link-mbit", str(LIMIT)).returncode == 0
    finally:
        if owned:
            down = _sh("down")
            assert down.returncode == 0, down.stderr[-3000:]
    if owned:
        qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
        assert "veth-dlrm" not in qdiscs and not STATE.exists(), qdiscs
        assert all(not os.path.exists(f"/run/netns/{n}") for n in NODES)
        assert _sh("status").stdout.startswith("down")
