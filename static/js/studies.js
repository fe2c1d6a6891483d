/* busi-web Studies page: search the PACS (QIDO-RS through /api/pacs), open a study, diagnose an instance
 * (fetched by the server with WADO-RS) and, when asked, write the results back into the study (STOW-RS).
 * Studies and instances are opaque handles: no UID or patient attribute reaches this page. */
(function () {
  "use strict";
  const busi = window.busi;
  const el = busi.el;
  const root = document.getElementById("studies");
  if (!root || !document.getElementById("study-search")) return;
  const $ = (id) => document.getElementById(id);
  const pacsSel = $("pacs");
  const list = $("study-list");
  const studyBox = $("study");
  const results = $("results");

  function server() {
    return pacsSel.value;
  }

  function writable() {
    const option = pacsSel.selectedOptions[0];
    return option && option.dataset.writeBack === "1";
  }

  async function search(event) {
    event.preventDefault();
    busi.showError($("studies-error"), "");
    const query = new URLSearchParams();
    [["date_from", "date-from"], ["date_to", "date-to"], ["modality", "study-modality"], ["accession", "accession"],
      ["patient_id", "patient-id"]]
      .forEach(([name, id]) => { if ($(id).value.trim()) query.set(name, $(id).value.trim()); });
    $("studies-busy").hidden = false;
    try {
      const data = await busi.api(`/api/pacs/${encodeURIComponent(server())}/studies?${query}`);
      list.tBodies[0].replaceChildren(...data.studies.map((s) => el("tr", { dataset: { handle: s.handle } },
        el("td", { class: "patient" }, el("strong", {}, s.patient_name || "—"), el("br"),
          el("span", { class: "muted" }, `ID ${s.patient_id || "—"} · born ${s.birth_date || "—"}`)),
        el("td", {}, s.date || ""), el("td", {}, s.time || ""), el("td", {}, (s.modalities || []).join(", ")),
        el("td", {}, s.description || ""), el("td", {}, s.accession || ""), el("td", {}, String(s.series ?? "")),
        el("td", {}, String(s.instances ?? "")),
        el("td", {}, el("button", { type: "button", class: "open-study", onclick: () => openStudy(s) }, "Open")))));
      list.hidden = !data.studies.length;
      $("no-studies").hidden = !!data.studies.length;
    } catch (err) {
      busi.showError($("studies-error"), err.message);
    } finally {
      $("studies-busy").hidden = true;
    }
  }

  async function openStudy(study) {
    busi.showError($("study-error"), "");
    // Whose study this is, in plain sight before anything is written back into it.
    $("study-patient").replaceChildren(el("strong", {}, study.patient_name || "patient name not given"),
      ` · ID ${study.patient_id || "—"} · born ${study.birth_date || "—"} · accession ${study.accession || "—"}`
      + ` · ${study.date || ""} ${study.description || ""}`);
    $("written").hidden = true;
    results.replaceChildren();
    $("write-back").disabled = $("report-to-pacs").disabled = !writable();
    try {
      const data = await busi.api(`/api/pacs/${encodeURIComponent(server())}/studies/${study.handle}`);
      $("instance-list").tBodies[0].replaceChildren(...data.instances.map((i) => {
        const frame = i.frames > 1 ? el("input", { type: "number", min: "1", max: String(i.frames), value: "1",
          class: "small frame", "aria-label": "frame" }) : "";
        const act = i.diagnosable
          ? el("button", { type: "button", class: "diagnose-instance", onclick: () => diagnose(i, frame) }, "Diagnose")
          : el("span", { class: "muted" }, "not an image");
        return el("tr", { dataset: { handle: i.handle, frames: String(i.frames) } },
          el("td", {}, `${i.series_number ?? ""} ${i.series_description || ""}`.trim()),
          el("td", {}, String(i.instance_number ?? "")), el("td", {}, i.modality || ""), el("td", {}, i.sop_class),
          el("td", {}, String(i.frames)), el("td", {}, frame), el("td", {}, act));
      }));
      studyBox.hidden = false;
    } catch (err) {
      busi.showError($("studies-error"), err.message);
    }
  }

  async function diagnose(instance, frameInput, confirm) {
    busi.showError($("study-error"), "");
    $("written").hidden = true;
    const fd = new FormData();
    if (frameInput && frameInput.value) fd.append("frame", frameInput.value);
    if ($("write-back").checked && writable()) fd.append("write_back", "true");
    if ($("report-to-pacs").checked && writable()) fd.append("report_pdf", "true");
    if (confirm) fd.append("confirm", "true");
    fd.append("images", "original,heatmap");
    results.setAttribute("aria-busy", "true");
    try {
      const data = await busi.api(`/api/pacs/${encodeURIComponent(server())}/instances/${instance.handle}/diagnose`,
        { method: "POST", form: fd });
      results.replaceChildren(...data.results.map((r) => busi.diagnoseResults.render(r,
        { classes: data.classes, alpha: 0.5, legend: data.legend, model: data.model, notice: data.notice })));
      window.busiLastDiagnosis = data;
      if (data.written) {  // the diagnosis stays on the screen whatever happened to the write-back
        const w = $("written");
        w.classList.toggle("error", !!data.written.error);
        if (data.written.error) {
          w.replaceChildren(el("strong", {}, "Not written back: "), data.written.error.replace(/^not written back: /, ""));
          if (data.written.needs_confirmation) {
            const again = el("button", { type: "button", id: "confirm-write-back", class: "danger" }, "Write it anyway");
            again.addEventListener("click", () => {
              if (window.confirm(`Write this result into the PACS although ${data.written.needs_confirmation.join(" and ")}? Your name is recorded with it.`)) {
                diagnose(instance, frameInput, true);
              }
            });
            w.append(" ", again);
          }
        } else {
          w.textContent = `Written into the study as series “${data.written.series_description}”: ${data.written.objects.join(", ")}`
            + (data.written.confirmed ? " (confirmed despite the warnings)." : ".");
        }
        w.hidden = false;
      }
    } catch (err) {
      busi.showError($("study-error"), err.message);
    } finally {
      results.removeAttribute("aria-busy");
    }
  }

  $("study-search").addEventListener("submit", search);
  pacsSel.addEventListener("change", () => { studyBox.hidden = true; list.hidden = true; results.replaceChildren(); });
})();
