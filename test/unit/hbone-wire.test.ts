// The HBONE wire helpers against ztunnel's own examples (src/proxy/outbound.rs tests
// build_forwarded, src/proxy.rs parse_forwarded_host, src/baggage.rs).
import { expect, test } from "bun:test";
import { buildBaggage, buildForwarded, formatAuthority, h2Settings, newTraceparent, parseAuthority, parseForwardedFor, parseForwardedHost } from "../../src/hbone/index.ts";

test(":authority: IPv4 and bracketed IPv6 round trip; hostnames, bad ports and garbage refused with the reason", () => {
  expect(parseAuthority("10.0.0.1:8080")).toEqual({ ip: "10.0.0.1", port: 8080 });
  expect(parseAuthority("[fd00::1]:80")).toEqual({ ip: "fd00::1", port: 80 });
  expect(formatAuthority({ ip: "fd00::1", port: 80 })).toBe("[fd00::1]:80");
  expect(formatAuthority({ ip: "10.0.0.1", port: 8080 })).toBe("10.0.0.1:8080");
  expect(() => parseAuthority(undefined)).toThrow("missing :authority");
  expect(() => parseAuthority("svc.ns.svc.cluster.local:80")).toThrow("is not an IP address (hostname targets are not supported)");
  expect(() => parseAuthority("10.0.0.1:0")).toThrow("port 0 out of range");
  expect(() => parseAuthority("10.0.0.1:70000")).toThrow("port 70000 out of range");
  expect(() => parseAuthority("fd00::1:80")).toThrow("is not <ip>:<port>");
  expect(() => parseAuthority("10.0.0.1")).toThrow("is not <ip>:<port>");
});

test("forwarded as ztunnel builds it, and the client address read back", () => {
  expect(buildForwarded({ ip: "127.0.0.1", port: 80 })).toBe('for="127.0.0.1:80"');
  expect(buildForwarded({ ip: "::1", port: 80 })).toBe('for="[::1]:80"');
  expect(buildForwarded({ ip: "10.0.0.1", port: 1 }, "svc.ns.svc.cluster.local")).toBe('for="10.0.0.1:1";host=svc.ns.svc.cluster.local');
  expect(parseForwardedFor('for="10.0.0.1:1";host=svc')).toEqual({ ip: "10.0.0.1", port: 1 });
  expect(parseForwardedFor('for="[::1]:80"')).toEqual({ ip: "::1", port: 80 });
  expect(parseForwardedFor("for=192.0.2.60;proto=http, for=198.51.100.17")).toEqual({ ip: "192.0.2.60" });
  expect(parseForwardedFor("for=_hidden")).toBeUndefined();
  expect(parseForwardedFor(undefined)).toBeUndefined();
  expect(parseForwardedHost('for="10.0.0.1:1";host="svc.ns"')).toBe("svc.ns");
  expect(parseForwardedHost('for="10.0.0.1:1"')).toBeUndefined();
});

test("baggage in ztunnel's key order; traceparent in W3C form; settings without setLocalWindowSize", () => {
  expect(buildBaggage({ cluster: "Kubernetes", namespace: "ns-a", workloadType: "deployment", workloadName: "web", service: "web", revision: "v1" })).toBe(
    "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns-a,k8s.deployment.name=web,service.name=web,service.version=v1",
  );
  const t = newTraceparent();
  expect(t).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
  expect(newTraceparent()).not.toBe(t);
  expect(h2Settings(200)).toEqual({ enablePush: false, initialWindowSize: 4 << 20, maxFrameSize: 1 << 20, maxHeaderListSize: 65536, maxConcurrentStreams: 200 });
});
