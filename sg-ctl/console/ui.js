// DOM helpers: elements are built with text nodes only (never from HTML),
// so nothing a user typed is ever parsed as markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "value") el.value = value;
    else if (key === "checked") el.checked = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

export function badge(state) {
  return h("span", { class: `badge badge-${state}` }, state);
}

export function count(n) {
  return Number(n ?? 0).toLocaleString("en-US");
}

export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(n ?? 0);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

/// A table; a header ending in "#" heads a column of numbers.
export function table(headers, rows, empty = "Nothing here yet.") {
  const head = (name) =>
    name.endsWith("#") ? h("th", { class: "num" }, name.slice(0, -1)) : h("th", {}, name);
  return h(
    "table",
    { class: "table" },
    h("thead", {}, h("tr", {}, headers.map(head))),
    h(
      "tbody",
      {},
      rows.length
        ? rows
        : h("tr", {}, h("td", { class: "empty", colspan: headers.length }, empty)),
    ),
  );
}

export function card(title, actions, ...body) {
  return h(
    "section",
    { class: "card" },
    h("header", { class: "card-head" }, h("h2", {}, title), h("div", { class: "actions" }, actions)),
    h("div", { class: "card-body" }, body),
  );
}

export function button(label, onclick, kind = "secondary", attrs = {}) {
  return h("button", { type: "button", class: `btn btn-${kind}`, onclick, ...attrs }, label);
}

/// A notice at the top of the page that goes by itself.
export function notify(message, kind = "error") {
  const area = document.getElementById("notices");
  if (!area) return;
  const note = h("div", { class: `notice notice-${kind}`, role: "alert" }, message);
  area.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 8000 : 3000);
}

/// A labelled input with room for the error of its field under it.
export function field(label, input, hint) {
  return h(
    "label",
    { class: "field", dataset: { field: input.name } },
    h("span", { class: "field-label" }, label),
    input,
    hint ? h("span", { class: "field-hint" }, hint) : null,
    h("span", { class: "field-error", "data-error-for": input.name }),
  );
}

/// Shows an API error on the form field it names (`…: ports: 70000 is
/// out of range`), or on the form when it names none of them.
export function showError(form, error) {
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
  const message = error.message;
  const names = [...form.querySelectorAll("[name]")].map((el) => el.name);
  const found = names
    .map((name) => ({ name, at: fieldAt(message, name) }))
    .filter((f) => f.at >= 0)
    .sort((a, b) => a.at - b.at)[0];
  const target = found && form.querySelector(`[data-error-for="${CSS.escape(found.name)}"]`);
  if (target) {
    target.textContent = message;
    form.querySelector(`[name="${CSS.escape(found.name)}"]`)?.classList.add("invalid");
  } else {
    const general = form.querySelector(".form-error");
    if (general) general.textContent = message;
  }
}

function fieldAt(message, name) {
  const re = new RegExp(`(?:^|: )${name.replace(".", "\\.")}(?:\\[\\d+\\])?: `);
  const m = re.exec(message);
  return m ? m.index : -1;
}

/// A small line chart of series of numbers, newest last, over `points`
/// samples (the newest at the right edge), with its scale.
export function chart(series, points, unit) {
  const [width, height] = [1000, 150];
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const shape = (tag, attrs) => {
    const el = document.createElementNS(svg.namespaceURI, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    svg.append(el);
  };
  for (let i = 0; i <= 4; i++) {
    const y = 4 + ((height - 8) * i) / 4;
    shape("line", { x1: 0, x2: width, y1: y, y2: y, class: "grid" });
  }
  for (const s of series) {
    const offset = points - s.values.length;
    const xy = s.values.map((v, i) => [
      ((i + offset) * width) / (points - 1),
      height - 4 - ((height - 8) * v) / max,
    ]);
    if (!xy.length) continue;
    const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    shape("polygon", {
      points: `${xy[0][0].toFixed(1)},${height - 4} ${line} ${width},${height - 4}`,
      class: `area area-${s.kind}`,
    });
    shape("polyline", { points: line, class: `series series-${s.kind}`, "vector-effect": "non-scaling-stroke" });
  }
  return h("div", { class: "chart-wrap" },
    h("div", { class: "chart-scale" }, h("span", {}, `${count(Math.ceil(max))} ${unit}`), h("span", {}, "0")),
    h("div", { class: "chart-plot" }, svg,
      h("div", { class: "chart-axis" }, h("span", {}, `${points} s ago`), h("span", {}, "now"))));
}
