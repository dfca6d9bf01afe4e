// Security groups: the list (create, clone, delete) and a group (its
// ingress and egress rules with their hits, presets, the rule form, and
// its ports with the group's status on each).

import * as api from "./api.js";
import { h, replace, badge, count, bytes, table, card, button, field, showError, notify } from "./ui.js";

const DEFAULT_GROUP = "default";
const DEFAULT_REASON =
  "The default group cannot be deleted: it is the group every port can fall back on. Remove its rules instead.";

function link(name) {
  return h("a", { href: `#/groups/${api.segment(name)}`, class: "link" }, name);
}

function crumbs(...parts) {
  return [h("a", { href: "#/groups" }, "Security groups"), ...parts.map((p) => [" / ", h("span", {}, p)])];
}

export function groupsPage(session) {
  const owner = session.role === "owner";
  const rows = h("div", { id: "groups-table" });
  const createForm = owner ? createGroupForm() : null;
  const el = h(
    "div",
    {},
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Security groups"),
        h("p", { class: "muted" }, "Stateful firewalls for the ports of VMs and containers. Rules allow, drop or reject; replies of allowed flows pass.")),
      owner ? button("+ Create group", () => createForm.classList.toggle("hidden"), "primary", { id: "create-group" }) : null,
    ),
    createForm,
    card("Groups", null, rows),
  );
  return {
    el,
    crumbs: crumbs(),
    async refresh() {
      const groups = await api.get("/v1/groups");
      const key = JSON.stringify(groups);
      if (rows.dataset.key === key) return;
      rows.dataset.key = key;
      replace(rows, table(
        ["Name", "Description", "Ingress", "Egress", "Ports", "Status", ""],
        groups.map((g) => groupRow(g, owner)),
        "No groups.",
      ));
    },
  };
}

function groupRow(view, owner) {
  const g = view.spec;
  const rules = (d) => g.rules.filter((r) => r.direction === d).length;
  const actions = owner
    ? h("div", { class: "row-actions" },
        button("Clone", () => cloneGroup(g.name), "ghost", { dataset: { action: "clone" } }),
        g.name === DEFAULT_GROUP
          ? h("span", { class: "btn btn-ghost btn-disabled", title: DEFAULT_REASON, dataset: { action: "delete" } }, "Delete")
          : button("Delete", () => deleteGroup(view), "danger-ghost", { dataset: { action: "delete" } }))
    : null;
  return h(
    "tr",
    { dataset: { group: g.name } },
    h("td", {}, link(g.name), g.public ? h("span", { class: "tag" }, "public") : null),
    h("td", { class: "muted" }, g.description || "—",
      g.name === DEFAULT_GROUP && owner ? h("div", { class: "note" }, DEFAULT_REASON) : null),
    h("td", {}, rules("ingress")),
    h("td", {}, rules("egress")),
    h("td", {}, view.ports.length),
    h("td", {}, badge(view.status.state)),
    h("td", { class: "right" }, actions),
  );
}

function createGroupForm() {
  const name = h("input", { name: "name", id: "group-name", placeholder: "web", autocomplete: "off" });
  const description = h("input", { name: "description", id: "group-description", placeholder: "web tier" });
  const form = h(
    "form",
    {
      class: "card form-card hidden",
      id: "create-group-form",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const created = await api.post("/v1/groups", {
            name: name.value.trim(),
            description: description.value,
            rules: defaultRules(),
          });
          location.hash = `#/groups/${api.segment(created.spec.name)}`;
        } catch (e) {
          showError(form, e);
        }
      },
    },
    h("h2", {}, "Create a security group"),
    h("p", { class: "muted" }, "A new group allows all egress, IPv4 and IPv6; add ingress rules to let traffic in."),
    h("div", { class: "form-grid" },
      field("Name", name, "1–64 of a-z A-Z 0-9 . _ -"),
      field("Description", description)),
    h("p", { class: "form-error" }),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "btn btn-primary", id: "group-submit" }, "Create")),
  );
  return form;
}

function defaultRules() {
  return ["ipv4", "ipv6"].map((ethertype) => ({ direction: "egress", ethertype }));
}

async function cloneGroup(from) {
  const name = prompt(`Clone group ${from} as:`, `${from}-copy`);
  if (!name) return;
  try {
    await api.post(`/v1/groups/${api.segment(from)}/clone`, { name });
    notify(`Cloned ${from} as ${name}.`, "ok");
  } catch (e) {
    notify(e.message);
  }
}

async function deleteGroup(view) {
  if (!confirm(`Delete group ${view.spec.name}?`)) return;
  try {
    await api.del(`/v1/groups/${api.segment(view.spec.name)}`, view.revision);
    notify(`Deleted ${view.spec.name}.`, "ok");
  } catch (e) {
    notify(e.message);
  }
}

// A group.

function describeRemote(remote) {
  if (remote === "any" || remote === undefined) return "Anywhere";
  if (Array.isArray(remote)) return remote.join(", ");
  return `group ${remote.group}`;
}

function describeMatch(rule) {
  const parts = [];
  if (rule.ports) parts.push(rule.ports);
  if (rule.icmp?.type !== undefined) {
    parts.push(`type ${rule.icmp.type}${rule.icmp.code !== undefined ? ` code ${rule.icmp.code}` : ""}`);
  }
  return parts.join(" ") || "all";
}

export function groupPage(session, name) {
  const owner = session.role === "owner";
  const state = { direction: "ingress", view: null, presets: [], ports: [], editing: null };
  const path = `/v1/groups/${api.segment(name)}`;
  const title = h("h1", {}, name);
  const status = h("span", { id: "group-status" });
  const description = h("p", { class: "muted" });
  const rulesBox = h("div", { id: "rules" });
  const membersBox = h("div", { id: "members" });
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const ruleForm = owner ? makeRuleForm(state, path, () => refresh()) : null;
  const presetBar = owner ? h("div", { class: "presets", id: "presets" }) : null;
  const assignBox = owner ? h("div", { id: "assign" }) : null;

  const el = h(
    "div",
    {},
    h("div", { class: "page-head" }, h("div", {}, h("div", { class: "title-row" }, title, status), description)),
    tabs,
    h("div", { id: "rules-panel" },
      card("Rules", owner ? button("+ Add rule", () => ruleForm.open(null), "primary", { id: "add-rule" }) : null,
        presetBar, ruleForm?.el, rulesBox)),
    h("div", { id: "members-panel", class: "hidden" }, card("Ports", null, assignBox, membersBox)),
  );

  function renderTabs() {
    const tab = (key, label) =>
      h("button", {
        type: "button",
        role: "tab",
        class: `tab ${state.direction === key ? "active" : ""}`,
        id: `tab-${key}`,
        onclick: () => { state.direction = key; ruleForm?.close(); render(); },
      }, label);
    const rules = state.view?.spec.rules ?? [];
    const n = (d) => rules.filter((r) => r.direction === d).length;
    replace(tabs, tab("ingress", `Ingress rules (${n("ingress")})`), tab("egress", `Egress rules (${n("egress")})`),
      tab("members", `Ports (${state.view?.ports.length ?? 0})`));
    el.querySelector("#rules-panel").classList.toggle("hidden", state.direction === "members");
    el.querySelector("#members-panel").classList.toggle("hidden", state.direction !== "members");
  }

  function render() {
    const view = state.view;
    if (!view) return;
    replace(status, badge(view.status.state));
    replace(description, view.spec.description || "No description.");
    renderTabs();
    if (state.direction === "members") return renderMembers();
    // Redrawn only when something changed, so a control stays put while
    // the user reaches for it.
    const key = JSON.stringify([view.revision, view.hits, state.direction]);
    if (rulesBox.dataset.key === key) return;
    rulesBox.dataset.key = key;
    const rows = view.spec.rules
      .map((rule, index) => ({ rule, index, hits: view.hits?.[index] }))
      .filter(({ rule }) => rule.direction === state.direction)
      .map(({ rule, index, hits }) =>
        h("tr", { dataset: { rule: index, id: rule.id ?? "" } },
          h("td", {}, rule.priority ?? 1000),
          h("td", {}, h("span", { class: `action action-${rule.action ?? "allow"}` }, rule.action ?? "allow")),
          h("td", {}, rule.ethertype ?? "any"),
          h("td", {}, rule.protocol ?? "any"),
          h("td", {}, describeMatch(rule)),
          h("td", {}, describeRemote(rule.remote)),
          h("td", { class: "muted" }, rule.description || "—", rule.id ? h("code", { class: "sub" }, rule.id) : null),
          h("td", { class: "num hits", dataset: { hits: hits?.packets ?? 0 } }, count(hits?.packets), h("span", { class: "sub" }, bytes(hits?.bytes))),
          h("td", { class: "right" }, owner
            ? h("div", { class: "row-actions" },
                button("Edit", () => ruleForm.open(index), "ghost", { dataset: { action: "edit" } }),
                button("Delete", () => deleteRule(index), "danger-ghost", { dataset: { action: "delete" } }))
            : null),
        ));
    replace(rulesBox, table(
      ["Priority", "Action", "Family", "Protocol", "Ports / ICMP", state.direction === "ingress" ? "Source" : "Destination", "Description", "Hits#", ""],
      rows,
      `No ${state.direction} rules: ${state.direction} traffic is dropped unless another group of the port allows it.`,
    ));
    if (presetBar) renderPresets();
  }

  function renderPresets() {
    if (presetBar.dataset.direction === state.direction) return;
    presetBar.dataset.direction = state.direction;
    const remote = h("input", { name: "preset-remote", id: "preset-remote", placeholder: "any, or 203.0.113.0/24" });
    replace(presetBar,
      h("span", { class: "muted" }, `Quick add, ${state.direction === "ingress" ? "from" : "to"}`),
      remote,
      h("div", { class: "chips" }, state.presets.map((p) =>
        button(p.name.toUpperCase(), () => addPreset(p, remote), "chip", { title: p.description, dataset: { preset: p.name } }))));
  }

  async function addPreset(preset, remoteInput) {
    const remote = remoteInput.value.trim() || "any";
    const rules = preset.rules.map((rule) => ({ ...rule, direction: state.direction, remote }));
    try {
      state.view = await api.post(`${path}/rules`, rules, state.view.revision);
      notify(`Added ${preset.name}.`, "ok");
      render();
    } catch (e) {
      notify(e.message);
    }
  }

  // By its id: the rule shown is the one deleted, or none if it is gone.
  async function deleteRule(index) {
    try {
      state.view = await api.del(`${path}/rules/${ruleRef(state.view, index)}`);
      render();
    } catch (e) {
      notify(e.message);
    }
  }

  function renderMembers() {
    const rows = (state.view.port_status ?? []).map((p) =>
      h("tr", { dataset: { port: p.port } },
        h("td", {}, h("a", { href: `#/ports/${api.segment(p.port)}`, class: "link" }, p.port)),
        h("td", {}, badge(p.state)),
        h("td", { class: "muted" }, p.reason || "")));
    replace(membersBox, table(["Port", "Status of this group", "Reason"], rows, "No port attaches this group (status: na)."));
    if (!assignBox) return;
    const free = state.ports.filter((p) => !p.spec.groups.includes(name));
    if (assignBox.dataset.shown === free.map((p) => p.spec.name).join(",")) return;
    assignBox.dataset.shown = free.map((p) => p.spec.name).join(",");
    const boxes = free.map((p) => h("label", { class: "check" },
      h("input", { type: "checkbox", name: "assign", value: p.spec.name }), p.spec.name));
    const form = h("form", {
      class: "assign",
      id: "assign-form",
      onsubmit: async (event) => {
        event.preventDefault();
        const ports = [...form.querySelectorAll("input:checked")].map((i) => i.value);
        try {
          state.view = await api.post(`${path}/assign`, { ports });
          assignBox.dataset.shown = "";
          notify(`Attached ${name} to ${ports.join(", ")}.`, "ok");
          await refresh();
        } catch (e) {
          showError(form, e);
        }
      },
    },
    free.length ? [h("span", { class: "muted" }, "Attach to:"), boxes,
      h("button", { type: "submit", class: "btn btn-primary", id: "assign-submit" }, "Attach")]
      : h("span", { class: "muted" }, "Every port attaches this group."),
    h("p", { class: "form-error" }));
    replace(assignBox, form);
  }

  async function refresh() {
    const [view, ports, presets] = await Promise.all([
      api.get(path),
      api.get("/v1/ports"),
      state.presets.length ? state.presets : api.get("/v1/presets"),
    ]);
    Object.assign(state, { view, ports, presets });
    render();
  }

  return { el, crumbs: crumbs(name), refresh };
}

/// How a request names rule `index` of the group in view: by its id.
function ruleRef(view, index) {
  return api.segment(view.spec.rules[index].id ?? String(index));
}

/// The form that adds a rule, or edits rule `index`; the daemon checks it,
/// and its refusal is shown on the field it names.
function makeRuleForm(state, path, done) {
  const input = (name, attrs = {}) => h("input", { name, autocomplete: "off", ...attrs });
  const select = (name, options) => h("select", { name }, options.map((o) => h("option", { value: o }, o)));
  const f = {
    action: select("action", ["allow", "drop", "reject"]),
    ethertype: select("ethertype", ["any", "ipv4", "ipv6"]),
    protocol: input("protocol", { placeholder: "any, tcp, udp, icmp, 47…", list: "protocol-names" }),
    ports: input("ports", { placeholder: "22, 80,443 or 8000-8080" }),
    "icmp.type": input("icmp.type", { placeholder: "8" }),
    "icmp.code": input("icmp.code", { placeholder: "0" }),
    remote: input("remote", { placeholder: "any, or 203.0.113.0/24, 2001:db8::/32" }),
    remoteGroup: input("remote-group", { placeholder: "or a group's name" }),
    priority: input("priority", { placeholder: "1000" }),
    description: input("description", { placeholder: "what it is for" }),
  };
  const title = h("h3", {});
  const el = h(
    "form",
    { class: "rule-form hidden", id: "rule-form", onsubmit: (e) => { e.preventDefault(); submit(); } },
    title,
    h("div", { class: "form-grid" },
      field("Action", f.action),
      field("Family", f.ethertype),
      field("Protocol", f.protocol, "a name or a number 0–255"),
      field("Ports", f.ports, "tcp, udp, sctp, dccp, udplite"),
      field("ICMP type", f["icmp.type"], "icmp and ipv6-icmp"),
      field("ICMP code", f["icmp.code"]),
      field("Remote", f.remote),
      field("Remote group", f.remoteGroup),
      field("Priority", f.priority, "1–65535, 1 goes first"),
      field("Description", f.description)),
    h("p", { class: "form-error" }),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "btn btn-primary", id: "rule-submit" }, "Save rule"),
      button("Cancel", () => close(), "ghost")),
  );

  function open(index) {
    state.editing = index;
    const rule = index === null ? { direction: state.direction } : state.view.spec.rules[index];
    title.textContent = index === null ? `New ${state.direction} rule` : `Edit ${rule.direction} rule ${index}`;
    f.action.value = rule.action ?? "allow";
    f.ethertype.value = rule.ethertype ?? "any";
    f.protocol.value = rule.protocol && rule.protocol !== "any" ? rule.protocol : "";
    f.ports.value = rule.ports ?? "";
    f["icmp.type"].value = rule.icmp?.type ?? "";
    f["icmp.code"].value = rule.icmp?.code ?? "";
    f.remote.value = Array.isArray(rule.remote) ? rule.remote.join(",") : "";
    f.remoteGroup.value = rule.remote?.group ?? "";
    f.priority.value = rule.priority && rule.priority !== 1000 ? rule.priority : "";
    f.description.value = rule.description ?? "";
    showError(el, { message: "" });
    el.classList.remove("hidden");
    f.protocol.focus();
  }

  function close() {
    state.editing = null;
    el.classList.add("hidden");
  }

  function rule() {
    const direction = state.editing === null ? state.direction : state.view.spec.rules[state.editing].direction;
    const r = { direction, action: f.action.value, ethertype: f.ethertype.value };
    const text = (k) => f[k].value.trim();
    if (text("protocol")) r.protocol = text("protocol");
    if (text("ports")) r.ports = text("ports");
    if (text("icmp.type") || text("icmp.code")) {
      r.icmp = {};
      if (text("icmp.type")) r.icmp.type = text("icmp.type");
      if (text("icmp.code")) r.icmp.code = text("icmp.code");
    }
    if (text("remoteGroup")) r.remote = { group: text("remoteGroup") };
    else if (text("remote")) r.remote = text("remote");
    if (text("priority")) r.priority = text("priority");
    if (f.description.value) r.description = f.description.value;
    return r;
  }

  async function submit() {
    try {
      state.view = state.editing === null
        ? await api.post(`${path}/rules`, [rule()], state.view.revision)
        : await api.put(`${path}/rules/${ruleRef(state.view, state.editing)}`, rule(), state.view.revision);
      close();
      notify("Rule saved.", "ok");
      await done();
    } catch (e) {
      showError(el, e);
    }
  }

  return { el, open, close };
}
