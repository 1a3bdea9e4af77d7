// The FADE nodes on the canvas: the live chart of a training run on "FADE Train Eraser", and the
// text each node returns (prompt-set preview, saliency summary, training stats, recorded erasure)
// shown on the node itself.
//
// The Python side sends a "fade.progress" event every few steps (nodes/host.py):
// {node, step, total, phase, loss_adversary, adversary_accuracy, loss_removal, loss_preservation, validation_accuracy},
// and each node's ui output carries {text: [...]}.
//
// Both are widgets that the frontend lays out below the node's inputs, so the node grows to show
// them, whatever size a saved workflow gives it. Neither is saved in the workflow nor sent with
// the prompt (serialize false).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const TRAIN_NODE = "FADETrainEraser";
const TEXT_NODES = {
  FADEBuildPromptSet: "the prompt pairs appear here after a run",
  FADEComputeSaliency: "the ranked modules appear here after a run",
  FADETrainEraser: "the adversary accuracy, the audit and the losses appear here after a run",
  FADEApplyErasedLoRA: "the erasure the LoRA records appears here after a run",
};
const CHART_WIDGET = "fade_chart";
const TEXT_WIDGET = "fade_text";
const CHART_HEIGHT = 130;
const runs = new Map(); // graph node id -> events of the current run

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
  ctx.lineWidth = 2;
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

function drawChart(ctx, node, widget, width, top) {
  const left = 10;
  const plotWidth = width - 20;
  const height = CHART_HEIGHT - 26;
  const points = runs.get(String(node.id)) ?? [];
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.35)";
  ctx.fillRect(left, top, plotWidth, height);
  ctx.font = "11px sans-serif";
  if (!points.length) {
    ctx.fillStyle = "#aaa";
    ctx.fillText("adversary accuracy and L_rem appear here while training runs", left + 6, top + height / 2);
    ctx.restore();
    widget.lastDrawn = { points: 0, top, width };
    return;
  }
  const last = points[points.length - 1];
  const total = last.total || last.step;
  const x = (step) => left + (plotWidth * step) / Math.max(total, 1);
  const inset = 4; // a value of 0 or 1 (an adversary at 100 %) stays inside the plot, not on its border
  const y = (v) => top + inset + (height - 2 * inset) * (1 - Math.min(Math.max(v, 0), 1));
  ctx.setLineDash([4, 4]);
  line(ctx, [{ step: 0 }, { step: total }], x, y, () => 0.5, "#888"); // chance: where the adversary should end
  ctx.setLineDash([]);
  line(ctx, points, x, y, (p) => p.adversary_accuracy, "#4aa3ff");
  line(ctx, points, x, y, (p) => p.validation_accuracy, "#ffd24a");
  const removal = points.filter((p) => p.loss_removal !== null && p.loss_removal !== undefined);
  const scale = Math.max(...removal.map((p) => p.loss_removal), 1e-6);
  line(ctx, removal, x, y, (p) => p.loss_removal / scale, "#ff6b6b");
  ctx.fillStyle = "#ddd";
  const validation = points.filter((p) => p.validation_accuracy !== null && p.validation_accuracy !== undefined).pop();
  ctx.fillText(
    `step ${last.step}/${total}  D acc ${last.adversary_accuracy.toFixed(2)}` +
      (validation ? `  D val ${validation.validation_accuracy.toFixed(2)}` : "") +
      (removal.length ? `  L_rem ${removal[removal.length - 1].loss_removal.toFixed(3)}` : ""),
    left, top + height + 16,
  );
  ctx.restore();
  widget.lastDrawn = { points: points.length, top, width, step: last.step };
}

function addChart(node) {
  if (node.widgets?.some((w) => w.name === CHART_WIDGET)) return;
  const widget = node.addCustomWidget({
    name: CHART_WIDGET,
    type: CHART_WIDGET,
    value: null,
    serialize: false,
    options: { serialize: false },
    draw(ctx, drawnNode, width, y) {
      drawChart(ctx, drawnNode, this, width, y);
    },
    computeSize(width) {
      return [width ?? 300, CHART_HEIGHT];
    },
  });
  widget.serialize = false;
}

function addText(node, placeholder) {
  if (node.widgets?.some((w) => w.name === TEXT_WIDGET)) return;
  const widget = ComfyWidgets.STRING(node, TEXT_WIDGET, ["STRING", { multiline: true }], app).widget;
  widget.element.readOnly = true;
  widget.element.placeholder = placeholder;
  widget.element.classList.add("fade-text");
  widget.serialize = false;
  if (widget.options) widget.options.serialize = false;
}

app.registerExtension({
  name: "fade.nodes",
  setup() {
    api.addEventListener("fade.progress", ({ detail }) => {
      record(detail);
      app.graph.getNodeById(Number(detail.node))?.setDirtyCanvas(true, false);
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    const placeholder = TEXT_NODES[nodeData.name];
    if (placeholder === undefined) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      created?.apply(this, arguments);
      if (nodeData.name === TRAIN_NODE) addChart(this);
      addText(this, placeholder);
      this.setSize(this.computeSize([this.size[0], this.size[1]]).map((v, i) => Math.max(v, this.size[i])));
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      executed?.apply(this, arguments);
      const text = message?.text;
      const widget = this.widgets?.find((w) => w.name === TEXT_WIDGET);
      if (widget && text?.length) {
        widget.value = Array.isArray(text) ? text.join("\n") : String(text);
        this.setDirtyCanvas(true, true);
      }
    };
  },
});
