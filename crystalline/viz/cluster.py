"""The cluster view: a distributed_graph (crystalline.distributed) drawn top-down.

    from crystalline.distributed import distributed_graph
    from crystalline.viz.cluster import draw_distributed
    ax = draw_distributed(distributed_graph([2, 3], batch_size=7))   # cluster -> ranks -> trees
    ax.figure.savefig("cluster.png")

Nodes are coloured by role with crystalline.viz.style's ROLE_COLORS (the same Node Zero,
control and worker colours as the radial tree's role view). Object API only (no pyplot).
"""

from __future__ import annotations

import numpy as np

from crystalline.viz.style import ROLE_COLORS, ROLE_LABELS, plural


def cluster_layout(graph) -> dict:
    """{node: (x, y)}: leaves left to right in tree order, each parent centred over its
    children, depth downwards (cluster at y = 0, ranks at -1, Node Zeros at -2, ...)."""
    pos, next_x = {}, [0.0]

    def place(node) -> float:
        children = sorted(graph.successors(node), key=lambda c: graph.nodes[c]["position"])
        x = float(np.mean([place(c) for c in children])) if children else next_x[0]
        if not children:
            next_x[0] += 1.0
        pos[node] = (x, -float(graph.nodes[node]["depth"]))
        return x

    place("cluster")
    return pos


def draw_distributed(graph, ax=None, labels: bool = True):
    """Draw a distributed_graph top-down on a Matplotlib Axes (a new Figure without `ax`);
    returns the Axes."""
    import networkx as nx
    from matplotlib.lines import Line2D
    if ax is None:
        from matplotlib.figure import Figure
        ax = Figure(figsize=(8, 4.5), layout="constrained").add_subplot()
    pos = cluster_layout(graph)
    nx.draw_networkx_edges(graph, pos, ax=ax, arrows=False, edge_color="#999999")
    roles = [r for _, r in graph.nodes(data="role")]
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=[ROLE_COLORS[r] for r in roles],
                           node_size=260, edgecolors="#333333", linewidths=0.6)
    if labels:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=7,
                                labels={n: a["label"].split(":")[-1]
                                        for n, a in graph.nodes(data=True) if n != "cluster"})
    ax.set_axis_off()
    shown = [r for r in ROLE_COLORS if r in roles]
    ax.legend(handles=[Line2D([], [], linestyle="", marker="o", markersize=8,
                              color=ROLE_COLORS[r], markeredgecolor="#333333",
                              label=ROLE_LABELS[r]) for r in shown],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(shown), frameon=False,
              fontsize=8)
    ranks, workers = roles.count("rank"), roles.count("worker")
    ax.set_title(f"{plural(ranks, 'MPI rank')}, {plural(workers, 'worker')}: "
                 "cluster -> rank -> Node Zero -> spheres")
    return ax
