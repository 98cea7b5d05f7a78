// medalign case search page: vanilla JS, talks to the same-origin JSON API.
"use strict";
const SEQS = ["dwi", "adc", "t2s", "flair", "t1", "t2", "t1c"];
const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("medalign-token") || "", files: {}, dicom: null, thumbUrls: [], attention: false };

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) { $("auth").hidden = false; throw new Error("access token required"); }
  if (!res.ok) {
    let detail = res.statusText;
    try { const j = await res.json(); detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail); } catch (e) {}
    throw new Error(detail + " (HTTP " + res.status + ")");
  }
  return res;
}

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.appendChild(c);
  return e;
}

async function loadThumb(img, studyId, seq) {
  // fetched (not <img src>) so the bearer token is sent when one is required
  try {
    const res = await api("/thumb/" + encodeURIComponent(studyId) + "/" + seq + ".png");
    const url = URL.createObjectURL(await res.blob());
    state.thumbUrls.push(url);
    img.src = url;
  } catch (e) { img.alt = "no thumbnail"; }
}

function attentionToggle(studyId, thumbs, queryText) {
  // the query's attention over the study's most attended slice, drawn by the server on demand (POST: the
  // query stays out of URLs and logs); shown in place of the thumbnails, fetched once per card
  const img = el("img", { class: "overlay", alt: "attention of the query on " + studyId });
  const caption = el("figcaption", { text: "loading attention…" });
  const box = el("figure", { class: "overlay-box" }, [img, caption]);
  box.hidden = true;
  const btn = el("button", { type: "button", class: "attn-toggle", "aria-pressed": "false", text: "show attention" });
  let loaded = false;
  btn.addEventListener("click", async (ev) => {
    ev.stopPropagation(); // the card's own click searches similar cases
    const on = btn.getAttribute("aria-pressed") !== "true";
    btn.setAttribute("aria-pressed", String(on));
    btn.textContent = on ? "hide attention" : "show attention";
    thumbs.hidden = on; box.hidden = !on;
    if (!on || loaded) return;
    loaded = true;
    try {
      const res = await api("/attention/" + encodeURIComponent(studyId), { method: "POST",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text: queryText }) });
      const method = res.headers.get("X-Attention-Method") || "attention";
      const url = URL.createObjectURL(await res.blob());
      state.thumbUrls.push(url);
      img.src = url;
      caption.textContent = method + " of the query, most attended slice";
    } catch (e) { loaded = false; caption.textContent = ""; caption.appendChild(el("span", { class: "error", text: e.message })); }
  });
  box.addEventListener("click", (ev) => ev.stopPropagation());
  return [btn, box];
}

function showError(msg) { $("summary").innerHTML = ""; $("summary").appendChild(el("span", { class: "error", text: msg })); }

function render(data, title, queryText) {
  state.thumbUrls.forEach((u) => URL.revokeObjectURL(u)); state.thumbUrls = [];
  const box = $("results"); box.innerHTML = "";
  $("summary").textContent = title + " — " + data.results.length + " result(s)";
  for (const hit of data.results) {
    const thumbs = el("div", { class: "thumbs" });
    for (const seq of hit.sequences) {
      const img = el("img", { alt: seq + " mid-axial" });
      thumbs.appendChild(el("figure", {}, [img, el("figcaption", { text: seq })]));
      loadThumb(img, hit.study_id, seq);
    }
    const attn = queryText && state.attention ? attentionToggle(hit.study_id, thumbs, queryText) : [];
    const card = el("article", { class: "card", "data-study-id": hit.study_id, title: "click: find cases similar to this one" }, [
      el("h3", {}, [el("span", { class: "sid", text: hit.rank + ". " + hit.study_id }), el("span", { class: "score", text: hit.score.toFixed(3) })]),
      el("span", { class: "label", text: hit.label || "unlabelled" }),
      ...attn.slice(0, 1),
      thumbs,
      ...attn.slice(1),
      el("p", { class: "report", text: hit.report || "(no report)" }),
    ]);
    card.addEventListener("click", () => searchStudy(hit.study_id));
    box.appendChild(card);
  }
  const zs = $("zeroshot");
  if (data.zero_shot) {
    zs.hidden = false; zs.innerHTML = "";
    zs.appendChild(el("strong", { text: "Zero-shot class distribution: " + data.zero_shot.predicted }));
    data.zero_shot.classes.forEach((c, i) => {
      const p = data.zero_shot.probs[i];
      const bar = el("div"); bar.style.width = (100 * p).toFixed(1) + "%";
      zs.appendChild(el("div", { class: "bar" }, [el("span", { text: c }), el("span", {}, [bar]), el("span", { text: (100 * p).toFixed(1) + "%" })]));
    });
  } else { zs.hidden = true; }
}

function k() { return Math.max(1, Math.min(100, parseInt($("k").value, 10) || 10)); }

async function searchText(ev) {
  if (ev) ev.preventDefault();
  const text = $("query").value.trim();
  if (!text) return;
  try {
    const res = await api("/search/text", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text, k: k(), target: $("target").value }) });
    render(await res.json(), "Text query", text);
  } catch (e) { showError(e.message); }
}

async function searchStudy(studyId) {
  try {
    const res = await api("/search/study/" + encodeURIComponent(studyId) + "?k=" + k());
    render(await res.json(), "Cases similar to " + studyId);
    window.scrollTo(0, 0);
  } catch (e) { showError(e.message); }
}

function guessSequence(name) {
  const base = name.toLowerCase().replace(/\.nii(\.gz)?$/, "");
  const tokens = base.split(/[^a-z0-9]+/);
  for (const s of ["t2s", "flair", "dwi", "adc", "t1c", "t1", "t2"]) if (tokens.includes(s)) return s;
  if (base.includes("flair")) return "flair";
  if (base.includes("swi") || base.includes("gre") || base.includes("t2star")) return "t2s";
  return null;
}

function addFiles(list) {
  for (const f of list) {
    // a .zip is one DICOM study (the server identifies its series); a zip and NIfTI files exclude each other
    if (/\.zip$/i.test(f.name)) { state.dicom = f; state.files = {}; continue; }
    state.dicom = null;
    const seq = guessSequence(f.name) || SEQS.find((s) => !state.files[s]);
    if (seq) state.files[seq] = f;
  }
  renderFiles();
}

function renderFiles() {
  const ul = $("file-list"); ul.innerHTML = "";
  if (state.dicom) {
    const rm = el("button", { type: "button", text: "×", title: "remove" });
    rm.addEventListener("click", () => { state.dicom = null; renderFiles(); });
    ul.appendChild(el("li", {}, [el("span", { text: state.dicom.name + " → DICOM study (series identified on the server) " }), rm]));
  }
  for (const [seq, f] of Object.entries(state.files)) {
    const sel = el("select", { "aria-label": "sequence of " + f.name });
    for (const s of SEQS) { const o = el("option", { value: s, text: s }); if (s === seq) o.selected = true; sel.appendChild(o); }
    sel.addEventListener("change", () => { delete state.files[seq]; state.files[sel.value] = f; renderFiles(); });
    const rm = el("button", { type: "button", text: "×", title: "remove" });
    rm.addEventListener("click", () => { delete state.files[seq]; renderFiles(); });
    ul.appendChild(el("li", {}, [el("span", { text: f.name + " → " }), sel, el("span", { text: " " }), rm]));
  }
  $("upload").disabled = !state.dicom && Object.keys(state.files).length === 0;
}

async function searchUpload() {
  const form = new FormData();
  if (state.dicom) form.append("dicom", state.dicom, state.dicom.name);
  else for (const [seq, f] of Object.entries(state.files)) form.append(seq, f, f.name);
  $("summary").textContent = "uploading…";
  try {
    const res = await api("/search/upload?k=" + k(), { method: "POST", body: form });
    const body = await res.json();
    const skipped = body.query.skipped ? "; skipped, not read by this model: " + body.query.skipped.join(", ") : "";
    render(body, "Uploaded case (" + (state.dicom ? "DICOM study: " : "") + body.query.sequences.join(", ") + skipped + ")");
  } catch (e) { showError(e.message); }
}

async function init() {
  $("text-form").addEventListener("submit", searchText);
  $("upload").addEventListener("click", searchUpload);
  $("files").addEventListener("change", (e) => addFiles(e.target.files));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
  $("save-token").addEventListener("click", () => {
    state.token = $("token").value.trim(); sessionStorage.setItem("medalign-token", state.token); $("auth").hidden = true;
  });
  try {
    const h = await (await fetch("/health")).json();
    $("status").textContent = h.n_studies + " studies · model " + h.model_id.slice(0, 10) + " · " + h.index_kind;
    if (h.auth_required && !state.token) $("auth").hidden = false;
    state.attention = Boolean(h.attention);
  } catch (e) { $("status").textContent = "service unavailable"; }
}

init();
