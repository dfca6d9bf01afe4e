// Ports: the list with their status, addresses and groups; a port with its
// packets per direction and outcome (a live chart of the last minute) and
// its tracked flows.

import * as api from "./api.js";
import { h, replace, badge, count, bytes, table, card, button, notify, chart } from "./ui.js";

const WINDOW = 60;

function portLink(name) {
  return h("a", { href: `#/ports/${api.segment(name)}`, class: "link" }, name);
}

function groupLinks(groups) {
  return groups.map((g) => h("a", { href: `#/groups/${api.segment(g)}`, class: "tag tag-link" }, g));
}

function addresses(spec) {
  const pairs = (spec.allowed_address_pairs ?? []).map((p) => (typeof p === "string" ? p : p.ip ?? JSON.stringify(p)));
  return [...spec.ips, ...pairs].join(", ") || "—";
}

export function portsPage() {
  const rows = h("div", { id: "ports-table" });
  let shown = "";
  const el = h("div", {},
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Ports"),
      h("p", { class: "muted" }, "The taps of VMs and host ends of containers' veths that sg enforces groups on."))),
    card("Ports", null, rows));
  return {
    el,
    crumbs: [h("a", { href: "#/ports" }, "Ports")],
    async refresh() {
      const ports = await api.get("/v1/ports");
      const key = JSON.stringify(ports);
      if (key === shown) return;
      shown = key;
      replace(rows, table(
        ["Name", "Interface", "MAC", "Addresses", "Groups", "Port security", "Status"],
        ports.map((p) => h("tr", { dataset: { port: p.spec.name } },
          h("td", {}, portLink(p.spec.name)),
          h("td", {}, h("code", {}, p.spec.ifname), p.spec.netns ? h("span", { class: "sub" }, `netns ${p.spec.netns}`) : null),
          h("td", {}, h("code", {}, p.spec.mac)),
          h("td", {}, addresses(p.spec)),
          h("td", {}, groupLinks(p.spec.groups)),
          h("td", {}, p.spec.port_security === false ? "off" : "on"),
          h("td", {}, badge(p.status.state), p.status.reason ? h("div", { class: "note" }, p.status.reason) : null))),
        "No ports. Register one with `sg-ctl port create`.",
      ));
    },
  };
}

export function portPage(session, name) {
  const owner = session.role === "owner";
  const path = `/v1/ports/${api.segment(name)}`;
  const history = new Map();
  let last = null;
  let shownSpec = "";
  const status = h("span", { id: "port-status" });
  const summary = h("div", { class: "summary", id: "port-summary" });
  const chartBox = h("div", { class: "chart-box", id: "port-chart" });
  const counters = h("div", { id: "port-counters" });
  const flows = h("div", { id: "port-flows" });
  const groupsBox = h("div", { id: "port-groups" });
  const el = h("div", {},
    h("div", { class: "page-head" }, h("div", {}, h("div", { class: "title-row" }, h("h1", {}, name), status))),
    h("div", { class: "grid-2" },
      card("Overview", null, summary),
      card("Security groups", null, groupsBox)),
    card("Packets per second", h("div", { class: "legend" },
      h("span", { class: "key key-pass" }, "passed"), h("span", { class: "key key-drop" }, "dropped")), chartBox),
    card("Packets by direction and outcome", null, counters),
    card("Tracked flows", null, flows));

  function remember(stats, now) {
    const total = (kind) => stats.filter((c) => kind(c.outcome)).reduce((n, c) => n + c.packets, 0);
    const sample = { pass: total((o) => o.startsWith("pass")), drop: total((o) => !o.startsWith("pass")), now };
    if (last) {
      const seconds = Math.max(0.001, (now - last.now) / 1000);
      for (const kind of ["pass", "drop"]) {
        const values = history.get(kind) ?? [];
        values.push(Math.max(0, (sample[kind] - last[kind]) / seconds));
        history.set(kind, values.slice(-WINDOW));
      }
    }
    last = sample;
  }

  function renderSpec(view) {
    const key = JSON.stringify(view);
    if (key === shownSpec) return;
    shownSpec = key;
    const s = view.spec;
    replace(status, badge(view.status.state));
    const row = (k, v) => h("div", { class: "kv" }, h("span", { class: "k" }, k), h("span", { class: "v" }, v));
    replace(summary,
      row("Interface", [h("code", {}, s.ifname), s.netns ? ` in netns ${s.netns}` : ""]),
      row("MAC", h("code", {}, s.mac)),
      row("Addresses", addresses(s)),
      row("Port security", s.port_security === false ? "off" : "on"),
      row("Policy id", view.policy_id ?? "—"),
      view.status.reason ? row("Reason", view.status.reason) : null);
    replace(groupsBox, table(["Group", ""], s.groups.map((g) => h("tr", { dataset: { group: g } },
      h("td", {}, groupLinks([g])),
      h("td", { class: "right" }, owner && s.groups.length > 1
        ? button("Detach", () => detach(g), "danger-ghost", { dataset: { action: "detach" } }) : null)))));
  }

  async function detach(group) {
    try {
      await api.post(`${path}/detach`, { groups: [group] });
      notify(`Detached ${group}.`, "ok");
    } catch (e) {
      notify(e.message);
    }
  }

  function renderStats(stats) {
    replace(chartBox, chart([
      { kind: "pass", values: history.get("pass") ?? [] },
      { kind: "drop", values: history.get("drop") ?? [] },
    ], WINDOW, "packets/s"));
    const rows = stats.map((c) => h("tr", { dataset: { direction: c.direction, outcome: c.outcome } },
      h("td", {}, c.direction === "egress" ? "egress (sent by the workload)" : "ingress (toward it)"),
      h("td", {}, h("span", { class: `action action-${c.outcome.startsWith("pass") ? "allow" : c.outcome === "reject" ? "reject" : "drop"}` }, c.outcome)),
      h("td", { class: "num" }, count(c.packets)),
      h("td", { class: "num" }, bytes(c.bytes))));
    replace(counters, table(["Direction", "Outcome", "Packets#", "Bytes#"], rows, "Nothing counted yet."));
  }

  async function renderFlows() {
    let list;
    try {
      list = await api.get(`${path}/flows`);
    } catch (e) {
      if (e.status !== 409) throw e;
      return replace(flows, h("p", { class: "muted" }, e.message));
    }
    const end = (ip, port) => (port === undefined || port === null ? ip : ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`);
    replace(flows, table(
      ["Protocol", "Local", "Remote", "State", "Origin", "Packets out / in#", "Age#"],
      list.map((f) => h("tr", {},
        h("td", {}, f.icmp_id !== undefined && f.icmp_id !== null ? `${f.protocol} id ${f.icmp_id}` : f.protocol),
        h("td", {}, h("code", {}, end(f.local, f.local_port))),
        h("td", {}, h("code", {}, end(f.remote, f.remote_port))),
        h("td", {}, f.state),
        h("td", {}, f.origin),
        h("td", { class: "num" }, `${count(f.packets_egress)} / ${count(f.packets_ingress)}`),
        h("td", { class: "num" }, `${f.age_seconds} s`))),
      "No tracked flows."));
  }

  return {
    el,
    crumbs: [h("a", { href: "#/ports" }, "Ports"), " / ", h("span", {}, name)],
    async refresh() {
      const [view, stats] = await Promise.all([api.get(path), api.get(`${path}/stats`)]);
      remember(stats, Date.now());
      renderSpec(view);
      renderStats(stats);
      await renderFlows();
    },
  };
}
