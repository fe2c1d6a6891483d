/* busi-web Train page: a form built from GET /api/specs, sent as JSON to POST /api/runs.
 *
 * Shown up front: name, backbone, dataset (+ data folder when it needs one), their non-advanced parameters,
 * epochs, batch size and learning rate. Everything else is under <details id="advanced">. The server validates;
 * its field errors ("train.epochs", "dataset_params.size", "data_dir", ...) are shown next to the fields.
 * A dataset spec may carry a `recommended` recipe (backbone, backbone_params, train): choosing that dataset
 * fills the form with it; choosing a dataset without one puts the training defaults back.
 * "Add a site" trains on several datasets at once (BUSI and BUS-BRA, say): each added site has its dataset, its data
 * folder and its parameters; the request then sends `datasets`, the first being the one chosen above.
 * On success the browser goes to the new run's page.
 */
(function () {
  "use strict";
  const busi = window.busi;
  const el = busi.el;
  const $ = (id) => document.getElementById(id);
  const root = $("train");
  if (!root) return;

  const form = $("train-form");
  const main = $("train-fields");
  const advanced = $("advanced");
  const advancedFields = $("advanced-fields");
  const submit = $("train-submit");
  const busy = $("train-busy");
  const errorBox = $("train-error");
  const MAIN_TRAIN = ["epochs", "batch_size", "lr"];
  let dataDirs = {};
  try {
    dataDirs = JSON.parse(root.dataset.dataDirs || "{}");
  } catch (_) {
    dataDirs = {};
  }
  let specs = null;

  function fieldId(key) {
    return "f-" + key.replace(/[^\w-]/g, "-");
  }

  /* One labelled field; `key` is the error key the server uses ("train.epochs", "backbone", ...). */
  function field(key, label, control, help) {
    control.id = fieldId(key);
    control.dataset.key = key;
    const isCheck = control.type === "checkbox";
    return el("div", { class: "field" + (isCheck ? " check" : ""), dataset: { field: key } },
      isCheck ? el("label", { for: control.id }, control, " ", label) : el("label", { for: control.id }, label),
      isCheck ? null : control,
      help ? el("small", { class: "help" }, help) : null,
      el("small", { class: "field-error", dataset: { errorFor: key }, hidden: true }));
  }

  function paramField(group, p) {
    const control = busi.paramControl(p);
    control.dataset.group = group;
    control.dataset.param = p.name;
    control.dataset.type = p.type;
    const range = p.minimum !== null && p.maximum !== null && (p.type === "int" || p.type === "float")
      ? ` (${p.minimum} to ${p.maximum})` : "";
    return field(`${group}.${p.name}`, p.name.replace(/_/g, " "), control, (p.help || "") + range);
  }

  function spec(kind, name) {
    return specs[kind].find((s) => s.name === name);
  }

  function renderParams(group, params, mainBox, advancedBox) {
    mainBox.replaceChildren(...params.filter((p) => !p.advanced).map((p) => paramField(group, p)));
    advancedBox.replaceChildren(...params.filter((p) => p.advanced).map((p) => paramField(group, p)));
  }

  function build() {
    const backboneSel = el("select", { name: "backbone" },
      specs.backbones.map((s) => el("option", { value: s.name, selected: s.name === "tiny_cnn" }, `${s.title} (${s.name})`)));
    const datasetSel = el("select", { name: "dataset" },
      specs.datasets.map((s) => el("option", { value: s.name, selected: s.name === "phantom" }, `${s.title} (${s.name})`)));
    const dataDir = el("input", { type: "text", name: "data_dir", placeholder: "folder with the dataset's images" });
    const dataDirField = field("data_dir", "data folder", dataDir, "");
    const backboneDesc = el("p", { class: "muted desc" });
    const recipeNote = el("p", { class: "muted desc", id: "recipe-note", hidden: true });
    let recipeApplied = false;
    const datasetDesc = el("p", { class: "muted desc" });
    const boxes = { bbMain: el("div", { class: "params" }), bbAdv: el("div", { class: "params" }),
      dsMain: el("div", { class: "params" }), dsAdv: el("div", { class: "params" }) };
    const trainMain = el("div", { class: "params" },
      specs.train.filter((p) => MAIN_TRAIN.includes(p.name)).map((p) => paramField("train", p)));
    const trainAdv = el("div", { class: "params" },
      specs.train.filter((p) => !MAIN_TRAIN.includes(p.name)).map((p) => paramField("train", p)));

    function onBackbone() {
      const s = spec("backbones", backboneSel.value);
      backboneDesc.textContent = s ? s.description : "";
      renderParams("backbone_params", s ? s.params : [], boxes.bbMain, boxes.bbAdv);
    }
    function onDataset() {
      const s = spec("datasets", datasetSel.value);
      datasetDesc.textContent = s ? s.description : "";
      renderParams("dataset_params", s ? s.params : [], boxes.dsMain, boxes.dsAdv);
      dataDirField.hidden = !(s && s.needs_data_dir);
      const configured = dataDirs[datasetSel.value];
      dataDir.placeholder = configured ? `default: ${configured}` : "folder with the dataset's images (on the server)";
      applyRecipe(s && s.recommended);
    }
    function setParam(group, p, value) {
      const c = form.querySelector(`[data-group="${group}"][data-param="${CSS.escape(p.name)}"]`);
      if (!c) return;
      if (c.type === "checkbox") c.checked = !!value;
      else c.value = value === null || value === undefined ? "" : String(value);
    }
    /* Fill the form with a dataset's recommended recipe (or put the defaults back after one). */
    function applyRecipe(rec) {
      if (!rec && !recipeApplied) return;
      const train = (rec && rec.train) || {};
      specs.train.forEach((p) => setParam("train", p, p.name in train ? train[p.name] : p.default));
      if (rec && rec.backbone && spec("backbones", rec.backbone)) {
        backboneSel.value = rec.backbone;
        onBackbone();
        const bb = rec.backbone_params || {};
        spec("backbones", rec.backbone).params.forEach((p) => { if (p.name in bb) setParam("backbone_params", p, bb[p.name]); });
      } else if (!rec) {
        onBackbone(); // leaving a recipe: its backbone parameters go back to the backbone's defaults too
      }
      recipeApplied = !!rec;
      recipeNote.hidden = !rec;
      recipeNote.textContent = rec ? `Recommended recipe for this dataset filled in${rec.note ? ": " + rec.note : "."}` : "";
    }
    backboneSel.addEventListener("change", onBackbone);
    datasetSel.addEventListener("change", onDataset);

    const sitesBox = el("div", { id: "extra-sites" });
    const addSite = el("button", { type: "button", id: "add-site", class: "secondary" }, "Add a site");
    addSite.addEventListener("click", () => addSiteRow(sitesBox));

    main.replaceChildren(
      field("name", "run name (optional)", el("input", { type: "text", name: "name", maxlength: "200" }), ""),
      el("fieldset", {}, el("legend", {}, "Model"), field("backbone", "backbone", backboneSel, ""), backboneDesc, boxes.bbMain),
      el("fieldset", {}, el("legend", {}, "Data"), field("dataset", "dataset", datasetSel, ""), datasetDesc, recipeNote, dataDirField,
        boxes.dsMain, sitesBox,
        el("p", {}, addSite, " ", el("small", { class: "muted" },
          "Train on several datasets at once (one site each, e.g. BUSI and BUS-BRA): the split is made per site, and the run reports each site."))),
      el("fieldset", {}, el("legend", {}, "Training"), trainMain));
    advancedFields.replaceChildren(
      el("fieldset", {}, el("legend", {}, "Training"), trainAdv),
      el("fieldset", {}, el("legend", {}, "Backbone"), boxes.bbAdv),
      el("fieldset", {}, el("legend", {}, "Dataset"), boxes.dsAdv));
    onBackbone();
    onDataset();
    submit.disabled = false;
    root.dataset.ready = "1";
  }

  /* One more site: its dataset, data folder and parameters, with keys `datasets.K.*` (K from 1; 0 is the one above). */
  let siteCount = 0;
  function addSiteRow(box) {
    siteCount += 1;
    const k = siteCount;
    const sel = el("select", {}, specs.datasets.map((s) => el("option", { value: s.name }, `${s.title} (${s.name})`)));
    const dir = el("input", { type: "text", placeholder: "folder with the dataset's images (on the server)" });
    const dirField = field(`datasets.${k}.data_dir`, "data folder", dir, "");
    const params = el("div", { class: "params" });
    const remove = el("button", { type: "button", class: "secondary" }, "Remove this site");
    const row = el("fieldset", { class: "site-row", dataset: { site: String(k) } },
      el("legend", {}, `Site ${k + 1}`), field(`datasets.${k}.dataset`, "dataset", sel, ""), dirField, params, remove);
    function onChange() {
      const s = spec("datasets", sel.value);
      dirField.hidden = !(s && s.needs_data_dir);
      const configured = dataDirs[sel.value];
      dir.placeholder = configured ? `default: ${configured}` : "folder with the dataset's images (on the server)";
      params.replaceChildren(...(s ? s.params : []).map((p) => paramField(`datasets.${k}.params`, p)));
    }
    sel.addEventListener("change", onChange);
    remove.addEventListener("click", () => row.remove());
    box.append(row);
    onChange();
    sel.focus();
  }

  function values(group) {
    const out = {};
    form.querySelectorAll(`[data-group="${CSS.escape(group)}"][data-param]`).forEach((c) => {
      const value = c.type === "checkbox" ? c.checked : c.value.trim();
      if (value !== "") out[c.dataset.param] = value; // empty: the parameter's default
    });
    return out;
  }

  function collect() {
    const body = { backbone: $(fieldId("backbone")).value, train: values("train"),
      backbone_params: values("backbone_params") };
    const dataset = $(fieldId("dataset")).value;
    const name = $(fieldId("name")).value.trim();
    if (name) body.name = name;
    const dataDir = $(fieldId("data_dir"));
    const dir = !dataDir.closest(".field").hidden && dataDir.value.trim() ? dataDir.value.trim() : null;
    const rows = [...form.querySelectorAll(".site-row")];
    if (!rows.length) {
      body.dataset = dataset;
      body.dataset_params = values("dataset_params");
      if (dir) body.data_dir = dir;
      return body;
    }
    body.datasets = [{ dataset, data_dir: dir, params: values("dataset_params") }].concat(rows.map((row) => {
      const k = row.dataset.site;
      const d = $(fieldId(`datasets.${k}.data_dir`));
      return { dataset: $(fieldId(`datasets.${k}.dataset`)).value,
        data_dir: !d.closest(".field").hidden && d.value.trim() ? d.value.trim() : null,
        params: values(`datasets.${k}.params`) };
    }));
    return body;
  }

  function clearErrors() {
    form.querySelectorAll(".field-error").forEach((e) => busi.showError(e, ""));
    form.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
    busi.showError(errorBox, "");
  }

  function showFieldErrors(fields) {
    const unplaced = [];
    for (const [key, message] of Object.entries(fields || {})) {
      const box = form.querySelector(`[data-error-for="${CSS.escape(key)}"]`);
      if (!box) {
        unplaced.push(`${key}: ${message}`);
        continue;
      }
      busi.showError(box, message);
      box.closest(".field").classList.add("invalid");
      if (advanced.contains(box)) advanced.open = true;
    }
    return unplaced;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors();
    submit.disabled = true;
    busy.hidden = false;
    try {
      const run = await busi.api("/api/runs", { method: "POST", json: collect() });
      window.location.href = `/runs/${run.id}`;
      return;
    } catch (err) {
      const unplaced = showFieldErrors(err.fields);
      const placed = Object.keys(err.fields || {}).length - unplaced.length;
      busi.showError(errorBox, placed ? `Please fix the marked field${placed > 1 ? "s" : ""}. ${err.message}` : err.message);
      const first = form.querySelector(".field.invalid input, .field.invalid select");
      if (first) first.focus();
    }
    submit.disabled = false;
    busy.hidden = true;
  });

  busi.api("/api/specs").then((data) => {
    specs = data;
    build();
  }).catch((err) => {
    main.replaceChildren(el("p", { class: "flash error" }, `Cannot load the training parameters: ${err.message}`));
  });
})();
