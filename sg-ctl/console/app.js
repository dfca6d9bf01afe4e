// The console: login, the frame (navigation, role), the router over the
// pages, and the poll that keeps the page in view live.

import * as api from "./api.js";
import { h, replace, button, notify } from "./ui.js";
import { groupsPage, groupPage } from "./groups.js";
import { portsPage, portPage } from "./ports.js";
import { protocolsPage, settingsPage } from "./catalogue.js";

const POLL_MS = 1000;

const session = { role: null };
let current = null;
let timer = null;

const routes = [
  [/^#\/groups\/([^/]+)$/, (m) => groupPage(session, decodeURIComponent(m[1]))],
  [/^#\/groups$/, () => groupsPage(session)],
  [/^#\/ports\/([^/]+)$/, (m) => portPage(session, decodeURIComponent(m[1]))],
  [/^#\/ports$/, () => portsPage(session)],
  [/^#\/protocols$/, () => protocolsPage(session)],
  [/^#\/settings$/, () => settingsPage(session)],
];

const nav = [
  ["#/groups", "Security groups"],
  ["#/ports", "Ports"],
  ["#/protocols", "Protocols"],
  ["#/settings", "Settings"],
];

function loginView(message) {
  const input = h("input", {
    id: "login-token",
    name: "token",
    type: "password",
    autocomplete: "off",
    placeholder: "sgt_…",
    required: true,
  });
  const error = h("p", { class: "form-error", id: "login-error" }, message ?? "");
  const form = h(
    "form",
    {
      class: "login-card",
      onsubmit: async (event) => {
        event.preventDefault();
        api.setToken(input.value.trim());
        await start();
      },
    },
    h("div", { class: "brand brand-large" }, h("span", { class: "logo" }, "sg"), "Security groups"),
    h("h1", {}, "Sign in to the console"),
    h(
      "p",
      { class: "muted" },
      "Use an API token. An owner creates one with ",
      h("code", {}, "sg-ctl daemon token create --role viewer|owner"),
      ".",
    ),
    h("label", { class: "field" }, h("span", { class: "field-label" }, "Token"), input),
    error,
    h("button", { type: "submit", class: "btn btn-primary btn-wide", id: "login-submit" }, "Sign in"),
  );
  replace(document.getElementById("app"), h("div", { class: "login" }, form));
  input.focus();
}

function frame() {
  const links = nav.map(([href, label]) =>
    h("a", { href, class: "nav-link", dataset: { route: href } }, label),
  );
  return h(
    "div",
    { class: "shell" },
    h(
      "aside",
      { class: "sidebar" },
      h("div", { class: "brand" }, h("span", { class: "logo" }, "sg"), "Security groups"),
      h("div", { class: "nav-section" }, "Networking"),
      h("nav", {}, links),
    ),
    h(
      "div",
      { class: "main" },
      h(
        "header",
        { class: "topbar" },
        h("div", { class: "crumbs", id: "crumbs" }),
        h(
          "div",
          { class: "who" },
          h("span", { class: `role role-${session.role}`, id: "role" }, session.role),
          button("Sign out", signOut, "ghost", { id: "sign-out" }),
        ),
      ),
      h("div", { id: "notices" }),
      h("main", { id: "page" }),
    ),
  );
}

function signOut() {
  api.setToken(null);
  session.role = null;
  stop();
  loginView();
}

function stop() {
  clearTimeout(timer);
  current?.stop?.();
  current = null;
}

async function route() {
  stop();
  if (!location.hash || location.hash === "#/") location.hash = "#/groups";
  const found = routes.find(([re]) => re.test(location.hash));
  const page = document.getElementById("page");
  if (!found || !page) return;
  for (const link of document.querySelectorAll(".nav-link")) {
    link.classList.toggle("active", location.hash.startsWith(link.dataset.route));
  }
  const view = found[1](location.hash.match(found[0]));
  current = view;
  replace(page, view.el);
  replace(document.getElementById("crumbs"), view.crumbs ?? []);
  const tick = async () => {
    if (current !== view) return;
    try {
      await view.refresh();
    } catch (e) {
      if (e.status === 401) return signOut();
      notify(e.message);
    }
    if (current === view && view.live !== false) timer = setTimeout(tick, POLL_MS);
  };
  await tick();
}

async function start() {
  if (!api.token()) return loginView();
  try {
    session.role = (await api.get("/v1/whoami")).role;
  } catch (e) {
    api.setToken(null);
    return loginView(e.message);
  }
  replace(document.getElementById("app"), frame());
  await route();
}

window.addEventListener("hashchange", () => session.role && route());
start();
