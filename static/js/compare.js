/* busi-web Compare page: overlaid per-epoch curves of two or more runs (solid: validation, dashed: training).
 * Charts: window.busiCharts.compare_loss and window.busiCharts.compare_accuracy; one dataset per run and part,
 * keyed "<run id>:<metric>". */
(function () {
  "use strict";
  const busi = window.busi;
  const root = document.getElementById("compare");
  if (!root) return;
  const ids = root.dataset.ids.split(",").map(Number);
  const names = {};
  document.querySelectorAll("#compare-table thead th[data-run-id]").forEach((th) => {
    names[th.dataset.runId] = `run ${th.dataset.runId}`;
  });

  function series(metricTrain, metricVal) {
    return ids.flatMap((id, i) => {
      const color = busi.PALETTE[i % busi.PALETTE.length];
      return [{ key: `${id}:${metricVal}`, label: `${names[id] || "run " + id} val`, color },
        { key: `${id}:${metricTrain}`, label: `${names[id] || "run " + id} train`, color, dash: true, width: 1.5 }];
    });
  }

  const charts = {
    loss: busi.lineChart("compare_loss", document.getElementById("chart-compare-loss"), {
      title: "Loss per epoch", xLabel: "epoch", yLabel: "loss", series: series("train_loss", "val_loss"),
    }),
    accuracy: busi.lineChart("compare_accuracy", document.getElementById("chart-compare-accuracy"), {
      title: "Accuracy per epoch", xLabel: "epoch", yLabel: "accuracy", yMin: 0, yMax: 1,
      series: series("train_acc", "val_acc"),
    }),
  };
  const CHART_OF = { train_loss: "loss", val_loss: "loss", train_acc: "accuracy", val_acc: "accuracy" };

  Promise.all(ids.map((id) => busi.api(`/api/runs/${id}/metrics?keys=${Object.keys(CHART_OF).join(",")}`)
    .then((data) => {
      data.rows.forEach((r) => busi.setPoint(charts[CHART_OF[r.key]], `${id}:${r.key}`, r.epoch, r.value));
    })
    .catch((err) => root.append(busi.el("p", { class: "flash error" }, `run ${id}: ${err.message}`)))))
    .then(() => {
      Object.values(charts).forEach((c) => c.update("none"));
      root.dataset.loaded = "1";
    });
})();
