// Step 9 with --keep: leave everything running, recorded as kept so that `nshub demo --down`
// (any later process) removes it, and list commands to explore it.
import { join } from "node:path";
import { displayPath, writeRecord } from "../env.ts";
import { WEB_HTTP_PORT, type DemoRun } from "../run.ts";

export function keepRunning(demo: DemoRun): void {
  demo.step(9, "leaving it running (--keep)");
  demo.record!.kept = true;
  writeRecord(demo.record!);
  const { web, client, outsider } = demo.allPods;
  const exe = displayPath(demo.bin.exe);
  const n = demo.node.name;
  demo.explore = [
    `ip netns exec ${n} ${exe} status`,
    `ip netns exec ${n} ${exe} pods`,
    `ip netns exec ${n} ${exe} connections --watch`,
    `ip netns exec ${n} ${exe} certs                     # the pods' identities and certificates`,
    `ip netns exec ${n} curl -s 127.0.0.1:15000/config_dump`,
    `ip netns exec ${n} ${exe} logs-level debug --admin-socket ${displayPath(demo.path("proxy-admin.sock"))}      # writes: the proxy's root-only admin socket`,
    `ip netns exec ${n} curl -s 127.0.0.1:15020/metrics | grep istio_tcp`,
    `ip netns exec ${n} curl -s 127.0.0.1:15010/pods`,
    `ip netns exec ${client.name} curl -s http://${web.ip}:${WEB_HTTP_PORT}/      # from demo/client (captured)`,
    `ip netns exec ${outsider.name} curl -s http://${web.ip}:${WEB_HTTP_PORT}/      # from other/outsider (not captured)`,
    `ip netns exec ${web.name} ss -ltnp                  # demo/web: the proxy's listeners inside the pod`,
    `ip netns exec ${web.name} iptables-save -t nat      # demo/web: the in-pod redirection rules`,
  ];
  demo.out.info(`state: ${join(demo.workDir, "demo.json")}; logs: ${demo.workDir}/*.log`);
}
