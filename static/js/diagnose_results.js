/* busi-web Diagnose: one result card per image.
 *
 * busi.diagnoseResults.render(result, {classes, alpha, legend}) -> <article>
 *   result is one item of POST /api/predict's "results" (label, probabilities, original_png, heatmap_png, ...).
 * A segmenting model's lesion outline is drawn over the overlay, with its sizes and descriptors beside it.
 * The overlay is blended in the browser from the original and the colourised heatmap:
 *   overlay = (1 - alpha) * original + alpha * heatmap  (the server's formula), so the opacity slider needs
 *   no new request. The blended canvas can be downloaded as PNG.
 */
(function () {
  "use strict";
  const busi = (window.busi = window.busi || {});
  const el = busi.el;

  function loadImage(b64) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the server sent an image the browser cannot decode"));
      img.src = "data:image/png;base64," + b64;
    });
  }

  function safeName(filename) {
    return (filename || "image").replace(/\.[^.]+$/, "").replace(/[^\w.-]+/g, "_");
  }

  function probabilityBars(result, classes) {
    const names = classes && classes.length ? classes : Object.keys(result.probabilities);
    return el("div", { class: "probs" }, names.map((name) => {
      const p = result.probabilities[name] || 0;
      return el("div", { class: "prob-row" + (name === result.label ? " top" : ""), dataset: { class: name } },
        el("span", { class: "prob-name" }, name),
        el("span", { class: "prob-bar" }, el("span", { class: "prob-fill", style: { width: (100 * p).toFixed(1) + "%" } })),
        el("span", { class: "prob-value" }, busi.pct(p)));
    }));
  }

  /* The lesion's outline, a closed polygon of [x, y] image pixels: green over a dark halo. */
  function drawOutline(ctx, points, width) {
    if (!points || points.length < 2) return;
    ctx.save();
    ctx.lineJoin = "round";
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(x + 0.5, y + 0.5) : ctx.moveTo(x + 0.5, y + 0.5)));
    ctx.closePath();
    ctx.strokeStyle = "#000";
    ctx.lineWidth = width + 2;
    ctx.stroke();
    ctx.strokeStyle = "#00ff66";
    ctx.lineWidth = width;
    ctx.stroke();
    ctx.restore();
  }

  /* Draw original then heatmap at opacity alpha: exactly (1 - a) * original + a * heatmap per pixel; then the
     lesion's outline, when there is one. */
  function blend(canvas, original, heatmap, alpha, region, outline) {
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    canvas.width = original.naturalWidth;
    canvas.height = original.naturalHeight;
    ctx.globalAlpha = 1;
    ctx.drawImage(original, 0, 0);
    if (heatmap) {
      ctx.globalAlpha = alpha;
      ctx.drawImage(heatmap, 0, 0, canvas.width, canvas.height);  // transparent where the model saw nothing
      ctx.globalAlpha = 1;
    }
    if (region && !(region[0] === 0 && region[1] === 0 && region[2] === canvas.width && region[3] === canvas.height)) {
      const w = Math.max(1, Math.floor(Math.min(canvas.width, canvas.height) / 250));
      ctx.save();
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = w;
      ctx.setLineDash([4 * w, 4 * w]);
      ctx.strokeRect(region[0] + w / 2, region[1] + w / 2, region[2] - region[0] - w, region[3] - region[1] - w);
      ctx.restore();
    }
    drawOutline(ctx, outline, Math.max(1, Math.floor(Math.min(canvas.width, canvas.height) / 200)));
  }

  /* What the lesion map found: a plain statement, the sizes, and each BI-RADS descriptor with its number. */
  function lesionBox(lesion) {
    if (!lesion) return null;
    if (!lesion.found) {
      return el("div", { class: "lesion none", dataset: { found: "0" } }, el("p", {}, el("strong", {}, "Lesion: "), lesion.statement));
    }
    const m = lesion.measurements;
    const mm = (v) => (v === null || v === undefined ? "" : ` (${busi.fmt(v, 1)} mm)`);
    const d = lesion.descriptors;
    const row = (name, value, detail) => el("tr", {}, el("th", { scope: "row" }, name), el("td", { dataset: { descriptor: name } }, value), el("td", { class: "muted" }, detail));
    return el("div", { class: "lesion" + (lesion.low_confidence ? " low" : ""), dataset: { found: "1", shape: d.shape.value } },
      el("p", {}, el("strong", {}, "Lesion: "), lesion.statement),
      lesion.low_confidence ? el("p", { class: "flash warning", role: "note" }, "Low-confidence outline: check it against the image.") : null,
      el("table", { class: "lesion-table" }, el("tbody", {},
        row("long axis", `${busi.fmt(m.long_axis_px, 0)} px${mm(m.long_axis_mm)}`, "longest diameter"),
        row("perpendicular", `${busi.fmt(m.short_axis_px, 0)} px${mm(m.short_axis_mm)}`, "longest extent across the long axis"),
        row("area", `${busi.fmt(m.area_px, 0)} px²` + (m.area_mm2 === null ? "" : ` (${busi.fmt(m.area_mm2, 1)} mm²)`), ""),
        row("shape", d.shape.value, `ellipse fit ${busi.fmt(d.shape.ellipse_fit, 2)}, axis ratio ${busi.fmt(d.shape.axis_ratio, 2)}, solidity ${busi.fmt(d.shape.solidity, 2)}`),
        row("orientation", d.orientation.value, `depth / width ${busi.fmt(d.orientation.depth_width_ratio, 2)}`),
        row("margin", d.margin.value, `roughness ${busi.fmt(d.margin.roughness, 3)}`))),
      el("p", { class: "muted small" }, "Measured on the model's predicted outline, not a radiologist's reading."));
  }

  /* The colour scale: what the colours of the heatmap mean. */
  function legendBox(legend, target) {
    if (!legend) return null;
    return el("div", { class: "legend", role: "img", "aria-label": "heatmap colour scale" },
      el("span", { class: "legend-end" }, "low"),
      el("span", { class: "legend-bar", style: { background: `linear-gradient(to right, ${legend.stops.join(", ")})` } }),
      el("span", { class: "legend-end" }, "high"),
      el("small", { class: "legend-meaning muted" }, `Colour: ${legend.meaning.replace("the explained class", `“${target}”`)}`));
  }

  /* Which model answered, how it was validated, and that this is decision support. */
  function provenanceBox(model, notice) {
    const acc = model.acceptance;
    const ci = acc && acc.macro_f1_ci ? ` (95% CI ${busi.fmt(acc.macro_f1_ci[0], 3)}–${busi.fmt(acc.macro_f1_ci[1], 3)})` : "";
    const cal = model.calibration;
    return el("div", { class: "provenance" + (model.demo ? " demo" : ""), dataset: { runId: model.run_id } },
      model.demo ? el("p", { class: "demo-label" }, el("strong", {}, "DEMO MODEL"),
        " — trained on synthetic images, not on scans. Its answers on real images mean nothing.") : null,
      model.verdict && !model.verdict.accepted
        ? el("p", { class: "flash warning not-accepted", role: "note" }, el("strong", {}, "Not accepted: "),
          model.verdict.text.replace(/^not accepted: /, ""), ". An administrator is trying it; it does not answer clinicians.")
        : null,
      el("p", { class: "model-line" }, "Model: ",
        el("a", { href: `/runs/${model.run_id}#model-card` }, `run ${model.run_id} — ${model.name}`),
        ` · ${model.modality} · trained on ${model.training_data.dataset}`,
        acc ? ` · acceptance macro-F1 ${busi.fmt(acc.macro_f1, 3)}${ci} on ${acc.n} images` : " · not evaluated on an acceptance set",
        ` · ${model.calibration_statement || (cal ? `temperature ${busi.fmt(cal.temperature, 2)}` : "calibration not checked")}`),
      el("p", { class: "notice-support" }, notice || model.notice));
  }

  /* The printable case report of this result (kept by the server while it runs), as a page and as a PDF. */
  function reportLinks(result) {
    if (!result.report_id) return null;
    const base = `/reports/${encodeURIComponent(result.report_id)}`;
    return el("p", { class: "report-links" }, "Case report: ",
      el("a", { href: base, target: "_blank", rel: "noopener", class: "report-link" }, "open to print"), " · ",
      el("a", { href: `${base}.pdf`, class: "report-pdf", download: "" }, "PDF"));
  }

  /* What a DICOM file said of itself: modality, frame, spacing (no patient data is ever sent). */
  function dicomLine(result) {
    const d = result.dicom;
    if (!d) return null;
    const parts = [`DICOM ${d.modality || "image"}`, d.frames > 1 ? `frame ${d.frame} of ${d.frames}` : "one frame",
      d.photometric, d.transfer_syntax];
    if (d.pixel_spacing_mm) parts.push(`${d.pixel_spacing_mm.map((v) => String(Number(v.toPrecision(4)))).join(" × ")} mm per pixel (${d.pixel_spacing_source})`);
    else parts.push("no pixel spacing in the file");
    return el("p", { class: "muted dicom-line", dataset: { frames: String(d.frames), frame: String(d.frame) } }, parts.join(" · "));
  }

  /* The operating point: whether p(malignant) is at or above the threshold chosen for sensitivity. */
  function operatingLine(result) {
    const op = result.operating_point;
    if (!op) return null;
    return el("p", { class: "operating " + (op.suspicious ? "suspicious" : "below"), dataset: { suspicious: op.suspicious ? "1" : "0" } },
      el("strong", {}, op.suspicious ? "Suspicious: consider biopsy" : "Below the biopsy threshold"),
      ` — p(malignant) ${busi.pct(op.p_malignant)} against the threshold ${busi.pct(op.threshold)}, chosen to keep a `
      + `sensitivity of ${busi.fmt(op.target_sensitivity, 2)} for malignancy on the model's validation images.`);
  }

  /* A DICOM whose scanner the training data did not include. */
  function scannerLine(result) {
    const sc = result.scanner;
    if (!sc || sc.seen) return null;
    return el("p", { class: "flash warning scanner-warning", role: "note" },
      el("strong", {}, `Scanner ${[sc.manufacturer, sc.model_name].filter(Boolean).join(" ")}: `), sc.message,
      sc.training_devices && sc.training_devices.length ? ` (trained on ${sc.training_devices.join(", ")}).` : ".");
  }

  function render(result, opts = {}) {
    const alpha = opts.alpha === undefined ? 0.5 : opts.alpha;
    // An image unlike the training images gets no class: the answer is withheld and the numbers folded away.
    const withheld = !!result.withheld;
    const title = withheld
      ? el("h2", {}, el("span", { class: "filename" }, result.filename), " ",
        el("span", { class: "label label-withheld", dataset: { label: "withheld" } }, "No reliable answer"))
      : el("h2", {},
        el("span", { class: "filename" }, result.filename), " ",
        el("span", { class: `label label-${result.label}`, dataset: { label: result.label } }, result.label), " ",
        el("span", { class: "muted" }, busi.pct(result.probabilities[result.label])));
    const bars = withheld
      ? el("details", { class: "withheld-probs" }, el("summary", {}, "Show the probabilities anyway (not an answer)"),
        probabilityBars(result, opts.classes))
      : probabilityBars(result, opts.classes);
    const explained = result.explainer
      ? `${result.explainer} heatmap for class “${result.target}”${result.target === result.label ? " (predicted)" : ""}`
      : "no heatmap (explainer: none)";
    const card = el("article", { class: "card result" + (withheld ? " withheld" : ""), dataset: { filename: result.filename, label: result.label || "withheld", explainer: result.explainer || "none" } },
      title, el("p", { class: "muted explained" }, explained, ` · ${result.width}×${result.height} px`,
        result.roi ? ` · region of interest: ${result.roi.side} px square centred at (${result.roi.x}, ${result.roi.y})` : ""),
      withheld ? el("p", { class: "flash error withheld-answer", role: "alert" }, el("strong", {}, "No reliable answer: "),
        "this image is unlike the training images, so no class is given.") : null,
      operatingLine(result), dicomLine(result), scannerLine(result), bars, reportLinks(result));

    if (result.ood && result.ood.out_of_distribution) {
      card.dataset.ood = "1";
      card.append(el("p", { class: "flash error ood-warning", role: "alert" },
        el("strong", {}, "Unlike the images this model was trained on. "),
        `Its out-of-distribution score is ${result.ood.score.toFixed(2)}, above the threshold ${result.ood.threshold.toFixed(2)} `
        + "set on its validation images: this may be another modality, a photograph, a blank frame or a scanner it has "
        + "never seen. Do not rely on this result."));
    }
    if (opts.model) card.append(provenanceBox(opts.model, opts.notice));
    if (result.map_note) {
      card.append(el("p", { class: "flash warning map-note", role: "note" }, `No heatmap: ${result.map_note}.`));
    }
    if (result.caution) {
      card.append(el("p", { class: "flash warning caution", role: "note" }, `Caution: ${result.caution}.`));
    }
    const lesion = lesionBox(result.lesion);
    if (lesion) card.append(lesion);
    const outline = result.lesion && result.lesion.found ? result.lesion.outline : null;
    const originalImg = el("img", { class: "original", alt: `original ${result.filename}` });
    if (!result.explainer) {  // no heatmap: the image once (with the outline), nothing to blend or download
      const shown = outline ? el("canvas", { class: "outlined", "aria-label": `lesion outline over ${result.filename}` }) : originalImg;
      card.append(el("div", { class: "images" }, el("figure", {}, shown, el("figcaption", {}, outline ? "Image and lesion outline" : "Image"))));
      card.ready = loadImage(result.original_png).then((original) => {
        originalImg.src = original.src;
        if (outline) blend(shown, original, null, 0, result.analysed_region, outline);
        card.dataset.ready = "1";
      }).catch((err) => card.append(el("p", { class: "flash error" }, err.message)));
      return card;
    }
    const canvas = el("canvas", { class: "overlay", "aria-label": `heatmap overlay of ${result.filename}` });
    const slider = el("input", { type: "range", class: "opacity", min: "0", max: "100", value: String(Math.round(alpha * 100)),
      "aria-label": "heatmap opacity" });
    const download = el("a", { class: "button download", download: `${safeName(result.filename)}_overlay.png`, href: "#" },
      "Download overlay");
    const figures = el("div", { class: "images" },
      el("figure", {}, originalImg, el("figcaption", {}, "Original")),
      el("figure", {}, canvas,
        el("figcaption", {}, el("label", { class: "inline-label" }, "Heatmap opacity ", slider), " ", download)));
    card.append(figures);
    const legend = legendBox(opts.legend, result.target);
    if (legend) card.append(legend);
    if (result.feature_maps_png) {
      card.append(el("figure", { class: "feature-maps" },
        el("img", { class: "feature-maps", alt: `feature maps of ${result.feature_layer}`,
          src: "data:image/png;base64," + result.feature_maps_png }),
        el("figcaption", {}, `Feature maps of layer ${result.feature_layer}`)));
    }

    const ready = Promise.all([loadImage(result.original_png),
      result.heatmap_png ? loadImage(result.heatmap_png) : Promise.resolve(null)]).then(([original, heatmap]) => {
      originalImg.src = original.src;
      const redraw = () => {
        blend(canvas, original, heatmap, slider.value / 100, result.analysed_region, outline);
        download.href = canvas.toDataURL("image/png");
      };
      slider.addEventListener("input", redraw);
      if (!heatmap) slider.disabled = true;
      redraw();
      card.dataset.ready = "1";
    }).catch((err) => {
      card.append(el("p", { class: "flash error" }, err.message));
    });
    card.ready = ready;
    return card;
  }

  busi.diagnoseResults = { render, blend, loadImage };
})();
