/* busi-web: Chart.js line charts with {x, y} points, kept in window.busiCharts by name.
 *
 * busi.lineChart(name, canvas, {title, xLabel, yLabel, series: [{key, label, color, dash}]}) -> Chart
 * busi.setPoint(chart, key, x, y)   add or replace (same x) a point of the series `key`
 * busi.redraw(chart)                coalesced chart.update() (many rows arrive at once)
 */
(function () {
  "use strict";
  const busi = (window.busi = window.busi || {});
  // Tests and curious users read chart data from here (window.busiCharts.loss.data.datasets[0].data).
  window.busiCharts = window.busiCharts || {};

  busi.PALETTE = ["#0b6bcb", "#d1495b", "#2a9d8f", "#e9a03b", "#6c4ab6", "#3d5a80", "#8ab17d", "#b56576"];

  busi.lineChart = function (name, canvas, opts) {
    if (window.busiCharts[name]) window.busiCharts[name].destroy();
    const datasets = opts.series.map((s, i) => ({
      label: s.label,
      busiKey: s.key,
      data: [],
      borderColor: s.color || busi.PALETTE[i % busi.PALETTE.length],
      backgroundColor: s.color || busi.PALETTE[i % busi.PALETTE.length],
      borderDash: s.dash ? [6, 4] : [],
      borderWidth: s.width || 2,
      pointRadius: s.pointRadius === undefined ? 2 : s.pointRadius,
      tension: 0.15,
    }));
    const chart = new window.Chart(canvas, {
      type: "line",
      data: { datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: false },
        scales: {
          x: { type: "linear", title: { display: !!opts.xLabel, text: opts.xLabel }, ticks: { precision: 0 } },
          y: { title: { display: !!opts.yLabel, text: opts.yLabel }, suggestedMin: opts.yMin, suggestedMax: opts.yMax },
        },
        plugins: {
          title: { display: !!opts.title, text: opts.title },
          legend: { position: "bottom", labels: { boxWidth: 14 } },
        },
      },
    });
    window.busiCharts[name] = chart;
    return chart;
  };

  busi.findSeries = function (chart, key) {
    return chart.data.datasets.find((d) => d.busiKey === key) || null;
  };

  busi.setPoint = function (chart, key, x, y) {
    const ds = busi.findSeries(chart, key);
    if (!ds) return false;
    const data = ds.data;
    if (!data.length || data[data.length - 1].x < x) {
      data.push({ x, y });
    } else {
      // A resumed run redoes epochs: its new value replaces the old point.
      const i = data.findIndex((p) => p.x === x);
      if (i >= 0) data[i] = { x, y };
      else {
        data.push({ x, y });
        data.sort((a, b) => a.x - b.x);
      }
    }
    return true;
  };

  const pending = new Set();
  let timer = null;
  busi.redraw = function (chart) {
    pending.add(chart);
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      pending.forEach((c) => c.update("none"));
      pending.clear();
    }, 60);
  };
})();
