/* busi-web Diagnose: the region-of-interest mode for mammography models trained on crops.
 *
 * Applies when the chosen model says roi: true (/api/models/active, /api/runs/<id>/model). The user picks one
 * full mammogram and clicks the centre of the region of interest; the square the model will see (roi_size px of
 * the original image) is drawn there. The file is sent as is, with roi_x and roi_y in the original image's
 * pixels (origin top-left); the server cuts the crop with the dataset's own code (busi_web/roi.py).
 */
(function () {
  "use strict";
  const busi = window.busi;
  if (!busi || !busi.diagnose) return;
  const el = busi.el;
  let view = null; // {img, box, info, url, point}

  function clear() {
    if (view && view.url) URL.revokeObjectURL(view.url);
    view = null;
  }

  function drawBox(ctx) {
    if (!view || !view.point || !view.img.naturalWidth) return;
    const scale = view.img.clientWidth / view.img.naturalWidth;
    const side = (ctx.model && ctx.model.roi_size) || 48;
    Object.assign(view.box.style, {
      left: `${(view.point.x - side / 2) * scale}px`, top: `${(view.point.y - side / 2) * scale}px`,
      width: `${side * scale}px`, height: `${side * scale}px`,
    });
    view.box.hidden = false;
    view.info.textContent = `Centre (${view.point.x}, ${view.point.y}); the model sees the ${side} px square.`;
  }

  function show(ctx) {
    const panel = ctx.panel;
    clear();
    const help = el("p", { class: "help" },
      "This model classifies regions of interest of a mammogram: pick one full mammogram, then click the " +
      "centre of the region to diagnose.");
    if (!ctx.files.length) {
      panel.replaceChildren(help);
      panel.hidden = false;
      return;
    }
    const img = el("img", { id: "roi-image", alt: `mammogram ${ctx.files[0].name}` });
    const box = el("div", { class: "roi-box", hidden: true });
    const info = el("p", { id: "roi-info", class: "muted" }, "No region chosen yet.");
    const picker = el("div", { class: "roi-picker", id: "roi-picker" }, img, box);
    view = { img, box, info, url: URL.createObjectURL(ctx.files[0]), point: null };
    img.onerror = () => ctx.showError(`${ctx.files[0].name}: the browser cannot show this image; convert it to PNG`);
    img.src = view.url;
    picker.addEventListener("click", (e) => {
      const rect = img.getBoundingClientRect();
      const x = Math.floor(((e.clientX - rect.left) * img.naturalWidth) / rect.width);
      const y = Math.floor(((e.clientY - rect.top) * img.naturalHeight) / rect.height);
      if (x < 0 || y < 0 || x >= img.naturalWidth || y >= img.naturalHeight) return;
      view.point = { x, y };
      drawBox(ctx);
    });
    panel.replaceChildren(help, picker, info);
    panel.hidden = false;
  }

  busi.diagnose.registerMode({
    name: "roi",
    title: "Region of interest",
    priority: 10,
    applies: (model) => Boolean(model && model.roi),
    activate: (panel, ctx) => show(ctx),
    deactivate: () => clear(),
    filesChanged: (ctx) => show(ctx),
    prepare(files) {
      if (files.length !== 1) {
        return Promise.reject(new Error("a mammography model takes one mammogram at a time; keep one file"));
      }
      if (!view || !view.point) {
        return Promise.reject(new Error("click the centre of the region of interest on the mammogram first"));
      }
      return Promise.resolve([{ blob: files[0], filename: files[0].name }]);
    },
    fields: () => (view && view.point ? { roi_x: view.point.x, roi_y: view.point.y } : {}),
  });
})();
