/* busi-web run page: live curves, batch log, status, ETA, and the actions (cancel, resume, promote).
 *
 * Protocol: GET /api/runs/<id>/metrics (history, with last_id), then Socket.IO join_run {run_id, after_id}; the
 * server pushes `metrics` {run_id, rows} and `status` {run_id, status, epochs_done, ...}. Rows are applied once,
 * in id order (a row whose id is not above the last one seen is skipped). When the status changes, the details
 * section (report, confusion matrix, files, log, action buttons) is re-rendered by the server and swapped in.
 * State for tests and debugging: window.busiRun {status, lastId, restRows, liveRows, ...}.
 */
(function () {
  "use strict";
  const busi = window.busi;
  const $ = (id) => document.getElementById(id);
  const root = $("run");
  if (!root) return;

  const runId = Number(root.dataset.runId);
  const epochs = Number(root.dataset.epochs) || null;
  const state = (window.busiRun = {
    runId, status: root.dataset.status, epochsDone: Number(root.dataset.epochsDone) || 0,
    lastId: 0, restRows: 0, liveRows: 0, epochTimes: {}, lastEpochAt: null, live: "off",
  });

  const charts = {
    loss: busi.lineChart("loss", $("chart-loss"), {
      title: "Loss per epoch", xLabel: "epoch", yLabel: "loss",
      series: [{ key: "train_loss", label: "train loss", color: "#0b6bcb" },
        { key: "val_loss", label: "val loss", color: "#d1495b" }],
    }),
    accuracy: busi.lineChart("accuracy", $("chart-accuracy"), {
      title: "Accuracy per epoch", xLabel: "epoch", yLabel: "accuracy", yMin: 0, yMax: 1,
      series: [{ key: "train_acc", label: "train accuracy", color: "#0b6bcb" },
        { key: "val_acc", label: "val accuracy", color: "#d1495b" },
        { key: "val_macro_f1", label: "val macro-F1", color: "#2a9d8f", dash: true }],
    }),
    batch: busi.lineChart("batch", $("chart-batch"), {
      title: "Per batch (training)", xLabel: "step", yLabel: "",
      series: [{ key: "batch_loss", label: "batch loss", color: "#3d5a80", pointRadius: 0, width: 1.5 },
        { key: "batch_acc", label: "batch accuracy", color: "#e9a03b", pointRadius: 0, width: 1.5 }],
    }),
  };
  const EPOCH_KEYS = { train_loss: "loss", val_loss: "loss", train_acc: "accuracy", val_acc: "accuracy",
    val_macro_f1: "accuracy" };

  // -- batch log ---------------------------------------------------------------------------------------------
  const logBox = $("batch-log");
  const MAX_LINES = 2000;
  const batchRows = new Map(); // step -> {epoch, loss}
  const epochRows = {}; // epoch -> {key: value}
  let logQueue = [];

  function logLine(text, cls) {
    logQueue.push(busi.el("div", { class: cls || "" }, text));
  }

  function flushLog() {
    if (!logQueue.length) return;
    const atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 30;
    logBox.append(...logQueue);
    logQueue = [];
    while (logBox.childElementCount > MAX_LINES) logBox.firstElementChild.remove();
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
  }

  function epochSummary(epoch) {
    const v = epochRows[epoch] || {};
    const parts = [["train loss", v.train_loss], ["train acc", v.train_acc], ["val loss", v.val_loss],
      ["val acc", v.val_acc], ["val macro-F1", v.val_macro_f1]]
      .filter(([, x]) => x !== undefined).map(([k, x]) => `${k} ${busi.fmt(x)}`);
    const took = v.epoch_time !== undefined ? ` (${busi.duration(v.epoch_time)})` : "";
    return `epoch ${epoch}${epochs ? "/" + epochs : ""}: ${parts.join(", ")}${took}`;
  }

  // -- rows --------------------------------------------------------------------------------------------------
  function addRows(rows, source) {
    let n = 0;
    for (const r of rows || []) {
      if (r.id <= state.lastId) continue; // each row once, whichever way it came
      state.lastId = r.id;
      n += 1;
      if (r.key in EPOCH_KEYS) {
        busi.setPoint(charts[EPOCH_KEYS[r.key]], r.key, r.epoch, r.value);
      } else if (r.key === "batch_loss") {
        $("batch-chart-box").hidden = false; // shown once the trainer reports batches (every half second)
        busi.setPoint(charts.batch, r.key, r.step, r.value);
        batchRows.set(r.step, { epoch: r.epoch, loss: r.value });
      } else if (r.key === "batch_acc") {
        busi.setPoint(charts.batch, r.key, r.step, r.value);
        const b = batchRows.get(r.step) || { epoch: r.epoch };
        batchRows.delete(r.step);
        logLine(`epoch ${b.epoch} · step ${r.step}: loss ${busi.fmt(b.loss)}, accuracy ${busi.fmt(r.value)}`);
      }
      if (!r.key.startsWith("batch_")) (epochRows[r.epoch] = epochRows[r.epoch] || {})[r.key] = r.value;
      if (r.key === "epoch_time") {
        state.epochTimes[r.epoch] = r.value;
        state.lastEpochAt = r.time;
        state.epochsDone = Math.max(state.epochsDone, r.epoch);
        logLine(epochSummary(r.epoch), "epoch-line");
      } else if (r.key === "test_macro_f1") {
        logLine(`test: macro-F1 ${busi.fmt(r.value)}`, "epoch-line");
      }
    }
    if (source === "live") state.liveRows += n;
    else state.restRows += n;
    if (n) {
      Object.values(charts).forEach(busi.redraw);
      flushLog();
      showProgress();
    }
  }

  // -- status, ETA -------------------------------------------------------------------------------------------
  function showProgress() {
    $("run-epochs-done").textContent = state.epochsDone;
    $("run-eta").textContent = eta();
  }

  function eta() {
    if (busi.TERMINAL.has(state.status)) return "—";
    if (state.status === "queued") return "waiting in the queue";
    if (state.status === "interrupted") return "interrupted (resume to continue)";
    const times = Object.values(state.epochTimes);
    if (!epochs || !times.length) return "after the first epoch";
    const mean = times.reduce((a, b) => a + b, 0) / times.length;
    const sinceLast = state.lastEpochAt ? Date.now() / 1000 - state.lastEpochAt : 0;
    return "about " + busi.duration(Math.max(0, (epochs - state.epochsDone) * mean - sinceLast));
  }

  function onStatus(s) {
    const changed = s.status !== state.status || (s.epochs_done || 0) !== state.epochsDone;
    state.status = s.status;
    state.epochsDone = Math.max(state.epochsDone, s.epochs_done || 0);
    root.dataset.status = s.status;
    const badge = $("run-status").querySelector(".status");
    badge.textContent = s.status;
    badge.className = `status status-badge st-${s.status}`;
    badge.dataset.status = s.status;
    if (s.best_metric !== null && s.best_metric !== undefined) {
      $("run-best").textContent = `${s.best_metric_name || "best"} ${busi.fmt(s.best_metric)}`;
    }
    busi.showError($("run-error"), s.error || "");
    showProgress();
    if (changed) refreshDetails();
    if (busi.TERMINAL.has(s.status)) stopLive();
  }

  // -- details partial ---------------------------------------------------------------------------------------
  let refreshing = null;
  let again = false;
  function refreshDetails() {
    if (refreshing) {
      again = true;
      return refreshing;
    }
    refreshing = fetch(`/runs/${runId}?partial=details`, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(`${r.status}`))))
      .then((html) => {
        $("run-details").innerHTML = html;
        const actions = $("run-actions");
        if (actions && actions.dataset.duration) $("run-duration").textContent = actions.dataset.duration;
        root.dataset.detailsStatus = state.status;
      })
      .catch(() => {})
      .finally(() => {
        refreshing = null;
        if (again) {
          again = false;
          refreshDetails();
        }
      });
    return refreshing;
  }

  document.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-action]");
    if (!button || Number(button.dataset.runId) !== runId) return;
    button.disabled = true;
    const answer = await busi.runAction(button.dataset.action, runId);
    button.disabled = false;
    if (!answer) return;
    const run = answer.run || answer;
    if (run && run.status) onStatus({ run_id: runId, ...run });
    refreshDetails();
    if (run && run.status && !busi.TERMINAL.has(run.status) && !socket) startLive();
  });

  // -- live --------------------------------------------------------------------------------------------------
  let socket = null;
  let pollTimer = null;

  function setLive(text) {
    state.live = text;
    $("run-live").textContent = text;
  }

  function startLive() {
    if (!window.io) return startPolling("live updates unavailable (no Socket.IO client); polling");
    // WebSocket first: a WebSocket stays with the worker that accepted it, so several workers need no sticky
    // sessions (long-polling, the fallback, does: docs/scaling.md).
    socket = window.io({ reconnectionDelayMax: 5000, transports: ["websocket", "polling"], tryAllTransports: true });
    socket.on("connect", () => {
      setLive("connected");
      socket.emit("join_run", { run_id: runId, after_id: state.lastId }, (ack) => {
        if (ack && ack.error) setLive(`live updates refused: ${ack.error}`);
      });
    });
    socket.on("disconnect", () => setLive("reconnecting…"));
    socket.on("connect_error", () => setLive("cannot reach the live feed; retrying…"));
    socket.on("metrics", (msg) => msg.run_id === runId && addRows(msg.rows, "live"));
    socket.on("status", (msg) => msg.run_id === runId && onStatus(msg));
  }

  function stopLive() {
    if (socket) {
      socket.emit("leave_run", { run_id: runId });
      socket.disconnect();
      socket = null;
    }
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
    setLive("ended");
  }

  function startPolling(why) {
    setLive(why);
    pollTimer = setInterval(async () => {
      try {
        const data = await busi.api(`/api/runs/${runId}/metrics?after_id=${state.lastId}`);
        addRows(data.rows, "poll");
        const run = await busi.api(`/api/runs/${runId}`);
        onStatus({ run_id: runId, ...run });
      } catch (_) { /* keep trying */ }
    }, 2000);
  }

  setInterval(() => {
    if (state.status === "running") $("run-eta").textContent = eta();
  }, 1000);

  (async function start() {
    try {
      const history = await busi.api(`/api/runs/${runId}/metrics`);
      addRows(history.rows, "rest");
      state.lastId = Math.max(state.lastId, history.last_id || 0);
    } catch (err) {
      setLive(`could not load the history: ${err.message}`);
    }
    root.dataset.historyLoaded = "1";
    if (!busi.TERMINAL.has(state.status)) startLive();
  })();
})();
