"""Workers in separate network namespaces, one cut off mid-run
(``tests/netns_partition.py``): the history shows nothing lost and nothing
committed twice or by a superseded epoch."""

from __future__ import annotations

import os
import shutil

import netns_partition
import pytest


@pytest.mark.timeout(300)
def test_a_worker_cut_off_from_the_servers_loses_nothing(
    postgres_database: str, redis_url: str
) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    history = netns_partition.run(seed=5, cut_seconds=5.0, tasks=24)
    assert not history.violations, "; ".join(history.violations)
    assert history.faults_done[0].startswith("cut ")
    assert history.counts["succeeded"] == 24, history.counts
    # The cut worker held running work: it was rescued and run again, and
    # the cut worker's late writes were refused.
    assert history.counts["attempts"] > 24, history.counts
    assert history.counts["refused_writes"] > 0, history.counts
