"""A simulated Ray cluster of N nodes on this machine (`--cluster local:N`), kept by a process of
its own: `python -m inferlab.cluster_local N` starts the nodes, prints the cluster's address
after ADDRESS_MARK, and shuts them down when its standard input closes. The driver holds that
input, so the nodes go with the driver however it ends (a driver killed outright included),
instead of outliving it as processes nobody stops."""

from __future__ import annotations

import os
import sys

ADDRESS_MARK = "inferlab-cluster-address: "


def main() -> int:
    nodes = int(sys.argv[1])
    from ray.cluster_utils import Cluster

    # one CPU of Ray's accounting per node: inferlab's actors ask for none and measure one
    # cell at a time per host themselves; no dashboard (its load would be timed with the cells)
    args = {"num_cpus": 1, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=args, shutdown_at_exit=True)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**args)
        cluster.wait_for_nodes()
        print(ADDRESS_MARK + cluster.address, flush=True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nobody reads on: nothing may block on it
        sys.stdin.read()  # until the driver closes it or goes
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
