// The page of `unlearnable serve`: choose, protect (with progress and cancel), see, download, check.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let info = null;      // /api/state: limits, strengths
let jobId = null;     // the job shown on the page
let polling = null;
let lost = false;

async function api(path, opts = {}) {
  const headers = Object.assign({"X-Token": token}, opts.headers || {});
  let res;
  try {
    res = await fetch(path, Object.assign({}, opts, {headers}));
  } catch (e) {
    const err = new Error("no connection to the server (is 'unlearnable serve' still running?)");
    err.network = true;
    throw err;
  }
  const body = (res.headers.get("content-type") || "").includes("json") ? await res.json() : {};
  if (!res.ok) throw new Error(body.error || `the server answered ${res.status}`);
  return body;
}

function say(text, error = false) {
  const m = $("message");
  m.textContent = text;
  m.className = error ? "error" : "";
  m.hidden = !text;
}

function fmtTime(s) {
  if (s == null) return "";
  if (s < 60) return `${Math.max(1, Math.round(s))} s`;
  const m = Math.floor(s / 60), r = Math.round(s % 60);
  return m < 60 ? `${m} min ${r} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function fixed(x, digits) { return x == null ? "n/a" : x.toFixed(digits); }

function withToken(path) { return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`; }

// ---- choosing ------------------------------------------------------------------------
function source() { return document.querySelector("input[name=source]:checked").value; }

function showStrength() {
  const s = info && info.strengths[$("strength").value];
  $("strength-detail").textContent = s ? `at most ${s.eps_255}/255 per pixel, ${s.epochs} rounds` : "";
}

async function upload(files) {
  const added = [], refused = [];
  for (let i = 0; i < files.length; i++) {
    const f = files[i];
    $("progress-title").textContent = `Uploading ${i + 1} of ${files.length}: ${f.name}`;
    setBar(i / files.length);
    if (f.size > info.limits.job_bytes || (!f.name.toLowerCase().endsWith(".zip") && f.size > info.limits.file_bytes)) {
      refused.push(`${f.name}: larger than the limit (${info.limits.text})`);
      continue;
    }
    try {
      const r = await api(`/api/jobs/${jobId}/files?name=${encodeURIComponent(f.name)}`, {method: "POST", body: f});
      added.push(...r.added);
      refused.push(...r.refused.map((x) => `${x.name}: ${x.reason}`));
    } catch (e) {
      if (e.network) throw new Error(`the upload of ${f.name} was interrupted (${e.message}); nothing of it was kept`);
      refused.push(`${f.name}: ${e.message}`);
    }
  }
  return {added, refused};
}

async function start() {
  say("");
  const settings = {strength: $("strength").value,
                    single_class: document.querySelector("input[name=classes]:checked").value === "single"};
  let job;
  $("start").disabled = true;
  try {
    if (source() === "folder") {
      const folder = $("folder").value.trim();
      if (!folder) throw new Error("type the full path of a folder first");
      job = await api("/api/jobs", {method: "POST", body: JSON.stringify({folder}),
                                    headers: {"Content-Type": "application/json"}});
      jobId = job.id;
    } else {
      const files = $("files").files;
      if (!files.length) throw new Error("choose one or more images (or a zip) first");
      const active = (await api("/api/state")).active;
      if (active) throw new Error(`a ${active.task} run is already going on (job ${active.job}); wait for it or cancel it first`);
      job = await api("/api/jobs", {method: "POST", body: "{}", headers: {"Content-Type": "application/json"}});
      jobId = job.id;
      $("progress-box").hidden = false;
      $("cancel").hidden = true;
      const r = await upload(files);
      if (r.refused.length) say(`Not used:\n${r.refused.join("\n")}`, !r.added.length);
      if (!r.added.length) throw new Error(`none of the files could be used:\n${r.refused.join("\n")}`);
    }
    localStorage.setItem("unlearnable:job", jobId);
    await api(`/api/jobs/${jobId}/start/protect`, {method: "POST", body: JSON.stringify(settings),
                                                   headers: {"Content-Type": "application/json"}});
    poll();
  } catch (e) {
    say(e.message, true);
    $("progress-box").hidden = true;
    $("start").disabled = false;
  }
}

// ---- progress ------------------------------------------------------------------------
function setBar(fraction) {
  const pct = Math.floor(100 * (fraction || 0));
  $("bar").value = pct;
  $("pct").textContent = `${pct}%`;
}

function poll() {
  if (polling) clearTimeout(polling);
  polling = setTimeout(refresh, 0);
}

async function refresh() {
  polling = null;
  if (!jobId) return;
  let job;
  try {
    job = await api(`/api/jobs/${jobId}`);
  } catch (e) {
    if (e.network) {
      lost = true;
      say("Lost the connection to the server; retrying. A run in progress goes on without the page.", true);
      polling = setTimeout(refresh, 3000);
    } else {
      say(e.message, true);
      localStorage.removeItem("unlearnable:job");
      jobId = null;
    }
    return;
  }
  if (lost) { lost = false; say(""); }
  render(job);
  if (["queued", "running"].includes(job.protect.state) || ["queued", "running"].includes(job.verify.state)) {
    polling = setTimeout(refresh, 1000);
  }
}

function render(job) {
  const p = job.protect, v = job.verify;
  const running = ["queued", "running"].includes(p.state);
  $("start").disabled = running || ["queued", "running"].includes(v.state);
  $("progress-box").hidden = p.state === "new";
  $("cancel").hidden = !running;
  $("resume").hidden = !["cancelled", "interrupted", "failed"].includes(p.state);
  $("progress-title").textContent = {queued: "Starting", running: "Protecting", done: "Protected",
    cancelled: "Cancelled", interrupted: "Interrupted", failed: "Failed"}[p.state] || "";
  setBar(p.fraction);
  $("eta").textContent = p.state === "running" && p.eta_s != null ? `about ${fmtTime(p.eta_s)} left` :
    (p.state === "running" ? "estimating the time left" : "");
  if (p.state === "failed") say(`The run failed: ${p.error}`, true);
  if (p.state === "cancelled") say("Cancelled. The images finished so far are kept; 'Continue this job' picks up where it stopped.");
  if (p.state === "interrupted") say("The run was interrupted (the server stopped). 'Continue this job' picks up where it stopped.");
  showResults(job);
  showVerify(job);
}

function showResults(job) {
  const done = job.protect.state === "done";
  $("results").hidden = !done;
  if (!done) return;
  const r = job.result || {};
  const skipped = (r.skipped || []).map((s) => `${s.rel}: ${s.reason}`);
  $("summary").textContent = `${r.images} image(s) protected (largest change ${r.linf_255}/255 of a budget of ` +
    `${r.eps_255}/255; mean PSNR ${fixed(r.mean_psnr, 2)} dB, mean SSIM ${fixed(r.mean_ssim, 4)}).` +
    (skipped.length ? ` Skipped: ${skipped.join("; ")}` : "");
  $("download").href = withToken(`/api/jobs/${job.id}/download`);
  const body = $("images").querySelector("tbody");
  if (body.dataset.job === job.id && body.children.length === job.images.length) return;
  body.dataset.job = job.id;
  body.replaceChildren(...job.images.map((e, n) => {
    const tr = document.createElement("tr");
    const cell = (content) => { const td = document.createElement("td"); td.append(content); tr.append(td); };
    cell(e.input);
    for (const kind of ["before", "after", "perturbation"]) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = `${e.input}, ${kind}`;
      img.className = kind;
      img.src = withToken(`/api/jobs/${job.id}/images/${n}/${kind}.png`);
      cell(img);
    }
    cell(e.psnr == null ? "identical" : e.psnr.toFixed(2));
    cell(e.ssim == null ? "" : e.ssim.toFixed(4));
    cell(`${e.linf_255}/255`);
    return tr;
  }));
}

// ---- check it ------------------------------------------------------------------------
const LABELS = {none: "plain training", grayscale: "grayscale", "early-stop": "early stopping",
                "prior-finetune": "fine-tuning a prior"};
const label = (c) => c.startsWith("jpeg") ? `JPEG q${c.slice(4)}` : (LABELS[c] || c);
const pct = (x) => `${(100 * x).toFixed(0)}%`;

function showVerify(job) {
  const v = job.verify;
  const running = ["queued", "running"].includes(v.state);
  $("verify").disabled = running || ["queued", "running"].includes(job.protect.state);
  $("verify").textContent = running ? `Checking: ${Math.floor(100 * (v.fraction || 0))}%` +
    (v.eta_s != null ? `, about ${fmtTime(v.eta_s)} left` : "") : "Check it";
  if (v.state === "failed") say(`The check failed: ${v.error}`, true);
  const res = job.verify_result;
  $("verify-box").hidden = !res;
  if (!res) return;
  const rep = res.report;
  $("verdict").textContent = rep.verdict;
  const body = $("verify-table").querySelector("tbody");
  body.replaceChildren();
  const bars = [];
  for (const [cond, r] of Object.entries(rep.results)) {
    for (const version of ["clean", "protected"]) {
      const u = r[version].protected_classes, o = r[version].other_classes;
      const tr = document.createElement("tr");
      for (const text of [label(cond), version === "clean" ? "your originals" : "protected images",
                          `${pct(u.acc)} (${u.correct} of ${u.n})`, o ? pct(o.acc) : "",
                          version === "protected" ? `${r.gap_pts.toFixed(1)} ± ${r.gap_se_pts.toFixed(1)}` : ""]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      body.append(tr);
    }
    bars.push([label(cond), r.clean.protected_classes.acc, r.protected.protected_classes.acc]);
  }
  $("chart").replaceChildren(chart(bars));
}

function chart(rows) {
  // Grouped bars: accuracy on the held-out images, trained on originals vs on protected images.
  const ns = "http://www.w3.org/2000/svg", W = 560, rowH = 34, left = 150, top = 24;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W);
  svg.setAttribute("height", top + rows.length * rowH + 10);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "accuracy on your held-out images by attacker");
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, val] of Object.entries(attrs)) e.setAttribute(k, val);
    if (text != null) e.textContent = text;
    svg.append(e);
  };
  el("rect", {x: left, y: 4, width: 12, height: 10, fill: "#4a7ab5"});
  el("text", {x: left + 16, y: 13}, "trained on your originals");
  el("rect", {x: left + 190, y: 4, width: 12, height: 10, fill: "#d9822b"});
  el("text", {x: left + 206, y: 13}, "trained on the protected images");
  const scale = (W - left - 50);
  rows.forEach(([name, a, b], i) => {
    const y = top + i * rowH;
    el("text", {x: 0, y: y + 18}, name);
    el("rect", {x: left, y: y + 2, width: Math.max(1, a * scale), height: 12, fill: "#4a7ab5"});
    el("text", {x: left + a * scale + 4, y: y + 12}, pct(a));
    el("rect", {x: left, y: y + 16, width: Math.max(1, b * scale), height: 12, fill: "#d9822b"});
    el("text", {x: left + b * scale + 4, y: y + 26}, pct(b));
  });
  return svg;
}

async function runVerify() {
  say("");
  try {
    await api(`/api/jobs/${jobId}/start/verify`, {method: "POST", body: "{}", headers: {"Content-Type": "application/json"}});
    poll();
  } catch (e) { say(e.message, true); }
}

async function cancel() {
  try {
    await api(`/api/jobs/${jobId}/cancel`, {method: "POST"});
  } catch (e) { say(e.message, true); }
  poll();
}

async function resume() {
  say("");
  try {
    const job = await api(`/api/jobs/${jobId}`);
    await api(`/api/jobs/${jobId}/start/protect`, {method: "POST", body: JSON.stringify(job.protect_settings || {}),
                                                   headers: {"Content-Type": "application/json"}});
    poll();
  } catch (e) { say(e.message, true); }
}

// ---- start-up ------------------------------------------------------------------------
async function init() {
  for (const r of document.querySelectorAll("input[name=source]")) {
    r.addEventListener("change", () => {
      $("upload-box").hidden = source() !== "upload";
      $("folder-box").hidden = source() !== "folder";
    });
  }
  $("strength").addEventListener("change", showStrength);
  $("start").addEventListener("click", start);
  $("cancel").addEventListener("click", cancel);
  $("resume").addEventListener("click", resume);
  $("verify").addEventListener("click", runVerify);
  try {
    info = await api("/api/state");
  } catch (e) {
    say(e.message, true);
    return;
  }
  $("limits").textContent = `Images your browser can show (PNG, JPEG, ...) or a zip of them; ${info.limits.text}.`;
  showStrength();
  // Reloading the page (or a restarted server) shows the job that was on it, or the running one.
  const saved = localStorage.getItem("unlearnable:job");
  const known = info.jobs.map((j) => j.id);
  jobId = info.active ? info.active.job : (known.includes(saved) ? saved : null);
  if (jobId) poll();
}

init();
