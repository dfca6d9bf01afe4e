// Protocols (what each accepts in a rule) and the host's settings.

import * as api from "./api.js";
import { h, replace, table, card } from "./ui.js";

export function protocolsPage() {
  const body = h("div", { id: "protocols" });
  const filter = h("input", { name: "filter", id: "protocol-filter", placeholder: "Filter: tcp, 47, icmp…" });
  let all = [];
  const render = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = all.filter((p) => p.name || q).filter((p) =>
      !q || String(p.number) === q || (p.name ?? "").includes(q) || p.aliases.some((a) => a.includes(q)));
    const yes = (b) => (b ? h("span", { class: "yes" }, "yes") : h("span", { class: "muted" }, "—"));
    replace(body, table(["Number", "Name", "Aliases", "Families", "Ports", "ICMP type/code"],
      shown.map((p) => h("tr", { dataset: { protocol: p.number } },
        h("td", {}, p.number), h("td", {}, p.name ?? "—"), h("td", { class: "muted" }, p.aliases.join(", ")),
        h("td", {}, p.ethertype === "any" ? "IPv4, IPv6" : p.ethertype === "ipv4" ? "IPv4" : "IPv6"),
        h("td", {}, yes(p.ports)), h("td", {}, yes(p.icmp)))),
      "No protocol matches."));
  };
  filter.addEventListener("input", render);
  const el = h("div", {},
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Protocols"),
      h("p", { class: "muted" }, "What a rule may name: a name or alias, or any number 0–255 (unnamed ones are shown when filtered by number). Ports apply to tcp, udp, sctp, dccp and udplite; ICMP type and code to icmp and ipv6-icmp."))),
    card("Protocols", filter, body));
  return {
    el,
    crumbs: [h("span", {}, "Protocols")],
    live: false,
    async refresh() {
      all = await api.get("/v1/protocols");
      render();
    },
  };
}

export function settingsPage() {
  const body = h("div", { id: "settings" });
  const el = h("div", {},
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Settings"),
      h("p", { class: "muted" }, "The host's limits, outbound SMTP and connection-tracking timeouts; an owner changes them with `sg-ctl settings set`."))),
    body);
  const row = (k, v, note) => h("tr", {}, h("td", {}, h("code", {}, k)), h("td", { class: "num" }, String(v)), h("td", { class: "muted" }, note ?? ""));
  return {
    el,
    crumbs: [h("span", {}, "Settings")],
    live: false,
    async refresh() {
      const s = await api.get("/v1/settings");
      const timeouts = s.conntrack ?? {};
      const limits = Object.entries(s).filter(([k, v]) => k !== "conntrack" && k !== "block_outbound_smtp" && typeof v !== "object");
      replace(body,
        card("Limits", null, table(["Setting", "Value", ""], limits.map(([k, v]) => row(k, v)))),
        card("Outbound SMTP", null, table(["Setting", "Value", ""], [
          row("block_outbound_smtp", s.block_outbound_smtp ? "blocked" : "allowed",
            "Blocked: tcp/25 leaves a port only toward the remotes of an egress rule that names port 25."),
        ])),
        card("Connection tracking timeouts", null, table(["Flow", "Seconds", ""],
          Object.entries(timeouts).map(([k, v]) => row(`conntrack.${k}`, v)))));
    },
  };
}
