"use strict";
// imgstore's operator console. It talks to /zstack/v1 like any ZStack client: sign in,
// query, add with `Prefer: respond-async` and poll the job. No framework, no build step.
// API data reaches the page only through textContent (never innerHTML).

const API = "/zstack/v1";
const SESSION_KEY = "imgstore.session";
const ACCOUNT_KEY = "imgstore.account";
const REFRESH_MS = 3000;
const POLL_MS = 500;
const IMAGE_READY_TIMEOUT_MS = 30 * 60 * 1000;

const state = {
  storages: [],         // BackupStorageInventory[], sorted by name
  images: [],           // ImageInventory[]
  imageApi: true,       // false while the server answers 404 on /images
  uploadProgress: {},   // image uuid → 0..1, for uploads running in this page
};

// ---------------------------------------------------------------- DOM helpers

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A new element; `text` sets textContent, other props become attributes; children are appended. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);  // strings become text nodes
  }
  return node;
}

function humanSize(bytes) {
  if (bytes === null || bytes === undefined || Number.isNaN(Number(bytes))) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  let value = Number(bytes);
  let i = 0;
  while (Math.abs(value) >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return i === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[i]}`;
}

function percent(ratio) {
  return `${Math.round(Math.max(0, Math.min(1, ratio)) * 100)}%`;
}

// ---------------------------------------------------------------- errors

/** A ZStack ErrorCode body ({code, description, details}) with its HTTP status. */
class ApiError extends Error {
  constructor(status, error) {
    const e = error || {};
    super(e.details || e.description || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || "";
    this.description = e.description || "";
    this.details = e.details || "";
  }
}

function errorFromBody(status, text) {
  try {
    const body = JSON.parse(text);
    if (body && body.error) return new ApiError(status, body.error);
  } catch (_) { /* not JSON: a proxy's page, a plain-text error */ }
  return new ApiError(status, { details: (text || "").slice(0, 300) || `HTTP ${status}` });
}

/** Show an error in `node` (code and description on one line, details below), or hide it. */
function showError(node, err) {
  node.replaceChildren();
  node.hidden = !err;
  if (!err) return;
  if (err instanceof ApiError && err.code) {
    node.append(el("strong", { text: `${err.code} ${err.description}`.trim() }));
    if (err.details && err.details !== err.description) node.append(el("span", { class: "details", text: err.details }));
  } else {
    node.append(el("span", { text: String((err && err.message) || err) }));
  }
}

// ---------------------------------------------------------------- session and HTTP

const session = {
  get uuid() { return sessionStorage.getItem(SESSION_KEY); },
  get account() { return sessionStorage.getItem(ACCOUNT_KEY) || ""; },
  save(uuid, account) {
    sessionStorage.setItem(SESSION_KEY, uuid);
    sessionStorage.setItem(ACCOUNT_KEY, account);
  },
  clear() {
    sessionStorage.removeItem(SESSION_KEY);
    sessionStorage.removeItem(ACCOUNT_KEY);
  },
};

/**
 * One HTTP call; resolves {status, data} for 2xx, throws ApiError otherwise. A 401 on a
 * signed-in call means the session is gone: back to the sign-in form.
 */
async function call(method, url, { body, headers = {}, signedIn = true } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, cache: "no-store" };
  if (signedIn && session.uuid) init.headers.Authorization = `OAuth ${session.uuid}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    throw new Error(`cannot reach imgstore (${e.message})`);
  }
  const text = await response.text();
  if (response.status === 401 && signedIn) sessionExpired();
  if (!response.ok) throw errorFromBody(response.status, text);
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch (_) { data = {}; }
  return { status: response.status, data };
}

const api = (method, path, options) => call(method, API + path, options);

/** Where to poll a job: on this origin, whatever host the server wrote (as ZStack's SDK does). */
function jobPath(location) {
  const marker = `${API}/api-jobs/`;
  const i = location.indexOf(marker);
  return i >= 0 ? location.slice(i) : new URL(location, window.location.href).pathname;
}

/** Poll a job location until it ends: 202 running, 200 its result, else its ErrorCode thrown. */
async function waitJob(location, onTick) {
  const url = jobPath(location);
  const started = Date.now();
  for (;;) {
    const { status, data } = await call("GET", url);
    if (status !== 202) return data;
    if (onTick && (await onTick((Date.now() - started) / 1000)) === false) return null;
    await sleep(POLL_MS);
  }
}

/** An API that may run as a job: ask for one, and wait for its result. */
async function runJob(method, path, body, onTick) {
  const { status, data } = await api(method, path, { body, headers: { Prefer: "respond-async" } });
  if (status !== 202 || !data.location) return data;  // the server answered at once
  return waitJob(data.location, onTick);
}

// ---------------------------------------------------------------- password hashing

/** SHA-512 hex of the password, as LogInByAccount wants it. */
async function sha512hex(text) {
  const bytes = new TextEncoder().encode(text);
  if (!(window.crypto && crypto.subtle)) return sha512Fallback(bytes);  // plain http on a LAN address
  const digest = await crypto.subtle.digest("SHA-512", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

// crypto.subtle exists only in secure contexts (https, localhost); an operator who opens
// http://<management ip>:8080/ still has to be able to sign in, hence this small SHA-512
// (FIPS 180-4) on BigInt. Its constants are derived exactly: the first 64 bits of the
// fractional parts of the square and cube roots of the first primes.
let sha512Constants = null;

function sha512Fallback(bytes) {
  const M = (1n << 64n) - 1n;
  if (!sha512Constants) {
    const root = (n, k) => {  // floor of the k-th root of a BigInt, by Newton from above
      let x = 1n << BigInt(Math.ceil(n.toString(2).length / k) + 1);
      for (;;) {
        const y = ((BigInt(k) - 1n) * x + n / x ** (BigInt(k) - 1n)) / BigInt(k);
        if (y >= x) return x;
        x = y;
      }
    };
    const primes = [];
    for (let n = 2; primes.length < 80; n += 1) if (primes.every((p) => n % p)) primes.push(n);
    sha512Constants = {
      K: primes.map((p) => root(BigInt(p) << 192n, 3) & M),
      H: primes.slice(0, 8).map((p) => root(BigInt(p) << 128n, 2) & M),
    };
  }
  const { K } = sha512Constants;
  const H = sha512Constants.H.slice();
  const rotr = (x, n) => ((x >> n) | (x << (64n - n))) & M;
  const padded = new Uint8Array(Math.ceil((bytes.length + 17) / 128) * 128);
  padded.set(bytes);
  padded[bytes.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setBigUint64(padded.length - 8, BigInt(bytes.length) * 8n);
  const W = new Array(80);
  for (let off = 0; off < padded.length; off += 128) {
    for (let t = 0; t < 16; t += 1) W[t] = view.getBigUint64(off + 8 * t);
    for (let t = 16; t < 80; t += 1) {
      const s0 = rotr(W[t - 15], 1n) ^ rotr(W[t - 15], 8n) ^ (W[t - 15] >> 7n);
      const s1 = rotr(W[t - 2], 19n) ^ rotr(W[t - 2], 61n) ^ (W[t - 2] >> 6n);
      W[t] = (W[t - 16] + s0 + W[t - 7] + s1) & M;
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let t = 0; t < 80; t += 1) {
      const t1 = (h + (rotr(e, 14n) ^ rotr(e, 18n) ^ rotr(e, 41n)) + ((e & f) ^ (~e & M & g)) + K[t] + W[t]) & M;
      const t2 = ((rotr(a, 28n) ^ rotr(a, 34n) ^ rotr(a, 39n)) + ((a & b) ^ (a & c) ^ (b & c))) & M;
      [h, g, f, e, d, c, b, a] = [g, f, e, (d + t1) & M, c, b, a, (t1 + t2) & M];
    }
    [a, b, c, d, e, f, g, h].forEach((v, i) => { H[i] = (H[i] + v) & M; });
  }
  return H.map((v) => v.toString(16).padStart(16, "0")).join("");
}

// ---------------------------------------------------------------- sign in and out

function showSignIn(note) {
  stopRefresh();
  $("console").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("summary").replaceChildren();
  $("signin").hidden = false;
  $("signin-note").textContent = note || "";
  $("signin-note").hidden = !note;
  $("password").focus();
}

function enterConsole() {
  $("signin").hidden = true;
  showError($("signin-error"), null);
  $("console").hidden = false;
  $("who").textContent = session.account;
  $("who").hidden = false;
  $("sign-out").hidden = false;
  startRefresh();
}

function sessionExpired() {
  if (!session.uuid) return;
  session.clear();
  showSignIn("Your session has expired or was closed; sign in again.");
}

async function signIn(event) {
  event.preventDefault();
  const button = $("signin-submit");
  const account = $("account").value.trim();
  showError($("signin-error"), null);
  $("signin-note").hidden = true;
  button.disabled = true;
  try {
    const password = await sha512hex($("password").value);
    const { data } = await api("PUT", "/accounts/login", {
      body: { logInByAccount: { accountName: account, password } },
      signedIn: false,
    });
    session.save(data.inventory.uuid, account);
    $("password").value = "";
    enterConsole();
  } catch (e) {
    session.clear();
    showError($("signin-error"), e);
  } finally {
    button.disabled = false;
  }
}

async function signOut() {
  const uuid = session.uuid;
  session.clear();
  showSignIn("Signed out.");
  if (!uuid) return;
  try {
    await api("DELETE", `/accounts/sessions/${encodeURIComponent(uuid)}`, { signedIn: false });
  } catch (_) { /* the session is forgotten here either way */ }
}

// ---------------------------------------------------------------- auto-refresh

let refreshGeneration = 0;

function startRefresh() {
  const generation = ++refreshGeneration;
  const tick = async () => {
    if (generation !== refreshGeneration) return;
    if (!document.hidden) await refreshAll();
    if (generation === refreshGeneration) setTimeout(tick, REFRESH_MS);
  };
  tick();
}

function stopRefresh() {
  refreshGeneration += 1;
}

async function refreshAll() {
  await Promise.all([loadStorages(), loadImages()]);
}

// ---------------------------------------------------------------- image storages

/** "ok" / "high" / "full": the capacity bar's colour. */
function fillLevel(ratio) {
  if (ratio >= 0.9) return "full";
  if (ratio >= 0.75) return "high";
  return "ok";
}

function usedRatio(bs) {
  const total = Number(bs.totalCapacity) || 0;
  const available = Number(bs.availableCapacity) || 0;
  return total > 0 ? Math.max(0, total - available) / total : 0;
}

async function loadStorages() {
  try {
    const { data } = await api("GET", "/backup-storage");
    state.storages = (data.inventories || []).slice().sort((a, b) => a.name.localeCompare(b.name));
    showError($("storages-error"), null);
    $("storages-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e.status !== 401) showError($("storages-error"), e);
    return;
  }
  renderStorages();
  renderStorageChoices();
}

function renderStorages() {
  const rows = state.storages.map(storageRow);
  $("storages").querySelector("tbody").replaceChildren(...rows);
  $("storages-empty").hidden = rows.length > 0;
  renderSummary();
}

function renderSummary() {
  const all = state.storages;
  const down = all.filter((bs) => bs.status === "Disconnected").length;
  const full = all.filter((bs) => usedRatio(bs) >= 0.9).length;
  const parts = [el("span", { text: `${all.length} image storage${all.length === 1 ? "" : "s"}` })];
  if (down) parts.push(el("span", { class: "badge bad", text: `${down} down` }));
  if (full) parts.push(el("span", { class: "badge bad", text: `${full} nearly full` }));
  if (!down && !full && all.length) parts.push(el("span", { class: "badge good", text: "all healthy" }));
  $("summary").replaceChildren(...parts);
}

function statusBadge(status) {
  return el("span", { class: `badge status-${String(status || "unknown").toLowerCase()}`, text: status || "?" });
}

function storageRow(bs) {
  const ratio = usedRatio(bs);
  const row = el("tr", { "data-uuid": bs.uuid, "data-name": bs.name });
  if (bs.status === "Disconnected") row.classList.add("down");
  if (ratio >= 0.9) row.classList.add("full");
  row.append(
    el("td", { class: "name" },
      el("div", { class: "strong", text: bs.name }),
      el("div", { class: "mono small muted", text: bs.uuid }),
      bs.description ? el("div", { class: "small muted", text: bs.description }) : null),
    el("td", { class: "type", text: bs.type }),
    el("td", { class: "state" }, el("span", { class: `badge state-${String(bs.state).toLowerCase()}`, text: bs.state })),
    el("td", { class: "status" }, statusBadge(bs.status),
      bs.status === "Disconnected" && bs.statusReason ? el("div", { class: "small reason", text: bs.statusReason }) : null),
    capacityCell(bs, ratio),
    el("td", { class: "mons" }, monList(bs.mons || [])),
    el("td", { class: "ceph small" },
      bs.fsid ? el("div", {}, el("span", { class: "muted", text: "fsid " }), el("span", { class: "mono", text: bs.fsid })) : null,
      bs.poolName ? el("div", {}, el("span", { class: "muted", text: "pool " }), el("span", { class: "mono", text: bs.poolName }),
        bs.poolReplicatedSize ? el("span", { class: "muted", text: ` ×${bs.poolReplicatedSize}` }) : null) : null),
  );
  return row;
}

function capacityCell(bs, ratio) {
  const total = Number(bs.totalCapacity) || 0;
  const available = Number(bs.availableCapacity) || 0;
  const level = fillLevel(ratio);
  const fill = el("div", { class: "fill" });
  fill.style.width = percent(ratio);  // CSSOM, allowed by the page's CSP (inline style attributes are not)
  const bar = el("div", {
    class: `bar ${level}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": Math.round(ratio * 100), "aria-label": `${bs.name} capacity used`,
  }, fill);
  const text = total > 0
    ? `${humanSize(total - available)} of ${humanSize(total)} used (${percent(ratio)}) · ${humanSize(available)} free`
    : "capacity not known yet";
  return el("td", { class: `capacity ${level}` }, bar, el("div", { class: "small cap-text", text }));
}

function monList(mons) {
  const list = el("ul", { class: "mon-list" });
  for (const mon of mons) {
    const status = mon.status || "unknown";
    list.append(el("li", { title: `mon ${mon.monAddr || mon.hostname}:${mon.monPort} is ${status}` },
      el("span", { class: `dot status-${status.toLowerCase()}` }),
      el("span", { class: "mono", text: `${mon.hostname}:${mon.monPort}` }),
      el("span", { class: "small muted", text: ` ${status}` })));
  }
  return list;
}

// ---------------------------------------------------------------- add a Ceph storage

function toggleAddStorage() {
  const form = $("add-storage");
  form.hidden = !form.hidden;
  $("add-storage-toggle").setAttribute("aria-expanded", String(!form.hidden));
  if (!form.hidden) $("bs-name").focus();
}

async function addStorage(event) {
  event.preventDefault();
  const form = $("add-storage");
  const progress = $("bs-progress");
  const params = {
    name: $("bs-name").value.trim(),
    monUrls: $("bs-mons").value.split(/\r?\n/).map((line) => line.trim()).filter(Boolean),
  };
  const pool = $("bs-pool").value.trim();
  const description = $("bs-description").value.trim();
  if (pool) params.poolName = pool;
  if (description) params.description = description;
  showError($("bs-error"), null);
  $("bs-submit").disabled = true;
  progress.textContent = "Adding: connecting to the mons…";
  try {
    const reply = await runJob("POST", "/backup-storage/ceph", { params }, (seconds) => {
      progress.textContent = `Adding: connecting to the mons… ${Math.round(seconds)} s`;
    });
    const inv = (reply && reply.inventory) || {};
    form.reset();  // the mon URLs carry SSH passwords: do not leave them in the page
    progress.textContent = `Added ${inv.name || params.name} (${inv.status || "done"}).`;
  } catch (e) {
    progress.textContent = "";
    showError($("bs-error"), e);
  } finally {
    $("bs-submit").disabled = false;
    loadStorages();  // a refused add may have shown its row as Connecting meanwhile
  }
}

// ---------------------------------------------------------------- images

async function loadImages() {
  try {
    const { data } = await api("GET", "/images");
    state.images = data.inventories || [];
    state.imageApi = true;
    showError($("images-error"), null);
  } catch (e) {
    if (e.status === 404) {  // a server without the image API yet: an empty list, said quietly
      state.images = [];
      state.imageApi = false;
      showError($("images-error"), null);
    } else if (e.status !== 401) {
      showError($("images-error"), e);
      return;
    }
  }
  $("images-note").textContent = state.imageApi ? "" : "this server does not serve the image API yet";
  renderImages();
}

function storageName(uuid) {
  const bs = state.storages.find((s) => s.uuid === uuid);
  return bs ? bs.name : uuid;
}

/** 0..1 while an image is being written, or null when nobody says how far it is. */
function imageProgress(image) {
  if (image.uuid in state.uploadProgress) return state.uploadProgress[image.uuid];
  const p = image.progress ?? image.downloadProgress;
  if (p === undefined || p === null || p === "") return null;
  const n = parseFloat(p);
  if (Number.isNaN(n)) return null;
  return n > 1 ? n / 100 : n;
}

function renderImages() {
  const rows = state.images.map((image) => {
    const statusCell = el("td", { class: "status" }, statusBadge(image.status));
    if (image.status === "Downloading") {
      const ratio = imageProgress(image);
      statusCell.append(progressBar(ratio, `${image.name} progress`));
      if (ratio !== null) statusCell.append(el("span", { class: "small", text: ` ${percent(ratio)}` }));
    }
    const refs = (image.backupStorageRefs || []).map((ref) =>
      el("div", {}, el("span", { text: storageName(ref.backupStorageUuid) }),
        ref.status && ref.status !== image.status ? el("span", { class: "small muted", text: ` (${ref.status})` }) : null));
    return el("tr", { "data-uuid": image.uuid, "data-name": image.name },
      el("td", { class: "name" },
        el("div", { class: "strong", text: image.name }),
        el("div", { class: "mono small muted", text: image.uuid })),
      el("td", { text: image.format || "" }),
      el("td", { title: image.actualSize ? `actual size ${humanSize(image.actualSize)}` : null, text: image.size ? humanSize(image.size) : "—" }),
      statusCell,
      el("td", {}, ...refs));
  });
  $("images").querySelector("tbody").replaceChildren(...rows);
  $("images-empty").hidden = rows.length > 0;
}

/** A progress bar; `ratio` null draws an indeterminate one. */
function progressBar(ratio, label) {
  const bar = el("div", { class: "bar progress", role: "progressbar", "aria-label": label,
    "aria-valuemin": 0, "aria-valuemax": 100 }, el("div", { class: "fill" }));
  setProgress(bar, ratio);
  return bar;
}

function setProgress(bar, ratio) {
  bar.classList.toggle("indeterminate", ratio === null);
  bar.firstChild.style.width = ratio === null ? "" : percent(ratio);
  if (ratio === null) bar.removeAttribute("aria-valuenow");
  else bar.setAttribute("aria-valuenow", String(Math.round(ratio * 100)));
}

/** The image storages an image can go to: usable ones first, roomiest first; the others disabled. */
function renderStorageChoices() {
  const select = $("img-bs");
  const chosen = select.value;
  const usable = (bs) => bs.state === "Enabled" && bs.status === "Connected";
  const sorted = state.storages.slice()
    .sort((a, b) => Number(usable(b)) - Number(usable(a)) || b.availableCapacity - a.availableCapacity);
  const options = sorted.map((bs) => el("option", {
    value: bs.uuid, disabled: !usable(bs),
    text: usable(bs) ? `${bs.name} (${humanSize(bs.availableCapacity)} free)` : `${bs.name} (${bs.state}, ${bs.status})`,
  }));
  if (!options.length) options.push(el("option", { value: "", disabled: true, text: "no image storage" }));
  select.replaceChildren(...options);
  if (sorted.some((bs) => bs.uuid === chosen && usable(bs))) select.value = chosen;
}

/**
 * Where to PUT an upload:// image's bytes, from the AddImage reply's inventory.
 * Expected: `backupStorageRefs[].uploadUrl` (imgstore); also accepted: `uploadUrl` on the
 * image, `imageUploadUrl` (ZStack's upload-job details), an http(s) or absolute-path
 * `installPath` of a ref (ZStack's console reads it there), or the image `url` once the
 * server has replaced upload:// with the real target. Same order as imgstore/client/http.py.
 */
function uploadUrl(image) {
  const isTarget = (u) => typeof u === "string" && /^(https?:\/\/|\/)/.test(u);
  if (isTarget(image.uploadUrl)) return image.uploadUrl;
  for (const ref of image.backupStorageRefs || []) {
    for (const key of ["uploadUrl", "imageUploadUrl", "installPath"]) {
      if (isTarget(ref[key])) return ref[key];
    }
  }
  return isTarget(image.url) ? image.url : null;
}

/** GetUploadImageJobDetails: the upload URL of an image whose AddImage job is still running. */
async function uploadUrlOfJob(imageUuid) {
  try {
    const { data } = await api("GET", `/images/upload-job/details/${encodeURIComponent(imageUuid)}`);
    const detail = (data.existingJobDetails || []).find((d) => d.imageUploadUrl);
    return detail ? detail.imageUploadUrl : null;
  } catch (e) {
    if (e.status === 401) throw e;
    return null;
  }
}

function newUuid() {  // ZStack style: 32 hex digits (crypto.randomUUID needs a secure context)
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * AddImage(upload://) and the inventory that names the upload URL. The image's uuid is
 * chosen here (resourceUuid), so if the server keeps the AddImage job open until the
 * bytes are in, the URL is read from the image or its upload job while the job runs.
 */
async function addUploadImage(params) {
  const uuid = newUuid();
  let image = null;
  const reply = await runJob("POST", "/images", { params: { ...params, url: "upload://", resourceUuid: uuid } },
    async (seconds) => {
      if (seconds < 1) return true;
      try {
        const { data } = await api("GET", `/images/${uuid}`);
        const found = (data.inventories || [])[0];
        const url = found && (uploadUrl(found) || (await uploadUrlOfJob(uuid)));
        if (url) image = { ...found, uploadUrl: url };
      } catch (e) {
        if (e.status === 401) throw e;  // anything else: keep waiting on the job
      }
      return !image;  // false stops waiting on the job
    });
  return image || (reply && reply.inventory) || { uuid };
}

/** PUT the file to the upload URL with XMLHttpRequest, for its upload progress events. */
function putFile(target, file, imageUuid, onProgress) {
  const url = new URL(target, window.location.href);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url.href);
    // The session goes only to this server, never to a host named in a reply.
    if (url.origin === window.location.origin && session.uuid) xhr.setRequestHeader("Authorization", `OAuth ${session.uuid}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("X-IMAGE-UUID", imageUuid);
    xhr.setRequestHeader("X-IMAGE-SIZE", String(file.size));
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => {
      if (xhr.status === 401) sessionExpired();
      if (xhr.status >= 200 && xhr.status < 300) resolve();
      else reject(errorFromBody(xhr.status, xhr.responseText));
    };
    xhr.onerror = () => reject(new Error("the upload was cut off (network error)"));
    xhr.onabort = () => reject(new Error("the upload was cancelled"));
    xhr.send(file);
  });
}

/** QueryImage until the image is Ready (returned) or failed (thrown). */
async function waitImageReady(uuid) {
  const deadline = Date.now() + IMAGE_READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const { data } = await api("GET", `/images/${encodeURIComponent(uuid)}`);
    const image = (data.inventories || [])[0];
    if (!image) throw new Error(`image ${uuid} is gone`);
    if (image.status === "Ready") return image;
    if (image.status === "Error" || image.status === "Deleted") {
      throw new Error(`image ${image.name} is ${image.status}${image.statusReason ? `: ${image.statusReason}` : ""}`);
    }
    await sleep(1000);
  }
  throw new Error(`image ${uuid} is not Ready after ${IMAGE_READY_TIMEOUT_MS / 60000} minutes`);
}

/** One line in the upload list: name, phase text, progress bar; data-state for tests and CSS. */
function uploadItem(name) {
  const text = el("span", { class: "upload-text" });
  const bar = progressBar(null, `${name} upload`);
  const error = el("div", { class: "error", role: "alert", hidden: true });
  const item = el("li", { "data-state": "adding" }, el("span", { class: "strong", text: name }), " ", text, bar, error);
  $("uploads").prepend(item);
  return {
    phase(phaseName, message, ratio = null) {
      item.dataset.state = phaseName;
      text.textContent = message;
      setProgress(bar, ratio);
      bar.hidden = phaseName === "ready";
    },
    fail(err) {
      item.dataset.state = "error";
      text.textContent = "failed";
      bar.hidden = true;
      showError(error, err);
    },
  };
}

async function uploadImage(event) {
  event.preventDefault();
  const file = $("img-file").files[0];
  const backupStorageUuid = $("img-bs").value;
  if (!file || !backupStorageUuid) return;
  const format = $("img-format").value;
  const params = { name: $("img-name").value.trim() || file.name, format, backupStorageUuids: [backupStorageUuid] };
  if (format === "iso") params.mediaType = "ISO";
  $("upload").reset();
  const item = uploadItem(params.name);
  let uuid = null;
  try {
    item.phase("adding", "adding the image…");
    const image = await addUploadImage(params);
    uuid = image.uuid;
    const target = uploadUrl(image) || (await uploadUrlOfJob(uuid));
    if (!target) throw new Error(`the server gave no upload URL for image ${uuid}`);
    state.uploadProgress[uuid] = 0;
    await putFile(target, file, uuid, (sent, total) => {
      const ratio = total ? sent / total : 0;
      state.uploadProgress[uuid] = ratio;
      item.phase("uploading", `uploading ${humanSize(sent)} of ${humanSize(total)} (${percent(ratio)})`, ratio);
    });
    item.phase("checking", "uploaded; waiting for the image to be Ready…");
    const ready = await waitImageReady(uuid);
    item.phase("ready", `Ready · ${humanSize(ready.size)}`);
  } catch (e) {
    item.fail(e);
  } finally {
    if (uuid) delete state.uploadProgress[uuid];
    loadImages();
  }
}

/** Default name and format from the chosen file (qcow2, vmdk, iso by magic bytes; else raw). */
async function fileChosen() {
  const file = $("img-file").files[0];
  if (!file) return;
  const nameField = $("img-name");
  if (!nameField.value || nameField.dataset.auto === "1") {
    nameField.value = file.name.replace(/\.(qcow2|img|raw|iso|vmdk)$/i, "");
    nameField.dataset.auto = "1";
  }
  const head = new Uint8Array(await file.slice(0, 0x8006).arrayBuffer());
  const at = (offset, magic) => magic.split("").every((ch, i) => head[offset + i] === ch.charCodeAt(0));
  let format = "raw";
  if (at(0, "QFI\xfb")) format = "qcow2";
  else if (at(0, "KDMV")) format = "vmdk";
  else if (at(0x8001, "CD001")) format = "iso";
  $("img-format").value = format;
}

// ---------------------------------------------------------------- start

async function boot() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("add-storage-toggle").addEventListener("click", toggleAddStorage);
  $("add-storage").addEventListener("submit", addStorage);
  $("upload").addEventListener("submit", uploadImage);
  $("img-file").addEventListener("change", fileChosen);
  $("img-name").addEventListener("input", () => { $("img-name").dataset.auto = "0"; });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !$("console").hidden) refreshAll();
  });

  const uuid = session.uuid;
  if (!uuid) return showSignIn();
  try {
    const { data } = await api("GET", `/accounts/sessions/${encodeURIComponent(uuid)}/valid`, { signedIn: false });
    if (data.valid) return enterConsole();
  } catch (_) { /* treat as signed out */ }
  session.clear();
  return showSignIn("Your session has expired; sign in again.");
}

boot();
