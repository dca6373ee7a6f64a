// Step 10 with --keep: leave everything running, recorded as kept so that `nshub demo --down`
// (any later process) removes it, and list commands to explore it.
import { join } from "node:path";
import { displayPath } from "../env.ts";
import { HBONE_PORT, WEB_HTTP_PORT, type DemoRun } from "../run.ts";
import { writeRecord } from "../state.ts";

export function keepRunning(demo: DemoRun): void {
  demo.step(10, "leaving it running (--keep)");
  demo.record!.kept = true;
  writeRecord(demo.record!);
  const { web, client, outsider, backend } = demo.allPods;
  const exe = displayPath(demo.bin.exe);
  const n = demo.n1.ns.name;
  const n2 = demo.n2.ns.name;
  const fab = demo.fabric!.ns.name;
  demo.explore = [
    `ip netns exec ${n} ${exe} status`,
    `ip netns exec ${n} ${exe} pods`,
    `ip netns exec ${n} ${exe} connections --watch`,
    `ip netns exec ${n} ${exe} certs                     # the pods' identities and certificates`,
    `ip netns exec ${n} ${exe} workloads --admin 127.0.0.1:15000   # node-1's registry: its pods + node-2's (workloads file)`,
    `ip netns exec ${n} curl -s 127.0.0.1:15000/config_dump`,
    `ip netns exec ${n} ${exe} logs-level debug --admin-socket ${displayPath(demo.n1.path("proxy-admin.sock"))}      # writes: the proxy's root-only admin socket`,
    `ip netns exec ${n} curl -s 127.0.0.1:15020/metrics | grep istio_tcp`,
    `ip netns exec ${n} curl -s 127.0.0.1:15010/pods`,
    `ip netns exec ${client.name} curl -s http://${web.ip}:${WEB_HTTP_PORT}/      # from demo/client (captured)`,
    `ip netns exec ${outsider.name} curl -s http://${web.ip}:${WEB_HTTP_PORT}/      # from other/outsider (not captured)`,
    `ip netns exec ${web.name} ss -ltnp                  # demo/web: the proxy's listeners inside the pod`,
    `ip netns exec ${web.name} iptables-save -t nat      # demo/web: the in-pod redirection rules`,
    `ip netns exec ${client.name} curl -s http://${backend.ip}:${WEB_HTTP_PORT}/      # to demo/backend on node-2: HBONE across the fabric`,
    `ip netns exec ${n2} ${exe} connections --watch      # node-2's proxy: the inbound legs, mTLS`,
    `ip netns exec ${fab} tcpdump -i any -nn tcp port ${HBONE_PORT}      # the wire between the nodes`,
    `tcpdump -r ${displayPath(demo.path("fabric.pcap"))} -nn -A | less        # step 9's capture`,
  ];
  demo.out.info(`state: ${join(demo.workDir, "demo.json")}; logs: ${demo.workDir}/node-*/*.log, ${demo.workDir}/ca.log`);
}
