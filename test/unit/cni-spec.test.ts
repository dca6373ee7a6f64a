// The CNI plugin's parsing of its inputs: environment, CNI_ARGS, netconf, prevResult (0.3.x /
// 0.4.0 and 1.x shapes), and the byte-exact extraction of prevResult.
import { describe, expect, test } from "bun:test";
import {
  CniCode,
  CniFailure,
  containerPod,
  DEFAULT_CONTAINER_NAMESPACE,
  dns1123Name,
  isIPv6,
  k8sPodFromArgs,
  parseCidr,
  parseCniArgs,
  parseEnv,
  parseNetConf,
  parsePrevResult,
  rawTopLevelValue,
  SUPPORTED_VERSIONS,
} from "../../src/cni/spec.ts";

function failure(fn: () => unknown): CniFailure {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniFailure) return e;
    throw e;
  }
  throw new Error("expected a CniFailure");
}

const ADD_ENV = { CNI_COMMAND: "ADD", CNI_CONTAINERID: "abc123", CNI_NETNS: "/var/run/netns/p1", CNI_IFNAME: "eth0", CNI_PATH: "/opt/cni/bin" };

describe("parseEnv", () => {
  test("a complete ADD environment", () => {
    expect(parseEnv({ ...ADD_ENV, CNI_ARGS: "A=1" })).toEqual({ command: "ADD", containerId: "abc123", netns: "/var/run/netns/p1", ifname: "eth0", args: "A=1", path: "/opt/cni/bin" });
  });

  test("CNI_COMMAND missing or unknown → code 4", () => {
    const none = failure(() => parseEnv({}));
    expect(none.code).toBe(CniCode.InvalidEnv);
    expect(none.message).toContain("CNI_COMMAND is not set");
    const bad = failure(() => parseEnv({ CNI_COMMAND: "ATTACH" }));
    expect(bad.code).toBe(4);
    expect(bad.message).toBe('unknown CNI_COMMAND "ATTACH"');
  });

  test("each command's required variables are named when missing (code 4)", () => {
    const add = failure(() => parseEnv({ CNI_COMMAND: "ADD", CNI_CONTAINERID: "x", CNI_PATH: "/p" }));
    expect(add.code).toBe(4);
    expect(add.message).toBe("required environment variables CNI_NETNS, CNI_IFNAME missing for ADD");
    const del = failure(() => parseEnv({ CNI_COMMAND: "DEL", CNI_IFNAME: "eth0", CNI_PATH: "/p" }));
    expect(del.message).toBe("required environment variable CNI_CONTAINERID missing for DEL");
    // DEL does not need CNI_NETNS (the runtime may have lost the netns already).
    expect(parseEnv({ CNI_COMMAND: "DEL", CNI_CONTAINERID: "x", CNI_IFNAME: "eth0", CNI_PATH: "/p" }).netns).toBe("");
    // VERSION needs nothing else.
    expect(parseEnv({ CNI_COMMAND: "VERSION" }).command).toBe("VERSION");
  });

  test("malformed container id, interface name or netns path → code 4", () => {
    expect(failure(() => parseEnv({ ...ADD_ENV, CNI_CONTAINERID: "bad id;rm" })).message).toContain("CNI_CONTAINERID");
    expect(failure(() => parseEnv({ ...ADD_ENV, CNI_IFNAME: "a-very-long-interface-name" })).message).toContain("longer than 15 characters");
    expect(failure(() => parseEnv({ ...ADD_ENV, CNI_IFNAME: "eth/0" })).code).toBe(4);
    expect(failure(() => parseEnv({ ...ADD_ENV, CNI_NETNS: "relative/ns" })).message).toBe('CNI_NETNS "relative/ns" must be an absolute path');
  });
});

describe("CNI_ARGS", () => {
  test("pairs are parsed; the Kubernetes pod is taken from them", () => {
    const args = parseCniArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234-5678;X=a=b");
    expect(args.get("X")).toBe("a=b");
    expect(k8sPodFromArgs(args)).toEqual({ namespace: "shop", name: "web-0", uid: "1234-5678", serviceAccount: "" });
  });

  test("without namespace and name it is not a Kubernetes pod; a missing uid is kept empty", () => {
    expect(k8sPodFromArgs(parseCniArgs(""))).toBeUndefined();
    expect(k8sPodFromArgs(parseCniArgs("K8S_POD_NAME=x"))).toBeUndefined();
    expect(k8sPodFromArgs(parseCniArgs("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"))).toEqual({ namespace: "a", name: "b", uid: "", serviceAccount: "" });
    expect(k8sPodFromArgs(parseCniArgs("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_SERVICE_ACCOUNT=sa"))?.serviceAccount).toBe("sa");
  });

  test("a container CNI_ARGS names no pod for is named after CNI_CONTAINERID: same pod every time, Kubernetes names", () => {
    // ctr run --cni: CNI_ARGS empty, CNI_CONTAINERID "<containerd namespace>-<container id>".
    expect(containerPod("default-web1")).toEqual({ namespace: "default", name: "default-web1", uid: "default-web1", serviceAccount: "" });
    expect(containerPod("default-web1", "ctr")).toEqual({ namespace: "ctr", name: "default-web1", uid: "default-web1", serviceAccount: "" });
    expect(DEFAULT_CONTAINER_NAMESPACE).toBe("default");
    const hex = "0123456789abcdef".repeat(4);
    expect(containerPod(hex)).toEqual({ namespace: "default", name: hex, uid: hex, serviceAccount: "" });
    // Upper case, '_', and '-' or '.' where a DNS name cannot have them; the uid stays the id.
    const cases: Array<[string, string]> = [
      ["Default_Web.1", "default-web.1"],
      ["k8s.io-pause", "k8s.io-pause"],
      ["a..b", "a.b"],
      ["x-.-y_", "x.y"],
      ["A_", "a"],
      ["n.-_.m", "n.m"],
    ];
    for (const [id, name] of cases) {
      expect(dns1123Name(id)).toBe(name);
      expect(containerPod(id).uid).toBe(id);
    }
    // Longer than the agent's UID rule (128): the uid is the id's SHA-256; the name is cut at 253.
    const long = "c".repeat(129);
    expect(containerPod("c".repeat(128)).uid).toBe("c".repeat(128));
    expect(containerPod(long).uid).toBe(new Bun.CryptoHasher("sha256").update(long).digest("hex"));
    const veryLong = `x${"ab-".repeat(85)}`; // 256 characters, the 253rd a '-'
    const name = containerPod(veryLong).name;
    expect(name).toBe(`x${"ab-".repeat(83)}ab`);
    expect(name.length).toBeLessThanOrEqual(253);
    expect(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(name)).toBe(true);
    expect(failure(() => containerPod("")).code).toBe(4);
  });

  test("a pair without '=' → code 4", () => {
    const f = failure(() => parseCniArgs("K8S_POD_NAME=x;oops"));
    expect(f.code).toBe(4);
    expect(f.message).toBe('CNI_ARGS: invalid pair "oops"');
  });
});

describe("netconf", () => {
  const conf = (o: Record<string, unknown>) => JSON.stringify({ cniVersion: "1.0.0", name: "k8s", type: "nshub-cni", ...o });

  test("malformed JSON, empty input, non-object → code 6", () => {
    expect(failure(() => parseNetConf("{ not json")).code).toBe(CniCode.DecodingFailure);
    expect(failure(() => parseNetConf("")).message).toBe("no network configuration on stdin");
    const arr = failure(() => parseNetConf("[1,2]"));
    expect(arr.code).toBe(6);
    expect(arr.message).toBe("network configuration must be a JSON object, got an array");
  });

  test("cniVersion missing or mistyped → 7; unsupported → 1", () => {
    expect(failure(() => parseNetConf('{"name":"n","type":"t"}'))).toMatchObject({ code: 7, message: "network configuration has no cniVersion" });
    expect(failure(() => parseNetConf(conf({ cniVersion: 1 })))).toMatchObject({ code: 7, message: "network configuration: cniVersion must be a string, got a number" });
    for (const v of ["0.2.0", "0.1.0", "1.2.0", "2.0.0", "latest"]) {
      const f = failure(() => parseNetConf(conf({ cniVersion: v })));
      expect(f.code).toBe(CniCode.IncompatibleVersion);
      expect(f.message).toBe(`incompatible CNI version "${v}"`);
      expect(f.details).toBe(`nshub-cni supports ${SUPPORTED_VERSIONS.join(", ")}`);
    }
    for (const v of SUPPORTED_VERSIONS) expect(parseNetConf(conf({ cniVersion: v })).cniVersion).toBe(v);
  });

  test("name and type are required strings; nshub's own keys are type-checked", () => {
    expect(failure(() => parseNetConf('{"cniVersion":"1.0.0","type":"t"}')).message).toBe("network configuration has no name");
    expect(failure(() => parseNetConf(conf({ type: 5 }))).message).toBe("network configuration: type must be a string, got a number");
    expect(failure(() => parseNetConf(conf({ agentSocket: "rel.sock" }))).message).toContain("agentSocket must be an absolute path");
    expect(failure(() => parseNetConf(conf({ timeoutMs: -1 }))).message).toContain("timeoutMs must be an integer from 1 to 120000");
    expect(failure(() => parseNetConf(conf({ logLevel: "loud" }))).code).toBe(7);
    for (const bad of ["", "Default", "a_b", "-a", "a.b", "x".repeat(64), 7]) {
      const f = failure(() => parseNetConf(conf({ containerNamespace: bad })));
      expect([f.code, f.message]).toEqual([7, `network configuration: containerNamespace must be a Kubernetes namespace name (a DNS-1123 label of at most 63 characters), got ${JSON.stringify(bad)}`]);
    }
    expect(parseNetConf(conf({ agentSocket: "/run/a.sock", timeoutMs: 2000, logFile: "stderr", logLevel: "debug", containerNamespace: "ctr-1", ipMasq: true })).plugin).toEqual({
      agentSocket: "/run/a.sock",
      containerNamespace: "ctr-1",
      timeoutMs: 2000,
      logFile: "stderr",
      logLevel: "debug",
    });
    expect(parseNetConf(conf({ containerNamespace: "x".repeat(63) })).plugin.containerNamespace).toBe("x".repeat(63));
  });

  test("prevResult is kept as its exact source text (escapes, spacing and number forms untouched)", () => {
    const prev = '{ "cniVersion":"1.0.0", "ips" : [ {"address":"10.0.0.5/24","gateway":"10.0.0.1","interface":1} ],\n "dns":{"search":["a\\u003cb","\\"q\\""]}, "n": 1.50e1, "z": null }';
    const text = `{"cniVersion":"1.0.0","name":"k8s","type":"nshub-cni","prevResult":${prev},"after":{"prevResult":1}}`;
    const c = parseNetConf(text);
    expect(c.prevResultRaw).toBe(prev);
    expect(JSON.parse(c.prevResultRaw!)).toEqual(c.prevResult);
    expect(parseNetConf(conf({})).prevResultRaw).toBeUndefined();
  });

  test("rawTopLevelValue: last duplicate wins like JSON.parse; escaped keys; scalars", () => {
    expect(rawTopLevelValue('{"a":1,"a":[2, 3]}', "a")).toBe("[2, 3]");
    expect(rawTopLevelValue('{"p\\u0072evResult":{"x":"}"}}', "prevResult")).toBe('{"x":"}"}');
    expect(rawTopLevelValue('{"a":"s\\"}","b":true}', "b")).toBe("true");
    expect(rawTopLevelValue('{"a":-1.5e-3 }', "a")).toBe("-1.5e-3");
    expect(rawTopLevelValue("{}", "a")).toBeUndefined();
  });
});

describe("prevResult", () => {
  test("1.x shape: ips[].address; host-side interfaces (no sandbox) are skipped", () => {
    const prev = {
      cniVersion: "1.0.0",
      interfaces: [{ name: "cni0", mac: "aa" }, { name: "veth1", mac: "bb" }, { name: "eth0", mac: "cc", sandbox: "/var/run/netns/p" }],
      ips: [
        { address: "10.22.0.7/16", gateway: "10.22.0.1", interface: 2 },
        { address: "10.22.0.1/16", interface: 0 },
        { address: "fd00::7/64", interface: 2 },
        { address: "10.22.0.7/16", interface: 2 },
      ],
    };
    expect(parsePrevResult(prev, "ADD", "1.0.0").ips).toEqual(["10.22.0.7", "fd00::7"]);
  });

  test("0.3.x / 0.4.0 shape with ips[].version", () => {
    const prev = { cniVersion: "0.4.0", interfaces: [{ name: "eth0", sandbox: "/proc/1/ns/net" }], ips: [{ version: "4", address: "192.168.1.9/24", interface: 0 }, { version: "6", address: "2001:db8::9/64" }] };
    expect(parsePrevResult(prev, "ADD", "0.4.0").ips).toEqual(["192.168.1.9", "2001:db8::9"]);
    expect(parsePrevResult({ cniVersion: "0.3.1", ips: [{ version: "4", address: "10.1.1.1/32" }] }, "ADD", "0.3.1").ips).toEqual(["10.1.1.1"]);
  });

  test("no ips at all is a pod without IP (the agent decides); an absent interface index is the pod's", () => {
    expect(parsePrevResult({ cniVersion: "1.0.0" }, "ADD", "1.0.0").ips).toEqual([]);
    expect(parsePrevResult({ ips: [{ address: "10.0.0.2/8" }] }, "ADD", "1.1.0").ips).toEqual(["10.0.0.2"]);
  });

  test("missing prevResult → 7 with a hint to chain the plugin last", () => {
    const f = failure(() => parsePrevResult(undefined, "ADD", "1.0.0"));
    expect(f.code).toBe(CniCode.InvalidNetconf);
    expect(f.message).toBe("ADD needs prevResult: nshub-cni is a chained plugin and must come after the plugin that sets up the pod's interface");
    expect(f.details).toContain("list nshub-cni last");
  });

  test("wrong prevResult shapes → precise code 7 (or 1 for the 0.2.0 shape)", () => {
    const cases: Array<[unknown, string, number?]> = [
      ["a string", "prevResult must be a JSON object (a CNI result), got a string"],
      [[1], "prevResult must be a JSON object (a CNI result), got an array"],
      [{ ips: {} }, "prevResult.ips must be an array, got an object"],
      [{ ips: [5] }, "prevResult.ips[0] must be an object, got a number"],
      [{ ips: [{ gateway: "10.0.0.1" }] }, 'prevResult.ips[0].address must be a string like "10.0.0.5/24", got nothing'],
      [{ ips: [{ address: "10.0.0.5" }] }, 'prevResult.ips[0].address "10.0.0.5" is not an IP address with a prefix length (like "10.0.0.5/24")'],
      [{ ips: [{ address: "300.0.0.5/24" }] }, 'prevResult.ips[0].address "300.0.0.5/24" is not an IP address with a prefix length (like "10.0.0.5/24")'],
      [{ ips: [{ address: "10.0.0.5/33" }] }, 'prevResult.ips[0].address "10.0.0.5/33" is not an IP address with a prefix length (like "10.0.0.5/24")'],
      [{ ips: [{ address: "10.0.0.5/24", version: "6" }] }, 'prevResult.ips[0].version is "6" but the address 10.0.0.5/24 is IPv4'],
      [{ ips: [{ address: "10.0.0.5/24", version: 4 }] }, 'prevResult.ips[0].version must be "4" or "6", got 4'],
      [{ interfaces: [{ name: "eth0", sandbox: "/x" }], ips: [{ address: "10.0.0.5/24", interface: 3 }] }, "prevResult.ips[0].interface 3 is out of range (prevResult.interfaces has 1)"],
      [{ ips: [{ address: "10.0.0.5/24", interface: "0" }] }, 'prevResult.ips[0].interface must be a non-negative integer index into prevResult.interfaces, got "0"'],
      [{ interfaces: "eth0" }, "prevResult.interfaces must be an array, got a string"],
      [{ cniVersion: 4 }, "prevResult.cniVersion must be a string, got a number"],
      [{ ip4: { ip: "10.0.0.5/24" } }, "prevResult has the CNI 0.2.0 shape (ip4/ip6); nshub-cni needs a 0.3.0 or later result", CniCode.IncompatibleVersion],
    ];
    for (const [prev, msg, code] of cases) {
      const f = failure(() => parsePrevResult(prev, "ADD", "1.0.0"));
      expect({ code: f.code, msg: f.message }).toEqual({ code: code ?? CniCode.InvalidNetconf, msg });
    }
    // A 0.4.0 result must carry ips[].version.
    expect(failure(() => parsePrevResult({ cniVersion: "0.4.0", ips: [{ address: "10.0.0.5/24" }] }, "ADD", "0.4.0")).message).toBe("prevResult.ips[0].version is required in a CNI 0.4.0 result");
  });

  test("address parsing", () => {
    expect(parseCidr("fe80::1/64")).toEqual({ ip: "fe80::1", prefix: 64, family: 6 });
    expect(parseCidr("::ffff:10.0.0.1/128")?.family).toBe(6);
    expect(parseCidr("10.0.0.1/x")).toBeUndefined();
    expect(isIPv6("1:2:3:4:5:6:7:8")).toBe(true);
    expect(isIPv6("1:2:3:4:5:6:7:8:9")).toBe(false);
    expect(isIPv6("1::2::3")).toBe(false);
  });
});
