/* busi-web Models page (admins' actions): set or clear a modality's default (each asks for a reason), save the
 * gate (auto-promotion, floors), define the acceptance set, score a model on it. Every action calls the JSON API
 * and reloads the page, which the server renders from the store; a refusal (e.g. the gate) is shown as it is. */
(function () {
  "use strict";
  const busi = window.busi;
  const root = document.getElementById("models-page");
  if (!root || root.dataset.admin !== "1") return;
  const errorBox = document.getElementById("models-error");

  function floors(text) {
    const out = {};
    for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
      const [key, value] = part.split("=").map((x) => (x || "").trim());
      if (!key || value === "" || Number.isNaN(Number(value))) {
        throw new Error(`floors: write metric=value pairs separated by commas, e.g. macro_f1=0.7 (got “${part}”)`);
      }
      out[key] = Number(value);
    }
    return out;
  }

  async function act(action, section, row, form) {
    const modality = section.dataset.modality;
    const runId = row ? Number(row.dataset.runId) : null;
    const m = encodeURIComponent(modality);
    if (action === "set-default" || action === "clear-default") {
      const question = action === "set-default"
        ? `Make run ${runId} the default ${modality} model. Why?` : `Clear the default ${modality} model. Why?`;
      const reason = window.prompt(question);
      if (!reason || !reason.trim()) return false;
      if (action === "set-default") {
        await busi.api(`/api/modalities/${m}/default`, { method: "PUT", json: { run_id: runId, reason: reason.trim() } });
      } else {
        await busi.api(`/api/modalities/${m}/default`, { method: "DELETE", json: { reason: reason.trim() } });
      }
    } else if (action === "evaluate") {
      await busi.api(`/api/runs/${runId}/acceptance`, { method: "POST" });
    } else if (action === "settings") {
      const field = (name) => form.elements.namedItem(name);
      await busi.api(`/api/modalities/${m}/settings`, { method: "PUT",
        json: { auto_promote: field("auto_promote").checked, floors: floors(field("floors").value) } });
    } else if (action === "acceptance") {
      const field = (name) => form.elements.namedItem(name);
      const body = { source: field("source").value, dataset: field("dataset").value,
        seed: Number(field("seed").value || 0) };
      if (field("data_dir").value.trim()) body.data_dir = field("data_dir").value.trim();
      if (body.source === "share") body.share = Number(field("share").value);
      await busi.api(`/api/modalities/${m}/acceptance`, { method: "POST", json: body });
    } else {
      throw new Error(`unknown action ${action}`);
    }
    return true;
  }

  async function run(event, action, control, form) {
    event.preventDefault();
    const section = control.closest("section.modality");
    const row = control.closest("tr[data-run-id]");
    busi.showError(errorBox, "");
    control.disabled = true;
    root.dataset.busy = "1";
    try {
      if (await act(action, section, row, form)) window.location.reload();
    } catch (err) {
      const fields = Object.entries(err.fields || {}).map(([k, v]) => `${k}: ${v}`).join("; ");
      busi.showError(errorBox, err.message + (fields && !err.message.includes(fields) ? ` (${fields})` : ""));
      errorBox.scrollIntoView({ block: "nearest" });
    } finally {
      control.disabled = false;
      root.dataset.busy = "0";
    }
  }

  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-act]");
    if (button) run(e, button.dataset.act, button, null);
  });
  document.addEventListener("submit", (e) => {
    const form = e.target.closest("form[data-act]");
    // getAttribute, not form.dataset: a form's named fields shadow its properties (this one has a "dataset").
    if (form) run(e, form.getAttribute("data-act"), form.querySelector("button[type=submit]"), form);
  });
})();
