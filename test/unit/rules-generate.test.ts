// The in-pod rule set and the host probe rule as text: pinned line by line against listings
// written out here, in Istio ambient's order (cni/pkg/iptables/testdata/*.golden) with nshub's
// chain names, plus option validation and the pure planning of iptables-restore transactions.
import { describe, expect, test } from "bun:test";
import {
  RulesError,
  buildInpodRuleSet,
  canonicalRuleSpec,
  ipRouteArgs,
  ipRuleArgs,
  parseIptablesSave,
  renderHostProbeRules,
  renderInpodRules,
  resolveInpodOptions,
} from "../../src/agent/rules/index.ts";
import { failedBatchLine, splitJsonValues } from "../../src/agent/rules/iproute.ts";
import { normalizeIp, parseIpsetSave, planHostNat, planHostNatRemoval } from "../../src/agent/rules/host.ts";
import { planTable, renderRestore, snapshotTable, tokenizeSpec } from "../../src/agent/rules/iptables.ts";
import { INPOD_CHAINS } from "../../src/agent/rules/constants.ts";

const lines = (...l: string[]) => l.join("\n") + "\n";

const MANGLE = [
  "*mangle",
  ":NSHUB_PRERT - [0:0]",
  ":NSHUB_OUTPUT - [0:0]",
  "-A PREROUTING -j NSHUB_PRERT",
  "-A OUTPUT -j NSHUB_OUTPUT",
  "-A NSHUB_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
  "-A NSHUB_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
  "COMMIT",
];

describe("in-pod rule text", () => {
  test("IPv4 default (no DNS capture): mangle + nat, Istio's order", () => {
    expect(renderInpodRules()).toBe(
      lines(
        ...MANGLE,
        "*nat",
        ":NSHUB_PRERT - [0:0]",
        ":NSHUB_OUTPUT - [0:0]",
        "-A OUTPUT -j NSHUB_OUTPUT",
        "-A PREROUTING -j NSHUB_PRERT",
        "-A NSHUB_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT",
        "-A NSHUB_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT",
        "-A NSHUB_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006",
        "-A NSHUB_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
        "-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
        "-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
        "COMMIT",
      ),
    );
  });

  test("explicit defaults give the same text", () => {
    expect(
      renderInpodRules({ mark: 0x539, connmark: 0x111, markMask: 0xfff, outboundPort: 15001, inboundPort: 15006, hbonePort: 15008, probeAddress: "169.254.7.127", dnsCapture: false, family: "ipv4" }),
    ).toBe(renderInpodRules());
  });

  test("DNS capture on: the two DNS REDIRECTs before the 0x111 ACCEPT, and the raw table", () => {
    expect(renderInpodRules({ dnsCapture: true })).toBe(
      lines(
        ...MANGLE,
        "*nat",
        ":NSHUB_PRERT - [0:0]",
        ":NSHUB_OUTPUT - [0:0]",
        "-A OUTPUT -j NSHUB_OUTPUT",
        "-A PREROUTING -j NSHUB_PRERT",
        "-A NSHUB_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT",
        "-A NSHUB_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT",
        "-A NSHUB_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006",
        "-A NSHUB_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-port 15053",
        "-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053",
        "-A NSHUB_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
        "-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
        "-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
        "COMMIT",
        "*raw",
        ":NSHUB_OUTPUT - [0:0]",
        ":NSHUB_PRERT - [0:0]",
        "-A PREROUTING -j NSHUB_PRERT",
        "-A OUTPUT -j NSHUB_OUTPUT",
        "-A NSHUB_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1",
        "-A NSHUB_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1",
        "COMMIT",
      ),
    );
  });

  test("IPv6: ::1/128 and the IPv6 probe address", () => {
    expect(renderInpodRules({ family: "ipv6" })).toBe(
      lines(
        ...MANGLE,
        "*nat",
        ":NSHUB_PRERT - [0:0]",
        ":NSHUB_OUTPUT - [0:0]",
        "-A OUTPUT -j NSHUB_OUTPUT",
        "-A PREROUTING -j NSHUB_PRERT",
        "-A NSHUB_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff -p tcp -m tcp -j ACCEPT",
        "-A NSHUB_OUTPUT -d fd16:9254:7127:1337:ffff:ffff:ffff:ffff -p tcp -m tcp -j ACCEPT",
        "-A NSHUB_PRERT ! -d ::1/128 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006",
        "-A NSHUB_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
        "-A NSHUB_OUTPUT ! -d ::1/128 -o lo -j ACCEPT",
        "-A NSHUB_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
        "COMMIT",
      ),
    );
  });

  test("IPv6 with DNS capture uses ::1/128 in the TCP DNS rule too", () => {
    const text = renderInpodRules({ family: "ipv6", dnsCapture: true });
    expect(text).toContain("-A NSHUB_OUTPUT ! -d ::1/128 -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053\n");
    expect(text).not.toContain("127.0.0.1");
    expect(text).toContain("*raw\n");
  });

  test("non-default mark, ports and probe address are substituted everywhere", () => {
    const text = renderInpodRules({ mark: 0x2a, connmark: 0x7, markMask: 0xff, outboundPort: 16001, inboundPort: 16006, hbonePort: 16008, probeAddress: "169.254.9.9" });
    expect(text).toContain("-A NSHUB_PRERT -m mark --mark 0x2a/0xff -j CONNMARK --set-xmark 0x7/0xff\n");
    expect(text).toContain("-A NSHUB_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 16008 -m mark ! --mark 0x2a/0xff -j REDIRECT --to-ports 16006\n");
    expect(text).toContain("-A NSHUB_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x2a/0xff -j REDIRECT --to-ports 16001\n");
    expect(text).toContain("-A NSHUB_PRERT -s 169.254.9.9 -p tcp -m tcp -j ACCEPT\n");
    expect(text).not.toMatch(/0x539|0x111|15001|15006|15008|169\.254\.7\.127/);
  });

  test("ip rule and route arguments", () => {
    const o = resolveInpodOptions();
    expect(ipRuleArgs(o)).toEqual(["fwmark", "0x111/0xfff", "lookup", "100", "pref", "32764"]);
    expect(ipRouteArgs(o, "ipv4")).toEqual(["local", "0.0.0.0/0", "dev", "lo", "table", "100"]);
    expect(ipRouteArgs(o, "ipv6")).toEqual(["local", "::/0", "dev", "lo", "table", "100"]);
  });
});

describe("option validation", () => {
  const bad: Array<[string, Record<string, unknown>, RegExp]> = [
    ["mark 0", { mark: 0 }, /mark must be an integer/],
    ["mark above 32 bits", { mark: 0x1_0000_0000 }, /mark must be an integer/],
    ["mark outside the mask", { mark: 0x1539 }, /mark 0x1539 has bits outside markMask 0xfff/],
    ["fractional mark", { mark: 1.5 }, /mark must be an integer/],
    ["connmark outside the mask", { connmark: 0x1111 }, /connmark 0x1111 has bits outside/],
    ["mark equal to connmark", { mark: 0x111 }, /mark and connmark must differ/],
    ["mask 0", { markMask: 0 }, /markMask must be/],
    ["outbound port 0", { outboundPort: 0 }, /outboundPort must be an integer in 1..65535, got 0/],
    ["inbound port 65536", { inboundPort: 65536 }, /inboundPort must be an integer in 1..65535, got 65536/],
    ["hbone port negative", { hbonePort: -1 }, /hbonePort must be/],
    ["dns port as string", { dnsPort: "15053" }, /dnsPort must be/],
    ["two equal ports", { inboundPort: 15001 }, /outboundPort and inboundPort must differ/],
    ["probe address not IPv4", { probeAddress: "169.254.7.1277" }, /probeAddress must be an IPv4 address/],
    ["probe address hostname", { probeAddress: "example.com" }, /probeAddress must be an IPv4 address/],
    ["IPv6 probe address not IPv6", { probeAddressV6: "169.254.7.127" }, /probeAddressV6 must be an IPv6 address/],
    ["dnsCapture not boolean", { dnsCapture: "yes" }, /dnsCapture must be a boolean/],
    ["route table main", { routeTable: 254 }, /routeTable must be/],
    ["rule priority 0", { rulePriority: 0 }, /rulePriority must be/],
  ];
  for (const [name, opts, msg] of bad) {
    test(`${name} is rejected`, () => {
      let err: unknown;
      try {
        renderInpodRules(opts as never);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RulesError);
      expect((err as RulesError).reason).toBe("invalid-input");
      expect((err as RulesError).step).toBe("validate options");
      expect((err as Error).message).toMatch(msg);
    });
  }

  test("boundary values are accepted", () => {
    expect(() => renderInpodRules({ outboundPort: 1, inboundPort: 65535, mark: 0xfff, connmark: 1 })).not.toThrow();
    expect(() => renderInpodRules({ markMask: 0xffffffff, mark: 0xffffffff })).not.toThrow();
  });
});

describe("canonical form (what iptables-save prints for our rules)", () => {
  // Right-hand sides: copied from iptables-nft-save / iptables-legacy-save v1.8.9 output after
  // restoring the rules above.
  const cases: Array<[string, string]> = [
    ["-s 169.254.7.127 -p tcp -m tcp -j ACCEPT", "-s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT"],
    ["! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006", "! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006"],
    ["! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-port 15053", "! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053"],
    ["! -d 127.0.0.1/32 -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053", "! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053"],
    ["! -d 127.0.0.1/32 -o lo -j ACCEPT", "! -d 127.0.0.1/32 -o lo -j ACCEPT"],
    ["-d fd16:9254:7127:1337:ffff:ffff:ffff:ffff -p tcp -m tcp -j ACCEPT", "-d fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -m tcp -j ACCEPT"],
    [
      "-m owner --socket-exists -p tcp -m set --match-set nshub-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127",
      "-p tcp -m owner --socket-exists -m set --match-set nshub-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127",
    ],
    ["-m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff", "-m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"],
  ];
  for (const [input, saved] of cases) {
    test(input, () => expect(canonicalRuleSpec(input)).toBe(saved));
  }

  test("tokenizer keeps quoted words whole", () => {
    expect(tokenizeSpec('-m comment --comment "a \\"b\\" c" -j X')).toEqual(["-m", "comment", "--comment", 'a "b" c', "-j", "X"]);
  });
});

describe("planning iptables-restore transactions", () => {
  const mangle = buildInpodRuleSet().tables[0]!;
  const saved = (text: string) => parseIptablesSave(text).get("mangle");
  const fullMangle = saved(
    lines(
      "# Generated by iptables-nft-save",
      "*mangle",
      ":PREROUTING ACCEPT [10:600]",
      ":OUTPUT ACCEPT [0:0]",
      ":NSHUB_OUTPUT - [0:0]",
      ":NSHUB_PRERT - [0:0]",
      "-A PREROUTING -j NSHUB_PRERT",
      "-A PREROUTING -j OTHER",
      "-A OUTPUT -j NSHUB_OUTPUT",
      "-A NSHUB_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
      "-A NSHUB_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
      "COMMIT",
    ),
  );

  test("parse: chains with their rules, counters and comments ignored", () => {
    expect(fullMangle?.chains.get("PREROUTING")).toEqual(["-j NSHUB_PRERT", "-j OTHER"]);
    expect(fullMangle?.chains.get("NSHUB_PRERT")).toEqual(["-m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff"]);
    expect(fullMangle?.chains.get("INPUT")).toBeUndefined();
  });

  test("re-apply keeps existing jumps: only declarations (flush) and the rules", () => {
    expect(planTable(fullMangle, mangle, INPOD_CHAINS)).toEqual([
      ":NSHUB_PRERT - [0:0]",
      ":NSHUB_OUTPUT - [0:0]",
      "-A NSHUB_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
      "-A NSHUB_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
    ]);
  });

  test("duplicate and foreign jumps to our chains are deleted, missing ones appended", () => {
    const messy = saved(
      lines("*mangle", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":NSHUB_PRERT - [0:0]", "-A PREROUTING -j NSHUB_PRERT", "-A PREROUTING -j NSHUB_PRERT", "-A PREROUTING -p tcp -j NSHUB_PRERT", "COMMIT"),
    );
    expect(planTable(messy, mangle, INPOD_CHAINS).slice(0, 5)).toEqual([
      ":NSHUB_PRERT - [0:0]",
      ":NSHUB_OUTPUT - [0:0]",
      "-D PREROUTING -j NSHUB_PRERT",
      "-D PREROUTING -p tcp -j NSHUB_PRERT",
      "-A OUTPUT -j NSHUB_OUTPUT",
    ]);
  });

  test("removal: jumps deleted, then chains flushed and deleted; nothing when nothing is there", () => {
    expect(planTable(fullMangle, undefined, INPOD_CHAINS)).toEqual([
      "-D PREROUTING -j NSHUB_PRERT",
      "-D OUTPUT -j NSHUB_OUTPUT",
      "-F NSHUB_PRERT",
      "-X NSHUB_PRERT",
      "-F NSHUB_OUTPUT",
      "-X NSHUB_OUTPUT",
    ]);
    expect(planTable(saved("*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), undefined, INPOD_CHAINS)).toEqual([]);
    expect(renderRestore([{ table: "mangle", lines: [] }])).toBe("");
  });

  test("undo: a snapshot of the previous state plans back to it", () => {
    const snap = snapshotTable("mangle", fullMangle, INPOD_CHAINS);
    expect(snap?.chains).toEqual(["NSHUB_PRERT", "NSHUB_OUTPUT"]);
    expect(snap?.jumps).toEqual([
      { chain: "PREROUTING", spec: "-j NSHUB_PRERT" },
      { chain: "OUTPUT", spec: "-j NSHUB_OUTPUT" },
    ]);
    expect(snapshotTable("mangle", saved("*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), INPOD_CHAINS)).toBeUndefined();
  });
});

describe("host probe rule", () => {
  test("text for a node without it: chain, jump inserted at 1, the SNAT rule", () => {
    expect(renderHostProbeRules()).toBe(
      lines(
        "*nat",
        ":NSHUB_POSTRT - [0:0]",
        "-I POSTROUTING 1 -j NSHUB_POSTRT",
        "-A NSHUB_POSTRT -m owner --socket-exists -p tcp -m set --match-set nshub-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127",
        "COMMIT",
      ),
    );
  });

  test("a jump that is already first is kept; one that is not first is moved", () => {
    const nat = (...rules: string[]) => parseIptablesSave(lines("*nat", ":POSTROUTING ACCEPT [0:0]", ":NSHUB_POSTRT - [0:0]", ...rules, "COMMIT")).get("nat");
    const rule = "-A NSHUB_POSTRT -m owner --socket-exists -p tcp -m set --match-set s dst -j SNAT --to-source 169.254.7.127";
    expect(planHostNat(nat("-A POSTROUTING -j NSHUB_POSTRT", "-A POSTROUTING -j MASQ"), "s", "169.254.7.127")).toEqual([":NSHUB_POSTRT - [0:0]", rule]);
    expect(planHostNat(nat("-A POSTROUTING -j MASQ", "-A POSTROUTING -j NSHUB_POSTRT"), "s", "169.254.7.127")).toEqual([
      ":NSHUB_POSTRT - [0:0]",
      "-D POSTROUTING -j NSHUB_POSTRT",
      "-I POSTROUTING 1 -j NSHUB_POSTRT",
      rule,
    ]);
    expect(planHostNatRemoval(nat("-A POSTROUTING -j NSHUB_POSTRT"))).toEqual(["-D POSTROUTING -j NSHUB_POSTRT", "-F NSHUB_POSTRT", "-X NSHUB_POSTRT"]);
    expect(planHostNatRemoval(parseIptablesSave("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n").get("nat"))).toEqual([]);
  });

  test("ipset save parsing and IP normalization", () => {
    const text = lines(
      "create nshub-inpod-probes-v4 hash:ip family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0x1",
      'add nshub-inpod-probes-v4 10.1.2.3 comment "6f1c-uid"',
      "add nshub-inpod-probes-v4 10.1.2.4",
      'add other 10.9.9.9 comment "x"',
    );
    expect(parseIpsetSave(text, "nshub-inpod-probes-v4")).toEqual([
      { ip: "10.1.2.3", uid: "6f1c-uid" },
      { ip: "10.1.2.4", uid: "" },
    ]);
    expect(normalizeIp("10.0.0.1")).toEqual({ family: "ipv4", text: "10.0.0.1" });
    expect(normalizeIp("FD00:0:0::0001")).toEqual({ family: "ipv6", text: "fd00::1" });
    expect(normalizeIp("10.0.0.300")).toBeUndefined();
    expect(normalizeIp("example.com")).toBeUndefined();
    expect(normalizeIp("10.0.0.1 comment x")).toBeUndefined();
  });
});

describe("ip -batch output", () => {
  test("one JSON value per command, split however ip spaced them; an unfinished last one is dropped", () => {
    const rules = '[{"priority":0,"src":"all","table":"local"},{"priority":32764,"src":"all","fwmark":"0x111","fwmask":"0xfff","table":"100"}]';
    const routes = '[{"type":"local","dst":"default","dev":"lo","table":"100","scope":"host","flags":[]}]';
    expect(splitJsonValues(`${rules}\n${routes}\n`)).toEqual([rules, routes]);
    expect(splitJsonValues(`${rules}\n[]\n`)).toEqual([rules, "[]"]);
    expect(splitJsonValues(`${rules}${routes}`)).toEqual([rules, routes]);
    // Brackets and quotes inside strings do not count.
    const tricky = '[{"ifname":"a]b\\"[","x":{}}]';
    expect(splitJsonValues(`${tricky}\n[]`)).toEqual([tricky, "[]"]);
    expect(JSON.parse(splitJsonValues(tricky)[0]!)).toEqual([{ ifname: 'a]b"[', x: {} }]);
    // A command that failed after printing "[" (strict dump of a missing table).
    expect(splitJsonValues(`${rules}\n[`)).toEqual([rules]);
    expect(splitJsonValues("")).toEqual([]);
  });

  test("the failed line is read from ip's stderr", () => {
    expect(failedBatchLine("Error: Nexthop device is not up.\nCommand failed -:2\n")).toBe(2);
    expect(failedBatchLine("RTNETLINK answers: File exists\nCommand failed -:1\n")).toBe(1);
    expect(failedBatchLine("ip: command not found")).toBeUndefined();
  });
});
