/* busi-web Diagnose page: pick or drop images, choose model / explainer / target / feature-map layer, send them
 * to POST /api/predict and show one result card per image (busi.diagnoseResults).
 *
 * Input modes decide how the picked files become what is sent. The built-in "whole" mode sends each file as is.
 * Another mode (e.g. a mammogram region-of-interest picker) registers itself with
 *   busi.diagnose.registerMode({name, title, priority, applies(model), activate(panel, ctx), deactivate(),
 *                               filesChanged(ctx), prepare(files, ctx) -> Promise<[{blob, filename}]>,
 *                               fields(ctx) -> {name: value} (extra form fields, optional)})
 * The mode with the highest priority whose applies(model) is true is used; `model` is the answer of
 * /api/models/active?modality= or /api/runs/<id>/model (classes, layers, target_layer, modality, input_size, and
 * "model": the provenance of the model). The modality picked chooses which models are offered; its default first.
 */
(function () {
  "use strict";
  const busi = window.busi;
  const el = busi.el;
  const root = document.getElementById("diagnose");
  if (!root) return;

  const $ = (id) => document.getElementById(id);
  const form = $("diagnose-form");
  const filesInput = $("files");
  const dropZone = $("drop-zone");
  const fileList = $("file-list");
  const panel = $("mode-panel");
  const modelSel = $("model");
  const modalitySel = $("modality");
  const explainerSel = $("explainer");
  const explainerParams = $("explainer-params");
  const targetSel = $("target");
  const layerSel = $("layer");
  const channelsInput = $("channels");
  const submit = $("diagnose-submit");
  const busy = $("diagnose-busy");
  const errorBox = $("diagnose-error");
  const results = $("results");
  const modelInfo = $("model-info");

  const EXTENSIONS = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"];
  const frameField = $("frame-field");
  const frameInput = $("frame");
  // DICOM files often have no extension at all (IM000001): those are sent and the server says what they are.
  const accepted = (name) => !/\.[^./]+$/.test(name) || EXTENSIONS.some((ext) => name.toLowerCase().endsWith(ext));
  const isDicom = (name) => !/\.[^./]+$/.test(name) || /\.dcm$|\.dicom$/i.test(name);
  const state = { files: [], model: null, mode: null, alpha: 0.5, modalityChosen: false };
  const modes = [];

  function context() {
    return { files: state.files, model: state.model, panel, showError: (m) => busi.showError(errorBox, m) };
  }

  function chooseMode() {
    const mode = modes.find((m) => !m.applies || m.applies(state.model)) || null;
    if (mode === state.mode) return;
    if (state.mode && state.mode.deactivate) state.mode.deactivate(context());
    state.mode = mode;
    panel.replaceChildren();
    panel.hidden = true;
    if (mode && mode.activate) {
      mode.activate(panel, context());
      panel.hidden = !panel.childElementCount;
    }
    root.dataset.mode = mode ? mode.name : "";
  }

  function registerMode(mode) {
    modes.push(mode);
    modes.sort((a, b) => (b.priority || 0) - (a.priority || 0));
    chooseMode();
  }

  registerMode({
    name: "whole",
    title: "Whole image",
    priority: 0,
    applies: () => true,
    prepare: (files) => Promise.resolve(files.map((f) => ({ blob: f, filename: f.name }))),
  });

  // -- files -------------------------------------------------------------------------------------------------
  function setFiles(list) {
    const files = Array.from(list || []);
    const bad = files.filter((f) => !accepted(f.name));
    state.files = files.filter((f) => !bad.includes(f));
    busi.showError(errorBox, bad.length
      ? `${bad.map((f) => f.name).join(", ")}: not a PNG, JPEG, BMP, TIFF or DICOM file; those are left out` : "");
    frameField.hidden = true; // shown again when a multi-frame DICOM file comes back
    frameInput.value = "";
    fileList.replaceChildren(...state.files.map((f, i) => el("li", {},
      `${f.name} (${(f.size / 1024).toFixed(1)} kB) `,
      el("button", { type: "button", class: "link", title: "remove", onclick: () => {
        state.files.splice(i, 1);
        setFiles(state.files);
      } }, "×"))));
    if (state.mode && state.mode.filesChanged) state.mode.filesChanged(context());
  }

  filesInput.addEventListener("change", () => setFiles(filesInput.files));
  ["dragenter", "dragover"].forEach((type) => dropZone.addEventListener(type, (e) => {
    e.preventDefault();
    dropZone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => dropZone.addEventListener(type, (e) => {
    e.preventDefault();
    dropZone.classList.remove("dragging");
  }));
  dropZone.addEventListener("drop", (e) => setFiles(e.dataTransfer.files));
  // The drop zone takes the keyboard's focus: Enter or Space opens the file picker, as a click does.
  dropZone.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && e.target === dropZone) {
      e.preventDefault();
      $("files").click();
    }
  });

  // -- the model's classes and layers ------------------------------------------------------------------------
  /* Only the models of the chosen modality are offered: its default first, then its finished models. */
  function showModality() {
    const modality = modalitySel.value;
    let first = null;
    Array.from(modelSel.options).forEach((o) => {
      o.hidden = o.disabled = o.dataset.modality !== modality;
      if (!o.hidden && first === null) first = o;
    });
    if (modelSel.selectedOptions[0] && modelSel.selectedOptions[0].hidden) modelSel.selectedIndex = first ? first.index : -1;
    if (first === null) modelSel.selectedIndex = -1;
    loadModel();
  }

  function describe(model) {
    const p = model.model || {};
    const parts = [`run ${p.run_id}: ${p.name}`, `${model.backbone}, ${model.input_size} px input`,
      `classes: ${(model.classes || []).join(", ")}`];
    if (p.acceptance) parts.push(`acceptance macro-F1 ${busi.fmt(p.acceptance.macro_f1)} (${p.acceptance.n} images)`);
    else parts.push("not evaluated on an acceptance set");
    if (p.demo) parts.push("DEMO: trained on synthetic images");
    return parts.join(" · ");
  }

  async function loadModel() {
    const option = modelSel.selectedOptions[0];
    if (!option) {
      state.model = null;
      modelInfo.textContent = `no ${modalitySel.value} model: an administrator trains one and sets it as the default`;
      root.dataset.modelLoaded = "0";
      chooseMode();
      return;
    }
    const url = option.value ? `/api/runs/${option.value}/model`
      : `/api/models/active?modality=${encodeURIComponent(modalitySel.value)}`;
    try {
      const model = await busi.api(url);
      state.model = model;
      const keepTarget = targetSel.value;
      targetSel.replaceChildren(el("option", { value: "" }, "Predicted class"),
        ...(model.classes || []).map((c) => el("option", { value: c, selected: c === keepTarget }, c)));
      layerSel.replaceChildren(el("option", { value: "" }, "None"),
        ...(model.layers || []).map((l) => el("option", { value: l },
          l === model.target_layer ? `${l} (explainer's layer)` : l)));
      modelInfo.textContent = describe(model);
      modelInfo.classList.toggle("demo", !!(model.model && model.model.demo));
      root.dataset.modelLoaded = "1";
    } catch (err) {
      state.model = null;
      modelInfo.textContent = err.message;
    }
    chooseMode();
  }
  modelSel.addEventListener("change", loadModel);
  modalitySel.addEventListener("change", showModality);

  // -- the chosen explainer's parameters ---------------------------------------------------------------------
  const explainerSpecs = JSON.parse(explainerParams.dataset.explainers || "[]");
  function showExplainerParams() {
    const spec = explainerSpecs.find((s) => s.name === explainerSel.value);
    explainerParams.replaceChildren(...(spec ? spec.params : []).map((p) => {
      const control = busi.paramControl(p);
      control.id = `xp-${p.name}`;
      control.dataset.param = p.name;
      const label = el("label", { for: control.id }, p.name.replace(/_/g, " "));
      return el("div", { class: "field" + (control.type === "checkbox" ? " check" : "") },
        control.type === "checkbox" ? el("label", { for: control.id }, control, " ", p.name.replace(/_/g, " ")) : label,
        control.type === "checkbox" ? null : control, p.help ? el("small", { class: "help" }, p.help) : null);
    }));
  }
  function explainerValues() {
    const values = {};
    explainerParams.querySelectorAll("[data-param]").forEach((c) => {
      const value = c.type === "checkbox" ? c.checked : c.value.trim();
      if (value !== "") values[c.dataset.param] = value; // empty: the parameter's default
    });
    return values;
  }
  explainerSel.addEventListener("change", showExplainerParams);
  showExplainerParams();

  // -- diagnose ----------------------------------------------------------------------------------------------
  async function diagnose(event) {
    event.preventDefault();
    busi.showError(errorBox, "");
    if (!state.files.length) {
      busi.showError(errorBox, "pick or drop one or more images (PNG, JPEG, BMP, TIFF or DICOM) first");
      return;
    }
    const fd = new FormData();
    try {
      const items = await state.mode.prepare(state.files, context());
      items.forEach((it) => fd.append("image", it.blob, it.filename));
      const extra = state.mode.fields ? state.mode.fields(context()) : {};
      Object.entries(extra || {}).forEach(([k, v]) => fd.append(k, String(v)));
    } catch (err) {
      busi.showError(errorBox, err.message);
      return;
    }
    if (modelSel.value) fd.append("run_id", modelSel.value);
    // A DICOM file says its own modality; the page's choice is sent when the user made one, or for other files.
    if (state.modalityChosen || !state.files.every((f) => isDicom(f.name))) fd.append("modality", modalitySel.value);
    if (frameInput.value) fd.append("frame", frameInput.value);
    fd.append("explainer", explainerSel.value);
    if (explainerSel.value !== "none") fd.append("explainer_params", JSON.stringify(explainerValues()));
    if (targetSel.value) fd.append("target", targetSel.value);
    if (layerSel.value) {
      fd.append("layer", layerSel.value);
      fd.append("channels", channelsInput.value || "16");
    }
    fd.append("alpha", String(state.alpha));
    if ($("pixel-spacing").value) fd.append("pixel_spacing", $("pixel-spacing").value);
    fd.append("images", "original,heatmap"); // the page blends the two itself (opacity slider, download)
    submit.disabled = true;
    busy.hidden = false;
    results.setAttribute("aria-busy", "true");
    // Progress: the seconds so far, and what to expect from a slow explainer (Score-CAM runs one forward pass per
    // feature channel: seconds per image on a CPU).
    const started = Date.now();
    const slow = explainerSel.value === "scorecam"
      ? " (Score-CAM runs the model once per feature channel: about 15 s per image on a CPU)" : "";
    const tick = () => { busy.textContent = `working… ${Math.round((Date.now() - started) / 1000)} s${slow}`; };
    tick();
    const timer = window.setInterval(tick, 1000);
    try {
      const data = await busi.api("/api/predict", { method: "POST", form: fd });
      results.replaceChildren(...data.results.map((r) => busi.diagnoseResults.render(r,
        { classes: data.classes, alpha: state.alpha, legend: data.legend, model: data.model, notice: data.notice })));
      results.dataset.runId = data.run_id;
      const cine = data.results.find((r) => r.dicom && r.dicom.frames > 1);
      frameField.hidden = !cine;
      if (cine) {
        frameInput.max = String(cine.dicom.frames);
        frameInput.value = String(cine.dicom.frame);
        $("frame-count").textContent = `of ${cine.dicom.frames}`;
      }
      window.busiLastDiagnosis = data;
    } catch (err) {
      const fields = Object.entries(err.fields || {}).map(([k, v]) => `${k}: ${v}`).join("; ");
      busi.showError(errorBox, err.message + (fields && !err.message.includes(fields) ? ` (${fields})` : ""));
    } finally {
      window.clearInterval(timer);
      submit.disabled = false;
      busy.hidden = true;
      results.removeAttribute("aria-busy");
    }
  }
  form.addEventListener("submit", diagnose);
  modalitySel.addEventListener("change", () => { state.modalityChosen = true; });
  // Another frame of a cine loop: diagnosed as soon as it is picked.
  frameInput.addEventListener("change", () => { if (frameInput.value) form.requestSubmit(); });
  // The last opacity a user chose is kept for the next diagnosis.
  results.addEventListener("input", (e) => {
    if (e.target.classList.contains("opacity")) state.alpha = e.target.value / 100;
  });

  busi.diagnose = { registerMode, state, reloadModel: loadModel, setFiles };
  showModality();
})();
