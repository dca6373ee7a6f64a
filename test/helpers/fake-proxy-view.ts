// A stand-in ProxyView for tests of the admin servers and the operator CLI: no pods, no
// connections; it holds the log level and records each quit request.
import type { ProxyView } from "../../src/admin/views.ts";

export class FakeProxyView implements ProxyView {
  level = "info";
  quits: string[] = [];
  workloads = () => [];
  connections = () => [];
  config = () => ({});
  version = () => ({ version: "test" });
  readiness = () => ({ ready: true, reason: "ready" });
  getLogLevel = () => this.level;
  setLogLevel = (l: string) => void (this.level = l);
  quit = (reason: string) => void this.quits.push(reason);
}
