// The page of `semimer serve`: plain DOM code, no framework, no build step.
// Every value from the server is inserted as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let health = null;  // GET /api/health
let runImages = [];  // the run's plots that /api/run/files serves

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of [].concat(children)) node.append(c);
  return node;
}

function fillTable(table, header, rows) {
  table.replaceChildren(el("tr", {}, header.map((h) => el("th", { text: h }))));
  for (const row of rows) {
    table.append(el("tr", {}, row.map((cell) =>
      cell instanceof Node ? el("td", {}, cell)
        : el("td", { text: cell ?? "–", class: typeof cell === "number" ? "num" : "" }))));
  }
}

const fixed = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1));
const best = (probs) => Object.entries(probs).sort((a, b) => b[1] - a[1])[0];
const fileUrl = (name) => "/api/run/files/" + name.split("/").map(encodeURIComponent).join("/");

// ---------------------------------------------------------------------------------------------
// the form

function setFile(file) {
  const dt = new DataTransfer();
  dt.items.add(file);
  $("file").files = dt.files;
  showChosen();
}

function showChosen() {
  const f = $("file").files[0];
  $("file-label").textContent = f ? `${f.name} (${(f.size / 2 ** 20).toFixed(2)} MB)`
    : "Drop a video or audio file here, or click to choose one";
}

function showError(detail, missing) {
  const box = $("error");
  box.replaceChildren(el("p", { text: detail }));
  if (missing && Object.keys(missing).length) {
    box.append(el("p", { text: "Missing modalities:" }),
      el("ul", { id: "missing" }, Object.entries(missing).map(([m, why]) => el("li", { text: `${m}: ${why}` }))));
  }
  box.hidden = false;
}

async function predict(event) {
  event.preventDefault();
  const file = $("file").files[0];
  $("error").hidden = true;
  if (!file) return showError("Choose a video or audio file first.");
  if (health && file.size > health.max_upload_mb * 2 ** 20) {
    return showError(`${file.name} is larger than this server's limit of ${health.max_upload_mb} MB.`);
  }
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("transcript", $("transcript").value);
  $("submit").disabled = true;
  $("status").textContent = "predicting…";
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: `${response.status} ${response.statusText}` }));
    if (!response.ok) {
      $("result").hidden = true;
      showError(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail), body.missing);
    } else {
      showResult(body);
    }
  } catch (err) {
    showError(`The request failed: ${err.message}. Is the server still running?`);
  } finally {
    $("submit").disabled = false;
    $("status").textContent = "";
  }
}

// ---------------------------------------------------------------------------------------------
// the answer

function fill(p) {
  const node = el("div", { class: "fill" });
  node.style.width = `${(100 * p).toFixed(1)}%`;  // CSSOM, which the page's content security policy allows
  return node;
}

function showResult(r) {
  $("emotion").textContent = r.discrete;
  const bars = Object.entries(r.probs).sort((a, b) => b[1] - a[1]).map(([c, p]) =>
    el("div", { class: c === r.discrete ? "bar top" : "bar", "data-class": c }, [
      el("span", { text: c }),
      el("div", { class: "track" }, fill(p)),
      el("span", { class: "value", text: p.toFixed(3) })]));
  $("probs").replaceChildren(...bars);

  const mods = Object.entries(r.modalities);
  const has = (key) => mods.some(([, v]) => v[key] !== null && v[key] !== undefined);
  const header = ["modality", "feature", "status"];
  if (has("weight")) header.push("fusion weight");
  if (has("probs")) header.push("head prediction");
  if (has("vote_weight")) header.push("vote weight");
  header.push("extraction (s)");
  fillTable($("modalities"), header, mods.map(([m, v]) => {
    const row = [m, `${v.feature} (${v.extractor})`, v.status === "missing" ? `missing: ${v.reason}` : "present"];
    if (has("weight")) row.push(fixed(v.weight));
    if (has("probs")) row.push(v.probs ? `${best(v.probs)[0]} ${fixed(best(v.probs)[1])}` : "–");
    if (has("vote_weight")) row.push(fixed(v.vote_weight));
    row.push(fixed(v.seconds, 2));
    return row;
  }));
  const gaps = Object.entries(r.missing || {});
  const gapText = gaps.length
    ? `Missing modalities (predicted from ${r.used.join(", ")}): ${gaps.map(([m, why]) => `${m} (${why})`).join("; ")}.`
    : "Missing modalities: none.";
  $("fusion-head").textContent = r.fusion_head
    ? `Fusion head: ${best(r.fusion_head.probs)[0]} ${fixed(best(r.fusion_head.probs)[1])}` +
      ` (vote weight ${fixed(r.fusion_head.vote_weight)}). ${gapText}`
    : gapText;
  fillTable($("members"), ["member", "model", "weight", "folds", "prediction"], r.members.map((m) =>
    [m.dir, m.model, fixed(m.weight), m.folds, `${best(m.probs)[0]} ${fixed(best(m.probs)[1])}`]));

  $("transcript-used").textContent = r.transcript ?? ("text" in r.modalities
    ? "(none given: transcribed by the run's ASR model)" : "(not used: the run has no text features)");
  $("faces").replaceChildren(...r.faces.map((f) => el("figure", {}, [
    el("img", { src: f.src, alt: `face at ${f.time} s` }),
    el("figcaption", { text: `${f.time} s` + (f.detected ? "" : " (no face: nearest box)") })])));
  $("faces-block").hidden = r.faces.length === 0;
  fillTable($("seconds"), Object.keys(r.seconds), [Object.values(r.seconds).map((v) => fixed(v, 3))]);
  $("result").hidden = false;
}

// ---------------------------------------------------------------------------------------------
// the run

function inline(text) {
  // ![alt](src), `code` and **bold** of report.md; everything else stays text
  const out = [];
  for (const part of text.split(/(!\[[^\]]*\]\([^)]+\)|`[^`]+`|\*\*[^*]+\*\*)/)) {
    let m;
    if (!part) continue;
    if ((m = part.match(/^!\[([^\]]*)\]\(([^)]+)\)$/))) {
      out.push(runImages.includes(m[2]) ? el("img", { src: fileUrl(m[2]), alt: m[1] }) : `[${m[1]}]`);
    } else if (part.startsWith("`")) out.push(el("code", { text: part.slice(1, -1) }));
    else if (part.startsWith("**")) out.push(el("strong", { text: part.slice(2, -2) }));
    else out.push(part);
  }
  return out;
}

function renderMarkdown(md, container) {
  // headings, tables, bullet lists and paragraphs: what `semimer recipe` writes into report.md
  const lines = md.split(/\r?\n/);
  for (let i = 0; i < lines.length;) {
    const line = lines[i];
    let m;
    if (!line.trim()) { i++; continue; }
    if ((m = line.match(/^(#{1,6})\s+(.*)$/))) {
      container.append(el(`h${Math.min(6, m[1].length + 2)}`, {}, inline(m[2])));
      i++;
    } else if (line.trim().startsWith("|")) {
      const rows = [];
      for (; i < lines.length && lines[i].trim().startsWith("|"); i++) {
        const cells = lines[i].trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
        if (!cells.every((c) => /^:?-+:?$/.test(c))) rows.push(cells);
      }
      const table = el("table");
      rows.forEach((cells, k) => table.append(el("tr", {}, cells.map((c) => el(k ? "td" : "th", {}, inline(c))))));
      container.append(table);
    } else if (/^\s*[-*]\s+/.test(line)) {
      const list = el("ul");
      for (; i < lines.length && /^\s*[-*]\s+/.test(lines[i]); i++) {
        list.append(el("li", {}, inline(lines[i].replace(/^\s*[-*]\s+/, ""))));
      }
      container.append(list);
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() && !/^(#|\||\s*[-*]\s)/.test(lines[i]); i++) para.push(lines[i]);
      container.append(el("p", {}, inline(para.join(" "))));
    }
  }
}

function showRun(run) {
  runImages = run.images;
  fillTable($("headline"), ["", ""], run.headline.map((h) => [h.label, h.value]));
  if (run.per_class) {
    fillTable($("per-class"), ["class", "clips", "F1 (%)"], run.per_class.map((r) => [r.class, r.clips, pct(r.f1)]));
  }
  if (run.images.includes("confusion.png")) {
    $("confusion").replaceChildren(el("img", { src: fileUrl("confusion.png"), alt: "confusion matrix" }));
  } else if (run.confusion) {
    const table = el("table");
    fillTable(table, ["true \\ predicted", ...run.classes], run.confusion.map((row, k) => [run.classes[k], ...row]));
    $("confusion").replaceChildren(table);
  }
  if (run.pseudo_labels) {
    const perClass = run.pseudo_labels.some((r) => r.counts);
    fillTable($("pseudo"), ["round", ...(perClass ? run.classes : []), "total"], run.pseudo_labels.map((r) =>
      [r.round, ...(perClass ? run.classes.map((c) => (r.counts ? r.counts[c] : "–")) : []), r.total]));
    $("pseudo-block").hidden = false;
  }
  $("plots").replaceChildren(...run.images.filter((n) => !n.includes("/") && n !== "confusion.png")
    .map((n) => el("img", { src: fileUrl(n), alt: n })));
  if (run.report) {
    renderMarkdown(run.report, $("report"));
    $("report-block").hidden = false;
  }
}

// ---------------------------------------------------------------------------------------------
// the microphone (where the browser offers MediaRecorder)

function setUpRecorder() {
  if (!(navigator.mediaDevices && window.MediaRecorder)) return;
  const button = $("record");
  let recorder = null;
  button.hidden = false;
  button.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const chunks = [];
      recorder = new MediaRecorder(stream);
      recorder.ondataavailable = (e) => chunks.push(e.data);
      recorder.onstop = () => {
        stream.getTracks().forEach((t) => t.stop());
        const type = recorder.mimeType || "audio/webm";
        setFile(new File(chunks, type.includes("ogg") ? "recording.ogg" : "recording.webm", { type }));
        recorder = null;
        button.textContent = "Record from the microphone";
      };
      recorder.start();
      button.textContent = "Stop recording";
    } catch (err) {
      showError(`No microphone: ${err.message}`);
    }
  });
}

// ---------------------------------------------------------------------------------------------

async function start() {
  health = await (await fetch("/api/health")).json();
  $("run-name").textContent = health.run;
  $("run-classes").textContent = health.classes.join(", ");
  $("file").accept = ["audio/*", "video/*", ...health.accepts].join(",");
  $("limits").textContent = `up to ${health.max_upload_mb} MB and ${health.max_seconds} s; ` +
    `modalities: ${Object.entries(health.modalities).map(([m, f]) => `${m} (${f})`).join(", ")}`;
  if (health.needs_transcript) {
    $("transcript-hint").textContent = `(needed: the run's text feature ${health.needs_transcript} reads it)`;
  }
  showRun(await (await fetch("/api/run")).json());
}

$("file").addEventListener("change", showChosen);
$("predict-form").addEventListener("submit", predict);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) setFile(e.dataTransfer.files[0]);
});
setUpRecorder();
start().catch((err) => showError(`Could not load the run: ${err.message}`));
