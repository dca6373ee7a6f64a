// The HAProxy comparison path of the benchmark (scripts/bench-lib/haproxy.ts): the one rule
// difference, checked against the rules nshub itself renders, and the generated haproxy.cfg.
import { describe, expect, test } from "bun:test";
import { OWNER_MATCH, patchOutboundRedirect, renderHaproxyConfig } from "../../scripts/bench-lib/haproxy.ts";
import { buildInpodRuleSet } from "../../src/agent/rules/index.ts";

/** What `iptables -t nat -S NSHUB_OUTPUT` prints for nshub's own rule set. */
function natOutputListing(): string {
  const nat = buildInpodRuleSet().tables.find((t) => t.table === "nat")!;
  return ["-N NSHUB_OUTPUT", ...nat.rules.filter((r) => r.chain === "NSHUB_OUTPUT").map((r) => `-A NSHUB_OUTPUT ${r.spec}`)].join("\n") + "\n";
}

describe("the one rule difference", () => {
  test("only the outbound REDIRECT gains the owner match, at its position in the chain", () => {
    const listing = natOutputListing();
    const p = patchOutboundRedirect(listing);
    const rules = listing.split("\n").filter((l) => l.startsWith("-A "));
    expect(rules[p.position - 1]).toBe(`-A NSHUB_OUTPUT ${p.before}`);
    expect(p.before).toContain("-j REDIRECT --to-ports 15001");
    expect(p.after).toBe(p.before.replace(" -j REDIRECT", ` ${OWNER_MATCH} -j REDIRECT`));
    expect(p.after).toContain("-m mark ! --mark 0x539/0xfff -m owner ! --uid-owner 0 -j REDIRECT --to-ports 15001");
  });

  test("refuses a chain without the rule, or one already patched", () => {
    expect(() => patchOutboundRedirect("-N NSHUB_OUTPUT\n")).toThrow(/no outbound REDIRECT/);
    const patched = patchOutboundRedirect(natOutputListing());
    expect(() => patchOutboundRedirect(`-A NSHUB_OUTPUT ${patched.after}\n`)).toThrow(/already has an owner match/);
  });
});

describe("haproxy.cfg", () => {
  const cfg = renderHaproxyConfig({ pods: [{ netns: "nbn-abc123-p5", label: "pod0" }, { netns: "nbn-abc123-p6", label: "pod1" }], maxconn: 4000 });

  test("binds 15001 and 15006 inside each pod's netns and connects to the original destination from inside it", () => {
    for (const [label, ns] of [
      ["pod0", "nbn-abc123-p5"],
      ["pod1", "nbn-abc123-p6"],
    ]) {
      for (const [dir, port] of [
        ["out", 15001],
        ["in", 15006],
      ]) {
        expect(cfg).toContain(`frontend ${label}_${dir}\n  bind 0.0.0.0:${port} namespace ${ns}\n  default_backend ${label}_${dir}\nbackend ${label}_${dir}\n  server orig 0.0.0.0:0 namespace ${ns}\n`);
      }
    }
  });

  test("TCP mode, the given maxconn, HAProxy's default thread count unless asked", () => {
    expect(cfg).toContain("defaults\n  mode tcp\n");
    expect(cfg).toContain("  maxconn 4000\n");
    expect(cfg).not.toContain("nbthread");
    expect(renderHaproxyConfig({ pods: [], nbthread: 1 })).toContain("  nbthread 1\n");
  });
});
