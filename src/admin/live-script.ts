/**
 * The page's only script: refreshes "Downloads in progress" from /-/downloads.json about once a
 * second while the page is visible. It builds rows with textContent, never HTML, so names from
 * clients stay text. Without script the section shows what it showed when the page loaded.
 */
export const LIVE_DOWNLOADS_SCRIPT = `
(() => {
  const body = document.getElementById("downloads-body");
  const empty = document.getElementById("downloads-empty");
  const status = document.getElementById("downloads-status");
  if (!body || !empty) return;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const bytes = (n) => { let v = n, u = 0; while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; } return u === 0 ? v + " B" : (v < 10 ? v.toFixed(1) : Math.round(v)) + " " + units[u]; };
  const cell = (label, text, cls) => { const td = document.createElement("td"); td.dataset.label = label; if (cls) td.className = cls; if (text !== null) td.textContent = text; return td; };
  const render = (list, now) => {
    body.replaceChildren(...list.map((d) => {
      const tr = document.createElement("tr");
      const name = cell("Image", null);
      const code = document.createElement("code");
      code.textContent = d.upstream + "/" + d.repo;
      const digest = document.createElement("div");
      digest.className = "muted";
      digest.textContent = d.digest.slice(0, 19);
      digest.title = d.digest;
      name.append(code, digest);
      const bar = cell("Progress", null);
      const p = document.createElement("progress");
      if (d.size) { p.max = d.size; p.value = d.bytes; }
      bar.append(p);
      const secs = Math.max(0.001, (now - d.startedAt) / 1000);
      tr.append(name, bar,
        cell("Received", bytes(d.bytes) + (d.size ? " of " + bytes(d.size) + " (" + Math.floor(d.bytes * 100 / d.size) + "%)" : ""), "num"),
        cell("Rate", bytes(Math.round(d.bytes / secs)) + "/s", "num"));
      return tr;
    }));
    empty.hidden = list.length > 0;
  };
  const poll = async () => {
    if (document.hidden) return;
    try {
      const r = await fetch("/-/downloads.json", { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) { if (status) status.textContent = "live updates stopped (" + r.status + "); reload the page"; return; }
      const data = await r.json();
      render(data.downloads, data.now);
      if (status) status.textContent = "live";
    } catch (e) {
      if (status) status.textContent = "live updates failing; retrying";
    }
  };
  setInterval(poll, 1000);
})();
`;
