/* unimir search page: plain JS, no build step. Talks to /info, /search and /items. */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const THUMB = 400;
  const state = { file: null, imageId: null, previewUrl: null, presets: [], maxUpload: 0, busy: false };

  const form = $("search-form"), text = $("q-text"), instruction = $("instruction"), preset = $("preset");
  const mode = $("mode"), k = $("k"), exclude = $("exclude"), drop = $("drop"), fileInput = $("q-file");
  const results = $("results"), summary = $("summary"), errorBox = $("error"), button = $("search-button");

  // --- helpers ------------------------------------------------------------------------------------------------
  function itemImageUrl(id, size) {
    return "/items/" + encodeURIComponent(id) + "/image" + (size ? "?size=" + size : "");
  }

  async function callApi(url, options) {
    let response;
    try {
      response = await fetch(url, options);
    } catch (err) {
      throw new Error("the server could not be reached (" + err.message + ")");
    }
    let body = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("application/json")) {
      try { body = await response.json(); } catch (_) { body = null; }
    }
    if (!response.ok) {
      const message = body && body.error && body.error.message ? body.error.message
        : "HTTP " + response.status + " " + response.statusText;
      const err = new Error(message);
      err.status = response.status;
      throw err;
    }
    return body;
  }

  function showError(message) {
    $("error-text").textContent = message;
    errorBox.hidden = false;
  }

  function clearError() { errorBox.hidden = true; }

  function fmtMs(v) {
    if (v === undefined || v === null) return "–";
    return v >= 100 ? Math.round(v) + " ms" : v.toFixed(1) + " ms";
  }

  function fmtBytes(n) {
    if (n < 1024) return n + " bytes";
    return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.round(n / 1024) + " KB";
  }

  function selectedModality() {
    const checked = form.querySelector('input[name="modality"]:checked');
    return checked ? checked.value : "any";
  }

  function setModality(value) {
    const input = form.querySelector('input[name="modality"][value="' + value + '"]');
    if (input) input.checked = true;
  }

  // --- index info ---------------------------------------------------------------------------------------------
  async function loadInfo() {
    try {
      const info = await callApi("/info");
      state.presets = info.presets || [];
      state.maxUpload = info.max_upload_bytes || 0;
      const counts = info.modality_counts || {};
      const parts = [];
      if (counts.image) parts.push(counts.image.toLocaleString() + " images");
      if (counts.text) parts.push(counts.text.toLocaleString() + " texts");
      if (counts["image,text"]) parts.push(counts["image,text"].toLocaleString() + " image+text");
      const stats = $("stats");
      stats.textContent = "";
      const b = document.createElement("b");
      b.textContent = info.items.toLocaleString() + " items";
      stats.append(b, " (" + parts.join(", ") + ") · encoder " + info.encoder + " · " + info.index_spec);
      mode.textContent = "";
      for (const m of info.modes || ["dense"]) {
        const opt = document.createElement("option");
        opt.value = m; opt.textContent = m;
        mode.append(opt);
      }
      mode.disabled = (info.modes || []).length < 2;
      for (const p of state.presets) {
        const opt = document.createElement("option");
        opt.value = p.id; opt.textContent = p.label;
        preset.append(opt);
      }
      k.max = info.max_k || 1000;
    } catch (err) {
      $("stats").textContent = "index information unavailable";
      showError("Could not load the index information: " + err.message);
    }
  }

  preset.addEventListener("change", () => {
    const p = state.presets.find((x) => x.id === preset.value);
    if (!p) return;
    instruction.value = p.instruction;
    setModality(p.modality);
  });
  instruction.addEventListener("input", () => {
    const p = state.presets.find((x) => x.id === preset.value);
    if (p && instruction.value !== p.instruction) preset.value = "";
  });

  // --- query image: picker, drag and drop, paste --------------------------------------------------------------
  function setQueryFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError("“" + file.name + "” is not an image.");
      return;
    }
    clearError();
    state.file = file;
    state.imageId = null;
    showPreview(URL.createObjectURL(file), file.name || "pasted image", true, fmtBytes(file.size));
  }

  function setQueryItem(id) {
    state.file = null;
    state.imageId = id;
    showPreview(itemImageUrl(id, 160), "item " + id, false);
  }

  function showPreview(url, label, isBlob, detail) {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = isBlob ? url : null;
    $("drop-preview").src = url;
    $("drop-name").textContent = label;
    $("drop-name").title = detail ? label + " (" + detail + ")" : label;
    drop.querySelector(".drop-empty").hidden = true;
    drop.querySelector(".drop-filled").hidden = false;
    drop.classList.add("has-image");
  }

  function clearQueryImage() {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.file = null; state.imageId = null; state.previewUrl = null;
    fileInput.value = "";
    $("drop-preview").removeAttribute("src");
    drop.querySelector(".drop-empty").hidden = false;
    drop.querySelector(".drop-filled").hidden = true;
    drop.classList.remove("has-image");
  }

  drop.addEventListener("click", (e) => {
    if (e.target.closest("#drop-clear")) return;
    fileInput.click();
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
  });
  fileInput.addEventListener("change", () => setQueryFile(fileInput.files[0]));
  $("drop-clear").addEventListener("click", (e) => { e.stopPropagation(); clearQueryImage(); });
  ["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => {
    e.preventDefault(); drop.classList.add("dragging");
  }));
  ["dragleave", "dragend", "drop"].forEach((ev) => drop.addEventListener(ev, () => drop.classList.remove("dragging")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) setQueryFile(file);
  });
  // dropping a file anywhere else must not navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const items = (e.clipboardData && e.clipboardData.files) || [];
    for (const f of items) {
      if (f.type.startsWith("image/")) { setQueryFile(f); break; }
    }
  });

  // --- search -------------------------------------------------------------------------------------------------
  function buildRequest() {
    const fields = {
      text: text.value.trim(),
      instruction: instruction.value.trim(),
      modality: selectedModality(),
      mode: mode.value || "dense",
      k: k.value.trim(),
      exclude_query: exclude.checked ? "true" : "false",
    };
    if (state.file) {
      const data = new FormData();
      for (const [key, value] of Object.entries(fields)) if (value !== "") data.append(key, value);
      data.append("image", state.file, state.file.name || "image");
      return { method: "POST", body: data };
    }
    const body = {};
    for (const [key, value] of Object.entries(fields)) if (value !== "") body[key] = value;
    if (body.k !== undefined) body.k = /^\d+$/.test(body.k) ? Number(body.k) : body.k;
    body.exclude_query = exclude.checked;
    if (state.imageId) body.image_id = state.imageId;
    return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }

  async function runSearch() {
    if (state.busy) return;
    clearError();
    if (!text.value.trim() && !state.file && !state.imageId) {
      showError("Type a query, choose an image, or both.");
      text.focus();
      return;
    }
    state.busy = true;
    button.disabled = true;
    button.classList.add("busy");
    results.classList.add("loading");
    const started = performance.now();
    try {
      const data = await callApi("/search", buildRequest());
      renderResults(data, performance.now() - started);
    } catch (err) {
      showError(err.message);
    } finally {
      state.busy = false;
      button.disabled = false;
      button.classList.remove("busy");
      results.classList.remove("loading");
    }
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); runSearch(); }
  });

  // --- results ------------------------------------------------------------------------------------------------
  function renderSummary(data, roundTrip) {
    summary.textContent = "";
    const q = data.query || {};
    const echo = document.createElement("span");
    echo.className = "query-echo";
    const what = [];
    if (q.query_text) what.push("“" + q.query_text + "”");
    if (q.image_id) what.push("image of " + q.image_id);
    else if (q.image) what.push("uploaded image");
    echo.textContent = "Query: " + (what.join(" + ") || "–") + " → " + (q.modality === "any" ? "any modality" : q.modality)
      + " · " + q.mode;
    const count = document.createElement("span");
    const b = document.createElement("b");
    b.textContent = data.count + (data.count === 1 ? " result" : " results");
    count.append(b);
    const t = data.timings_ms || {};
    const timing = document.createElement("span");
    timing.className = "timing";
    timing.id = "timing";
    timing.textContent = "encode " + fmtMs(t.encode) + " · search " + fmtMs(t.search) + " · server total "
      + fmtMs(t.total) + " · round trip " + fmtMs(roundTrip);
    summary.append(echo, count, timing);
    summary.hidden = false;
  }

  function renderResults(data, roundTrip) {
    renderSummary(data, roundTrip);
    results.textContent = "";
    if (!data.results.length) {
      const empty = document.createElement("div");
      empty.className = "empty-state";
      const p = document.createElement("p");
      p.className = "big";
      p.textContent = "No results.";
      const p2 = document.createElement("p");
      p2.textContent = "The index holds nothing of the requested modality; try “Any”.";
      empty.append(p, p2);
      results.append(empty);
      return;
    }
    const template = $("card-template");
    for (const hit of data.results) {
      const card = template.content.firstElementChild.cloneNode(true);
      const modClass = hit.modality === "image,text" ? "image-text" : hit.modality;
      card.classList.add("mod-" + modClass);
      card.dataset.id = hit.id;
      const thumb = card.querySelector(".thumb");
      if (hit.image_url) {
        const img = thumb.querySelector("img");
        img.src = hit.image_url + (hit.image_url.includes("?") ? "&" : "?") + "size=" + THUMB;
        img.alt = hit.text || hit.id;
        img.addEventListener("error", () => { thumb.classList.add("broken"); img.remove(); });
        thumb.addEventListener("click", () => {
          setQueryItem(hit.id);
          text.value = "";
          window.scrollTo({ top: 0, behavior: "smooth" });
          runSearch();
        });
      } else {
        thumb.remove();
      }
      const p = card.querySelector(".text");
      if (hit.text) { p.textContent = hit.text; p.title = hit.text; } else { p.remove(); }
      card.querySelector(".rank").textContent = "#" + hit.rank;
      const badge = card.querySelector(".badge");
      badge.textContent = hit.modality === "image,text" ? "image+text" : hit.modality;
      badge.classList.add("badge-" + modClass);
      card.querySelector(".score").textContent = hit.score === null ? "–" : hit.score.toFixed(4);
      const id = card.querySelector(".id");
      id.textContent = hit.id;
      id.title = hit.id;
      results.append(card);
    }
  }

  // --- adding items -------------------------------------------------------------------------------------------
  $("add-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const status = $("add-status");
    const data = new FormData();
    const id = $("add-id").value.trim(), t = $("add-text").value.trim(), f = $("add-file").files[0];
    if (!t && !f) {
      status.className = "add-status bad";
      status.textContent = "Give a text, an image or both.";
      return;
    }
    if (id) data.append("id", id);
    if (t) data.append("text", t);
    if (f) data.append("image", f, f.name);
    $("add-button").disabled = true;
    status.className = "add-status";
    status.textContent = "Adding…";
    try {
      const body = await callApi("/items", { method: "POST", body: data });
      status.className = "add-status good";
      status.textContent = (body.created ? "Added " : "Already present: ") + body.item.id + " (" + body.item.modality
        + "). The index now holds " + body.items.toLocaleString() + " items.";
      $("add-form").reset();
      loadStatsOnly();
    } catch (err) {
      status.className = "add-status bad";
      status.textContent = "Could not add the item: " + err.message;
    } finally {
      $("add-button").disabled = false;
    }
  });

  async function loadStatsOnly() {
    try {
      const h = await callApi("/health");
      const b = $("stats").querySelector("b");
      if (b) b.textContent = h.items.toLocaleString() + " items";
    } catch (_) { /* the next search shows any error */ }
  }

  loadInfo();
})();
