// Live chart of a FADE training run, drawn on the "FADE Train Eraser" node.
// The node's Python side sends a "fade.progress" event every few steps (see nodes/host.py):
// {node, step, total, phase, loss_adversary, adversary_accuracy, loss_removal, loss_preservation, validation_accuracy}.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TRAIN_NODE = "FADETrainEraser";
const CHART_HEIGHT = 110;
const runs = new Map(); // graph node id -> list of events of the current run

function record(event) {
  const id = String(event.node);
  let points = runs.get(id);
  if (!points || event.step < points[points.length - 1].step) {
    points = []; // a new run on this node
    runs.set(id, points);
  }
  points.push(event);
}

function line(ctx, points, x, y, value, colour) {
  ctx.strokeStyle = colour;
  ctx.beginPath();
  let started = false;
  for (const p of points) {
    const v = value(p);
    if (v === null || v === undefined || Number.isNaN(v)) continue;
    if (started) ctx.lineTo(x(p.step), y(v));
    else ctx.moveTo(x(p.step), y(v));
    started = true;
  }
  ctx.stroke();
}

function drawChart(ctx, node, points) {
  const left = 10, width = node.size[0] - 20;
  const top = node.size[1] - CHART_HEIGHT - 6, height = CHART_HEIGHT - 22;
  const total = points[points.length - 1].total || points[points.length - 1].step;
  const x = (step) => left + (width * step) / Math.max(total, 1);
  const y = (v) => top + height * (1 - Math.min(Math.max(v, 0), 1));
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.35)";
  ctx.fillRect(left, top, width, height);
  ctx.setLineDash([4, 4]);
  line(ctx, [{ step: 0 }, { step: total }], x, y, () => 0.5, "#888"); // chance: where the adversary should end
  ctx.setLineDash([]);
  line(ctx, points, x, y, (p) => p.adversary_accuracy, "#4aa3ff");
  line(ctx, points, x, y, (p) => p.validation_accuracy, "#ffd24a");
  const removal = points.filter((p) => p.loss_removal !== null);
  const scale = Math.max(...removal.map((p) => p.loss_removal), 1e-6);
  line(ctx, removal, x, y, (p) => p.loss_removal / scale, "#ff6b6b");
  const last = points[points.length - 1];
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  const validation = points.filter((p) => p.validation_accuracy !== null).pop();
  ctx.fillText(
    `step ${last.step}/${total}  D acc ${last.adversary_accuracy.toFixed(2)}` +
      (validation ? `  D val ${validation.validation_accuracy.toFixed(2)}` : "") +
      (last.loss_removal !== null ? `  L_rem ${last.loss_removal.toFixed(3)}` : ""),
    left, top + height + 14,
  );
  ctx.restore();
}

app.registerExtension({
  name: "fade.progress",
  setup() {
    api.addEventListener("fade.progress", ({ detail }) => {
      record(detail);
      app.graph.getNodeById(Number(detail.node))?.setDirtyCanvas(true, false);
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== TRAIN_NODE) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      created?.apply(this, arguments);
      this.setSize([this.size[0], this.size[1] + CHART_HEIGHT]);
    };
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      draw?.apply(this, arguments);
      const points = runs.get(String(this.id));
      if (points?.length && !this.flags?.collapsed) drawChart(ctx, this, points);
    };
  },
});
