#!/usr/bin/env python3
"""Draw ``mmea.png``: a schematic of the Magnitude-Modulated Equivariant Adapter.

    python scripts/draw_mmea.py [--out mmea.png]

The picture follows the method in docs/mmea.md for one frozen e3nn ``o3.Linear``:
the input x = [x_0 | x_1 | x_2 ...] goes through the frozen, block-diagonal (per l) weight W;
a small trainable branch reads only the scalar block x_0 and

* adds W_a h (+ b_a) to the scalar output y_0, and
* multiplies every channel c of each l > 0 output block (all 2l+1 components at once)
  by exp(s_c), which keeps the layer exactly equivariant.

Sized 1600 x 1000 px with large type, so that it stays legible when shown 300 px wide.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent

# palette: one colour per irrep order, grey for frozen weights, orange for trainable parts
ORDER_FILL = {0: "#a5d8ff", 1: "#b2f2bb", 2: "#d0bfff"}
ORDER_EDGE = {0: "#1971c2", 1: "#2f9e44", 2: "#7048e8"}
FROZEN_FILL, FROZEN_EDGE = "#dee2e6", "#495057"
TRAIN_FILL, TRAIN_EDGE = "#ffd8a8", "#d9480f"
ADAPTER_BACK = "#fff4e6"
INK = "#212529"
ICE = "#1c7ed6"

BIG, MID, SMALL = 32, 25, 21  # font sizes in points (the figure is drawn at 100 dpi)


def box(ax, x0, y0, x1, y1, text="", fill="white", edge=INK, size=BIG, lw=2.5,
        text_color=INK, style="round,pad=0.02,rounding_size=0.15", zorder=3):
    ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle=style, facecolor=fill,
                                edgecolor=edge, linewidth=lw, zorder=zorder))
    if text:
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, text, ha="center", va="center", fontsize=size,
                color=text_color, zorder=zorder + 1)


def arrow(ax, start, end, color=INK, lw=3.0, head=26, zorder=2):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=head,
                                 color=color, linewidth=lw, shrinkA=0, shrinkB=0,
                                 zorder=zorder))


def line(ax, points, color=INK, lw=3.0, zorder=2):
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=color, linewidth=lw, solid_capstyle="round", zorder=zorder)


def snowflake(ax, cx, cy, radius, color=ICE, lw=2.4, zorder=6):
    """Six-armed snowflake: three crossing strokes, each arm with a small V near its tip."""
    for k in range(6):
        angle = math.pi / 3 * k + math.pi / 2
        tip = (cx + radius * math.cos(angle), cy + radius * math.sin(angle))
        line(ax, [(cx, cy), tip], color=color, lw=lw, zorder=zorder)
        base = (cx + 0.6 * radius * math.cos(angle), cy + 0.6 * radius * math.sin(angle))
        for side in (-1, 1):
            twig = angle + side * math.pi / 4
            end = (base[0] + 0.3 * radius * math.cos(twig), base[1] + 0.3 * radius * math.sin(twig))
            line(ax, [base, end], color=color, lw=lw, zorder=zorder)


def draw(out: Path) -> Path:
    fig = plt.figure(figsize=(16, 10), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 10)
    ax.axis("off")

    half = 0.45                     # half height of a lane box
    lane_y = {0: 8.05, 1: 2.75, 2: 1.35}
    irrep = {0: "0e", 1: "1o", 2: "2e"}
    x_in, w_box, y_out, op_x, y_new = (0.35, 1.95), (3.0, 5.5), (6.6, 8.2), 10.0, (11.75, 13.35)

    # ---- title and legend ----------------------------------------------------------
    ax.text(0.35, 9.45, "MMEA: Magnitude-Modulated Equivariant Adapter", fontsize=BIG,
            fontweight="bold", color=INK, va="center")
    box(ax, 13.95, 8.6, 15.75, 9.3, fill=FROZEN_FILL, edge=FROZEN_EDGE)
    ax.text(14.15, 8.95, "frozen", fontsize=SMALL, ha="left", va="center", color=INK, zorder=5)
    snowflake(ax, 15.4, 8.95, 0.22)
    box(ax, 13.95, 7.7, 15.75, 8.4, "trainable", fill=TRAIN_FILL, edge=TRAIN_EDGE, size=SMALL)

    # ---- the adapter's background panel -------------------------------------------------
    box(ax, 0.8, 3.9, 12.35, 7.2, fill=ADAPTER_BACK, edge=TRAIN_EDGE, lw=2,
        style="round,pad=0.02,rounding_size=0.3", zorder=0)
    ax.text(1.15, 4.0, "adapter", fontsize=MID, color=TRAIN_EDGE, ha="left", va="bottom",
            fontstyle="italic", zorder=1)

    # ---- main path: x_l -> W^(l) -> y_l -> (op) -> y'_l, one lane per irrep order ----------
    for order, y in lane_y.items():
        box(ax, x_in[0], y - half, x_in[1], y + half, f"$x_{order}$ {irrep[order]}",
            fill=ORDER_FILL[order], edge=ORDER_EDGE[order], size=MID)
        box(ax, w_box[0], y - half, w_box[1], y + half, f"$W^{{({order})}}$",
            fill=FROZEN_FILL, edge=FROZEN_EDGE, size=BIG)
        snowflake(ax, w_box[1] - 0.38, y + 0.05, 0.25)
        box(ax, y_out[0], y - half, y_out[1], y + half, f"$y_{order}$",
            fill=ORDER_FILL[order], edge=ORDER_EDGE[order], size=BIG)
        box(ax, y_new[0], y - half, y_new[1], y + half, f"$y'_{order}$",
            fill=ORDER_FILL[order], edge=ORDER_EDGE[order], size=BIG)
        arrow(ax, (x_in[1], y), (w_box[0], y))
        arrow(ax, (w_box[1], y), (y_out[0], y))
    ax.text((w_box[0] + w_box[1]) / 2, lane_y[0] + half + 0.3, "frozen e3nn Linear",
            fontsize=MID, ha="center", va="center", color=FROZEN_EDGE)
    ax.text((w_box[0] + w_box[1]) / 2, (lane_y[1] + lane_y[2]) / 2 + 0.02, "(one block per $l$)",
            fontsize=SMALL, ha="center", va="center", color=FROZEN_EDGE)

    # scalar lane: y'_0 = y_0 + W_a h + b_a
    radius = 0.36
    ax.add_patch(Circle((op_x, lane_y[0]), radius, facecolor=TRAIN_FILL, edgecolor=TRAIN_EDGE,
                        linewidth=2.5, zorder=4))
    ax.text(op_x, lane_y[0] - 0.02, "+", fontsize=BIG, ha="center", va="center",
            color=TRAIN_EDGE, fontweight="bold", zorder=5)
    arrow(ax, (y_out[1], lane_y[0]), (op_x - radius, lane_y[0]))
    arrow(ax, (op_x + radius, lane_y[0]), (y_new[0], lane_y[0]))

    # l > 0 lanes: one gate exp(s_c) per channel c, shared by its 2l+1 components
    gate = (op_x - 0.85, lane_y[2] - half - 0.1, op_x + 0.85, lane_y[1] + half + 0.1)
    box(ax, *gate, "", fill=TRAIN_FILL, edge=TRAIN_EDGE)
    ax.text(op_x, (gate[1] + gate[3]) / 2, "$\\times\\, e^{s_c}$", fontsize=BIG,
            ha="center", va="center", color=INK, zorder=5)
    for order in (1, 2):
        arrow(ax, (y_out[1], lane_y[order]), (gate[0], lane_y[order]))
        arrow(ax, (gate[2], lane_y[order]), (y_new[0], lane_y[order]))
    ax.text(y_new[1] + 0.2, (lane_y[1] + lane_y[2]) / 2,
            "one gate per\nchannel $c$;\nits $2l{+}1$\ncomponents\nscale together",
            fontsize=SMALL, ha="left", va="center", color=INK, linespacing=1.1)

    # ---- the trainable branch, fed by the scalars x_0 only -------------------------------
    tap_x = (x_in[1] + w_box[0]) / 2
    h_box = (1.15, 4.75, 6.0, 6.15)
    ax.add_patch(Circle((tap_x, lane_y[0]), 0.09, color=INK, zorder=5))
    arrow(ax, (tap_x, lane_y[0]), (tap_x, h_box[3]), color=TRAIN_EDGE)
    box(ax, *h_box, "", fill=TRAIN_FILL, edge=TRAIN_EDGE)
    ax.text((h_box[0] + h_box[2]) / 2, 5.65, "$h = \\mathrm{SiLU}(W_h\\, x_0 + b_h)$",
            fontsize=BIG - 2, ha="center", va="center", zorder=5)
    ax.text((h_box[0] + h_box[2]) / 2, 5.05, "rank $r$ (16 by default)", fontsize=SMALL,
            ha="center", va="center", zorder=5)

    a_box = (7.3, 5.95, 12.0, 6.75)
    s_box = (7.3, 4.1, 12.0, 4.9)
    fork = 6.65
    mid_h = (h_box[1] + h_box[3]) / 2
    line(ax, [(h_box[2], mid_h), (fork, mid_h)], color=TRAIN_EDGE)
    line(ax, [(fork, s_box[1] + 0.4), (fork, a_box[1] + 0.4)], color=TRAIN_EDGE)
    arrow(ax, (fork, a_box[1] + 0.4), (a_box[0], a_box[1] + 0.4), color=TRAIN_EDGE)
    arrow(ax, (fork, s_box[1] + 0.4), (s_box[0], s_box[1] + 0.4), color=TRAIN_EDGE)
    box(ax, *a_box, "$W_a\\, h + b_a$", fill=TRAIN_FILL, edge=TRAIN_EDGE, size=BIG - 2)
    box(ax, *s_box, "$s = W_s\\, h + b_s$", fill=TRAIN_FILL, edge=TRAIN_EDGE, size=BIG - 2)
    arrow(ax, (op_x, a_box[3]), (op_x, lane_y[0] - radius), color=TRAIN_EDGE)
    arrow(ax, (op_x, s_box[1]), (op_x, gate[3]), color=TRAIN_EDGE)
    ax.text(op_x - 0.15, (3.9 + gate[3]) / 2,
            "$W_s{=}0,\\ b_s{=}0$: every gate starts at 1",
            fontsize=SMALL, ha="right", va="center", color=TRAIN_EDGE)
    ax.text(0.35, 0.42, "$x = [\\,x_0\\,|\\,x_1\\,|\\,x_2 \\ldots]$: the irrep blocks of one "
            "e3nn Linear's input; gates depend on invariants only,\nso the adapted layer stays "
            "exactly equivariant", fontsize=SMALL, ha="left", va="center", color=INK)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor="white")
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw the MMEA adapter schematic.")
    parser.add_argument("--out", default=str(REPO_ROOT / "mmea.png"),
                        help="output PNG (default: mmea.png at the repository root)")
    print(f"wrote {draw(Path(parser.parse_args().out))}")


if __name__ == "__main__":
    main()
