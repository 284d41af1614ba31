// DOM helpers. Everything the page shows goes through h() or textContent, never innerHTML:
// episode errors, reasons and tags are user data and must never become markup.

/** Element ``tag`` with ``attrs`` (class, data-*, on<event> handlers, booleans) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false || child === "") continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export const $ = (id) => document.getElementById(id);

/** Replace an element's content with ``children`` (text or nodes). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

/**
 * Rows for a table body: ``rows`` is a list of <tr> elements; ``empty`` a message when none.
 * Every cell gets its column's header text as ``data-label``: on a phone the rows are shown
 * as small cards, each cell labelled (style.css), so no table is wider than the screen.
 */
export function fillTable(table, rows, empty, columns) {
  const body = table.tBodies[0];
  if (!rows.length) rows = [h("tr", { class: "empty" }, h("td", { colspan: columns }, empty))];
  const headers = table.tHead ? Array.from(table.tHead.rows[0].cells, (th) => th.textContent.trim()) : [];
  for (const row of rows) {
    let column = 0;
    for (const cell of row.cells) {
      if (!cell.hasAttribute("data-label")) cell.dataset.label = headers[column] || "";
      column += cell.colSpan || 1;
    }
  }
  body.replaceChildren(...rows);
}

export function fmtNum(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x) || Math.abs(x) >= 10 ** digits) return String(Math.round(x));
  return String(Number(x.toPrecision(digits)));
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** A <details> holding ``obj`` as indented JSON (metrics and gate records grow with the trainer). */
export function jsonDetails(summary, obj) {
  if (obj === null || obj === undefined) return null;
  return h("details", { class: "json" }, h("summary", {}, summary), h("pre", {}, JSON.stringify(obj, null, 2)));
}

/**
 * Show a message in the page's message area. Errors stay until dismissed (never swallowed);
 * notes fade after a while.
 */
export function notify(kind, text) {
  const box = $("messages");
  const item = h(
    "div",
    { class: `msg ${kind}`, role: kind === "error" ? "alert" : "status", "data-kind": kind },
    h("span", {}, text),
    h("button", { type: "button", class: "close", title: "dismiss", onclick: () => item.remove() }, "×"),
  );
  box.prepend(item);
  while (box.children.length > 6) box.lastElementChild.remove();
  if (kind !== "error") setTimeout(() => item.remove(), 8000);
  return item;
}

/** Put an outcome (``ok`` | ``error`` | ``info``) in a panel's result element. */
export function showResult(el, kind, ...children) {
  el.className = `result ${kind}`;
  el.dataset.kind = kind;
  fill(el, ...children);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
